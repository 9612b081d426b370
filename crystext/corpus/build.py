"""The corpus build: records -> canonical text -> tokens -> sharded Arrow -> dedupe -> split.

Two phases, both in bounded memory:

1. **Convert** (the slow part, restartable). Records stream from the sources in a fixed order
   (global record index ``gidx``); chunks of them go to a process pool (at most a few chunks in
   flight), each worker converts, tokenizes and checks its records, and the results, in order,
   are written every ``shard_size`` records as one Arrow shard under ``OUT/_build/`` plus a
   manifest entry (the record range it covers, records / skips per source and reason). A rerun
   of the same command reads the manifest, checks its config hash, skips the records the
   finished shards cover and goes on; a different config is refused unless ``fresh=True``.
2. **Finalise** (fast). The shards, memory-mapped, are read twice: once to find duplicates
   (only 8-byte keys per document in memory, and for ``dedupe="structure"`` StructureMatcher
   within (formula, space group) buckets), once to write the kept documents into the split each
   one's hash picks. The result is a ``save_to_disk`` folder loadable by :func:`load_corpus`.

A record is skipped and counted by reason, never dropped silently, when it does not parse, is
disordered, has an unknown element, holds more than ``max_atoms`` atoms, takes longer than
``time_limit`` seconds, has tokens the tokenizer does not know, or tokenizes to more than
``max_tokens`` tokens (with ``<bos>``/``<eos>``): such a document is excluded, never cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import (
    CIFParseError,
    ConfigError,
    CrystextError,
    DataNotFoundError,
    DocumentTooLongError,
    EmptyStructureError,
    TokenizerError,
)
from ..atomic import OutputLock, SkippedRows, atomic_path, atomic_write_text, disk_full_error, is_disk_full, save_into
from ..limits import DEFAULT_MAX_ATOMS, DEFAULT_TIME_LIMIT, check_size
from ..limits import time_limit as _time_limit
from ..local import LOCAL_KEYS
from .headers import header_text
from .sources import Record, Source, iter_records, open_sources

SPLITS = ("train", "validation", "test")
DEDUPE_MODES = ("formula-spacegroup", "structure", "text", None)
SPLIT_MODES = ("random", "composition")
#: default context: documents with more tokens (``<bos>``/``<eos>`` included) are excluded
DEFAULT_MAX_TOKENS = 1024
#: records per Arrow shard of the conversion phase
DEFAULT_SHARD_SIZE = 2000
#: sub-folder of a corpus folder holding the conversion shards and their manifest
BUILD_DIR = "_build"
#: records sent to a worker at once
CHUNK_RECORDS = 8
_FORMAT = 1  # bump when the shard layout changes: old shards are then not reused
#: what each skip reason means, for the printed summary
REASONS = {
    "CIFParseError": "does not parse",
    "EncodingError": "not UTF-8",
    "DisorderError": "disordered sites",
    "UnknownElementError": "unknown element",
    "EmptyStructureError": "no atoms",
    "SpaceGroupError": "bad space group",
    "StructureTooLargeError": "too many atoms (--max-atoms)",
    "RecordTimeoutError": "over the time limit (--time-limit)",
    "TokenizerError": "unknown tokens",
    "DocumentTooLongError": "longer than the context (--max-tokens): excluded, not cut",
    "duplicate": "duplicate (--dedupe)",
}


# --------------------------------------------------------------------------- documents

def text_fields(text: str) -> tuple[str, int]:
    """``(reduced formula, space-group number)`` read from a canonical text's header."""
    formula, number = "", 0
    for line in text.splitlines():
        if line.startswith("_symmetry_Int_Tables_number "):
            number = int(line.split()[1])
        elif line.startswith("_chemical_formula_structural "):
            formula = line.split()[1]
            break
    return formula, number


def dedupe_key(text: str) -> int:
    """A 64-bit key of a canonical text without its ``data_`` line: equal structures give equal
    canonical text, so equal keys mark exact duplicates."""
    body = "\n".join(ln for ln in text.split("\n") if not ln.startswith("data_"))
    return int.from_bytes(hashlib.blake2b(body.encode(), digest_size=8).digest(), "big", signed=True)


def split_of(key: str, seed: int, fractions: Sequence[float]) -> int:
    """The split (0 train, 1 validation, 2 test) of a record: a seeded hash of ``key`` (its id, or
    its formula when splitting by composition) against the cumulative fractions. It depends on
    nothing but the key, so a build's split does not depend on the order work finishes."""
    h = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2.0**64
    cum = np.cumsum(np.asarray(fractions, dtype=float))
    return int(min(np.searchsorted(cum, u, side="right"), 2))


# --------------------------------------------------------------------------- conversion (worker side)

_SETTINGS: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the parent dies (a SIGKILLed build leaves no orphans)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            pass


