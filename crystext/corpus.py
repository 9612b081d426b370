"""Corpora of crystal text: sources -> canonical text -> tokens -> ``datasets.DatasetDict``.

Sources (any mix, one argument each):

- a folder of CIF files (``*.cif``, searched recursively);
- a table with a ``cif`` column: CSV, Parquet or JSON lines (``.csv``, ``.parquet``, ``.jsonl``);
  the other columns are kept, as JSON, in the ``properties`` column (never in the text);
- pymatgen JSON (``.json``): one Structure, a list of them, a list of ``{"structure": ..., ...}``
  records or a mapping id -> Structure;
- ``"aflow-prototypes"``: the built-in default corpus (:func:`crystext.builtin.aflow_prototypes`);
- a Matbench table (``*.json.bz2`` in pandas "columns" orientation, or any table with
  ``composition`` and ``spg_num`` columns and no ``cif``): each row becomes a *partial document*,
  the header part of the text form (``kind="header"``: ``data_`` line, space group, formulas,
  ``Z``; no cell, no sites). Target columns are dropped entirely: they are in neither the text nor
  ``properties`` (only ``crys_sys`` is kept there).

Every record is converted on its own; a bad one (unparsable CIF, non-UTF-8 file, disordered sites,
unknown element, empty cell, ...) is skipped and counted with its reason, so one record never stops
a build. Documents are deduplicated, split into train/validation/test by a seed (optionally by
composition, so that no reduced formula is in two splits) and tokenized (``<bos> ... <eos>``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import (
    CIFParseError,
    ConfigError,
    CrystextError,
    DataNotFoundError,
    EmptyStructureError,
    SpaceGroupError,
    TokenizerError,
    UnknownElementError,
)

SPLITS = ("train", "validation", "test")
DEDUPE_MODES = ("formula-spacegroup", "structure", None)
SPLIT_MODES = ("random", "composition")
#: columns of a Matbench table kept in ``properties`` (everything else but the inputs is a target)
HEADER_KEEP = ("crys_sys",)
#: columns that name a record in a table, in order of preference
ID_COLUMNS = ("material_id", "mbid", "id", "name")
#: atoms per conventional cell for each primitive one, by the lattice letter of the H-M symbol
#: (R groups are written in the hexagonal setting, three lattice points per cell)
CENTERING = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}


# --------------------------------------------------------------------------- header documents

def header_lines(composition: Any, spacegroup: int, cell: str = "conventional") -> list[str]:
    """The header lines of the text form for a composition and space group, without the cell.

    The lines are exactly those :func:`crystext.text.structure_to_text` writes, in the same order,
    minus ``_cell_length_*``, ``_cell_angle_*`` and ``_cell_volume``: ``data_``, H-M symbol,
    space-group number, structural formula, formula sum and ``Z``.

    Args:
        composition: the cell composition (a formula string such as ``"Fe2 O3"`` or a pymatgen
            ``Composition``); its amounts must be whole numbers.
        spacegroup: space-group number, 1-230.
        cell: ``"conventional"`` if the composition is that of the standard conventional cell
            (what the text form writes), ``"primitive"`` if it is that of a primitive cell (as in
            Materials Project / Matbench); a primitive composition is multiplied by the number of
            lattice points of the conventional cell (2 for A/B/C/I, 4 for F, 3 for R).

    Raises:
        UnknownElementError, SpaceGroupError, CIFParseError (malformed or fractional composition).
    """
    from pymatgen.core import Composition, Element

    from . import spacegroups
    from .text import _element_order

    try:
        comp = composition if isinstance(composition, Composition) else Composition(str(composition))
    except (ValueError, KeyError, TypeError) as exc:
        raise CIFParseError(f"composition {composition!r}: not a formula ({exc})") from None
    if len(comp) == 0:
        raise CIFParseError(f"composition {composition!r}: empty")
    for el in comp:
        if not isinstance(el, Element):
            raise UnknownElementError(f"composition {composition!r}: unknown element {str(el)!r}")
    try:
        number = int(spacegroup)
    except (TypeError, ValueError):
        raise SpaceGroupError(f"space group {spacegroup!r} is not a number") from None
    symbol = spacegroups.symbol_of(number)
    if cell == "primitive":
        comp = comp * CENTERING[symbol[0]]
    elif cell != "conventional":
        raise ConfigError(f"cell must be 'conventional' or 'primitive', not {cell!r}")
    if any(abs(v - round(v)) > 1e-6 or v <= 0 for v in comp.values()):
        raise CIFParseError(f"composition {composition!r}: amounts are not whole numbers of atoms")
    elements = sorted(comp.elements, key=_element_order)
    formula_sum = " ".join(f"{el.symbol}{int(round(comp[el]))}" for el in elements)
    reduced, z = comp.get_reduced_composition_and_factor()
    return [
        f"data_{formula_sum.replace(' ', '')}",
        f"_symmetry_space_group_name_H-M {symbol}",
        f"_symmetry_Int_Tables_number {number}",
        f"_chemical_formula_structural {reduced.reduced_formula}",
        f"_chemical_formula_sum '{formula_sum}'",
        f"_cell_formula_units_Z {int(round(z))}",
    ]


def header_text(composition: Any, spacegroup: int, cell: str = "conventional") -> str:
    """A partial document: :func:`header_lines` joined, ending in a newline like the full text."""
    return "\n".join(header_lines(composition, spacegroup, cell)) + "\n"


# --------------------------------------------------------------------------- sources

@dataclass
class _Source:
    name: str
    kind: str  # "structure" or "header"
    ids: list[str] = field(default_factory=list)
    payloads: list[tuple] = field(default_factory=list)  # ("file", path) | ("cif", str) | ("structure", obj) | ("header", (comp, sg))
    properties: list[str] = field(default_factory=list)  # JSON strings


_TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".jsonl", ".jsonl.gz", ".json.bz2", ".json.gz")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(_TABLE_SUFFIXES + (".json",), key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


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


def _props_json(props: dict) -> str:
    return json.dumps({str(k): _jsonable(v) for k, v in props.items()}, sort_keys=True)


def _read_table(path: Path):
    import pandas as pd

    name = path.name
    try:
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path)
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".jsonl", ".jsonl.gz")):
            return pd.read_json(path, lines=True)
        return pd.read_json(path)  # pandas "columns" orientation (Matbench), compression by suffix
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read as a table ({exc})") from None


def _table_source(df, name: str, path: Path) -> _Source:
    columns = list(df.columns)
    id_col = next((c for c in ID_COLUMNS if c in columns), None)
    ids = [f"{name}:{v}" for v in (df[id_col] if id_col else range(len(df)))]
    if "cif" in columns:
        keep = [c for c in columns if c not in ("cif", id_col) and not str(c).startswith("Unnamed:")]
        src = _Source(name, "structure")
        src.ids = ids
        src.payloads = [("cif", c if isinstance(c, str) else "") for c in df["cif"]]
        records = df[keep].to_dict("records") if keep else [{}] * len(df)
        src.properties = [_props_json(r) for r in records]
        return src
    if "composition" in columns and "spg_num" in columns:
        keep = [c for c in HEADER_KEEP if c in columns]
        src = _Source(name, "header")
        src.ids = ids
        src.payloads = [("header", (c, s)) for c, s in zip(df["composition"], df["spg_num"])]
        records = df[keep].to_dict("records") if keep else [{}] * len(df)
        src.properties = [_props_json(r) for r in records]
        return src
    raise ConfigError(
        f"{path}: a table source needs a 'cif' column (structures) or 'composition' and 'spg_num' "
        f"columns (Matbench header documents); it has {columns}"
    )


def _json_source(path: Path, name: str) -> _Source:
    from .inputs import read_text_file

    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None

    def is_structure(obj) -> bool:
        return isinstance(obj, dict) and "lattice" in obj and "sites" in obj

    src = _Source(name, "structure")
    if isinstance(data, dict) and ("cif" in data or ("composition" in data and "spg_num" in data)):
        import pandas as pd

        return _table_source(pd.DataFrame(data), name, path)
    if is_structure(data):
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
    elif isinstance(data, dict) and data and all(is_structure(v) for v in data.values()):
        items = [(f"{name}:{k}", v, {}) for k, v in data.items()]
    else:
        raise ConfigError(f"{path}: expected a pymatgen Structure JSON, a list of them or a table")
    for rid, obj, props in items:
        src.ids.append(rid)
        src.payloads.append(("structure", obj))
        src.properties.append(_props_json(props))
    return src


def _open_source(spec: Any, limit: int | None) -> _Source:
    if isinstance(spec, str) and spec in ("aflow-prototypes",):
        from .builtin import aflow_prototypes

        src = _Source(spec, "structure")
        for rid, struct, props in aflow_prototypes():
            src.ids.append(rid)
            src.payloads.append(("structure", struct))
            src.properties.append(_props_json(props))
    else:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".cif")
            src = _Source(path.name or str(path), "structure")
            for p in files:
                src.ids.append(f"{src.name}:{p.relative_to(path).with_suffix('').as_posix()}")
                src.payloads.append(("file", str(p)))
                src.properties.append("{}")
        elif path.is_file():
            name = f"{path.parent.name}/{_stem(path)}" if path.parent.name else _stem(path)
            if path.name.endswith(".json"):
                src = _json_source(path, name)
            elif path.name.endswith(_TABLE_SUFFIXES):
                src = _table_source(_read_table(path), name, path)
            elif path.suffix.lower() == ".cif":
                src = _Source(name, "structure", [name], [("file", str(path))], ["{}"])
            else:
                raise ConfigError(
                    f"{path}: unknown source type; give a folder of CIFs, a .csv/.parquet/.jsonl table, "
                    "pymatgen .json, a Matbench .json.bz2 or 'aflow-prototypes'"
                )
        else:
            raise DataNotFoundError(f"{spec}: no such file or folder, and not a built-in corpus ('aflow-prototypes')")
    if limit is not None:
        src.ids, src.payloads, src.properties = src.ids[:limit], src.payloads[:limit], src.properties[:limit]
    return src


def _open_sources(sources: Any, limit: int | None) -> tuple[list, list[_Source]]:
    """Open every source; Structure objects given directly form one source, ``structures``;
    sources with the same name get ``#2``, ``#3``, ... appended."""
    from pymatgen.core import Structure

    if isinstance(sources, (str, os.PathLike, Structure)) or not isinstance(sources, Iterable):
        sources = [sources]
    sources = list(sources)
    structs = [s for s in sources if isinstance(s, Structure)]
    opened = [_open_source(s, limit) for s in sources if not isinstance(s, Structure)]
    if structs:
        structs = structs[:limit] if limit is not None else structs
        n = len(structs)
        opened.append(_Source("structures", "structure", [f"structures:{k}" for k in range(n)],
                              [("structure", s) for s in structs], ["{}"] * n))
    taken: Counter = Counter()
    for src in opened:
        taken[src.name] += 1
        if taken[src.name] > 1:
            new = f"{src.name}#{taken[src.name]}"
            src.ids = [new + rid[len(src.name):] if rid.startswith(src.name) else rid for rid in src.ids]
            src.name = new
    return sources, opened


