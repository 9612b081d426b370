"""Tasks: a property to predict from a data folder's split files, read the one way every consumer
reads them (the benchmark, fine-tuning, the scripts under ``benchmarks/``).

A task is a folder of CSV tables (each folder is one task, named after the folder):

* ``<task>/{train,val,test}.csv`` with columns ``formula,target`` (CrabNet's benchmark splits);
* ``<task>/{train,test}{k}.csv`` (+ optional ``val{k}.csv``), Matbench-style folds: one task per
  fold, named ``<task>/fold<k>``;
* structure tasks: any of these layouts whose CSVs hold a ``cif`` column. The target column is
  ``target`` (``mp_e_form``: ``train/val/test.csv``; ``mp_log_kvrh``, ``mp_log_gvrh``,
  ``mp_dielectric_n``: 5 folds ``train{k}.csv/test{k}.csv``), except the sets listed in
  :data:`STRUCTURE_TARGETS` (``perov_5``: ``heat_all``, ``dir_gap``; ``carbon_24``:
  ``energy_per_atom``): one task per target, named ``<folder>/<target>``. As in the shared
  data, the ``val`` file is the training split when no ``train`` file exists (the CDVAE sets).

Two ways in: :func:`discover_tasks` finds every task under a data root (the benchmark), looking in
the folder itself, its sub-folders and theirs (``DATA/composition/<task>``, ``DATA/perov_5``);
:func:`folder_task` names one structure task by its folder, target, fold and training file
(fine-tuning, the scripts), and :func:`load_task` reads it as tables of ``cif``, ``y``, ``row``.

A folder with a task layout but a file lacking the target column, or fold files that do not pair
up, raises :class:`~crystext.errors.DataNotFoundError` naming the file; rows with a missing or
non-numeric target are skipped and counted (:attr:`Split.skipped`), naming file and row.

A task without a validation file (the folds of the structure tasks, the CDVAE sets) gets one carved
from its training split (:data:`CARVED_VAL_FRACTION`, seeded by :data:`DATA_SEED`): an inner
validation split, so tuning, early stopping and the choice of setting never see the test split.
Row caps subsample each split with the same fixed seed, so every representation, model seed and
fine-tuning mode sees the same rows.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, DataNotFoundError

#: target columns of the known structure sets (the first is the default target)
STRUCTURE_TARGETS = {"perov_5": ("heat_all", "dir_gap"), "carbon_24": ("energy_per_atom",)}
#: default target column of a folder whose targets are not called ``target``
DEFAULT_TARGETS = {folder: targets[0] for folder, targets in STRUCTURE_TARGETS.items()}
#: the structure tasks of the shared data folder: folder -> number of folds (None: one split)
SHARED_STRUCTURE_TASKS = {"perov_5": None, "carbon_24": None, "mp_e_form": None, "mp_dielectric_n": 5,
                          "mp_log_kvrh": 5, "mp_log_gvrh": 5}
#: units of the targets of the shared structure tasks, by (folder, column)
UNITS = {
    ("perov_5", "heat_all"): "eV/cell", ("perov_5", "heat_ref"): "eV/cell", ("perov_5", "dir_gap"): "eV",
    ("perov_5", "ind_gap"): "eV", ("carbon_24", "energy_per_atom"): "eV/atom",
    ("mp_e_form", "target"): "eV/atom", ("mp_dielectric_n", "target"): "",
    ("mp_log_kvrh", "target"): "log10(GPa)", ("mp_log_gvrh", "target"): "log10(GPa)",
}
#: share of the training rows held out for validation when a task has no validation file
CARVED_VAL_FRACTION = 0.15
#: seed of every data-level random choice (carved validation rows, subsamples): fixed, so every
#: representation and every model seed sees the same rows
DATA_SEED = 20240501

_FOLD = re.compile(r"^(train|val|test)(\d+)\.csv$")


@dataclass(frozen=True)
class Task:
    """One task: where its splits are and what to predict."""

    name: str  # e.g. "aflow__ael_bulk_modulus_vrh", "matbench_expt_gap/fold0", "perov_5/heat_all"
    kind: str  # "composition" or "structure"
    train: Path
    test: Path
    val: Path | None = None
    target: str = "target"
    fold: int | None = None
    #: how the files were chosen, where that is not the obvious layout (said to the user)
    notes: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        """The task a fold belongs to (its name without ``/fold<k>``): what reports aggregate over."""
        return self.name.rsplit("/fold", 1)[0] if self.fold is not None else self.name

    @property
    def unit(self) -> str | None:
        """The target's unit where :data:`UNITS` knows it (the shared structure tasks), else None."""
        return UNITS.get((self.test.parent.name, self.target))