def _init_worker(settings: dict, in_pool: bool = False) -> None:
    _SETTINGS.clear()
    _SETTINGS.update(settings)
    warnings.simplefilter("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if in_pool:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: Pool.terminate() uses SIGTERM


def _to_text(rid: str, kind: str, payload: tuple) -> str:
    """Canonical text of one record; raises a :class:`CrystextError` saying why not."""
    from ..inputs import cif_site_count, option_hint, read_text_file, to_structure
    from ..text import structure_to_text

    what, obj = payload
    if what == "header":
        return header_text(obj[0], obj[1], cell=_SETTINGS.get("header_cell", "primitive"))
    hint = f"raise {option_hint('time_limit')} to allow more"
    with _time_limit(_SETTINGS.get("time_limit"), rid, hint):
        try:
            if what == "file":
                obj = read_text_file(obj, rid)  # .cif.gz; non-UTF-8 bytes in comments only warn
            if what == "cif" and not obj.strip():
                raise CIFParseError(f"{rid}: empty CIF text")
            if isinstance(obj, str) and "data_" in obj:  # refuse a huge cell before pymatgen parses it
                check_size(cif_site_count(obj), _SETTINGS.get("max_atoms"), rid,
                           f"raise {option_hint('max_atoms')} to allow more")
            if isinstance(obj, dict) and not obj.get("sites"):
                raise EmptyStructureError(f"{rid}: the cell holds no atoms")
            structure = to_structure(obj, name=rid)
        except CrystextError:
            raise
        except Exception as exc:  # pymatgen's CIF parser raises arbitrary errors on garbage
            raise CIFParseError(f"{rid}: unparsable ({type(exc).__name__}: {exc})") from None
        check_size(len(structure), _SETTINGS.get("max_atoms"), rid, f"raise {option_hint('max_atoms')} to allow more")
        return structure_to_text(
            structure,
            symprec=_SETTINGS.get("symprec", 0.1),
            properties=_SETTINGS.get("properties", False),
            disorder=_SETTINGS.get("disorder", "raise"),
            local=_SETTINGS.get("local", False),
        )


def _convert_chunk(chunk: list[tuple[int, Record]]) -> list[tuple]:
    """Convert and tokenize some records. Each result is ``("ok", gidx, record, text, formula,
    spacegroup, input_ids, key)`` or ``("skip", gidx, record, reason, message)``."""
    converted: list[tuple] = []
    for gidx, rec in chunk:
        try:
            text = _to_text(rec.id, rec.kind, rec.payload)
            converted.append(("ok", gidx, rec, text))
        except CrystextError as exc:
            converted.append(("skip", gidx, rec, type(exc).__name__, str(exc)))
        except Exception as exc:  # never let one record stop a build
            converted.append(("skip", gidx, rec, type(exc).__name__, f"{rec.id}: {exc}"))
    tok = _SETTINGS["tokenizer"]
    ok = [r for r in converted if r[0] == "ok"]
    all_ids = tok([r[3] for r in ok], add_special_tokens=True, verbose=False)["input_ids"] if ok else []
    ids_of = {r[1]: ids for r, ids in zip(ok, all_ids)}
    unk = tok.unk_token_id
    max_tokens = _SETTINGS.get("max_tokens")
    out: list[tuple] = []
    for r in converted:
        if r[0] != "ok":
            out.append(r)
            continue
        _, gidx, rec, text = r
        ids = ids_of[gidx]
        if unk is not None and unk in ids:
            n_unk = sum(t == unk for t in ids)
            out.append(("skip", gidx, rec, TokenizerError.__name__, f"{rec.id}: {n_unk} unknown tokens"))
        elif max_tokens and len(ids) > max_tokens:
            out.append(("skip", gidx, rec, DocumentTooLongError.__name__,
                        f"{rec.id}: {len(ids)} tokens is over the context of {max_tokens} (--max-tokens); "
                        "excluded, not cut"))
        else:
            formula, number = text_fields(text)
            # int32 array: a twentieth of a list of Python ints, in the pipe and in the shard buffer
            out.append(("ok", gidx, rec, text, formula, number, np.asarray(ids, dtype=np.int32), dedupe_key(text)))
    return out


def _pool(num_proc: int, initializer: Callable, initargs: tuple):
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(num_proc, initializer=initializer, initargs=initargs)


def bounded_imap(func: Callable, items: Iterable, num_proc: int, initializer: Callable, initargs: tuple,
                 max_in_flight: int | None = None) -> Iterator:
    """``func`` over ``items`` in order, in ``num_proc`` processes (in this one when 1), with at
    most ``max_in_flight`` items read ahead: ``Pool.imap`` alone would read the whole input."""
    if num_proc <= 1:
        initializer(*initargs)
        yield from map(func, items)
        return
    limit = threading.BoundedSemaphore(max_in_flight or 4 * num_proc)
    stop = threading.Event()

    def feed():
        for item in items:
            while not limit.acquire(timeout=0.2):
                if stop.is_set():
                    return
            yield item

    with _pool(num_proc, initializer, (*initargs, True)) as pool:
        try:
            for result in pool.imap(func, feed(), chunksize=1):
                limit.release()
                yield result
        finally:
            stop.set()
            pool.terminate()


# --------------------------------------------------------------------------- shards

def _shard_schema():
    import pyarrow as pa

    return pa.schema([
        ("gidx", pa.int64()), ("id", pa.string()), ("source", pa.string()), ("kind", pa.string()),
        ("text", pa.string()), ("input_ids", pa.list_(pa.int32())), ("num_tokens", pa.int32()),
        ("formula", pa.string()), ("spacegroup", pa.int16()), ("properties", pa.string()), ("key", pa.int64()),
    ])


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)  # a unique temporary name, fsynced, renamed; removed on error


