"""A corpus moved to another tokenizer from its text, and resumes that refuse another tokenizer or schedule."""

from __future__ import annotations

import pytest

from crystext.corpus import build_corpus, load_corpus, retokenize_corpus
from crystext.errors import ConfigError
from crystext.modeling import load_preset
from crystext.tokenization import load_tokenizer
from crystext.training import pretrain


@pytest.fixture(scope="module")
def cif_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("retok") / "cif"
    build_corpus("aflow-prototypes", out=out, limit=30, split=(0.8, 0.1, 0.1), progress=False)
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**training) -> dict:
    preset = load_preset("tiny")
    preset["model"]["dropout"] = 0.0
    preset["training"].update({"mixed_precision": "no", "checkpoint_interval": 2, "eval_interval": 100, **training})
    return preset


def test_retokenized_corpus_keeps_rows_and_encodes_text_with_the_new_tokenizer(cif_corpus, tmp_path):
    pair = retokenize_corpus(cif_corpus, tmp_path / "pair", "crystext-pair")
    old = load_corpus(cif_corpus)
    tok = load_tokenizer("crystext-pair")
    for split in old:
        new, before = pair[split][:], old[split][:]
        assert new["id"] == before["id"] and new["text"] == before["text"]
        assert new["input_ids"] == tok(new["text"])["input_ids"]
        assert new["num_tokens"] == [len(x) for x in new["input_ids"]]
    assert pair["train"].features == old["train"].features
    assert load_tokenizer(str(tmp_path / "pair" / "tokenizer")).get_vocab() == tok.get_vocab()
    info = pair.summary["retokenized"]
    assert info["tokenizer"] == "crystext-pair" and pair.summary["config"]["tokenizer"] == "crystext-pair"
    assert all(s["documents_with_unk"] == s["documents_not_round_trip"] == 0 for s in info["splits"].values())
    assert sum(s["tokens"] for s in info["splits"].values()) < sum(sum(old[s][:]["num_tokens"]) for s in old)


def test_retokenize_excludes_and_counts_documents_over_max_tokens(cif_corpus, tmp_path):
    lengths = sorted(load_corpus(cif_corpus)["train"][:]["num_tokens"])
    cap = lengths[len(lengths) // 2]
    short = retokenize_corpus(cif_corpus, tmp_path / "short", "crystext-cif", max_tokens=cap)
    stats = short.summary["retokenized"]["splits"]["train"]
    assert stats["excluded_too_long"] == sum(n > cap for n in lengths) > 0
    assert max(short["train"][:]["num_tokens"]) <= cap


def test_retokenize_refuses_its_own_folder(cif_corpus):
    with pytest.raises(ConfigError, match="another folder"):
        retokenize_corpus(cif_corpus, cif_corpus, "crystext-pair")


def test_resume_refuses_another_schedule_unless_forced(cif_corpus, tmp_path):
    out = tmp_path / "run"
    pretrain(_tiny(max_steps=4), cif_corpus, out, stop_at=2, progress=False)
    with pytest.raises(ConfigError, match=r"another learning-rate schedule \(max_steps 4 -> 8\)"):
        pretrain(_tiny(max_steps=8), cif_corpus, out, progress=False)
    with pytest.raises(ConfigError, match=r"learning_rate 0.001 -> 0.002"):
        pretrain(_tiny(max_steps=4, learning_rate=2e-3), cif_corpus, out, progress=False)
    run = pretrain(_tiny(max_steps=8), cif_corpus, out, force_resume=True, progress=False)
    assert (run / "model.safetensors").is_file()


def test_resume_refuses_another_tokenizer(cif_corpus, tmp_path):
    out = tmp_path / "run"
    pretrain(_tiny(max_steps=4), cif_corpus, out, stop_at=2, progress=False)
    pair = retokenize_corpus(cif_corpus, tmp_path / "pair", "crystext-pair")
    with pytest.raises(ConfigError, match="another tokenizer"):
        pretrain(_tiny(max_steps=4), tmp_path / "pair", out, force_resume=True, progress=False)
    assert len(pair["train"]) > 0
