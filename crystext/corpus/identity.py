"""A corpus' identity: what its documents hold, as hashes and formulas, without the documents.

Written beside a pretraining run as ``corpus_identity.json.gz`` (:data:`IDENTITY_FILE`, gzip so a
release folder stays light; :func:`read_identity` also reads the plain ``corpus_identity.json`` of
older runs) by
:mod:`crystext.training`, read by the benchmark's leakage table (:mod:`crystext.benchmark.leakage`):
it lives here, below both. The identity of a structure is the SHA-1 of its canonical text
(:func:`text_hash`); of a composition, its reduced formula (:func:`reduced_formula`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

IDENTITY_FILE = "corpus_identity.json.gz"
#: the uncompressed name runs and releases written before :data:`IDENTITY_FILE` carry
PLAIN_IDENTITY_FILE = "corpus_identity.json"


def identity_path(folder: str | os.PathLike) -> Path | None:
    """The corpus identity file of a run folder (gzip first, then plain JSON), or None."""
    for name in (IDENTITY_FILE, PLAIN_IDENTITY_FILE):
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def read_identity(folder: str | os.PathLike) -> dict | None:
    """The parsed corpus identity of a run folder, or None when it has none."""
    path = identity_path(folder)
    if path is None:
        return None
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if path.name.endswith(".gz") else raw)


def identity_bytes(identity: Mapping[str, Any]) -> bytes:
    """An identity as :data:`IDENTITY_FILE` holds it: JSON, gzip without a timestamp (the same
    identity gives the same bytes)."""
    return gzip.compress(json.dumps(identity).encode("utf-8"), compresslevel=9, mtime=0)


def text_hash(text: str) -> str:
    """16-hex SHA-1 of a canonical text without its ``local`` block: the structure identity used
    here (a text with the block and one without name the same structure)."""
    from ..local import strip_local

    return hashlib.sha1(strip_local(text).encode("utf-8")).hexdigest()[:16]


def reduced_formula(formula: Any) -> str | None:
    """Reduced formula of a formula string or ``{element: amount}`` mapping (None if unparsable)."""
    from pymatgen.core import Composition

    try:
        if isinstance(formula, Mapping):
            return Composition(dict(formula)).reduced_formula
        from ..composition import parse_formula

        return Composition(parse_formula(str(formula))).reduced_formula
    except Exception:  # noqa: BLE001 - an unparsable formula simply matches nothing
        return None


def identity_of_corpus(datasets: Iterable[Any]) -> dict:
    """``{"formulas", "structures", "formula_spacegroup"}`` of built corpus splits (``datasets``
    ``Dataset`` objects with ``kind``, ``text``, ``formula`` and ``spacegroup`` columns): every
    document's reduced formula, each structure document's text hash, and (formula, space group)
    of every document. Reads the columns in batches (bounded memory on a 140k-document corpus)."""
    formulas, structures, pairs = set(), set(), set()
    reduced: dict[str, str | None] = {}
    for ds in datasets:
        ds = ds.select_columns(["kind", "text", "formula", "spacegroup"])
        for batch in ds.iter(batch_size=4096):
            for kind, text, formula, spg in zip(batch["kind"], batch["text"], batch["formula"], batch["spacegroup"]):
                if formula not in reduced:
                    reduced[formula] = reduced_formula(formula) if formula else None
                f = reduced[formula]
                if kind == "structure" and text:
                    structures.add(text_hash(text))
                if f:
                    formulas.add(f)
                    if spg is not None and int(spg) > 0:
                        pairs.add((f, int(spg)))
    return {"formulas": sorted(formulas), "structures": sorted(structures),
            "formula_spacegroup": sorted([list(p) for p in pairs])}


def write_identity(path: str | os.PathLike, formulas: Iterable[str], texts: Iterable[str],
                   formula_spacegroup: Iterable[tuple[str, int]] = (), symprec: float = 0.1,
                   sources: Sequence[str] = ()) -> Path:
    """Write a :data:`IDENTITY_FILE` (what a training run would ship beside its weights)."""
    path = Path(path)
    if path.is_dir():
        path = path / IDENTITY_FILE
    identity = {"symprec": symprec, "sources": list(sources),
                "formulas": sorted({reduced_formula(f) or f for f in formulas}),
                "structure_text_sha1": sorted({text_hash(t) for t in texts}),
                "formula_spacegroup": sorted([list(p) for p in set(map(tuple, formula_spacegroup))])}
    if path.name.endswith(".gz"):
        path.write_bytes(identity_bytes(identity))
    else:
        path.write_text(json.dumps(identity))
    return path


__all__ = ["IDENTITY_FILE", "PLAIN_IDENTITY_FILE", "identity_bytes", "identity_of_corpus", "identity_path", "read_identity", "reduced_formula", "text_hash", "write_identity"]
