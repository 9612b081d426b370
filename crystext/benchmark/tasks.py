"""Benchmark tasks found in a data folder, and their splits as (formula, target[, cif]) tables.

Layouts recognised (each folder is one task, named after the folder):

* ``<task>/{train,val,test}.csv`` with columns ``formula,target`` (CrabNet's benchmark splits);
* ``<task>/{train,test}{k}.csv`` (+ optional ``val{k}.csv``), Matbench-style folds: one task per
  fold, named ``<task>/fold<k>``;
* structure tasks: any of these layouts whose CSVs hold a ``cif`` column. The target column is
  ``target`` (``mp_e_form``: ``train/val/test.csv``; ``mp_log_kvrh``, ``mp_log_gvrh``,
  ``mp_dielectric_n``: 5 folds ``train{k}.csv/test{k}.csv``), except the sets listed in
  :data:`STRUCTURE_TARGETS` (``perov_5``: ``heat_all``, ``dir_gap``; ``carbon_24``:
  ``energy_per_atom``): one task per target, named ``<folder>/<target>``. As in the shared
  data, the ``val`` file is the training split when no ``train`` file exists.

A folder with a task layout but a file lacking the target column, or fold files that do not pair
up, raises :class:`~crystext.errors.DataNotFoundError` naming the file; rows with a missing or
non-numeric target are skipped and counted (:attr:`Split.skipped`), naming file and row.

A task without a validation file (the folds of the structure tasks) gets one carved from its
training split (:data:`CARVED_VAL_FRACTION`, seeded): an inner validation split of each training
fold, so tuning, early stopping and the choice of setting never see the test split.
:func:`discover_tasks` looks in the folder itself, its sub-folders and their sub-folders
(``DATA/composition/<task>``, ``DATA/perov_5``), so both the shared data root and its
``composition/`` folder work.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataNotFoundError

#: target columns of the known structure sets
STRUCTURE_TARGETS = {"perov_5": ("heat_all", "dir_gap"), "carbon_24": ("energy_per_atom",)}
#: share of the training rows held out for tuning when a task has no validation file
CARVED_VAL_FRACTION = 0.15
#: seed of every data-level random choice (carved validation rows, subsamples): fixed, so every
#: representation and every model seed sees the same rows
DATA_SEED = 20240501

_FOLD = re.compile(r"^(train|val|test)(\d+)\.csv$")


@dataclass(frozen=True)
class Task:
    """One benchmark task: where its splits are and what to predict."""

    name: str  # e.g. "aflow__ael_bulk_modulus_vrh", "matbench_expt_gap/fold0", "perov_5/heat_all"
    kind: str  # "composition" or "structure"
    train: Path
    test: Path
    val: Path | None = None
    target: str = "target"
    fold: int | None = None

    @property
    def group(self) -> str:
        """The task a fold belongs to (its name without ``/fold<k>``): what reports aggregate over."""
        return self.name.rsplit("/fold", 1)[0] if self.fold is not None else self.name


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

    def __len__(self) -> int:
        return len(self.y)

    def take(self, keep: np.ndarray) -> "Split":
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return Split([self.formulas[i] for i in idx], self.y[idx],
                     None if self.cifs is None else [self.cifs[i] for i in idx], self.rows[idx],
                     Counter(self.skipped), list(self.skipped_examples))


def _read_csv(path: Path) -> pd.DataFrame:
    # keep_default_na=False: "NaN" (sodium nitride) and "NA" are formulas here, not missing values
    try:
        return pd.read_csv(path, keep_default_na=False, dtype={"formula": str},
                           na_values={"target": ["", "nan", "NaN"]})
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


def _check_columns(path: Path, cols: list[str], needed: Sequence[str]) -> None:
    absent = [c for c in needed if c not in cols]
    if absent:
        raise DataNotFoundError(f"{path}: no column {', '.join(map(repr, absent))} (columns: {', '.join(cols)})")


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


def read_split(path: Path, task: Task) -> Split:
    """Read one split file: formulas as text, numeric targets, CIF texts for structure tasks.

    Rows with a missing or non-numeric target, an empty formula / CIF are skipped and counted in
    :attr:`Split.skipped` (the first :data:`MAX_EXAMPLES` named as ``file row N`` in
    :attr:`Split.skipped_examples`, N counting data rows from 1).

    Raises:
        DataNotFoundError: the file cannot be parsed, or lacks the target (formula / cif) column.
    """
    df = _read_csv(path)
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
    for i, f in enumerate(formulas):
        if keep[i] and not f.strip():
            keep[i] = False
            if task.kind == "structure":
                reasons[i] = "empty CIF" if not cifs[i].strip() else "CIF without _chemical_formula_sum"
            else:
                reasons[i] = "empty formula"
    for i in sorted(reasons):
        split.skipped[reasons[i].split(" '")[0]] += 1
        if len(split.skipped_examples) < MAX_EXAMPLES:
            split.skipped_examples.append(f"{path.name} row {i + 1}: {reasons[i]}")
    return split.take(keep)


def subsample(split: Split, n_max: int | None, seed: int = DATA_SEED) -> Split:
    """At most ``n_max`` rows, chosen by a seeded permutation and kept in file order."""
    if n_max is None or len(split) <= n_max:
        return split
    rng = np.random.default_rng(seed)
    return split.take(np.sort(rng.permutation(len(split))[:n_max]))


def load_splits(task: Task, max_train: int | None = None, max_val: int | None = None,
                max_test: int | None = None) -> dict[str, Split]:
    """``{"train", "val", "test"}`` splits of a task, validation carved from train when absent,
    then each split subsampled (seeded, :data:`DATA_SEED`) to its cap."""
    train = read_split(task.train, task)
    test = read_split(task.test, task)
    if task.val is not None:
        val = read_split(task.val, task)
    else:
        rng = np.random.default_rng(DATA_SEED)
        order = rng.permutation(len(train))
        n_val = max(1, int(round(CARVED_VAL_FRACTION * len(train))))
        if len(train) - n_val < 2:
            raise ConfigError(f"task {task.name}: {len(train)} training rows, too few to carve a validation split")
        val, train = train.take(np.sort(order[:n_val])), train.take(np.sort(order[n_val:]))
    return {"train": subsample(train, max_train, DATA_SEED),
            "val": subsample(val, max_val, DATA_SEED + 1),
            "test": subsample(test, max_test, DATA_SEED + 2)}
