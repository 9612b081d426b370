"""Settings picked on validation only, and ranks that treat differences within noise as ties.

Every representation (ours included) is reported at one setting per task: the (pooling,
regressor[, layer]) with the lowest validation MAE (mean over seeds). The test MAE of that setting
is the only test number that enters ranks, cards and the model-index. For fold tasks the pick is
made per fold on that fold's (inner) validation split, and the test MAEs are averaged over folds
and seeds.

Ties: with the per-row absolute test errors of the picked settings (:func:`paired_bootstrap_ranks`),
a representation's rank is 1 + the number of representations whose test MAE is lower with a 95 %
paired-bootstrap interval (over test rows, the same resamples for all) that excludes zero; two
representations whose difference is within that noise share a rank. Without per-row errors
(a ``results.csv`` read back alone), :func:`noise_ranks` treats a difference smaller than the
larger of the two standard deviations over seeds (and folds) as a tie.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

#: a fit is flagged when its test MAE exceeds its validation MAE by this factor
BLOWUP_RATIO = 3.0
#: paired bootstrap: resamples and the two-sided level of the interval
N_BOOT, LEVEL = 1000, 0.95
BOOT_SEED = 20240502
SETTING = ["pooling", "regressor"]

_FOLD = re.compile(r"/fold\d+$")


def task_group(task: str) -> str:
    """``matbench_expt_gap/fold3`` -> ``matbench_expt_gap``; other names unchanged."""
    return _FOLD.sub("", task)


def setting_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per (task, representation, pooling, regressor): mean validation MAE, mean / std test MAE and
    the number of seeds, from the ``results.csv`` layout (metrics ``mae`` = test, ``val_mae``)."""
    keys = ["task", "representation"] + SETTING
    test = results[results["metric"] == "mae"].groupby(keys, sort=False)["value"].agg(["mean", "std", "count"])
    test.columns = ["test_mae", "test_std", "n"]
    val = results[results["metric"] == "val_mae"].groupby(keys, sort=False)["value"].mean().rename("val_mae")
    out = test.join(val, how="left").reset_index()
    out["test_std"] = out["test_std"].fillna(0.0)
    out["ratio"] = out["test_mae"] / out["val_mae"]
    return out


def select_settings(results: pd.DataFrame) -> pd.DataFrame:
    """Per (task, representation) at the task level (each fold its own task): the setting with
    the lowest validation MAE. Raises when ``results`` holds no ``val_mae`` rows (results written
    before validation picking cannot be picked honestly)."""
    table = setting_table(results)
    if table["val_mae"].isna().all() and not table.empty:
        raise ValueError("results hold no 'val_mae' rows: settings cannot be picked on validation "
                         "(rerun the benchmark; results written before validation picking lack them)")
    table = table[np.isfinite(table["val_mae"])]
    idx = table.groupby(["task", "representation"], sort=False)["val_mae"].idxmin()
    return table.loc[idx].reset_index(drop=True)


