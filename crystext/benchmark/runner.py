"""``run_benchmark``: every task x representation x pooling x regressor x seed, under one protocol.

Order of work (all deterministic):

1. discover the tasks (:func:`~crystext.benchmark.tasks.discover_tasks`) and load the vector sets
   (ElementEmbeddings baselines, extra tables, our runs' element vectors);
2. per task, read the splits (caps on the rows of huge tasks, seeded), parse formulas, and drop
   from train/val/test, **for every representation alike**, the rows whose formula cannot be
   parsed or holds an element missing from *any* compared set (and, for structure tasks, the rows
   whose structure any run cannot embed); the counts go to ``coverage.csv`` and the report;
3. per (task, representation, pooling): features, then ridge and HGB once (deterministic, seed =
   the first seed) and the MLP once per seed, test MAE per fit;
4. intrinsic metrics of the element sets; ``results.csv``, ``report.md`` and plots under ``out``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..composition import BASELINES, composition_embeddings, parse_formula
from ..errors import ConfigError
from ..settings import data_dir
from .protocol import DETERMINISTIC, QUICK, REGRESSORS, ProtocolConfig, fit_predict_seeds, mae
from .representations import Run, element_sets, resolve_precision, structure_texts
from .tasks import Split, Task, discover_tasks, load_splits

RESULT_COLUMNS = ["task", "representation", "pooling", "regressor", "seed", "metric", "value"]
COMPOSITION_POOLINGS = ("mean", "stats4")
#: full-mode caps: training / validation rows of every task (composition and structure) above these
#: are subsampled to them (seeded); test splits are used whole. They keep the whole suite (16
#: tasks, 10 vector sets, 2 runs' structure views) inside 30 minutes on 2 CPU cores; pass
#: a cap of 0 means none (``--max-train 0 --max-val 0``: the published full splits)
MAX_TRAIN, MAX_VAL, MAX_TEST = 2000, 1000, None
QUICK_MAX = (300, 100, 300)


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` produced (also written under ``out``)."""

    results: pd.DataFrame
    coverage: pd.DataFrame
    similarity: pd.DataFrame
    nn_accuracy: pd.DataFrame
    out: Path | None
    seconds: float
    #: per fit: task, representation, pooling, regressor, seed, seconds, features, fit_info (chosen
    #: alpha, HGB iterations, MLP epochs, validation MAE); written as fits.csv (timings vary run to run)
    fits: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)


def _default_data() -> Path:
    root = data_dir(required=True)
    return root