# --------------------------------------------------------------------------- conversion (worker side)

_SETTINGS: dict[str, Any] = {}


def _init_worker(settings: dict) -> None:
    _SETTINGS.clear()
    _SETTINGS.update(settings)
    warnings.simplefilter("ignore")


def _text_fields(text: str) -> tuple[str, int]:
    formula, number = "", 0
    for line in text.splitlines():
        if line.startswith("_symmetry_Int_Tables_number "):
            number = int(line.split()[1])
        elif line.startswith("_chemical_formula_structural "):
            formula = line.split()[1]
            break
    return formula, number


def _convert(task: tuple) -> tuple:
    """Convert one record: ``("ok", i, text, formula, sg)`` or ``("skip", i, reason, message)``."""
    from .inputs import decode_bytes, to_structure
    from .text import structure_to_text

    i, rid, payload = task
    what, obj = payload
    try:
        if what == "header":
            text = header_text(obj[0], obj[1], cell=_SETTINGS.get("header_cell", "primitive"))
        else:
            try:
                if what == "file":
                    obj = decode_bytes(Path(obj).read_bytes(), rid)
                if what == "cif" and not obj.strip():
                    raise CIFParseError(f"{rid}: empty CIF text")
                if isinstance(obj, dict) and not obj.get("sites"):
                    raise EmptyStructureError(f"{rid}: the cell holds no atoms")
                structure = to_structure(obj, name=rid)
            except CrystextError:
                raise
            except Exception as exc:  # pymatgen's CIF parser raises arbitrary errors on garbage
                raise CIFParseError(f"{rid}: unparsable ({type(exc).__name__}: {exc})") from None
            text = structure_to_text(
                structure,
                symprec=_SETTINGS.get("symprec", 0.1),
                properties=_SETTINGS.get("properties", False),
                disorder=_SETTINGS.get("disorder", "raise"),
            )
        formula, number = _text_fields(text)
        return ("ok", i, text, formula, number)
    except CrystextError as exc:
        return ("skip", i, type(exc).__name__, str(exc))
    except Exception as exc:  # never let one record stop a build
        return ("skip", i, type(exc).__name__, f"{rid}: {exc}")


