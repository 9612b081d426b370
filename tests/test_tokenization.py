"""The crystext tokenizers: vocabulary, exact round trips on real text, loading, checks and errors."""

from __future__ import annotations

import json
import re
import warnings

import pandas as pd
import pytest
from pymatgen.core import Element, Lattice, Structure

from crystext.builtin import aflow_prototypes
from crystext.errors import DataNotFoundError, TokenizerError
from crystext.settings import data_dir
from crystext.spacegroups import symbols
from crystext.text import structure_to_text
from crystext.tokenization import (
    KINDS,
    PythonRegexTokenizer,
    build_tokenizer,
    builtin_dir,
    element_token_ids,
    encode_batch,
    encode_checked,
    load_tokenizer,
    save_tokenizer,
    spacegroup_token_ids,
)

SG_KEY = "_symmetry_space_group_name_H-M"


@pytest.fixture(scope="module", params=KINDS)
def tok(request):
    return build_tokenizer(request.param)


@pytest.fixture(scope="module")
def cif():
    return build_tokenizer("cif")


@pytest.fixture(scope="module")
def compact():
    return build_tokenizer("compact")


def rocksalt() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def disordered() -> Structure:
    s = Structure(Lattice.cubic(2.9), [{"Fe": 0.5, "Co": 0.5}, "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.make_supercell([2, 1, 1])
    return s


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real texts of every shape the text form writes: symmetrised (all crystal systems,
    hexagonal/trigonal settings included), with the property block, in P1, and disordered."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _, s, _ in aflow_prototypes()[::2]:
            if not s.is_ordered:
                continue
            out += [structure_to_text(s), structure_to_text(s, properties=True), structure_to_text(s, p1=True)]
        out += [structure_to_text(disordered(), disorder=d, properties=True) for d in ("dominant", "order")]
    return out


def _shared_texts(name: str, n: int = 120) -> list[str]:
    path = data_dir() / name / "val.csv"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path}: set CRYSTEXT_DATA to the folder holding {name}/")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [structure_to_text(Structure.from_str(c, fmt="cif")) for c in pd.read_csv(path, nrows=n).cif]


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_holds_elements_digits_specials_and_space_groups(tok):
    vocab = tok.get_vocab()
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    elements = element_token_ids(tok)
    assert list(elements) == [Element.from_Z(z).symbol for z in range(1, 119)]
    assert all(elements[sym] == vocab[sym] == z + 3 for z, sym in enumerate(elements, start=1))
    assert all(d in vocab for d in "0123456789")
    sgs = spacegroup_token_ids(tok)
    assert set(sgs) == set(symbols()) and len(set(sgs.values())) == 230
    clash = set(sgs.values()) & (set(elements.values()) | {vocab[d] for d in "0123456789"})
    assert not clash


def test_space_group_is_one_token_distinct_from_element_and_digits(tok):
    """P1 is not P + 1, and the space group Pm is not the element promethium."""
    sgs = spacegroup_token_ids(tok)
    for sym in ("P1", "Pm", "Cm", "Pm-3m", "P6_3/mmc", "P4_222", "P6", "P432", "R-3c"):
        ids = tok(f"data_Pm2\n{SG_KEY} {sym}\n", add_special_tokens=False)["input_ids"]
        assert sgs[sym] in ids and tok.convert_tokens_to_ids("P") not in ids[5:]
    ids = tok(f"data_Pm1\n{SG_KEY} Pm\n_chemical_formula_structural Pm\n", add_special_tokens=False)["input_ids"]
    assert ids.count(sgs["Pm"]) == 1 and ids.count(element_token_ids(tok)["Pm"]) == 2


def test_data_line_and_site_labels_are_element_and_digit_tokens(cif, compact):
    text = structure_to_text(rocksalt())
    for tok in (cif, compact):
        tokens = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
        assert tokens[:6] == ["data_", "Na", "4", "Cl", "4", "\n"]
    tokens = cif.convert_ids_to_tokens(cif(text, add_special_tokens=False)["input_ids"])
    row = tokens[tokens.index(" _atom_site_occupancy\n") + 1 :][:6]
    assert row == ["  ", "Na", "  ", "Na", "0", "  "]  # label Na0 = element + digit
    tokens = compact.convert_ids_to_tokens(compact(text, add_special_tokens=False)["input_ids"])
    assert "  Na" in tokens and "Na0" not in tokens
    row = tokens[tokens.index("  Cl") :][:12]  # "  Cl  Cl1  4  0.0000  0.0000  0.5000  1\n"
    assert row == ["  Cl", "  Cl", "1", "  4", "  0", ".0000", "  0", ".0000", "  0", ".5000", "  1", "\n"]


# --------------------------------------------------------------------------- exact round trips


def test_decode_encode_is_identity_on_real_texts(tok, texts):
    vocab_bos, vocab_eos = tok.bos_token, tok.eos_token
    batch = tok(texts)["input_ids"]
    assert batch == encode_batch(tok, texts)
    for text, ids in zip(texts, batch):
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(ids) == vocab_bos + text + vocab_eos
        assert encode_checked(tok, text) == ids
    assert any("_atom_type_electronegativity" in t for t in texts)
    assert any("_crystext_disorder order" in t for t in texts) and any("dominant" in t for t in texts)


def test_python_regex_oracle_agrees(tok, texts):
    """The CrystaLLM-style Python tokenizer over the same vocabulary gives the same ids."""
    oracle = PythonRegexTokenizer(tok)
    assert oracle(texts) == tok(texts)["input_ids"]
    assert oracle.decode(oracle.encode(texts[0])) == texts[0]
    assert oracle.tokenize(texts[1]) == tok.convert_ids_to_tokens(tok(texts[1], add_special_tokens=False)["input_ids"])


def test_crystallm_style_baseline_agrees(cif, texts):
    style = PythonRegexTokenizer(cif, crystallm_style=True)
    assert style(texts[:30]) == cif(texts[:30])["input_ids"]


@pytest.fixture(scope="module")
def pair():
    return build_tokenizer("pair")


@pytest.mark.parametrize("name", ["perov_5", "carbon_24"])
def test_shared_corpora_have_no_unknown_tokens(name, cif, compact, pair):
    texts = _shared_texts(name)
    for tok in (cif, compact, pair):
        ids = tok(texts)["input_ids"]
        assert sum(i.count(tok.unk_token_id) for i in ids) == 0
        assert tok.batch_decode(ids, skip_special_tokens=True) == texts
        assert PythonRegexTokenizer(tok)(texts) == ids


def test_compact_cuts_tokens_per_structure(cif, compact, texts):
    n_cif = sum(map(len, encode_batch(cif, texts)))
    n_compact = sum(map(len, encode_batch(compact, texts)))
    assert n_compact < 0.5 * n_cif


def test_prompt_at_line_boundary_tokenizes_as_prefix(tok, texts):
    """A prompt cut at the end of a line gets the tokens the full text starts with."""
    blocks = [t for t in tok.get_vocab() if t.startswith("loop_\n ")]
    for text in (texts[0], texts[1], texts[-1]):
        full = tok(text, add_special_tokens=False)["input_ids"]
        for m in re.finditer("\n", text):
            k = m.end()
            inside = any(b in text and text.index(b) < k < text.index(b) + len(b) for b in blocks)
            if not inside:
                part = tok(text[:k], add_special_tokens=False)["input_ids"]
                assert full[: len(part)] == part, repr(text[:k][-40:])


# --------------------------------------------------------------------------- loading and saving


def test_builtin_folders_match_a_fresh_build_and_load_with_autotokenizer(monkeypatch, texts):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for kind in KINDS:
        folder = builtin_dir(f"crystext-{kind}")
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in config
        built = build_tokenizer(kind)
        saved = json.loads((folder / "tokenizer.json").read_text())
        fresh = json.loads(built.backend_tokenizer.to_str())
        assert saved == fresh, f"{folder} is stale: run crystext tokenizer build --kind {kind}"
        auto = AutoTokenizer.from_pretrained(str(folder))
        assert auto(texts[:20])["input_ids"] == built(texts[:20])["input_ids"]
        assert auto.model_max_length == 1024 and auto.pad_token == "<pad>"
        assert load_tokenizer(f"crystext-{kind}")(texts[0])["input_ids"] == auto(texts[0])["input_ids"]


def test_save_and_reload_round_trip(tmp_path, compact, texts):
    folder = save_tokenizer(compact, tmp_path / "tok")
    assert {p.name for p in folder.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    again = load_tokenizer(folder)
    assert again(texts[:10])["input_ids"] == compact(texts[:10])["input_ids"]
    assert again.decode(again(texts[3])["input_ids"], skip_special_tokens=True) == texts[3]


def test_batch_padding_uses_pad_token(cif, texts):
    batch = cif(texts[:4], padding=True)
    lengths = {len(ids) for ids in batch["input_ids"]}
    assert len(lengths) == 1 and "token_type_ids" not in batch
    shortest = min(range(4), key=lambda i: sum(batch["attention_mask"][i]))
    assert batch["input_ids"][shortest][-1] == cif.pad_token_id and batch["attention_mask"][shortest][-1] == 0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "bad, message",
    [
        ("data_Na1\t\n", "'\\\\t'"),
        ("data_Nä1\n", "'ä'"),
        ("data_Na1\r\n_cell_length_a 1.0\r\n", "'\\\\r'"),
        (f"data_Na1\n{SG_KEY} P 1 21/c 1\n", "space group 'P 1 21/c 1'"),
        ("data_Na1\n_cell_colour blue\n", "keyword '_cell_colour'"),
    ],
)
def test_encode_checked_refuses_what_it_cannot_represent(tok, bad, message):
    with pytest.raises(TokenizerError, match=message):
        encode_checked(tok, bad)


def test_unknown_kind_and_missing_tokenizers_raise(tmp_path):
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'bpe'"):
        build_tokenizer("bpe")
    with pytest.raises(DataNotFoundError, match="not a Hub id"):
        load_tokenizer("no such tokenizer")  # not a valid repo id: refused without the network
    with pytest.raises(DataNotFoundError, match="no such folder"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(DataNotFoundError, match="holds no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_element_token_ids_refuses_a_tokenizer_without_elements():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")), unk_token="<unk>"
    )
    with pytest.raises(TokenizerError, match="no token for 94 elements"):
        element_token_ids(plain)
    with pytest.raises(TokenizerError, match="space groups"):
        spacegroup_token_ids(plain)


