"""Benchmark outputs: ``results.csv`` and friends, the Markdown report, and the plots.

Tables aggregate the test MAE over seeds (and over folds for Matbench-style tasks: a task
``name/fold<k>`` is reported under ``name``, as the Matbench leaderboard does) as mean ± std.
The rank of a representation in a task is the rank of its best (lowest mean MAE) pooling and
regressor; the *fixed-protocol* table (mean pooling, HGB) is the setting the issue quotes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: published test MAEs on the same splits, for context (from the issue and the shared data README;
#: CrabNet's metrics table, the Matbench leaderboard, and a fixed-protocol measurement quoted in the issue)
REFERENCES: list[tuple[str, str, float, str]] = [
    ("aflow__ael_bulk_modulus_vrh", "CrabNet", 8.69, "CrabNet repository metrics table"),
    ("aflow__ael_bulk_modulus_vrh", "Roost", 8.82, "CrabNet repository metrics table"),
    ("aflow__ael_bulk_modulus_vrh", "RF", 11.91, "CrabNet repository metrics table"),
    ("aflow__ael_bulk_modulus_vrh", "ElemNet", 12.12, "CrabNet repository metrics table"),
    ("aflow__ael_bulk_modulus_vrh", "crystallm (mean, HGB)", 12.7, "issue 5, fixed protocol"),
    ("aflow__ael_bulk_modulus_vrh", "magpie (mean, HGB)", 12.9, "issue 5, fixed protocol"),
    ("aflow__ael_bulk_modulus_vrh", "mat2vec (mean, HGB)", 13.0, "issue 5, fixed protocol"),
    ("aflow__ael_bulk_modulus_vrh", "random_200 (mean, HGB)", 17.2, "issue 5, fixed protocol"),
    ("mp_bulk_modulus", "CrabNet", 11.21, "CrabNet repository metrics table"),
    ("mp_bulk_modulus", "Roost", 11.39, "CrabNet repository metrics table"),
    ("aflow__Egap", "CrabNet", 0.301, "CrabNet repository metrics table (full training set)"),
    ("mp_e_hull", "CrabNet", 0.0886, "CrabNet repository metrics table (full training set)"),
    ("matbench_expt_gap", "Darwin", 0.287, "Matbench leaderboard, 5-fold mean"),
    ("matbench_expt_gap", "MODNet", 0.333, "Matbench leaderboard, 5-fold mean"),
    ("matbench_expt_gap", "CrabNet", 0.346, "Matbench leaderboard, 5-fold mean"),
    ("matbench_expt_gap", "RF-SCM/Magpie", 0.446, "Matbench leaderboard, 5-fold mean"),
    ("matbench_expt_gap", "Dummy", 1.144, "Matbench leaderboard, 5-fold mean"),
    ("matbench_expt_gap/fold0", "crystallm (mean, MLP)", 0.387, "issue 5, fold 0"),
    ("matbench_expt_gap/fold0", "magpie (mean, HGB)", 0.421, "issue 5, fold 0"),
    ("matbench_expt_gap/fold0", "crystallm (mean, HGB)", 0.489, "issue 5, fold 0"),
    ("matbench_expt_gap/fold0", "mat2vec (mean, HGB)", 0.496, "issue 5, fold 0"),
    ("matbench_expt_gap/fold0", "random_200 (mean, HGB)", 0.595, "issue 5, fold 0"),
]

_FOLD = re.compile(r"/fold\d+$")


def task_group(task: str) -> str:
    """``matbench_expt_gap/fold3`` -> ``matbench_expt_gap``; other names unchanged."""
    return _FOLD.sub("", task)


def summarise(results: pd.DataFrame, by_group: bool = True) -> pd.DataFrame:
    """Mean, std and count of the test MAE per (task, representation, pooling, regressor)."""
    df = results[results["metric"] == "mae"].copy()
    if by_group:
        df["task"] = df["task"].map(task_group)
    keys = ["task", "representation", "pooling", "regressor"]
    out = df.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def best_per_representation(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (task, representation): the best (lowest mean) pooling/regressor and its rank in the task."""
    best = summary.loc[summary.groupby(["task", "representation"], sort=False)["mean"].idxmin()].copy()
    best["rank"] = best.groupby("task")["mean"].rank(method="min").astype(int)
    return best.sort_values(["task", "rank", "representation"]).reset_index(drop=True)


