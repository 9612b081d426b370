"""``crystext embed`` (structure vectors -> Parquet) and ``crystext elements`` (element vectors -> CSV)."""

from __future__ import annotations

import argparse
import json
import sys

from ..limits import DEFAULT_MAX_ATOMS, DEFAULT_TIME_LIMIT


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed structures into vectors (Parquet)",
        description="Embed structures with a pretrained run: pooled hidden states of one layer, one "
        "vector per structure, streamed in batches into a Parquet file (columns id, source, "
        "embedding). Bad records are skipped, counted and listed in OUT.skipped.csv (id, source, reason, "
        "message). OUT appears only when complete; a second run on the same OUT refuses while the first runs.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a CIF file, a folder of CIFs, a table (CSV/Parquet/JSONL) with a 'cif' column, "
                   "or a saved corpus folder (its 'text' column is embedded as written)")
    p.add_argument("--model", required=True, help="run folder, name under models/, or Hub repo id")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--layer", type=int, default=None,
                   help="hidden layer: 0 = embedding output .. n_layer; -1 = last (default)")
    p.add_argument("--pooling", choices=["mean", "last"], default="mean",
                   help="mean over the text tokens (default) or the last (<eos>) token")
    p.add_argument("--batch-size", type=int, default=32, help="structures per forward pass (default 32)")
    p.add_argument("--symprec", type=float, default=0.1, help="symmetry tolerance of the canonical text")
    p.add_argument("--precision", default="float32",
                   help="float32 (default: reproducible vectors), bf16, or auto (bf16 autocast only where this "
                   "machine runs it fast; vectors then differ from float32 ones at ~1e-3)")
    p.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS, metavar="N",
                   help=f"skip structures of more atoms (default {DEFAULT_MAX_ATOMS}; 0: no limit)")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                   help=f"skip records whose text conversion takes longer (default {DEFAULT_TIME_LIMIT:g}; 0: no limit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    p.set_defaults(func=_embed)

    e = subparsers.add_parser(
        "elements",
        help="write a run's element vectors as an ElementEmbeddings CSV",
        description="Write the input-embedding rows of the element tokens as a CSV "
        "(element,0,1,...) that elementembeddings.core.Embedding.from_csv reads.",
    )
    e.add_argument("model", metavar="RUN", help="run folder, name under models/, or Hub repo id")
    e.add_argument("--out", required=True, help="output CSV file")
    e.set_defaults(func=_elements)


def _embed(args: argparse.Namespace) -> int:
    from ..embeddings import DEFAULT_LAYER, embed_to_parquet

    summary = embed_to_parquet(
        args.inputs, args.model, args.out,
        layer=DEFAULT_LAYER if args.layer is None else args.layer,
        pooling=args.pooling, batch_size=args.batch_size, device=args.device, symprec=args.symprec,
        progress=not args.no_progress, precision=args.precision,
        max_atoms=args.max_atoms or None, time_limit=args.time_limit or None,
    )
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["skip_reasons"].items())) or "none"
    print(f"embedded {summary['embedded']} structures ({summary['dim']}-D, layer {summary['layer']}, "
          f"{summary['pooling']} pooling, {summary['precision']}) -> {summary['out']}")
    print(f"skipped {summary['skipped']} ({reasons})" + (f": listed in {summary['skipped_file']}"
                                                         if summary["skipped"] else ""))
    for line in summary["examples"]:
        print(f"  {line}", file=sys.stderr)
    if summary["embedded"] == 0:
        print(json.dumps(summary, indent=1), file=sys.stderr)
        return 1
    return 0


def _elements(args: argparse.Namespace) -> int:
    from ..embeddings import element_embeddings, save_element_csv

    df = element_embeddings(args.model)
    path = save_element_csv(df, args.out)
    print(f"wrote {len(df)} elements x {df.shape[1]} dimensions -> {path}")
    return 0
