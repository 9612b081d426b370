"""Branch ablation of the multi-scale head: every single branch, every pair, and all together.

Data (shared data folder, see crystext.settings.data_dir): ``perov_5`` target ``heat_all`` (eV per
cell) and ``carbon_24`` target ``energy_per_atom`` (eV/atom); ``val.csv`` is the training split
(10% of it held out for early stopping), ``test.csv`` the test split, as the data README says.

Branches: ``lm`` (needs ``--run`` or ``--lm-embeddings``), ``composition`` (element table pooled
over the formula), ``graph`` (CGCNN-style GNN trained end to end), ``ace`` (body order <= 4
invariants), ``chgnet`` (pretrained CHGNet 64-D crystal vectors; needs ``pip install chgnet``).
Featurised inputs are cached per data set (``--cache``), rows already in ``--out`` are skipped
(the run can be resumed), a ``dummy`` row (predict the training mean) is written per data set.

Usage:
  python benchmarks/multiscale/ablation.py --run models/crystext-base \
      --out benchmarks/multiscale/ablation.csv --md benchmarks/multiscale/ablation.md
  # without an LM run: --branches composition,graph,ace,chgnet
  # smaller/faster: --limit-train 1000 --seeds 0 --max-epochs 100
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

DATASETS = {"perov_5": "heat_all", "carbon_24": "energy_per_atom"}
#: ACE settings per data set: many elements -> element-table channels (PCA 3), carbon -> one-hot
ACE_PARAMS = {
    "perov_5": dict(cutoff=5.0, n_radial=3, max_angular=3, species_components=3),
    "carbon_24": dict(cutoff=5.0, n_radial=6, max_angular=4, species_table=None),
}


def load_split(name: str, split: str, target: str, limit: int | None):
    from crystext.heads import read_structures_table
    from crystext.settings import data_dir

    path = data_dir(required=True) / name / f"{split}.csv"
    return read_structures_table(path, target, limit)


def lm_arrays(args, name: str, s_train, s_test):
    """LM embeddings: <dir>/<name>_{train,test}.npy (the first rows of each split, in file order;
    files with more rows than the --limit-* rows are cut to them), or computed with --run."""
    if args.lm_embeddings:
        d = Path(args.lm_embeddings)
        out = []
        for split, structures in (("train", s_train), ("test", s_test)):
            x = np.load(d / f"{name}_{split}.npy", allow_pickle=False)
            if len(x) < len(structures):
                raise SystemExit(f"{d / f'{name}_{split}.npy'} has {len(x)} rows for {len(structures)} structures")
            out.append(x[: len(structures)])
        return tuple(out)
    if args.run:
        import contextlib

        import torch

        from crystext.embeddings import load_run, structure_embeddings

        run = load_run(args.run)
        # bf16 autocast: ~2-40x faster on CPUs with bf16 matmuls; vectors within 1e-5 cosine of fp32
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if args.lm_bf16 else contextlib.nullcontext()
        with ctx:
            out = (structure_embeddings(s_train, run, batch_size=args.lm_batch_size),
                   structure_embeddings(s_test, run, batch_size=args.lm_batch_size))
        if args.lm_save:
            Path(args.lm_save).mkdir(parents=True, exist_ok=True)
            np.save(Path(args.lm_save) / f"{name}_train.npy", out[0])
            np.save(Path(args.lm_save) / f"{name}_test.npy", out[1])
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


def _branch_key(args, name: str, branch: str) -> str:
    """Cache file stem of one branch: everything its features depend on."""
    if branch == "lm":
        extra = f"lm-{Path(args.lm_embeddings or args.run or 'none').name}"
    elif branch == "ace":
        extra = "ace-" + "-".join(f"{k}{v}" for k, v in sorted(ACE_PARAMS[name].items())) + f"-{args.element_table}"
    elif branch == "graph":
        extra = f"graph-c{args.graph_cutoff}-{args.element_table}"
    elif branch == "composition":
        extra = f"composition-{args.element_table}"
    else:
        extra = branch
    return f"{name}_{args.limit_train}_{args.limit_test}_{extra}"


def featurise(args, name: str, branches: list[str]):
    """(train inputs, y_train, test inputs, y_test); every branch is cached on its own in an
    ``.npz`` (read with allow_pickle=False), so adding a branch later featurises only that one."""
    from crystext.heads import BranchFeaturizer, BranchInputs

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    target = DATASETS[name]
    ykey = cache / f"{name}_{args.limit_train}_{args.limit_test}_targets.npz"
    parsed = {}

    def structures():
        if not parsed:
            s_train, y_train, _ = load_split(name, "val", target, args.limit_train)
            s_test, y_test, _ = load_split(name, "test", target, args.limit_test)
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
    full_y = cache / f"{name}_None_None_targets.npz"
    sliceable = False
    if (args.limit_train or args.limit_test) and full_y.is_file():
        with np.load(full_y, allow_pickle=False) as z:
            sliceable = (np.array_equal(z["y_train"][:n_tr], y_train) and np.array_equal(z["y_test"][:n_te], y_test)
                         and len(z["y_train"]) == _csv_rows(name, "val") and len(z["y_test"]) == _csv_rows(name, "test"))
    full_args = argparse.Namespace(**{**vars(args), "limit_train": None, "limit_test": None})
    x_train, x_test = BranchInputs(), BranchInputs()
    for b in branches:
        path = cache / f"{_branch_key(args, name, b)}.npz"
        full = cache / f"{_branch_key(full_args, name, b)}.npz"
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
                lm_train, lm_test = lm_arrays(args, name, p["s_train"], p["s_test"])
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
    """Mean gated-fusion weights (test set) over seeds, e.g. ``lm 0.21, graph 0.40``."""
    ws = [json.loads(w) for w in sub.get("weights", pd.Series(dtype=object)).dropna() if isinstance(w, str) and w]
    if not ws:
        return ""
    keys = list(ws[0])
    return ", ".join(f"{k} {np.mean([w[k] for w in ws]):.2f}" for k in keys)


def markdown(df: pd.DataFrame, command: str, notes: str | None = None) -> str:
    lines = ["# Multi-scale head ablation", ""]
    if notes:
        lines += [notes.rstrip(), ""]
    lines += [f"Table written by: `{command}`", "",
              "Test MAE (mean ± std over seeds; lower is better). Training = the data set's `val.csv` "
              "(10% held out for early stopping: `val MAE` is that split), test = `test.csv`. "
              "`dummy` predicts the training mean. Gate weights: mean softmax weight of every branch "
              "on the test set (gated fusion).", ""]
    for name, sub in df.groupby("dataset", sort=False):
        agg = {"mae": ["mean", "std", "count"]}
        for c in ("val_mae", "epochs"):
            if c in sub:
                agg[c] = ["mean"]
        stats = sub.groupby("branches", sort=False).agg(agg)
        stats.columns = ["mean", "std", "count"] + [c for c in ("val_mae", "epochs") if c in sub]
        singles = stats[[("," not in b and b != "dummy") for b in stats.index]]
        best_single = singles["mean"].idxmin() if len(singles) else None
        lines += [f"## {name} (`{DATASETS.get(name, '')}`)", "",
                  "| branches | test MAE | val MAE | epochs | seeds | gate weights |", "|---|---|---|---|---|---|"]
        for b, row in stats.sort_values("mean").iterrows():
            mark = " (best single)" if b == best_single else ""
            std = "" if np.isnan(row["std"]) else f" ± {row['std']:.4f}"
            val = "" if np.isnan(row.get("val_mae", np.nan)) else f"{row['val_mae']:.4f}"
            ep = "" if np.isnan(row.get("epochs", np.nan)) else f"{row['epochs']:.0f}"
            lines.append(f"| {b}{mark} | {row['mean']:.4f}{std} | {val} | {ep} | {int(row['count'])} | "
                         f"{_weights_summary(sub[sub.branches == b])} |")
        fused = [b for b in stats.index if b.count(",") >= 2]
        if best_single and fused:
            f = max(fused, key=lambda b: b.count(","))
            verdict = "beats" if stats.loc[f, "mean"] < stats.loc[best_single, "mean"] else "does NOT beat"
            pairs = stats[[b.count(",") == 1 for b in stats.index]]
            best_pair = pairs["mean"].idxmin() if len(pairs) else None
            lines += ["", f"All branches together ({f}) {verdict} the best single branch ({best_single}): "
                      f"{stats.loc[f, 'mean']:.4f} vs {stats.loc[best_single, 'mean']:.4f}."
                      + (f" Best pair: {best_pair} {stats.loc[best_pair, 'mean']:.4f}." if best_pair else "")]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--branches", default="lm,composition,graph,ace,chgnet")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--run", default=None, help="LM run for the lm branch")
    ap.add_argument("--lm-embeddings", default=None, help="folder with <dataset>_{train,test}.npy LM vectors")
    ap.add_argument("--lm-batch-size", type=int, default=32)
    ap.add_argument("--lm-bf16", action="store_true", help="with --run: embed under bf16 autocast")
    ap.add_argument("--lm-save", default=None, help="with --run: also save the LM vectors as <dir>/<dataset>_{train,test}.npy")
    ap.add_argument("--element-table", default="magpie")
    ap.add_argument("--graph-cutoff", type=float, default=5.0)
    ap.add_argument("--graph-hidden", type=int, default=64, help="GNN width (GraphEncoder hidden)")
    ap.add_argument("--graph-layers", type=int, default=3, help="GNN gated convolutions")
    ap.add_argument("--fusion", default="gated", choices=["gated", "concat"])
    ap.add_argument("--branch-dropout", type=float, default=0.1)
    ap.add_argument("--aux-weight", type=float, default=0.5,
                    help="per-branch auxiliary loss weight (0 = plain fusion; see MultiScaleRegressor)")
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
    args = ap.parse_args(argv)

    import torch

    from crystext.heads import MultiScaleRegressor

    if args.threads:
        torch.set_num_threads(args.threads)
    branches = [b.strip() for b in args.branches.split(",") if b.strip()]
    out = Path(args.out)
    done = pd.read_csv(out) if out.is_file() else pd.DataFrame(columns=["dataset", "branches", "seed", "mae"])
    have = {(r.dataset, r.branches, int(r.seed)) for r in done.itertuples()}
    rows = done.to_dict("records")

    def flush():
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(out, index=False)

    for name in args.datasets:
        x_train, y_train, x_test, y_test = featurise(args, name, branches)
        if (name, "dummy", 0) not in have:
            rows.append(dict(dataset=name, branches="dummy", seed=0, mae=float(np.mean(np.abs(y_test - y_train.mean())))))
            flush()
        for combo in [c for c in combos(branches, args.sizes) if not args.with_branch or args.with_branch in c]:
            for seed in args.seeds:
                label = ",".join(combo)
                if (name, label, seed) in have:
                    continue
                t = time.perf_counter()
                model = MultiScaleRegressor(branches=combo, fusion=args.fusion, branch_dropout=args.branch_dropout,
                                            aux_weight=args.aux_weight if len(combo) > 1 else 0.0,
                                            max_epochs=args.max_epochs, patience=args.patience, seed=seed, device=args.device,
                                            graph_encoder=dict(cutoff=args.graph_cutoff, hidden=args.graph_hidden,
                                                               n_layers=args.graph_layers))
                model.fit(x_train, y_train)
                mae = model.mae(x_test, y_test)
                weights = model.branch_weights(x_test) if len(combo) > 1 else None
                rows.append(dict(dataset=name, branches=label, seed=seed, mae=mae, val_mae=model.best_val_mae_,
                                 epochs=model.n_epochs_, seconds=round(time.perf_counter() - t, 1),
                                 weights=json.dumps(weights) if weights else ""))
                flush()
                print(f"[ablation] {name} {label} seed {seed}: test MAE {mae:.4f} ({model.n_epochs_} epochs, "
                      f"{time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    if args.md:
        cmd = "python benchmarks/multiscale/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
        notes = Path(args.notes).read_text() if args.notes else None
        Path(args.md).write_text(markdown(df, cmd, notes) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
