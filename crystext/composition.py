"""Composition vectors: pool an element-vector table over a chemical formula.

An *element table* is a :class:`pandas.DataFrame` with one row per element (index = element
symbol) and one column per dimension: crystext's own vectors
(:func:`crystext.embeddings.element_embeddings`), any ElementEmbeddings set
(:func:`load_element_table` ``("magpie")``), or a CSV in ElementEmbeddings' ``element,0,1,...``
layout.

Poolings of a composition with elements ``i`` of fractional amounts ``w_i`` (``sum w_i = 1``) and
vectors ``x_i`` (all per dimension):

* ``mean``: ``sum_i w_i x_i`` (the fractional-mean of Roost/CrabNet-style baselines);
* ``sum``: ``sum_i n_i x_i`` with the formula's raw amounts ``n_i`` (so ``Fe2O3 != FeO1.5``);
* ``max`` / ``min``: element-wise over the distinct elements present (amounts ignored);
* ``std``: the fractionally weighted population standard deviation
  ``sqrt(sum_i w_i (x_i - mean)^2)`` (0 for an elemental composition);
* ``stats4``: the concatenation ``[mean, std, max, min]`` (4 x d columns, in that order).

Missing elements: ``on_missing="raise"`` (default) raises :class:`UnknownElementError` naming the
formula and the elements the table lacks; ``on_missing="nan"`` returns a row of NaN for such a
formula instead. :func:`missing_elements` lists them up front, which is how the benchmark drops
the same rows for every table.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, DataNotFoundError, UnknownElementError

POOLINGS = ("mean", "sum", "max", "min", "std", "stats4")
#: ElementEmbeddings sets the benchmark uses as baselines (their ElementEmbeddings names).
BASELINES = ("magpie", "mat2vec", "skipatom", "megnet16", "oliynyk", "crystallm", "atomic", "random_200")

FormulaLike = Any  # str | pymatgen Composition | Mapping[str, float]
TableLike = Any  # pandas.DataFrame | ElementEmbeddings Embedding | set name | CSV path


# --------------------------------------------------------------------------- element tables


def available_tables() -> list[str]:
    """Names :func:`load_element_table` accepts from the installed ElementEmbeddings package."""
    from elementembeddings.core import DEFAULT_ELEMENT_EMBEDDINGS

    return sorted(DEFAULT_ELEMENT_EMBEDDINGS)


@functools.cache
def _element_symbols() -> frozenset[str]:
    from pymatgen.core import Element

    return frozenset(e.symbol for e in Element)


def _is_element(symbol: str) -> bool:
    return isinstance(symbol, str) and symbol in _element_symbols()


def _clean_table(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Float table indexed by valid element symbols; rows with other labels (e.g. 'Uup') dropped."""
    df = df.copy()
    df.index = [str(s).strip() for s in df.index]
    keep = [_is_element(s) for s in df.index]
    df = df.loc[keep]
    if df.empty:
        raise ConfigError(f"element table {name}: no row is labelled with an element symbol")
    if df.index.has_duplicates:
        dup = sorted(set(df.index[df.index.duplicated()]))
        raise ConfigError(f"element table {name}: duplicate elements {dup}")
    try:
        df = df.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"element table {name}: non-numeric values ({exc})") from None
    if not np.isfinite(df.to_numpy()).all():
        raise ConfigError(f"element table {name}: NaN or infinite values")
    df.index.name = "element"
    df.columns = list(range(df.shape[1]))
    df.attrs["name"] = name
    return df


