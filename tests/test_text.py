"""The canonical text form: round trips, canonicity, validity checks and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystext import check_text, structure_to_text, text_to_structure
from crystext.builtin import aflow_prototypes
from crystext.errors import (
    CIFParseError,
    DisorderError,
    EmptyStructureError,
    EncodingError,
    SpaceGroupError,
    UnknownElementError,
)
from crystext.inputs import to_structure
from crystext.settings import data_dir


def rocksalt() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _shared_cifs(name: str, n: int) -> list[str]:
    path = data_dir() / name / "test.csv"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path}: set CRYSTEXT_DATA")
    return pd.read_csv(path, nrows=n).cif.tolist()


@pytest.fixture(scope="module")
def prototypes() -> list[Structure]:
    out = []
    for _, s, _ in aflow_prototypes():
        if s.is_ordered:
            s = s.copy()
            s.remove_oxidation_states()
            out.append(s)
    return out


def test_text_form_layout():
    text = structure_to_text(rocksalt(), properties=True)
    lines = text.splitlines()
    assert lines[0] == "data_Na4Cl4"
    assert "_symmetry_space_group_name_H-M Fm-3m" in lines
    assert "_symmetry_Int_Tables_number 225" in lines
    assert "_chemical_formula_sum 'Na4 Cl4'" in lines
    assert "_chemical_formula_structural NaCl" in lines
    assert "_cell_length_a 5.6900" in lines
    assert "_atom_type_electronegativity" in text
    assert text.count("'x, y, z'") == 1 and "_symmetry_equiv_pos_as_xyz" in text
    sites = [line.split() for line in lines if line.startswith(("  Na ", "  Cl ")) and len(line.split()) == 7]
    assert [s[2] for s in sites] == ["4", "4"]  # asymmetric unit with multiplicities
    assert text.endswith("\n")


def test_round_trip_all_prototypes(prototypes):
    """Every AFLOW prototype (all crystal systems and many settings) comes back as itself."""
    matcher = StructureMatcher()
    failures = [
        s.composition.reduced_formula
        for s in prototypes
        if not matcher.fit(s, text_to_structure(structure_to_text(s)))
    ]
    assert len(failures) / len(prototypes) <= 0.005 * 3, failures
    systems = {SpacegroupAnalyzer(s, symprec=0.1).get_crystal_system() for s in prototypes}
    assert {"triclinic", "monoclinic", "hexagonal", "trigonal", "cubic"} <= systems


@pytest.mark.parametrize("name", ["perov_5", "carbon_24"])
def test_round_trip_shared_data(name):
    matcher = StructureMatcher()
    cifs = _shared_cifs(name, 60)
    ok = sum(
        matcher.fit(s, text_to_structure(structure_to_text(s)))
        for s in (Structure.from_str(c, fmt="cif") for c in cifs)
    )
    assert ok >= len(cifs) - 1


def test_text_is_canonical_under_rotation_translation_permutation():
    s = Structure.from_spacegroup(
        "P6_3/mmc", Lattice.hexagonal(3.21, 5.21), ["Mg"], [[1 / 3, 2 / 3, 0.25]]
    )
    s = Structure.from_spacegroup("Pnma", Lattice.orthorhombic(5.5, 7.7, 5.4), ["Ca", "Ti", "O", "O"],
                                  [[0.03, 0.25, 0.99], [0, 0, 0.5], [0.48, 0.25, 0.08], [0.29, 0.04, 0.71]])
    reference = structure_to_text(s)
    moved = s.copy()
    moved.translate_sites(range(len(moved)), [0.13, 0.27, 0.41])
    from pymatgen.core.operations import SymmOp

    rotated = s.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    rng = np.random.default_rng(0)
    permuted = Structure.from_sites([s[i] for i in rng.permutation(len(s))])
    for variant in (moved, rotated, permuted):
        assert structure_to_text(variant) == reference


@pytest.mark.parametrize("seed", range(4))
def test_distorted_crystal_gives_one_text_whatever_its_description(seed):
    """Atoms displaced well below symprec: spglib's own symmetrised positions depend on the input's
    origin and atom order at ~1e-5, enough to flip the 4th decimal; the text must not."""
    s = Structure.from_spacegroup("Pnma", Lattice.orthorhombic(10.3, 6.0, 4.7), ["Li", "Fe", "P", "O", "O", "O"],
                                  [[0, 0, 0], [0.2822, 0.25, 0.9747], [0.0948, 0.25, 0.4182],
                                   [0.0966, 0.25, 0.7428], [0.4571, 0.25, 0.2060], [0.1656, 0.0465, 0.2848]])
    rng = np.random.default_rng(seed)
    s = Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.003, (len(s), 3)), coords_are_cartesian=True)
    reference = structure_to_text(s)
    moved = Structure(s.lattice, s.species, s.frac_coords + rng.uniform(0, 1, 3))
    order = rng.permutation(len(s))
    permuted = Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order])
    supercell = s.copy()
    supercell.make_supercell([2, 1, 2])
    for variant in (moved, permuted, supercell):
        assert structure_to_text(variant) == reference


def test_p1_writes_every_site():
    s = rocksalt()
    text = structure_to_text(s, p1=True)
    assert "_symmetry_space_group_name_H-M P1" in text
    assert text.count(" 1  ") >= len(s)
    assert StructureMatcher().fit(s, text_to_structure(text))


def test_other_settings_are_read():
    s = Structure.from_spacegroup("P2_1/c", Lattice.monoclinic(5.1, 6.2, 7.3, 101.0), ["Zr", "O"],
                                  [[0.27, 0.04, 0.21], [0.07, 0.33, 0.34]])
    text = structure_to_text(s)
    assert "P2_1/c" in text
    full = text.replace("_symmetry_space_group_name_H-M P2_1/c", "_symmetry_space_group_name_H-M 'P 1 21/c 1'")
    assert StructureMatcher().fit(s, text_to_structure(full))
    # the rhombohedral setting of R-3m, as pymatgen names it
    rh = Structure.from_spacegroup("R-3m", Lattice.hexagonal(3.0, 14.0), ["Bi"], [[0, 0, 0.23]])
    prim = SpacegroupAnalyzer(rh).get_primitive_standard_structure()
    lat = prim.lattice
    lines = [
        "data_Bi2", "_symmetry_space_group_name_H-M R-3m:R",
        f"_cell_length_a {lat.a:.4f}", f"_cell_length_b {lat.b:.4f}", f"_cell_length_c {lat.c:.4f}",
        f"_cell_angle_alpha {lat.alpha:.4f}", f"_cell_angle_beta {lat.beta:.4f}", f"_cell_angle_gamma {lat.gamma:.4f}",
        "loop_", " _atom_site_type_symbol", " _atom_site_fract_x", " _atom_site_fract_y", " _atom_site_fract_z",
        "  Bi  {:.4f}  {:.4f}  {:.4f}".format(*prim[0].frac_coords),
    ]
    rebuilt = text_to_structure("\n".join(lines))
    assert len(rebuilt) == 2 and StructureMatcher().fit(prim, rebuilt)


def test_check_text_accepts_valid_text():
    report = check_text(structure_to_text(rocksalt()))
    assert report.valid, report.errors
    assert report.bond_length_score == 1.0


def test_each_check_fails_on_crafted_bad_text():
    good = structure_to_text(rocksalt())
    bad_formula = good.replace("data_Na4Cl4", "data_Na4Cl8")
    r = check_text(bad_formula)
    assert not r.formula_consistent and r.multiplicity_consistent and not r.valid

    bad_mult = good.replace("  Na  Na0  4", "  Na  Na0  8")
    r = check_text(bad_mult)
    assert not r.multiplicity_consistent and r.formula_consistent and not r.valid

    # every site of rocksalt written in P1: consistent sites, but the structure is really Fm-3m
    r = check_text(structure_to_text(rocksalt(), p1=True))
    assert not r.space_group_consistent and r.multiplicity_consistent and not r.valid

    squashed = good.replace("5.6900", "3.1000")
    r = check_text(squashed)
    assert not r.bond_lengths_reasonable and r.bond_length_score < 1 and not r.valid

    r = check_text("data_x\nnot a cif at all")
    assert not r.parsable and not r.valid and r.errors


def test_crystallm_verdict_is_looser_only_where_crystallm_is():
    good = structure_to_text(rocksalt())
    assert check_text(good).crystallm_valid
    # CrystaLLM compares reduced formulas: a data_ line in formula units passes there, not here
    r = check_text(good.replace("data_Na4Cl4", "data_NaCl"))
    assert not r.formula_consistent and r.reduced_formulas_agree and r.crystallm_valid and not r.valid
    # CrystaLLM only sums the stated multiplicities: a site claiming 8 where its orbit has 4, with
    # the formulas written to match the claim, passes there, not here
    r = check_text(good.replace("  Na  Na0  4", "  Na  Na0  8").replace("data_Na4Cl4", "data_Na8Cl4")
                   .replace("'Na4 Cl4'", "'Na8 Cl4'").replace("_structural NaCl", "_structural Na2Cl"))
    assert r.site_counts_add_up and not r.multiplicity_consistent and r.crystallm_valid and not r.valid
    # site counts that no longer add up to the formula fail both verdicts
    r = check_text(good.replace("  Na  Na0  4", "  Na  Na0  8"))
    assert not r.site_counts_add_up and not r.crystallm_valid
    # a different composition fails both
    r = check_text(good.replace("data_Na4Cl4", "data_Na4Cl8"))
    assert not r.reduced_formulas_agree and not r.crystallm_valid
    assert r.as_dict()["crystallm_valid"] is False


def test_bad_inputs_raise_named_errors(tmp_path):
    with pytest.raises(CIFParseError, match="unparsable|no data_|not a CIF"):
        to_structure("data_broken\n_cell_length_a abc\n_cell_length_b\n")
    with pytest.raises(CIFParseError):
        text_to_structure("_cell_length_a 3\n")
    with pytest.raises(EncodingError, match="not UTF-8"):
        to_structure(b"data_x\n_cell_length_a 3\xff\n")
    bad = tmp_path / "latin1.cif"
    bad.write_bytes("data_é\n".encode("latin-1"))
    with pytest.raises(EncodingError, match="latin1.cif"):
        to_structure(bad)
    with pytest.raises(EmptyStructureError):
        structure_to_text(Structure(Lattice.cubic(3), [], []))
    text = structure_to_text(rocksalt())
    with pytest.raises(UnknownElementError, match="Xx"):
        text_to_structure(text.replace("  Na  Na0", "  Xx  Xx0"))
    with pytest.raises(SpaceGroupError):
        text_to_structure(text.replace("Fm-3m", "Q9").replace("_symmetry_Int_Tables_number 225\n", ""))
    cif = rocksalt().to(fmt="cif").replace(" Na ", " Qq ")
    with pytest.raises(UnknownElementError):
        to_structure(cif)


def test_disorder_refused_by_default_and_resolved_on_request():
    s = Structure(Lattice.cubic(4.0), [{"Fe": 0.7, "Co": 0.3}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(DisorderError, match="partially occupied"):
        structure_to_text(s)
    text = structure_to_text(s, disorder="dominant")
    assert "_crystext_disorder dominant" in text and "Co" not in text.split("loop_")[-1]
    assert text_to_structure(text).composition.reduced_formula == "FeO"
    half = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}, {"Fe": 0.5, "Co": 0.5}], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ordered = structure_to_text(half, disorder="order")
    assert "_crystext_disorder order" in ordered
    assert text_to_structure(ordered).composition.reduced_formula == "FeCo"


def test_oversized_input_refused_before_symmetry_work(monkeypatch):
    import crystext.text as text_module
    from crystext.errors import StructureTooLargeError

    def no_symmetry(*args, **kwargs):
        raise AssertionError("symmetry analysis ran on an oversized input")

    monkeypatch.setattr(text_module, "_symmetrised_sites", no_symmetry)
    from ase.build import bulk

    big = bulk("NaCl", "rocksalt", a=5.69, cubic=True).repeat((20, 20, 20))  # (an Atoms builds fast)
    assert len(big) == 64_000
    with pytest.raises(StructureTooLargeError, match=r"NaCl-20x20x20: 64000 atoms is over the limit of 1000.*max_atoms="):
        structure_to_text(big, name="NaCl-20x20x20")
    with pytest.raises(StructureTooLargeError, match="8 atoms is over the limit of 2"):
        structure_to_text(rocksalt(), max_atoms=2)


def test_limits_none_or_zero_mean_no_limit_and_time_limit_applies(monkeypatch):
    import time

    import crystext.text as text_module
    from crystext.errors import RecordTimeoutError

    reference = structure_to_text(rocksalt())
    for limit in (None, 0):
        assert structure_to_text(rocksalt(), max_atoms=limit, time_limit=limit) == reference
    real = text_module._symmetrised_sites

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(text_module, "_symmetrised_sites", slow)
    with pytest.raises(RecordTimeoutError, match=r"rocksalt.cif: text conversion: gave up after 0.05 s.*time_limit="):
        structure_to_text(rocksalt(), time_limit=0.05, name="rocksalt.cif")
    for limit in (None, 0):
        assert structure_to_text(rocksalt(), time_limit=limit) == reference


def test_a_huge_cif_is_refused_from_its_site_rows_before_pymatgen_parses_it(tmp_path, monkeypatch):
    import pymatgen.io.cif

    from crystext.errors import StructureTooLargeError
    from crystext.inputs import cif_site_count

    rows = "".join(f"Na Na{i} {i / 2000:.5f} 0 0 1\n" for i in range(2000))
    cif = ("data_big\n_symmetry_space_group_name_H-M 'P 1'\n_cell_length_a 400\n_cell_length_b 4\n"
           "_cell_length_c 4\n_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\nloop_\n"
           " _atom_site_type_symbol\n _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n"
           " _atom_site_fract_z\n _atom_site_occupancy\n" + rows)
    assert cif_site_count(cif) == 2000
    (tmp_path / "big.cif").write_text(cif)

    def no_parse(*args, **kwargs):
        raise AssertionError("pymatgen should not parse an oversized CIF")

    monkeypatch.setattr(pymatgen.io.cif.CifParser, "from_str", no_parse)
    for given, label in ((cif, "CIF text"), (tmp_path / "big.cif", "big.cif"), (str(tmp_path / "big.cif"), "big.cif")):
        with pytest.raises(StructureTooLargeError, match=rf"{label}: 2000 atoms is over the limit of 1000"):
            structure_to_text(given)
