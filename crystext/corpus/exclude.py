"""Benchmark structures out of a pretraining corpus: documents whose canonical text is that of a
held-out structure of a benchmark task are removed.

The shared Materials Project tables leave out the ids of the MP tasks' validation and test rows,
but the same structure can sit in MP under another id (15 mp_e_form test and 14 validation
structures do, by canonical text: ``benchmarks/training/corpus_leakage.md``). A structure's
identity here is the one the benchmark's leakage table uses, the SHA-1 of its canonical text at the
corpus' ``symprec`` (:func:`crystext.corpus.identity.text_hash`). Splits and order are kept; the
summary counts what was removed per split and task.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..atomic import atomic_path, atomic_write_text
from ..errors import ConfigError, DataNotFoundError
from .build import load_corpus, save_splits
from .identity import text_hash


def held_out_hashes(data: str | os.PathLike, tasks: Iterable[str] | None = None, symprec: float = 0.1,
                    text_cache: str | os.PathLike | None = None, num_proc: int = 1) -> dict[str, str]:
    """``{text hash: task}`` of every held-out structure (validation and test tables) of the
    structure tasks under ``data`` (default: the shared structure tasks).

    Raises:
        DataNotFoundError: a named task folder is missing or holds no ``cif`` column.
    """
    from ..encoding import TextCache
    from ..tasks import SHARED_STRUCTURE_TASKS, held_out_tables

    cache = TextCache(text_cache, symprec)
    out: dict[str, str] = {}
    for task in (tasks or SHARED_STRUCTURE_TASKS):
        folder = Path(data) / task
        tables = held_out_tables(folder) if folder.is_dir() else {}
        if not tables or any("cif" not in t.columns for t in tables.values()):
            raise DataNotFoundError(f"{folder}: no validation or test table with a cif column")
        cifs = [c for t in tables.values() for c in t["cif"].astype(str)]
        for text, _ in cache.texts(cifs, num_proc=num_proc, progress=False, desc=task):
            if text is not None:
                out.setdefault(text_hash(text), task)
    return out


def exclude_structures(src: str | os.PathLike, out: str | os.PathLike, hashes: dict[str, str]):
    """Write the corpus ``src`` without the documents whose text hash is in ``hashes`` into ``out``
    (same splits and order, tokenizer and summary carried over, ``summary["excluded_held_out"]``
    counting what was removed by split and task); return it loaded.

    Raises:
        ConfigError: ``out`` is ``src``, or ``src`` has no ``text`` column.
    """
    from datasets import DatasetDict

    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ConfigError(f"exclude {src}: --out must be another folder than the source corpus")
    corpus = load_corpus(src)
    splits, removed = {}, {}
    for name in corpus:
        ds = corpus[name]
        if "text" not in ds.column_names:
            raise ConfigError(f"exclude {src}: split {name!r} has no text column (a corpus from before texts were kept)")
        tasks = [hashes.get(text_hash(t)) for t in ds["text"]]
        splits[name] = ds.select([i for i, t in enumerate(tasks) if t is None])
        removed[name] = dict(Counter(t for t in tasks if t is not None))
    dd = DatasetDict(splits)
    save_splits(dd, out)
    if (src / "tokenizer").is_dir():
        with atomic_path(out / "tokenizer", folder=True) as tok_dir:
            _copy_tree(src / "tokenizer", tok_dir)
    summary = dict(corpus.summary)
    summary["splits"] = {n: {**summary.get("splits", {}).get(n, {}), "documents": len(dd[n]),
                             "tokens": int(sum(dd[n]["num_tokens"]))} for n in dd}
    summary["excluded_held_out"] = {"from": str(src.resolve()), "held_out_structures": len(hashes),
                                    "removed": removed}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return load_corpus(out)


def _copy_tree(src: Path, dst: Path) -> None:
    import shutil

    for path in src.iterdir():
        if path.is_file():
            shutil.copy2(path, dst / path.name)


__all__ = ["exclude_structures", "held_out_hashes"]
