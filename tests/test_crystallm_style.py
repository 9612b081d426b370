"""CrystaLLM interop: text in CrystaLLM's whitespace, read by (a re-implementation of) the
whitespace-dependent part of CrystaLLM's evaluation code, and read back by crystext; texts that
name only a space-group symbol in a non-default setting are rebuilt right or refused."""

from __future__ import annotations

import re

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from pymatgen.symmetry.groups import SpaceGroup

from crystext import check_text, structure_to_text, text_to_structure
from crystext.errors import SpaceGroupError
from crystext.text import parse_text

# CrystaLLM (lantunes/CrystaLLM, crystallm/_utils.py) expands the symmetry operations of a
# generated CIF by replacing exactly this block, in its own whitespace, with the operations of
# pymatgen's SpaceGroup(symbol); pymatgen then parses the CIF. Re-implemented here.
_CRYSTALLM_SYMOP_BLOCK = re.compile(r"(loop_\n_symmetry_equiv_pos_site_id\n_symmetry_equiv_pos_as_xyz\n1 'x, y, z')")
_CRYSTALLM_SYMBOL = re.compile(r"_symmetry_space_group_name_H-M\s+('([^']+)'|(\S+))")


def crystallm_expand(text: str) -> str:
    match = _CRYSTALLM_SYMBOL.search(text)
    ops = [op.as_xyz_str() for op in SpaceGroup(match.group(2) or match.group(3)).symmetry_ops]
    block = "loop_\n_symmetry_equiv_pos_site_id\n_symmetry_equiv_pos_as_xyz\n" + "\n".join(
        f"{i} '{op}'" for i, op in enumerate(ops, 1)
    )
    return _CRYSTALLM_SYMOP_BLOCK.sub(lambda _: block, text)


def perovskite() -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])


def diamond_origin1() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


def _text(symbol: str, lattice: Lattice, rows: list[str], header: list[str] | None = None) -> str:
    lines = [
        "data_X",
        f"_symmetry_space_group_name_H-M {symbol}",
        f"_cell_length_a {lattice.a:.4f}", f"_cell_length_b {lattice.b:.4f}", f"_cell_length_c {lattice.c:.4f}",
        f"_cell_angle_alpha {lattice.alpha:.4f}", f"_cell_angle_beta {lattice.beta:.4f}",
        f"_cell_angle_gamma {lattice.gamma:.4f}",
    ]
    return "\n".join(lines + (header or []) + rows) + "\n"


_SEMISYMMETRISED = ["loop_", "_symmetry_equiv_pos_site_id", "_symmetry_equiv_pos_as_xyz", "1 'x, y, z'"]
_SITES_WITH_MULT = ["loop_", "_atom_site_type_symbol", "_atom_site_label", "_atom_site_symmetry_multiplicity",
                    "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy"]
_SITES_PLAIN = ["loop_", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z"]


def test_crystallm_style_layout():
    text = structure_to_text(perovskite(), style="crystallm", properties=True)
    lines = text.splitlines()
    assert all(line == line.strip() and "  " not in line for line in lines)
    assert lines[0] == "data_Sr1Ti1O3" and lines[1] == "loop_" and lines[2] == "_atom_type_symbol"
    assert "1 'x, y, z'" in lines and "_chemical_formula_sum 'Sr1 Ti1 O3'" in lines
    # same content as the default style, only the whitespace and the property block's place differ
    default = structure_to_text(perovskite(), properties=True)
    assert sorted(" ".join(line.split()) for line in default.splitlines()) == sorted(lines)
    with pytest.raises(ValueError, match="style"):
        structure_to_text(perovskite(), style="cif")


def test_crystallm_code_expands_crystallm_style_to_every_atom():
    s = perovskite()
    expanded = crystallm_expand(structure_to_text(s, style="crystallm"))
    rebuilt = Structure.from_str(expanded, fmt="cif")
    assert len(rebuilt) == 5 and StructureMatcher().fit(s, rebuilt)
    # the default style's indentation escapes CrystaLLM's pattern: only the asymmetric unit is read
    default = structure_to_text(s)
    assert crystallm_expand(default) == default
    assert len(Structure.from_str(default, fmt="cif")) == 3


def test_round_trips_both_directions():
    matcher = StructureMatcher()
    s = Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.21, 5.21), ["Mg"], [[1 / 3, 2 / 3, 0.25]])
    for structure in (perovskite(), s, diamond_origin1()):
        cl = structure_to_text(structure, style="crystallm", properties=True)
        # crystext reads CrystaLLM-style text, and re-writing what it read gives the same text
        assert matcher.fit(structure, text_to_structure(cl))
        assert structure_to_text(text_to_structure(cl), style="crystallm", properties=True) == cl
        # CrystaLLM's reading of our text gives the same crystal, and crystext writes it back identically
        theirs = Structure.from_str(crystallm_expand(cl), fmt="cif")
        assert structure_to_text(theirs) == structure_to_text(structure)
        report = check_text(cl)
        assert report.formula_consistent and report.multiplicity_consistent and report.space_group_consistent
        assert parse_text(cl).items["_symmetry_space_group_name_H-M"] == SpacegroupAnalyzer(
            structure, symprec=0.1).get_space_group_symbol()


