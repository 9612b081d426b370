"""``run_benchmark``: every task x representation x setting x seed, under one protocol.

Order of work (all deterministic):

1. discover the tasks (:func:`~crystext.benchmark.tasks.discover_tasks`; composition tasks, and
   structure tasks = any task folder whose CSVs have a ``cif`` column) and load the vector sets
   (ElementEmbeddings baselines, extra tables, our runs' element vectors);
2. per task, read the splits (caps on the rows of huge tasks, seeded; an inner validation split
   carved from the training rows where a task or fold has none), parse formulas, and drop from
   train/val/test, **for every representation alike**, the rows whose formula cannot be parsed or
   holds an element missing from *any* compared set, and, on structure tasks, the rows whose
   structure any structure representation (our runs' LM vectors, ACE, CHGNet, the graph network)
   cannot featurise; the counts go to ``coverage.csv`` and the report;
3. per (task, representation, setting): ridge and HGB once (deterministic, seed = the first
   seed), the MLP once per seed, the graph network once per graph seed; test and validation MAE
   per fit (``results.csv``), per-row test errors kept in memory;
4. per (task group, representation): the setting with the lowest validation MAE, its test MAE,
   tie-aware ranks by paired bootstrap (``selected.csv``, :mod:`.selection`); the leakage table
   of our runs (``leakage.csv``, :mod:`.leakage`); intrinsic metrics; ``report.md`` and plots.
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
from .structures import (QUICK_STRUCTURE, STRUCTURE_BASELINES, StructureConfig, crystal_graphs, fit_cgcnn_seeds,
                         parse_structures, structure_vectors)
from .leakage import task_identities
from .probes import resolve_tasks
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
    #: per (task group, representation): the setting picked on validation, its test MAE mean ±
    #: std, tie-aware rank (see :mod:`crystext.benchmark.selection`); written as selected.csv
    selected: pd.DataFrame | None = None
    #: per run and task: test compositions / structures found in the run's pretraining corpus
    #: (:mod:`crystext.benchmark.leakage`); written as leakage.csv
    leakage: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)
    #: per-row absolute test errors, ``{(task, representation, pooling, regressor, seed): array}``:
    #: what the paired bootstraps of the ranks and of the probe verdicts resample (kept in memory only)
    errors: dict | None = field(default=None, repr=False)


def _default_data() -> Path:
    root = data_dir(required=True)
    return root


def _cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``, as ``lscpu`` shows it; else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _coverage_reasons(split: Split) -> Counter:
    """Rows skipped while reading a split file, with the first few named by file and row."""
    reasons: Counter = Counter()
    for reason, n in split.skipped.items():
        reasons[reason] += n
    if split.skipped_examples:
        reasons["(e.g. " + "; ".join(split.skipped_examples) + ")"] = 0
    return reasons


def _prepare_task(task: Task, sets: Mapping[str, pd.DataFrame], runs: Sequence[Run], caps: tuple,
                  structure_layers: Sequence[Any], structure_poolings: Sequence[str], cache_dir: Path | None,
                  log, lm_precision: str = "float32", structure_baselines: Sequence[str] = (),
                  structure_config: StructureConfig | None = None, n_jobs: int = 1):
    """Clean splits + parsed formulas + (structure tasks) structure vectors and graphs, and coverage rows.

    Returns ``(splits, parsed, struct, graphs, coverage, test_texts)``: ``struct[split]["name|pooling"]``
    vectors, ``graphs[split]`` the CGCNN graphs (when ``cgcnn`` is a baseline), ``test_texts`` the
    canonical texts of the kept test structures (structure tasks with runs; else None).
    """
    test_texts = None
    splits = load_splits(task, *caps)
    common = set.intersection(*(set(t.index) for t in sets.values()))
    structure_config = structure_config or StructureConfig()
    parsed: dict[str, list] = {}
    struct: dict[str, dict[str, np.ndarray]] = {}
    graphs: dict[str, list] = {}
    coverage = []
    for name, split in splits.items():
        reasons: Counter = _coverage_reasons(split)
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
        if task.kind == "structure" and (runs or structure_baselines):
            kept = np.flatnonzero(keep)
            cifs = [split.cifs[i] for i in kept]
            ok_all = np.ones(len(kept), dtype=bool)
            vecs: dict[str, np.ndarray] = {}
            if runs:
                texts, bad = structure_texts(cifs, cache_dir, n_jobs=n_jobs)
                for reason, n in bad.items():
                    reasons[f"no canonical text ({reason})"] += n
                has_text = np.array([t is not None for t in texts], dtype=bool)
                ok_all &= has_text
                good_texts = [t for t in texts if t is not None]
                ok_runs = np.ones(len(good_texts), dtype=bool)
                for run in runs:
                    views = [(layer, pooling) for layer in run.resolve_layers(structure_layers)
                             for pooling in structure_poolings]
                    log(f"  {task.name} {name}: {run.name} layers/poolings {views} ({len(good_texts)} structures)")
                    for (layer, pooling), (v, ok, skipped) in run.structure_views(
                            good_texts, views, cache_dir, precision=lm_precision, group=task.name.split("/")[0]).items():
                        for reason, n in skipped.items():  # the same texts fail at every layer: count once
                            key = f"{run.name} cannot embed ({reason})"
                            reasons[key] = max(reasons[key], int(n))
                        ok_runs &= ok
                        full = np.full((len(kept), v.shape[1]), np.nan, dtype=np.float32)
                        full[has_text] = v
                        vecs[f"{run.name}|structure-{pooling}-L{layer}"] = full
                ok_all[np.flatnonzero(has_text)[~ok_runs]] = False
                all_texts = texts
            if structure_baselines:
                structures, bad = parse_structures(cifs, n_jobs=n_jobs)
                for reason, n in bad.items():
                    reasons[f"unreadable CIF ({reason})"] += n
                ok_all &= np.array([s is not None for s in structures], dtype=bool)
                for base in structure_baselines:
                    if base == "cgcnn":
                        g = crystal_graphs(structures, structure_config)
                        fail = np.array([x is None for x in g], dtype=bool) & np.array([s is not None for s in structures])
                        if fail.any():
                            reasons["cgcnn cannot build the graph"] += int(fail.sum())
                        ok_all &= ~np.array([x is None for x in g], dtype=bool)
                        graphs[name] = g
                        continue
                    log(f"  {task.name} {name}: {base} vectors ({len(cifs)} structures)")
                    v, n_failed = structure_vectors(base, cifs, structures, structure_config, cache_dir, task.name.split("/")[0],
                                                    n_jobs=n_jobs)
                    finite = np.isfinite(v).all(axis=1) if v.shape[1] else np.zeros(len(cifs), dtype=bool)
                    fail = ~finite & np.array([s is not None for s in structures])
                    if fail.any():
                        reasons[f"{base} cannot featurise"] += int(fail.sum())
                    ok_all &= finite
                    vecs[f"{base}|structure"] = v
            keep[kept[~ok_all]] = False
            struct[name] = {k: v[ok_all] for k, v in vecs.items()}
            if runs and name == "test":
                test_texts = [t for t, ok in zip(all_texts, ok_all) if ok]
            if name in graphs:
                graphs[name] = [g for g, ok in zip(graphs[name], ok_all) if ok]
        rows_read = len(keep) + sum(split.skipped.values())
        splits[name] = split.take(keep)
        parsed[name] = [c for c, k in zip(comps, keep) if k]
        coverage.append({"task": task.name, "split": name, "rows": rows_read, "used": int(keep.sum()),
                         "dropped": rows_read - int(keep.sum()),
                         "reasons": "; ".join(f"{k}: {v}" if v else k for k, v in sorted(reasons.items(), key=lambda kv: (kv[1] == 0, kv[0]))),
                         "missing_elements": " ".join(f"{e}({n})" for e, n in sorted(missing.items()))})
    return splits, parsed, struct, graphs, coverage, test_texts


def _rows_of_fits(task: str, representation: str, pooling: str, regressor: str, fitted, y, seconds: float,
                  cpu: float, features: int) -> tuple[list[dict], dict]:
    rows, errors = [], {}
    for seed, (pred, info) in fitted:
        common = {"task": task, "representation": representation, "pooling": pooling, "regressor": regressor,
                  "seed": int(seed), "_seconds": seconds, "_cpu": cpu, "_features": features,
                  "_info": json.dumps(info, sort_keys=True)}
        rows.append({**common, "metric": "mae", "value": mae(y["test"], pred)})
        rows.append({**common, "metric": "val_mae", "value": float(info["val_mae"])})
        errors[(task, representation, pooling, regressor, int(seed))] = np.abs(y["test"] - pred).astype(np.float32)
    return rows, errors


def _fit_unit(task: str, representation: str, pooling: str, x: dict[str, np.ndarray], y: dict[str, np.ndarray],
              regressors: Sequence[str], seeds: Sequence[int], config: ProtocolConfig) -> tuple[list[dict], dict]:
    rows, errors = [], {}
    for regressor in regressors:
        fit_seeds = seeds[:1] if regressor in DETERMINISTIC else seeds
        t0, c0 = time.perf_counter(), time.process_time()
        fitted = fit_predict_seeds(regressor, x["train"], y["train"], x["val"], y["val"], x["test"], fit_seeds, config)
        # the MLP's seeds train together: each row gets an equal share of the time
        seconds, cpu = (time.perf_counter() - t0) / len(fit_seeds), (time.process_time() - c0) / len(fit_seeds)
        r, e = _rows_of_fits(task, representation, pooling, regressor, zip(fit_seeds, fitted), y, seconds, cpu,
                             x["train"].shape[1])
        rows += r
        errors.update(e)
    return rows, errors


def _fit_graph_unit(task: str, graphs: dict[str, list], y: dict[str, np.ndarray], seeds: Sequence[int],
                    config: StructureConfig) -> tuple[list[dict], dict]:
    t0, c0 = time.perf_counter(), time.process_time()
    fitted = fit_cgcnn_seeds(graphs, y, seeds, config)
    seconds, cpu = (time.perf_counter() - t0) / len(seeds), (time.process_time() - c0) / len(seeds)
    return _rows_of_fits(task, "cgcnn", "graph", "trained", zip(seeds, fitted), y, seconds, cpu, 0)


def _units(task: Task, sets, poolings, splits, parsed, struct, graphs, regressors, seeds, config, structure_config):
    """(function, args) per work unit of one task, features built lazily."""
    y = {k: s.y for k, s in splits.items()}
    for name, table in sets.items():
        for pooling in poolings:
            x = {k: composition_embeddings(parsed[k], table, pooling) for k in splits}
            yield _fit_unit, (task.name, name, pooling, x, y, regressors, seeds, config)
    if struct:
        for key in struct["train"]:
            name, pooling = key.split("|", 1)
            x = {k: struct[k][key].astype(np.float64) for k in splits}
            yield _fit_unit, (task.name, name, pooling, x, y, regressors, seeds, config)
    if graphs:
        yield _fit_graph_unit, (task.name, graphs, y, seeds[:max(1, structure_config.cgcnn_seeds)], structure_config)


def run_benchmark(data: str | os.PathLike | None = None, out: str | os.PathLike | None = "benchmark-results",
                  runs: Iterable[Any] = (), tables: Mapping[str, Any] | None = None,
                  baselines: Iterable[str] | None = None, tasks: Iterable[str] | None = None,
                  quick: bool = False, seeds: Sequence[int] | None = None,
                  poolings: Sequence[str] = COMPOSITION_POOLINGS, regressors: Sequence[str] = REGRESSORS,
                  max_train: int | None = None, max_val: int | None = None, max_test: int | None = None,
                  structure_layers: Sequence[Any] = ("middle", "last"), structure_poolings: Sequence[str] = ("mean", "last"),
                  config: ProtocolConfig | None = None, n_jobs: int = 1, cache_dir: str | os.PathLike | None = None,
                  lm_precision: str = "auto", structure_baselines: Sequence[str] | None = None,
                  structure_config: StructureConfig | None = None, n_boot: int | None = None,
                  leakage: bool = True, probes: bool = True,
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
        structure_baselines: on structure tasks, any of ``ace``, ``chgnet``, ``cgcnn`` (default all
            three; ``chgnet`` is left out, and said so, when the optional package is missing); see
            :mod:`crystext.benchmark.structures`.
        structure_config: their settings (default :class:`StructureConfig`, quick
            :data:`QUICK_STRUCTURE`).
        n_boot: paired-bootstrap resamples for the tie-aware ranks (default
            :data:`crystext.benchmark.selection.N_BOOT`; quick 200).
        probes: add the geometry probes (:mod:`crystext.benchmark.probes`: ``probes/polymorph``,
            ``probes/geometry``, built from ``mp_e_form``) when ``tasks`` is ``None`` and the data holds
            ``mp_e_form``; ``tasks`` may name them, or ``"probes"`` for them and carbon_24.
        leakage: count, per run and task, the test compositions and structures found in the run's
            pretraining corpus (:mod:`crystext.benchmark.leakage`; leakage.csv and the report).
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
    cached_at_start = len(list((cache_dir / "structure-vectors").rglob("*.npz")))  # 0: a cold run

    lm_precision = resolve_precision(lm_precision)
    structure_config = structure_config or (QUICK_STRUCTURE if quick else StructureConfig())
    notes: list[str] = []
    if structure_baselines is None:
        from ..descriptors import chgnet_available

        structure_baselines = tuple(b for b in STRUCTURE_BASELINES if b != "chgnet" or chgnet_available())
        if "chgnet" not in structure_baselines:
            notes.append("chgnet left out: the optional package `chgnet` is not installed")
    structure_baselines = tuple(structure_baselines)
    unknown = [b for b in structure_baselines if b not in STRUCTURE_BASELINES]
    if unknown:
        raise ConfigError(f"structure baselines must be among {STRUCTURE_BASELINES}, not {', '.join(unknown)}")
    task_list, probe_info = (resolve_tasks(data, tasks, cache_dir, log=log) if probes
                             else (discover_tasks(data, tasks), {}))
    run_list = [Run.parse(r) for r in runs]
    sets = element_sets(BASELINES if baselines is None else baselines, tables, run_list)
    log(f"benchmark: {len(task_list)} tasks, {len(sets)} vector sets ({', '.join(sets)}), "
        f"regressors {', '.join(regressors)}, seeds {seeds}")

    rows: list[dict] = []
    errors: dict = {}
    coverage: list[dict] = []
    task_seconds: dict[str, float] = {}
    prepare_seconds: dict[str, float] = {}
    identities: dict[str, dict] = {}
    for task in task_list:
        t0 = time.perf_counter()
        splits, parsed, struct, graphs, cov, test_texts = _prepare_task(
            task, sets, run_list, caps, structure_layers, structure_poolings, cache_dir, log, lm_precision,
            structure_baselines if task.kind == "structure" else (), structure_config, n_jobs)
        coverage += cov
        prepare_seconds[task.name] = round(time.perf_counter() - t0, 1)
        if run_list and leakage:
            ids = task_identities(splits["test"].formulas, test_texts if task.kind == "structure" else None)
            if task.group in identities:  # folds: their test rows are disjoint, count them all
                for k in ids:
                    if ids[k] is not None:
                        identities[task.group][k] = (identities[task.group][k] or []) + ids[k]
            else:
                identities[task.group] = ids
        if min(len(s) for s in splits.values()) < 2:
            log(f"{task.name}: skipped, too few usable rows ({', '.join(f'{k} {len(s)}' for k, s in splits.items())})")
            continue
        units = _units(task, sets, poolings, splits, parsed, struct, graphs, regressors, seeds, config, structure_config)
        if n_jobs == 1:
            parts = [fn(*args) for fn, args in units]
        else:
            from joblib import Parallel, delayed

            parts = Parallel(n_jobs=n_jobs)(delayed(fn)(*args) for fn, args in units)
        for r, e in parts:
            rows += r
            errors.update(e)
        task_seconds[task.name] = round(time.perf_counter() - t0, 1)
        log(f"{task.name}: {len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])} rows, "
            f"{task_seconds[task.name]:.0f} s ({prepare_seconds[task.name]:.0f} s preparing features)")

    everything = pd.DataFrame(rows, columns=RESULT_COLUMNS + ["_seconds", "_cpu", "_features", "_info"])
    everything = everything.sort_values(RESULT_COLUMNS[:6], kind="stable").reset_index(drop=True)
    results = everything[RESULT_COLUMNS].copy()
    fits = everything[everything["metric"] == "mae"].drop(columns=["metric", "value"]).rename(
        columns={"_seconds": "seconds", "_cpu": "cpu_seconds", "_features": "features", "_info": "fit_info"})
    coverage_df = pd.DataFrame(coverage, columns=["task", "split", "rows", "used", "dropped", "reasons", "missing_elements"])
    if intrinsic and len(sets) > 1:
        from .intrinsic import periodic_nn_accuracy, similarity_agreement

        similarity = similarity_agreement(sets)
        nn = periodic_nn_accuracy(sets)
    else:
        similarity = pd.DataFrame(columns=["set_a", "set_b", "n_elements", "pearson", "spearman"])
        nn = pd.DataFrame(columns=["representation", "n_elements", "group_accuracy", "block_accuracy"])
    from .selection import N_BOOT, selected_settings

    leak = None
    t_leak = time.perf_counter()
    if run_list and leakage:
        from .leakage import leakage_table

        log("leakage: test rows seen in each run's pretraining corpus")
        leak = leakage_table({r.name: r.source for r in run_list}, identities, cache_dir, data, n_jobs)
    t_select = time.perf_counter()
    selected = selected_settings(results, errors, n_boot=n_boot or (200 if quick else N_BOOT)) if not results.empty else None
    phase_seconds = {"tasks": round(t_leak - start, 1), "leakage": round(t_select - t_leak, 1),
                     "selection": round(time.perf_counter() - t_select, 1)}
    seconds = time.perf_counter() - start  # everything but writing the report and plots
    result = BenchmarkResult(results, coverage_df, similarity, nn, Path(out) if out is not None else None, seconds,
                             fits=fits, selected=selected, leakage=leak, errors=errors)
    if out is not None:
        from .report import write_outputs

        info = {"command": command, "seconds": round(seconds, 1), "tasks": [t.name for t in task_list],
                "representations": list(sets), "runs": {r.name: str(r.source) for r in run_list},
                "seeds": list(seeds), "regressors": list(regressors), "poolings": list(poolings),
                "caps": {"train": caps[0], "val": caps[1], "test": caps[2]}, "quick": quick, "n_jobs": n_jobs,
                "lm_precision": lm_precision if run_list else None,
                "structure_baselines": list(structure_baselines), "structure_config": structure_config.as_dict(),
                "notes": notes, "probes": probe_info, "task_seconds": task_seconds, "prepare_seconds": prepare_seconds,
                "phase_seconds": phase_seconds, "cached_vector_files_at_start": cached_at_start,
                "protocol": config.as_dict(), "data": str(data), "python": platform.python_version(),
                "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
                "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
        result.files = write_outputs(result, Path(out), info, report=report, plots=plots)
    log(f"benchmark done in {seconds:.0f} s" + (f" -> {out}" if out is not None else ""))
    return result
