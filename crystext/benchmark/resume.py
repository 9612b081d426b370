"""Resuming a stopped benchmark: each finished task's fits are kept until the whole run is written.

A full ``crystext benchmark`` takes hours on a 2-core machine and writes its outputs only at the
end. So each task's contribution (fit rows, per-row test errors, coverage, timings, test
identities) is written, atomically, to ``OUT/.partial/<key>/<task>.pkl`` as soon as the task is
done; the same command run again reads the finished tasks back instead of refitting them and goes
on with the rest. ``<key>`` is a digest of everything the figures depend on (the data folder, the
resolved settings, the element tables' values, each run's weights file), so a changed setting starts
afresh instead of mixing runs. The folder is removed once the outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

PARTIAL = ".partial"
#: settings that change how a run is shown or scheduled, never its figures
_NOT_IN_KEY = {"command", "progress", "plots", "report", "n_jobs", "tables", "runs", "cache_dir"}


def _file_stamp(path: Any) -> Any:
    """A file by path, size and modification time; None when there is no such file."""
    if path is None or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, int(stat.st_mtime)]


def resume_key(settings: Any, data: Path, sets: Mapping[str, pd.DataFrame], runs: Sequence[Any],
               tasks: Sequence[Any] = ()) -> str | None:
    """Digest of what a benchmark's figures depend on (settings, element tables, run weights, the task
    files, probe tables included); None when a run is held in memory (no resume)."""
    stamps = {r.name: r.cache_key() for r in runs}  # the weights' stamp the vector cache keys on too
    if any(v is None for v in stamps.values()):
        return None
    resolved = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name not in _NOT_IN_KEY}
    tables = {name: int(pd.util.hash_pandas_object(table, index=True).sum()) for name, table in sets.items()}
    files = {t.name: [_file_stamp(getattr(t, split, None)) for split in ("train", "val", "test")] for t in tasks}
    blob = json.dumps({"data": str(Path(data).resolve()), "settings": resolved, "tables": tables, "runs": stamps,
                       "tasks": files}, default=repr, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def partial_folder(out: str | Path | None, key: str | None) -> Path | None:
    """Where the finished tasks of this run are kept (None: not resumable, or no output folder)."""
    return None if out is None or key is None else Path(out) / PARTIAL / key


def _file(folder: Path, task: str) -> Path:
    return folder / (re.sub(r"[^A-Za-z0-9_.-]+", "__", task) + ".pkl")


def load_task(folder: Path | None, task: str) -> Any | None:
    """A finished task's contribution, or None (not there, or unreadable: the task is run again)."""
    if folder is None or not _file(folder, task).is_file():
        return None
    try:
        with open(_file(folder, task), "rb") as fh:
            return pickle.load(fh)  # noqa: S301 - written by this module into the run's own output folder
    except Exception:  # noqa: BLE001 - a damaged file costs a refit, never the run
        return None


def save_task(folder: Path | None, task: str, part: Any) -> None:
    """Keep a finished task's contribution (atomically: a killed write leaves no half file)."""
    if folder is None:
        return
    from ..atomic import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(_file(folder, task), pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))


def clear(out: str | Path | None) -> None:
    """Remove every kept task of ``out`` (after its outputs are written)."""
    if out is not None:
        shutil.rmtree(Path(out) / PARTIAL, ignore_errors=True)


__all__ = ["PARTIAL", "clear", "load_task", "partial_folder", "resume_key", "save_task"]