def _write_shard(build: Path, index: int, start: int, stop: int, rows: list[tuple], skips: list[tuple]) -> dict:
    """Write one shard (documents as Arrow, skipped records as JSON lines) and return its
    manifest entry; files are written under temporary names and renamed, so a kill leaves
    either the whole shard or none."""
    import pyarrow as pa

    schema = _shard_schema()
    cols = list(zip(*rows)) if rows else [[] for _ in schema.names]
    table = pa.table({name: pa.array(list(col), type=schema.field(name).type)
                      for name, col in zip(schema.names, cols)}, schema=schema)
    name = f"shard-{index:05d}"
    skip_path = build / f"{name}.skipped.jsonl"
    _atomic_write_text(skip_path, "".join(
        json.dumps({"id": r.id, "source": r.source, "reason": reason, "message": msg}) + "\n"
        for r, reason, msg in skips))
    with atomic_path(build / f"{name}.arrow") as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table)
    records = Counter(r[2] for r in rows)
    records.update(r.source for r, _, _ in skips)
    return {
        "index": index, "start": start, "stop": stop, "file": f"{name}.arrow", "skipped_file": skip_path.name,
        "documents": len(rows), "records": dict(records),
        "skipped": dict(Counter(r.source for r, _, _ in skips)),
        "skip_reasons": dict(Counter(reason for _, reason, _ in skips)),
    }


def _read_shard(path: Path):
    import pyarrow as pa

    # zero-copy: the table's buffers map the file, so reading every shard costs address space, not RAM
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


def _load_manifest(build: Path) -> dict | None:
    path = build / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _resumable_manifest(build: Path, config_hash: str, shard_size: int) -> dict:
    """The manifest of ``build`` cut to its finished prefix of shards (a new one when there is none)."""
    manifest = _load_manifest(build) or {"config_hash": config_hash, "shard_size": shard_size, "shards": [],
                                        "complete": False}
    manifest["shards"] = [s for s in manifest["shards"] if (build / s["file"]).is_file()]
    # keep the finished prefix only (shards are written in order; anything after a gap is redone)
    prefix = []
    for k, s in enumerate(manifest["shards"]):
        if s["index"] != k:
            break
        prefix.append(s)
    manifest["shards"] = prefix
    return manifest


