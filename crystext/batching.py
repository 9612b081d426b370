"""Batch plans: which rows of a split form each global batch, epoch by epoch.

Shared by pretraining (:mod:`crystext.training`) and fine-tuning (:mod:`crystext.finetune`), so it
lives below both. Plain numpy; deterministic in (seed, epoch).
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def epoch_plan(lengths: np.ndarray, global_batch: int, bucket_size: int, seed: int, epoch: int,
               min_batch: int = 1) -> list[np.ndarray]:
    """The global batches (arrays of row indices) of one epoch: a seeded permutation, sorted by
    length within windows of ``bucket_size`` batches, cut into batches, batches shuffled.
    Batches smaller than ``min_batch`` (only an epoch's tail) are dropped."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    window = global_batch * max(1, bucket_size)
    batches: list[np.ndarray] = []
    for start in range(0, len(perm), window):
        chunk = perm[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
    batches = [b for b in batches if len(b) >= min_batch]
    return [batches[i] for i in rng.permutation(len(batches))]


class BatchPlan:
    """Global batch ``step`` of an endless, epoch-by-epoch deterministic plan."""

    def __init__(self, lengths: np.ndarray, global_batch: int, bucket_size: int, seed: int, min_batch: int):
        self.args = (lengths, global_batch, bucket_size, seed)
        self.min_batch = min_batch
        self._cache: dict[int, list[np.ndarray]] = {}
        self.per_epoch = len(self._epoch(0))
        if self.per_epoch == 0:
            raise ConfigError(
                f"training split has {len(lengths)} documents, fewer than one global batch needs "
                f"({min_batch}); lower batch_size / gradient_accumulation_steps"
            )

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        """The batches of ``epoch`` (the last epoch asked for is kept)."""
        if epoch not in self._cache:
            self._cache = {epoch: epoch_plan(*self.args, epoch, self.min_batch)}
        return self._cache[epoch]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within it) of global batch ``step``."""
        return divmod(step, self.per_epoch)

    def __getitem__(self, step: int) -> np.ndarray:
        """The row indices of global batch ``step``."""
        epoch, index = self.position(step)
        return self._epoch(epoch)[index]


__all__ = ["BatchPlan", "epoch_plan"]
