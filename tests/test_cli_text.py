"""``crystext text check`` and ``crystext text to-cif`` on files holding several crystal texts."""

from __future__ import annotations

import json
import warnings

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifParser

from crystext.cli import main
from crystext.text import structure_to_text

FE = structure_to_text(Structure.from_spacegroup("Im-3m", Lattice.cubic(2.87), ["Fe"], [[0, 0, 0]]))
NACL = structure_to_text(Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                                   [[0, 0, 0], [0.5, 0.5, 0.5]]))
UNPARSABLE = "data_Fe2\n_cell_length_a\n"


def _formulas(cif: str) -> list[str]:
    with warnings.catch_warnings():  # pymatgen checks every block of a multi-block CIF against the first's elements
        warnings.simplefilter("ignore")
        structures = CifParser.from_str(cif).parse_structures(primitive=False)
    return [s.composition.reduced_formula for s in structures]


def test_check_gives_one_verdict_per_text_and_fails_on_any_invalid(tmp_path, capsys):
    bad = FE.replace("data_Fe2", "data_Fe3", 1)
    path = tmp_path / "samples.txt"
    path.write_text("# sample 0\n" + FE + "\n# sample 1\n" + bad + NACL)
    assert main(["text", "check", str(path)]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["file"], r["index"], r["valid"]) for r in rows] == [(str(path), 0, True), (str(path), 1, False),
                                                                   (str(path), 2, True)]
    path.write_text(FE + NACL)
    assert main(["text", "check", str(path)]) == 0


def test_to_cif_writes_every_text_to_stdout(tmp_path, capsys):
    path = tmp_path / "two.txt"
    path.write_text(FE + "\n" + NACL)
    assert main(["text", "to-cif", str(path)]) == 0
    assert _formulas(capsys.readouterr().out) == ["Fe", "NaCl"]


def test_to_cif_one_text_is_unchanged_and_can_go_to_a_named_file(tmp_path, capsys):
    path = tmp_path / "fe.txt"
    path.write_text(FE)
    assert main(["text", "to-cif", str(path)]) == 0
    alone = capsys.readouterr().out
    assert _formulas(alone) == ["Fe"]
    assert main(["text", "to-cif", str(path), "--out", str(tmp_path / "fe.cif")]) == 0
    assert (tmp_path / "fe.cif").read_text() == alone
    assert "CIF written to" in capsys.readouterr().out


def test_to_cif_writes_one_numbered_file_per_text_into_a_folder(tmp_path):
    many, one = tmp_path / "many.txt", tmp_path / "one.txt"
    many.write_text(FE + NACL + FE)
    one.write_text(NACL)
    assert main(["text", "to-cif", str(many), str(one), "--out", str(tmp_path / "cifs")]) == 0
    written = sorted(p.name for p in (tmp_path / "cifs").iterdir())
    assert written == ["many-0.cif", "many-1.cif", "many-2.cif", "one.cif"]
    assert _formulas((tmp_path / "cifs" / "many-1.cif").read_text()) == ["NaCl"]


def test_to_cif_refuses_several_texts_for_one_cif_file(tmp_path, capsys):
    path = tmp_path / "two.txt"
    path.write_text(FE + NACL)
    assert main(["text", "to-cif", str(path), "--out", str(tmp_path / "x.cif")]) == 2
    err = capsys.readouterr().err
    assert "2 texts" in err and str(path) in err and "folder" in err
    assert not (tmp_path / "x.cif").exists()


def test_to_cif_names_each_text_it_cannot_rebuild_and_keeps_the_others(tmp_path, capsys):
    path = tmp_path / "mixed.txt"
    path.write_text(FE + UNPARSABLE + NACL)
    assert main(["text", "to-cif", str(path)]) == 1
    out, err = capsys.readouterr()
    assert _formulas(out) == ["Fe", "NaCl"]
    assert f"{path}, text 1 of 3" in err and "1 of 3 texts could not be rebuilt" in err


@pytest.mark.parametrize("content", ["", "no crystal here\n"])
def test_to_cif_of_a_file_without_a_text_is_an_error_naming_it(tmp_path, capsys, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    assert main(["text", "to-cif", str(path)]) == 1
    assert str(path) in capsys.readouterr().err
