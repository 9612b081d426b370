"""Input handling: every bad input gets a crystext error naming it; CLI messages name CLI flags."""

from __future__ import annotations

import gzip
import warnings

import pytest
from pymatgen.core import Lattice, Structure

from crystext.errors import (
    CIFParseError,
    CrystextError,
    DisorderError,
    EmptyStructureError,
    EncodingError,
    RecordTimeoutError,
    StructureTooLargeError,
    UnknownElementError,
)
from crystext.inputs import (
    cli_mode,
    count_orderings,
    in_cli,
    item_name,
    option_hint,
    read_text_file,
    resolve_disorder,
    source_name,
    structure_from_cif,
    to_structure,
)

GOOD = """# written by hand
data_NaCl
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   5.64
_cell_length_b   5.64
_cell_length_c   5.64(2)
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
_symmetry_Int_Tables_number   1
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na  Na0  1  0.0  0.0  0.0  1
  Cl  Cl1  1  0.5  0.5  0.5  1
"""


def _rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _fcc_alloy(supercell=(1, 1, 1)) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    return s * list(supercell)


def test_good_cif_reads_from_text_bytes_path_and_gzip(tmp_path):
    path = tmp_path / "nacl.cif"
    path.write_text(GOOD)
    gz = tmp_path / "nacl.cif.gz"
    gz.write_bytes(gzip.compress(GOOD.encode()))
    for obj in (GOOD, GOOD.encode(), path, str(path), gz):
        s = to_structure(obj)
        assert s.composition.reduced_formula == "NaCl" and len(s) == 2
        assert s.lattice.c == pytest.approx(5.64)
    (tmp_path / "broken.cif.gz").write_bytes(b"not gzip")
    with pytest.raises(CIFParseError, match="broken.cif.gz: not a valid gzip file"):
        to_structure(tmp_path / "broken.cif.gz")


@pytest.mark.parametrize("content, says", [("", "the file is empty"), ("  \n\t\n", "the file holds only blank space")])
def test_empty_file_says_it_is_empty(tmp_path, content, says):
    path = tmp_path / "empty.cif"
    path.write_text(content)
    for obj in (path, str(path)):
        with pytest.raises(CIFParseError, match=f"{path}: {says}"):
            to_structure(obj)