def _pool(num_proc: int, settings: dict):
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(num_proc, initializer=_init_worker, initargs=(settings,))


def _run_parallel(
    func, tasks: Sequence, num_proc: int, settings: dict, desc: str, progress: bool, chunksize: int = 32, unit: str = "rec"
) -> list:
    from tqdm.auto import tqdm

    bar = dict(total=len(tasks), desc=desc, disable=not progress, unit=unit, mininterval=1.0)
    if num_proc <= 1 or len(tasks) < 2 * chunksize:
        _init_worker(settings)
        return [func(t) for t in tqdm(tasks, **bar)]
    with _pool(num_proc, settings) as pool:
        return list(tqdm(pool.imap(func, tasks, chunksize=chunksize), **bar))


# --------------------------------------------------------------------------- deduplication

def _match_group(texts: list[str]) -> list[int]:
    """Indices (into ``texts``) of structures that StructureMatcher (default tolerances) finds
    equal to an earlier one; the first of each group of equal structures is kept."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from .text import text_to_structure

    structures = []
    for k, t in enumerate(texts):
        try:
            s = text_to_structure(t)
        except Exception:  # a text that does not rebuild is kept, never matched
            continue
        s.properties["_index"] = k
        structures.append(s)
    # group_structures reduces each structure once, then matches within composition groups
    try:
        groups = StructureMatcher().group_structures(structures)
    except Exception:  # pymatgen failing on one group must not stop a build: keep the group
        return []
    dupes: list[int] = []
    for group in groups:
        members = sorted(s.properties["_index"] for s in group)
        dupes.extend(members[1:])
    return sorted(dupes)


def _dedupe(docs: list[dict], mode: str | None, num_proc: int, progress: bool) -> list[int]:
    """Indices of documents to drop as duplicates (the first occurrence is kept)."""
    if mode is None:
        return []
    drop: set[int] = set()
    seen_text: dict[str, int] = {}
    for i, d in enumerate(docs):  # identical text: always a duplicate
        if d["text"] in seen_text:
            drop.add(i)
        else:
            seen_text[d["text"]] = i
    if mode == "formula-spacegroup":
        # one document per (formula, space group); a full structure wins over a header document
        best: dict[tuple, int] = {}
        for i, d in enumerate(docs):
            if i in drop:
                continue
            key = (d["formula"], d["spacegroup"])
            j = best.get(key)
            if j is None:
                best[key] = i
            elif docs[j]["kind"] == "header" and d["kind"] == "structure":
                drop.add(j)
                best[key] = i
            else:
                drop.add(i)
        return sorted(drop)
    # "structure": StructureMatcher within each (formula, space group) group of full structures;
    # header documents, which hold no structure, only drop when their text is identical
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(docs):
        if i not in drop and d["kind"] == "structure":
            groups.setdefault((d["formula"], d["spacegroup"]), []).append(i)
    multi = [g for g in groups.values() if len(g) > 1]
    multi.sort(key=len, reverse=True)  # big groups first keeps the pool busy
    results = _run_parallel(
        _match_group, [[docs[i]["text"] for i in g] for g in multi], num_proc, {}, "dedupe", progress, chunksize=1, unit="group"
    )
    for g, dupes in zip(multi, results):
        drop.update(g[j] for j in dupes)
    return sorted(drop)


# --------------------------------------------------------------------------- splits

def _split_indices(docs: list[dict], split: Sequence[float], split_by: str, seed: int) -> dict[str, list[int]]:
    n = len(docs)
    fractions = np.asarray(split, dtype=float)
    rng = np.random.default_rng(seed)
    if split_by == "random":
        perm = rng.permutation(n)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        parts = [perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]]
        return {name: sorted(int(i) for i in part) for name, part in zip(SPLITS, parts)}
    # by composition: whole reduced formulas go to one split, in a seeded order, until each
    # split holds its share of documents
    counts = Counter(d["formula"] for d in docs)
    formulas = sorted(counts)
    order = [formulas[i] for i in rng.permutation(len(formulas))]
    bounds = np.cumsum(fractions) * n
    where: dict[str, int] = {}
    total = 0
    for f in order:
        k = int(np.searchsorted(bounds[:-1], total, side="right"))
        where[f] = k
        total += counts[f]
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for i, d in enumerate(docs):
        out[SPLITS[where[d["formula"]]]].append(i)
    return out


# --------------------------------------------------------------------------- the build

def _features():
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


def _resolve_tokenizer(tokenizer):
    if isinstance(tokenizer, (str, os.PathLike)):
        from .tokenization import load_tokenizer

        return load_tokenizer(str(tokenizer))
    if tokenizer is None or not callable(tokenizer):
        raise ConfigError("tokenizer must be a name, a path or a transformers tokenizer")
    return tokenizer


def _tokenize(texts: list[str], tok, progress: bool, batch: int = 2048) -> list[list[int]]:
    from tqdm.auto import tqdm

    ids: list[list[int]] = []
    for start in tqdm(range(0, len(texts), batch), desc="tokenize", disable=not progress or len(texts) < batch, unit="batch"):
        ids.extend(tok(texts[start : start + batch], add_special_tokens=True)["input_ids"])
    return ids


def _make_summary(opened: list[_Source], corpus, skipped: list[dict], dup_counts: Counter, config: dict, command) -> dict:
    skip_counts = Counter(s["source"] for s in skipped)
    kept_counts = Counter(src for name in SPLITS for src in corpus[name]["source"])
    return {
        "sources": {
            src.name: {
                "kind": src.kind,
                "records": len(src.ids),
                "skipped": skip_counts.get(src.name, 0),
                "duplicates": dup_counts.get(src.name, 0),
                "documents": kept_counts.get(src.name, 0),
            }
            for src in opened
        },
        "skip_reasons": dict(Counter(s["reason"] for s in skipped)),
        "splits": {
            name: {
                "documents": len(corpus[name]),
                "tokens": int(sum(corpus[name]["num_tokens"])),
                "kinds": dict(Counter(corpus[name]["kind"])),
            }
            for name in SPLITS
        },
        "config": config,
        "command": command,
    }


def _print_summary(summary: dict, file=None) -> None:
    file = file or sys.stderr
    rows = [("source", "kind", "records", "skipped", "duplicates", "documents")]
    for name, s in summary["sources"].items():
        rows.append((name, s["kind"], s["records"], s["skipped"], s["duplicates"], s["documents"]))
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    print("corpus summary", file=file)
    for r in rows:
        print("  " + "  ".join(str(v).rjust(w) if c else str(v).ljust(w) for c, (v, w) in enumerate(zip(r, widths))), file=file)
    if summary["skip_reasons"]:
        print("skipped records by reason:", file=file)
        for reason, n in sorted(summary["skip_reasons"].items(), key=lambda kv: -kv[1]):
            print(f"  {reason:24s} {n}", file=file)
    splits = ", ".join(f"{k} {v['documents']} docs / {v['tokens']} tokens" for k, v in summary["splits"].items())
    print(f"splits: {splits}", file=file)


def build_corpus(
    sources: Any,
    out: str | os.PathLike | None = None,
    tokenizer: Any = "crystext-cif",
    num_proc: int = 1,
    dedupe: str | None = "formula-spacegroup",
    split: Sequence[float] = (0.9, 0.05, 0.05),
    split_by: str = "random",
    seed: int = 0,
    symprec: float = 0.1,
    properties: bool = False,
    disorder: str = "raise",
    limit: int | None = None,
    progress: bool = True,
    command: str | None = None,
):
    """Build a tokenized corpus of crystal text from structure sources and Matbench header tables.

    Args:
        sources: one source or a list of them: a folder of CIFs, a ``.csv``/``.parquet``/``.jsonl``
            table with a ``cif`` column, pymatgen ``.json``, ``"aflow-prototypes"``, a Matbench
            ``.json.bz2`` (header documents), or pymatgen ``Structure`` objects.
        out: folder to write (``save_to_disk`` splits, ``summary.json``, ``skipped.csv``,
            ``tokenizer/``); nothing is written when ``None``.
        tokenizer: a name (``crystext-cif``, ``crystext-compact``), folder, Hub id or tokenizer.
        num_proc: worker processes for conversion and structure deduplication.
        dedupe: ``"formula-spacegroup"`` keeps one document per reduced formula and space group
            (a full structure wins over a header document); ``"structure"`` drops structures that
            pymatgen's ``StructureMatcher`` matches to an earlier one of the same formula and space
            group (and header documents with identical text); ``None`` keeps everything.
        split: fractions of train, validation and test.
        split_by: ``"random"`` (documents) or ``"composition"`` (whole reduced formulas, so no
            formula is in two splits; the fractions then hold by documents only approximately).
        seed: the seed of the split; the same inputs and seed give the same corpus.
        symprec, properties, disorder: passed to :func:`crystext.text.structure_to_text`.
        limit: at most this many records from each source (quick runs).
        progress: show progress bars and print the summary table.
        command: the command line that made the corpus, recorded in ``summary.json``.

    Returns:
        ``datasets.DatasetDict`` with splits ``train``, ``validation``, ``test`` and columns
        ``id, source, kind, text, input_ids, num_tokens, formula, spacegroup, properties``; its
        ``summary`` attribute holds what ``summary.json`` holds.

    Raises:
        DataNotFoundError (a source is missing), ConfigError (bad argument or unreadable source).
        Bad *records* never raise: they are skipped and counted.
    """
    from datasets import Dataset, DatasetDict

    if dedupe not in DEDUPE_MODES:
        raise ConfigError(f"dedupe must be one of {DEDUPE_MODES}, not {dedupe!r}")
    if split_by not in SPLIT_MODES:
        raise ConfigError(f"split_by must be one of {SPLIT_MODES}, not {split_by!r}")
    if disorder not in ("raise", "dominant", "order"):
        raise ConfigError(f"disorder must be 'raise', 'dominant' or 'order', not {disorder!r}")
    split = tuple(float(x) for x in split)
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ConfigError(f"split must be three non-negative fractions adding up to 1, not {split}")
    num_proc = max(1, int(num_proc or 1))
    tok = _resolve_tokenizer(tokenizer)  # fail early on a bad tokenizer name

    sources, opened = _open_sources(sources, limit)

    meta: list[tuple[str, str, str, str]] = []  # (id, source, kind, properties)
    tasks: list[tuple] = []
    for src in opened:
        for rid, payload, props in zip(src.ids, src.payloads, src.properties):
            tasks.append((len(tasks), rid, payload))
            meta.append((rid, src.name, src.kind, props))

    settings = {"symprec": symprec, "properties": properties, "disorder": disorder, "header_cell": "primitive"}
    results = _run_parallel(_convert, tasks, num_proc, settings, "convert", progress)

    docs: list[dict] = []
    skipped: list[dict] = []
    for res in results:
        rid, source, kind, props = meta[res[1]]
        if res[0] == "ok":
            _, _, text, formula, number = res
            docs.append(dict(id=rid, source=source, kind=kind, text=text, formula=formula, spacegroup=number, properties=props))
        else:
            skipped.append(dict(id=rid, source=source, reason=res[2], message=res[3]))

    drop = set(_dedupe(docs, dedupe, num_proc, progress))
    dup_counts = Counter(docs[i]["source"] for i in drop)
    docs = [d for i, d in enumerate(docs) if i not in drop]

    parts = _split_indices(docs, split, split_by, seed)
    texts = [d["text"] for d in docs]
    all_ids = _tokenize(texts, tok, progress)
    unk = tok.unk_token_id
    splits: dict[str, Any] = {}
    features = _features()
    for name in SPLITS:
        rows = {k: [] for k in features}
        for i in parts[name]:
            ids = all_ids[i]
            d = docs[i]
            if unk is not None and unk in ids:
                n_unk = sum(t == unk for t in ids)
                skipped.append(dict(id=d["id"], source=d["source"], reason=TokenizerError.__name__,
                                    message=f"{d['id']}: {n_unk} unknown tokens"))
                continue
            for k in ("id", "source", "kind", "text", "formula", "spacegroup", "properties"):
                rows[k].append(d[k])
            rows["input_ids"].append(ids)
            rows["num_tokens"].append(len(ids))
        splits[name] = Dataset.from_dict(rows, features=features)
    corpus = DatasetDict(splits)

    config = {
        "sources": [s if isinstance(s, str) else str(s) if isinstance(s, os.PathLike) else type(s).__name__ for s in sources],
        "tokenizer": str(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else getattr(tok, "name_or_path", ""),
        "num_proc": num_proc, "dedupe": dedupe, "split": list(split), "split_by": split_by, "seed": seed,
        "symprec": symprec, "properties": properties, "disorder": disorder, "limit": limit, "header_cell": "primitive",
    }
    summary = _make_summary(opened, corpus, skipped, dup_counts, config, command)
    if progress:
        _print_summary(summary)
    if out is not None:
        _save(corpus, summary, skipped, tok, Path(out), progress)
    corpus.summary = summary
    return corpus


def _save(corpus, summary: dict, skipped: list[dict], tok, out: Path, progress: bool = True) -> None:
    import csv
    import shutil

    if out.exists():
        for sub in (*SPLITS, "tokenizer"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    if not progress:
        ds_logging.disable_progress_bar()
    try:
        # one shard per split: datasets writes no shard for an empty split, then cannot load it
        corpus.save_to_disk(str(out), num_shards={name: 1 for name in corpus})
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()
    tok.save_pretrained(str(out / "tokenizer"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "skipped.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "source", "reason", "message"])
        writer.writeheader()
        writer.writerows(skipped)


def load_corpus(path: str | os.PathLike):
    """Load a corpus folder written by :func:`build_corpus` (a ``datasets.DatasetDict``).

    The returned object's ``summary`` attribute holds ``summary.json``. Raises
    :class:`DataNotFoundError` if the folder is not a corpus.
    """
    from datasets import load_from_disk

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        raise DataNotFoundError(f"{path}: not a corpus folder (no dataset_dict.json); build one with build_corpus")
    corpus = load_from_disk(str(path))
    summary_file = path / "summary.json"
    corpus.summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return corpus


# --------------------------------------------------------------------------- statistics

def token_counts(corpus: Any, tokenizer: Any = None, split: str = "train"):
    """Per-element token counts of one split of a corpus.

    Args:
        corpus: a corpus folder, a ``DatasetDict`` or a ``Dataset``.
        tokenizer: the tokenizer the corpus was built with; default: the corpus folder's
            ``tokenizer/`` when ``corpus`` is a path, else ``crystext-cif``.
        split: which split of a ``DatasetDict`` to count.

    Returns:
        ``pandas.DataFrame`` indexed by element symbol (ordered by Z) with columns ``Z``,
        ``tokens`` (occurrences of the element's token), ``structure_tokens`` and
        ``header_tokens`` (the same in full and header documents) and ``documents`` (documents
        holding the element's token at least once). A token counts for an element when it is the
        element's symbol, alone or fused with spacing (``"  Cd"`` in ``crystext-compact``);
        space-group tokens (``" Pm"``) never count.
    """
    import pandas as pd
    import pyarrow.compute as pc
    from pymatgen.core import Element

    from .tokenization import element_token_ids, spacegroup_token_ids

    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if tokenizer is None and (path / "tokenizer").is_dir():
            tokenizer = str(path / "tokenizer")
        corpus = load_corpus(path)
    tok = _resolve_tokenizer(tokenizer if tokenizer is not None else "crystext-cif")
    ds = corpus[split] if hasattr(corpus, "keys") else corpus
    mapping = element_token_ids(tok)
    symbols = sorted(mapping, key=lambda s: Element(s).Z)
    index = {s: k for k, s in enumerate(symbols)}
    vocab = tok.get_vocab()
    lut = np.full(max(max(vocab.values()), len(tok)) + 1, -1, dtype=np.int64)
    # tokens that stand for an element: its own token, and tokens fused with spacing ("  Cd" in
    # crystext-compact), but not space-group tokens that look like one (" Pm", " Cm")
    try:
        sg_ids = set(spacegroup_token_ids(tok).values())
    except TokenizerError:
        sg_ids = set()
    for token, tid in vocab.items():
        sym = token.strip()
        if sym in index and tid not in sg_ids:
            lut[tid] = index[sym]
    for sym, tid in mapping.items():
        lut[tid] = index[sym]
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    ids_col = table.column("input_ids")
    kinds = np.asarray(table.column("kind").to_pylist())
    tokens = np.zeros((len(symbols), 2), dtype=np.int64)  # [structure, header]
    docs = np.zeros(len(symbols), dtype=np.int64)
    offset = 0
    for chunk in ids_col.chunks:
        flat = pc.list_flatten(chunk).to_numpy(zero_copy_only=False).astype(np.int64)
        parents = pc.list_parent_indices(chunk).to_numpy(zero_copy_only=False).astype(np.int64) + offset
        which = lut[flat]
        hit = which >= 0
        which, parents = which[hit], parents[hit]
        is_header = (kinds[parents] == "header").astype(np.int64)
        np.add.at(tokens, (which, is_header), 1)
        pairs = np.unique(parents * len(symbols) + which)
        docs += np.bincount(pairs % len(symbols), minlength=len(symbols))
        offset += len(chunk)
    frame = pd.DataFrame(
        {
            "Z": [Element(s).Z for s in symbols],
            "tokens": tokens.sum(axis=1),
            "structure_tokens": tokens[:, 0],
            "header_tokens": tokens[:, 1],
            "documents": docs,
        },
        index=pd.Index(symbols, name="element"),
    )
    return frame


def formula_elements(formulas: Iterable[str]) -> set[str]:
    """The set of element symbols in some formulas (unparsable ones are ignored)."""
    from pymatgen.core import Composition

    out: set[str] = set()
    for f in formulas:
        try:
            out.update(el.symbol for el in Composition(str(f)).elements if hasattr(el, "Z"))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def reference_elements(paths: Iterable[str | os.PathLike]) -> set[str]:
    """Elements used by benchmark tables: CSVs with a ``formula`` column, Matbench tables
    (``composition``), or tables with a ``cif`` column (elements of the CIF's formula)."""
    import re

    out: set[str] = set()
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.name.endswith(_TABLE_SUFFIXES)) if p.is_dir() else [p]
        for f in files:
            df = _read_table(f)
            for col in ("formula", "composition"):
                if col in df.columns:
                    out |= formula_elements(df[col].dropna().unique())
                    break
            else:
                if "cif" in df.columns:
                    sums = (re.search(r"_chemical_formula_sum\s+'?([^'\n]+)", c) for c in df["cif"].dropna())
                    out |= formula_elements({m.group(1) for m in sums if m})
    return out


def coverage_markdown(counts, reference: set[str] | None = None, min_count: int = 1000, summary: dict | None = None) -> str:
    """A Markdown report of per-element token counts (from :func:`token_counts`).

    With ``reference`` (elements the benchmarks use) it lists those seen fewer than ``min_count``
    times; ``summary`` (a corpus ``summary.json``) adds the corpus make-up.
    """
    lines: list[str] = []
    seen = counts[counts.tokens > 0]
    if summary:
        lines += ["## Corpus", "", "| source | kind | records | skipped | duplicates | documents |", "|---|---|---:|---:|---:|---:|"]
        for name, s in summary.get("sources", {}).items():
            lines.append(f"| {name} | {s['kind']} | {s['records']:,} | {s['skipped']:,} | {s['duplicates']:,} | {s['documents']:,} |")
        lines.append("")
        for name, s in summary.get("splits", {}).items():
            kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(s.get("kinds", {}).items()))
            lines.append(f"- {name}: {s['documents']:,} documents ({kinds}), {s['tokens']:,} tokens")
        if summary.get("skip_reasons"):
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(summary["skip_reasons"].items(), key=lambda kv: -kv[1]))
            lines.append(f"- skipped records by reason: {reasons}")
        lines.append("")
    lines += ["## Summary", ""]
    lines.append(f"- elements seen in the split: {len(seen)} (of {len(counts)} element tokens)")
    if len(seen):
        lines.append(
            f"- tokens per seen element: median {int(seen.tokens.median()):,}, min {int(seen.tokens.min()):,} "
            f"({seen.tokens.idxmin()}), max {int(seen.tokens.max()):,} ({seen.tokens.idxmax()})"
        )
        only_header = seen[seen.structure_tokens == 0].index.tolist()
        lines.append(f"- elements seen only in header documents: {len(only_header)} ({' '.join(only_header) or 'none'})")
    if reference is not None:
        ref = sorted(reference, key=lambda s: counts.loc[s, "Z"] if s in counts.index else 999)
        low = [s for s in ref if s not in counts.index or counts.loc[s, "tokens"] < min_count]
        low_text = ", ".join(f"{s} {int(counts.loc[s, 'tokens']) if s in counts.index else 0:,}" for s in low)
        lines.append(
            f"- elements the benchmarks use: {len(ref)}; seen fewer than {min_count:,} times: {len(low)}"
            + (f" ({low_text})" if low else "")
        )
    lines += ["", "## Per-element token counts (training split)", "",
              "| element | Z | tokens | in structures | in headers | documents |" + (" benchmarks use |" if reference is not None else ""),
              "|---|---:|---:|---:|---:|---:|" + ("---|" if reference is not None else "")]
    for sym, row in counts.iterrows():
        if row.tokens == 0 and (reference is None or sym not in reference):
            continue
        used = (" yes |" if sym in reference else " |") if reference is not None else ""
        lines.append(f"| {sym} | {row.Z} | {row.tokens:,} | {row.structure_tokens:,} | {row.header_tokens:,} | {row.documents:,} |{used}")
    return "\n".join(lines) + "\n"