def _fmt(mean: float, std: float = 0.0, count: int = 1) -> str:
    if not np.isfinite(mean):
        return ""
    text = f"{mean:.4g}"
    return text + (f" ± {std:.2g}" if count > 1 else "")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def task_table(summary: pd.DataFrame, task: str, regressors: list[str]) -> str:
    """Rows (representation, pooling), columns regressors; the task's best cell in bold."""
    sub = summary[summary["task"] == task]
    best = sub["mean"].min()
    rows = []
    for (rep, pooling), g in sub.groupby(["representation", "pooling"], sort=False):
        cells = []
        for reg in regressors:
            hit = g[g["regressor"] == reg]
            if hit.empty:
                cells.append("")
                continue
            r = hit.iloc[0]
            text = _fmt(r["mean"], r["std"], int(r["count"]))
            cells.append(f"**{text}**" if r["mean"] == best else text)
        rows.append([rep, pooling] + cells)
    return _md_table(["representation", "pooling"] + regressors, rows)


def rank_table(best: pd.DataFrame) -> str:
    """Representations x tasks: best MAE (rank); the best per task in bold; mean rank last."""
    tasks = list(dict.fromkeys(best["task"]))
    reps = list(dict.fromkeys(best.sort_values("representation", kind="stable")["representation"]))
    mean_rank = best.groupby("representation")["rank"].mean()
    reps.sort(key=lambda r: (mean_rank.get(r, np.inf), r))
    rows = []
    for rep in reps:
        cells = []
        for task in tasks:
            hit = best[(best["task"] == task) & (best["representation"] == rep)]
            if hit.empty:
                cells.append("")
                continue
            r = hit.iloc[0]
            text = f"{r['mean']:.4g} ({int(r['rank'])})"
            cells.append(f"**{text}**" if r["rank"] == 1 else text)
        rows.append([rep] + cells + [f"{mean_rank.get(rep, np.nan):.2f}"])
    return _md_table(["representation"] + tasks + ["mean rank"], rows)


def fixed_protocol_table(summary: pd.DataFrame, pooling: str = "mean", regressor: str = "hgb") -> str:
    sub = summary[(summary["pooling"] == pooling) & (summary["regressor"] == regressor)]
    if sub.empty:
        return ""
    tasks = list(dict.fromkeys(sub["task"]))
    reps = list(dict.fromkeys(sub["representation"]))
    rows = []
    for rep in reps:
        cells = []
        for task in tasks:
            col = sub[sub["task"] == task]
            hit = col[col["representation"] == rep]
            if hit.empty:
                cells.append("")
                continue
            r = hit.iloc[0]
            text = _fmt(r["mean"], r["std"], int(r["count"]))
            cells.append(f"**{text}**" if r["mean"] == col["mean"].min() else text)
        rows.append([rep] + cells)
    return _md_table(["representation"] + tasks, rows)


def run_comparison_table(summary: pd.DataFrame, runs: list[str]) -> tuple[str, str]:
    """Our runs side by side: per task, each run's best element-vector MAE and (structure tasks)
    best structure-vector MAE, the better run in bold; and a one-line tally of who wins."""
    rows, wins = [], {r: [0, 0] for r in runs}
    for task in dict.fromkeys(summary["task"]):
        sub = summary[(summary["task"] == task) & summary["representation"].isin(runs)]
        if sub.empty:
            continue
        is_struct = sub["pooling"].str.startswith("structure-")
        cells = []
        for kind, part in ((0, sub[~is_struct]), (1, sub[is_struct])):
            best = {r: part.loc[part["representation"] == r, "mean"].min() for r in runs}
            finite = {r: v for r, v in best.items() if np.isfinite(v)}
            top = min(finite, key=finite.get) if len(finite) == len(runs) else None
            if top is not None:
                wins[top][kind] += 1
            for r in runs:
                text = _fmt(best[r]) if np.isfinite(best[r]) else ""
                cells.append(f"**{text}**" if r == top else text)
        rows.append([task] + cells)
    header = (["task"] + [f"{r} element" for r in runs] + [f"{r} structure" for r in runs])
    tally = "; ".join(f"{r}: best element vectors on {w[0]} task(s), best structure vectors on {w[1]}"
                      for r, w in wins.items())
    return _md_table(header, rows), tally


def references_table(tasks: list[str]) -> str:
    rows = [[t, m, f"{v:g}", src] for t, m, v, src in REFERENCES if task_group(t) in tasks or t in tasks]
    return _md_table(["task", "model", "test MAE", "source"], rows) if rows else ""


