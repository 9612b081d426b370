"""``crystext heads``: train a multi-scale property head on a structure table, or predict with one."""

from __future__ import annotations

import argparse
import json
import sys


def _branches(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


def _train(args) -> int:
    from ..heads import train_heads

    result = train_heads(
        args.train, args.test, args.target, _branches(args.branches), out=args.out, run=args.run,
        element_table=args.element_table, limit=args.limit, fusion=args.fusion, n_folds=args.n_folds, width=args.width,
        max_epochs=args.epochs, patience=args.patience, lr=args.lr, batch_size=args.batch_size,
        seed=args.seed, device=args.device, verbose=args.verbose,
        **({"joint": None if args.joint == "none" else args.joint, "subset_means": args.subset_means}
           if args.fusion == "stack" else {}),
    )
    print(json.dumps(result, indent=2))
    return 0


def _predict(args) -> int:
    import numpy as np
    import pandas as pd

    from ..atomic import SkippedRows, atomic_path, skipped_path
    from ..heads import load_head, read_structures_table

    model = load_head(args.model, device=args.device)
    feat = model.featurizer(args.model, run=args.run)
    skipped = SkippedRows(skipped_path(args.out))
    structures, y, ids = read_structures_table(args.table, args.target, skipped=skipped)
    pred = model.predict(feat.fit(structures).transform(structures))
    out = pd.DataFrame({"id": ids, "prediction": pred})
    if args.target:
        out["target"] = y
        ok = np.isfinite(pred)
        print(json.dumps({"mae": float(np.mean(np.abs(pred[ok] - y[ok]))), "n": int(ok.sum())}))
    with atomic_path(args.out) as tmp:  # the CSV appears whole or not at all
        out.to_csv(tmp, index=False)
    skipped.write()
    if len(skipped):
        print(f"skipped {len(skipped)} rows: listed in {skipped.path}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("heads", help="multi-scale property heads (LM + composition + graph + ACE + CHGNet)")
    verbs = p.add_subparsers(dest="heads_command", metavar="ACTION", required=True)
    t = verbs.add_parser("train", help="featurise a CIF table, train a head with early stopping, report MAE")
    t.add_argument("--train", required=True, help="CSV/Parquet with a 'cif' column and the target column")
    t.add_argument("--test", default=None, help="optional test table (same columns)")
    t.add_argument("--target", required=True, help="target column, e.g. heat_all")
    t.add_argument("--branches", default="composition,graph,ace",
                   help="comma-separated: lm,composition,graph,ace,chgnet (default composition,graph,ace)")
    t.add_argument("--run", default=None, help="LM run folder or name (needed for the lm branch)")
    t.add_argument("--element-table", default="magpie", help="element table name or CSV (default magpie)")
    t.add_argument("--fusion", choices=["stack", "gated", "concat"], default="stack",
                   help="stack (default): per-branch regressors + out-of-fold combiner chosen on validation, never "
                        "worse than the best branch on validation; gated/concat: one network over all branches")
    t.add_argument("--n-folds", type=int, default=5, help="stack: folds of the out-of-fold predictions")
    t.add_argument("--joint", choices=["none", "best-pairs"], default="best-pairs",
                   help="stack: also a concat network per pair of the best branch with each other branch, as "
                        "combiner columns (default best-pairs; none: about half the training time)")
    t.add_argument("--subset-means", action=argparse.BooleanOptionalAction, default=True,
                   help="stack: the plain mean of every branch subset is a candidate too (default on)")
    t.add_argument("--width", type=int, default=256, help="per-branch width (default 256, as in the ablation)")
    t.add_argument("--epochs", type=int, default=300, help="maximum epochs")
    t.add_argument("--patience", type=int, default=30, help="early-stopping patience (epochs)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, default=None, help="use only the first N rows of each table, the test table too (a quick look, not a test MAE)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--out", default=None, help="save the trained head here (save_pretrained folder)")
    t.add_argument("--verbose", action="store_true", help="print every epoch")
    t.set_defaults(func=_train)
    q = verbs.add_parser("predict", help="predict a CIF table with a saved head; writes a CSV")
    q.add_argument("--model", required=True, help="folder written by heads train --out")
    q.add_argument("--table", required=True, help="CSV with a 'cif' column")
    q.add_argument("--target", default=None, help="optional target column: also print the MAE")
    q.add_argument("--run", default=None, help="LM run (if the head has an lm branch)")
    q.add_argument("--device", default="cpu")
    q.add_argument("--out", required=True, help="output CSV (id, prediction[, target])")
    q.set_defaults(func=_predict)
