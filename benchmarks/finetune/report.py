"""Summarise the fine-tuning benchmark: one row per (run, task, mode), the frozen baselines beside.

Reads the per-run rows of ``run.py`` (one or more results CSVs) and, optionally, the frozen-vector
baselines of the multi-scale ablation (``benchmarks/multiscale/ablation.py``: single-branch rows of
``lm``, the frozen LM's mean-pooled vectors + MLP, and ``composition``, Magpie vectors + MLP; both
fitted on the same training file and scored on the same test file).

Every choice is made on validation, as ``run.py`` makes it: the learning rate of a (task, mode) is
the seed-0 grid row with the lowest validation MAE (per fold for fold tasks); the figure is the mean
± std over seeds of the test MAE at that learning rate (fold tasks: per seed, the mean over folds).
The best fine-tuning mode of a task is the one with the lowest mean validation MAE, not test MAE.
A difference inside the seed spread (the larger of the two stds) is called a tie.

    python benchmarks/finetune/report.py --results benchmarks/finetune/results.csv \
        --baselines benchmarks/multiscale/ablation.csv benchmarks/finetune/baselines.csv --out benchmarks/finetune/report.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

#: the issue's target: the best mode at least this much below the frozen LM vectors' MAE
TARGET_GAIN = 0.30


#: what makes one protocol run: rows of another epoch budget are another run (as in run.py)
RUN_KEYS = ["run", "run_sha", "max_epochs"]


def _run_keys(df: pd.DataFrame) -> list[str]:
    return [k for k in RUN_KEYS if k in df]


def picked_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the learning rate picked on seed-0 validation MAE, per (run, budget, task, mode, fold)."""
    out = []
    for _, g in df.groupby(_run_keys(df) + ["task", "mode", "fold"], dropna=False, sort=False):
        first = g["seed"].min()
        grid = g[g["seed"] == first]
        lr = grid.loc[grid["val_mae"].idxmin(), "lr"]
        out.append(g[g["lr"] == lr])
    return pd.concat(out) if out else df.iloc[:0]


def _spread(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, task, mode): picked lr(s), test/val MAE mean ± std over seeds, timings."""
    results = results.copy()
    results["fold"] = results["fold"].fillna(-1).astype(int)
    rows = []
    for _, g in picked_rows(results).groupby(_run_keys(results) + ["task", "mode"], dropna=False, sort=False):
        run, task, mode = g["run"].iloc[0], g["task"].iloc[0], g["mode"].iloc[0]
        sha = g["run_sha"].iloc[0] if "run_sha" in g else None
        if isinstance(sha, str) and sha:  # which weights: a retrained release keeps its name
            run = f"{run}@{sha[:8]}"
        per_seed = g.groupby("seed")[["mae", "val_mae"]].mean()  # mean over folds per seed
        n_folds = g.groupby("seed")["fold"].nunique()
        complete = n_folds == n_folds.max()
        per_seed = per_seed[complete]
        rows.append({
            "run": run, "task": task, "mode": mode,
            "lr": ",".join(sorted({f"{v:g}" for v in g["lr"]})),
            "seeds": len(per_seed), "folds": int(n_folds.max()) if (g["fold"] >= 0).any() else 0,
            "test_mae": per_seed["mae"].mean(), "test_std": _spread(per_seed["mae"].to_numpy()),
            "val_mae": per_seed["val_mae"].mean(),
            "epochs": f"{g['epochs'].median():g} (best {g['best_epoch'].median():g})",
            "s_per_epoch": float(g["s_per_epoch"].median()),
            "feature_s": float(g["feature_s"].median()), "n_train": int(g["n_train"].median()),
            "n_test": int(g["n_test"].median()),
        })
    return pd.DataFrame(rows)


def baselines(paths: list[Path], method: str = "stack") -> pd.DataFrame:
    """Frozen LM + MLP (``lm``) and Magpie + MLP (``composition``) from the ablation's CSV rows
    (several files: a later file's rows of a (task, branch) replace an earlier file's)."""
    frames = [pd.read_csv(p) for p in paths]
    for i, df in enumerate(frames):
        later = pd.concat(frames[i + 1:]) if i + 1 < len(frames) else df.iloc[:0]
        seen = set(zip(later["dataset"], later["branches"]))
        frames[i] = df[[(d, b) not in seen for d, b in zip(df["dataset"], df["branches"])]]
    df = pd.concat(frames, ignore_index=True)
    df = df[(df["method"] == method) & df["branches"].isin(["lm", "composition"])]
    rows = []
    for (task, branch), g in df.groupby(["dataset", "branches"], sort=False):
        per_seed = g.groupby("seed")["mae"].mean()
        rows.append({"task": task, "baseline": {"lm": "frozen LM + MLP", "composition": "Magpie + MLP"}[branch],
                     "test_mae": per_seed.mean(), "test_std": _spread(per_seed.to_numpy()),
                     "seeds": len(per_seed)})
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.4g}" if seeds < 2 or np.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def verdicts(summary: pd.DataFrame, base: pd.DataFrame) -> list[str]:
    """Plain sentences on the issue's targets, per (run, task)."""
    lines = []
    for (run, task), g in summary.groupby(["run", "task"], sort=False):
        tuned = g[g["mode"] != "head"] if (g["mode"] != "head").any() else g
        best = tuned.loc[tuned["val_mae"].idxmin()]
        said = (f"**{task}** ({run}): best mode on validation **{best['mode']}**, test "
                f"{_fmt(best['test_mae'], best['test_std'], best['seeds'])} ({best['seeds']} seeds)")
        missing = sorted({"head", "lora", "full"} - set(g["mode"]))
        if missing:
            said += f"; {' and '.join(missing)} not run, so no verdict yet"
        elif best["seeds"] < 3:
            said += "; fewer than 3 seeds, so no verdict yet"
        for name in ("frozen LM + MLP", "Magpie + MLP"):
            b = base[(base["task"] == task) & (base["baseline"] == name)]
            if b.empty:
                said += f"; {name}: not measured"
                continue
            b = b.iloc[0]
            gain = 1 - best["test_mae"] / b["test_mae"]
            noise = np.nanmax([best["test_std"], b["test_std"]])
            if abs(best["test_mae"] - b["test_mae"]) <= noise:
                word = "ties"
            else:
                word = "beats" if best["test_mae"] < b["test_mae"] else "loses to"
            said += f"; {word} {name} ({b['test_mae']:.4g}, {gain:+.0%})"
            if name == "frozen LM + MLP" and not missing and best["seeds"] >= 3:
                said += " - target of -30 % " + ("met" if gain >= TARGET_GAIN and word == "beats" else "not met")
        lines.append(said + ".")
    return lines


