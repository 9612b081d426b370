"""Sampling from a run and the validity report of sampled text."""

from __future__ import annotations

import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystext.cli import main
from crystext.errors import ConfigError
from crystext.generation import generate, validity_report
from crystext.modeling import build_model
from crystext.text import structure_to_text
from crystext.tokenization import load_tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An (untrained) tiny run folder: enough to test sampling mechanics."""
    path = tmp_path_factory.mktemp("run")
    tok = load_tokenizer("crystext-cif")
    build_model("tiny", tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_generate_continues_the_prompt_reproducibly(run):
    texts = generate(run, prompt="data_NaCl", n=3, max_new_tokens=12, seed=1, batch_size=2)
    assert len(texts) == 3 and all(t.startswith("data_NaCl") for t in texts)
    assert texts == generate(run, prompt="data_NaCl", n=3, max_new_tokens=12, seed=1, batch_size=2)
    assert texts != generate(run, prompt="data_NaCl", n=3, max_new_tokens=12, seed=2, batch_size=2)
    longer = generate(run, prompt="data_NaCl", n=3, max_new_tokens=40, seed=1, batch_size=2)
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