def selected_settings(results: pd.DataFrame, errors: Mapping | None = None, n_boot: int = N_BOOT) -> pd.DataFrame:
    """The picked setting of every (task group, representation), with test MAE mean ± std over
    seeds and folds, the tie-aware rank and whether it is tied with the task's best.

    Columns: ``task, representation, pooling, regressor, val_mae, test_mae, test_std, n, rank,
    tied_with_best, diff_lo, diff_hi, ratio``. ``pooling`` / ``regressor`` list each fold's pick
    (``mean|stats4``) where folds differ. ``errors``: ``{(task, representation, pooling,
    regressor, seed): per-row absolute test errors}`` enables the paired bootstrap; without it
    ties come from :func:`noise_ranks` (``diff_lo``/``diff_hi`` are then NaN).
    """
    picked = select_settings(results)
    if picked.empty:
        return pd.DataFrame(columns=["task", "representation", "pooling", "regressor", "val_mae", "test_mae",
                                     "test_std", "n", "rank", "tied_with_best", "diff_lo", "diff_hi", "ratio"])
    # every seed x fold test MAE of the picked settings, for the std over seeds and folds
    keys = ["task", "representation"] + SETTING
    test = results[results["metric"] == "mae"].merge(picked[keys], on=keys)
    test["group"] = test["task"].map(task_group)
    picked["group"] = picked["task"].map(task_group)
    rows = []
    for (group, rep), part in picked.groupby(["group", "representation"], sort=False):
        vals = test[(test["group"] == group) & (test["representation"] == rep)]["value"]
        rows.append({"task": group, "representation": rep,
                     "pooling": "|".join(dict.fromkeys(part["pooling"])),
                     "regressor": "|".join(dict.fromkeys(part["regressor"])),
                     "val_mae": float(part["val_mae"].mean()), "test_mae": float(part["test_mae"].mean()),
                     "test_std": float(vals.std()) if len(vals) > 1 else 0.0, "n": int(len(vals)),
                     "ratio": float(part["test_mae"].mean() / part["val_mae"].mean())})
    out = pd.DataFrame(rows)
    if errors:
        out = paired_bootstrap_ranks(out, picked, errors, n_boot=n_boot)
    else:
        out = noise_ranks(out)
    return out.sort_values(["task", "rank", "test_mae", "representation"], kind="stable").reset_index(drop=True)


#: the per-row test errors a benchmark writes beside selected.csv (what recomputing a tie needs)
ERRORS_FILE = "test_errors.csv.gz"
ERROR_KEY = ["task", "representation", "pooling", "regressor", "seed"]


def picked_errors(results: pd.DataFrame, errors: Mapping) -> pd.DataFrame:
    """The per-row absolute test errors of every picked setting (every seed), long format:
    ``task, representation, pooling, regressor, seed, row, abs_error`` (``row``: position in the
    task's test rows as the benchmark used them)."""
    picked = select_settings(results)
    keep = set(picked[["task", "representation", "pooling", "regressor"]].itertuples(index=False, name=None))
    parts = []
    for key, values in errors.items():
        if tuple(key[:4]) in keep:
            values = np.asarray(values, dtype=float)
            parts.append(pd.DataFrame({**dict(zip(ERROR_KEY, key)), "row": np.arange(len(values)), "abs_error": values}))
    if not parts:
        return pd.DataFrame(columns=ERROR_KEY + ["row", "abs_error"])
    return pd.concat(parts, ignore_index=True).sort_values(ERROR_KEY + ["row"], kind="stable").reset_index(drop=True)


def errors_from_table(table: pd.DataFrame) -> dict:
    """:func:`picked_errors`' table back into ``{(task, representation, pooling, regressor, seed):
    per-row errors}``, the ``errors`` argument of :func:`selected_settings`."""
    out = {}
    for key, part in table.groupby(ERROR_KEY, sort=False):
        out[(key[0], key[1], key[2], key[3], int(key[4]))] = part.sort_values("row")["abs_error"].to_numpy(float)
    return out


def noise_ranks(selected: pd.DataFrame) -> pd.DataFrame:
    """Tie-aware ranks from seed noise: ``b`` beats ``a`` when ``mae_a - mae_b`` exceeds the larger
    of their standard deviations (over seeds and folds)."""
    out = selected.copy()
    ranks, tied = [], []
    for _, r in out.iterrows():
        peers = out[out["task"] == r["task"]]
        noise = np.maximum(peers["test_std"].to_numpy(), r["test_std"])
        ranks.append(1 + int(np.sum(r["test_mae"] - peers["test_mae"].to_numpy() > noise)))
        best = peers.loc[peers["test_mae"].idxmin()]
        tied.append(bool(r["test_mae"] - best["test_mae"] <= max(best["test_std"], r["test_std"])))
    out["rank"], out["tied_with_best"] = ranks, tied
    out["diff_lo"] = out["diff_hi"] = np.nan
    return out


