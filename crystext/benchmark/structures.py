"""Structure baselines of the benchmark: ACE invariants, CHGNet crystal vectors, a CGCNN-style
graph network trained on the task; and the on-disk cache of structure vectors.

* ``ace``: :class:`crystext.descriptors.ACE` invariants (body order 3, element channels from the
  Magpie table reduced to 8 PCA components, one block for all centres, mean over atoms), then the
  usual ridge / HGB / MLP protocol. Pooling label ``structure``.
* ``chgnet``: :class:`crystext.descriptors.CHGNetFeaturizer` 64-D crystal vectors of the
  pretrained CHGNet 0.3.0 (trained on Materials Project relaxations: it has seen the answers of
  ``mp_e_form``, which the report says), then the protocol. Skipped (and said so) when the
  optional ``chgnet`` package is missing.
* ``cgcnn``: :class:`crystext.descriptors.CrystalGraph` graphs (one-hot elements, so every
  element is covered) and a :class:`crystext.heads.MultiScaleRegressor` with the ``graph`` branch
  alone, trained end to end on the task's training split with early stopping on its validation
  split, one model per seed (the first :attr:`StructureConfig.cgcnn_seeds` seeds). Pooling label
  ``graph``, regressor ``trained``.

Vectors are cached per structure (:class:`VectorCache`): one file per (representation, settings,
precision, task group) holding a SHA-1 of every CIF text and its vector, so reruns, the two
perov_5 targets and overlapping folds featurise each structure once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

#: the structure baselines, in report order
STRUCTURE_BASELINES = ("ace", "chgnet", "cgcnn")
#: tasks whose targets a representation was (pre)trained on: shown next to its numbers
TRAINED_ON_TARGET = {("chgnet", "mp_e_form"): "CHGNet was trained on Materials Project energies (MPtrj): "
                                                "its vectors have seen these answers"}


@dataclass(frozen=True)
class StructureConfig:
    """Settings of the structure baselines (the same for every task)."""

    ace: dict = field(default_factory=lambda: dict(cutoff=5.0, n_radial=4, max_angular=3, correlation_order=2,
                                                   species_table="magpie", species_components=8,
                                                   center_split=False, pooling="mean"))
    chgnet_model: str = "0.3.0"
    cgcnn_hidden: int = 64
    cgcnn_layers: int = 3
    cgcnn_cutoff: float = 5.0
    cgcnn_max_neighbors: int = 12
    cgcnn_epochs: int = 30
    cgcnn_patience: int = 6
    cgcnn_batch_size: int = 64
    cgcnn_lr: float = 2e-3
    #: seeds of the graph network: the first ``cgcnn_seeds`` of the run's seeds (it is the costliest
    #: fit of the suite: one seed keeps the default suite in its time budget; its ± is then over folds)
    cgcnn_seeds: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: small settings for ``quick`` runs and tests
QUICK_STRUCTURE = StructureConfig(cgcnn_hidden=16, cgcnn_layers=1, cgcnn_epochs=4, cgcnn_patience=2,
                                  ace=dict(cutoff=4.0, n_radial=2, max_angular=1, correlation_order=2,
                                           species_table="magpie", species_components=3,
                                           center_split=False, pooling="mean"))


def cif_key(cif: str) -> str:
    """The cache key of one input structure: SHA-1 (16 hex) of its CIF text."""
    return hashlib.sha1(cif.encode("utf-8", "replace")).hexdigest()[:16]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


class VectorCache:
    """Per-structure vectors of one representation/settings/precision for one task group, on disk.

    ``get(cifs, compute)`` returns ``(vectors (n, d) with NaN rows, n_failed)``: vectors of cached
    CIFs are read back, the others come from ``compute(indices) -> (n_idx, d)`` (NaN rows for
    structures that cannot be featurised, which are cached too) and are saved.
    """

    def __init__(self, cache_dir: Path | None, representation: str, settings: dict, precision: str, group: str) -> None:
        self.path = None
        if cache_dir is not None:
            tag = hashlib.sha1(json.dumps([settings, precision], sort_keys=True, default=str).encode()).hexdigest()[:10]
            self.path = Path(cache_dir) / "structure-vectors" / f"{_safe(representation)}-{tag}-{precision}" / f"{_safe(group)}.npz"

    def _load(self) -> tuple[dict[str, int], np.ndarray | None]:
        if self.path is None or not self.path.is_file():
            return {}, None
        with np.load(self.path, allow_pickle=False) as z:
            return {k: i for i, k in enumerate(z["keys"].tolist())}, z["vectors"]

    def missing(self, cifs: Sequence[str]) -> list[int]:
        """Indices (the first of each distinct input) of the inputs not cached yet."""
        index, _ = self._load()
        first: dict[str, int] = {}
        for i, c in enumerate(cifs):
            k = cif_key(c)
            if k not in index:
                first.setdefault(k, i)
        return sorted(first.values())

    def get(self, cifs: Sequence[str], compute: Callable[[list[int]], np.ndarray]) -> tuple[np.ndarray, int]:
        keys = [cif_key(c) for c in cifs]
        index, stored = self._load()
        todo = sorted({i for i, k in enumerate(keys) if k not in index})
        first = {}
        for i in todo:
            first.setdefault(keys[i], i)
        todo = sorted(first.values())
        new = compute(todo) if todo else None
        dim = stored.shape[1] if stored is not None else (new.shape[1] if new is not None else 0)
        out = np.full((len(cifs), dim), np.nan, dtype=np.float32)
        lookup = {keys[i]: new[j] for j, i in enumerate(todo)} if new is not None else {}
        for i, k in enumerate(keys):
            out[i] = stored[index[k]] if k in index else lookup[k]
        if new is not None and self.path is not None:
            all_keys = list(index) + [keys[i] for i in todo]
            vectors = new.astype(np.float32) if stored is None else np.concatenate([stored, new.astype(np.float32)])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp.npz")
            np.savez(tmp, keys=np.asarray(all_keys), vectors=vectors)
            os.replace(tmp, self.path)
        return out, int((~np.isfinite(out).all(axis=1)).sum()) if dim else len(cifs)


def _parse_chunk(cifs: Sequence[str], start: int) -> tuple[list[Any], Counter]:
    from ..inputs import to_structure

    out, bad = [], Counter()
    for i, cif in enumerate(cifs, start):
        try:
            out.append(to_structure(cif, name=f"row {i}"))
        except Exception as exc:  # noqa: BLE001 - batch work counts bad records
            out.append(None)
            bad[type(exc).__name__] += 1
    return out, bad


def map_chunks(fn: Callable[..., Any], items: Sequence[Any], n_jobs: int, *args: Any) -> list[Any]:
    """``[fn(chunk, start, *args), ...]`` over consecutive chunks of ``items``, in order: one call in
    this process when ``n_jobs`` is 1 or there are fewer than 64 items, else a few chunks per worker
    over ``n_jobs`` joblib processes (so one slow chunk does not hold the others)."""
    if n_jobs <= 1 or len(items) < 64:
        return [fn(items, 0, *args)]
    from joblib import Parallel, delayed

    size = -(-len(items) // (4 * n_jobs))
    return Parallel(n_jobs=n_jobs)(delayed(fn)(items[i:i + size], i, *args) for i in range(0, len(items), size))


@contextmanager
def single_threaded():
    """torch, BLAS and OpenMP on one thread inside the block (workers or seeds are the parallelism)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def parse_structures(cifs: Sequence[str], n_jobs: int = 1) -> tuple[list[Any], Counter]:
    """pymatgen Structures of CIF texts (``None`` where a CIF cannot be read) and the failure counts;
    ``n_jobs`` > 1 parses in that many processes (same result)."""
    out, bad = [], Counter()
    for sts, b in map_chunks(_parse_chunk, cifs, n_jobs):
        out += sts
        bad.update(b)
    return out, bad


