"""Leakage: how many test rows of a task a run saw during pretraining.

Per run and task: the test compositions whose reduced formula occurs in the run's pretraining
corpus, the test structures whose canonical crystext text (SHA-1 of
:func:`crystext.text.structure_to_text` at the corpus' ``symprec``) occurs in it, and the test
structures whose (reduced formula, space-group number) pair matches a header-only document
(Matbench header sources hold no positions, so only that weaker identity exists).

Where the identities come from, in order:

1. ``<run>/corpus_identity.json.gz`` (:data:`IDENTITY_FILE`; older runs: ``corpus_identity.json``), written by ``crystext pretrain`` from
   the corpus documents themselves (:func:`crystext.corpus.identity.identity_of_corpus`):
   ``{"symprec": 0.1, "formulas": [...reduced formulas...], "structure_text_sha1": [...16-hex
   SHA-1 of each structure document's canonical text...], "formula_spacegroup": [["Fe2O3", 167], ...],
   "sources": [...]}``; checked directly;
2. else rebuilt from the sources named in ``<run>/corpus_summary.json`` (``config.sources``)
   that can be opened here (shared data, the built-in ``aflow-prototypes``), cached on disk per
   source fingerprint. A source that cannot be found is reported, and a run none of whose sources
   can be found reads "corpus not available".

A run trained from another (``crystext pretrain --init``) saw that run's corpus too: the
identities of the init run (``init`` in ``training_config.json``, found as a sibling folder) are
added, and the status says when it cannot be found (the counts are then a lower bound).

Counts are against every document of the sources (train, validation and test splits of the
corpus alike): an upper bound on what pretraining saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..corpus.identity import (IDENTITY_FILE, identity_path, read_identity, reduced_formula,  # noqa: F401 - re-exported
                               text_hash, write_identity)

SUMMARY_FILE = "corpus_summary.json"
LEAKAGE_COLUMNS = ["run", "task", "test_rows", "test_compositions_in_corpus", "test_structures_in_corpus",
                   "test_formula_spacegroup_in_corpus", "corpus"]


def _spacegroup_of_text(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("_symmetry_Int_Tables_number"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


@dataclass
class CorpusIdentity:
    """The identities of a pretraining corpus' documents."""

    formulas: set = field(default_factory=set)
    structures: set = field(default_factory=set)  # text hashes
    formula_spacegroup: set = field(default_factory=set)  # (reduced formula, spg number)
    status: str = ""
    includes_init: bool = False  # the shipped identity already holds the init run's corpus


def _resolve(spec: str, run_dir: Path, data_root: Path | None) -> str | None:
    from ..corpus.sources import BUILTIN_SOURCES

    if spec in BUILTIN_SOURCES:
        return spec
    candidates = [Path(spec), run_dir.parent.parent / spec]
    marker = "shared/data/"
    if data_root is not None and marker in spec.replace(os.sep, "/"):
        candidates.append(Path(data_root) / spec.replace(os.sep, "/").split(marker, 1)[1])
    return next((str(c) for c in candidates if c.exists()), None)


