"""Geometry probes: do structure vectors know more than the formula?

Two structure tasks built from ``mp_e_form`` (the shared data folder, :func:`crystext.settings.data_dir`),
plus ``carbon_24`` as it is, so that the answer comes as a number in every ``crystext benchmark``:

* ``probes/polymorph``: reduced formulas with at least :attr:`ProbeConfig.min_structures` structures
  in mp_e_form (at most :attr:`ProbeConfig.max_per_formula` per formula, a seeded sample); target =
  formation energy per atom minus the mean over that formula's kept structures (eV/atom). By
  construction the target has zero mean per formula, so a composition-only vector knows nothing
  about it beyond noise.
* ``probes/geometry``: the same structures; target = mean coordination number, computed from the
  structure alone (no DFT): a site's neighbours are the atoms within ``(1 + cn_tolerance)`` times its
  nearest-neighbour distance (:func:`mean_coordination`; rock-salt NaCl 6, bcc Fe 8, fcc Cu 12).
* ``carbon_24/energy_per_atom``: unchanged (a single composition: only structure can help).

Both mp_e_form probes are split **by formula**, and they are evaluated only on structures no release
has read: validation and test formulas are those with at least ``min_structures`` structures in the
source's **held-out files** (:attr:`ProbeConfig.held_out`, mp_e_form's ``val`` and ``test``, which the
shared ``mp/`` corpus and ``crystext corpus exclude`` leave out), and they keep only those structures;
they are cut between validation and test in :attr:`ProbeConfig.val_fraction` by
:func:`split_by_formula`, seeded (:data:`crystext.tasks.DATA_SEED`). Every other formula trains.
Whole formulas are then taken in a seeded order until each split reaches its row cap
(:attr:`ProbeConfig.max_rows`), so the probes run on 2 CPU cores in minutes.
The probe tables are written once as ``{train,val,test}.csv`` (columns ``material_id,
formula, cif, target``) under the benchmark cache and read back as ordinary structure tasks
(:class:`~crystext.tasks.Task`), so every vector set runs on them under the one protocol.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataNotFoundError
from ..tasks import DATA_SEED, Task, discover_tasks, read_split

#: the folder of every probe task (``crystext benchmark --tasks probes`` selects the suite)
PROBE_GROUP = "probes"
POLYMORPH = f"{PROBE_GROUP}/polymorph"
GEOMETRY = f"{PROBE_GROUP}/geometry"
#: the probes built here
PROBE_TASKS = (POLYMORPH, GEOMETRY)
CARBON = "carbon_24/energy_per_atom"
#: what ``--tasks probes`` runs: the two probes and carbon_24 as it is
PROBE_SUITE = PROBE_TASKS + (CARBON,)
SPLITS = ("train", "val", "test")
#: what each probe's target is, for reports
TARGETS = {POLYMORPH: "formation energy per atom minus its formula's mean (eV/atom)",
           GEOMETRY: "mean coordination number (neighbours within 1.1 x nearest distance)",
           CARBON: "energy per atom (eV/atom)"}


@dataclass(frozen=True)
class ProbeConfig:
    """How the probes are cut from their source task (part of the probe files' cache key)."""

    source: str = "mp_e_form"
    min_structures: int = 2
    max_per_formula: int = 8
    #: the source files whose structures may validate and test (no release corpus holds them)
    held_out: tuple[str, ...] = ("val", "test")
    #: share of the held-out formulas that validate; the rest test
    val_fraction: float = 0.5
    max_rows: tuple[int, int, int] = (1200, 400, 600)
    cn_tolerance: float = 0.1
    cn_cutoff: float = 6.0
    seed: int = DATA_SEED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reduced_formula(formula: str) -> str:
    """The reduced formula (pymatgen's ``reduced_formula``) of a formula text; '' when unreadable."""
    from pymatgen.core import Composition

    try:
        return Composition(formula).reduced_formula
    except Exception:  # noqa: BLE001 - an unreadable formula leaves the row out
        return ""


def split_by_formula(formulas: Iterable[str], fractions: Sequence[float] = (0.7, 0.15, 0.15),
                     seed: int = DATA_SEED) -> dict[str, str]:
    """Each distinct formula -> ``"train"``, ``"val"`` or ``"test"``: a seeded permutation of the sorted
    distinct formulas cut at the cumulative ``fractions`` (so no formula is in two splits)."""
    distinct = sorted(set(formulas))
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative shares summing to 1, not {tuple(fractions)}")
    order = np.random.default_rng(seed).permutation(len(distinct))
    cuts = np.round(np.cumsum(fractions)[:2] * len(distinct)).astype(int)
    out = {}
    for rank, i in enumerate(order):
        out[distinct[i]] = SPLITS[int(np.searchsorted(cuts, rank, side="right"))]
    return out


def mean_coordination(structure: Any, tolerance: float = 0.1, cutoff: float = 6.0) -> float:
    """Mean over sites of the number of atoms within ``(1 + tolerance)`` x the site's nearest distance.

    Nearest distances from :func:`crystext.descriptors.geometry.nearest_neighbours` (periodic images
    included; a site with no neighbour inside ``cutoff`` Å is looked for again at twice the cutoff;
    ``ValueError`` when a site has none even there).
    """
    from ..descriptors.geometry import nearest_neighbours

    nbrs, nearest = nearest_neighbours(structure, cutoff)
    within = nbrs.distances <= (1 + tolerance) * nearest[nbrs.centers] + 1e-8
    return float(np.bincount(nbrs.centers[within], minlength=nbrs.n_atoms).mean())


def _source_rows(data: Path, config: ProbeConfig) -> pd.DataFrame:
    """Every row of the source task's files, pooled: ``material_id, cif, energy, formula`` (reduced)
    and ``held_out`` (the row comes from one of :attr:`ProbeConfig.held_out`)."""
    found = [t for t in discover_tasks(data, [config.source]) if t.kind == "structure"]
    if not found:
        raise DataNotFoundError(f"the probes need the structure task {config.source!r} under {data}")
    task = found[0]
    parts, seen = [], set()
    for name in SPLITS:
        path = getattr(task, name)
        if path is None or path in seen:
            continue
        seen.add(path)
        split = read_split(path, task)
        ids = (pd.read_csv(path, usecols=lambda c: c == "material_id", dtype=str, keep_default_na=False)
               .get("material_id"))
        parts.append(pd.DataFrame({"material_id": (ids.to_numpy()[split.rows] if ids is not None
                                                   else [f"{path.stem}-{r}" for r in split.rows]),
                                   "cif": split.cifs, "energy": split.y, "formula_sum": split.formulas,
                                   "held_out": name in config.held_out}))
    rows = pd.concat(parts, ignore_index=True)
    rows["formula"] = [reduced_formula(f) for f in rows["formula_sum"]]
    return rows[rows["formula"] != ""].drop(columns="formula_sum").reset_index(drop=True)


def _formula_splits(rows: pd.DataFrame, config: ProbeConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows the probes use and each formula's split: formulas with ``min_structures`` held-out
    rows validate or test on those rows only; the other formulas with ``min_structures`` rows train."""
    m = config.min_structures
    held = rows["held_out"].to_numpy(bool)
    held_counts = rows.loc[held, "formula"].value_counts()
    evaluated = set(held_counts[held_counts >= m].index)
    counts = rows["formula"].value_counts()
    trained = set(counts[counts >= m].index) - evaluated
    if not evaluated or not trained:
        raise DataNotFoundError(f"the probes need formulas with at least {m} structures both in the held-out "
                                f"files {config.held_out} of {config.source} and outside them")
    in_eval = rows["formula"].isin(evaluated).to_numpy()
    pool = rows[(in_eval & held) | rows["formula"].isin(trained).to_numpy()]
    assign = dict.fromkeys(sorted(trained), "train")
    assign.update(split_by_formula(evaluated, (0.0, config.val_fraction, 1.0 - config.val_fraction), config.seed))
    return pool, assign


def polymorph_table(rows: pd.DataFrame, config: ProbeConfig = ProbeConfig()) -> pd.DataFrame:
    """The polymorph probe from ``rows`` (``material_id, cif, energy, formula, held_out``): the
    formulas and splits of :func:`_formula_splits`, at most ``max_per_formula`` rows each (seeded),
    target = energy minus the formula's mean over its kept rows, a ``split`` column, whole formulas
    kept up to the row caps."""
    rng = np.random.default_rng(config.seed)
    pool, assign = _formula_splits(rows, config)
    kept = []
    for formula, group in sorted(pool.groupby("formula", sort=False), key=lambda kv: kv[0]):
        if len(group) > config.max_per_formula:
            group = group.iloc[np.sort(rng.permutation(len(group))[:config.max_per_formula])]
        kept.append(group.assign(target=group["energy"] - group["energy"].mean()))
    table = pd.concat(kept, ignore_index=True)
    table["split"] = table["formula"].map(assign)
    order = np.random.default_rng(config.seed + 1).permutation(sorted(assign))
    sizes = table["formula"].value_counts()
    used = {s: 0 for s in SPLITS}
    keep_formulas = set()
    for formula in order:
        split, n = assign[formula], int(sizes[formula])
        cap = dict(zip(SPLITS, config.max_rows))[split]
        if cap is None or used[split] + n <= cap:
            keep_formulas.add(formula)
            used[split] += n
    return table[table["formula"].isin(keep_formulas)].drop(columns="held_out", errors="ignore").reset_index(drop=True)


def geometry_targets(cifs: Sequence[str], config: ProbeConfig = ProbeConfig()) -> np.ndarray:
    """Mean coordination number of every CIF (NaN where the structure cannot be read or measured)."""
    from ..inputs import to_structure

    out = np.full(len(cifs), np.nan)
    for i, cif in enumerate(cifs):
        try:
            out[i] = mean_coordination(to_structure(cif), config.cn_tolerance, config.cn_cutoff)
        except Exception:  # noqa: BLE001 - counted in the probe info, never fatal
            continue
    return out


def _cache_key(data: Path, config: ProbeConfig) -> str:
    files = sorted((data / config.source).rglob("*.csv")) if (data / config.source).is_dir() else []
    stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    return hashlib.sha1(json.dumps([config.as_dict(), stamp], default=str).encode()).hexdigest()[:12]


def _write_task(folder: Path, name: str, table: pd.DataFrame) -> Task:
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        part = table[table["split"] == split][["material_id", "formula", "cif", "target"]]
        tmp = folder / f".{split}.csv.tmp"
        part.to_csv(tmp, index=False)
        tmp.replace(folder / f"{split}.csv")
    return Task(name, "structure", folder / "train.csv", folder / "test.csv", folder / "val.csv")


def _summary(table: pd.DataFrame, dropped: int = 0) -> dict[str, Any]:
    info: dict[str, Any] = {"dropped_unmeasurable": int(dropped)}
    train_median = float(table.loc[table["split"] == "train", "target"].median())
    for split in SPLITS:
        part = table[table["split"] == split]
        y = part["target"].to_numpy()
        info[split] = {"rows": int(len(part)), "formulas": int(part["formula"].nunique()),
                       "target_std": float(y.std()) if len(y) > 1 else 0.0,
                       "mae_of_train_median": float(np.abs(y - train_median).mean()) if len(y) else None,
                       "mae_of_zero": float(np.abs(y).mean()) if len(y) else None,
                       "mae_of_formula_mean": float(np.abs(y - part.groupby("formula")["target"].transform("mean")).mean())
                       if len(y) else None}
    return info


def build_probes(data: str | Path, cache_dir: str | Path, config: ProbeConfig = ProbeConfig(),
                 names: Sequence[str] = PROBE_TASKS, log: Callable[[str], None] = lambda m: None
                 ) -> tuple[list[Task], dict[str, Any]]:
    """Write (once; cached by source files and ``config``) and return the probe tasks in ``names``.

    Returns ``(tasks, info)``: ``info[name]`` holds per split the rows, formulas, target std and the
    MAE of predicting the training mean (the floor every representation must beat), and the config.
    Raises :class:`DataNotFoundError` when the source task is missing.
    """
    data = Path(data)
    folder = Path(cache_dir) / "probes" / _cache_key(data, config)
    info_path = folder / "probes.json"
    if info_path.is_file() and all((folder / n.split("/", 1)[1] / "test.csv").is_file() for n in PROBE_TASKS):
        info = json.loads(info_path.read_text())
    else:
        log(f"probes: building {', '.join(PROBE_TASKS)} from {data / config.source}")
        table = polymorph_table(_source_rows(data, config), config)
        geometry = table.assign(target=geometry_targets(table["cif"].tolist(), config))
        ok = np.isfinite(geometry["target"].to_numpy())
        _write_task(folder / "polymorph", POLYMORPH, table)
        _write_task(folder / "geometry", GEOMETRY, geometry[ok])
        info = {"config": config.as_dict(), "source": str(data / config.source),
                POLYMORPH: _summary(table), GEOMETRY: _summary(geometry[ok], int((~ok).sum()))}
        info_path.write_text(json.dumps(info, indent=1))
    tasks = [Task(n, "structure", folder / n.split("/", 1)[1] / "train.csv", folder / n.split("/", 1)[1] / "test.csv",
                  folder / n.split("/", 1)[1] / "val.csv") for n in PROBE_TASKS if n in names]
    return tasks, {k: v for k, v in info.items() if k in names or k in ("config", "source")}


def resolve_tasks(data: str | Path, names: Iterable[str] | None, cache_dir: str | Path,
                  config: ProbeConfig = ProbeConfig(), log: Callable[[str], None] = lambda m: None
                  ) -> tuple[list[Task], dict[str, Any]]:
    """The benchmark's task list with the probes: ``(tasks, probe info)``.

    ``names`` ``None``: every task under ``data`` plus both probes when the source task is there.
    Otherwise ``"probes"`` stands for :data:`PROBE_SUITE` (carbon_24 when the data holds it), ``probes/polymorph`` / ``probes/geometry``
    for one probe, and the other names are looked up by :func:`discover_tasks`.
    """
    data = Path(data)
    if names is None:
        tasks = discover_tasks(data)
        if not any(t.name == config.source and t.kind == "structure" for t in tasks):
            return tasks, {}
        probes, info = build_probes(data, cache_dir, config, PROBE_TASKS, log)
        return sorted(tasks + probes, key=lambda t: t.name), info
    wanted: list[str] = []
    for n in names:
        wanted += [n] if n != PROBE_GROUP else list(PROBE_TASKS) + (
            [CARBON] if any(t.name == CARBON for t in discover_tasks(data)) else [])
    probe_names = [n for n in dict.fromkeys(wanted) if n in PROBE_TASKS]
    others = [n for n in dict.fromkeys(wanted) if n not in PROBE_TASKS]
    tasks = discover_tasks(data, others) if others else []
    probes, info = build_probes(data, cache_dir, config, probe_names, log) if probe_names else ([], {})
    return sorted({t.name: t for t in tasks + probes}.values(), key=lambda t: t.name), info


STRUCTURE_KIND, COMPOSITION_KIND = "structure", "composition only"


def view_of(representation: str, pooling: str) -> tuple[str, str]:
    """``(label, kind)`` of a result row: our runs' element pooling and structure vectors are two
    views (``crystext-mp (element pooling)``, ``crystext-mp (structure)``); the structure baselines
    are structure views (``+elements`` structure poolings a view of their own, ``crystext-mp
    (structure + elements)``); every other element table is composition only."""
    from .structures import STRUCTURE_BASELINES

    if pooling.startswith("structure-") and "+elements" in pooling:  # the floor: shown apart from the states alone
        return f"{representation} (structure + elements)", STRUCTURE_KIND
    if pooling.startswith("structure-"):
        return f"{representation} (structure)", STRUCTURE_KIND
    if representation in STRUCTURE_BASELINES or pooling in ("structure", "graph"):
        return representation, STRUCTURE_KIND
    if representation.startswith("crystext-"):
        return f"{representation} (element pooling)", COMPOSITION_KIND
    return representation, COMPOSITION_KIND


def _relabel(results: pd.DataFrame, errors: dict | None) -> tuple[pd.DataFrame, dict | None, dict[str, str]]:
    out = results.copy()
    views = [view_of(r, p) for r, p in zip(out["representation"], out["pooling"])]
    out["representation"] = [v[0] for v in views]
    kinds = {label: kind for label, kind in views}
    if errors is None:
        return out, None, kinds
    relabelled = {(k[0], view_of(k[1], k[2])[0]) + tuple(k[2:]): v for k, v in errors.items()}
    return out, relabelled, kinds


def probe_verdicts(results: pd.DataFrame, errors: dict | None = None, tasks: Sequence[str] = PROBE_SUITE,
                   n_boot: int | None = None) -> pd.DataFrame:
    """Every view of every probe task at its setting picked on validation, against the reference line.

    The reference is the composition-only view with the lowest validation MAE (picked on
    validation, never test). Columns: ``task, view, kind, pooling, regressor, val_mae, test_mae,
    test_std, n, rank`` (tie-aware, among all views), ``reference, ratio`` (test MAE / the
    reference's), ``verdict`` (``better`` / ``tie`` / ``worse`` than the reference beyond noise: the
    paired bootstrap of :func:`~crystext.benchmark.selection.selected_settings` on the two views,
    or seed noise without per-row ``errors``) and ``diff_lo, diff_hi`` (95 % interval of test MAE
    minus the reference's, NaN without ``errors``).
    """
    from .selection import N_BOOT, selected_settings

    sub = results[results["task"].isin(tasks)]
    if sub.empty:
        return pd.DataFrame()
    sub, errs, kinds = _relabel(sub, {k: v for k, v in (errors or {}).items() if k[0] in set(tasks)} or None)
    nb = n_boot or N_BOOT
    picked = selected_settings(sub, errs, n_boot=nb)
    rows = []
    for task in dict.fromkeys(picked["task"]):
        part = picked[picked["task"] == task]
        comp = part[part["representation"].map(kinds) == COMPOSITION_KIND]
        ref = comp.loc[comp["val_mae"].idxmin()] if not comp.empty else None
        for r in part.itertuples():
            row = {"task": task, "view": r.representation, "kind": kinds[r.representation], "pooling": r.pooling,
                   "regressor": r.regressor, "val_mae": r.val_mae, "test_mae": r.test_mae, "test_std": r.test_std,
                   "n": r.n, "rank": r.rank, "reference": None if ref is None else ref["representation"],
                   "ratio": np.nan, "verdict": "", "diff_lo": np.nan, "diff_hi": np.nan}
            if ref is not None and r.representation != ref["representation"]:
                pair = sub[(sub["task"] == task) & sub["representation"].isin([r.representation, ref["representation"]])]
                two = selected_settings(pair, errs, n_boot=nb).set_index("representation")
                mine, theirs = two.loc[r.representation], two.loc[ref["representation"]]
                row["ratio"] = r.test_mae / ref["test_mae"]
                row["verdict"] = ("tie" if mine["rank"] == theirs["rank"] else "better" if mine["rank"] < theirs["rank"]
                                  else "worse")
                if np.isfinite(mine["diff_lo"]) and np.isfinite(theirs["diff_lo"]):
                    # each side's interval is against the pair's best (the best's own is [0, 0]);
                    # turn it into "mine - reference"
                    mine_best = mine["diff_lo"] == 0.0 and mine["diff_hi"] == 0.0
                    lo, hi = ((-theirs["diff_hi"], -theirs["diff_lo"]) if mine_best
                              else (mine["diff_lo"], mine["diff_hi"]))
                    row["diff_lo"], row["diff_hi"] = lo, hi
            elif ref is not None:
                row["verdict"], row["ratio"] = "reference", 1.0
            rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["CARBON", "GEOMETRY", "POLYMORPH", "PROBE_GROUP", "PROBE_SUITE", "PROBE_TASKS", "ProbeConfig",
           "TARGETS", "build_probes", "probe_verdicts", "view_of", "geometry_targets", "mean_coordination", "polymorph_table",
           "reduced_formula", "resolve_tasks", "split_by_formula"]
