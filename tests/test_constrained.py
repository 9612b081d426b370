"""Constrained decoding: Wyckoff tables, formula filling, the text-form parser and the logits processor."""

from __future__ import annotations

import re

import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystext import constrained as cons
from crystext.errors import ConfigError, UnknownElementError
from crystext.text import check_text, structure_to_text
from crystext.tokenization import load_tokenizer


def _with_computed_volume(text: str) -> str:
    """The text with ``_cell_volume`` as the constrained form writes it: computed from the
    written (rounded) cell, where the canonical text uses the unrounded one."""
    keys = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta",
            "_cell_angle_gamma")
    values = [float(re.search(k + r" (\S+)", text).group(1)) for k in keys]
    volume = Lattice.from_parameters(*values).volume
    return re.sub(r"_cell_volume \S+", f"_cell_volume {volume:.4f}", text)


NACL = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
MG = Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.21, 5.21), ["Mg"], [[1 / 3, 2 / 3, 0.25]])
RUTILE = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                   [[0, 0, 0], [0.3049, 0.3049, 0]])
BATIO3 = Structure.from_spacegroup("P4mm", Lattice.tetragonal(3.99, 4.03), ["Ba", "Ti", "O", "O"],
                                   [[0, 0, 0], [0.5, 0.5, 0.515], [0.5, 0.5, 0.0], [0.5, 0, 0.49]])


@pytest.mark.parametrize("number, fixed, free", [
    (225, ((4, 2), (8, 1), (24, 1)), {24, 32, 48, 96, 192}),  # Fm-3m: 4a 4b 8c 24d fixed; 24e ... 192l
    (194, ((2, 4), (6, 1)), {4, 6, 12, 24}),  # P6_3/mmc: 2a-2d, 6g fixed; 4e 4f 6h 12i-k 24l
    (2, ((1, 8),), {2}),  # P-1: eight inversion centres, general position 2i
    (1, (), {1}),
])
def test_wyckoff_multiplicities_match_the_international_tables(number, fixed, free):
    ops, got_fixed, got_free = cons.wyckoff_summary(number)
    assert got_fixed == fixed and got_free == free
    assert cons.summary(number) == (ops, fixed, frozenset(free))  # the shipped table agrees


@pytest.mark.parametrize("number", [12, 62, 139, 166, 227])
def test_shipped_wyckoff_table_matches_the_computation(number):
    assert cons.summary(number) == cons.wyckoff_summary(number)


def test_fillable_is_a_subset_sum_over_multiplicities():
    _, fixed, free = cons.summary(225)
    assert cons.fillable((4, 4), fixed, free)  # rock salt: 4a + 4b
    assert not cons.fillable((1, 1), fixed, free)  # nothing in Fm-3m has multiplicity 1
    assert not cons.fillable((4, 4, 4), fixed, free)  # only two orbits of multiplicity 4, used once each
    assert cons.fillable((4, 4, 8), fixed, free)  # 4a, 4b, 8c
    assert cons.fillable((1,), *cons.summary(1)[1:])
    assert 225 in cons.space_groups_for([4, 4]) and 225 not in cons.space_groups_for([1, 1])
    assert cons.space_groups_for([1, 1])[0] == 1


@pytest.mark.parametrize("structure", [NACL, MG, RUTILE, BATIO3], ids=["NaCl", "Mg", "rutile", "BaTiO3"])
def test_canonical_texts_are_inside_the_constrained_form(structure):
    text = _with_computed_volume(structure_to_text(structure))
    head, state = cons.start(text.splitlines()[0])
    assert text.startswith(head)
    end = cons.feed(state, text[len(head):])
    assert end is not None and cons.can_end(end)
    assert not cons.can_end(cons.feed(state, text[len(head):-30]))  # a text cut short may not end


def test_the_parser_refuses_what_the_constraints_rule_out():
    text = _with_computed_volume(structure_to_text(NACL))
    _, state = cons.start("data_Na4Cl4")
    body = text[len("data_Na4Cl4\n"):]
    assert cons.feed(state, body) is not None
    _, one_each = cons.start("data_Na1Cl1")
    assert cons.feed(one_each, "_symmetry_space_group_name_H-M Fm-3m\n") is None  # no multiplicity 1 in Fm-3m
    assert cons.feed(state, body.replace("_cell_length_b 5.6900", "_cell_length_b 5.7000")) is None  # cubic: b = a
    assert cons.feed(state, body.replace("Na  Na0  4", "Na  Na0  8")) is None  # Na has only 4 atoms
    assert cons.feed(state, body.replace("0.0000  0.0000  0.0000  1", "0.1000  0.0000  0.0000  1")) is None
    assert cons.feed(state, body.replace("_cell_formula_units_Z 4", "_cell_formula_units_Z 2")) is None
    assert cons.feed(state, body.replace("  Cl  Cl1", "  Na  Na1")) is None  # the elements in order
    assert cons.feed(state, body.replace("5.6900\n_cell_length_b", "5.69\n_cell_length_b")) is None  # 4 decimals