# --------------------------------------------------------------------------- command line


def test_cli_build_and_encode(tmp_path, capsys):
    from crystext.cli import main

    assert main(["tokenizer", "build", "--kind", "compact", "--out", str(tmp_path / "c")]) == 0
    assert load_tokenizer(tmp_path / "c").get_vocab()[".2500"] > 0
    text_file = tmp_path / "NaCl.txt"
    text_file.write_text(structure_to_text(rocksalt()))
    capsys.readouterr()
    assert main(["tokenizer", "encode", str(text_file), "--tokenizer", str(tmp_path / "c"), "--tokens"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tokens"][:3] == ["<bos>", "data_", "Na"] and record["n_tokens"] == len(record["tokens"])
    bad = tmp_path / "bad.txt"
    bad.write_text("data_Na1\t\n")
    assert main(["tokenizer", "encode", str(bad)]) == 2
    assert "<unk>" in capsys.readouterr().err


def test_pair_kind_has_one_token_per_element_wherever_it_stands(pair, compact, texts):
    """Header, formulas and site rows all use the bare symbol's token (compact fuses the site-row
    separator into a second token per element)."""
    import re as _re

    elements = element_token_ids(pair)
    by_id = {i: sym for sym, i in elements.items()}
    for text in texts[:40]:
        ids = pair(text, add_special_tokens=False)["input_ids"]
        expected = []
        for line in text.split("\n"):
            if line.startswith("data_"):
                expected += _re.findall(r"[A-Z][a-z]?", line[5:])
            elif line.startswith("_chemical_formula"):
                expected += _re.findall(r"[A-Z][a-z]?", line.split(" ", 1)[1])
            elif line.startswith("  ") and not line.startswith("  1  'x"):
                expected += [e for f in line.split()[:2] for e in _re.findall(r"[A-Z][a-z]?", f)]
        assert [by_id[i] for i in ids if i in by_id] == expected, text
    site_row = "  Sr  Sr0  4  0.2500  0.2500  0.2500  1\n"
    assert pair.convert_ids_to_tokens(pair(site_row, add_special_tokens=False)["input_ids"]) == [
        "  ", "Sr", "  ", "Sr", "0", "  4", "  0", ".25", "00", "  0", ".25", "00", "  0", ".25", "00", "  1", "\n"]
    assert "  Sr" in compact.convert_ids_to_tokens(compact(site_row, add_special_tokens=False)["input_ids"])


def test_pair_kind_splits_fractions_into_two_digit_pieces_and_integers_into_digits(pair):
    tokens = pair.convert_ids_to_tokens(pair("_cell_angle_gamma 120.0000\n_cell_volume 1234.5678\n",
                                             add_special_tokens=False)["input_ids"])
    assert tokens == ["_cell_angle_gamma ", "1", "2", "0", ".00", "00", "\n",
                      "_cell_volume ", "1", "2", "3", "4", ".56", "78", "\n"]


def test_pair_kind_is_between_compact_and_cif_in_length_with_a_small_vocabulary(cif, compact, pair, texts):
    n = {name: sum(map(len, encode_batch(tok, texts))) for name, tok in
         (("cif", cif), ("compact", compact), ("pair", pair))}
    assert n["compact"] < n["pair"] < 0.75 * n["cif"]
    assert len(pair) < 1000 < len(compact)
