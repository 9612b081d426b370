"""Branch ablation of the multi-scale heads: every single branch, every pair, and all together.

Data (shared data folder, see crystext.settings.data_dir; its README describes every set):
``perov_5`` (``heat_all``, eV/cell) and ``carbon_24`` (``energy_per_atom``, eV/atom): ``val.csv`` is
the training split, ``test.csv`` the test split; ``mp_e_form``: train/val/test; ``mp_dielectric_n``,
``mp_log_kvrh``, ``mp_log_gvrh``: 5 folds ``train{k}.csv``/``test{k}.csv`` (``--folds``); the
files and targets are the task layer's (:func:`crystext.tasks.folder_task`). The inner validation
split (choice of the fusion, early stopping) is ``--val-fraction`` of the training split (a setting
of the heads; ``mp_e_form``'s ``val.csv`` is not read). The test split is used for the reported MAE only.

Methods (``--method``):
- ``stack`` (default): :class:`crystext.heads.StackedRegressor`: one regressor per branch,
  out-of-fold predictions (``--n-folds``), a non-negative combiner, and the final choice among the
  combiner, the mean and every single branch on the inner validation split. One fit per
  (data set, fold, seed) gives every combination: single branches are the per-branch regressors,
  pairs and all are the combiner refitted on the same out-of-fold predictions (``restrict``).
  ``--select-on cv cv-means cv-full validation`` writes, from the same fit, rows chosen by each
  selection rule: ``stack`` (the default: every branch subset's combiner, the mean and each branch,
  chosen on out-of-fold + validation rows), ``stack-cv-means`` (the same plus the plain mean of
  every branch subset, ``StackedRegressor(subset_means=True)``), ``stack-cv-full`` (the same rows,
  the combiner of all branches only) and ``stack-validation`` (all branches only, chosen on the 10 %
  validation split alone, the rule before 3 Dec 2026); ``--report-method`` says which the Markdown
  table shows.
- ``gated`` / ``concat``: :class:`crystext.heads.MultiScaleRegressor`, one network per combination.

Branches: ``lm`` (``--run``: a pretrained crystext run folder, its hidden states pooled by
``--lm-pooling``; or a ``crystext finetune`` folder, the same pooling of its fine-tuned states
plus its prediction, as the heads use it; or ``--lm-embeddings``), ``composition``, ``graph`` (CGCNN-style GNN trained end to
end), ``ace``, ``chgnet`` (pretrained CHGNet 64-D vectors; ``pip install chgnet``). Featurised
inputs are cached per data set and split (``--cache``); rows already in ``--out`` are skipped.

``--joint`` fits the joint learners too (``StackedRegressor(joint="best-pairs")``, the head's
default) and writes every rule's rows with and without them (``-joint``); ``--predict-with refit
folds`` adds rows predicted by the mean of the fold regressors (``-folds``). The committed report
(``ablation.md``, its commands in it) shows ``--report-method stack-cv-means-joint``, the default head.

The full ablation (every data set, full training splits, 3 seeds; about 50 min of fits on two cores):
  python benchmarks/multiscale/ablation.py --run models/crystext-mp --width 256 --max-epochs 300 \
      --patience 30 --batch-size 128 --n-folds 3 --joint --select-on cv cv-means \
      --out benchmarks/multiscale/ablation.csv --md benchmarks/multiscale/ablation.md \
      --report-method stack-cv-means-joint
  # without an LM run: --branches composition,graph,ace,chgnet
  # a small check: --datasets perov_5 carbon_24 --limit-train 1000 --limit-test 1000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from crystext.tasks import DEFAULT_TARGETS
from crystext.tasks import SHARED_STRUCTURE_TASKS as DATASETS  # data set -> folds (None: one split)

DEFAULT_DATASETS = ["perov_5", "carbon_24", "mp_dielectric_n", "mp_log_kvrh", "mp_log_gvrh"]
#: ACE settings per data set: many elements -> element-table channels (PCA 3), carbon -> one-hot
MANY_ELEMENTS_ACE = dict(cutoff=5.0, n_radial=3, max_angular=3, species_components=3)
ACE_PARAMS = {name: MANY_ELEMENTS_ACE for name in DATASETS}
ACE_PARAMS["carbon_24"] = dict(cutoff=5.0, n_radial=6, max_angular=4, species_table=None)


def split_files(name: str) -> list[tuple[str, str]]:
    """(training file stem, test file stem) of each fold of a data set (``val``/``test`` for
    perov_5 and carbon_24, whose ``val.csv`` is the training split)."""
    from crystext.settings import data_dir
    from crystext.tasks import folder_task

    folder = data_dir(required=True) / name
    n_folds = DATASETS[name]
    tasks = [folder_task(folder, fold=k) for k in range(n_folds)] if n_folds else [folder_task(folder)]
    return [(t.train.stem, t.test.stem) for t in tasks]


def load_split(name: str, split: str, target: str, limit: int | None):
    from crystext.heads import read_structures_table
    from crystext.settings import data_dir

    path = data_dir(required=True) / name / f"{split}.csv"
    return read_structures_table(path, target, limit)


def lm_arrays(args, name: str, s_train, s_test, tag: str = ""):
    """LM embeddings: <dir>/<name>_{train,test}.npy (the first rows of each split, in file order;
    files with more rows than the --limit-* rows are cut to them), or computed with --run."""
    if args.lm_embeddings:
        d = Path(args.lm_embeddings)
        out = []
        for split, structures in (("train", s_train), ("test", s_test)):
            x = np.load(d / f"{name}{tag}_{split}.npy", allow_pickle=False)
            if len(x) < len(structures):
                raise SystemExit(f"{d / f'{name}{tag}_{split}.npy'} has {len(x)} rows for {len(structures)} structures")
            out.append(x[: len(structures)])
        return tuple(out)
    if args.run:
        import contextlib

        import torch

        from crystext.embeddings import load_run, structure_embeddings
        from crystext.finetune import finetuned_features, is_finetuned

        if is_finetuned(args.run):  # what the heads take from a fine-tuned folder
            out = tuple(finetuned_features(args.run, s, batch_size=args.lm_batch_size, pooling=args.lm_pooling,
                                           precision="bfloat16" if args.lm_bf16 else "float32", with_prediction=True)
                        for s in (s_train, s_test))
        else:
            run = load_run(args.run)
            # bf16 autocast: ~2-40x faster on CPUs with bf16 matmuls; vectors within 1e-5 cosine of fp32
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if args.lm_bf16 else contextlib.nullcontext()
            with ctx:
                out = tuple(structure_embeddings(s, run, pooling=args.lm_pooling, batch_size=args.lm_batch_size)
                            for s in (s_train, s_test))
        if args.lm_save:
            Path(args.lm_save).mkdir(parents=True, exist_ok=True)
            np.save(Path(args.lm_save) / f"{name}{tag}_train.npy", out[0])
            np.save(Path(args.lm_save) / f"{name}{tag}_test.npy", out[1])
        return out
    raise SystemExit("the lm branch needs --run or --lm-embeddings (or leave lm out of --branches)")


# ------------------------------------------------------------------ npz cache (no pickle anywhere)
GRAPH_FIELDS = ("node_features", "numbers", "dst", "src", "distances", "vectors")


def _pack_graphs(graphs: list, prefix: str) -> dict[str, np.ndarray]:
    """Flatten a list of Graph (None = skipped) into plain arrays with per-graph node/edge counts."""
    ok = np.array([g is not None for g in graphs], dtype=bool)
    good = [g for g in graphs if g is not None]
    out = {f"{prefix}_ok": ok,
           f"{prefix}_n_nodes": np.array([g.n_nodes for g in good], dtype=np.int64),
           f"{prefix}_n_edges": np.array([g.n_edges for g in good], dtype=np.int64)}
    for f in GRAPH_FIELDS:
        out[f"{prefix}_{f}"] = np.concatenate([getattr(g, f) for g in good]) if good else np.zeros(0)
    return out


def _unpack_graphs(z, prefix: str) -> list:
    from crystext.descriptors.graph import Graph

    ok, nn, ne = z[f"{prefix}_ok"], z[f"{prefix}_n_nodes"], z[f"{prefix}_n_edges"]
    arrays = {f: z[f"{prefix}_{f}"] for f in GRAPH_FIELDS}
    node_off = np.concatenate([[0], np.cumsum(nn)])
    edge_off = np.concatenate([[0], np.cumsum(ne)])
    good = []
    for k in range(len(nn)):
        a, b, c, d = node_off[k], node_off[k + 1], edge_off[k], edge_off[k + 1]
        good.append(Graph(arrays["node_features"][a:b], arrays["numbers"][a:b], arrays["dst"][c:d],
                          arrays["src"][c:d], arrays["distances"][c:d], arrays["vectors"][c:d]))
    it = iter(good)
    return [next(it) if o else None for o in ok]


def _csv_rows(name: str, split: str) -> int:
    from crystext.settings import data_dir

    return len(pd.read_csv(data_dir(required=True) / name / f"{split}.csv", usecols=[0]))


def _tag(train_split: str, test_split: str) -> str:
    """Cache-name suffix of a split pair ("" for the val/test pair of perov_5 and carbon_24)."""
    return "" if (train_split, test_split) == ("val", "test") else f"-{train_split}-{test_split}"


def _branch_key(args, name: str, branch: str, tag: str = "") -> str:
    """Cache file stem of one branch: everything its features depend on."""
    if branch == "lm":
        extra = f"lm-{Path(args.lm_embeddings or args.run or 'none').name}"
        if args.run and not args.lm_embeddings:
            # the weights, not the folder name: a retrained release keeps its name
            from crystext.embeddings import weights_digest

            digest = weights_digest(args.run)
            extra += f"-{digest[:12]}" if digest else ""
            extra += "-bf16" if args.lm_bf16 else ""
            extra += "" if args.lm_pooling == "mean" else f"-{args.lm_pooling}"
    elif branch == "ace":
        extra = "ace-" + "-".join(f"{k}{v}" for k, v in sorted(ACE_PARAMS[name].items())) + f"-{args.element_table}"
    elif branch == "graph":
        extra = f"graph-c{args.graph_cutoff}-{args.element_table}"
    elif branch == "composition":
        extra = f"composition-{args.element_table}"
    else:
        extra = branch
    return f"{name}{tag}_{args.limit_train}_{args.limit_test}_{extra}"


def featurise(args, name: str, branches: list[str], train_split: str = "val", test_split: str = "test"):
    """(train inputs, y_train, test inputs, y_test); every branch is cached on its own in an
    ``.npz`` (read with allow_pickle=False), so adding a branch later featurises only that one."""
    from crystext.heads import BranchFeaturizer, BranchInputs

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    target = DEFAULT_TARGETS.get(name, "target")
    tag = _tag(train_split, test_split)
    ykey = cache / f"{name}{tag}_{args.limit_train}_{args.limit_test}_targets.npz"
    parsed = {}

    def structures():
        if not parsed:
            s_train, y_train, _ = load_split(name, train_split, target, args.limit_train)
            s_test, y_test, _ = load_split(name, test_split, target, args.limit_test)
            parsed.update(s_train=s_train, y_train=y_train, s_test=s_test, y_test=y_test)
            if not ykey.is_file():
                np.savez(ykey, y_train=y_train, y_test=y_test)
        return parsed

    if ykey.is_file():
        with np.load(ykey, allow_pickle=False) as z:
            y_train, y_test = z["y_train"], z["y_test"]
    else:
        p = structures()
        y_train, y_test = p["y_train"], p["y_test"]
    # --limit-* keep the first rows of each file; a full-data cache (no unparsable rows) is sliced
    n_tr, n_te = len(y_train), len(y_test)
    full_y = cache / f"{name}{tag}_None_None_targets.npz"
    sliceable = False
    if (args.limit_train or args.limit_test) and full_y.is_file():
        with np.load(full_y, allow_pickle=False) as z:
            sliceable = (np.array_equal(z["y_train"][:n_tr], y_train) and np.array_equal(z["y_test"][:n_te], y_test)
                         and len(z["y_train"]) == _csv_rows(name, train_split) and len(z["y_test"]) == _csv_rows(name, test_split))
    full_args = argparse.Namespace(**{**vars(args), "limit_train": None, "limit_test": None})
    x_train, x_test = BranchInputs(), BranchInputs()
    for b in branches:
        path = cache / f"{_branch_key(args, name, b, tag)}.npz"
        full = cache / f"{_branch_key(full_args, name, b, tag)}.npz"
        if sliceable and not path.is_file() and full.is_file():
            with np.load(full, allow_pickle=False) as z:
                if b == "graph":
                    x_train.graphs, x_test.graphs = _unpack_graphs(z, "train")[:n_tr], _unpack_graphs(z, "test")[:n_te]
                else:
                    x_train.features[b], x_test.features[b] = z["train"][:n_tr], z["test"][:n_te]
            continue
        if not path.is_file():
            p = structures()
            t = time.perf_counter()
            feat = BranchFeaturizer(branches=[b], run=args.run, element_table=args.element_table,
                                    ace_params=ACE_PARAMS[name], graph_params=dict(cutoff=args.graph_cutoff))
            feat.fit(p["s_train"] + p["s_test"])  # species lists only; no targets
            lm_train = lm_test = None
            if b == "lm":
                lm_train, lm_test = lm_arrays(args, name, p["s_train"], p["s_test"], tag)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tr = feat.transform(p["s_train"], lm_embeddings=lm_train, progress=True)
                te = feat.transform(p["s_test"], lm_embeddings=lm_test, progress=True)
            if b == "graph":
                arrays = {**_pack_graphs(tr.graphs, "train"), **_pack_graphs(te.graphs, "test")}
            else:
                arrays = dict(train=tr.features[b], test=te.features[b])
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)
            print(f"[ablation] {name}: featurised branch {b} for {len(p['s_train'])} + {len(p['s_test'])} "
                  f"structures in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        with np.load(path, allow_pickle=False) as z:
            if b == "graph":
                x_train.graphs, x_test.graphs = _unpack_graphs(z, "train"), _unpack_graphs(z, "test")
            else:
                x_train.features[b], x_test.features[b] = z["train"], z["test"]
    return x_train, y_train, x_test, y_test


def combos(branches: list[str], sizes: list[int] | None = None) -> list[tuple[str, ...]]:
    """Every single branch, every pair and all together (only the given sizes, if any)."""
    out = [(b,) for b in branches] + list(itertools.combinations(branches, 2))
    if len(branches) > 2:
        out.append(tuple(branches))
    return [c for c in out if not sizes or len(c) in sizes]


def _weights_summary(sub: pd.DataFrame) -> str:
    """Mean fusion weights over seeds and folds, e.g. ``chgnet 0.71, ace 0.35`` (stack: combiner
    weights of the chosen candidate; gated: mean softmax weight on the test set)."""
    ws = [json.loads(w) for w in sub.get("weights", pd.Series(dtype=object)).dropna() if isinstance(w, str) and w]
    if not ws:
        return ""
    keys = list(ws[0])
    return ", ".join(f"{k} {np.mean([w.get(k, 0.0) for w in ws]):.2f}" for k in keys)


def seed_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, branches, seed): test MAE averaged over folds (one row per seed)."""
    cols = [c for c in ("mae", "val_mae") if c in df]
    return df.groupby(["dataset", "branches", "seed"], sort=False)[cols].mean().reset_index()


