"""An auxiliary pretraining objective: geometry targets regressed from the pooled final state.

With the training setting ``aux_weight > 0``, each step's loss adds ``aux_weight`` x the mean squared
error of a linear head on the mean of the final hidden states over a document's tokens (the ``mean``
structure vector that the benchmark and the pipeline read), predicting the standardised geometry
targets of the document's structure (:func:`crystext.descriptors.geometry.structure_targets`: volume
per atom, packing, nearest-neighbour distances; never a benchmark task's DFT target). The aim is a
structure vector that carries geometry, not only the composition.

The head trains and is checkpointed with the model (a resume restores it) and is left out of the
saved model, so a run stays a plain GPT-2. The targets of a corpus are computed once (decode, parse,
measure; a few ms per document) and cached under ``$CRYSTEXT_CACHE/aux-targets``.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .descriptors.geometry import TARGET_NAMES, structure_targets
from .settings import cache_dir as default_cache_dir


def _cache_file(ds: Any, cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hashlib.sha256(f"{ds._fingerprint}:{len(ds)}:{','.join(TARGET_NAMES)}".encode()).hexdigest()[:16]
    return root / "aux-targets" / f"{key}.npy"


def document_targets(ds: Any, tok: Any, cache_dir: str | Path | None = None) -> np.ndarray:
    """``(documents, len(TARGET_NAMES))`` geometry targets of a tokenised corpus split; NaN rows for
    documents whose text is not a readable structure (header-only documents, say)."""
    from .reading import text_to_structure

    path = _cache_file(ds, cache_dir)
    if path.is_file():
        return np.load(path)
    out = np.full((len(ds), len(TARGET_NAMES)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(ds), 1024):
            ids = ds[start:start + 1024]["input_ids"]
            for k, text in enumerate(tok.batch_decode(ids, skip_special_tokens=True)):
                try:
                    out[start + k] = structure_targets(text_to_structure(text))
                except Exception:  # noqa: BLE001 - any unreadable document is a NaN row, not a stop
                    continue
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, out)
    return out


class AuxObjective:
    """Standardised targets of the training documents and the loss of a head's predictions."""

    def __init__(self, targets: np.ndarray, weight: float) -> None:
        self.weight = float(weight)
        self.mean = np.nanmean(targets, axis=0)
        self.std = np.nanstd(targets, axis=0) + 1e-8
        self.z = ((targets - self.mean) / self.std).astype(np.float32)
        self.readable = int(np.isfinite(targets).all(axis=1).sum())

    @staticmethod
    def head(n_embd: int):
        """A fresh linear head from a ``n_embd`` state to the targets."""
        import torch

        return torch.nn.Linear(n_embd, len(TARGET_NAMES))

    def loss(self, head: Any, hidden: Any, mask: Any, rows: np.ndarray):
        """Mean squared error of ``head`` on the mask-weighted mean of ``hidden`` (batch, tokens,
        width) against the targets of documents ``rows``; 0 (with a gradient) when none is readable."""
        import torch

        m = mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        pred = head(pooled.float())
        target = torch.from_numpy(self.z[np.asarray(rows)]).to(pred.device)
        ok = torch.isfinite(target)
        if not bool(ok.any()):
            return pred.sum() * 0.0
        return ((pred - target.nan_to_num())[ok] ** 2).mean()
