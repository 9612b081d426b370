"""Streaming readers for corpus sources: CIF folders, tables with a ``cif`` column, pymatgen JSON,
Matbench header tables and the built-in ``aflow-prototypes``.

Nothing here holds a whole table in memory when the format allows streaming: Parquet is read in
record batches (one row group's column chunk at most), CSV and JSON lines in chunks of rows. Plain
``.json`` / ``.json.bz2`` files (pymatgen JSON, Matbench's pandas "columns" orientation) are one
JSON document and are read whole.

Shared helpers for other modules (embeddings, heads):

- :func:`table_columns` - column names of a table file without reading its rows;
- :func:`iter_table_chunks` - ``pandas.DataFrame`` chunks of a table, optionally some columns;
- :func:`iter_table_records` - the same, one ``dict`` per row;
- :func:`iter_cif_folder` - ``(relative id, path)`` of every ``*.cif`` under a folder.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, DataNotFoundError

#: columns of a Matbench table kept in ``properties`` (everything else but the inputs is a target)
HEADER_KEEP = ("crys_sys",)
#: columns that name a record in a table, in order of preference
ID_COLUMNS = ("material_id", "mbid", "id", "name")
#: file endings read as tables
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".jsonl", ".jsonl.gz", ".json.bz2", ".json.gz")
#: built-in sources, by name
BUILTIN_SOURCES = ("aflow-prototypes",)


# --------------------------------------------------------------------------- tables

def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(TABLE_SUFFIXES + (".json",), key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _table_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith((".json", ".json.bz2", ".json.gz")):
        return "json"
    raise ConfigError(f"{path}: not a table (.csv, .parquet, .jsonl, .json.bz2)")


def _read_whole_json(path: Path):
    import pandas as pd

    try:
        return pd.read_json(path)  # pandas "columns" orientation (Matbench), compression by suffix
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read as a table ({exc})") from None


def table_columns(path: str | os.PathLike) -> list[str]:
    """Column names of a table file (``.parquet``, ``.csv``, ``.jsonl``, ``.json[.bz2]``), reading
    as little as the format allows (Parquet: the schema; CSV: the header line; JSON lines: the
    first row).

    Raises:
        DataNotFoundError (no such file), ConfigError (not a readable table).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such table file")
    fmt = _table_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        if fmt == "csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        if fmt == "jsonl":
            first = next(pd.read_json(path, lines=True, chunksize=1), None)
            return [] if first is None else [str(c) for c in first.columns]
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read as a table ({exc})") from None
    except Exception as exc:  # pyarrow raises its own types on a corrupt file
        raise ConfigError(f"{path}: cannot read as a table ({type(exc).__name__}: {exc})") from None
    return [str(c) for c in _read_whole_json(path).columns]


def iter_table_chunks(
    path: str | os.PathLike, columns: Sequence[str] | None = None, chunk_rows: int = 1024
) -> Iterator["pandas.DataFrame"]:  # noqa: F821
    """Yield a table file as ``pandas.DataFrame`` chunks of at most ``chunk_rows`` rows.

    Parquet is read in record batches, CSV and JSON lines in chunks, so memory holds one chunk
    (and, for Parquet, one row group's column chunk); ``.json``/``.json.bz2`` is one JSON
    document and is read whole. ``columns`` selects columns (all when ``None``); the row index of
    each chunk continues from the previous one.

    Raises:
        DataNotFoundError (no such file), ConfigError (not a readable table, or a requested column
        is absent: the message names the file and the columns it has).
    """
    import pandas as pd

    path = Path(path)
    names = table_columns(path)
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ConfigError(f"{path}: no column(s) {missing}; it has {names}")
        columns = list(columns)
    fmt = _table_format(path)
    chunk_rows = max(1, int(chunk_rows))
    start = 0
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
                df = batch.to_pandas()
                df.index = pd.RangeIndex(start, start + len(df))
                start += len(df)
                yield df
            return
        if fmt in ("csv", "jsonl"):
            reader = (pd.read_csv(path, chunksize=chunk_rows, usecols=columns) if fmt == "csv"
                      else pd.read_json(path, lines=True, chunksize=chunk_rows))
            with reader:
                for df in reader:
                    if columns is not None:
                        df = df[columns]
                    df.index = pd.RangeIndex(start, start + len(df))
                    start += len(df)
                    yield df
            return
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read as a table ({exc})") from None
    df = _read_whole_json(path)
    if columns is not None:
        df = df[columns]
    df = df.reset_index(drop=True)
    for lo in range(0, len(df), chunk_rows):
        yield df.iloc[lo : lo + chunk_rows]


