"""``run_benchmark``: every task x representation x setting x seed, under one protocol.

Its settings are one :class:`~crystext.benchmark.config.BenchmarkSettings` (keyword arguments or
``settings=``). Order of work (all deterministic):

1. discover the tasks (:func:`~crystext.tasks.discover_tasks`; composition tasks, and
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
   per fit (``results.csv``), per-row test errors kept in memory (those of the picked settings
   written as ``test_errors.csv.gz``);
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..composition import BASELINES, composition_embeddings, parse_formula
from ..settings import data_dir
from ..tasks import Split, Task, discover_tasks, load_splits
from .config import BenchmarkSettings
from .protocol import DETERMINISTIC, ProtocolConfig, fit_predict_seeds, mae
from .representations import Run, element_sets, structure_texts
from .structures import StructureConfig, crystal_graphs, fit_cgcnn_seeds, parse_structures, structure_vectors
from .leakage import task_identities
from . import resume
from .probes import resolve_tasks
from .selection import selected_settings

RESULT_COLUMNS = ["task", "representation", "pooling", "regressor", "seed", "metric", "value"]


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


def _parse_compositions(formulas: Sequence[str], common: set, reasons: Counter,
                        missing: Counter) -> tuple[np.ndarray, list]:
    """``(keep, compositions)``: a formula is kept when it parses and every element is in every
    compared vector set (``common``); the others are counted in ``reasons`` (and ``missing``)."""
    keep = np.ones(len(formulas), dtype=bool)
    comps = []
    for i, f in enumerate(formulas):
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
    return keep, comps


#: a structure pooling ending so (``mean+elements``) also holds the run's element vectors pooled
#: over the composition: a structure vector never worse than the composition alone (a floor)
FLOOR_SUFFIX = "+elements"


def base_pooling(pooling: str) -> str:
    """The hidden-state pooling of a structure pooling (``mean+elements`` -> ``mean``)."""
    return pooling.removesuffix(FLOOR_SUFFIX)


def _run_vectors(task: Task, split: str, cifs: list[str], runs: Sequence[Run], structure_layers: Sequence[Any],
                 structure_poolings: Sequence[str], cache_dir: Path | None, log, lm_precision: str, n_jobs: int,
                 reasons: Counter) -> tuple[dict[str, np.ndarray], np.ndarray, list]:
    """Our runs' structure vectors of ``cifs`` (``"name|structure-pooling-Llayer"`` -> (n, d), NaN rows
    where a CIF has no canonical text), the mask of the structures every run embeds, and the texts."""
    texts, bad = structure_texts(cifs, cache_dir, n_jobs=n_jobs)
    for reason, n in bad.items():
        reasons[f"no canonical text ({reason})"] += n
    has_text = np.array([t is not None for t in texts], dtype=bool)
    good_texts = [t for t in texts if t is not None]
    ok_runs = np.ones(len(good_texts), dtype=bool)
    vecs: dict[str, np.ndarray] = {}
    for run in runs:
        layers = run.resolve_layers(structure_layers)
        # a "+elements" pooling reads the same states as its base pooling (the element part is added per unit)
        views = list(dict.fromkeys((layer, base_pooling(p)) for layer in layers for p in structure_poolings))
        log(f"  {task.name} {split}: {run.name} layers/poolings {views} ({len(good_texts)} structures)")
        run_texts = good_texts  # a run trained on texts with blocks reads them with its blocks
        if not run.form.plain:
            run_texts, _ = structure_texts([c for c, t in zip(cifs, texts) if t is not None], cache_dir, run.form,
                                           n_jobs=n_jobs)
        for (layer, pooling), (v, ok, skipped) in run.structure_views(
                run_texts, views, cache_dir, precision=lm_precision, group=task.name.split("/")[0]).items():
            for reason, n in skipped.items():  # the same texts fail at every layer: count once
                key = f"{run.name} cannot embed ({reason})"
                reasons[key] = max(reasons[key], int(n))
            ok_runs &= ok
            full = np.full((len(cifs), v.shape[1]), np.nan, dtype=np.float32)
            full[has_text] = v
            for wanted in structure_poolings:
                if base_pooling(wanted) == pooling:
                    vecs[f"{run.name}|structure-{wanted}-L{layer}"] = full
    ok_all = has_text.copy()
    ok_all[np.flatnonzero(has_text)[~ok_runs]] = False
    return vecs, ok_all, texts


def _baseline_vectors(task: Task, split: str, cifs: list[str], structure_baselines: Sequence[str],
                      structure_config: StructureConfig, cache_dir: Path | None, log, n_jobs: int,
                      reasons: Counter) -> tuple[dict[str, np.ndarray], np.ndarray, list | None]:
    """The structure baselines' vectors of ``cifs`` (``"name|structure"`` -> (n, d)), the mask of the
    structures every baseline featurises, and the CGCNN graphs (None unless ``cgcnn`` is a baseline)."""
    structures, bad = parse_structures(cifs, n_jobs=n_jobs)
    for reason, n in bad.items():
        reasons[f"unreadable CIF ({reason})"] += n
    parsed = np.array([s is not None for s in structures], dtype=bool)
    ok_all = parsed.copy()
    vecs: dict[str, np.ndarray] = {}
    graphs = None
    for base in structure_baselines:
        if base == "cgcnn":
            graphs = crystal_graphs(structures, structure_config)
            no_graph = np.array([x is None for x in graphs], dtype=bool)
            if (no_graph & parsed).any():
                reasons["cgcnn cannot build the graph"] += int((no_graph & parsed).sum())
            ok_all &= ~no_graph
            continue
        log(f"  {task.name} {split}: {base} vectors ({len(cifs)} structures)")
        v, _ = structure_vectors(base, cifs, structures, structure_config, cache_dir, task.name.split("/")[0],
                                 n_jobs=n_jobs)
        finite = np.isfinite(v).all(axis=1) if v.shape[1] else np.zeros(len(cifs), dtype=bool)
        if (~finite & parsed).any():
            reasons[f"{base} cannot featurise"] += int((~finite & parsed).sum())
        ok_all &= finite
        vecs[f"{base}|structure"] = v
    return vecs, ok_all, graphs


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
        keep, comps = _parse_compositions(split.formulas, common, reasons, missing)
        if task.kind == "structure" and (runs or structure_baselines):
            kept = np.flatnonzero(keep)
            cifs = [split.cifs[i] for i in kept]
            ok_all = np.ones(len(kept), dtype=bool)
            vecs: dict[str, np.ndarray] = {}
            if runs:
                v, ok, texts = _run_vectors(task, name, cifs, runs, structure_layers, structure_poolings, cache_dir,
                                            log, lm_precision, n_jobs, reasons)
                vecs.update(v)
                ok_all &= ok
            g = None
            if structure_baselines:
                v, ok, g = _baseline_vectors(task, name, cifs, structure_baselines, structure_config, cache_dir,
                                             log, n_jobs, reasons)
                vecs.update(v)
                ok_all &= ok
            keep[kept[~ok_all]] = False
            struct[name] = {k: v[ok_all] for k, v in vecs.items()}
            if runs and name == "test":
                test_texts = [t for t, ok in zip(texts, ok_all) if ok]
            if g is not None:
                graphs[name] = [x for x, ok in zip(g, ok_all) if ok]
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
            if FLOOR_SUFFIX in pooling:  # the run's own element vectors, mean-pooled over the composition, beside
                x = {k: np.hstack([x[k], composition_embeddings(parsed[k], sets[name], "mean")]) for k in splits}
            yield _fit_unit, (task.name, name, pooling, x, y, regressors, seeds, config)
    if graphs:
        yield _fit_graph_unit, (task.name, graphs, y, seeds[:max(1, structure_config.cgcnn_seeds)], structure_config)


@dataclass
class _Collected:
    """What the per-task loop gathers for the tables, the selection and run_info."""

    rows: list[dict] = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    coverage: list[dict] = field(default_factory=list)
    task_seconds: dict[str, float] = field(default_factory=dict)
    prepare_seconds: dict[str, float] = field(default_factory=dict)
    #: task group -> test identities (:func:`~crystext.benchmark.leakage.task_identities`)
    identities: dict[str, dict] = field(default_factory=dict)

    def merge(self, part: "_Collected") -> None:
        """Add one task's contribution (fresh or read back from a stopped run's kept tasks)."""
        self.rows += part.rows
        self.errors.update(part.errors)
        self.coverage += part.coverage
        self.task_seconds.update(part.task_seconds)
        self.prepare_seconds.update(part.prepare_seconds)
        for group, ids in part.identities.items():
            self.add_identities(group, ids)

    def add_identities(self, group: str, ids: dict) -> None:
        if group in self.identities:  # folds: their test rows are disjoint, count them all
            for k in ids:
                if ids[k] is not None:
                    self.identities[group][k] = (self.identities[group][k] or []) + ids[k]
        else:
            self.identities[group] = ids


def _benchmark_task(task: Task, sets: Mapping[str, pd.DataFrame], runs: Sequence[Run], s: BenchmarkSettings,
                    got: _Collected, log) -> None:
    """Prepare one task's features, fit every work unit, add the rows, errors and timings to ``got``."""
    t0 = time.perf_counter()
    splits, parsed, struct, graphs, cov, test_texts = _prepare_task(
        task, sets, runs, s.caps, s.structure_layers, s.structure_poolings, s.cache_dir, log, s.lm_precision,
        s.structure_baselines if task.kind == "structure" else (), s.structure_config, s.n_jobs)
    got.coverage += cov
    got.prepare_seconds[task.name] = round(time.perf_counter() - t0, 1)
    if runs and s.leakage:
        got.add_identities(task.group, task_identities(splits["test"].formulas,
                                                        test_texts if task.kind == "structure" else None))
    if min(len(split) for split in splits.values()) < 2:
        log(f"{task.name}: skipped, too few usable rows ({', '.join(f'{k} {len(v)}' for k, v in splits.items())})")
        return
    units = _units(task, sets, s.poolings, splits, parsed, struct, graphs, s.regressors, s.seeds, s.config,
                   s.structure_config)
    if s.n_jobs == 1:
        parts = [fn(*args) for fn, args in units]
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=s.n_jobs)(delayed(fn)(*args) for fn, args in units)
    for r, e in parts:
        got.rows += r
        got.errors.update(e)
    got.task_seconds[task.name] = round(time.perf_counter() - t0, 1)
    log(f"{task.name}: {len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])} rows, "
        f"{got.task_seconds[task.name]:.0f} s ({got.prepare_seconds[task.name]:.0f} s preparing features)")


