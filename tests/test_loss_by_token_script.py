"""benchmarks/training/loss_by_token.py: characters classed by the text form, losses shared across tokenizers."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystext.text import structure_to_text
from crystext.tokenization import build_tokenizer


@pytest.fixture(scope="module")
def lbt(benchmark_script):
    return benchmark_script("training/loss_by_token.py")


@pytest.fixture(scope="module")
def text() -> str:
    """Wurtzite-like ZnO: Zn at (1/3, 2/3, 0), O at (1/3, 2/3, u) with a general z."""
    s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                  [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.3821]])
    return structure_to_text(s)


def _chars(lbt, text: str, cls: str) -> str:
    classes, _ = lbt.char_classes(text)
    return "".join(c for c, k in zip(text, classes) if k == lbt.C[cls])


def test_characters_get_their_kind_from_the_grammar(lbt, text):
    classes, counts = lbt.char_classes(text)
    assert len(classes) == len(text)
    assert counts["sites"] == 2 and counts["cell_length"] == 3 and counts["cell_angle"] == 3
    # six coordinates: five special (1/3, 2/3, 1/2 ...), one general (a z; the canonical origin picks
    # which atom holds it), whose four decimals are d1..d4
    assert counts["coord_general"] == 1 and counts["coord_special"] == 5
    rows = [line.split() for line in text.splitlines() if line.startswith("  ") and len(line.split()) == 7]
    z = next(v for row in rows for v in row[3:6] if v not in lbt.SPECIAL)
    assert _chars(lbt, text, "coord_d1") + _chars(lbt, text, "coord_d2") == z[2:4]
    assert _chars(lbt, text, "coord_d4") == z[5]
    assert set(_chars(lbt, text, "element")) <= set("ZnO") and counts["elements"] >= 8
    assert _chars(lbt, text, "space_group") == "P6_3mc"
    assert _chars(lbt, text, "cell_angle") == "900000900000120" + "0000"


def test_a_tokens_loss_is_shared_among_its_informative_characters(lbt):
    classes = np.array([lbt.C["syntax"], lbt.C["syntax"], lbt.C["coord_d1"], lbt.C["coord_d2"]], dtype=np.int8)
    out = lbt.attribute(np.array([1.0, 4.0]), [(0, 2), (1, 4)], classes)
    assert out[lbt.C["syntax"]] == 1.0  # a token of only syntax characters
    assert out[lbt.C["coord_d1"]] == out[lbt.C["coord_d2"]] == 2.0  # the space shares nothing


@pytest.mark.parametrize("kind", ["cif", "compact", "pair"])
def test_every_tokenizer_attributes_the_whole_loss(lbt, text, kind):
    """Whatever the tokens, each class total adds up to the document's loss (here 1 nat per token)."""
    tok = build_tokenizer(kind)
    enc = tok(text, return_offsets_mapping=True)
    classes, _ = lbt.char_classes(text)
    losses = np.ones(len(enc["input_ids"]) - 1)
    out = lbt.attribute(losses, enc["offset_mapping"][1:], classes)
    assert out.sum() == pytest.approx(len(losses))
    assert out[lbt.C["coord_d1"]] > 0 and out[lbt.C["element"]] > 0


def test_summary_per_general_coordinate_is_against_the_count_of_coordinates(lbt):
    nats = np.zeros(len(lbt.CLASSES))
    for c in ("coord_d1", "coord_d2", "coord_d3", "coord_d4"):
        nats[lbt.C[c]] = 2.0
    totals = {"coord_general": 4, "coord_special": 1, "elements": 1, "cell_length": 1, "cell_angle": 1}
    row = lbt.summarise(nats, totals, n_docs=2, tokens=10)
    assert row["general_coord_nats"] == pytest.approx(2.0) and row["coord_d1"] == pytest.approx(0.5)
    assert row["nats_per_doc"] == pytest.approx(4.0) and row["general_share"] == pytest.approx(1.0)


def test_documents_a_compared_run_was_pretrained_on_are_known(lbt, text, tmp_path):
    """The measured documents leave out every text in a compared run's corpus identity (its own and
    its init runs'), so the figures are on documents no compared run has read."""
    from crystext.corpus.identity import IDENTITY_FILE, identity_bytes, text_hash

    run = tmp_path / "run"
    run.mkdir()
    (run / IDENTITY_FILE).write_bytes(identity_bytes({"formulas": ["ZnO"], "structure_text_sha1": [text_hash(text)]}))
    empty = tmp_path / "bare"
    empty.mkdir()
    assert lbt._trained_on([str(run), str(empty)], tmp_path) == {text_hash(text)}


def test_the_paired_comparison_knows_which_run_reads_better(lbt):
    other = np.linspace(100.0, 300.0, 200)
    better = lbt.paired_difference(other - 10.0 + np.sin(np.arange(200)), other, seed=0)
    assert better["mean"] == pytest.approx(-10.0, abs=0.2)
    assert better["low"] < better["mean"] < better["high"] < 0 and better["share_better"] == 1.0
    tie = lbt.paired_difference(other + np.where(np.arange(200) % 2, 5.0, -5.0), other, seed=0)
    assert tie["low"] < 0 < tie["high"] and tie["share_better"] == 0.5
