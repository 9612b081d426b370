"""Local-environment descriptors: ACE invariants, crystal graphs and the CHGNet baseline.

Everything here follows the scikit-learn featuriser protocol (``fit``, ``transform``,
``feature_labels``); :class:`GraphEncoder` is the trainable message-passing module.
Names are imported lazily so ``import crystext.descriptors`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ACE": "ace",
    "CrystalGraph": "graph",
    "GraphEncoder": "graph",
    "GraphBatch": "graph",
    "Graph": "graph",
    "resolve_element_table": "graph",
    "CHGNetFeaturizer": "chgnet",
    "chgnet_available": "chgnet",
    "neighbor_list": "neighbors",
    "Neighbors": "neighbors",
    "OverlappingAtomsError": "neighbors",
    "IsolatedAtomWarning": "neighbors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crystext.descriptors' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
