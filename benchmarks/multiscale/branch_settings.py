"""Branch-regressor settings picked on held-out *training* rows (the test split is never read).

The rows of a data set's training split (``val.csv`` for perov_5) are split 80/20 with a fixed
seed; each setting is fitted on the 80 % (its own early-stopping split carved from them) and
scored on the 20 %, for two seeds. Features come from the ablation's cache (run
``ablation.py --featurise-only`` first). A spec is ``branch[+branch...][:{python dict of
MultiScaleRegressor parameters}]``; several branches are one concat network (a joint learner).

  python benchmarks/multiscale/branch_settings.py --dataset perov_5 \\
      "chgnet" "chgnet:{'max_epochs':300,'patience':30,'width':256}" \\
      "chgnet+composition:{'max_epochs':300,'patience':30,'width':256}"
"""

from __future__ import annotations

import argparse
import ast
import os
import time

import numpy as np

DEFAULTS = dict(width=64, max_epochs=60, patience=12, batch_size=128, branch_dropout=0.0, aux_weight=0.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="perov_5", help="cached data set (full splits, not a fold data set)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/crystext/ablation"))
    ap.add_argument("--run", default="runs/crystext-mp-part4", help="LM run whose cached vectors the lm branch reads")
    ap.add_argument("--element-table", default="magpie", help="as the ablation's --element-table")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("specs", nargs="+")
    args = ap.parse_args(argv)

    import torch

    from crystext.heads import BranchInputs, MultiScaleRegressor

    torch.set_num_threads(args.threads)
    from ablation import _branch_key  # the cache's file names, as the ablation wrote them

    # the ablation's cache key of a full-data branch (LM: --run names the run folder)
    key_args = argparse.Namespace(lm_embeddings=None, run=args.run, element_table=args.element_table,
                                  graph_cutoff=5.0, limit_train=None, limit_test=None)
    stem = os.path.join(args.cache, f"{args.dataset}_None_None_")
    if not os.path.isfile(stem + "targets.npz"):
        raise SystemExit(f"no cached features for {args.dataset} under {args.cache}: run ablation.py --featurise-only first")
    y = np.load(stem + "targets.npz")["y_train"]
    perm = np.random.default_rng(0).permutation(len(y))
    hold, fit = perm[: len(y) // 5], perm[len(y) // 5:]
    print(f"{args.dataset}: {len(fit)} fitting rows, {len(hold)} held-out training rows; seeds {args.seeds}")
    print("| spec | held-out MAE (mean) | per seed | epochs | s per fit |")
    print("|---|---|---|---|---|")
    for spec in args.specs:
        combo, _, rest = spec.partition(":")
        params = {**DEFAULTS, **(ast.literal_eval(rest) if rest else {})}
        branches = combo.split("+")
        feats = {}
        for b in branches:
            path = os.path.join(args.cache, _branch_key(key_args, args.dataset, b) + ".npz")
            if not os.path.isfile(path):
                raise SystemExit(f"branch {b!r} of {args.dataset} is not cached as {path}")
            feats[b] = np.load(path)["train"]
        x = BranchInputs(feats)
        maes, epochs, t = [], [], time.perf_counter()
        for seed in args.seeds:
            m = MultiScaleRegressor(branches=branches, fusion="concat", seed=seed, **params).fit(x.subset(fit), y[fit])
            maes.append(m.mae(x.subset(hold), y[hold]))
            epochs.append(m.n_epochs_)
        per_fit = (time.perf_counter() - t) / len(args.seeds)
        print(f"| `{spec}` | {np.mean(maes):.4f} | {', '.join(f'{v:.4f}' for v in maes)} | {epochs} | {per_fit:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
