"""``crystext plot elements``: pictures of a run's element vectors beside ElementEmbeddings sets."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="draw pictures (element vectors)",
                              description="Draw pictures of a run's vectors.")
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    e = sub.add_parser(
        "elements",
        help="PCA/t-SNE maps coloured by periodic-table group and cosine heatmaps of element vectors",
        description="Element vectors of RUN (or an element CSV) beside ElementEmbeddings sets: 2-D maps "
        "coloured by periodic-table group (elements_<method>.png) and cosine-similarity heatmaps in "
        "periodic order (elements_cosine.png).",
    )
    e.add_argument("run", metavar="RUN", help="run folder, name under models/, Hub id, or an element CSV")
    e.add_argument("--compare", nargs="*", default=[], metavar="SET",
                   help="ElementEmbeddings sets (magpie, mat2vec, crystallm, skipatom, megnet16, ...) or CSVs")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--methods", nargs="+", default=["pca", "tsne"], choices=["pca", "tsne", "umap"],
                   help="2-D projections to draw (default: pca tsne)")
    e.add_argument("--order", choices=["mendeleev", "z"], default="mendeleev",
                   help="heatmap order: Mendeleev (Pettifor) number or atomic number")
    e.add_argument("--name", default=None, help="title of our panel (default: the run's folder name)")
    e.set_defaults(func=_elements)


def _elements(args: argparse.Namespace) -> int:
    from ..plots import plot_elements

    paths = plot_elements(args.run, args.out, compare=args.compare, methods=args.methods, order=args.order,
                          name=args.name)
    for path in paths:
        print(path)
    return 0
