"""``crystext benchmark``: element / structure vectors vs the ElementEmbeddings baselines."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="benchmark element/structure vectors against Magpie, Mat2Vec, ... (results.csv, report.md, plots)",
        description="Run every task under DATA (composition tasks <task>/{train,val,test}.csv or "
        "{train,test}<k>.csv folds; structure tasks: any such folder whose CSVs have a cif column) with "
        "every vector set (ElementEmbeddings baselines, our runs; on structure tasks also ACE, CHGNet "
        "vectors, a trained CGCNN-style network and our runs' structure vectors), fitted with ridge, "
        "HistGradientBoosting and a small MLP under one protocol; each representation's setting is "
        "picked on validation MAE. Writes OUT/results.csv (task,representation,pooling,regressor,seed,"
        "metric,value with metric mae = test, val_mae = validation), OUT/selected.csv (picked settings, "
        "tie-aware ranks), OUT/report.md and OUT/plots/. Each finished task is kept under OUT/.partial "
        "until the end: a stopped run, started again with the same command, reads those tasks back and "
        "goes on with the rest.",
    )
    p.add_argument("--data", default=None, help="task folder (default: the shared data folder, $CRYSTEXT_DATA)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--runs", nargs="+", default=[], metavar="RUN",
                   help="our runs: run folders or NAME=PATH (reported as crystext-NAME)")
    p.add_argument("--tables", nargs="+", default=[], metavar="NAME=CSV",
                   help="extra element tables (ElementEmbeddings CSV layout element,0,1,...)")
    p.add_argument("--baselines", nargs="*", default=None, metavar="NAME",
                   help="ElementEmbeddings sets (default: magpie mat2vec skipatom megnet16 oliynyk crystallm "
                   "atomic random_200; give none to skip baselines)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="task names to run (a group such as matbench_expt_gap or perov_5 selects all its parts)")
    p.add_argument("--quick", action="store_true", help="tiny caps, one seed, small models (smoke test)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="MLP seeds (default 0 1 2; quick: 0)")
    p.add_argument("--regressors", nargs="+", default=None, choices=["ridge", "hgb", "mlp"])
    p.add_argument("--poolings", nargs="+", default=None, choices=["mean", "sum", "max", "min", "std", "stats4"],
                   help="composition poolings (default mean stats4)")
    p.add_argument("--max-train", type=int, default=None, help="training rows cap (default 2000; quick 300; 0: no cap)")
    p.add_argument("--max-val", type=int, default=None, help="validation rows cap (default 1000; quick 100; 0: no cap)")
    p.add_argument("--max-test", type=int, default=None, help="test rows cap (default none; quick 300; 0: no cap)")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                   help="structure-vector layers of our runs: ints, middle, last (default middle last)")
    p.add_argument("--structure-poolings", nargs="+", default=None,
                   choices=["mean", "last", "mean+elements", "last+elements"],
                   help="our runs' structure vectors: hidden states pooled by mean or <eos> (last); '+elements' "
                   "puts the run's element vectors, mean-pooled over the composition, beside them (default mean last)")
    p.add_argument("--n-jobs", type=int, default=1, help="parallel work units (results do not depend on it)")
    p.add_argument("--cache-dir", default=None, help="cache of structure texts/vectors (default ~/.cache/crystext)")
    p.add_argument("--lm-precision", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="our runs' structure forward pass (default auto: bf16 autocast on CPUs with native "
                   "bf16 matmuls, else float32)")
    p.add_argument("--structure-baselines", nargs="*", default=None, choices=["ace", "chgnet", "cgcnn"],
                   help="structure baselines on structure tasks (default: ace chgnet cgcnn; chgnet only when the "
                   "optional package is installed; give none to skip them)")
    p.add_argument("--no-probes", action="store_true",
                   help="leave out the geometry probes (probes/polymorph, probes/geometry, built from mp_e_form; "
                   "run by default with all tasks; --tasks probes runs them and carbon_24 alone)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.set_defaults(func=_benchmark)


def _benchmark(args: argparse.Namespace) -> int:
    from ..benchmark import REGRESSORS, BenchmarkSettings, run_benchmark
    from ..errors import ConfigError

    tables = {}
    for spec in args.tables:
        if "=" not in spec:
            raise ConfigError(f"--tables takes NAME=CSV, not {spec!r}")
        name, path = spec.split("=", 1)
        tables[name] = path
    options = {}
    if args.poolings:
        options["poolings"] = tuple(args.poolings)
    if args.layers:
        options["structure_layers"] = tuple(int(x) if x.lstrip("-").isdigit() else x for x in args.layers)
    if args.structure_poolings:
        options["structure_poolings"] = tuple(args.structure_poolings)
    settings = BenchmarkSettings(
        runs=args.runs, tables=tables, baselines=args.baselines, tasks=args.tasks, quick=args.quick,
        seeds=args.seeds, regressors=tuple(args.regressors or REGRESSORS), max_train=args.max_train,
        max_val=args.max_val, max_test=args.max_test, n_jobs=args.n_jobs, cache_dir=args.cache_dir,
        plots=not args.no_plots, lm_precision=args.lm_precision, structure_baselines=args.structure_baselines,
        probes=not args.no_probes,
        command="crystext " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] else None,
        **options,
    )
    result = run_benchmark(data=args.data, out=args.out, settings=settings)
    print(f"{len(result.results)} results in {result.seconds:.0f} s -> {result.out}/results.csv, report.md")
    return 0