def write_markdown(result, info: dict[str, Any], path: Path, plot_files: list[Path]) -> Path:
    results = result.results
    summary = summarise(results)
    regressors = [r for r in ("ridge", "hgb", "mlp") if r in set(results["regressor"])]
    best = best_per_representation(summary) if not summary.empty else summary
    groups = list(dict.fromkeys(summary["task"]))
    lines = ["# Embedding benchmark", ""]
    if info.get("command"):
        lines += ["Command:", "", "```", info["command"], "```", ""]
    caps = info.get("caps", {})
    lines += [
        f"Run time: {info.get('seconds', 0):.0f} s on {info.get('cpus')} CPUs "
        f"(load average at the end {', '.join(f'{x:.1f}' for x in info.get('load_average') or [])}; "
        f"n_jobs {info.get('n_jobs')}). Data: `{info.get('data')}`.",
        "",
        "Protocol (the same for every representation): fit on the training split, tune / early-stop "
        "on the validation split, report test MAE. `ridge`: standardised features, alpha tuned on "
        "validation MAE; `hgb`: HistGradientBoosting (squared loss, lr "
        f"{info.get('protocol', {}).get('hgb_learning_rate')}, {info.get('protocol', {}).get('hgb_max_bins')} bins), "
        "early stopping on validation; `mlp`: "
        f"{'-'.join(str(h) for h in info.get('protocol', {}).get('mlp_hidden', []))} ReLU MLP, L1 loss, AdamW, "
        "best validation epoch kept. Ridge and HGB are deterministic (one fit, seed "
        f"{(info.get('seeds') or [0])[0]}); the MLP runs with seeds {info.get('seeds')}. "
        f"Training / validation / test splits capped at {caps.get('train')} / {caps.get('val')} / "
        f"{caps.get('test') or 'all'} rows (seeded subsample, the same rows for every representation). "
        "Compositions are pooled from element vectors by fractional mean (`mean`) or by "
        "`stats4` = [mean, weighted std, max, min]. Matbench-style folds are averaged over folds "
        "(± is the std over folds and seeds). Rows whose formula holds an element missing from any "
        "compared vector set are dropped for every set (see Coverage)."
        + (f" Our runs' structure vectors come from a {info['lm_precision']} forward pass."
           if info.get("lm_precision") else ""),
        "",
    ]
    if not best.empty:
        lines += ["## Rank per task", "",
                  "Best test MAE of each representation over poolings and regressors (rank in the task); "
                  "best per task in bold.", "", rank_table(best), ""]
    runs = [r for r in (info.get("runs") or {}) if r in set(summary["representation"])]
    if len(runs) > 1:
        table, tally = run_comparison_table(summary, runs)
        lines += ["## Our runs compared", "",
                  "Best test MAE of each run's element vectors (composition pooling) and structure vectors "
                  "(any layer / pooling), over regressors; the better run in bold. " + tally + ".", "", table, ""]
    fixed = fixed_protocol_table(summary)
    if fixed:
        lines += ["## Fixed protocol: mean pooling + HistGradientBoosting", "", fixed, ""]
    fold_tasks = sorted({t for t in results["task"] if _FOLD.search(t)})
    if fold_tasks:
        first = summarise(results[results["task"] == fold_tasks[0]], by_group=False)
        tab = fixed_protocol_table(first)
        if tab:
            lines += [f"Fold `{fold_tasks[0]}` alone (fixed protocol):", "", tab, ""]
            mlp = fixed_protocol_table(first, "mean", "mlp")
            if mlp:
                lines += [f"Fold `{fold_tasks[0]}`, mean pooling + MLP:", "", mlp, ""]
    lines += ["## Test MAE per task", "", "Mean ± std over seeds (and folds); the best cell of each task in bold.", ""]
    for task in groups:
        lines += [f"### {task}", "", task_table(summary, task, regressors), ""]
        png = [p for p in plot_files if p.stem == _safe(task)]
        if png:
            lines += [f"![{task}](plots/{png[0].name})", ""]
    if not result.nn_accuracy.empty:
        lines += ["## Intrinsic element metrics", "",
                  "Leave-one-out nearest-neighbour (cosine, standardised columns) accuracy of an element's "
                  "periodic group and block, over the elements every set has:", "",
                  _md_table(["representation", "elements", "group accuracy", "block accuracy"],
                            [[r.representation, str(r.n_elements), f"{r.group_accuracy:.3f}", f"{r.block_accuracy:.3f}"]
                             for r in result.nn_accuracy.itertuples()]), ""]
    if not result.similarity.empty:
        from .intrinsic import agreement_matrix

        names = list(result.nn_accuracy["representation"]) or sorted(set(result.similarity["set_a"]) | set(result.similarity["set_b"]))
        for col in ("spearman", "pearson"):
            m = agreement_matrix(result.similarity, names, col)
            lines += [f"Correlation ({col.capitalize()}) between the sets' pairwise cosine-similarity matrices "
                      "over their shared elements:", "",
                      _md_table([""] + names, [[a] + [f"{m.loc[a, b]:.2f}" for b in names] for a in names]), ""]
        if any(p.stem == "similarity_spearman" for p in plot_files):
            lines += ["![similarity agreement](plots/similarity_spearman.png)", ""]
    if not result.coverage.empty:
        cov = result.coverage
        lines += ["## Coverage", "", "Rows dropped from every representation alike:", "",
                  _md_table(["task", "split", "rows", "used", "dropped", "why", "missing elements (rows)"],
                            [[r.task, r.split, str(r.rows), str(r.used), str(r.dropped), r.reasons or "",
                              r.missing_elements or ""] for r in cov.itertuples()]), ""]
    ref = references_table(groups + sorted(set(results["task"])))
    if ref:
        lines += ["## Published reference numbers (context)", "",
                  "Not produced by this run; full training sets and different models, so only the "
                  "order of magnitude is comparable where this run caps the training rows.", "", ref, ""]
    path.write_text("\n".join(lines))
    return path