def load_element_table(name_or_path: TableLike) -> pd.DataFrame:
    """Load an element-vector table as a DataFrame (index = element symbol, columns 0..d-1, float64).

    Args:
        name_or_path: an ElementEmbeddings set name (see :func:`available_tables`: ``magpie``,
            ``mat2vec``, ``skipatom``, ``megnet16``, ``oliynyk``, ``crystallm``, ``atomic``
            (one-hot of Z), ``random_200``, ...), a CSV path in ElementEmbeddings' layout
            (``element,0,1,...``: first column the symbol), an ElementEmbeddings ``Embedding``,
            or a DataFrame (validated and returned as a copy).

    Rows whose label is not an element symbol (``random_200`` carries ``Uut``, ``Uup``, ``Uuh``)
    are dropped. The table's name is kept in ``df.attrs["name"]``.

    Raises:
        DataNotFoundError: neither a known set name nor an existing file.
        ConfigError: the table is malformed (no element rows, duplicates, non-numeric, NaN).
    """
    if isinstance(name_or_path, pd.DataFrame):
        return _clean_table(name_or_path, str(name_or_path.attrs.get("name", "table")))
    if hasattr(name_or_path, "embeddings") and hasattr(name_or_path, "as_dataframe"):
        return _clean_table(name_or_path.as_dataframe(), str(getattr(name_or_path, "embedding_name", "embedding")))
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"element table must be a name, a CSV path or a DataFrame, not {type(name_or_path).__name__}")
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            df = pd.read_csv(path, index_col=0)
        except (ValueError, pd.errors.ParserError) as exc:
            raise ConfigError(f"element table {path}: not a CSV of element vectors ({exc})") from None
        return _clean_table(df, path.stem)
    names = available_tables()
    if text not in names:
        raise DataNotFoundError(
            f"element table {text!r}: not a file and not an ElementEmbeddings set (known: {', '.join(names)})"
        )
    from elementembeddings.core import Embedding

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = Embedding.load_data(text)
    return _clean_table(emb.as_dataframe(), text)


# --------------------------------------------------------------------------- formulas


def parse_formula(formula: FormulaLike) -> dict[str, float]:
    """``{element: amount}`` of a formula string, pymatgen Composition or mapping (amounts > 0).

    Raises:
        UnknownElementError: the formula cannot be parsed, names a non-element, or is empty.
    """
    from pymatgen.core import Composition

    try:
        if isinstance(formula, Mapping):
            amounts = {str(k): float(v) for k, v in formula.items()}
        else:
            comp = formula if isinstance(formula, Composition) else Composition(str(formula))
            amounts = {str(k): float(v) for k, v in comp.get_el_amt_dict().items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise UnknownElementError(f"formula {formula!r} cannot be parsed ({exc})") from None
    amounts = {k: v for k, v in amounts.items() if v != 0}
    bad = [k for k in amounts if not _is_element(k)]
    if bad:
        raise UnknownElementError(f"formula {formula!r}: {', '.join(bad)} not chemical element(s)")
    if not amounts:
        raise UnknownElementError(f"formula {formula!r} holds no element")
    if any(v < 0 or not np.isfinite(v) for v in amounts.values()):
        raise UnknownElementError(f"formula {formula!r}: amounts must be positive and finite")
    return amounts


def missing_elements(formulas: Iterable[FormulaLike], table: TableLike) -> pd.Series:
    """For each formula, the sorted tuple of its elements absent from ``table`` (empty tuple: covered).

    Returns a Series aligned with ``formulas`` (integer index). Unparsable formulas raise
    :class:`UnknownElementError`.
    """
    known = set(_as_table(table).index)
    out = [tuple(sorted(set(parse_formula(f)) - known)) for f in formulas]
    return pd.Series(out, dtype=object, name="missing")


# --------------------------------------------------------------------------- pooling


def _as_table(table: TableLike) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame) and table.attrs.get("_clean"):
        return table
    df = load_element_table(table)
    df.attrs["_clean"] = True
    return df