def test_fd3m_origin_choices():
    matcher = StructureMatcher()
    si = diamond_origin1()
    lat = si.lattice
    # crystext's own text (origin choice 1, spglib's default) comes back
    assert matcher.fit(si, text_to_structure(structure_to_text(si)))
    # origin choice 2 written with the bare symbol: the multiplicity (8) only fits origin 2
    o2 = _text("Fd-3m", lat, ["Si Si0 8 0.1250 0.1250 0.1250 1"], _SEMISYMMETRISED + _SITES_WITH_MULT)
    rebuilt = text_to_structure(o2)
    assert len(rebuilt) == 8 and matcher.fit(si, rebuilt)
    # named origin choices are followed
    assert matcher.fit(si, text_to_structure(_text("Fd-3m:2", lat, ["Si 0.125 0.125 0.125"], _SITES_PLAIN)))
    assert matcher.fit(si, text_to_structure(_text("Fd-3m:1", lat, ["Si 0 0 0"], _SITES_PLAIN)))
    # bare symbol, no multiplicities: 1/8,1/8,1/8 is diamond in origin 2 but a 16-atom crystal in
    # origin 1; neither is implied, so it is refused rather than guessed
    with pytest.raises(SpaceGroupError, match="origin choices.*Fd-3m:1 or Fd-3m:2"):
        text_to_structure(_text("Fd-3m", lat, ["Si 0.125 0.125 0.125"], _SITES_PLAIN))
    # ... and 0,0,0 in origin 2 would be a 16c site: stated multiplicity 8 picks origin 1
    o1 = _text("Fd-3m", lat, ["Si Si0 8 0.0000 0.0000 0.0000 1"], _SITES_WITH_MULT)
    assert matcher.fit(si, text_to_structure(o1))


def test_r3m_hexagonal_and_rhombohedral_axes():
    matcher = StructureMatcher()
    bi = Structure.from_spacegroup("R-3m", Lattice.hexagonal(4.55, 11.86), ["Bi"], [[0, 0, 0.2339]])
    assert matcher.fit(bi, text_to_structure(structure_to_text(bi)))
    prim = SpacegroupAnalyzer(bi).get_primitive_standard_structure()
    assert abs(prim.lattice.alpha - prim.lattice.gamma) < 1e-6 and prim.lattice.alpha != 90
    row = ["Bi {:.4f} {:.4f} {:.4f}".format(*prim[0].frac_coords)]
    for symbol in ("R-3m", "R-3m:R"):  # rhombohedral cell: the bare symbol follows the cell's axes
        rebuilt = text_to_structure(_text(symbol, prim.lattice, row, _SITES_PLAIN))
        assert len(rebuilt) == 2 and matcher.fit(bi, rebuilt)
    with pytest.raises(SpaceGroupError, match="hexagonal axes.*rhombohedral axes"):
        text_to_structure(_text("R-3m:H", prim.lattice, row, _SITES_PLAIN))
    with pytest.raises(SpaceGroupError, match="fits neither"):
        text_to_structure(_text("R-3m", Lattice.orthorhombic(4, 5, 6), row, _SITES_PLAIN))
