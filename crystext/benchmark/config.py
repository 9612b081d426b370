"""The settings of a benchmark run in one object, :class:`BenchmarkSettings`: what
:func:`crystext.benchmark.run_benchmark`'s keyword arguments and ``crystext benchmark``'s flags set.

:meth:`BenchmarkSettings.resolved` fills in the defaults that depend on ``quick`` and on the machine
(seeds, row caps, protocol, structure baselines, cache folder, LM precision, bootstrap resamples)
and refuses unknown regressors or structure baselines.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..settings import cache_dir as settings_cache_dir
from .protocol import QUICK, REGRESSORS, ProtocolConfig
from .structures import QUICK_STRUCTURE, STRUCTURE_BASELINES, StructureConfig

COMPOSITION_POOLINGS = ("mean", "stats4")
#: our runs' structure poolings: hidden states averaged over the text or the <eos> state, and each
#: with the run's composition-pooled element vectors beside it (``+elements``)
STRUCTURE_POOLINGS = ("mean", "last", "mean+elements", "last+elements")
#: full-mode caps: training / validation rows of every task (composition and structure) above these
#: are subsampled to them (seeded); test splits are used whole. They keep the whole suite (16
#: tasks, 10 vector sets, 2 runs' structure views) inside 30 minutes on 2 CPU cores; pass
#: a cap of 0 means none (``--max-train 0 --max-val 0``: the published full splits)
MAX_TRAIN, MAX_VAL, MAX_TEST = 2000, 1000, None
QUICK_MAX = (300, 100, 300)
#: paired-bootstrap resamples of ``--quick`` (full runs: :data:`crystext.benchmark.selection.N_BOOT`)
QUICK_N_BOOT = 200


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything a benchmark run is told but where its data and outputs are.

    Attributes:
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
        max_train, max_val, max_test: row caps per split (default 2000 / 1000 / none; quick 300/100/300;
            0 = no cap), seeded.
        structure_layers: layers of our runs' structure vectors: ints, ``"middle"``, ``"last"``.
        structure_poolings: ``"mean"`` and/or ``"last"`` (the hidden states), or either with
            ``+elements``: the run's element vectors, mean-pooled over the composition, beside them
            (a structure vector never worse than the composition; compared like any setting).
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
        leakage: count, per run and task, the test compositions and structures found in the run's
            pretraining corpus (:mod:`crystext.benchmark.leakage`; leakage.csv and the report).
        probes: add the geometry probes (:mod:`crystext.benchmark.probes`: ``probes/polymorph``,
            ``probes/geometry``, built from ``mp_e_form``) when ``tasks`` is ``None`` and the data holds
            ``mp_e_form``; ``tasks`` may name them, or ``"probes"`` for them and carbon_24.
        intrinsic, report, plots: compute intrinsic metrics / write report.md / draw plots.
        progress: print a line per step.
        command: the command line to quote in the report.
    """

    runs: Iterable[Any] = ()
    tables: Mapping[str, Any] | None = None
    baselines: Iterable[str] | None = None
    tasks: Iterable[str] | None = None
    quick: bool = False
    seeds: Sequence[int] | None = None
    poolings: Sequence[str] = COMPOSITION_POOLINGS
    regressors: Sequence[str] = REGRESSORS
    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None
    structure_layers: Sequence[Any] = ("middle", "last")
    structure_poolings: Sequence[str] = ("mean", "last")
    config: ProtocolConfig | None = None
    n_jobs: int = 1
    cache_dir: str | os.PathLike | None = None
    lm_precision: str = "auto"
    structure_baselines: Sequence[str] | None = None
    structure_config: StructureConfig | None = None
    n_boot: int | None = None
    leakage: bool = True
    probes: bool = True
    intrinsic: bool = True
    report: bool = True
    plots: bool = True
    progress: bool = True
    command: str | None = None

    @property
    def caps(self) -> tuple[int | None, int | None, int | None]:
        """Row caps (train, val, test) of resolved settings, ``None`` = no cap."""
        return tuple(None if not c else c for c in (self.max_train, self.max_val, self.max_test))

    def resolved(self) -> tuple["BenchmarkSettings", list[str]]:
        """These settings with every default filled in and checked, and notes on what was left out
        (``chgnet`` when its optional package is missing). Row caps come back as ints, 0 = no cap.

        Raises:
            ConfigError: no seed, an unknown regressor, LM precision or structure baseline.
        """
        from .representations import resolve_precision
        from .selection import N_BOOT

        seeds = ((0,) if self.quick else (0, 1, 2)) if self.seeds is None else self.seeds
        seeds = tuple(int(seed) for seed in seeds)
        if not seeds:
            raise ConfigError("at least one seed is needed")
        for r in self.regressors:
            if r not in REGRESSORS:
                raise ConfigError(f"regressor must be one of {REGRESSORS}, not {r!r}")
        for p in self.structure_poolings:
            if p not in STRUCTURE_POOLINGS:
                raise ConfigError(f"structure pooling must be one of {STRUCTURE_POOLINGS}, not {p!r}")
        defaults = QUICK_MAX if self.quick else (MAX_TRAIN, MAX_VAL, MAX_TEST)
        caps = [c if c is not None else (d or 0) for c, d in zip((self.max_train, self.max_val, self.max_test), defaults)]
        cache_dir = self.cache_dir
        if cache_dir is None:
            cache_dir = settings_cache_dir() / "benchmark"
        lm_precision = resolve_precision(self.lm_precision)
        structure_baselines, notes = self._structure_baselines()
        return replace(
            self, seeds=seeds, max_train=caps[0], max_val=caps[1], max_test=caps[2], cache_dir=Path(cache_dir),
            config=self.config or (QUICK if self.quick else ProtocolConfig()), lm_precision=lm_precision,
            structure_config=self.structure_config or (QUICK_STRUCTURE if self.quick else StructureConfig()),
            structure_baselines=structure_baselines,
            n_boot=self.n_boot or (QUICK_N_BOOT if self.quick else N_BOOT)), notes

    def _structure_baselines(self) -> tuple[tuple[str, ...], list[str]]:
        notes: list[str] = []
        baselines = self.structure_baselines
        if baselines is None:
            from ..descriptors import chgnet_available

            baselines = tuple(b for b in STRUCTURE_BASELINES if b != "chgnet" or chgnet_available())
            if "chgnet" not in baselines:
                notes.append("chgnet left out: the optional package `chgnet` is not installed")
        baselines = tuple(baselines)
        unknown = [b for b in baselines if b not in STRUCTURE_BASELINES]
        if unknown:
            raise ConfigError(f"structure baselines must be among {STRUCTURE_BASELINES}, not {', '.join(unknown)}")
        return baselines, notes


__all__ = ["BenchmarkSettings", "COMPOSITION_POOLINGS", "MAX_TEST", "MAX_TRAIN", "MAX_VAL", "QUICK_MAX"]
