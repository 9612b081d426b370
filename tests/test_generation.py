"""Sampling from a run and the validity report of sampled text."""

from __future__ import annotations

import json

import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystext.cli import main
from crystext.errors import ConfigError
from crystext.generation import generate, validity_report
from crystext.modeling import build_model
from crystext.text import structure_to_text
from crystext.tokenization import load_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An (untrained) tiny run folder: enough to test sampling mechanics."""
    path = tmp_path_factory.mktemp("run")
    tok = load_tokenizer("crystext-cif")
    build_model("tiny", tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_generate_continues_the_prompt_reproducibly(run):
    texts = generate(run, prompt="data_Na4Cl4", n=3, max_new_tokens=12, seed=1, batch_size=2)
    assert len(texts) == 3 and all(t.startswith("data_Na4Cl4") for t in texts)
    assert texts == generate(run, prompt="data_Na4Cl4", n=3, max_new_tokens=12, seed=1, batch_size=2)
    assert texts != generate(run, prompt="data_Na4Cl4", n=3, max_new_tokens=12, seed=2, batch_size=2)
    longer = generate(run, prompt="data_Na4Cl4", n=3, max_new_tokens=40, seed=1, batch_size=2)
    assert all(b.startswith(a) for a, b in zip(texts, longer))  # same seed: the same samples, continued


def test_generate_rejects_bad_arguments(run, tmp_path):
    with pytest.raises(ConfigError, match="temperature"):
        generate(run, temperature=0)
    with pytest.raises(ConfigError, match="context"):
        generate(run, prompt="data_" + "1" * 1100, n=1)


def test_validity_report_counts_each_check():
    nacl = structure_to_text(Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"],
                                                       [[0, 0, 0], [0.5, 0.5, 0.5]]))
    cscl = structure_to_text(Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.12), ["Cs", "Cl"],
                                                       [[0, 0, 0], [0.5, 0.5, 0.5]]))
    wrong_formula = nacl.replace("data_Na4Cl4", "data_Na2Cl4", 1)
    assert wrong_formula != nacl
    report = validity_report([nacl, cscl, wrong_formula, "data_garbage\n_cell_length_a"])
    s = report.summary
    assert s["n"] == 4
    assert s["parsable"]["count"] == 3
    assert s["formula_consistent"]["count"] == 2
    assert s["space_group_consistent"]["count"] == 3
    assert s["valid"]["count"] == 2 and s["valid"]["rate"] == 0.5
    assert report.table["valid"].tolist() == [True, True, False, False]
    assert "formula" in report.table["errors"][2] and "unparsable" in report.table["errors"][3]
    assert "| valid | 2/4 | 0.500 | 0.150-0.850 |" in report.to_markdown()


def test_wilson_interval_known_values():
    from crystext.generation import wilson_interval

    low, high = wilson_interval(0, 32)
    assert low == 0.0 and high == pytest.approx(0.1072, abs=1e-4)
    low, high = wilson_interval(16, 32)
    assert (low, high) == (pytest.approx(0.3363, abs=1e-4), pytest.approx(0.6637, abs=1e-4))
    assert wilson_interval(32, 32)[1] == 1.0 and wilson_interval(32, 32)[0] == pytest.approx(0.8928, abs=1e-4)
    with pytest.raises(ConfigError, match="count 5 is not between 0 and n=4"):
        wilson_interval(5, 4)


def test_generate_cli_prints_a_validity_table(run, capsys):
    assert main(["generate", str(run), "--prompt", "data_Si", "-n", "2", "--max-new-tokens", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| parsable | " in out and "/2 |" in out


def test_generated_texts_on_stdout_are_a_file_text_check_reads_whole(run, tmp_path, capsys):
    """Without --quiet the texts go to stdout and the summary to stderr, so redirected output is a
    file of texts only: `text check` gives one verdict per sample."""
    assert main(["generate", str(run), "--prompt", "data_Na1Cl1", "--n", "2", "--max-new-tokens", "700",
                 "--constrained", "--top-k", "0"]) == 0
    captured = capsys.readouterr()
    assert "| parsable | " in captured.err and "| parsable | " not in captured.out
    samples = tmp_path / "samples.txt"
    samples.write_text(captured.out)
    main(["text", "check", str(samples)])
    verdicts = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(verdicts) == 2 and all(v["formula_consistent"] for v in verdicts)


@pytest.mark.parametrize("name", ["crystext-cif", "crystext-compact"])
def test_full_structures_forbid_the_header_only_branch_until_the_cell_is_written(name):
    from crystext.generation import CELL_DONE, HEADER_BRANCH, _NoHeaderOnly, line_start_token

    tok = load_tokenizer(name)
    vocab = tok.get_vocab()
    # the token each tokenizer starts those lines with (compact fuses the key with its space)
    banned, until = line_start_token(tok, HEADER_BRANCH), line_start_token(tok, CELL_DONE)
    header = tok("data_Na1Cl1\n_symmetry_space_group_name_H-M Fm-3m\n_symmetry_Int_Tables_number 225\n",
                 add_special_tokens=False)["input_ids"]
    assert banned in header and until is not None
    processor = _NoHeaderOnly(banned, until)
    ids = torch.tensor([[tok.bos_token_id, 5, 6], [tok.bos_token_id, until, 6]])
    scores = processor(ids, torch.zeros(2, len(vocab)))
    assert scores[0, banned] == float("-inf") and torch.isfinite(scores[0]).sum() == len(vocab) - 1
    assert torch.isfinite(scores[1]).all()  # the cell is written: the Int_Tables line may follow


def test_top_p_is_checked_and_changes_nothing_at_one(run):
    with pytest.raises(ConfigError, match="top_p"):
        generate(run, top_p=0)
    plain = generate(run, prompt="data_Si", n=2, max_new_tokens=8, seed=3, top_k=None)
    assert plain == generate(run, prompt="data_Si", n=2, max_new_tokens=8, seed=3, top_k=None, top_p=1.0)


def test_header_texts_stay_possible_on_request(run):
    prompt = "data_Na1Cl1\n_symmetry_space_group_name_H-M Fm-3m\n"
    free = generate(run, prompt=prompt, n=2, max_new_tokens=3, seed=0, full_structures=False)
    forced = generate(run, prompt=prompt, n=2, max_new_tokens=3, seed=0)
    assert all(t.startswith(prompt) for t in free + forced)
    assert not any(t[len(prompt):].startswith(HEADER) for t in forced for HEADER in ["_symmetry_Int_Tables_number"])


# --------------------------------------------------------------------------- prompts and constrained sampling

@pytest.mark.parametrize("prompt", ["data_NaCl", "data_NaCl\n", "data_Na4Cl\n"])
def test_a_data_line_without_counts_is_refused_with_the_form_to_use(run, prompt):
    with pytest.raises(ConfigError, match=r"has no count; the text form writes the cell composition with every "
                                          r"count \(e.g. data_Na"):
        generate(run, prompt=prompt, n=1, max_new_tokens=2)


@pytest.mark.parametrize("prompt", ["data_", "data_Na", "data_Na4Cl4", "data_Na4Cl"])
def test_prompts_the_model_can_continue_are_accepted(prompt):
    from crystext.generation import check_prompt

    check_prompt(prompt)  # no error: the model writes the missing count itself


def test_constrained_cli_writes_one_json_object_per_sample(run, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert main(["generate", str(run), "--prompt", "data_Na1Cl1", "--n", "2", "--max-new-tokens", "700",
                 "--constrained", "--top-k", "0", "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["constrained"] and r["prompt"] == "data_Na1Cl1" for r in rows)
    for r in rows:  # an untrained model, but the constraints leave it no way to break these
        assert r["text"].startswith("data_Na1Cl1\n_symmetry_space_group_name_H-M ")
        assert r["parsable"] and r["formula_consistent"] and r["multiplicity_consistent"], r["errors"]
        assert {"space_group_consistent", "bond_lengths_reasonable", "valid"} <= set(r)


def test_constrained_generate_refuses_impossible_prompts_before_sampling(run):
    with pytest.raises(ConfigError, match=r"Im-3m \(229\) cannot hold Na1Cl1"):
        generate(run, prompt="data_Na1Cl1\n_symmetry_space_group_name_H-M Im-3m\n", n=1, constrained=True)


# --------------------------------------------------------------------------- the bond-length check on real crystals

def _real(name: str) -> Structure:
    lattices = {
        "hcp Mg": Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.21, 5.21), ["Mg"], [[1 / 3, 2 / 3, 0.25]]),
        "bcc Fe": Structure.from_spacegroup("Im-3m", Lattice.cubic(2.87), ["Fe"], [[0, 0, 0]]),
        "diamond": Structure.from_spacegroup("Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]]),
        "fcc Cu": Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]]),
        "simple cubic Po": Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]]),
        "rutile TiO2": Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                                 [[0, 0, 0], [0.3049, 0.3049, 0]]),
        "wurtzite ZnO": Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.207), ["Zn", "O"],
                                                  [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]),
    }
    return lattices[name]


@pytest.mark.parametrize("name", ["hcp Mg", "bcc Fe", "diamond", "fcc Cu", "simple cubic Po", "rutile TiO2",
                                  "wurtzite ZnO"])
def test_real_crystals_pass_every_check(name):
    from crystext.text import check_text

    report = check_text(structure_to_text(_real(name)))
    assert report.valid, report.errors
    assert report.bond_length_score == 1.0


def test_bonds_to_an_atoms_own_images_are_skipped():
    """hcp Mg: each atom's six in-plane neighbours are its own images (one atom per orbit in a
    two-atom cell). Measured by minimum image they are 0 A long, which scored 0.5 before."""
    from crystext.text import bond_length_score, crystalnn_bonds, text_to_structure

    mg = text_to_structure(structure_to_text(_real("hcp Mg")))
    bonds = crystalnn_bonds(mg)
    self_images = [b for b in bonds if b[3]]
    assert len(self_images) == 12 and all(abs(b[2] - 3.21) < 1e-3 for b in self_images)  # true length, not 0
    assert len(bonds) == 24 and bond_length_score(mg) == 1.0


@pytest.mark.parametrize("name, squeeze", [("hcp Mg", 0.6), ("bcc Fe", 0.6), ("rutile TiO2", 1.6)])
def test_broken_crystals_still_fail_the_bond_check(name, squeeze):
    from crystext.text import check_text

    broken = _real(name).copy()
    broken.scale_lattice(broken.volume * squeeze ** 3)
    report = check_text(structure_to_text(broken))
    assert not report.bond_lengths_reasonable and not report.valid
    assert any(e.startswith("bond lengths: score") for e in report.errors)


def test_materials_project_structures_pass_every_check():
    """Structures of several space groups and element counts from the mp_e_form test split
    (DFT-relaxed): benchmarks/generation/check_real_structures.md measures 400 of them."""
    from crystext.inputs import to_structure
    from crystext.settings import data_dir
    from crystext.text import check_text

    root = data_dir()
    if root is None or not (root / "mp_e_form" / "test.csv").is_file():
        pytest.skip("shared data (mp_e_form) not available")
    import pandas as pd

    df = pd.read_csv(root / "mp_e_form" / "test.csv", nrows=60)
    picked = {}
    for cif, mid in zip(df.cif, df.material_id):
        text = structure_to_text(to_structure(cif))
        group = text.splitlines()[1].split()[-1]
        if group not in picked and len(to_structure(cif)) <= 24:
            picked[group] = (mid, text)
        if len(picked) == 6:
            break
    assert len(picked) >= 4
    for group, (mid, text) in picked.items():
        report = check_text(text)
        assert report.valid, (mid, group, report.errors)


def test_check_texts_checks_every_text_of_a_file(tmp_path, capsys):
    from crystext.text import check_texts

    good = structure_to_text(_real("bcc Fe"))
    bad = good.replace("data_Fe2", "data_Fe3", 1)
    reports = check_texts(good + bad + good)
    assert [r.valid for r in reports] == [True, False, True]
    path = tmp_path / "three.txt"
    path.write_text(good + bad + good)
    assert main(["text", "check", str(path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and '"index": 1' in lines[1] and '"valid": false' in lines[1]


def test_atoms_on_one_spot_fail_the_bond_check_though_crystalnn_sees_no_bond():
    """CrystalNN does not bond an atom to one sitting on it, so CrystaLLM's score alone passes two
    atoms 0 A apart (a constrained sample did this before the rule)."""
    from crystext.text import MIN_ATOM_DISTANCE, check_text, closest_distance, text_to_structure

    good = structure_to_text(Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"],
                                                       [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]))
    assert check_text(good).valid
    assert closest_distance(text_to_structure(good)) == pytest.approx(3.9 / 2)
    p1 = structure_to_text(Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O", "Ti"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                                      [0.05, 0, 0]]), p1=True)  # a second Ti 0.195 A from Sr
    assert MIN_ATOM_DISTANCE == 0.5
    report = check_text(p1)
    assert not report.bond_lengths_reasonable and not report.valid
    assert any("two atoms 0.195 A apart" in e for e in report.errors), report.errors
