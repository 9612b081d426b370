"""Presets -> native ``transformers`` configs and models (GPT-2 architecture, no custom code).

A *preset* is a YAML file in ``training/presets/`` (shipped as package data) holding two sections: ``model`` (the
``GPT2Config`` shape) and ``training`` (the hyper-parameters read by :mod:`crystext.training`).
Any Hugging Face causal-LM ``config.json`` (a file, or a folder holding one) can stand in for a
preset: its model section is that config and its training section the defaults below.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .resources import resource_dir

#: the shipped presets (package data; ``training/presets/`` in the repository)
PRESET_DIR = resource_dir("presets")

#: Training hyper-parameters used where a preset leaves a key out (CrystaLLM's small-model values).
TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1.0e-3,
    "min_learning_rate": 1.0e-4,
    "warmup_steps": 100,
    "betas": [0.9, 0.99],
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "batch_size": 32,  # sequences per micro-batch per process
    "gradient_accumulation_steps": 1,
    "max_steps": 2000,
    "eval_interval": 250,
    "eval_samples": 512,  # validation sequences used by the periodic evaluation (all at the end)
    "checkpoint_interval": 500,
    "log_interval": 10,
    "mixed_precision": "auto",  # "auto" (bf16 where fast, see crystext.precision) | "bf16" | "fp16" | "no"
    "seed": 1337,
    "bucket_size": 64,  # length-bucketing window, in global batches
    "save_dtype": "float32",  # dtype of the final model.safetensors
    "compile": False,  # torch.compile the training forward (minutes to compile, faster steps)
}

_DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def list_presets() -> list[str]:
    """Names of the shipped presets (``training/presets/`` in the repository)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or "model" not in data:
        raise ConfigError(f"preset {path}: expected a mapping with a 'model' section (and 'training')")
    return data


def load_preset(name_or_path: str | Path | dict) -> dict:
    """Return ``{"name", "model", "training"}`` for a preset name, a preset YAML, a ``config.json``
    (or a folder holding one: a run or any HF causal-LM checkpoint) or an already loaded dict.

    ``model`` is a dict of config keyword arguments (``model_type`` included); ``training`` is
    :data:`TRAINING_DEFAULTS` updated with the preset's own values.
    """
    if isinstance(name_or_path, dict):
        data, name = copy.deepcopy(name_or_path), name_or_path.get("name", "custom")
    else:
        text = str(name_or_path)
        path = Path(text)
        if not path.exists() and (PRESET_DIR / f"{text}.yaml").is_file():
            path = PRESET_DIR / f"{text}.yaml"
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(
                f"preset {text!r}: not a preset name ({', '.join(list_presets())}), "
                "a preset YAML, or a config.json / folder holding one"
            )
        if path.suffix in (".yaml", ".yml"):
            data, name = _read_yaml(path), path.stem
        else:
            try:
                model = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"config {path}: not valid JSON ({exc})") from exc
            if "model_type" not in model:
                raise ConfigError(f"config {path}: no 'model_type'; not a Hugging Face config.json")
            data = {"model": model}
            extra = path.parent / "training_config.json"  # a crystext run: reuse its hyper-parameters
            if extra.is_file():
                data["training"] = json.loads(extra.read_text()).get("training", {})
            name = path.parent.name
    training = dict(TRAINING_DEFAULTS)
    unknown = set(data.get("training") or {}) - set(TRAINING_DEFAULTS)
    if unknown:
        raise ConfigError(f"preset {name!r}: unknown training keys {sorted(unknown)}; known: {sorted(TRAINING_DEFAULTS)}")
    training.update(data.get("training") or {})
    model = dict(data["model"])
    model.setdefault("model_type", "gpt2")
    return {"name": data.get("name", name), "model": model, "training": training}


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
