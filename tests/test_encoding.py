"""The encode step: any input -> canonical text -> ``<bos> text <eos>`` ids, one input or many CIFs."""

from __future__ import annotations

import json

import pytest
from pymatgen.core import Lattice, Structure

from crystext import encoding
from crystext.encoding import TextCache, canonical_text, encode, encode_cifs, encode_inputs, encode_text, skip_reason
from crystext.errors import CIFParseError, DocumentTooLongError, TokenizerError
from crystext.tokenization import encode_checked, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("crystext-cif")


def rocksalt() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite() -> Structure:
    return Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def test_every_form_of_one_structure_gives_the_same_ids(tok, tmp_path):
    from pymatgen.io.ase import AseAtomsAdaptor

    s = rocksalt()
    cif = s.to(fmt="cif")
    (tmp_path / "nacl.cif").write_text(cif)
    text = canonical_text(s)
    forms = {"Structure": s, "Atoms subclass": AseAtomsAdaptor.get_atoms(s), "CIF text": cif,
             "CIF path": tmp_path / "nacl.cif", "CIF path str": str(tmp_path / "nacl.cif"),
             "canonical text": text, "CIF bytes": cif.encode()}
    expected = encode(s, tok)
    for form, item in forms.items():
        assert encode(item, tok) == expected, form
    assert encode(text, tok, is_text=True) == expected  # a crystal text encoded as written


def test_ids_are_the_text_framed_by_bos_and_eos(tok):
    text = canonical_text(perovskite())
    ids = encode(perovskite(), tok, max_length=1024)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids[1:-1] == encode_checked(tok, text, add_special_tokens=False)
    assert encode_text(text, tok) == ids
    assert encode_inputs([perovskite(), rocksalt()], tok) == [ids, encode(rocksalt(), tok)]


def test_symprec_reaches_the_text(tok):
    distorted = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.505]])
    assert "Pm-3m" in canonical_text(distorted, symprec=0.1)
    assert "Pm-3m" not in canonical_text(distorted, symprec=0.01)
    assert encode(distorted, tok, symprec=0.1) != encode(distorted, tok, symprec=0.01)


def test_a_text_longer_than_the_context_is_refused_never_cut(tok):
    n = len(encode(perovskite(), tok))
    assert len(encode(perovskite(), tok, max_length=n)) == n
    with pytest.raises(DocumentTooLongError, match=f"input 2: {n} tokens, longer than the model's context of {n - 1}"):
        encode(perovskite(), tok, max_length=n - 1, name="input 2")
    assert issubclass(DocumentTooLongError, TokenizerError)  # callers catching TokenizerError still do


def test_bad_inputs_are_named(tok):
    with pytest.raises(CIFParseError, match="^input 3"):
        encode("data_x\n_cell_length_a 1\n", tok, name="input 3")
    with pytest.raises(CIFParseError, match="^input 1"):
        encode_inputs([rocksalt(), "data_x\n_cell_length_a 1\n"], tok)
    with pytest.raises(TokenizerError, match="^row 7: text tokenizes to <unk>"):
        encode("data_X\n\u00a7\n", tok, is_text=True, name="row 7")
    with pytest.raises(TypeError, match="^item: expected crystal text, got Structure"):
        encode(rocksalt(), tok, is_text=True, name="item")


def test_skip_reasons():
    assert skip_reason(DocumentTooLongError("x")) == "too_long"
    assert skip_reason(DocumentTooLongError("x"), too_long="TokenizerError") == "TokenizerError"
    assert skip_reason(CIFParseError("x")) == "CIFParseError"
    assert skip_reason(KeyError("x")) == "other:KeyError"


def test_many_cifs_skip_and_count_by_reason(tok, tmp_path):
    good = [perovskite().to(fmt="cif"), rocksalt().to(fmt="cif")]
    cifs = [good[0], "not a cif", good[1]]
    cache = TextCache(tmp_path / "t.jsonl")
    enc = encode_cifs(cifs, tok, 1024, cache, progress=False)
    assert enc.ids == [encode(c, tok) for c in good] and enc.kept == [0, 2]
    assert enc.skipped == {"CIFParseError": 1} and enc.log[0][:2] == (1, "CIFParseError")
    n = min(len(i) for i in enc.ids)
    short = encode_cifs(cifs, tok, n, cache, progress=False)
    assert short.skipped == {"CIFParseError": 1, "too_long": 1} and short.ids == [enc.ids[1]] and short.kept == [2]
    assert "longer than the model's context" in short.log[0][2] or "longer than the model's context" in short.log[1][2]


def test_text_cache_converts_each_cif_once_and_survives_a_cut_line(tmp_path, monkeypatch):
    cifs = [perovskite().to(fmt="cif"), rocksalt().to(fmt="cif"), "not a cif"]
    path = tmp_path / "texts.jsonl"
    first = TextCache(path).texts(cifs, progress=False)
    calls = []
    real = encoding._convert
    monkeypatch.setattr(encoding, "_convert", lambda args: calls.append(args) or real(args))
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"k": "cut by a ki')  # a kill in the middle of a line
    again = TextCache(path).texts(cifs + [cifs[0]], progress=False)
    assert not calls and again == first + [first[0]]
    assert first[0][0] == canonical_text(perovskite()) and first[2][0] is None
    assert first[2][1].startswith("CIFParseError: cif")


def test_a_text_cache_written_before_stays_valid(tmp_path, monkeypatch):
    """Files of the fine-tuning text cache keep their name and keys (SHA-1 of "<symprec>\n<cif>")."""
    import hashlib

    from crystext.settings import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cif = rocksalt().to(fmt="cif")
    old = tmp_path / "texts" / "symprec-0.1.jsonl"
    old.parent.mkdir()
    old.write_text(json.dumps({"k": hashlib.sha1(f"0.1\n{cif}".encode()).hexdigest(), "t": "data_cached\n", "e": None}) + "\n")
    assert TextCache().texts([cif], progress=False) == [("data_cached\n", None)]


def test_text_cache_in_memory_writes_nothing(tmp_path):
    cache = TextCache(tmp_path / "never.jsonl", persist=False)
    assert cache.texts([rocksalt().to(fmt="cif")], progress=False)[0][0] == canonical_text(rocksalt())
    assert not (tmp_path / "never.jsonl").exists()


def test_conversion_in_processes_equals_one_process(tmp_path):
    cifs = [perovskite().to(fmt="cif"), rocksalt().to(fmt="cif"), "not a cif"]
    one = TextCache(tmp_path / "a.jsonl").texts(cifs, progress=False)
    two = TextCache(tmp_path / "b.jsonl").texts(cifs, num_proc=2, progress=False)
    assert one == two


def test_every_site_encodes_through_the_same_step(tok, tmp_path):
    """The embeddings, fine-tuning and the benchmark's texts give the ids of :func:`encode`."""
    import pandas as pd

    from crystext.benchmark.representations import structure_texts
    from crystext.finetune import encode_split

    cifs = [perovskite().to(fmt="cif"), rocksalt().to(fmt="cif")]
    expected = [encode(c, tok) for c in cifs]
    df = pd.DataFrame({"cif": cifs, "y": [1.0, 2.0], "row": [4, 5]})
    ids, y, rows, skipped, _ = encode_split(df, tok, 1024, TextCache(tmp_path / "c.jsonl"), progress=False)
    assert ids == expected and list(rows) == [4, 5] and not skipped
    texts, bad = structure_texts(cifs, tmp_path)
    assert [encode(t, tok, is_text=True) for t in texts] == expected and not bad