def _featurise_chunk(sts: list, start: int, featurise: Callable[[list], np.ndarray]) -> np.ndarray:
    with single_threaded():
        return featurise(sts)


def _rows_of(featurise: Callable[[list], np.ndarray], structures: Sequence[Any], idx: list[int], dim_hint: int = 0,
             n_jobs: int = 1) -> np.ndarray:
    good = [i for i in idx if structures[i] is not None]
    sts = [structures[i] for i in good]
    if not good:
        part = np.zeros((0, dim_hint))
    elif n_jobs > 1:
        part = np.concatenate(map_chunks(_featurise_chunk, sts, n_jobs, featurise))
    else:
        part = featurise(sts)
    out = np.full((len(idx), part.shape[1]), np.nan)
    pos = {i: j for j, i in enumerate(idx)}
    for j, i in enumerate(good):
        out[pos[i]] = part[j]
    return out


_CHGNET: dict[str, Any] = {}


def _ace_features(settings: dict, sts: list) -> np.ndarray:
    from ..descriptors import ACE

    kwargs = dict(settings)
    if isinstance(kwargs.get("species_table"), str):
        from ..composition import load_element_table

        kwargs["species_table"] = load_element_table(kwargs["species_table"])
    return ACE(on_error="nan", **kwargs).fit(sts).transform(sts)