def _result_tables(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(results, fits)`` from the fit rows: results in the ``results.csv`` layout, fits one row per test MAE."""
    everything = pd.DataFrame(rows, columns=RESULT_COLUMNS + ["_seconds", "_cpu", "_features", "_info"])
    everything = everything.sort_values(RESULT_COLUMNS[:6], kind="stable").reset_index(drop=True)
    fits = everything[everything["metric"] == "mae"].drop(columns=["metric", "value"]).rename(
        columns={"_seconds": "seconds", "_cpu": "cpu_seconds", "_features": "features", "_info": "fit_info"})
    return everything[RESULT_COLUMNS].copy(), fits


def _intrinsic_tables(sets: Mapping[str, pd.DataFrame], intrinsic: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(similarity agreement, periodic nearest-neighbour accuracy)``; empty unless two sets or more."""
    if intrinsic and len(sets) > 1:
        from .intrinsic import periodic_nn_accuracy, similarity_agreement

        return similarity_agreement(sets), periodic_nn_accuracy(sets)
    return (pd.DataFrame(columns=["set_a", "set_b", "n_elements", "pearson", "spearman"]),
            pd.DataFrame(columns=["representation", "n_elements", "group_accuracy", "block_accuracy"]))


def _run_info(s: BenchmarkSettings, data: Path, seconds: float, task_list: Sequence[Task], sets, runs: Sequence[Run],
              notes: list[str], probe_info: dict, got: _Collected, phase_seconds: dict,
              cached_at_start: int) -> dict[str, Any]:
    """``run_info.json``: the resolved settings, timings and the machine."""
    caps = s.caps
    return {"command": s.command, "seconds": round(seconds, 1), "tasks": [t.name for t in task_list],
            "representations": list(sets), "runs": {r.name: str(r.source) for r in runs},
            "seeds": list(s.seeds), "n_boot": s.n_boot, "regressors": list(s.regressors), "poolings": list(s.poolings),
            "caps": {"train": caps[0], "val": caps[1], "test": caps[2]}, "quick": s.quick, "n_jobs": s.n_jobs,
            "lm_precision": s.lm_precision if runs else None,
            "structure_baselines": list(s.structure_baselines), "structure_config": s.structure_config.as_dict(),
            "notes": notes, "probes": probe_info, "task_seconds": got.task_seconds,
            "prepare_seconds": got.prepare_seconds, "phase_seconds": phase_seconds,
            "cached_vector_files_at_start": cached_at_start, "protocol": s.config.as_dict(), "data": str(data),
            "python": platform.python_version(), "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def run_benchmark(data: str | os.PathLike | None = None, out: str | os.PathLike | None = "benchmark-results",
                  *, settings: BenchmarkSettings | None = None, **options: Any) -> BenchmarkResult:
    """Benchmark element-vector sets (and our runs' structure vectors) on every task under ``data``.

    Args:
        data: a folder of tasks (default: the shared data folder, :func:`crystext.settings.data_dir`):
            ``<task>/{train,val,test}.csv``, Matbench-style ``{train,val,test}<k>.csv`` folds, and the
            structure sets ``perov_5`` / ``carbon_24`` (see :mod:`crystext.tasks`).
        out: output folder (``results.csv``, ``selected.csv``, ``test_errors.csv.gz``, ``coverage.csv``,
            ``intrinsic_*.csv``, ``report.md``, ``plots/``, ``run_info.json``); ``None`` writes nothing.
        settings: a :class:`~crystext.benchmark.config.BenchmarkSettings` (default: its defaults).
        **options: any of its fields, overriding ``settings`` (``runs``, ``tasks``, ``quick``,
            ``seeds``, ``regressors``, ``max_train``, ``structure_baselines``, ``n_boot``, ``plots``, ...).

    Returns:
        :class:`BenchmarkResult` (results in the ``results.csv`` layout:
        ``task, representation, pooling, regressor, seed, metric, value``).
    """
    start = time.perf_counter()
    settings = replace(settings or BenchmarkSettings(), **options)
    log = (lambda msg: print(msg, flush=True)) if settings.progress else (lambda msg: None)
    data = Path(data) if data is not None else _default_data()
    s, notes = settings.resolved()
    cached_at_start = len(list((s.cache_dir / "structure-vectors").rglob("*.npz")))  # 0: a cold run
    task_list, probe_info = (resolve_tasks(data, s.tasks, s.cache_dir, log=log) if s.probes
                             else (discover_tasks(data, s.tasks), {}))
    run_list = [Run.parse(r) for r in s.runs]
    sets = element_sets(BASELINES if s.baselines is None else s.baselines, s.tables, run_list)
    log(f"benchmark: {len(task_list)} tasks, {len(sets)} vector sets ({', '.join(sets)}), "
        f"regressors {', '.join(s.regressors)}, seeds {s.seeds}")
    got = _Collected()
    kept = resume.partial_folder(out, resume.resume_key(s, data, sets, run_list, task_list))
    for task in task_list:
        part = resume.load_task(kept, task.name)
        if part is not None:
            log(f"{task.name}: read back from {kept} (finished by an earlier, stopped run)")
        else:
            part = _Collected()
            _benchmark_task(task, sets, run_list, s, part, log)
            resume.save_task(kept, task.name, part)
        got.merge(part)
    results, fits = _result_tables(got.rows)
    coverage = pd.DataFrame(got.coverage, columns=["task", "split", "rows", "used", "dropped", "reasons",
                                                    "missing_elements"])
    similarity, nn = _intrinsic_tables(sets, s.intrinsic)
    leak = None
    t_leak = time.perf_counter()
    if run_list and s.leakage:
        from .leakage import leakage_table

        log("leakage: test rows seen in each run's pretraining corpus")
        leak = leakage_table({r.name: r.source for r in run_list}, got.identities, s.cache_dir, data, s.n_jobs)
    t_select = time.perf_counter()
    selected = selected_settings(results, got.errors, n_boot=s.n_boot) if not results.empty else None
    phase_seconds = {"tasks": round(t_leak - start, 1), "leakage": round(t_select - t_leak, 1),
                     "selection": round(time.perf_counter() - t_select, 1)}
    seconds = time.perf_counter() - start  # everything but writing the report and plots
    result = BenchmarkResult(results, coverage, similarity, nn, Path(out) if out is not None else None, seconds,
                             fits=fits, selected=selected, leakage=leak, errors=got.errors)
    if out is not None:
        from .report import write_outputs

        info = _run_info(s, data, seconds, task_list, sets, run_list, notes, probe_info, got, phase_seconds,
                         cached_at_start)
        result.files = write_outputs(result, Path(out), info, report=s.report, plots=s.plots)
        resume.clear(out)
    log(f"benchmark done in {seconds:.0f} s" + (f" -> {out}" if out is not None else ""))
    return result
