"""Presets -> native transformers models: shapes, save/load round trip, eval determinism, padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from crystext.errors import ConfigError, DataNotFoundError
from crystext.modeling import build_model, count_parameters, list_presets, load_preset, model_config
from crystext.tokenization import load_tokenizer
from crystext.training import token_loss_sum

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("crystext-cif")


def test_presets_are_shipped_with_both_sections():
    assert {"tiny", "base", "crystallm-small"} <= set(list_presets())
    for name in ("tiny", "base", "crystallm-small"):
        preset = load_preset(name)
        assert preset["model"]["model_type"] == "gpt2"
        assert preset["training"]["betas"] == [0.9, 0.99]
        assert preset["training"]["weight_decay"] == 0.1 and preset["training"]["grad_clip"] == 1.0


def test_crystallm_small_matches_crystallm_shape():
    config = model_config("crystallm-small")
    assert (config.n_layer, config.n_head, config.n_embd, config.n_positions) == (8, 8, 512, 1024)
    assert config.resid_pdrop == config.attn_pdrop == config.embd_pdrop == 0.1
    config.vocab_size = 371  # CrystaLLM's vocabulary
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert 25.8e6 < count_parameters(model) < 26.0e6  # CrystaLLM reports ~25.9M
    training = load_preset("crystallm-small")["training"]
    assert (training["learning_rate"], training["min_learning_rate"], training["warmup_steps"]) == (1e-3, 1e-4, 100)


def test_base_is_512_wide_and_sized_to_the_tokenizer(tok):
    model = build_model("base", tok)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.n_embd == 512
    assert model.get_input_embeddings().weight.shape == (len(tok), 512)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


def test_bad_presets_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no-such-preset"):
        load_preset("no-such-preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {n_layer: 1}\ntraining: {learnin_rate: 0.1}\n")
    with pytest.raises(ConfigError, match="learnin_rate"):
        load_preset(bad)
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 2}))
    with pytest.raises(ConfigError, match="model_type"):
        load_preset(tmp_path)


def test_any_hf_causal_lm_config_can_be_given(tmp_path, tok):
    from transformers import LlamaConfig

    path = tmp_path / "config.json"
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=256).to_json_file(path)
    model = build_model(path, tok)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    ids = torch.tensor([tok("data_NaCl")["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_save_load_round_trip_through_auto_classes(tmp_path, tok):
    model = build_model("tiny", tok, seed=0).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "data_NaCl\n_symmetry_space_group_name_H-M Fm-3m\n"
    ids = torch.tensor([loaded_tok(text)["input_ids"]])
    assert ids[0].tolist() == tok(text)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout(tok):
    model = build_model("tiny", tok, seed=0)  # dropout 0.1
    ids = torch.tensor([tok("data_Cd1Cu1N3\n_cell_length_a 4.2793\n")["input_ids"]])
    model.eval()
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert not torch.equal(c, d)


def test_a_padded_document_sees_nothing_of_its_batch(tok):
    """Right padding under the causal mask: a document's logits and loss are the same alone as in
    a batch with a longer document, so no document attends across another's boundary."""
    model = build_model("tiny", tok, seed=0).eval()
    short = tok("data_NaCl\n_cell_length_a 5.6900\n")["input_ids"]
    long = tok("data_CsCl\n_cell_length_a 4.1200\n_cell_length_b 4.1200\n_cell_length_c 4.1200\n")["input_ids"]
    batch = torch.full((2, len(long)), tok.pad_token_id)
    batch[0, : len(short)] = torch.tensor(short)
    batch[1] = torch.tensor(long)
    mask = (torch.arange(len(long))[None, :] < torch.tensor([[len(short)], [len(long)]])).long()
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([short])).logits[0]
        batched = model(input_ids=batch).logits[0, : len(short)]
        masked = model(input_ids=batch, attention_mask=mask).logits[0, : len(short)]
        loss_batch, n_batch = token_loss_sum(model, batch, mask)
        loss_a, n_a = token_loss_sum(model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
        loss_b, n_b = token_loss_sum(model, torch.tensor([long]), torch.ones(1, len(long), dtype=torch.long))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked, alone, atol=1e-5, rtol=1e-5)
    assert n_batch == n_a + n_b == len(short) + len(long) - 2
    torch.testing.assert_close(loss_batch, loss_a + loss_b, atol=1e-4, rtol=1e-5)


def test_float16_release_loads_as_float32_by_default():
    """models/crystext-compact stores float16 weights; plain from_pretrained (and AutoModel) give
    float32, because the release's config.json says so, and training_config.json says what is on disk."""
    from safetensors import safe_open
    from transformers import AutoModel, AutoModelForCausalLM

    run = REPO / "models" / "crystext-compact"
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    info = json.loads((run / "training_config.json").read_text())
    assert info["saved_dtype"] == "float16" and info["loads_as"] == "float32"
    for auto in (AutoModelForCausalLM, AutoModel):
        model = auto.from_pretrained(run)
        assert {p.dtype for p in model.parameters()} == {torch.float32}, auto.__name__


RELEASES = sorted(p for p in (REPO / "models").iterdir() if (p / "config.json").is_file()) \
    if (REPO / "models").is_dir() else []


@pytest.mark.parametrize("run", RELEASES, ids=[p.name for p in RELEASES])
def test_every_release_fits_the_limit_and_loads_natively(run):
    """Every folder in models/ is at most 60 MB, loads as a float32 GPT-2 with its tokenizer and no
    custom code, and records what it was trained on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert sum(f.stat().st_size for f in run.iterdir() if f.is_file()) <= 60 * 1024**2
    model = AutoModelForCausalLM.from_pretrained(run)
    assert model.config.model_type == "gpt2" and model.config.n_embd == 512
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    tok = AutoTokenizer.from_pretrained(run)
    assert len(tok) == model.config.vocab_size
    info = json.loads((run / "training_config.json").read_text())
    assert info["steps"] > 0 and info["tokens"] > 0
    evals = json.loads((run / "eval.json").read_text())
    assert evals["held_out_loss"] < evals["unigram_baseline_entropy"]


def test_shipped_resources_come_from_the_package_data_mapping():
    from crystext.modeling import PRESET_DIR, list_presets
    from crystext.resources import REPO_FOLDERS, resource_dir

    assert list_presets() == ["base", "cpu", "crystallm-small", "tiny"]
    assert (PRESET_DIR / "base.yaml").is_file()
    for kind in REPO_FOLDERS:
        assert any(resource_dir(kind).iterdir()), kind
    with pytest.raises(DataNotFoundError, match="resource kind 'nope'"):
        resource_dir("nope")