@dataclass
class Split:
    """One split after cleaning: formulas (parsed), targets, and CIF texts for structure tasks."""

    formulas: list[str]
    y: np.ndarray
    cifs: list[str] | None = None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # row numbers in the file
    #: rows left out while reading: reason -> count, and the first few as "file row N: why"
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list[str] = field(default_factory=list)
    #: every row left out while reading: (row number in the file, reason, reason with detail)
    dropped: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, keep: np.ndarray) -> "Split":
        """The rows ``keep`` selects (a boolean mask or indices); what was skipped while reading stays."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return Split([self.formulas[i] for i in idx], self.y[idx],
                     None if self.cifs is None else [self.cifs[i] for i in idx], self.rows[idx],
                     Counter(self.skipped), list(self.skipped_examples), list(self.dropped))


def _read_csv(path: Path, target: str) -> pd.DataFrame:
    # keep_default_na=False: "NaN" (sodium nitride) and "NA" are formulas here, not missing values
    try:
        return pd.read_csv(path, keep_default_na=False, dtype={"formula": str},
                           na_values={target: ["", "nan", "NaN"]})
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataNotFoundError(f"{path}: cannot be read as a CSV table: {exc}") from exc


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [c.strip() for c in handle.readline().strip().split(",")]


def _target_columns(folder: Path, path: Path, cols: list[str]) -> tuple[str, ...]:
    """Target columns of a structure table: the known sets' columns, else ``target``."""
    targets = STRUCTURE_TARGETS.get(folder.name, ("target",))
    absent = [t for t in targets if t not in cols]
    if absent:
        raise DataNotFoundError(f"{path}: structure table (it has a 'cif' column) without the target "
                                f"column(s) {', '.join(map(repr, absent))}; columns: {', '.join(cols)}")
    return targets


def _check_columns(path: Path, cols: list[str], needed: Sequence[str], hint: str = "") -> None:
    absent = [c for c in needed if c not in cols]
    if absent:
        raise DataNotFoundError(f"{path}: no column {', '.join(map(repr, absent))} "
                                f"(columns: {', '.join(map(str, cols))}){hint}")


def _folder_tasks(folder: Path) -> list[Task]:
    """The tasks of one folder ([] when it holds no task layout).

    Raises:
        DataNotFoundError: a task layout with a file lacking the target (or formula / cif) column,
            or fold files that do not pair up (``train3.csv`` without ``test3.csv``).
    """
    files = {p.name: p for p in folder.glob("*.csv")}
    tasks: list[Task] = []
    if "test.csv" in files and ("train.csv" in files or "val.csv" in files):
        cols = _header(files["test.csv"])
        if "cif" in cols:
            targets = _target_columns(folder, files["test.csv"], cols)
            train = files.get("train.csv", files.get("val.csv"))
            val = files.get("val.csv") if "train.csv" in files else None
            for other in (train, val):
                if other is not None:
                    _check_columns(other, _header(other), ("cif",) + tuple(targets))
            for t in targets:
                name = f"{folder.name}/{t}" if folder.name in STRUCTURE_TARGETS else folder.name
                tasks.append(Task(name, "structure", train, files["test.csv"], val, target=t))
            return tasks
        if "train.csv" in files:
            if "formula" not in cols and "target" not in cols:
                return []  # some other table
            for path in (files["train.csv"], files["test.csv"], files.get("val.csv")):
                if path is not None:
                    _check_columns(path, _header(path), ("formula", "target"))
            return [Task(folder.name, "composition", files["train.csv"], files["test.csv"], files.get("val.csv"))]
    folds: dict[int, dict[str, Path]] = {}
    for name, path in files.items():
        m = _FOLD.match(name)
        if m:
            folds.setdefault(int(m.group(2)), {})[m.group(1)] = path
    for k in sorted(folds):
        parts = folds[k]
        if "train" not in parts or "test" not in parts:
            have = ", ".join(p.name for p in parts.values())
            raise DataNotFoundError(f"{folder}: fold {k} is incomplete ({have}); a fold needs train{k}.csv "
                                    f"and test{k}.csv (val{k}.csv optional)")
        cols = _header(parts["test"])
        kind = "structure" if "cif" in cols else "composition"
        needed = ("cif", "target") if kind == "structure" else ("formula", "target")
        for path in parts.values():
            _check_columns(path, _header(path), needed)
        tasks.append(Task(f"{folder.name}/fold{k}", kind, parts["train"], parts["test"], parts.get("val"), fold=k))
    return tasks