def _chgnet_features(model_name: str, sts: list) -> np.ndarray:
    # module-level cache: a joblib worker process loads the model once and keeps it across calls
    if model_name not in _CHGNET:
        from ..descriptors import CHGNetFeaturizer

        _CHGNET[model_name] = CHGNetFeaturizer(model_name=model_name, on_error="nan").fit()
    return _CHGNET[model_name].transform(sts)


def structure_vectors(name: str, cifs: Sequence[str], structures: Sequence[Any], config: StructureConfig,
                      cache_dir: Path | None, group: str, n_jobs: int = 1) -> tuple[np.ndarray, int]:
    """``(vectors, n_failed)`` of ``ace`` or ``chgnet`` for the structures (NaN rows = failed);
    ``n_jobs`` > 1 featurises uncached structures in that many processes (same vectors: both
    featurisers treat each structure on its own, ACE with a fixed element table)."""
    if name == "ace":
        settings = dict(config.ace)
        cache = VectorCache(cache_dir, "ace", settings, "float64", group)
        # with one-hot species the feature layout follows the elements seen: featurise all at once
        jobs = n_jobs if settings.get("species_table") is not None else 1
        return cache.get(cifs, lambda idx: _rows_of(partial(_ace_features, settings), structures, idx, n_jobs=jobs))
    if name == "chgnet":
        cache = VectorCache(cache_dir, "chgnet", {"model": config.chgnet_model}, "float32", group)
        return cache.get(cifs, lambda idx: _rows_of(partial(_chgnet_features, config.chgnet_model), structures, idx, 64,
                                                     n_jobs=n_jobs))
    raise ValueError(f"unknown structure vector baseline {name!r}")


def crystal_graphs(structures: Sequence[Any], config: StructureConfig) -> list[Any]:
    """CGCNN graphs (one-hot elements) of the structures; ``None`` where one cannot be built."""
    from ..descriptors import CrystalGraph

    cg = CrystalGraph(cutoff=config.cgcnn_cutoff, max_neighbors=config.cgcnn_max_neighbors, on_error="skip").fit()
    out = []
    for k, st in enumerate(structures):
        if st is None:
            out.append(None)
            continue
        try:
            out.append(cg.graph(st, k))
        except Exception:  # noqa: BLE001 - counted by the caller as a structure it cannot featurise
            out.append(None)
    return out


def fit_cgcnn_seeds(graphs: dict[str, list], y: dict[str, np.ndarray], seeds: Sequence[int],
                    config: StructureConfig) -> list[tuple[np.ndarray, dict]]:
    """Train the graph network on ``graphs['train']`` (early stopping on ``'val'``) once per seed;
    test predictions (clipped to the training target range, as every protocol fit) and fit info."""
    from ..heads import BranchInputs, MultiScaleRegressor
    from .protocol import clip_predictions, mae

    out = []
    with single_threaded():
        for seed in seeds:
            model = MultiScaleRegressor(
                branches=("graph",), width=config.cgcnn_hidden, hidden=2 * config.cgcnn_hidden, dropout=0.0,
                branch_dropout=0.0, aux_weight=0.0, fusion="concat", batch_size=config.cgcnn_batch_size,
                max_epochs=config.cgcnn_epochs, patience=config.cgcnn_patience, lr=config.cgcnn_lr,
                graph_encoder=dict(hidden=config.cgcnn_hidden, n_layers=config.cgcnn_layers,
                                   cutoff=config.cgcnn_cutoff), seed=int(seed))
            model.fit(BranchInputs(graphs=graphs["train"]), y["train"], BranchInputs(graphs=graphs["val"]), y["val"])
            val = clip_predictions(model.predict(BranchInputs(graphs=graphs["val"])), y["train"])
            pred = clip_predictions(model.predict(BranchInputs(graphs=graphs["test"])), y["train"])
            out.append((pred, {"epochs": int(model.n_epochs_), "val_mae": mae(y["val"], val)}))
    return out


__all__ = ["QUICK_STRUCTURE", "STRUCTURE_BASELINES", "TRAINED_ON_TARGET", "StructureConfig", "VectorCache",
           "cif_key", "crystal_graphs", "fit_cgcnn_seeds", "map_chunks", "parse_structures", "single_threaded",
           "structure_vectors"]