def verdicts(df: pd.DataFrame) -> dict[str, dict]:
    """Per data set: the fused model with every branch against the best single branch (by mean
    test MAE over seeds), the paired per-seed difference and whether it exceeds the seed spread."""
    per_seed = seed_table(df[df.branches != "dummy"])
    out = {}
    for name, sub in per_seed.groupby("dataset", sort=False):
        stats = sub.groupby("branches", sort=False)["mae"].agg(["mean", "std", "count"])
        singles = stats[[("," not in b) for b in stats.index]]
        if singles.empty:
            continue
        full = max(stats.index, key=lambda b: b.count(","))
        if full.count(",") == 0:
            continue
        best = singles["mean"].idxmin()
        a = sub[sub.branches == full].set_index("seed")["mae"]
        b = sub[sub.branches == best].set_index("seed")["mae"]
        common = a.index.intersection(b.index)
        diff = (b[common] - a[common]) if len(common) else pd.Series(dtype=float)
        spread = float(np.nanmax([stats.loc[full, "std"], stats.loc[best, "std"]])) if len(common) > 1 else float("nan")
        gain = float(stats.loc[best, "mean"] - stats.loc[full, "mean"])
        out[name] = dict(full=full, best_single=best, full_mae=float(stats.loc[full, "mean"]),
                         best_single_mae=float(stats.loc[best, "mean"]), gain=gain, seed_spread=spread,
                         paired_diffs=[float(d) for d in diff], seeds=int(len(common)),
                         beats_by_more_than_spread=bool(len(common) > 1 and gain > spread and (diff > 0).all()))
    return out


