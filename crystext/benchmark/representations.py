"""The vector sets a benchmark compares: ElementEmbeddings baselines, extra tables, and our runs.

Our runs are reached only through :mod:`crystext.embeddings` (imported lazily, when a run is
given): :func:`~crystext.embeddings.element_embeddings` for element vectors and
:class:`~crystext.embeddings.StructureEmbedder` (the engine of ``structure_embeddings`` /
``text_embeddings``) for structure vectors. A run named ``base`` (its folder name, or the
``NAME`` of ``NAME=PATH``) is reported as ``crystext-base``.

Structure vectors are expensive on a CPU, so they are cached on disk (``cache_dir``) per structure
text, in one file per run weights (size and modification time), layer, pooling, precision and task
folder (:class:`crystext.benchmark.structures.VectorCache`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..composition import load_element_table
from ..encoding import DEFAULT_SYMPREC, TextCache, TextForm, as_form
from ..errors import ConfigError

PREFIX = "crystext-"


PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str) -> str:
    """``"auto"`` -> ``"bfloat16"`` where :func:`crystext.precision.resolve_precision` finds bf16
    fast on this CPU (capability and a timed matmul), else ``"float32"``."""
    from ..precision import resolve_precision as resolve

    if precision not in PRECISIONS:
        raise ConfigError(f"LM precision must be one of {PRECISIONS}, not {precision!r}")
    return resolve(precision)


def representation_name(run_name: str) -> str:
    """``base`` -> ``crystext-base`` (a name already starting with ``crystext-`` is kept)."""
    return run_name if run_name.startswith(PREFIX) else PREFIX + run_name


@dataclass
class Run:
    """One trained run under comparison: a run folder (or Hub id), or a loaded ``(model, tokenizer)``."""

    name: str  # the representation name, "crystext-<run name>"
    source: Any
    _loaded: Any = field(default=None, repr=False)

    @classmethod
    def parse(cls, spec: Any) -> "Run":
        """From ``"PATH"``, ``"NAME=PATH"``, ``(NAME, PATH_OR_PAIR)`` or a :class:`Run`."""
        if isinstance(spec, Run):
            return spec
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
            return cls(representation_name(spec[0]), spec[1])
        if isinstance(spec, (str, os.PathLike)):
            text = str(spec)
            if "=" in text and not Path(text).exists():
                name, path = text.split("=", 1)
                return cls(representation_name(name.strip()), path.strip())
            return cls(representation_name(Path(text.rstrip("/\\")).name or text), text)
        raise ConfigError(f"a run is a folder, NAME=PATH or (name, run), not {spec!r}")

    def load(self):
        """``(model, tokenizer)``, loaded once (on the CPU unless given loaded)."""
        if self._loaded is None:
            from ..embeddings import as_run

            self._loaded = as_run(self.source, device="cpu" if isinstance(self.source, (str, os.PathLike)) else None)
        return self._loaded

    def element_table(self) -> pd.DataFrame:
        from ..embeddings import element_embeddings

        df = load_element_table(element_embeddings(self.load()))
        df.attrs["name"] = self.name
        return df

    @property
    def form(self) -> TextForm:
        """The text form the run was trained on (its texts carry the same blocks)."""
        return TextForm.of(self.load()[0])

    @property
    def n_layer(self) -> int:
        cfg = self.load()[0].config
        return int(getattr(cfg, "n_layer", None) or cfg.num_hidden_layers)

    def resolve_layers(self, layers: Iterable[Any]) -> list[int]:
        """``"middle"`` -> n_layer // 2, ``"last"`` / -1 -> n_layer, ints as given (0..n_layer)."""
        n = self.n_layer
        out = []
        for layer in layers:
            if layer in ("last", -1):
                value = n
            elif layer == "middle":
                value = n // 2
            elif isinstance(layer, (int, np.integer)) or (isinstance(layer, str) and layer.lstrip("-").isdigit()):
                value = int(layer) % (n + 1)
            else:
                raise ConfigError(f"structure layer must be an int, 'middle' or 'last', not {layer!r}")
            if value not in out:
                out.append(value)
        return out

    def cache_key(self) -> str | None:
        """A key that changes when the run's weights change; None for an in-memory run."""
        if not isinstance(self.source, (str, os.PathLike)):
            return None
        folder = Path(self.source)
        weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in weights] or [str(self.source)]
        return hashlib.sha1(json.dumps([str(folder.resolve() if folder.exists() else folder), stamp]).encode()).hexdigest()[:12]

    def structure_vectors(self, texts: Sequence[str | None], layer: int, pooling: str,
                          cache_dir: Path | None = None, batch_size: int = 32,
                          precision: str = "float32") -> tuple[np.ndarray, np.ndarray, Counter]:
        """Vectors of crystal texts (``None`` = a structure that had no text): ``(vectors, ok, skipped)``.

        ``vectors`` is (n, d) float32 with NaN rows where ``ok`` is False (no text, or the text
        could not be embedded: too long for the context, unknown tokens); ``skipped`` counts why.
        ``precision``: ``"float32"``, or ``"bfloat16"`` for the forward pass under bf16 autocast.
        """
        return self.structure_views(texts, [(layer, pooling)], cache_dir, batch_size, precision)[(layer, pooling)]

    def structure_views(self, texts: Sequence[str | None], views: Sequence[tuple[int, str]],
                        cache_dir: Path | None = None, batch_size: int = 32, precision: str = "float32",
                        group: str = "all") -> dict:
        """:meth:`structure_vectors` for several ``(layer, pooling)`` views, from one forward pass per
        batch. Returns ``{(layer, pooling): (vectors, ok, skipped)}``.

        With ``cache_dir`` (and a run on disk) vectors are cached per structure text, one file per
        (run weights, view, precision, ``group``): folds and reruns embed each text once.
        """
        precision = resolve_precision(precision)
        key = self.cache_key()
        if cache_dir is None or key is None:
            return self._embed_views(texts, views, batch_size, precision)
        from .structures import VectorCache

        caches = {v: VectorCache(cache_dir, f"{self.name}-{key}", {"layer": int(v[0]), "pooling": v[1]}, precision, group)
                  for v in views}
        items = [t if t is not None else "" for t in texts]
        missing: set[int] = set()
        for cache in caches.values():
            missing |= set(cache.missing(items))
        idx = sorted(i for i in missing if texts[i] is not None)
        pos = {i: j for j, i in enumerate(idx)}
        fresh = self._embed_views([texts[i] for i in idx], views, batch_size, precision) if idx else {}
        skipped: Counter = fresh[views[0]][2] if fresh else Counter()
        cfg = self.load()[0].config
        dim = int(getattr(cfg, "n_embd", None) or cfg.hidden_size)
        out = {}
        for view, cache in caches.items():
            def compute(todo, view=view):
                rows = np.full((len(todo), dim), np.nan, dtype=np.float32)
                for r, i in enumerate(todo):
                    if i in pos:
                        rows[r] = fresh[view][0][pos[i]]
                return rows

            vectors, _ = cache.get(items, compute)
            ok = np.isfinite(vectors).all(axis=1)
            counts = Counter(skipped)
            extra = int((~ok).sum()) - sum(counts.values())
            if extra > 0:
                counts["failed before (cached)"] += extra
            out[view] = (vectors, ok, counts)
        return out

    def _embed_views(self, texts: Sequence[str | None], views: Sequence[tuple[int, str]], batch_size: int,
                     precision: str) -> dict:
        """One forward pass per batch for every view; no cache."""
        from ..embeddings import StructureEmbedder

        embedder = StructureEmbedder(self.load(), views=list(views), batch_size=batch_size,
                                     autocast=None if precision == "float32" else precision)
        d = embedder.dim // len(views)
        records = ((i, t if t is not None else ValueError("no text")) for i, t in enumerate(texts))
        vectors = np.full((len(texts), d * len(views)), np.nan, dtype=np.float32)
        ok = np.zeros(len(texts), dtype=bool)
        for i, vec in embedder.iter_keyed(records, texts=True, skip_errors=True):
            vectors[i] = vec
            ok[i] = True
        skipped = Counter(embedder.skipped)
        return {view: (np.ascontiguousarray(vectors[:, j * d:(j + 1) * d]), ok, skipped)
                for j, view in enumerate(views)}


