"""Geometry probes (crystext.benchmark.probes): split by formula, zero-mean polymorph target,
coordination numbers of known crystals, probe verdicts, and the probes inside a small benchmark run.

The benchmark runs use a toy ``mp_e_form`` folder of binary salts in three structure types
(rock salt, CsCl, zinc blende) written to ``tmp_path``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystext.benchmark import run_benchmark
from crystext.errors import DataNotFoundError
from crystext.benchmark.probes import (GEOMETRY, POLYMORPH, ProbeConfig, build_probes, mean_coordination,
                                       polymorph_table, probe_verdicts, resolve_tasks, split_by_formula, view_of)

SALTS = [("Na", "Cl"), ("K", "Br"), ("Li", "F"), ("Mg", "O"), ("Ca", "S"), ("Sr", "Se"), ("Ba", "O"),
         ("Zn", "S"), ("Cd", "Se"), ("Rb", "I"), ("Cs", "Cl"), ("Ag", "Br"), ("Na", "Br"), ("K", "Cl"),
         ("Li", "Cl"), ("Ca", "O")]
LONE = [("Na", "F"), ("K", "I"), ("Sr", "O")]  # one structure each: not polymorphs


def rock_salt(a: str, b: str, lat: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl(a: str, b: str, lat: float) -> Structure:
    return Structure(Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def zinc_blende(a: str, b: str, lat: float) -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.25, 0.25, 0.25]])


KINDS = {"rock_salt": (rock_salt, 5.6, 6.0), "cscl": (cscl, 3.4, 8.0), "zinc_blende": (zinc_blende, 6.0, 4.0)}


def toy_source(tmp_path, seed: int = 0):
    """``tmp_path/data/mp_e_form/{train,val,test}.csv`` (material_id, cif, target): 16 formulas in 2-3
    structure types, 3 formulas with one structure; the energy depends on formula and structure type."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, (a, b) in enumerate(SALTS + LONE):
        kinds = ["rock_salt"] if (a, b) in LONE else list(KINDS)[: 2 + k % 2]
        for kind in kinds:
            make, lat, cn = KINDS[kind]
            s = make(a, b, lat * rng.uniform(0.97, 1.03))
            rows.append({"material_id": f"mp-{len(rows)}", "cif": s.to(fmt="cif"),
                         "target": -1.0 - 0.1 * k + 0.05 * cn + rng.normal(0, 0.01)})
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    folder = tmp_path / "data" / "mp_e_form"
    folder.mkdir(parents=True)
    n = len(df)
    df.iloc[: n // 2].to_csv(folder / "train.csv", index=False)
    df.iloc[n // 2: 3 * n // 4].to_csv(folder / "val.csv", index=False)
    df.iloc[3 * n // 4:].to_csv(folder / "test.csv", index=False)
    return tmp_path / "data"


def element_table() -> pd.DataFrame:
    els = sorted({e for pair in SALTS + LONE for e in pair})
    return pd.DataFrame(np.random.default_rng(3).normal(size=(len(els), 4)), index=els)


# --------------------------------------------------------------------------- pieces


def test_split_by_formula_is_disjoint_seeded_and_follows_the_fractions():
    formulas = [f"X{i}Y" for i in range(200)] * 3
    split = split_by_formula(formulas, (0.7, 0.15, 0.15), seed=1)
    assert set(split) == set(formulas) and set(split.values()) == {"train", "val", "test"}
    counts = pd.Series(split).value_counts()
    assert counts["train"] == 140 and counts["val"] == 30 and counts["test"] == 30
    assert split == split_by_formula(list(reversed(formulas)), (0.7, 0.15, 0.15), seed=1)
    assert split != split_by_formula(formulas, (0.7, 0.15, 0.15), seed=2)
    with pytest.raises(ValueError):
        split_by_formula(formulas, (0.5, 0.2, 0.2))


@pytest.mark.parametrize("structure, expected", [
    (rock_salt("Na", "Cl", 5.64), 6.0),
    (Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]), 8.0),
    (Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]]), 12.0),
    (cscl("Cs", "Cl", 4.12), 8.0),
    (Structure.from_spacegroup("Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]]), 4.0),
])
def test_mean_coordination_of_known_crystals(structure, expected):
    assert mean_coordination(structure) == pytest.approx(expected)


def test_mean_coordination_averages_over_sites():
    # rutile TiO2: Ti 6-fold, O 3-fold -> (2*6 + 4*3) / 6 = 4
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                       [[0, 0, 0], [0.3048, 0.3048, 0]])
    assert mean_coordination(rutile) == pytest.approx(4.0)