def discover_tasks(data: str | Path, names: Iterable[str] | None = None) -> list[Task]:
    """All tasks under ``data`` (the folder, its sub-folders, and theirs), sorted by name.

    ``names`` keeps the tasks whose name, group or folder matches one of them exactly
    (``matbench_expt_gap`` selects every fold, ``matbench_expt_gap/fold0`` one fold,
    ``perov_5`` both perov_5 targets).

    Raises:
        DataNotFoundError: ``data`` is not a folder, or no task is found / a name matches nothing.
    """
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"benchmark data folder {root} not found")
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    folders += sorted(q for p in folders[1:] for q in p.iterdir() if q.is_dir())
    tasks = sorted({t.name: t for f in folders for t in _folder_tasks(f)}.values(), key=lambda t: t.name)
    if names is not None:
        wanted = list(names)
        keep = [t for t in tasks if any(w in (t.name, t.group, t.name.split("/")[0]) for w in wanted)]
        unmatched = [w for w in wanted if not any(w in (t.name, t.group, t.name.split("/")[0]) for t in tasks)]
        if unmatched:
            raise DataNotFoundError(f"no task named {', '.join(unmatched)} under {root} "
                                    f"(found: {', '.join(t.name for t in tasks) or 'none'})")
        tasks = keep
    if not tasks:
        raise DataNotFoundError(
            f"no benchmark task under {root}: expected <task>/{{train,val,test}}.csv or "
            "{train,test}<k>.csv with formula,target columns, or perov_5/carbon_24 CIF tables"
        )
    return tasks


_FORMULA_SUM = re.compile(r"^_chemical_formula_sum\s+(.+)$", re.MULTILINE)


def formula_of_cif(cif: str) -> str:
    """The ``_chemical_formula_sum`` of a CIF text (quotes stripped); '' when absent."""
    m = _FORMULA_SUM.search(cif)
    return m.group(1).strip().strip("'\"") if m else ""


#: how many skipped rows a split names by file and row
MAX_EXAMPLES = 5


def read_split(path: Path, task: Task, require: str = "formula") -> Split:
    """Read one split file: formulas as text, numeric targets, CIF texts for structure tasks.

    Rows with a missing or non-numeric target are skipped, and so are rows without what the reader
    needs (``require``): ``"formula"`` (the benchmark: an empty formula, or on a structure task a CIF
    without ``_chemical_formula_sum`` when the table has no formula column) or ``"cif"`` (fine-tuning:
    an empty CIF). Each is counted in :attr:`Split.skipped`, the first :data:`MAX_EXAMPLES` named as
    ``file row N`` in :attr:`Split.skipped_examples` (N counting data rows from 1), and every one
    listed in :attr:`Split.dropped`.

    Raises:
        DataNotFoundError: the file cannot be parsed, or lacks the target (formula / cif) column.
    """
    if require not in ("formula", "cif"):
        raise ConfigError(f"require must be 'formula' or 'cif', not {require!r}")
    df = _read_csv(path, task.target)
    needed = (task.target, "cif") if task.kind == "structure" else (task.target, "formula")
    _check_columns(path, [str(c) for c in df.columns], needed)
    raw = df[task.target]
    y = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    if task.kind == "structure":
        cifs = df["cif"].astype(str).tolist()
        formulas = (df["formula"].astype(str).tolist() if "formula" in df.columns
                    else [formula_of_cif(c) for c in cifs])
    else:
        cifs = None
        formulas = df["formula"].astype(str).tolist()
    split = Split(formulas, y, cifs, np.arange(len(df)))
    keep = np.isfinite(y)
    reasons = {}
    for i in np.flatnonzero(~keep):
        text = str(raw.iloc[i]).strip()
        reasons[i] = "missing target" if text in ("", "nan", "NaN") else f"non-numeric target {text[:20]!r}"
    for i in np.flatnonzero(keep):
        if require == "cif" and not cifs[i].strip():
            reasons[i] = "empty CIF"
        elif require == "formula" and not formulas[i].strip():
            if task.kind == "structure":
                reasons[i] = "empty CIF" if not cifs[i].strip() else "CIF without _chemical_formula_sum"
            else:
                reasons[i] = "empty formula"
        keep[i] = i not in reasons
    for i in sorted(reasons):
        kind = reasons[i].split(" '")[0]
        split.skipped[kind] += 1
        split.dropped.append((int(i), kind, reasons[i]))
        if len(split.skipped_examples) < MAX_EXAMPLES:
            split.skipped_examples.append(f"{path.name} row {i + 1}: {reasons[i]}")
    return split.take(keep)