def element_sets(baselines: Iterable[str] = (), tables: Mapping[str, Any] | None = None,
                 runs: Sequence[Run] = ()) -> dict[str, pd.DataFrame]:
    """Name -> element table for every compared set, in a fixed order: baselines, tables, runs."""
    sets: dict[str, pd.DataFrame] = {}
    for name in baselines:
        sets[name] = load_element_table(name)
    for name, table in (tables or {}).items():
        df = load_element_table(table)
        df.attrs["name"] = name
        sets[name] = df
    for run in runs:
        if run.name in sets:
            raise ConfigError(f"two vector sets named {run.name!r}")
        sets[run.name] = run.element_table()
    if not sets:
        raise ConfigError("no vector set to benchmark: give baselines, tables or runs")
    return sets


def _adopt_sharded_texts(cache: TextCache, cifs: Sequence[str], folder: Path) -> None:
    """Move the texts an earlier benchmark cached in 256 JSON shards (``texts/sym<symprec>/``,
    keyed by the CIF's SHA-1) into ``cache``, so a cache made before the JSONL one is reused, not
    converted again."""
    if not folder.is_dir():
        return
    wanted = {}
    for cif in cifs:
        key = cache.key(cif)
        if key not in cache.data:
            wanted.setdefault(hashlib.sha1(cif.encode("utf-8", "replace")).hexdigest()[:16], key)
    shards: dict[str, dict] = {}
    found = {}
    for old, key in wanted.items():
        if old[:2] not in shards:
            shard = folder / f"{old[:2]}.json"
            shards[old[:2]] = json.loads(shard.read_text()) if shard.is_file() else {}
        if old in shards[old[:2]]:
            text, reason = shards[old[:2]][old]
            found[key] = (text, None if text is not None else str(reason))
    cache.add(found)


def structure_texts(cifs: Sequence[str], cache_dir: Path | None = None, symprec: float | TextForm = DEFAULT_SYMPREC,
                    n_jobs: int = 1) -> tuple[list[str | None], Counter]:
    """Canonical texts of CIFs (``None`` for a CIF that cannot be converted) and the failure counts
    by reason, from the encode step's :class:`crystext.encoding.TextCache`.

    ``symprec``: the tolerance or a whole :class:`~crystext.encoding.TextForm` (a run's own:
    :attr:`Run.form`). Cached per structure in ``cache_dir/texts/<form name>.jsonl`` (e.g.
    ``symprec-0.1.jsonl``; in memory only without ``cache_dir``), so folds, targets and reruns that
    share structures convert each once. ``n_jobs`` > 1 converts the missing ones in that many processes.
    """
    form = as_form(symprec)
    path = Path(cache_dir) / "texts" / f"{form.name}.jsonl" if cache_dir is not None else None
    cache = TextCache(path, form, persist=path is not None)
    if cache_dir is not None and form.plain:
        _adopt_sharded_texts(cache, cifs, Path(cache_dir) / "texts" / f"sym{form.symprec:g}")
    results = cache.texts(list(cifs), num_proc=n_jobs, progress=False)
    skipped = Counter(err.split(":", 1)[0] for text, err in results if text is None)
    return [text for text, _ in results], skipped
