"""The ``local`` block of the text form: known coordination shells, invariance, round trips, its
tokenizer, and the text form a run carries from its corpus to the encode step."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystext.corpus.identity import text_hash
from crystext.encoding import TextForm, TextCache, canonical_text
from crystext.errors import ConfigError
from crystext.local import local_rows, strip_local
from crystext.text import check_text, structure_to_text, text_to_structure
from crystext.tokenization import build_tokenizer, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SRTIO3 = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"],
                                   [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0.5]])
NACL = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
FCC_CU = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]])
BCC_FE = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _block(structure) -> list[str]:
    text = structure_to_text(structure, local=True)
    return text[text.index(" _crystext_site_distance\n") + len(" _crystext_site_distance\n"):].splitlines()


def test_known_shells():
    assert _block(SRTIO3) == ["  Sr0  12  O  2.76", "  Ti1  6  O  1.95", "  O2  2  Ti  1.95"]
    assert _block(NACL) == ["  Na0  6  Cl  2.85", "  Cl1  6  Na  2.85"]
    assert _block(FCC_CU) == ["  Cu0  12  Cu  2.55"]
    # bcc: the second shell (a = 1.15 x the nearest distance) lies inside the 1.2 factor: 8 + 6
    assert _block(BCC_FE) == ["  Fe0  14  Fe  2.49"]


def test_the_block_does_not_depend_on_the_cell_or_order_given():
    moved = SRTIO3.copy()
    moved.translate_sites(list(range(len(moved))), [0.13, 0.27, 0.41])
    supercell = SRTIO3.copy()
    supercell.make_supercell([2, 1, 1])
    permuted = Structure.from_sites(list(reversed(supercell.sites)))
    expected = structure_to_text(SRTIO3, local=True)
    for other in (moved, supercell, permuted):
        assert structure_to_text(other, local=True) == expected


def test_a_text_with_the_block_reads_back_and_names_the_same_structure():
    plain = structure_to_text(NACL)
    local = structure_to_text(NACL, local=True)
    assert local.startswith(plain) and strip_local(local) == plain and strip_local(plain) == plain
    assert text_hash(local) == text_hash(plain)
    assert text_to_structure(local).matches(NACL)
    assert check_text(local).valid
    crystallm = structure_to_text(NACL, local=True, style="crystallm")
    assert "\n_crystext_site_label\n" in crystallm and strip_local(crystallm) == structure_to_text(NACL, style="crystallm")


def test_local_rows_follow_the_site_rows():
    text = structure_to_text(SRTIO3)
    rows = local_rows(text)
    assert rows[0] == "loop_" and [r.split()[0] for r in rows[5:]] == ["Sr0", "Ti1", "O2"]


def test_the_local_tokenizer_keeps_pair_ids_and_reads_the_block_without_unknowns():
    pair, local = build_tokenizer("pair"), load_tokenizer("crystext-local")
    pv, lv = pair.get_vocab(), local.get_vocab()
    assert all(lv[t] == i for t, i in pv.items()) and len(lv) == len(pv) + 5
    text = structure_to_text(SRTIO3, local=True)
    ids = local(text)["input_ids"]
    assert local.unk_token_id not in ids and local.decode(ids, skip_special_tokens=True) == text
    header = "loop_\n" + "".join(f" {k}\n" for k in ("_crystext_site_label", "_crystext_site_coordination",
                                                      "_crystext_site_neighbour", "_crystext_site_distance"))
    assert header in local.convert_ids_to_tokens(ids)


def test_text_form_comes_from_the_saved_config_and_names_its_cache():
    from transformers import GPT2Config

    assert TextForm.of(GPT2Config()) == TextForm() and TextForm().plain and TextForm().name == "symprec-0.1"
    cfg = GPT2Config(crystext_text={"symprec": 0.1, "properties": False, "local": True})
    form = TextForm.of(cfg)
    assert form.local and not form.plain and form.name == "symprec-0.1-local"
    assert TextForm.of(cfg, symprec=0.01) == TextForm(0.01, False, True)
    assert TextForm.from_dict({"symprec": 0.1, "local": True, "tokenizer": "x"}) == form
    assert "_crystext_site_label" in canonical_text(NACL, form)
    assert "_crystext_site_label" not in canonical_text(NACL, 0.1)
    cache = TextCache(None, form, persist=False)
    assert cache.path.name == "symprec-0.1-local.jsonl" and cache.key("x") != TextCache(None, 0.1, persist=False).key("x")
    assert TextCache(None, TextForm(), persist=False).key("x") == TextCache(None, 0.1, persist=False).key("x")


def test_a_local_corpus_needs_the_local_tokenizer_and_its_run_embeds_with_the_block(tmp_path, monkeypatch):
    from crystext.corpus import build_corpus
    from crystext.embeddings import StructureEmbedder
    from crystext.modeling import load_preset
    from crystext.training import pretrain

    monkeypatch.setenv("CRYSTEXT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="crystext-local"):
        build_corpus("aflow-prototypes", out=tmp_path / "bad", tokenizer="crystext-pair", local=True, limit=5,
                     progress=False)
    build_corpus("aflow-prototypes", out=tmp_path / "corpus", tokenizer="crystext-local", local=True, limit=24,
                 split=(0.7, 0.15, 0.15), progress=False)
    summary = json.loads((tmp_path / "corpus" / "summary.json").read_text())
    assert summary["config"]["local"] is True
    preset = load_preset("tiny")
    preset["training"].update({"mixed_precision": "no", "max_steps": 2})
    run = pretrain(preset, tmp_path / "corpus", tmp_path / "run", progress=False)
    saved = json.loads((run / "config.json").read_text())["crystext_text"]
    assert saved == {"symprec": 0.1, "properties": False, "local": True}
    emb = StructureEmbedder(str(run))
    assert emb.form.local and "_crystext_site_label" in emb.text_of(NACL)
    vec = emb.embed([NACL])
    assert vec.shape == (1, emb.dim) and np.isfinite(vec).all()


def test_the_command_line_writes_the_block(tmp_path, capsys):
    from crystext.cli import main

    path = tmp_path / "nacl.cif"
    NACL.to(filename=str(path))
    assert main(["text", "convert", str(path), "--local"]) == 0
    assert capsys.readouterr().out == structure_to_text(NACL, local=True)


def test_the_benchmark_writes_a_local_run_its_texts_with_the_block(tmp_path):
    from crystext.benchmark import run_benchmark
    from crystext.modeling import build_model

    run = tmp_path / "run"
    tok = load_tokenizer("crystext-local")
    model = build_model("tiny", tok, seed=0)
    model.config.crystext_text = {"symprec": 0.1, "properties": False, "local": True}
    model.save_pretrained(run)
    tok.save_pretrained(run)
    folder = tmp_path / "data" / "perov_5"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("val", 24), ("test", 10)):
        rows = []
        for _ in range(n):
            a = float(rng.uniform(3.7, 4.3))
            s = Structure.from_spacegroup("Pm-3m", Lattice.cubic(a), ["Sr", "Ti", "O"], [[0, 0, 0], [.5, .5, .5], [.5, 0, .5]])
            rows.append({"cif": s.to(fmt="cif"), "formula": "SrTiO3", "heat_all": a, "dir_gap": a * a})
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv")
    res = run_benchmark(data=tmp_path / "data", out=None, runs=[f"loc={run}"], baselines=[], quick=True,
                        regressors=("ridge",), poolings=("mean",), plots=False, progress=False,
                        cache_dir=tmp_path / "cache", lm_precision="float32", structure_baselines=())
    assert any(p.startswith("structure-") for p in res.results["pooling"])
    local_texts = (tmp_path / "cache" / "texts" / "symprec-0.1-local.jsonl").read_text().splitlines()
    assert local_texts and all("_crystext_site_label" in json.loads(line)["t"] for line in local_texts)