def markdown(summary: pd.DataFrame, base: pd.DataFrame, command: str) -> str:
    out = ["# Fine-tuning benchmark: summary", "", f"Command: `{command}`", "",
           "Learning rate picked on seed-0 validation MAE; test MAE mean ± std over seeds at that rate "
           "(fold tasks: the mean over folds per seed). `s/epoch`: median wall time of an epoch with its "
           "validation pass; `feature s`: head mode's one frozen `<eos>` pass over all splits.", "",
           "| run | task | mode | lr | seeds | test MAE | val MAE | epochs | s/epoch | feature s | train rows |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        out.append(f"| {r.run} | {r.task} | {r.mode} | {r.lr} | {r.seeds} | {_fmt(r.test_mae, r.test_std, r.seeds)} | "
                   f"{r.val_mae:.4g} | {r.epochs} | {r.s_per_epoch:.0f} | {r.feature_s:.0f} | {r.n_train} |")
    if not base.empty:
        out += ["", "Frozen baselines (multi-scale ablation, same training and test files):", "",
                "| task | baseline | seeds | test MAE |", "|---|---|---|---|"]
        for r in base.itertuples():
            out.append(f"| {r.task} | {r.baseline} | {r.seeds} | {_fmt(r.test_mae, r.test_std, r.seeds)} |")
    out += ["", "Targets (issue 13: best mode at least 30 % below frozen LM vectors, and below Magpie):", ""]
    out += [f"- {line}" for line in verdicts(summary, base)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", nargs="+", required=True)
    ap.add_argument("--baselines", nargs="+", default=None,
                    help="ablation CSVs with single-branch lm / composition rows (later files win)")
    ap.add_argument("--include-capped", action="store_true",
                    help="also summarise runs on row subsamples (--max-train/--max-val/--max-test)")
    ap.add_argument("--out", default=None, help="Markdown file (default: print)")
    args = ap.parse_args(argv)
    results = pd.concat([pd.read_csv(p) for p in args.results], ignore_index=True)
    capped = results[[c for c in ("max_train", "max_val", "max_test") if c in results]].notna().any(axis=1)
    if not args.include_capped:  # smoke runs on row subsamples are not the protocol
        results = results[~capped]
    summary = summarise(results)
    base = baselines([Path(b) for b in args.baselines]) if args.baselines else pd.DataFrame(columns=["task", "baseline"])
    base = base[base["task"].isin(set(summary["task"]))]  # only the tasks fine-tuned here
    text = markdown(summary, base, "python benchmarks/finetune/report.py " + " ".join(sys.argv[1:] if argv is None else argv))
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