def markdown(df: pd.DataFrame, command: str, notes: str | None = None) -> str:
    lines = ["# Multi-scale head ablation", ""]
    if notes:
        lines += [notes.rstrip(), ""]
    lines += [f"Table written by: `{command}`", "",
              "Test MAE (mean ± std over seeds of the per-seed mean over folds; lower is better). "
              "`val MAE`: the inner validation split the fusion was chosen on. `dummy` predicts the "
              "training mean. `chosen`: what the stacked fusion picked on validation (per seed).", ""]
    per_seed = seed_table(df)
    verdict = verdicts(df)
    for name, sub in per_seed.groupby("dataset", sort=False):
        stats = sub.groupby("branches", sort=False).agg(mean=("mae", "mean"), std=("mae", "std"), count=("mae", "count"),
                                                         val_mae=("val_mae", "mean") if "val_mae" in sub else ("mae", "size"))
        raw = df[df.dataset == name]
        target = DEFAULT_TARGETS.get(name, "target") if name in DATASETS else ""
        lines += [f"## {name} (`{target}`)", "",
                  "| branches | test MAE | val MAE | seeds | chosen | weights |", "|---|---|---|---|---|---|"]
        v = verdict.get(name, {})
        for b, row in stats.sort_values("mean").iterrows():
            mark = " (best single)" if b == v.get("best_single") else ""
            std = "" if np.isnan(row["std"]) else f" ± {row['std']:.4f}"
            val = f"{row['val_mae']:.4f}" if "val_mae" in sub and np.isfinite(row["val_mae"]) else ""
            chosen = ", ".join(sorted(set(raw[raw.branches == b]["choice"].dropna().astype(str)))) if "choice" in raw else ""
            lines.append(f"| {b}{mark} | {row['mean']:.4f}{std} | {val} | {int(row['count'])} | {chosen} | "
                         f"{_weights_summary(raw[raw.branches == b])} |")
        if v:
            word = "beats" if v["gain"] > 0 else "does NOT beat"
            lines += ["", f"All branches ({v['full']}) {word} the best single branch ({v['best_single']}): "
                      f"{v['full_mae']:.4f} vs {v['best_single_mae']:.4f} (gain {v['gain']:+.4f}; seed spread "
                      f"{v['seed_spread']:.4f}; paired per-seed gains {', '.join(f'{d:+.4f}' for d in v['paired_diffs'])}). "
                      + ("By more than the seed spread." if v["beats_by_more_than_spread"] else "Not by more than the seed spread.")]
        lines.append("")
    return "\n".join(lines)