def _source_identity(spec: str, symprec: float, cache_dir: Path | None, n_jobs: int = 1) -> dict:
    """``{"formulas", "structures", "formula_spacegroup"}`` lists of one corpus source (cached)."""
    from ..corpus.sources import open_source

    source = open_source(spec)
    path = None
    if cache_dir is not None:
        key = hashlib.sha1(json.dumps([source.fingerprint, symprec]).encode()).hexdigest()[:16]
        path = Path(cache_dir) / "corpus-identity" / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
    from ..inputs import to_structure
    from ..text import structure_to_text

    formulas, structures, pairs = set(), set(), set()

    def add_text(text: str) -> None:
        from pymatgen.core import Composition

        m = re.search(r"^_chemical_formula_sum\s+'?([^'\n]+)'?", text, re.MULTILINE)
        f = Composition(m.group(1)).reduced_formula if m else None
        structures.add(text_hash(text))
        spg = _spacegroup_of_text(text)
        if f:
            formulas.add(f)
            if spg is not None:
                pairs.add((f, spg))

    cifs: list[str] = []
    for rec in source:
        kind, obj = rec.payload
        if kind == "cif":  # converted below through the benchmark's per-structure text cache
            cifs.append(obj)
            continue
        try:
            if kind == "header":
                comp, spg = obj
                f = reduced_formula(comp)
                if f:
                    formulas.add(f)
                    pairs.add((f, int(spg)))
                continue
            if kind == "file":
                obj = Path(obj)
            st = to_structure(obj)
            f = st.composition.reduced_formula
            formulas.add(f)
            text = structure_to_text(st, symprec=symprec)
            structures.add(text_hash(text))
            spg = _spacegroup_of_text(text)
            if spg is not None:
                pairs.add((f, spg))
        except Exception:  # noqa: BLE001 - a record the corpus build skipped too
            continue
    if cifs:
        from .representations import structure_texts

        texts, _ = structure_texts(cifs, cache_dir, symprec=symprec, n_jobs=n_jobs)
        for text in texts:
            if text:
                try:
                    add_text(text)
                except Exception:  # noqa: BLE001 - an odd formula matches nothing
                    continue
    out = {"formulas": sorted(formulas), "structures": sorted(structures),
           "formula_spacegroup": sorted([list(p) for p in pairs])}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
    return out


def corpus_identity(run_dir: str | os.PathLike, cache_dir: Path | None = None,
                    data_root: Path | None = None, n_jobs: int = 1) -> CorpusIdentity:
    """The identities of the run's pretraining corpus, of its init run's, and of every earlier run
    of its training history (``lineage`` in ``training_config.json``) found beside it: a run
    trained part by part under one name, whose shipped identity may lack the corpus of the run it
    first started from, still counts that corpus (see the module docstring)."""
    run_dir = Path(run_dir)
    ident = _with_init(run_dir, cache_dir, data_root, n_jobs)
    try:
        lineage = json.loads((run_dir / "training_config.json").read_text()).get("lineage") or []
    except (OSError, ValueError):
        lineage = []
    for name in dict.fromkeys(str(r.get("run")) for r in lineage if isinstance(r, dict) and r.get("run")):
        folder = run_dir.parent / Path(name).name
        if name == run_dir.name or not folder.is_dir():
            continue
        more = _own_identity(folder, cache_dir, data_root, n_jobs)
        if more.status.startswith("corpus not available"):
            ident.status += f"; earlier run {name}: {more.status} (a lower bound)"
            continue
        new = len(more.structures - ident.structures) + len(more.formulas - ident.formulas)
        ident.formulas |= more.formulas
        ident.structures |= more.structures
        ident.formula_spacegroup |= more.formula_spacegroup
        if new:
            ident.status += f"; plus earlier run {name} ({more.status})"
    return ident


def _with_init(run_dir: Path, cache_dir: Path | None, data_root: Path | None, n_jobs: int,
               _seen: tuple = ()) -> CorpusIdentity:
    """The identities of the run's own corpus and of its init run's, followed up the init chain."""
    ident = _own_identity(run_dir, cache_dir, data_root, n_jobs)
    try:
        init = json.loads((run_dir / "training_config.json").read_text()).get("init")
    except (OSError, ValueError):
        init = None
    if not init or init in _seen:
        return ident
    if ident.includes_init:
        ident.status += f" (includes init run {init}'s corpus)"
        return ident
    parent = run_dir.parent / Path(str(init)).name
    if not parent.is_dir():
        ident.status += f"; init run {init} not found (its corpus is not counted: a lower bound)"
        return ident
    more = _with_init(parent, cache_dir, data_root, n_jobs, _seen + (init,))
    if more.status.startswith("corpus not available"):
        ident.status += f"; init run {init}: {more.status} (a lower bound)"
        return ident
    if ident.status.startswith("corpus not available"):
        ident.status = f"init run {init} only ({more.status})"
    else:
        ident.status += f"; plus init run {init} ({more.status})"
    ident.formulas |= more.formulas
    ident.structures |= more.structures
    ident.formula_spacegroup |= more.formula_spacegroup
    return ident