def _safe(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)


def plot_tasks(summary: pd.DataFrame, folder: Path) -> list[Path]:
    """One bar chart per task: test MAE per representation, a panel per regressor, a bar per pooling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    folder.mkdir(parents=True, exist_ok=True)
    for task, sub in summary.groupby("task", sort=False):
        regs = list(dict.fromkeys(sub["regressor"]))
        reps = list(dict.fromkeys(sub["representation"]))
        pools = list(dict.fromkeys(sub["pooling"]))
        fig, axes = plt.subplots(1, len(regs), figsize=(max(6, 0.55 * len(reps) * len(regs) + 2), 4.2),
                                 sharey=True, squeeze=False)
        width = 0.8 / max(1, len(pools))
        for ax, reg in zip(axes[0], regs):
            for j, pool in enumerate(pools):
                vals = sub[(sub["regressor"] == reg) & (sub["pooling"] == pool)].set_index("representation")
                means = [vals["mean"].get(r, np.nan) for r in reps]
                stds = [vals["std"].get(r, 0.0) for r in reps]
                ax.bar(np.arange(len(reps)) + (j - (len(pools) - 1) / 2) * width, means, width, yerr=stds,
                       label=pool, capsize=2)
            ax.set_title(reg)
            ax.set_xticks(np.arange(len(reps)))
            ax.set_xticklabels(reps, rotation=60, ha="right", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel("test MAE")
        axes[0][-1].legend(fontsize=7, title="pooling", title_fontsize=7)
        fig.suptitle(task)
        fig.tight_layout()
        path = folder / f"{_safe(task)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def plot_similarity(similarity: pd.DataFrame, names: list[str], folder: Path, column: str = "spearman") -> Path:
    """Heatmap of the correlation between the sets' cosine-similarity matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .intrinsic import agreement_matrix

    m = agreement_matrix(similarity, names, column)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    im = ax.imshow(m.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{m.iat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(m.iat[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label=f"{column} correlation")
    ax.set_title("Agreement of element cosine similarities")
    fig.tight_layout()
    path = folder / f"similarity_{column}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result, out: Path, info: dict[str, Any], report: bool = True, plots: bool = True) -> list[Path]:
    """Write results.csv, coverage.csv, intrinsic_*.csv, run_info.json, plots/ and report.md under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    # %.6g: enough digits for MAEs, and identical text for identical runs
    result.results.to_csv(out / "results.csv", index=False, float_format="%.6g")
    result.coverage.to_csv(out / "coverage.csv", index=False)
    result.similarity.to_csv(out / "intrinsic_similarity.csv", index=False, float_format="%.6g")
    result.nn_accuracy.to_csv(out / "intrinsic_nn.csv", index=False, float_format="%.6g")
    if result.fits is not None:
        result.fits.to_csv(out / "fits.csv", index=False, float_format="%.4g")
        files.append(out / "fits.csv")
    (out / "run_info.json").write_text(json.dumps(info, indent=1, default=str))
    files += [out / n for n in ("results.csv", "coverage.csv", "intrinsic_similarity.csv", "intrinsic_nn.csv", "run_info.json")]
    plot_files: list[Path] = []
    if plots and not result.results.empty:
        plot_files += plot_tasks(summarise(result.results), out / "plots")
        if not result.similarity.empty:
            names = list(result.nn_accuracy["representation"])
            plot_files.append(plot_similarity(result.similarity, names, out / "plots"))
    files += plot_files
    if report:
        files.append(write_markdown(result, info, out / "report.md", plot_files))
    return files