def test_empty_and_blank_strings_are_not_paths():
    for text in ("", "   ", "\n\n"):
        with pytest.raises(CIFParseError, match="empty"):
            to_structure(text)
    with pytest.raises(CIFParseError, match="item 3: empty"):
        to_structure("", name=item_name(3))


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.cif: no such file"):
        to_structure(tmp_path / "nope.cif")
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: is a folder"):
        to_structure(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_text_file(tmp_path)
    # a long one-line string is not taken as a path (the OS would refuse the name)
    with pytest.raises(CIFParseError):
        to_structure("data_x " * 2000)


_BROKEN = {
    "truncated loop": (GOOD[: GOOD.index("  Na  Na0")] + "  Na  Na0  1  0.0\n", "unparsable CIF"),
    "no atom rows": (GOOD[: GOOD.index("  Na  Na0")], "unparsable CIF"),
    "no atom loop": (GOOD[: GOOD.index("loop_\n _atom_site_type_symbol")], "no atom sites"),
    "missing cell": (GOOD.replace("_cell_length_a   5.64\n", ""), "no _cell_length_a"),
    "word for a length": (GOOD.replace("_cell_length_a   5.64", "_cell_length_a   five"), "_cell_length_a 'five' is not a number"),
    "garbage coordinates": (GOOD.replace("0.5  0.5  0.5", "abc  0.5x  ???"), "unparsable CIF"),
    "zero length": (GOOD.replace("_cell_length_a   5.64", "_cell_length_a   0"), "not a positive length"),
    "negative length": (GOOD.replace("_cell_length_a   5.64", "_cell_length_a   -3"), "not a positive length"),
    "angle over 180": (GOOD.replace("_cell_angle_alpha   90", "_cell_angle_alpha   190"), "not an angle"),
    "nan coordinate": (GOOD.replace("0.5  0.5  0.5", "nan  0.5  0.5"), "unparsable CIF"),
    "header only": ("data_x\n", "unparsable CIF"),
    "no data block": ("_cell_length_a 3\nloop_\n_atom_site_label\nNa\n", "not a CIF"),
}


@pytest.mark.parametrize("case", sorted(_BROKEN))
def test_every_broken_cif_is_a_named_cif_parse_error(tmp_path, case):
    text, says = _BROKEN[case]
    with pytest.raises(CIFParseError, match=says) as err:
        to_structure(text, name="item 3")
    assert str(err.value).startswith("item 3: ")
    path = tmp_path / "broken.cif"
    path.write_text(text)
    with pytest.raises(CIFParseError) as err:
        to_structure(path)
    assert str(err.value).startswith(f"{path}: ")


def test_unknown_element_is_named():
    with pytest.raises(UnknownElementError, match="item 0: unknown element 'Xx'"):
        to_structure(GOOD.replace("  Na  Na0", "  Xx  Xx0"), name="item 0")


def test_quoted_labels_with_blanks_do_not_shift_columns():
    # pymatgen writes disordered sites with labels like 'Fe:0.5, Ni:0.5_1'
    s = structure_from_cif(_fcc_alloy().to(fmt="cif"))
    assert not s.is_ordered and len(s) == 4


def test_several_data_blocks_refused_unless_one_is_chosen():
    second = GOOD.replace("data_NaCl", "data_KCl").replace("Na", "K").replace("# written by hand\n", "")
    both = GOOD + second
    with pytest.raises(CIFParseError, match=r"holds 2 structures \(data_NaCl, data_KCl\).*block="):
        to_structure(both, name="two.cif")
    assert to_structure(both, block="KCl").composition.reduced_formula == "KCl"
    assert to_structure(both, block="data_NaCl").composition.reduced_formula == "NaCl"
    assert to_structure(both, block=1).composition.reduced_formula == "KCl"
    with pytest.raises(CIFParseError, match="no structure block data_LiF"):
        to_structure(both, block="LiF")
    # a publication block without atom sites next to one structure: the structure is used
    with_global = "data_global\n_publ_section_title 'Rock salt'\n" + GOOD
    assert to_structure(with_global).composition.reduced_formula == "NaCl"


def test_non_utf8_in_comments_is_read_with_a_warning(tmp_path):
    path = tmp_path / "latin1.cif"
    body = GOOD.encode().replace(b"# written by hand", b"# M\xfcller 1999")
    body = body.replace(b"_cell_length_a   5.64", b"_cell_length_a   5.64  # caf\xe9")
    path.write_bytes(body)
    with pytest.warns(UserWarning, match=rf"{path}: non-UTF-8 bytes in comments \(line 1, 4\)"):
        s = to_structure(path)
    assert s.composition.reduced_formula == "NaCl"
    with pytest.warns(UserWarning, match="bytes: non-UTF-8 bytes in comments"):
        to_structure(body)


def test_non_utf8_in_data_is_an_encoding_error_with_offset_and_line(tmp_path):
    path = tmp_path / "bad.cif"
    data = GOOD.encode().replace(b"data_NaCl", b"data_NaCl\xe9")
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(EncodingError, match=rf"{path}: not UTF-8 text \(byte 0xe9 at offset {offset}, line 2\)"):
        to_structure(path)
    # a '#' inside quotes is not a comment
    quoted = GOOD.encode().replace(b"'P 1'", b"'P #1\xe9'")
    with pytest.raises(EncodingError, match="line 3"):
        to_structure(quoted, name="q.cif")


def test_ase_atoms_without_a_cell_is_refused_clearly():
    from ase import Atoms
    from ase.build import bulk

    with pytest.raises(EmptyStructureError, match="Atoms: the Atoms have no full unit cell"):
        to_structure(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
    with pytest.raises(EmptyStructureError, match="item 2: the cell holds no atoms"):
        to_structure(Atoms(), name="item 2")
    assert to_structure(bulk("Cu", "fcc", a=3.6)).composition.reduced_formula == "Cu"


def test_option_hint_follows_cli_mode():
    assert not in_cli()
    assert option_hint("disorder", "dominant") == "disorder='dominant'"
    assert option_hint("max_atoms", 2000) == "max_atoms=2000"
    with cli_mode():
        assert in_cli()
        assert option_hint("disorder", "dominant") == "--disorder dominant"
        assert option_hint("max_atoms", 2000) == "--max-atoms 2000"
        assert option_hint("p1", True) == "--p1"
        assert option_hint("out", "a b") == "--out 'a b'"
        with cli_mode(False):
            assert option_hint("disorder", "order") == "disorder='order'"
    assert not in_cli()


def test_disorder_error_names_the_file_and_the_right_option(tmp_path):
    s = _rocksalt()
    s.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    path = tmp_path / "dis.cif"
    path.write_text(s.to(fmt="cif"))
    parsed = to_structure(path)
    assert source_name(parsed) == str(path)
    with pytest.raises(DisorderError, match=rf"^{path}: site 0 is partially occupied .*use disorder='dominant'"):
        resolve_disorder(parsed)
    with cli_mode(), pytest.raises(DisorderError, match=rf"^{path}: .*use --disorder dominant or --disorder order"):
        resolve_disorder(parsed)
    with pytest.raises(DisorderError, match="^item 4: "):
        resolve_disorder(s, name="item 4")


def test_count_orderings_known_values():
    assert count_orderings(_fcc_alloy()) == (6, 1)  # C(4, 2)
    assert count_orderings(_fcc_alloy((2, 1, 1))) == (70, 1)  # C(8, 4)
    one_site = Structure(Lattice.cubic(3), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    assert count_orderings(one_site) == (2, 2)  # needs two cells: Fe on one, Ni on the other
    vacancy = Structure(Lattice.cubic(3), [{"Li": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]) * [2, 2, 1]
    assert count_orderings(vacancy) == (6, 1)  # 2 Li on 4 sites
    thirds = Structure(Lattice.cubic(3), [{"Fe": 1 / 3, "Ni": 2 / 3}], [[0, 0, 0]])
    assert count_orderings(thirds) == (3, 3)
    doped = Structure(Lattice.cubic(3), [{"Fe": 0.97, "Ni": 0.03}], [[0, 0, 0]])
    assert count_orderings(doped) is None


def test_order_builds_the_supercell_it_needs():
    one_site = Structure(Lattice.cubic(3), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    ordered, how = resolve_disorder(one_site, "order")
    assert how == "order" and ordered.is_ordered
    assert ordered.composition.as_dict() == {"Fe": 1.0, "Ni": 1.0}
    assert ordered.lattice.volume == pytest.approx(2 * 27)
    vac = Structure(Lattice.cubic(3), [{"Li": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]) * [2, 2, 1]
    ordered, _ = resolve_disorder(vac, "order")
    assert ordered.composition.as_dict() == {"Li": 2.0, "O": 4.0}


def test_order_is_bounded_in_size_and_time():
    big = _fcc_alloy((2, 2, 2))  # 32 sites half Fe half Ni: C(32, 16) = 6e8 arrangements
    with pytest.raises(StructureTooLargeError, match=r"alloy: ordering .* 6\.01e\+08 arrangements.*use disorder='dominant' or raise max_orderings"):
        resolve_disorder(big, "order", name="alloy")
    with cli_mode(), pytest.raises(StructureTooLargeError, match="use --disorder dominant$"):
        resolve_disorder(big, "order", name="alloy")
    with pytest.raises(StructureTooLargeError, match="alloy: the 1-cell ordering supercell: 4 atoms is over the limit of 3"):
        resolve_disorder(_fcc_alloy(), "order", name="alloy", max_atoms=3)
    doped = Structure(Lattice.cubic(3), [{"Fe": 0.97, "Ni": 0.03}], [[0, 0, 0]])
    with pytest.raises(DisorderError, match="more than 8 cells"):
        resolve_disorder(doped, "order")
    medium = _fcc_alloy((2, 2, 1))  # 16 sites: 12,870 arrangements, several seconds of Ewald ordering
    with pytest.raises(RecordTimeoutError, match="medium: ordering the partially occupied sites: gave up after 0.3 s"):
        resolve_disorder(medium, "order", name="medium", max_orderings=None, time_limit=0.3)


def test_all_input_errors_are_crystext_errors_or_os_errors(tmp_path):
    bad = [b"\xff\xfe", "", "data_x\n", GOOD.replace("Na  Na0", "Qq  Qq0"), tmp_path, tmp_path / "missing.cif"]
    for obj in bad:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises((CrystextError, OSError)):
                to_structure(obj)


def test_poscar_json_and_other_files(tmp_path):
    s = _rocksalt()
    (tmp_path / "POSCAR").write_text(s.to(fmt="poscar"))
    (tmp_path / "nacl.vasp").write_text(s.to(fmt="poscar"))
    (tmp_path / "nacl.json").write_text(s.to(fmt="json"))
    for name in ("POSCAR", "nacl.vasp", "nacl.json"):
        assert to_structure(tmp_path / name).composition.reduced_formula == "NaCl"
    (tmp_path / "CONTCAR").write_text("not a poscar\n")
    with pytest.raises(CIFParseError, match="CONTCAR: unparsable POSCAR"):
        to_structure(tmp_path / "CONTCAR")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(CIFParseError, match="bad.json: not a pymatgen Structure JSON"):
        to_structure(tmp_path / "bad.json")
    (tmp_path / "nacl.xyz").write_text("2\n\nNa 0 0 0\nCl 2.8 0 0\n")
    with pytest.raises(CIFParseError, match="nacl.xyz: not a CIF .*POSCAR"):
        to_structure(tmp_path / "nacl.xyz")


def test_nan_coordinates_are_refused():
    d = _rocksalt().as_dict()
    d["sites"][0]["abc"] = [float("nan"), 0.0, 0.0]
    with pytest.raises(CIFParseError, match="item 1: .*NaN"):
        to_structure(d, name="item 1")


def test_occupancies_rounded_in_the_cif_are_accepted_too_large_refused():
    shared = GOOD.replace("  Na  Na0  1  0.0  0.0  0.0  1", "  Na  Na0  1  0.0  0.0  0.0  0.667\n  K  K0  1  0.0  0.0  0.0  0.334")
    s = to_structure(shared)
    assert not s.is_ordered and sum(s[0].species.values()) == pytest.approx(1.0)
    with pytest.raises(CIFParseError, match="x.cif: unparsable CIF .*add up to 1.05, more than 1"):
        to_structure(GOOD.replace("0.5  0.5  0.5  1", "0.5  0.5  0.5  1.05"), name="x.cif")


def test_structure_json_text_and_bytes():
    text = _rocksalt().to(fmt="json")
    assert to_structure(text).composition.reduced_formula == "NaCl"
    assert to_structure(text.encode()).composition.reduced_formula == "NaCl"
    with pytest.raises(CIFParseError, match="item 5: not a pymatgen Structure JSON"):
        to_structure('{"lattice": 3}', name="item 5")


def test_one_line_file_or_bytes_is_parsed_not_taken_for_a_path(tmp_path):
    path = tmp_path / "short.cif"
    path.write_text("data_x")
    with pytest.raises(CIFParseError, match=f"{path}: unparsable CIF"):
        to_structure(path)
    with pytest.raises(CIFParseError, match="bytes: unparsable CIF"):
        to_structure(b"data_x")
    with pytest.raises(CIFParseError, match="bytes: empty"):
        to_structure(b"  ")


def _symbol_only_cif(symbol: str, x: float) -> str:
    return (f"data_Si\n_symmetry_space_group_name_H-M '{symbol}'\n_cell_length_a 5.43\n_cell_length_b 5.43\n"
            "_cell_length_c 5.43\n_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
            "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
            f"_atom_site_fract_z\n_atom_site_occupancy\nSi1 Si {x} {x} {x} 1\n")


@pytest.mark.parametrize("symbol, x", [("Fd-3m:1", 0.0), ("Fd-3m:2", 0.125), ("F d -3 m :2", 0.125)])
def test_symbol_only_cif_in_a_named_origin_is_rebuilt_right(symbol, x):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    from crystext.inputs import structure_from_cif

    diamond = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    got = structure_from_cif(_symbol_only_cif(symbol, x), name="si.cif")
    assert len(got) == 8 and StructureMatcher().fit(got, diamond)  # pymatgen alone gave 1 atom


@pytest.mark.parametrize("x", [0.0, 0.125])
def test_symbol_only_cif_with_an_ambiguous_origin_is_refused_not_guessed(x):
    from crystext.errors import SpaceGroupError
    from crystext.inputs import structure_from_cif

    # pymatgen alone rebuilt x=0.125 (origin 2 coordinates) with 16 atoms: a wrong crystal
    with pytest.raises(SpaceGroupError, match=r"si\.cif: .*origin choices.*Fd-3m:2"):
        structure_from_cif(_symbol_only_cif("Fd-3m", x), name="si.cif")


@pytest.mark.parametrize("style", ["default", "crystallm"])
def test_crystal_text_read_as_cif_keeps_every_atom(style):
    """crystext / CrystaLLM text lists the asymmetric unit with an identity-only operation loop;
    read as a CIF it must be expanded by its space group (pymatgen alone returned 2 of the 6 atoms
    of I4/mmm MoSi2), giving what crystext's own reader gives."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    from crystext.text import structure_to_text, text_to_structure

    mosi2 = Structure.from_spacegroup("I4/mmm", Lattice.tetragonal(3.2, 7.85), ["Mo", "Si"],
                                      [[0, 0, 0], [0, 0, 0.3353]])
    text = structure_to_text(mosi2, style=style)
    assert "x, y, z" in text and " 4 " in text  # identity only, multiplicity 4
    got = to_structure(text)
    assert len(got) == len(text_to_structure(text)) == len(mosi2) == 6
    assert StructureMatcher().fit(got, mosi2)
