"""Benchmarks of element and structure vectors: tasks, one regression protocol, intrinsic metrics, reports.

>>> from crystext.benchmark import run_benchmark
>>> res = run_benchmark(out="bench", runs=["models/crystext-base"], tasks=["aflow__ael_bulk_modulus_vrh"])

Tasks and their splits come from :mod:`crystext.tasks`. Modules: :mod:`.protocol` (ridge / HGB / MLP),
:mod:`.representations` (baselines, extra tables, our runs), :mod:`.intrinsic` (similarity
agreement, periodic-table nearest neighbours), :mod:`.report` (CSV, Markdown, plots),
:mod:`.runner` (:func:`run_benchmark`), :mod:`.config` (its settings, :class:`BenchmarkSettings`),
:mod:`.selection` (settings picked on validation, tie-aware ranks), :mod:`.structures` (ACE / CHGNet /
CGCNN structure baselines, vector cache).
"""

from __future__ import annotations

from .config import BenchmarkSettings
from .intrinsic import periodic_nn_accuracy, similarity_agreement
from .protocol import QUICK, REGRESSORS, ProtocolConfig, fit_predict, fit_predict_seeds
from .representations import Run
from .runner import RESULT_COLUMNS, BenchmarkResult, run_benchmark
from .selection import blowups, select_settings, selected_settings
from .structures import STRUCTURE_BASELINES, StructureConfig

__all__ = [
    "QUICK",
    "REGRESSORS",
    "RESULT_COLUMNS",
    "STRUCTURE_BASELINES",
    "StructureConfig",
    "blowups",
    "select_settings",
    "selected_settings",
    "BenchmarkResult",
    "BenchmarkSettings",
    "ProtocolConfig",
    "Run",
    "fit_predict",
    "fit_predict_seeds",
    "periodic_nn_accuracy",
    "run_benchmark",
    "similarity_agreement",
]