def subsample(split: Split, n_max: int | None, seed: int = DATA_SEED) -> Split:
    """At most ``n_max`` rows (``None`` or 0: all), chosen by a seeded permutation, kept in file order."""
    if n_max is None or n_max <= 0 or len(split) <= n_max:
        return split
    rng = np.random.default_rng(seed)
    return split.take(np.sort(rng.permutation(len(split))[:n_max]))


def carve_validation(train: Split, task_name: str) -> tuple[Split, Split]:
    """``(train, val)``: :data:`CARVED_VAL_FRACTION` of the training rows held out for validation,
    chosen by a permutation seeded with :data:`DATA_SEED`, both parts in file order.

    Raises:
        ConfigError: fewer than 2 training rows would be left.
    """
    order = np.random.default_rng(DATA_SEED).permutation(len(train))
    n_val = max(1, int(round(CARVED_VAL_FRACTION * len(train))))
    if len(train) - n_val < 2:
        raise ConfigError(f"task {task_name}: {len(train)} training rows, too few to carve a validation split")
    return train.take(np.sort(order[n_val:])), train.take(np.sort(order[:n_val]))


def cap_splits(splits: Mapping[str, Split], max_train: int | None = None, max_val: int | None = None,
               max_test: int | None = None) -> dict[str, Split]:
    """``{"train", "val", "test"}`` each subsampled to its cap, with the seeds :data:`DATA_SEED`,
    ``DATA_SEED + 1`` and ``DATA_SEED + 2``."""
    return {"train": subsample(splits["train"], max_train, DATA_SEED),
            "val": subsample(splits["val"], max_val, DATA_SEED + 1),
            "test": subsample(splits["test"], max_test, DATA_SEED + 2)}


def load_splits(task: Task, max_train: int | None = None, max_val: int | None = None,
                max_test: int | None = None) -> dict[str, Split]:
    """``{"train", "val", "test"}`` splits of a task, validation carved from train when absent,
    then each split subsampled (seeded, :func:`cap_splits`) to its cap."""
    train = read_split(task.train, task)
    test = read_split(task.test, task)
    if task.val is not None:
        val = read_split(task.val, task)
    else:
        train, val = carve_validation(train, task.name)
    return cap_splits({"train": train, "val": val, "test": test}, max_train, max_val, max_test)


# --------------------------------------------------------------------------- one structure task by folder


def folder_task(data: str | os.PathLike, target: str | None = None, fold: int | None = None,
                train_split: str | None = None) -> Task:
    """The structure task of one task folder, its files checked for the ``cif`` and target columns.

    Args:
        data: the task folder.
        target: target column; default ``target``, or the shared sets' own (:data:`DEFAULT_TARGETS`).
        fold: fold number for a fold folder (``train{k}.csv`` / ``test{k}.csv``, ``val{k}.csv`` optional).
        train_split: the file stem used as the training split (``"val"`` for the CDVAE sets,
            which is what ``None`` picks when there is no ``train.csv``).

    The task is named ``<folder>[/fold<k>][/<target>]`` (the target only when not ``target``).

    Raises:
        DataNotFoundError: no such folder, split files absent, or no ``cif``/target column (the
            message names the file).
    """
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"task folder {folder}: no such folder")
    target = target or DEFAULT_TARGETS.get(folder.name, "target")
    notes: list[str] = []
    has = {p.name for p in folder.glob("*.csv")}
    if fold is not None:
        train_f, test_f = folder / f"train{fold}.csv", folder / f"test{fold}.csv"
        val_f = folder / f"val{fold}.csv" if f"val{fold}.csv" in has else None
        for f in (train_f, test_f):
            if not f.is_file():
                raise DataNotFoundError(f"task folder {folder}: fold {fold} needs {f.name} (found: "
                                        f"{', '.join(sorted(has)) or 'no CSV files'})")
    else:
        folds = sorted(n for n in has if n.startswith("train") and n[5:-4].isdigit())
        if train_split is None:
            if "train.csv" in has:
                train_split = "train"
            elif "val.csv" in has and "test.csv" in has:
                train_split = "val"
                notes.append(f"{folder.name}: no train.csv; val.csv is the training split (the shared "
                             "data README's convention for the CDVAE sets), validation carved from it")
            elif folds:
                raise DataNotFoundError(f"task folder {folder} holds folds ({', '.join(folds)}): pass a fold "
                                        "number (--fold K)")
        if train_split is None or f"{train_split}.csv" not in has or "test.csv" not in has:
            raise DataNotFoundError(
                f"task folder {folder}: expected train.csv/val.csv/test.csv, val.csv/test.csv, or folds "
                f"train{{k}}.csv/test{{k}}.csv (found: {', '.join(sorted(has)) or 'no CSV files'})")
        train_f, test_f = folder / f"{train_split}.csv", folder / "test.csv"
        val_f = folder / "val.csv" if train_split != "val" and "val.csv" in has else None
    for path in (train_f, test_f, val_f):
        if path is not None:
            _check_columns(path, _header(path), ("cif", target), hint="; pass --target COL")
    name = folder.name + (f"/fold{fold}" if fold is not None else "") + (f"/{target}" if target != "target" else "")
    return Task(name, "structure", train_f, test_f, val_f, target=target, fold=fold, notes=tuple(notes))


