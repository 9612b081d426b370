"""Presets -> native ``transformers`` configs and models (GPT-2 architecture, no custom code).

A *preset* is a YAML file in ``training/presets/`` (shipped as package data) holding two sections: ``model`` (the
``GPT2Config`` shape) and ``training`` (the hyper-parameters read by :mod:`crystext.training`).
Any Hugging Face causal-LM ``config.json`` (a file, or a folder holding one) can stand in for a
preset: its model section is that config and its training section the defaults. Presets are read,
and the training defaults kept, by :mod:`crystext.pretrain_config` (its names are importable from
here too).
"""

from __future__ import annotations

import copy

from .errors import ConfigError
from .pretrain_config import PRESET_DIR, TRAINING_DEFAULTS, list_presets, load_preset  # noqa: F401

_DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def model_config(preset_or_config, tokenizer=None):
    """A ``transformers.PretrainedConfig`` for a preset (name, path, dict) or a config object,
    with vocabulary size and special-token ids taken from ``tokenizer`` when given."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(preset_or_config, PretrainedConfig):
        config = copy.deepcopy(preset_or_config)
    else:
        kwargs = dict(load_preset(preset_or_config)["model"])
        dropout = kwargs.pop("dropout", None)
        if dropout is not None and kwargs.get("model_type") == "gpt2":
            for key in _DROPOUT_KEYS:
                kwargs.setdefault(key, dropout)
        model_type = kwargs.pop("model_type")
        for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
            kwargs.pop(key, None)
        try:
            config = AutoConfig.for_model(model_type, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"model_type {model_type!r} is not a transformers model type: {exc}") from exc
    if tokenizer is not None:
        config.vocab_size = len(tokenizer)
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return config


def build_model(preset_or_config, tokenizer=None, seed: int | None = None):
    """A freshly initialised causal LM (``GPT2LMHeadModel`` for the shipped presets) sized to
    ``tokenizer``'s vocabulary. ``preset_or_config``: preset name / YAML / config.json / dict /
    ``PretrainedConfig``. ``seed`` fixes the initial weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(preset_or_config, tokenizer)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    except (ValueError, ImportError):  # architectures without SDPA fall back to their default
        model = AutoModelForCausalLM.from_config(config)
    return model


def count_parameters(model, trainable_only: bool = True) -> int:
    """Number of (unique, so tied embeddings count once) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