def _own_identity(run_dir: Path, cache_dir: Path | None, data_root: Path | None, n_jobs: int) -> CorpusIdentity:
    """The identities of the run's own pretraining corpus."""
    d = read_identity(run_dir)
    if d is not None:
        return CorpusIdentity(set(d.get("formulas", [])), set(d.get("structure_text_sha1", [])),
                              {(f, int(s)) for f, s in d.get("formula_spacegroup", [])},
                              f"{identity_path(run_dir).name} of the run",
                              includes_init=bool(d.get("includes_init")))
    summary = run_dir / SUMMARY_FILE
    if not summary.is_file():
        return CorpusIdentity(status=f"corpus not available (no {SUMMARY_FILE} or {IDENTITY_FILE})")
    config = json.loads(summary.read_text()).get("config", {})
    symprec = float(config.get("symprec", 0.1))
    ident = CorpusIdentity()
    found, missing = [], []
    for spec in config.get("sources", []):
        where = _resolve(str(spec), run_dir, data_root)
        if where is None:
            missing.append(str(spec))
            continue
        try:
            part = _source_identity(where, symprec, cache_dir, n_jobs)
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            missing.append(f"{spec} ({type(exc).__name__})")
            continue
        found.append(Path(str(spec)).name)
        ident.formulas |= set(part["formulas"])
        ident.structures |= set(part["structures"])
        ident.formula_spacegroup |= {(f, int(s)) for f, s in part["formula_spacegroup"]}
    if not found:
        ident.status = "corpus not available" + (f" (sources not found: {', '.join(missing)})" if missing else "")
    else:
        ident.status = "rebuilt from sources: " + ", ".join(found) + (
            f"; not found: {', '.join(missing)}" if missing else "")
    return ident


def task_identities(formulas: Sequence[Any], texts: Sequence[str | None] | None) -> dict:
    """Identities of a task's test rows: reduced formulas, and for structure tasks text hashes and
    (formula, space group) pairs (``None`` texts match nothing)."""
    reduced = [reduced_formula(f) for f in formulas]
    out = {"formulas": reduced, "structures": None, "pairs": None}
    if texts is not None:
        out["structures"] = [text_hash(t) if t else None for t in texts]
        out["pairs"] = [(f, _spacegroup_of_text(t)) if t and f else None for f, t in zip(reduced, texts)]
    return out


def leakage_table(runs: Mapping[str, Any], tasks: Mapping[str, dict], cache_dir: Path | None = None,
                  data_root: Path | None = None, n_jobs: int = 1) -> pd.DataFrame:
    """Rows of :data:`LEAKAGE_COLUMNS` for every run (name -> run folder) and task (name ->
    :func:`task_identities`). Runs given in memory (no folder) read "corpus not available"."""
    rows = []
    for name, source in runs.items():
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            ident = corpus_identity(source, cache_dir, data_root, n_jobs)
        else:
            ident = CorpusIdentity(status="corpus not available (run given in memory)")
        usable = not ident.status.startswith("corpus not available")
        for task, ids in tasks.items():
            n = len(ids["formulas"])
            row = {"run": name, "task": task, "test_rows": n, "corpus": ident.status,
                   "test_compositions_in_corpus": "", "test_structures_in_corpus": "",
                   "test_formula_spacegroup_in_corpus": ""}
            if usable:
                row["test_compositions_in_corpus"] = sum(f in ident.formulas for f in ids["formulas"] if f)
                if ids["structures"] is not None:
                    row["test_structures_in_corpus"] = sum(h in ident.structures for h in ids["structures"] if h)
                    row["test_formula_spacegroup_in_corpus"] = sum(p in ident.formula_spacegroup
                                                                   for p in ids["pairs"] if p)
            rows.append(row)
    return pd.DataFrame(rows, columns=LEAKAGE_COLUMNS)


__all__ = ["IDENTITY_FILE", "LEAKAGE_COLUMNS", "CorpusIdentity", "corpus_identity",
           "leakage_table", "reduced_formula", "task_identities", "text_hash", "write_identity"]