def _prepare_task(task: Task, sets: Mapping[str, pd.DataFrame], runs: Sequence[Run], caps: tuple,
                  structure_layers: Sequence[Any], structure_poolings: Sequence[str], cache_dir: Path | None,
                  log, lm_precision: str = "float32") -> tuple[dict[str, Split], dict[str, list], dict[str, dict[str, np.ndarray]], list[dict]]:
    """Clean splits + parsed formulas + (structure tasks) run vectors, and coverage rows."""
    splits = load_splits(task, *caps)
    common = set.intersection(*(set(t.index) for t in sets.values()))
    parsed: dict[str, list] = {}
    struct: dict[str, dict[str, np.ndarray]] = {}
    coverage = []
    for name, split in splits.items():
        reasons: Counter = Counter()
        missing: Counter = Counter()
        keep = np.ones(len(split), dtype=bool)
        comps = []
        for i, f in enumerate(split.formulas):
            try:
                amounts = parse_formula(f)
            except Exception:  # noqa: BLE001 - counted, never fatal
                keep[i] = False
                reasons["unparsable formula"] += 1
                comps.append(None)
                continue
            lacking = set(amounts) - common
            if lacking:
                keep[i] = False
                reasons["element missing from a vector set"] += 1
                missing.update(lacking)
            comps.append(amounts)
        if task.kind == "structure" and runs:
            kept = np.flatnonzero(keep)
            texts, bad = structure_texts([split.cifs[i] for i in kept], cache_dir)
            for reason, n in bad.items():
                reasons[f"no canonical text ({reason})"] += n
            has_text = np.array([t is not None for t in texts], dtype=bool)
            texts = [t for t in texts if t is not None]
            ok_all = np.ones(len(texts), dtype=bool)
            vecs = {}
            for run in runs:
                views = [(layer, pooling) for layer in run.resolve_layers(structure_layers)
                         for pooling in structure_poolings]
                log(f"  {task.name} {name}: {run.name} layers/poolings {views} ({len(texts)} structures)")
                for (layer, pooling), (v, ok, skipped) in run.structure_views(texts, views, cache_dir,
                                                                                   precision=lm_precision).items():
                    for reason, n in skipped.items():  # the same texts fail at every layer: count once
                        key = f"{run.name} cannot embed ({reason})"
                        reasons[key] = max(reasons[key], int(n))
                    ok_all &= ok
                    vecs[f"{run.name}|structure-{pooling}-L{layer}"] = v
            keep[kept[~has_text]] = False
            keep[kept[has_text][~ok_all]] = False
            struct[name] = {k: v[ok_all] for k, v in vecs.items()}
        splits[name] = split.take(keep)
        parsed[name] = [c for c, k in zip(comps, keep) if k]
        coverage.append({"task": task.name, "split": name, "rows": len(keep), "used": int(keep.sum()),
                         "dropped": int((~keep).sum()),
                         "reasons": "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())),
                         "missing_elements": " ".join(f"{e}({n})" for e, n in sorted(missing.items()))})
    return splits, parsed, struct, coverage


def _fit_unit(task: str, representation: str, pooling: str, x: dict[str, np.ndarray], y: dict[str, np.ndarray],
              regressors: Sequence[str], seeds: Sequence[int], config: ProtocolConfig) -> list[dict]:
    rows = []
    for regressor in regressors:
        fit_seeds = seeds[:1] if regressor in DETERMINISTIC else seeds
        t0, c0 = time.perf_counter(), time.process_time()
        fitted = fit_predict_seeds(regressor, x["train"], y["train"], x["val"], y["val"], x["test"], fit_seeds, config)
        # the MLP's seeds train together: each row gets an equal share of the time
        seconds, cpu = (time.perf_counter() - t0) / len(fit_seeds), (time.process_time() - c0) / len(fit_seeds)
        for seed, (pred, info) in zip(fit_seeds, fitted):
            rows.append({"task": task, "representation": representation, "pooling": pooling,
                         "regressor": regressor, "seed": int(seed), "metric": "mae", "value": mae(y["test"], pred),
                         "_seconds": seconds, "_cpu": cpu, "_features": x["train"].shape[1],
                         "_info": json.dumps(info, sort_keys=True)})
    return rows


def _units(task: Task, sets, poolings, splits, parsed, struct, regressors, seeds, config):
    """(args for _fit_unit) per representation and pooling of one task, features built lazily."""
    y = {k: s.y for k, s in splits.items()}
    for name, table in sets.items():
        for pooling in poolings:
            x = {k: composition_embeddings(parsed[k], table, pooling) for k in splits}
            yield (task.name, name, pooling, x, y, regressors, seeds, config)
    if struct:
        for key in struct["train"]:
            name, pooling = key.split("|", 1)
            x = {k: struct[k][key].astype(np.float64) for k in splits}
            yield (task.name, name, pooling, x, y, regressors, seeds, config)


