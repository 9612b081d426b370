"""Multi-scale property heads: LM structure vectors + composition + crystal graph + ACE (+ CHGNet).

- :class:`MultiScaleRegressor`: one network over all branches (gated or concatenation fusion),
  scikit-learn style (``get_params``/``set_params``/``clone``, ``score`` = R^2), saved as a
  native transformers folder (:class:`MultiScaleConfig` / :class:`MultiScaleModel`).
- :class:`StackedRegressor`: one regressor per branch plus joint networks over pairs of branches,
  out-of-fold predictions, a non-negative combiner chosen on out-of-fold + validation rows against
  every single branch, so the fused model is at least as good as its best branch on those rows by
  construction (and beat it on every data set of the 4 Dec 2026 ablation).
- :class:`BranchFeaturizer` / :class:`BranchInputs`: structures -> branch inputs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BranchInputs": "core",
    "BranchFeaturizer": "core",
    "MultiScaleRegressor": "core",
    "KNOWN_BRANCHES": "core",
    "TrainingDivergedError": "core",
    "train_heads": "api",
    "load_head": "api",
    "read_structures_table": "core",
    "composition_features": "core",
    "load_table": "core",
    "StackedRegressor": "stacking",
    "MultiScaleConfig": "hf",
    "MultiScaleModel": "hf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crystext.heads' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