def test_a_second_site_may_not_sit_on_the_first():
    _, state = cons.start("data_Na4Cl4")
    head = _with_computed_volume(structure_to_text(NACL)).split("  Na  Na0")[0][len("data_Na4Cl4\n"):]
    state = cons.feed(state, head + "  Na  Na0  4  0.0000  0.0000  0.0000  1\n  Cl  Cl1  4  ")
    assert cons.feed(state, "0.0000  0.0000  0.0000  1\n") is None  # 4a is taken
    assert cons.can_end(cons.feed(state, "0.5000  0.5000  0.5000  1\n"))


@pytest.mark.parametrize("prompt, error, match", [
    ("hello", ConfigError, "starts with a data_ line"),
    ("data_Xx2O3", UnknownElementError, "unknown element 'Xx'"),
    ("data_Na2Cl", ConfigError, "counts on some elements only"),
    ("data_", ConfigError, "needs a composition"),
    ("data_Na1Cl1\n_symmetry_space_group_name_H-M Fm-3m\n", ConfigError,
     r"Fm-3m \(225\) cannot hold Na1Cl1: no sum of its Wyckoff multiplicities"),
    ("data_Na4Cl4\n_cell_length_a 5.0\n", ConfigError, "does not allow"),
])
def test_bad_prompts_are_refused_before_sampling(prompt, error, match):
    with pytest.raises(error, match=match):
        cons.start(prompt)


def test_a_reduced_formula_lets_the_model_choose_the_formula_units():
    head, state = cons.start("data_ClNa")
    assert head == "data_"
    assert cons.feed(state, "Na3Cl4\n") is None  # not a multiple of NaCl
    after = cons.feed(state, "Na4Cl4\n")
    assert after is not None and after[0].formula == (("Na", 4), ("Cl", 4))
    assert cons.start("data_Cl4Na4")[0] == "data_Na4Cl4\n"  # the text form's element order


@pytest.mark.parametrize("name", ["crystext-cif", "crystext-compact", "crystext-pair"])
def test_processor_allows_exactly_the_tokens_the_parser_accepts(name):
    tok = load_tokenizer(name)
    proc = cons.CrystalTextLogitsProcessor(tok, "data_Na4Cl4")
    ids = [tok.bos_token_id] + tok(proc.prompt, add_special_tokens=False)["input_ids"]
    scores = proc(torch.tensor([ids]), torch.zeros(1, len(tok)))
    allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    texts = {tok.decode([i]) for i in allowed}
    assert allowed and all("_symmetry_space_group_name_H-M".startswith(t) or
                           t.startswith("_symmetry_space_group_name_H-M ") for t in texts)
    assert tok.eos_token_id not in allowed
    # a whole canonical text is allowed token by token, and <eos> only at its end
    text = _with_computed_volume(structure_to_text(NACL))
    body = tok(text[len(proc.prompt):], add_special_tokens=False)["input_ids"]
    seq = list(ids)
    for t in body:
        row = proc(torch.tensor([seq]), torch.zeros(1, len(tok)))[0]
        assert torch.isfinite(row[t]), tok.decode(seq[len(ids):] + [t])
        assert not torch.isfinite(row[tok.eos_token_id])
        seq.append(t)
    final = proc(torch.tensor([seq]), torch.zeros(1, len(tok)))[0]
    assert torch.isfinite(final[tok.eos_token_id]) and torch.isfinite(final).sum() == 1
    assert proc.dead_rows == 0


def test_constrained_samples_of_an_untrained_model_pass_the_covered_checks(tmp_path):
    """An untrained model draws tokens almost at random: what it writes is valid only because the
    processor allows nothing else."""
    from crystext.generation import generate
    from crystext.modeling import build_model

    tok = load_tokenizer("crystext-compact")
    torch.manual_seed(0)
    model = build_model("tiny", tok, seed=0)
    texts = generate((model, tok), prompt="data_Li1F1", n=3, max_new_tokens=400, seed=0, top_k=None,
                     batch_size=3, constrained=True)
    for text in texts:
        report = check_text(text)
        assert report.parsable and report.formula_consistent and report.multiplicity_consistent, report.errors
        assert text.startswith("data_Li1F1\n_symmetry_space_group_name_H-M ")