def run_benchmark(data: str | os.PathLike | None = None, out: str | os.PathLike | None = "benchmark-results",
                  runs: Iterable[Any] = (), tables: Mapping[str, Any] | None = None,
                  baselines: Iterable[str] | None = None, tasks: Iterable[str] | None = None,
                  quick: bool = False, seeds: Sequence[int] | None = None,
                  poolings: Sequence[str] = COMPOSITION_POOLINGS, regressors: Sequence[str] = REGRESSORS,
                  max_train: int | None = None, max_val: int | None = None, max_test: int | None = None,
                  structure_layers: Sequence[Any] = ("middle", "last"), structure_poolings: Sequence[str] = ("mean", "last"),
                  config: ProtocolConfig | None = None, n_jobs: int = 1, cache_dir: str | os.PathLike | None = None,
                  lm_precision: str = "auto",
                  intrinsic: bool = True, report: bool = True, plots: bool = True, progress: bool = True,
                  command: str | None = None) -> BenchmarkResult:
    """Benchmark element-vector sets (and our runs' structure vectors) on every task under ``data``.

    Args:
        data: a folder of tasks (default: the shared data folder, :func:`crystext.settings.data_dir`):
            ``<task>/{train,val,test}.csv``, Matbench-style ``{train,val,test}<k>.csv`` folds, and the
            structure sets ``perov_5`` / ``carbon_24`` (see :mod:`crystext.benchmark.tasks`).
        out: output folder (``results.csv``, ``coverage.csv``, ``intrinsic_*.csv``, ``report.md``,
            ``plots/``, ``run_info.json``); ``None`` writes nothing.
        runs: our trained runs: run folders, ``"NAME=PATH"``, ``(name, (model, tokenizer))`` pairs; each
            is reported as ``crystext-<name>`` (element vectors, and structure vectors on structure tasks).
        tables: extra element tables, name -> DataFrame / CSV path / ElementEmbeddings name.
        baselines: ElementEmbeddings set names (default :data:`crystext.composition.BASELINES`).
        tasks: task names to keep (a group name keeps all its folds / targets); default all.
        quick: tiny caps (300/100/300 rows), one seed, small regressors: for tests and smoke runs.
        seeds: MLP seeds (default (0, 1, 2); quick: (0,)); ridge and HGB are deterministic and run
            once, recorded under the first seed.
        poolings: composition poolings (see :func:`crystext.composition_embeddings`).
        regressors: any of ``ridge``, ``hgb``, ``mlp``.
        max_train, max_val, max_test: row caps per split (default 2000 / 1000 / none; quick 300/100/300; 0 = no cap), seeded.
        structure_layers: layers of our runs' structure vectors: ints, ``"middle"``, ``"last"``.
        structure_poolings: ``"mean"`` and/or ``"last"``.
        config: protocol hyper-parameters (default :class:`ProtocolConfig`, quick :data:`QUICK`).
        n_jobs: parallel work units (joblib processes); each fit is single-threaded, so results do
            not depend on ``n_jobs``.
        cache_dir: where structure texts and vectors are cached (default ``$CRYSTEXT_CACHE`` or
            ``~/.cache/crystext``, ``/benchmark``).
        lm_precision: our runs' structure forward pass: ``"float32"``, ``"bfloat16"`` (autocast) or
            ``"auto"`` (bf16 on a CPU with native bf16 matmuls, ~3x faster there, vectors within ~1e-5
            cosine of float32; float32 elsewhere). The choice is recorded in ``run_info.json``.
        intrinsic, report, plots: compute intrinsic metrics / write report.md / draw plots.
        command: the command line to quote in the report.

    Returns:
        :class:`BenchmarkResult` (results in the ``results.csv`` layout:
        ``task, representation, pooling, regressor, seed, metric, value``).
    """
    start = time.perf_counter()
    log = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
    data = Path(data) if data is not None else _default_data()
    if seeds is None:
        seeds = (0,) if quick else (0, 1, 2)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ConfigError("at least one seed is needed")
    for r in regressors:
        if r not in REGRESSORS:
            raise ConfigError(f"regressor must be one of {REGRESSORS}, not {r!r}")
    config = config or (QUICK if quick else ProtocolConfig())
    qt, qv, qs = QUICK_MAX if quick else (MAX_TRAIN, MAX_VAL, MAX_TEST)
    caps = tuple(None if c == 0 else c for c in (max_train if max_train is not None else qt,
                                                   max_val if max_val is not None else qv,
                                                   max_test if max_test is not None else qs))
    if cache_dir is None:
        cache_dir = Path(os.environ.get("CRYSTEXT_CACHE", Path.home() / ".cache" / "crystext")) / "benchmark"
    cache_dir = Path(cache_dir)

    lm_precision = resolve_precision(lm_precision)
    task_list = discover_tasks(data, tasks)
    run_list = [Run.parse(r) for r in runs]
    sets = element_sets(BASELINES if baselines is None else baselines, tables, run_list)
    log(f"benchmark: {len(task_list)} tasks, {len(sets)} vector sets ({', '.join(sets)}), "
        f"regressors {', '.join(regressors)}, seeds {seeds}")

    rows: list[dict] = []
    coverage: list[dict] = []
    for task in task_list:
        t0 = time.perf_counter()
        splits, parsed, struct, cov = _prepare_task(task, sets, run_list, caps, structure_layers,
                                                    structure_poolings, cache_dir, log, lm_precision)
        coverage += cov
        if min(len(s) for s in splits.values()) < 2:
            log(f"{task.name}: skipped, too few usable rows ({', '.join(f'{k} {len(s)}' for k, s in splits.items())})")
            continue
        units = _units(task, sets, poolings, splits, parsed, struct, regressors, seeds, config)
        if n_jobs == 1:
            for args in units:
                rows += _fit_unit(*args)
        else:
            from joblib import Parallel, delayed

            for part in Parallel(n_jobs=n_jobs)(delayed(_fit_unit)(*args) for args in units):
                rows += part
        log(f"{task.name}: {len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])} rows, "
            f"{time.perf_counter() - t0:.0f} s")

    everything = pd.DataFrame(rows, columns=RESULT_COLUMNS + ["_seconds", "_cpu", "_features", "_info"])
    everything = everything.sort_values(RESULT_COLUMNS[:5], kind="stable").reset_index(drop=True)
    results = everything[RESULT_COLUMNS].copy()
    fits = everything.drop(columns=["metric", "value"]).rename(
        columns={"_seconds": "seconds", "_cpu": "cpu_seconds", "_features": "features", "_info": "fit_info"})
    coverage_df = pd.DataFrame(coverage, columns=["task", "split", "rows", "used", "dropped", "reasons", "missing_elements"])
    if intrinsic and len(sets) > 1:
        from .intrinsic import periodic_nn_accuracy, similarity_agreement

        similarity = similarity_agreement(sets)
        nn = periodic_nn_accuracy(sets)
    else:
        similarity = pd.DataFrame(columns=["set_a", "set_b", "n_elements", "pearson", "spearman"])
        nn = pd.DataFrame(columns=["representation", "n_elements", "group_accuracy", "block_accuracy"])
    seconds = time.perf_counter() - start
    result = BenchmarkResult(results, coverage_df, similarity, nn, Path(out) if out is not None else None, seconds,
                             fits=fits)
    if out is not None:
        from .report import write_outputs

        info = {"command": command, "seconds": round(seconds, 1), "tasks": [t.name for t in task_list],
                "representations": list(sets), "runs": {r.name: str(r.source) for r in run_list},
                "seeds": list(seeds), "regressors": list(regressors), "poolings": list(poolings),
                "caps": {"train": caps[0], "val": caps[1], "test": caps[2]}, "quick": quick, "n_jobs": n_jobs,
                "lm_precision": lm_precision if run_list else None,
                "protocol": config.as_dict(), "data": str(data), "python": platform.python_version(),
                "cpus": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
        result.files = write_outputs(result, Path(out), info, report=report, plots=plots)
    log(f"benchmark done in {seconds:.0f} s" + (f" -> {out}" if out is not None else ""))
    return result