def test_polymorph_table_zero_mean_per_formula_split_by_formula_and_capped():
    rng = np.random.default_rng(0)
    formulas = [f"A{i}B" for i in range(60) for _ in range(1 + i % 4)] + ["Z"] * 15
    rows = pd.DataFrame({"material_id": [f"m{i}" for i in range(len(formulas))], "cif": "",
                         "energy": rng.normal(size=len(formulas)) + np.arange(len(formulas)) % 7, "formula": formulas,
                         "held_out": rng.random(len(formulas)) < 0.5})
    config = ProbeConfig(max_per_formula=5, max_rows=(60, 20, 20))
    table = polymorph_table(rows, config)
    sizes = table.groupby("formula").size()
    assert sizes.min() >= 2 and sizes.max() <= 5  # single-structure formulas out, big ones sampled
    assert "A0B" not in set(table["formula"])  # i % 4 == 0: one structure
    assert np.allclose(table.groupby("formula")["target"].mean(), 0.0, atol=1e-12)
    assert (table.groupby("formula")["split"].nunique() == 1).all()
    used = table["split"].value_counts()
    assert used["train"] <= 60 and 0 < used["val"] <= 20 and 0 < used["test"] <= 20
    # the target is the energy minus the mean of the formula's kept structures
    g = table[table["formula"] == "A3B"]
    assert np.allclose(g["target"], g["energy"] - g["energy"].mean())
    assert table.equals(polymorph_table(rows, config))  # seeded: the same table twice


def test_polymorph_probe_validates_and_tests_only_on_held_out_structures():
    formulas = [f"A{i}B" for i in range(40) for _ in range(4)]
    held = [k % 4 < (1 if i < 20 else 2) for i in range(40) for k in range(4)]  # A0B-A19B: one held-out row
    rows = pd.DataFrame({"material_id": [f"m{i}" for i in range(len(formulas))], "cif": "",
                         "energy": np.arange(len(formulas), dtype=float), "formula": formulas, "held_out": held})
    table = polymorph_table(rows, ProbeConfig(max_rows=(None, None, None)))
    evaluated = table[table["split"] != "train"]
    assert set(evaluated["material_id"]) <= set(rows.loc[rows["held_out"], "material_id"])
    assert set(evaluated["formula"]) == {f"A{i}B" for i in range(20, 40)}  # two held-out rows each
    assert set(table.loc[table["split"] == "train", "formula"]) == {f"A{i}B" for i in range(20)}
    assert (evaluated.groupby("formula").size() == 2).all()  # their training-file rows left out
    assert np.allclose(evaluated.groupby("formula")["target"].mean(), 0.0)
    assert 5 <= (evaluated.groupby("formula")["split"].first() == "val").sum() <= 15
    with pytest.raises(DataNotFoundError, match="held-out"):
        polymorph_table(rows.assign(held_out=False))


# --------------------------------------------------------------------------- built from data


def test_build_probes_writes_formula_split_tables_with_geometry_targets(tmp_path):
    data = toy_source(tmp_path)
    tasks, info = build_probes(data, tmp_path / "cache")
    assert [t.name for t in tasks] == [POLYMORPH, GEOMETRY]
    poly = {s: pd.read_csv(getattr(tasks[0], s), keep_default_na=False) for s in ("train", "val", "test")}
    geo = {s: pd.read_csv(getattr(tasks[1], s), keep_default_na=False) for s in ("train", "val", "test")}
    formulas = {s: set(df["formula"]) for s, df in poly.items()}
    assert not (formulas["train"] & formulas["val"] or formulas["train"] & formulas["test"]
                or formulas["val"] & formulas["test"])
    everything = pd.concat(poly.values())
    assert set(everything["formula"]) == {f"{a}{b}" for a, b in SALTS}  # lone formulas left out
    assert np.allclose(everything.groupby("formula")["target"].mean(), 0.0, atol=1e-9)
    cn = pd.concat(geo.values())["target"]
    assert set(np.round(cn, 6)) <= {4.0, 6.0, 8.0} and len(cn) == len(everything)
    assert info[POLYMORPH]["test"]["rows"] == len(poly["test"])
    again, _ = build_probes(data, tmp_path / "cache")  # cached: read back, not rebuilt
    assert again == tasks
    assert json.loads((tasks[0].train.parent.parent / "probes.json").read_text())["config"]["min_structures"] == 2


def test_probes_run_in_a_small_benchmark(tmp_path):
    data = toy_source(tmp_path)
    kwargs = dict(baselines=[], tables={"toy": element_table()}, quick=True, regressors=("ridge",),
                  poolings=("mean",), plots=False, progress=False, cache_dir=tmp_path / "cache", leakage=False)
    res = run_benchmark(data=data, out=tmp_path / "out", structure_baselines=("ace",), **kwargs)
    assert {POLYMORPH, GEOMETRY, "mp_e_form"} <= set(res.results["task"])
    picked = res.selected.set_index(["task", "representation"])
    assert (POLYMORPH, "ace") in picked.index and (GEOMETRY, "toy") in picked.index
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Probes: do structure vectors know more than the formula?" in report
    assert "### probes/geometry" in report and "reference" in report
    run_info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert run_info["probes"][POLYMORPH]["test"]["rows"] > 0
    none = run_benchmark(data=data, out=None, structure_baselines=(), probes=False, **kwargs)
    assert set(none.results["task"]) == {"mp_e_form"}
    only, _ = resolve_tasks(data, ["probes"], tmp_path / "cache")  # no carbon_24 here: the two probes
    assert [t.name for t in only] == [GEOMETRY, POLYMORPH]