@dataclass
class TaskData:
    """The splits of one structure task, rows already cleaned: ``{"train", "val", "test"}`` ->
    DataFrame with columns ``cif``, ``y`` (float) and ``row`` (row number in its file)."""

    name: str
    target: str
    unit: str | None
    splits: dict[str, pd.DataFrame]
    files: dict[str, str]
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    #: rows dropped while reading the tables: (split:row N, file, reason, message)
    dropped: list[tuple[str, str, str, str]] = field(default_factory=list)


#: a skipped row's reason (:func:`read_split`) as :class:`TaskData` names it: (reason, message)
_ROW_REASONS = {"missing target": ("missing_target", "{target} is not a number"),
                "non-numeric target": ("missing_target", "{target} is not a number"),
                "empty CIF": ("empty_cif", "the cif cell is empty")}


def _read_rows(name: str, path: Path, task: Task, data: TaskData) -> Split:
    """One split file read for :func:`load_task`, its skipped rows counted and listed in ``data``."""
    split = read_split(path, task, require="cif")
    rows = sorted(((*_ROW_REASONS[kind], row) for row, kind, _ in split.dropped),
                  key=lambda r: (r[0] != "missing_target", r[2]))
    data.skipped.update({f"{name}:{reason}": n for reason, n in Counter(r[0] for r in rows).items()})
    data.dropped.extend((f"{name}:row {row}", path.name, reason, message.format(target=task.target))
                        for reason, message, row in rows)
    return split


def load_task(data: str | os.PathLike, target: str | None = None, fold: int | None = None,
              train_split: str | None = None, unit: str | None = None, max_train: int | None = None,
              max_val: int | None = None, max_test: int | None = None) -> TaskData:
    """Read a structure task folder's splits (:func:`folder_task` picks the files) as tables.

    ``unit``: the target's unit (default: :attr:`Task.unit`); ``max_train``, ``max_val``,
    ``max_test``: seeded subsamples (``None``/0 = all rows, :func:`cap_splits`). Without a validation
    file, validation rows are carved from the training split (:func:`carve_validation`).

    Raises:
        DataNotFoundError: as :func:`folder_task`.
        ConfigError: too few training rows to carve a validation split.
    """
    task = folder_task(data, target, fold, train_split)
    out = TaskData(task.name, task.target, unit if unit is not None else task.unit, {},
                   {"train": str(task.train), "val": str(task.val) if task.val else f"{task.train} (carved)",
                    "test": str(task.test)}, notes=list(task.notes))
    train, test = _read_rows("train", task.train, task, out), _read_rows("test", task.test, task, out)
    if task.val is not None:
        val = _read_rows("val", task.val, task, out)
    else:
        train, val = carve_validation(train, task.name)
        out.notes.append(f"validation: {len(val)} rows carved from {task.train.name} (seed {DATA_SEED})")
    for name, split in cap_splits({"train": train, "val": val, "test": test}, max_train, max_val, max_test).items():
        out.splits[name] = pd.DataFrame({"cif": split.cifs, "y": split.y, "row": split.rows})
    return out


_HELD_OUT = re.compile(r"^(val|test)\d*\.csv$")


def held_out_tables(folder: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Every table of a task folder that a benchmark holds out of pretraining: ``val`` and ``test``
    (the fold tasks' ``test{k}``/``val{k}`` files concatenated under ``test``/``val``). For the CDVAE
    sets ``val`` is the training split the validation rows are carved from, so it is held out whole."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for path in sorted(Path(folder).glob("*.csv")):
        m = _HELD_OUT.match(path.name)
        if m:
            parts.setdefault(m.group(1), []).append(pd.read_csv(path, keep_default_na=False))
    return {split: pd.concat(frames, ignore_index=True) for split, frames in parts.items()}