def paired_bootstrap_ranks(selected: pd.DataFrame, picked: pd.DataFrame, errors: Mapping,
                           n_boot: int = N_BOOT, level: float = LEVEL, seed: int = BOOT_SEED) -> pd.DataFrame:
    """Tie-aware ranks from a paired bootstrap over test rows (see the module docstring).

    The per-row error of a representation is its absolute test error averaged over seeds, at the
    setting picked on each fold's validation split; folds are concatenated (disjoint test rows).
    ``diff_lo``/``diff_hi``: the interval of ``MAE(representation) - MAE(best)``.
    """
    out = selected.copy()
    out["rank"], out["tied_with_best"] = 0, False
    out["diff_lo"], out["diff_hi"] = np.nan, np.nan
    alpha = (1 - level) / 2
    for group in dict.fromkeys(out["task"]):
        reps = list(out.loc[out["task"] == group, "representation"])
        per_rep: dict[str, np.ndarray] = {}
        for rep in reps:
            parts = []
            for r in picked[(picked["group"] == group) & (picked["representation"] == rep)].sort_values("task").itertuples():
                seeds = [v for k, v in errors.items() if k[:4] == (r.task, rep, r.pooling, r.regressor)]
                if not seeds:
                    parts = None
                    break
                parts.append(np.mean(np.stack(seeds), axis=0))
            if parts:
                per_rep[rep] = np.concatenate(parts)
        lengths = {len(v) for v in per_rep.values()}
        if len(per_rep) != len(reps) or len(lengths) != 1:  # rows differ: fall back to seed noise
            sub = noise_ranks(out[out["task"] == group])
            out.loc[sub.index, ["rank", "tied_with_best", "diff_lo", "diff_hi"]] = sub[["rank", "tied_with_best", "diff_lo", "diff_hi"]]
            continue
        n = lengths.pop()
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        boot = {rep: e[idx].mean(axis=1) for rep, e in per_rep.items()}  # (n_boot,) each, same resamples
        means = {rep: float(e.mean()) for rep, e in per_rep.items()}
        best = min(means, key=means.get)
        for rep in reps:
            beaten_by = 0
            for other in reps:
                if other == rep:
                    continue
                d = boot[rep] - boot[other]
                if np.quantile(d, alpha) > 0:  # other is lower beyond the noise
                    beaten_by += 1
            d_best = boot[rep] - boot[best]
            lo, hi = (0.0, 0.0) if rep == best else (float(np.quantile(d_best, alpha)), float(np.quantile(d_best, 1 - alpha)))
            i = out.index[(out["task"] == group) & (out["representation"] == rep)][0]
            out.loc[i, ["rank", "tied_with_best", "diff_lo", "diff_hi"]] = [1 + beaten_by, lo <= 0.0, lo, hi]
    out["rank"] = out["rank"].astype(int)
    out["tied_with_best"] = out["tied_with_best"].astype(bool)
    return out


#: ... and the excess is at least this share of the task's median test MAE (so that two
#: near-zero errors, 1e-5 against 4e-4, are no blow-up)
BLOWUP_MIN_SHARE = 0.1


def is_blowup(test_mae, val_mae, task_median, ratio: float = BLOWUP_RATIO):
    """Test MAE above ``ratio`` x validation MAE by a non-negligible amount (see :data:`BLOWUP_MIN_SHARE`)."""
    return (test_mae > ratio * val_mae) & (test_mae - val_mae > BLOWUP_MIN_SHARE * task_median)


def blowups(results: pd.DataFrame, ratio: float = BLOWUP_RATIO) -> pd.DataFrame:
    """Settings (mean over seeds) whose test MAE exceeds ``ratio`` x their validation MAE (and not
    by a negligible amount: :func:`is_blowup`)."""
    table = setting_table(results)
    median = table.groupby("task")["test_mae"].transform("median")
    flagged = is_blowup(table["test_mae"], table["val_mae"], median, ratio)
    return table[flagged].sort_values("ratio", ascending=False).reset_index(drop=True)


__all__ = ["BLOWUP_RATIO", "blowups", "is_blowup", "noise_ranks", "paired_bootstrap_ranks", "select_settings",
           "selected_settings", "setting_table", "task_group"]