def _record_chunks(records: Iterable[Record], start: int) -> Iterator[list[tuple[int, Record]]]:
    """``(gidx, record)`` pairs, numbered from ``start``, in lists of ``CHUNK_RECORDS``."""
    it = enumerate(records, start)
    while True:
        chunk = list(islice(it, CHUNK_RECORDS))
        if not chunk:
            return
        yield chunk


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit`` (so the pool is torn down and the finished
    shards stay); only in the main thread, where a handler can be set."""
    old_term = None
    if threading.current_thread() is threading.main_thread():
        def _term(signum, frame):  # noqa: ARG001
            raise SystemExit(f"corpus build stopped by signal {signum}; rerun the same command to resume")

        old_term = signal.signal(signal.SIGTERM, _term)
    try:
        yield
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


class _ShardWriter:
    """Collects converted records and writes them as numbered shards, each recorded in the manifest."""

    def __init__(self, build: Path, manifest: dict, start: int) -> None:
        self.build, self.manifest = build, manifest
        self.rows: list[tuple] = []
        self.skips: list[tuple] = []
        self.index = len(manifest["shards"])
        self.shard_start = start
        self.written = 0

    def add(self, res: tuple) -> None:
        """Keep one result of :func:`_convert_chunk` for the next shard."""
        gidx, rec = res[1], res[2]
        if res[0] == "ok":
            _, _, _, text, formula, number, ids, key = res
            self.rows.append((gidx, rec.id, rec.source, rec.kind, text, ids, len(ids), formula, number,
                              rec.properties, key))
        else:
            self.skips.append((rec, res[3], res[4]))

    def flush(self, stop: int) -> None:
        """Write the kept results as the shard of records ``shard_start``..``stop - 1``."""
        entry = _write_shard(self.build, self.index, self.shard_start, stop, self.rows, self.skips)
        self.manifest["shards"].append(entry)
        self.write_manifest()
        self.rows, self.skips = [], []
        self.index += 1
        self.shard_start = stop
        self.written += 1

    def write_manifest(self) -> None:
        _atomic_write_text(self.build / "manifest.json", json.dumps(self.manifest, indent=1) + "\n")


def _convert_phase(opened: list[Source], limit: int | None, part: tuple[int, int] | None, settings: dict, build: Path, config_hash: str,
                   shard_size: int, num_proc: int, progress: bool, max_new_shards: int | None) -> dict:
    """Run (or continue) the conversion phase; return the manifest (``complete`` says whether
    every record is covered)."""
    from tqdm.auto import tqdm

    manifest = _resumable_manifest(build, config_hash, shard_size)
    if manifest["complete"] and manifest["shards"]:
        return manifest
    manifest["complete"] = False
    start = manifest["shards"][-1]["stop"] if manifest["shards"] else 0
    counts = [src.count for src in opened]
    # a part's size is only known once read
    total = None if part is not None or any(c is None for c in counts) else sum(
        c if limit is None else min(c, limit) for c in counts)
    chunks = _record_chunks(islice(iter_records(opened, limit, part), start, None), start)
    shards = _ShardWriter(build, manifest, start)
    bar = tqdm(total=total, initial=start, desc="convert", disable=not progress, unit="rec", mininterval=1.0)
    if start > 0 and progress:
        print(f"resuming: {len(manifest['shards'])} finished shards cover records 0-{start - 1}", file=sys.stderr)
    stopped = False
    next_gidx = start
    with _sigterm_exits():
        try:
            for results in bounded_imap(_convert_chunk, chunks, num_proc, _init_worker, (settings,)):
                for res in results:
                    shards.add(res)
                    next_gidx = res[1] + 1
                    if next_gidx - shards.shard_start >= shard_size:
                        shards.flush(next_gidx)
                        if max_new_shards is not None and shards.written >= max_new_shards:
                            stopped = True
                            break
                bar.update(len(results))
                if stopped:
                    break
            if not stopped:
                if next_gidx > shards.shard_start or not manifest["shards"]:
                    shards.flush(next_gidx)
                manifest["complete"] = True
                manifest["records"] = next_gidx
                shards.write_manifest()
        finally:
            bar.close()
    return manifest


# --------------------------------------------------------------------------- deduplication

def match_group(texts: list[str]) -> list[int] | None:
    """Indices (into ``texts``) of structures that StructureMatcher (default tolerances) finds
    equal to an earlier one; the first of each group of equal structures is kept. ``None`` when
    the group ran past the per-record time limit (then nothing in it is dropped)."""
    from ..errors import RecordTimeoutError

    try:
        with _time_limit(_SETTINGS.get("time_limit"), f"dedupe group of {len(texts)}"):
            return _match_group(texts)
    except RecordTimeoutError:
        return None


def _match_group(texts: list[str]) -> list[int]:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from ..text import text_to_structure

    structures = []
    for k, t in enumerate(texts):
        try:
            s = text_to_structure(t)
        except Exception:  # a text that does not rebuild is kept, never matched
            continue
        s.properties["_index"] = k
        structures.append(s)
    try:
        groups = StructureMatcher().group_structures(structures)
    except Exception:  # pymatgen failing on one group must not stop a build: keep the group
        return []
    dupes: list[int] = []
    for group in groups:
        members = sorted(s.properties["_index"] for s in group)
        dupes.extend(members[1:])
    return sorted(dupes)


def _find_duplicates(tables: list, mode: str | None, num_proc: int, progress: bool,
                     time_limit: float | None = None) -> tuple[np.ndarray, int]:
    """Sorted ``gidx`` of documents to drop as duplicates (the first occurrence is kept), and the
    number of StructureMatcher groups given up after ``time_limit`` seconds (kept whole). Holds
    only 8-byte keys and small bucket lists in memory; texts are read from the mapped shards."""
    if mode is None:
        return np.zeros(0, dtype=np.int64), 0
    drop: set[int] = set()
    seen: set[int] = set()
    best: dict[tuple, tuple[int, str]] = {}
    buckets: dict[tuple, list[int]] = {}
    for t in tables:
        gidx = t.column("gidx").to_numpy()
        keys = t.column("key").to_numpy()
        kinds = t.column("kind").to_pylist()
        formulas = t.column("formula").to_pylist()
        sgs = t.column("spacegroup").to_numpy()
        for g, k, kind, f, sg in zip(gidx.tolist(), keys.tolist(), kinds, formulas, sgs.tolist()):
            if k in seen:  # identical canonical text: always a duplicate
                drop.add(g)
                continue
            seen.add(k)
            if mode == "formula-spacegroup":
                # one document per (formula, space group); a full structure wins over a header one
                b = best.get((f, sg))
                if b is None:
                    best[(f, sg)] = (g, kind)
                elif b[1] == "header" and kind == "structure":
                    drop.add(b[0])
                    best[(f, sg)] = (g, kind)
                else:
                    drop.add(g)
            elif mode == "structure" and kind == "structure":
                buckets.setdefault((f, sg), []).append(g)
    if mode == "structure":
        multi = sorted((g for g in buckets.values() if len(g) > 1), key=len, reverse=True)
        starts = [t.column("gidx").to_numpy() for t in tables]

        def text_of(g: int) -> str:
            for t, s in zip(tables, starts):
                if len(s) and s[0] <= g <= s[-1]:
                    return t.column("text")[int(np.searchsorted(s, g))].as_py()
            raise KeyError(g)  # pragma: no cover - every bucket member is in a shard

        from tqdm.auto import tqdm

        groups = ([text_of(g) for g in members] for members in multi)
        results = bounded_imap(match_group, groups, num_proc, _init_worker, ({"time_limit": time_limit},))
        timeouts = 0
        for members, dupes in tqdm(zip(multi, results), total=len(multi), desc="dedupe", unit="group",
                                   disable=not progress or not multi):
            if dupes is None:
                timeouts += 1
            else:
                drop.update(members[j] for j in dupes)
        return np.asarray(sorted(drop), dtype=np.int64), timeouts
    return np.asarray(sorted(drop), dtype=np.int64), 0


# --------------------------------------------------------------------------- the build

def features():
    """The ``datasets.Features`` of a corpus split."""
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "source": Value("string"),
            "kind": Value("string"),
            "text": Value("string"),
            "input_ids": List(Value("int32")),
            "num_tokens": Value("int32"),
            "formula": Value("string"),
            "spacegroup": Value("int16"),
            "properties": Value("string"),
        }
    )


def resolve_tokenizer(tokenizer):
    """A tokenizer from a name, a folder, a Hub id or a tokenizer object."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from ..tokenization import load_tokenizer

        return load_tokenizer(str(tokenizer))
    if tokenizer is None or not callable(tokenizer):
        raise ConfigError("tokenizer must be a name, a path or a transformers tokenizer")
    return tokenizer