def iter_table_records(
    path: str | os.PathLike, columns: Sequence[str] | None = None, chunk_rows: int = 1024
) -> Iterator[dict]:
    """Yield the rows of a table file as dicts (column -> value), streaming as
    :func:`iter_table_chunks` does."""
    for df in iter_table_chunks(path, columns, chunk_rows):
        yield from df.to_dict("records")


def table_num_rows(path: str | os.PathLike) -> int | None:
    """Row count of a Parquet file from its metadata; ``None`` for other formats (not counted)."""
    path = Path(path)
    if _table_format(path) == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


def iter_cif_folder(path: str | os.PathLike) -> Iterator[tuple[str, Path]]:
    """``(id, path)`` of every ``*.cif`` file under a folder (recursively, sorted by path); the id
    is the path relative to the folder, without the suffix."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".cif")
    for p in files:
        yield p.relative_to(root).with_suffix("").as_posix(), p


# --------------------------------------------------------------------------- records

def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (str, int, bool, list, dict)):
        return value
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def props_json(props: dict) -> str:
    """Properties as a JSON object string with sorted keys (NaN -> null, numpy -> Python)."""
    return json.dumps({str(k): _jsonable(v) for k, v in props.items()}, sort_keys=True)


@dataclass(frozen=True)
class Record:
    """One record of a source: ``payload`` is ``("file", path)``, ``("cif", text)``,
    ``("structure", Structure or dict)`` or ``("header", (composition, spacegroup))``."""

    id: str
    source: str
    kind: str
    payload: tuple
    properties: str = "{}"


class Source:
    """A named stream of :class:`Record` s. ``kind`` is ``"structure"`` or ``"header"``;
    ``spec`` is what identifies the source in a build's config; ``count`` the number of records
    when known without reading them (else ``None``)."""

    def __init__(self, name: str, kind: str, spec: str, records: Any, count: int | None = None,
                 fingerprint: str = ""):
        self.name = name
        self.kind = kind
        self.spec = spec
        self._records = records  # a callable returning an iterator of Record
        self.count = count
        self.fingerprint = fingerprint

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records())

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Source({self.name!r}, kind={self.kind!r}, count={self.count})"


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _table_source(path: Path, name: str) -> Source:
    columns = table_columns(path)
    id_col = next((c for c in ID_COLUMNS if c in columns), None)
    if "cif" in columns:
        keep = [c for c in columns if c not in ("cif", id_col) and not str(c).startswith("Unnamed:")]
        kind = "structure"
    elif "composition" in columns and "spg_num" in columns:
        keep = [c for c in HEADER_KEEP if c in columns]
        kind = "header"
    else:
        raise ConfigError(
            f"{path}: a table source needs a 'cif' column (structures) or 'composition' and 'spg_num' "
            f"columns (Matbench header documents); it has {columns}"
        )

    def records() -> Iterator[Record]:
        for df in iter_table_chunks(path):
            ids = df[id_col].tolist() if id_col else df.index.tolist()
            props = df[keep].to_dict("records") if keep else [{}] * len(df)
            if kind == "structure":
                payloads = [("cif", c if isinstance(c, str) else "") for c in df["cif"].tolist()]
            else:
                payloads = [("header", (c, s)) for c, s in zip(df["composition"].tolist(), df["spg_num"].tolist())]
            for rid, payload, p in zip(ids, payloads, props):
                yield Record(f"{name}:{rid}", name, kind, payload, props_json(p))

    return Source(name, kind, str(path), records, table_num_rows(path), _file_fingerprint(path))


def _is_structure_dict(obj) -> bool:
    return isinstance(obj, dict) and "lattice" in obj and "sites" in obj


def _json_source(path: Path, name: str) -> Source:
    from ..inputs import read_text_file

    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None
    if isinstance(data, dict) and ("cif" in data or ("composition" in data and "spg_num" in data)):
        del data
        return _table_source(path, name)
    if _is_structure_dict(data):
        items = [(f"{name}:0", data, {})]
    elif isinstance(data, list):
        items = []
        for i, entry in enumerate(data):
            if isinstance(entry, dict) and "structure" in entry:
                props = {k: v for k, v in entry.items() if k not in ("structure", "id", "material_id")}
                rid = entry.get("material_id", entry.get("id", i))
                items.append((f"{name}:{rid}", entry["structure"], props))
            else:
                items.append((f"{name}:{i}", entry, {}))
    elif isinstance(data, dict) and data and all(_is_structure_dict(v) for v in data.values()):
        items = [(f"{name}:{k}", v, {}) for k, v in data.items()]
    else:
        raise ConfigError(f"{path}: expected a pymatgen Structure JSON, a list of them or a table")

    def records() -> Iterator[Record]:
        for rid, obj, props in items:
            yield Record(rid, name, "structure", ("structure", obj), props_json(props))

    return Source(name, "structure", str(path), records, len(items), _file_fingerprint(path))


def _folder_source(path: Path) -> Source:
    name = path.name or str(path)

    def records() -> Iterator[Record]:
        for rel, p in iter_cif_folder(path):
            yield Record(f"{name}:{rel}", name, "structure", ("file", str(p)), "{}")

    files = [rel for rel, _ in iter_cif_folder(path)]
    return Source(name, "structure", str(path), records, len(files), f"{path.resolve()}:{len(files)}")


def _builtin_source(spec: str) -> Source:
    def records() -> Iterator[Record]:
        from ..builtin import aflow_prototypes

        for rid, struct, props in aflow_prototypes():
            yield Record(rid, spec, "structure", ("structure", struct), props_json(props))

    return Source(spec, "structure", spec, records, None, spec)


def structures_source(structures: Sequence, name: str = "structures") -> Source:
    """A source of pymatgen ``Structure`` objects given directly (ids ``structures:0``, ...)."""
    import hashlib

    structures = list(structures)
    digest = hashlib.sha256()
    for s in structures:
        digest.update(s.to_json().encode())

    def records() -> Iterator[Record]:
        for k, s in enumerate(structures):
            yield Record(f"{name}:{k}", name, "structure", ("structure", s), "{}")

    return Source(name, "structure", name, records, len(structures), digest.hexdigest())


def open_source(spec: Any) -> Source:
    """Open one source: a CIF folder, a table file, pymatgen ``.json``, a single ``.cif`` or a
    built-in name (``aflow-prototypes``). Nothing but the schema / file list is read here.

    Raises:
        DataNotFoundError (no such path), ConfigError (unknown or unreadable source type).
    """
    if isinstance(spec, str) and spec in BUILTIN_SOURCES:
        return _builtin_source(spec)
    path = Path(spec)
    if path.is_dir():
        return _folder_source(path)
    if path.is_file():
        name = f"{path.parent.name}/{_stem(path)}" if path.parent.name else _stem(path)
        if path.name.endswith(".json"):
            return _json_source(path, name)
        if path.name.endswith(TABLE_SUFFIXES):
            return _table_source(path, name)
        if path.suffix.lower() == ".cif":
            return Source(name, "structure", str(path),
                          lambda: iter([Record(name, name, "structure", ("file", str(path)), "{}")]), 1,
                          _file_fingerprint(path))
        raise ConfigError(
            f"{path}: unknown source type; give a folder of CIFs, a .csv/.parquet/.jsonl table, "
            "pymatgen .json, a Matbench .json.bz2 or 'aflow-prototypes'"
        )
    raise DataNotFoundError(f"{spec}: no such file or folder, and not a built-in corpus ('aflow-prototypes')")


def open_sources(sources: Any) -> list[Source]:
    """Open every source of a build. Structure objects given directly form one source,
    ``structures``; sources with the same name get ``#2``, ``#3``, ... appended."""
    from pymatgen.core import Structure

    if isinstance(sources, (str, os.PathLike, Structure)) or not isinstance(sources, Iterable):
        sources = [sources]
    sources = list(sources)
    structs = [s for s in sources if isinstance(s, Structure)]
    opened = [open_source(s) for s in sources if not isinstance(s, Structure)]
    if structs:
        opened.append(structures_source(structs))
    seen: dict[str, int] = {}
    for src in opened:
        n = seen.get(src.name, 0) + 1
        seen[src.name] = n
        if n > 1:
            src.name = f"{src.name}#{n}"
    return opened


def in_part(record_id: str, part: tuple[int, int] | None) -> bool:
    """Whether ``record_id`` falls in ``part = (k, n)``: part k (1-based) of n disjoint parts that a
    hash of the id deals records into (about 1/n of any source each, independent of the source's
    order and of the split, which hashes the id with another key). ``None``: every record."""
    if part is None:
        return True
    import hashlib

    k, n = part
    h = hashlib.blake2b(f"part\x00{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % n == k - 1


def iter_records(sources: Sequence[Source], limit: int | None = None,
                 part: tuple[int, int] | None = None) -> Iterator[Record]:
    """Every record of every source in order (only those of ``part``, see :func:`in_part`), at most
    ``limit`` per source; records carry the (possibly renamed) source name."""
    from itertools import islice

    for src in sources:
        it = (rec for rec in (_renamed(r, src) for r in iter(src)) if in_part(rec.id, part))
        yield from (it if limit is None else islice(it, max(0, int(limit))))


def _renamed(rec: Record, src: Source) -> Record:
    if rec.source == src.name:
        return rec
    rid = src.name + rec.id[len(rec.source):] if rec.id.startswith(rec.source) else rec.id
    return Record(rid, src.name, rec.kind, rec.payload, rec.properties)