RULES = ("stack", "stack-cv-means", "stack-cv-full", "stack-validation")
KEY = ["dataset", "fold", "branches", "seed"]


def method_rows(df: pd.DataFrame, method: str) -> pd.DataFrame:
    """Rows of ``method``; for a ``-joint`` method, combinations without a joint learner (single
    branches, pairs without the best branch: written once, without the suffix) come from the same
    rule's rows without joint learners, which are the same model."""
    rows = df[df.method.fillna("") == method]
    if method.endswith("-joint"):
        base = df[df.method.fillna("") == method[: -len("-joint")]]
        have = set(map(tuple, rows[KEY].astype(str).values))
        extra = base[[tuple(k) not in have for k in base[KEY].astype(str).values]]
        rows = pd.concat([rows, extra.assign(method=method)], ignore_index=True)
    return rows


def rules_table(df: pd.DataFrame) -> str:
    """Where rows of several stacking selection rules (``stack``, ``stack-cv-means``,
    ``stack-cv-full``, ``stack-validation``) and predictors (refit, ``-folds``) come from the same
    fits: per data set and predictor, the all-branch model under each rule against the best single
    branch (mean ± std over seeds of the per-seed mean over folds)."""
    present = set(df.get("method", pd.Series(dtype=str)).fillna(""))
    rules = [r for r in RULES if r in present or f"{r}-folds" in present]
    predictors = [p for p in ("", "-folds", "-joint", "-folds-joint") if any(f"{r}{p}" in present for r in rules)]
    if len(rules) * len(predictors) < 2:
        return ""
    lines = ["## Selection rules and predictors compared on the same fits", "",
             "`stack`: every branch subset's combiner, the mean and each branch, chosen on out-of-fold + "
             "validation rows; `stack-cv-means`: the same plus every branch subset's plain mean; `stack-cv-full`: "
             "the same rows, the all-branch combiner only; `stack-validation`: the all-branch combiner, chosen on "
             "the 10 % validation split alone (the rule before 3 Dec 2026). Predictor `refit`: each branch's "
             "regressor refitted on all training rows; `folds`: the mean of its fold regressors (the models the "
             "combiner was fitted on); `joint`: joint learners (a concat network per pair of the best branch with "
             "each other branch) are columns of the combiner too. Single branches are the same regressors under every rule; `best single` "
             "is the branch with the lowest mean test MAE under `stack` with that predictor.", "",
             "| data set | learners | best single | " + " | ".join(f"all, {r}" for r in rules) + " |",
             "|---|---|---|" + "---|" * len(rules)]
    for name in dict.fromkeys(df.dataset):
        for pred in predictors:
            per = {r: seed_table(method_rows(df[df.dataset == name], f"{r}{pred}")) for r in rules}
            main_rows = per.get("stack", next(iter(per.values())))
            stats = main_rows.groupby("branches")["mae"].agg(["mean", "std"])
            if stats.empty:
                continue
            singles = stats[[("," not in b) for b in stats.index]]
            full = max(stats.index, key=lambda b: b.count(","))
            best = singles["mean"].idxmin()

            def cell(r, b):
                rows = per[r][per[r].branches == b]
                return f"{rows['mae'].mean():.4f} ± {rows['mae'].std():.4f}" if len(rows) else "–"

            lines.append(f"| {name} | {pred.lstrip('-') or 'refit'} | {best} {cell(rules[0], best)} | "
                         + " | ".join(cell(r, full) for r in rules) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=list(DATASETS))
    ap.add_argument("--folds", nargs="+", type=int, default=None, help="fold indices of 5-fold data sets (default all)")
    ap.add_argument("--branches", default="lm,composition,graph,ace,chgnet")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--method", default="stack", choices=["stack", "gated", "concat"])
    ap.add_argument("--n-folds", type=int, default=5, help="stack: folds of the out-of-fold predictions")
    ap.add_argument("--select-on", nargs="+", default=["cv"], choices=["cv", "cv-means", "cv-full", "validation"],
                    help="stack: selection rules to write rows for (one fit; see StackedRegressor.select_on)")
    ap.add_argument("--predict-with", nargs="+", default=["refit"], choices=["refit", "folds"],
                    help="stack: rows for each predictor from the same fit (refit branch models, or the mean of "
                         "the fold models: labels gain '-folds')")
    ap.add_argument("--joint", action="store_true",
                    help="stack: also fit joint learners (StackedRegressor(joint='best-pairs')); rows with and "
                         "without them from the same fit (labels gain '-joint')")
    ap.add_argument("--report-method", default=None,
                    help="method whose rows the Markdown table shows (default --method; e.g. stack-validation)")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="inner validation share of the training split")
    ap.add_argument("--run", default=None, help="LM run for the lm branch (a pretrained or a fine-tuned run folder)")
    ap.add_argument("--lm-embeddings", default=None, help="folder with <dataset>[-<train>-<test>]_{train,test}.npy LM vectors")
    ap.add_argument("--lm-batch-size", type=int, default=32)
    ap.add_argument("--lm-pooling", choices=["mean", "last"], default="mean",
                    help="with --run: mean over the text tokens, or the <eos> state (default: mean)")
    ap.add_argument("--lm-bf16", action="store_true", help="with --run: embed under bf16 autocast")
    ap.add_argument("--lm-save", default=None, help="with --run: also save the LM vectors as <dir>/<dataset>_{train,test}.npy")
    ap.add_argument("--element-table", default="magpie")
    ap.add_argument("--graph-cutoff", type=float, default=5.0)
    ap.add_argument("--graph-hidden", type=int, default=64, help="GNN width (GraphEncoder hidden)")
    ap.add_argument("--graph-layers", type=int, default=3, help="GNN gated convolutions")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--branch-dropout", type=float, default=0.1, help="gated/concat only")
    ap.add_argument("--aux-weight", type=float, default=0.5, help="gated/concat only: per-branch auxiliary loss weight")
    ap.add_argument("--sizes", nargs="+", type=int, default=None,
                    help="only combinations of these sizes (1 = singles, 2 = pairs, n = all together)")
    ap.add_argument("--with-branch", default=None, help="only combinations that contain this branch")
    ap.add_argument("--max-epochs", type=int, default=300)
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/crystext/ablation"))
    ap.add_argument("--out", default="benchmarks/multiscale/ablation.csv")
    ap.add_argument("--md", default=None, help="also write the Markdown table here")
    ap.add_argument("--notes", default=None, help="Markdown file inserted under the title of --md")
    ap.add_argument("--featurise-only", action="store_true", help="fill the --cache and stop (no fits, no rows)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from crystext.heads import MultiScaleRegressor, StackedRegressor

    if args.threads:
        torch.set_num_threads(args.threads)
    branches = [b.strip() for b in args.branches.split(",") if b.strip()]
    out = Path(args.out)
    done = pd.read_csv(out) if out.is_file() else pd.DataFrame(columns=["dataset", "fold", "branches", "seed", "mae"])
    if "fold" not in done:
        done["fold"] = 0
    if "method" not in done:  # rows written before --method existed came from the gated network
        done["method"] = np.where(done["branches"] == "dummy", "", "gated")
    done["method"] = done["method"].fillna("")
    # a row counts as done only for the method that made it (dummy rows: for every method)
    have = {(r.dataset, int(r.fold), r.branches, int(r.seed)) for r in done.itertuples()
            if r.method in ("", args.method)}
    rows = done.to_dict("records")
    graph_encoder = dict(cutoff=args.graph_cutoff, hidden=args.graph_hidden, n_layers=args.graph_layers)
    base_params = dict(width=args.width, max_epochs=args.max_epochs, patience=args.patience, graph_encoder=graph_encoder,
                       batch_size=args.batch_size)

    def flush():
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(out, index=False)

    for name in args.datasets:
        splits = split_files(name)
        folds = [k for k in (args.folds if args.folds is not None else range(len(splits))) if k < len(splits)]
        for fold in folds:
            train_split, test_split = splits[fold]
            wanted = [c for c in combos(branches, args.sizes) if not args.with_branch or args.with_branch in c]
            if all((name, fold, ",".join(c), s) in have for c in wanted for s in args.seeds) and (name, fold, "dummy", 0) in have:
                continue
            x_train, y_train, x_test, y_test = featurise(args, name, branches, train_split, test_split)
            if args.featurise_only:
                continue
            if (name, fold, "dummy", 0) not in have:
                rows.append(dict(dataset=name, fold=fold, branches="dummy", seed=0, method="",
                                 mae=float(np.mean(np.abs(y_test - y_train.mean())))))
                flush()
            for seed in args.seeds:
                todo = [c for c in wanted if (name, fold, ",".join(c), seed) not in have]
                if not todo:
                    continue
                if args.method == "stack":
                    t = time.perf_counter()
                    used = sorted({b for c in todo for b in c}, key=branches.index)
                    model = StackedRegressor(branches=used, n_folds=args.n_folds, base_params=base_params,
                                             val_fraction=args.val_fraction, seed=seed, device=args.device,
                                             verbose=args.verbose, joint="best-pairs" if args.joint else None).fit(x_train, y_train)
                    secs = time.perf_counter() - t
                    joints = [False, True] if args.joint else [False]
                    for combo, rule, predictor, joint in itertools.product(todo, args.select_on, args.predict_with, joints):
                        sub = model.restrict(list(combo), select_on=rule.split("-")[0], subsets=rule in ("cv", "cv-means"),
                                             subset_means=rule == "cv-means", predict_with=predictor, joint=joint)
                        if joint and len(sub.learner_names) == len(combo):
                            continue  # no joint learner within this combination: same as the row without
                        mae = sub.mae(x_test, y_test)
                        label = (("stack" if rule == "cv" else f"stack-{rule}") + ("-folds" if predictor == "folds" else "")
                                 + ("-joint" if joint else ""))
                        rows.append(dict(dataset=name, fold=fold, branches=",".join(combo), seed=seed, method=label, mae=mae,
                                         val_mae=sub.best_val_mae_, selection_mae=sub.selection_maes_[sub.choice_], choice=sub.choice_,
                                         weights=json.dumps({b: round(float(w), 4) for b, w in zip(sub.learner_names, sub.weights_)}) if len(combo) > 1 else "",
                                         missing=json.dumps(sub.missing_), seconds=round(secs, 1)))
                        print(f"[ablation] {name} fold {fold} {','.join(combo)} seed {seed} ({label}): test MAE {mae:.4f} "
                              f"(chose {sub.choice_})", file=sys.stderr, flush=True)
                    flush()
                    continue
                for combo in todo:
                    t = time.perf_counter()
                    model = MultiScaleRegressor(branches=combo, fusion=args.method, branch_dropout=args.branch_dropout,
                                                aux_weight=args.aux_weight if len(combo) > 1 else 0.0, width=args.width, batch_size=args.batch_size,
                                                max_epochs=args.max_epochs, patience=args.patience, seed=seed,
                                                val_fraction=args.val_fraction, device=args.device, graph_encoder=graph_encoder)
                    model.fit(x_train, y_train)
                    mae = model.mae(x_test, y_test)
                    weights = model.branch_weights(x_test) if len(combo) > 1 else None
                    rows.append(dict(dataset=name, fold=fold, branches=",".join(combo), seed=seed, method=args.method,
                                     mae=mae, val_mae=model.best_val_mae_,
                                     epochs=model.n_epochs_, seconds=round(time.perf_counter() - t, 1),
                                     weights=json.dumps(weights) if weights else ""))
                    flush()
                    print(f"[ablation] {name} fold {fold} {','.join(combo)} seed {seed}: test MAE {mae:.4f} ({model.n_epochs_} epochs, "
                          f"{time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    report = args.report_method or args.method
    every_rule = df.copy()
    df = pd.concat([df[df["method"].fillna("") == ""], method_rows(df, report)], ignore_index=True)  # one method at a time
    if args.md:
        cmd = "python benchmarks/multiscale/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
        notes = Path(args.notes).read_text() if args.notes else None
        Path(args.md).write_text(markdown(df, cmd, notes) + "\n" + rules_table(every_rule))
    print(json.dumps(verdicts(df), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