def _parse_part(part) -> tuple[int, int] | None:
    """``"k/n"`` or ``(k, n)`` -> ``(k, n)`` with 1 <= k <= n; ``None`` stays ``None``."""
    if part is None:
        return None
    try:
        k, n = (int(x) for x in (part.split("/") if isinstance(part, str) else part))
    except (TypeError, ValueError):
        raise ConfigError(f"part must be 'k/n' (part k of n, e.g. '1/4'), not {part!r}") from None
    if not 1 <= k <= n:
        raise ConfigError(f"part must be 'k/n' with 1 <= k <= n, not {part!r}")
    return k, n


def _code_id() -> str:
    """A hash of the modules that make the canonical text: shards written by other code are not reused."""
    from .. import inputs, spacegroups, text
    from . import headers

    digest = hashlib.sha256()
    for mod in (text, spacegroups, inputs, headers):
        digest.update(Path(mod.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _tokenizer_id(tokenizer, tok) -> str:
    name = str(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else getattr(tok, "name_or_path", "")
    vocab = json.dumps(sorted(tok.get_vocab().items()))
    return f"{name}:{hashlib.sha256(vocab.encode()).hexdigest()[:16]}"


def _finalise(build: Path, manifest: dict, out: Path, dedupe: str | None, split: Sequence[float], split_by: str,
              seed: int, num_proc: int, progress: bool, time_limit: float | None = None) -> tuple[dict, Counter, int]:
    """Dedupe and split the shards into ``out/{train,validation,test}`` (``save_to_disk``
    layout); return per-split statistics and duplicate counts per source."""
    import pyarrow as pa
    from datasets import Dataset, DatasetDict

    tables = [_read_shard(build / s["file"]) for s in manifest["shards"]]
    drop, timeouts = _find_duplicates(tables, dedupe, num_proc, progress, time_limit)
    feats = features()
    schema = feats.arrow_schema
    names = list(feats)
    stage = build / "final"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    sinks = [pa.OSFile(str(stage / f"{name}.arrow"), "wb") for name in SPLITS]
    writers = [pa.ipc.new_stream(sink, schema) for sink in sinks]
    dup_counts: Counter = Counter()
    stats = {name: {"documents": 0, "tokens": 0, "kinds": Counter()} for name in SPLITS}
    try:
        for t in tables:
            gidx = t.column("gidx").to_numpy()
            is_dup = np.isin(gidx, drop)
            if is_dup.any():
                dup_counts.update(t.filter(pa.array(is_dup)).column("source").to_pylist())
            keyed = t.column("formula" if split_by == "composition" else "id").to_pylist()
            which = np.array([split_of(k, seed, split) for k in keyed], dtype=np.int64)
            which[is_dup] = -1
            for s, name in enumerate(SPLITS):
                part = t.filter(pa.array(which == s)).select(names).cast(schema)
                if part.num_rows:
                    writers[s].write_table(part)
                    stats[name]["documents"] += part.num_rows
                    stats[name]["tokens"] += int(np.asarray(part.column("num_tokens").to_numpy()).sum())
                    stats[name]["kinds"].update(part.column("kind").to_pylist())
    finally:
        for w, sink in zip(writers, sinks):
            w.close()
            sink.close()
    del tables
    if (out / "tokenizer").is_dir():  # the splits are replaced whole below, each by os.replace
        shutil.rmtree(out / "tokenizer")
    dd = DatasetDict({name: Dataset.from_file(str(stage / f"{name}.arrow")) for name in SPLITS})
    save_splits(dd, out, progress)
    del dd
    shutil.rmtree(stage)
    for name in SPLITS:
        stats[name]["kinds"] = dict(stats[name]["kinds"])
    return stats, dup_counts, timeouts


def _make_summary(opened: list[Source], manifest: dict, stats: dict, dup_counts: Counter, config: dict,
                  command: str | None, dedupe_timeouts: int = 0) -> dict:
    records: Counter = Counter()
    skipped: Counter = Counter()
    reasons: Counter = Counter()
    for s in manifest["shards"]:
        records.update(s["records"])
        skipped.update(s["skipped"])
        reasons.update(s["skip_reasons"])
    kept = {name: 0 for name in records}
    for s in manifest["shards"]:
        for name, n in s["records"].items():
            kept[name] = kept.get(name, 0) + n - s["skipped"].get(name, 0)
    if sum(dup_counts.values()):
        reasons["duplicate"] = sum(dup_counts.values())
    return {
        "sources": {
            src.name: {
                "kind": src.kind,
                "records": records.get(src.name, 0),
                "skipped": skipped.get(src.name, 0),
                "duplicates": dup_counts.get(src.name, 0),
                "documents": kept.get(src.name, 0) - dup_counts.get(src.name, 0),
            }
            for src in opened
        },
        "skip_reasons": dict(reasons),
        "splits": stats,
        "limits": {
            "max_atoms": config["max_atoms"], "time_limit": config["time_limit"], "max_tokens": config["max_tokens"],
            "rule": "a record over max_atoms atoms or time_limit seconds is skipped; a document of more than "
                    "max_tokens tokens (<bos> and <eos> included) is excluded, never cut; all are counted in "
                    "skip_reasons and listed in skipped.csv",
        },
        "build": {"shards": len(manifest["shards"]), "shard_size": manifest["shard_size"],
                  "config_hash": manifest["config_hash"],
                  # StructureMatcher groups (dedupe="structure") over the time limit: kept whole
                  "dedupe_groups_timed_out": dedupe_timeouts},
        "config": config,
        "command": command,
    }


def print_summary(summary: dict, file=None) -> None:
    """Print a corpus summary: records, skips, duplicates and documents per source, skip
    reasons, and documents / tokens per split."""
    file = file or sys.stderr
    rows = [("source", "kind", "records", "skipped", "duplicates", "documents")]
    for name, s in summary["sources"].items():
        rows.append((name, s["kind"], s["records"], s["skipped"], s["duplicates"], s["documents"]))
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    print("corpus summary", file=file)
    for r in rows:
        print("  " + "  ".join(str(v).rjust(w) if c else str(v).ljust(w) for c, (v, w) in enumerate(zip(r, widths))), file=file)
    if summary["skip_reasons"]:
        print("skipped or excluded records by reason:", file=file)
        for reason, n in sorted(summary["skip_reasons"].items(), key=lambda kv: -kv[1]):
            print(f"  {reason:24s} {n:>8}  {REASONS.get(reason, '')}", file=file)
    limits = summary.get("limits")
    if limits:
        print(f"limits: max_atoms {limits['max_atoms']}, time_limit {limits['time_limit']} s, "
              f"max_tokens {limits['max_tokens']} (longer documents are excluded, never cut)", file=file)
    timed_out = summary.get("build", {}).get("dedupe_groups_timed_out")
    if timed_out:
        print(f"dedupe: {timed_out} StructureMatcher groups over the time limit were kept whole", file=file)
    splits = ", ".join(f"{k} {v['documents']} docs / {v['tokens']} tokens" for k, v in summary["splits"].items())
    print(f"splits: {splits}", file=file)


def _write_skipped(build: Path, manifest: dict, out: Path) -> None:
    listing = SkippedRows(out / "skipped.csv")  # id, source, reason, message; written atomically
    for s in manifest["shards"]:
        with open(build / s["skipped_file"]) as src:
            for line in src:
                row = json.loads(line)
                listing.add(row["id"], row["source"], row["reason"], row["message"])
    listing.write()


@dataclass(frozen=True)
class _BuildOptions:
    """The checked, normalised options of one build (see :func:`build_corpus` for each)."""

    num_proc: int
    dedupe: str | None
    split: tuple[float, ...]
    split_by: str
    seed: int
    symprec: float
    properties: bool
    disorder: str
    limit: int | None
    local: bool
    part: tuple[int, int] | None
    max_atoms: int | None
    time_limit: float | None
    max_tokens: int | None
    shard_size: int
    progress: bool


def _checked_options(*, num_proc, dedupe, split, split_by, seed, symprec, properties, disorder, limit, part,
                     max_atoms, time_limit, max_tokens, shard_size, progress, local=False) -> _BuildOptions:
    """The options of :func:`build_corpus`, checked (a ``ConfigError`` names a bad one) and normalised."""
    if dedupe not in DEDUPE_MODES:
        raise ConfigError(f"dedupe must be one of {DEDUPE_MODES}, not {dedupe!r}")
    if split_by not in SPLIT_MODES:
        raise ConfigError(f"split_by must be one of {SPLIT_MODES}, not {split_by!r}")
    if disorder not in ("raise", "dominant", "order"):
        raise ConfigError(f"disorder must be 'raise', 'dominant' or 'order', not {disorder!r}")
    split = tuple(float(x) for x in split)
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ConfigError(f"split must be three non-negative fractions adding up to 1, not {split}")
    if int(shard_size) < 1:
        raise ConfigError(f"shard_size must be at least 1, not {shard_size}")
    return _BuildOptions(
        num_proc=max(1, int(num_proc or 1)), dedupe=dedupe, split=split, split_by=split_by, seed=seed,
        symprec=symprec, properties=properties, disorder=disorder, limit=limit, local=bool(local),
        part=_parse_part(part), max_atoms=int(max_atoms) if max_atoms else None, time_limit=float(time_limit) if time_limit else None,
        max_tokens=int(max_tokens) if max_tokens else None, shard_size=int(shard_size), progress=progress,
    )


def _build_config(opened: list[Source], tokenizer, tok, o: _BuildOptions) -> tuple[dict, str]:
    """The build's configuration (recorded in ``summary.json``) and the hash of what its
    conversion shards depend on (not num_proc, dedupe or split: those are free to change on a rerun)."""
    config = {
        "sources": [s.spec for s in opened],
        "tokenizer": str(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else getattr(tok, "name_or_path", ""),
        "num_proc": o.num_proc, "dedupe": o.dedupe, "split": list(o.split), "split_by": o.split_by, "seed": o.seed,
        "symprec": o.symprec, "properties": o.properties, "local": o.local, "disorder": o.disorder,
        "limit": o.limit, "part": None if o.part is None else f"{o.part[0]}/{o.part[1]}",
        "header_cell": "primitive", "max_atoms": o.max_atoms, "time_limit": o.time_limit, "max_tokens": o.max_tokens,
    }
    conversion = {
        "format": _FORMAT, "code": _code_id(), "sources": [[s.name, s.spec, s.fingerprint] for s in opened],
        "tokenizer": _tokenizer_id(tokenizer, tok), "symprec": o.symprec, "properties": o.properties,
        "disorder": o.disorder, "limit": o.limit, "header_cell": "primitive", "max_atoms": o.max_atoms,
        "time_limit": o.time_limit, "max_tokens": o.max_tokens, "shard_size": o.shard_size,
    }
    if o.part is not None:  # only when set, so that builds without it keep their config hash (and shards)
        conversion["part"] = list(o.part)
    if o.local:  # likewise
        conversion["local"] = True
    return config, hashlib.sha256(json.dumps(conversion, sort_keys=True).encode()).hexdigest()[:16]


def _open_build_dir(out_path: Path, config_hash: str, fresh: bool) -> Path:
    """``out_path/_build``, cleared of a killed build's temporary files; shards of a different
    build there are refused, or removed when ``fresh``."""
    build = out_path / BUILD_DIR
    for stale in build.glob(".*.tmp*") if build.is_dir() else ():  # left by a killed build
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    old = _load_manifest(build)
    if old is not None and old.get("config_hash") != config_hash:
        if not fresh:
            raise ConfigError(
                f"{out_path}: holds conversion shards of a different build (config hash {old.get('config_hash')}, "
                f"this one {config_hash}: sources, their files, tokenizer, limits, shard size or the text-conversion "
                "code differ); "
                "use another --out, or --fresh to discard them")
        shutil.rmtree(build)
    build.mkdir(parents=True, exist_ok=True)
    return build


def _build_into(out_path: Path, opened: list[Source], tok, o: _BuildOptions, config: dict, config_hash: str, *,
                command: str | None, fresh: bool, keep_shards: bool, max_new_shards: int | None,
                keep_in_memory: bool):
    """Both phases of a build into ``out_path`` and its outputs; the corpus, or ``None`` when
    stopped after ``max_new_shards``."""
    build = _open_build_dir(out_path, config_hash, fresh)
    settings = {"symprec": o.symprec, "properties": o.properties, "local": o.local, "disorder": o.disorder,
                "header_cell": "primitive",
                "max_atoms": o.max_atoms, "time_limit": o.time_limit, "max_tokens": o.max_tokens, "tokenizer": tok}
    manifest = _convert_phase(opened, o.limit, o.part, settings, build, config_hash, o.shard_size, o.num_proc,
                              o.progress, max_new_shards)
    if not manifest["complete"]:
        if o.progress:
            print(f"stopped after {len(manifest['shards'])} shards ({manifest['shards'][-1]['stop']} records); "
                  "rerun to continue", file=sys.stderr)
        return None
    stats, dup_counts, timeouts = _finalise(build, manifest, out_path, o.dedupe, o.split, o.split_by, o.seed,
                                            o.num_proc, o.progress, o.time_limit)
    summary = _make_summary(opened, manifest, stats, dup_counts, config, command, timeouts)
    with atomic_path(out_path / "tokenizer", folder=True) as tok_dir:
        tok.save_pretrained(str(tok_dir))
    _write_skipped(build, manifest, out_path)
    atomic_write_text(out_path / "summary.json", json.dumps(summary, indent=2) + "\n")
    if o.progress:
        print_summary(summary)
    if not keep_shards:
        shutil.rmtree(build)
    return load_corpus(out_path, keep_in_memory=keep_in_memory)


def build_corpus(sources: Any, out: str | os.PathLike | None = None, tokenizer: Any = "crystext-cif",
                 num_proc: int = 1, dedupe: str | None = "formula-spacegroup",
                 split: Sequence[float] = (0.9, 0.05, 0.05), split_by: str = "random", seed: int = 0,
                 symprec: float = 0.1, properties: bool = False, disorder: str = "raise", limit: int | None = None,
                 progress: bool = True, command: str | None = None, *, part: str | tuple[int, int] | None = None,
                 max_atoms: int | None = DEFAULT_MAX_ATOMS, time_limit: float | None = DEFAULT_TIME_LIMIT,
                 max_tokens: int | None = DEFAULT_MAX_TOKENS, shard_size: int = DEFAULT_SHARD_SIZE,
                 fresh: bool = False, keep_shards: bool = True, max_new_shards: int | None = None,
                 local: bool = False):
    """Build a tokenized corpus of crystal text from structure sources and Matbench header tables,
    streaming, in bounded memory, and resumable (see the module docstring).

    Args:
        sources: one source or a list of them: a folder of CIFs, a ``.csv``/``.parquet``/``.jsonl``
            table with a ``cif`` column, pymatgen ``.json``, ``"aflow-prototypes"``, a Matbench
            ``.json.bz2`` (header documents), or pymatgen ``Structure`` objects.
        out: folder to write (``save_to_disk`` splits, ``summary.json``, ``skipped.csv``,
            ``tokenizer/`` and the conversion shards in ``_build/``); when ``None`` the corpus is
            built in a temporary folder and returned in memory.
        tokenizer: a name (``crystext-cif``, ``crystext-compact``), folder, Hub id or tokenizer.
        num_proc: worker processes for conversion and structure deduplication.
        dedupe: ``"formula-spacegroup"`` keeps one document per reduced formula and space group
            (a full structure wins over a header document); ``"structure"`` drops exact
            duplicates and structures that pymatgen's ``StructureMatcher`` matches to an earlier
            one of the same formula and space group; ``"text"`` drops documents whose canonical
            text, without the ``data_`` line, equals an earlier one's; ``None`` keeps everything.
            Every mode drops identical texts; the first occurrence (in source order) is kept.
        split: fractions of train, validation and test.
        split_by: ``"random"`` (a seeded hash of each record's id picks its split) or
            ``"composition"`` (a hash of the reduced formula, so no formula is in two splits).
            Fractions hold in expectation, not exactly.
        seed: the seed of the split; the same inputs and seed give the same corpus.
        symprec, properties, disorder, local: passed to :func:`crystext.text.structure_to_text`
            (``local`` needs a tokenizer that knows the block's keywords: ``crystext-local``).
        limit: at most this many records from each source (quick runs).
        part: ``"k/n"`` or ``(k, n)``: only the records of part k (1-based) of n disjoint parts
            that a hash of the record id deals each source into (about 1/n of it, a random sample
            whatever the source's order: MP files sorted by id are not). The n parts together make
            the whole corpus, with every record in the split it has there; for corpora too large
            for one training session, taken part by part. ``limit`` applies within the part.
        progress: show progress bars and print the summary table.
        command: the command line that made the corpus, recorded in ``summary.json``.
        max_atoms: skip (and count) structures with more atoms than this; ``None``: no limit.
        time_limit: skip (and count) records whose conversion takes longer (seconds); ``None``:
            no limit. With ``dedupe="structure"`` it also bounds each (formula, space group)
            group's StructureMatcher run: a group over it is kept whole and counted in
            ``summary["build"]["dedupe_groups_timed_out"]``.
        max_tokens: exclude (and count) documents of more tokens, ``<bos>``/``<eos>`` included;
            ``None``: keep all.
        shard_size: records per conversion shard (the unit of restart).
        fresh: discard conversion shards of an earlier, different build in ``out`` instead of
            refusing to mix them.
        keep_shards: keep ``out/_build`` after the build (re-splitting or re-deduping then costs
            no conversion); ``False`` removes it.
        max_new_shards: stop after writing this many new shards and return ``None`` (a build in
            slices; tests use it to simulate a kill). Rerun to continue.

    Returns:
        ``datasets.DatasetDict`` with splits ``train``, ``validation``, ``test`` and columns
        ``id, source, kind, text, input_ids, num_tokens, formula, spacegroup, properties`` (rows
        in source order); its ``summary`` attribute holds what ``summary.json`` holds.

    Raises:
        DataNotFoundError (a source is missing), ConfigError (bad argument, unreadable source, or
        ``out`` holds shards of a different build and ``fresh`` is false). Bad *records* never
        raise: they are skipped and counted.

    (Over 80 lines for this list of 23 parameters only; the steps are :func:`_checked_options`,
    :func:`_build_config` and :func:`_build_into`.)
    """
    o = _checked_options(num_proc=num_proc, dedupe=dedupe, split=split, split_by=split_by, seed=seed,
                         symprec=symprec, properties=properties, disorder=disorder, limit=limit, part=part,
                         max_atoms=max_atoms, time_limit=time_limit, max_tokens=max_tokens,
                         shard_size=shard_size, progress=progress, local=local)
    tok = resolve_tokenizer(tokenizer)  # fail early on a bad tokenizer name
    if local and f" {LOCAL_KEYS[0]}\n" not in tok.get_vocab():
        raise ConfigError(f"local block: tokenizer {tokenizer} has no tokens for its keywords; use crystext-local")
    opened = open_sources(sources)
    config, config_hash = _build_config(opened, tokenizer, tok, o)
    tmp = tempfile.TemporaryDirectory(prefix="crystext-corpus-") if out is None else None
    out_path = Path(tmp.name) if tmp is not None else Path(out)
    # one build per folder at a time: a second one refuses, naming the first's pid
    lock = OutputLock(out_path).acquire() if out is not None else None
    try:
        return _build_into(out_path, opened, tok, o, config, config_hash, command=command, fresh=fresh,
                           keep_shards=keep_shards, max_new_shards=max_new_shards, keep_in_memory=tmp is not None)
    except Exception as exc:
        if (out_path / BUILD_DIR / "final").is_dir():  # the half-written split files of _finalise
            shutil.rmtree(out_path / BUILD_DIR / "final", ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full_error(out_path, exc) from None
        raise
    finally:
        if lock is not None:
            lock.release()
        if tmp is not None:
            tmp.cleanup()


def save_splits(dd, out: Path, progress: bool = False) -> None:
    """Write a ``DatasetDict`` of corpus splits into ``out`` (each split replaced whole, so a kill
    leaves the old split or the new one), progress bars only when asked."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    if not progress:
        ds_logging.disable_progress_bar()
    try:  # datasets writes no file for an empty split and then cannot load it: one shard there
        save_into(out, lambda tmp: dd.save_to_disk(
            str(tmp), num_shards={name: 1 for name in SPLITS if name in dd and len(dd[name]) == 0} or None))
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def load_corpus(path: str | os.PathLike, keep_in_memory: bool = False):
    """Load a corpus folder written by :func:`build_corpus` (a ``datasets.DatasetDict``).

    The returned object's ``summary`` attribute holds ``summary.json``. Raises
    :class:`DataNotFoundError` if the folder is not a corpus.
    """
    from datasets import load_from_disk

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        raise DataNotFoundError(f"{path}: not a corpus folder (no dataset_dict.json); build one with build_corpus")
    corpus = load_from_disk(str(path), keep_in_memory=keep_in_memory)
    summary_file = path / "summary.json"
    corpus.summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return corpus