def composition_embeddings(formulas: Iterable[FormulaLike], table: TableLike, pooling: str = "mean",
                           on_missing: str = "raise", chunk_size: int = 4096) -> np.ndarray:
    """Pool element vectors over formulas: an (n, d) float64 array ((n, 4d) for ``"stats4"``).

    Args:
        formulas: formula strings (``"Fe2O3"``, ``"Ag(AuS)2"``), pymatgen Compositions or
            ``{element: amount}`` mappings.
        table: element vectors: a DataFrame indexed by symbol, an ElementEmbeddings set name, a
            CSV path or an ElementEmbeddings ``Embedding`` (see :func:`load_element_table`).
        pooling: ``mean`` (fractional), ``sum`` (raw amounts), ``max``, ``min``, ``std``
            (fractionally weighted), or ``stats4`` = ``[mean, std, max, min]`` concatenated.
        on_missing: ``"raise"`` (default): :class:`UnknownElementError` naming the formula and the
            elements the table lacks; ``"nan"``: that formula's row is all NaN.
        chunk_size: formulas pooled per vectorised block (bounds memory).

    Raises:
        ConfigError: unknown ``pooling`` / ``on_missing``.
        UnknownElementError: an unparsable formula, or a missing element with ``on_missing="raise"``.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    if on_missing not in ("raise", "nan"):
        raise ConfigError(f"on_missing must be 'raise' or 'nan', not {on_missing!r}")
    df = _as_table(table)
    name = df.attrs.get("name", "table")
    index = {s: i for i, s in enumerate(df.index)}
    vectors = df.to_numpy(dtype=np.float64)
    d = vectors.shape[1]
    parsed = [parse_formula(f) for f in formulas]
    width = 4 * d if pooling == "stats4" else d
    out = np.full((len(parsed), width), np.nan)
    for start in range(0, len(parsed), chunk_size):
        block = parsed[start : start + chunk_size]
        ok_rows, idx_rows, amt_rows = [], [], []
        for j, amounts in enumerate(block):
            lacking = sorted(k for k in amounts if k not in index)
            if lacking:
                if on_missing == "raise":
                    raise UnknownElementError(
                        f"formula {formulas_repr(amounts)} (row {start + j}): element(s) {', '.join(lacking)} "
                        f"not in element table {name!r} ({len(index)} elements)"
                    )
                continue
            ok_rows.append(start + j)
            idx_rows.append([index[k] for k in amounts])
            amt_rows.append(list(amounts.values()))
        if ok_rows:
            out[ok_rows] = _pool_block(vectors, idx_rows, amt_rows, pooling)
    return out


def formulas_repr(amounts: Mapping[str, float]) -> str:
    """Compact formula text of an amount mapping, for messages."""
    return "".join(f"{k}{v:g}" if v != 1 else k for k, v in amounts.items())


def _pool_block(vectors: np.ndarray, idx_rows: list[list[int]], amt_rows: list[list[float]], pooling: str) -> np.ndarray:
    """Pooling of one block, looping over element slots (never materialising an (n, k, d) array).

    Short formulas are padded with their own first element at weight 0: the weighted sums ignore
    it and max/min are unchanged by a duplicate, so no masks are needed.
    """
    n, k = len(idx_rows), max(len(r) for r in idx_rows)
    idx = np.empty((n, k), dtype=np.int64)
    amt = np.zeros((n, k))
    for r, (ii, aa) in enumerate(zip(idx_rows, amt_rows)):
        idx[r, : len(ii)] = ii
        idx[r, len(ii):] = ii[0]
        amt[r, : len(aa)] = aa
    if pooling == "sum":
        return sum(amt[:, j, None] * vectors[idx[:, j]] for j in range(k))
    if pooling in ("max", "min"):
        reduce = np.maximum if pooling == "max" else np.minimum
        return reduce.reduce([vectors[idx[:, j]] for j in range(k)]) if k > 1 else vectors[idx[:, 0]].copy()
    w = amt / amt.sum(1, keepdims=True)
    mean = sum(w[:, j, None] * vectors[idx[:, j]] for j in range(k))
    if pooling == "mean":
        return mean
    var = sum(w[:, j, None] * (vectors[idx[:, j]] - mean) ** 2 for j in range(k))
    std = np.sqrt(var)
    if pooling == "std":
        return std
    mx = vectors[idx[:, 0]].copy()
    mn = mx.copy()
    for j in range(1, k):
        x = vectors[idx[:, j]]
        np.maximum(mx, x, out=mx)
        np.minimum(mn, x, out=mn)
    return np.concatenate([mean, std, mx, mn], axis=1)


def feature_labels(table: TableLike, pooling: str = "mean") -> list[str]:
    """Column names of :func:`composition_embeddings` output, e.g. ``mean_0 .. mean_{d-1}`` or, for
    ``stats4``, ``mean_*, std_*, max_*, min_*``."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    d = _as_table(table).shape[1]
    stats = ("mean", "std", "max", "min") if pooling == "stats4" else (pooling,)
    return [f"{s}_{i}" for s in stats for i in range(d)]


__all__ = [
    "BASELINES",
    "POOLINGS",
    "available_tables",
    "composition_embeddings",
    "feature_labels",
    "load_element_table",
    "missing_elements",
    "parse_formula",
]
