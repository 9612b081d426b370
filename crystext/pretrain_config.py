"""The settings of a pretraining run in one object, :class:`PretrainSettings`, with two faces: a
*preset* (a YAML file under ``training/presets/``, or a Hugging Face ``config.json``, read by
:func:`load_preset` and :meth:`PretrainSettings.from_preset`) and ``crystext pretrain``'s flags
(:meth:`PretrainSettings.add_arguments`, :meth:`PretrainSettings.from_args`; ``--set KEY=VALUE``
for any training hyper-parameter). :func:`crystext.training.pretrain`'s keyword arguments are a
third spelling of the same object. The defaults are the fields' own; a run saves its settings in
``training_config.json`` (keys ``preset``, ``model``, ``init``, ``training``, as every run has) and
:meth:`PretrainSettings.from_run` reads them back.

Light on purpose (no numpy or torch): the command line builds its flags from this module when it
starts.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataNotFoundError
from .resources import resource_dir

#: the shipped presets (package data; ``training/presets/`` in the repository)
PRESET_DIR = resource_dir("presets")

#: the types a training hyper-parameter may take, by the kind named in its field's metadata
_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "pair": "two numbers", "float?": "a number or null"}


def _training(default: Any, kind: str, help: str) -> Any:
    """A training hyper-parameter: a key of a preset's ``training`` section and of ``--set``."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"section": "training", "kind": kind,
                                                                      "help": help})
    return field(default=default, metadata={"section": "training", "kind": kind, "help": help})


def _session(default: Any, help: str) -> Any:
    """A setting of one ``pretrain`` call (how it runs, not what it trains): never saved."""
    return field(default=default, metadata={"section": "session", "help": help})


@dataclass
class PretrainSettings:
    """Everything a pretraining run is told, in three sections (each field's ``section``):

    - ``run``: what is trained: the preset's name, its model section (the ``GPT2Config`` keyword
      arguments; ``None`` when the weights come from ``init``) and the init run;
    - ``training``: the hyper-parameters, a preset's ``training`` section (defaults: CrystaLLM's
      small-model values), saved as ``training_config.json``'s ``training``;
    - ``session``: how this call runs (resume, stop, time budget, threads); not saved.
    """

    preset: str = field(default="custom", metadata={"section": "run", "help": "the preset's name"})
    model: dict | None = field(default=None, metadata={"section": "run", "help": "GPT2Config keyword arguments"})
    init: str | None = field(default=None, metadata={"section": "run", "help": "run folder trained from"})

    learning_rate: float = _training(1.0e-3, "float", "peak learning rate (after the warm-up)")
    min_learning_rate: float = _training(1.0e-4, "float", "learning rate at the end of the cosine decay")
    warmup_steps: int = _training(100, "int", "steps of linear warm-up")
    betas: list = _training([0.9, 0.99], "pair", "AdamW betas")
    weight_decay: float = _training(0.1, "float", "AdamW weight decay of the matrices")
    grad_clip: float | None = _training(1.0, "float?", "gradient norm clip (0 or null: none)")
    batch_size: int = _training(32, "int", "documents per micro-batch per process")
    gradient_accumulation_steps: int = _training(1, "int", "micro-batches per optimiser step")
    max_steps: int = _training(2000, "int", "length of the run and of its schedule (optimiser steps)")
    eval_interval: int = _training(250, "int", "steps between evaluations")
    eval_samples: int = _training(512, "int", "validation documents of the periodic evaluation (all at the end)")
    checkpoint_interval: int = _training(500, "int", "steps between checkpoints")
    log_interval: int = _training(10, "int", "steps between log.csv rows")
    mixed_precision: str = _training("auto", "str", "auto (bf16 where fast, see crystext.precision), bf16, fp16, "
                                     "no")
    seed: int = _training(1337, "int", "seed of the weights, the data order and dropout")
    bucket_size: int = _training(64, "int", "length-bucketing window, in global batches")
    save_dtype: str = _training("float32", "str", "dtype of the final model.safetensors (loads as float32)")
    compile: bool = _training(False, "bool", "torch.compile the training forward (minutes to compile)")
    aux_weight: float = _training(0.0, "float", "weight of the auxiliary geometry-target loss on the pooled "
                                  "state (0: off; crystext.auxiliary)")

    resume: bool | str = _session("auto", "auto: continue from the last checkpoint if any; True: require one; "
                                  "False: start afresh")
    force_resume: bool = _session(False, "resume despite another batch geometry or schedule")
    stop_at: int | None = _session(None, "stop after this step, keeping the schedule")
    max_time: float | None = _session(None, "seconds for the whole call")
    keep_checkpoints: int = _session(2, "checkpoints kept")
    num_threads: int | None = _session(None, "torch CPU threads")
    progress: bool = _session(True, "a progress bar")

    def __post_init__(self) -> None:
        for name in self.training_keys():
            setattr(self, name, _checked(name, getattr(self, name)))
        if self.init is not None:
            self.init = str(self.init)

    @classmethod
    def training_keys(cls) -> list[str]:
        """The training hyper-parameters, in the order presets and ``training_config.json`` list them."""
        return [f.name for f in fields(cls) if f.metadata["section"] == "training"]

    def training(self) -> dict:
        """The hyper-parameters as plain values (``training_config.json``'s ``training``)."""
        return {k: copy.copy(getattr(self, k)) for k in self.training_keys()}

    def to_dict(self) -> dict:
        """Every setting as plain values (:meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PretrainSettings":
        """Settings from :meth:`to_dict`'s form; keys this version does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_saved(self) -> dict:
        """The keys of ``training_config.json`` that say what the run trained: ``preset``, ``model``
        (``{"init": name}`` for weights from an init run), ``training`` and ``init`` (its folder name)."""
        init = None if self.init is None else Path(self.init).name
        model = {"init": init} if self.model is None else dict(self.model)
        return {"preset": self.preset, "model": model, "training": self.training(), "init": init}

    @classmethod
    def from_saved(cls, saved: dict) -> "PretrainSettings":
        """Settings from :meth:`to_saved`'s keys (any run's ``training_config.json``, the committed
        releases' included); training keys this version does not know are left out."""
        model = saved.get("model")
        model = None if not model or set(model) == {"init"} else dict(model)
        known = set(cls.training_keys())
        training = {k: v for k, v in (saved.get("training") or {}).items() if k in known}
        return cls(preset=saved.get("preset") or "custom", model=model, init=saved.get("init"), **training)

    @classmethod
    def from_run(cls, folder: str | os.PathLike) -> "PretrainSettings":
        """The settings a pretrained run folder was made with (its ``training_config.json``).

        Raises:
            DataNotFoundError: the folder has no pretraining settings.
        """
        path = Path(folder) / "training_config.json"
        try:
            saved = json.loads(path.read_text())
            if "training" not in saved or "finetune" in saved:
                raise KeyError("training")
            return cls.from_saved(saved)
        except (OSError, ValueError, KeyError, TypeError):
            raise DataNotFoundError(f"{folder}: no pretraining settings ({path.name} with a 'training' entry)") from None

    @classmethod
    def from_preset(cls, preset_or_config: str | os.PathLike | dict | None = "base", *, init: Any = None,
                    overrides: dict | None = None, max_steps: int | None = None, **session: Any) -> "PretrainSettings":
        """The preset face: a preset (name, YAML, ``config.json``, run folder or :func:`load_preset`
        dict) with ``overrides`` (training keys) and ``max_steps`` on top; without a preset, the init
        run's own hyper-parameters. ``session``: the session fields (``resume``, ``stop_at``, ...).

        Raises:
            ConfigError: no preset and no init run, a bad preset, or an override of a key that is not
                a training hyper-parameter (the error names it) or of the wrong type.
        """
        if preset_or_config is None:
            if init is None:
                raise ConfigError("pretrain: give a preset/config or an init run")
            preset_or_config = init
        preset = load_preset(preset_or_config)
        training = dict(preset["training"])
        for key, value in (overrides or {}).items():
            if key not in training:
                raise ConfigError(f"pretrain: unknown training key {key!r}; known: {sorted(training)}")
            training[key] = value
        if max_steps is not None:
            training["max_steps"] = int(max_steps)
        model = None if init is not None else preset["model"]
        return cls(preset=preset["name"], model=model, init=init, **training, **session)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The command-line face: the preset (positional), ``--set KEY=VALUE`` for any training key,
        ``--max-steps`` and ``--precision`` for the two most often changed, and the session flags."""
        parser.add_argument("config", nargs="?", default=None, metavar="CONFIG_OR_PRESET",
                            help="preset name (tiny, base, crystallm-small), preset YAML, or an HF config.json "
                            "(default: base; with --init: the init run's own hyper-parameters)")
        parser.add_argument("--init", default=None, metavar="DIR", help="fine-tune from this run folder's weights")
        parser.add_argument("--max-steps", type=int, default=None,
                            help="length of the run / schedule (optimiser steps)")
        g = parser.add_mutually_exclusive_group()
        g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out (required)")
        g.add_argument("--fresh", action="store_true", help="start afresh, deleting --out's old checkpoints "
                       "(default: resume if a checkpoint exists)")
        parser.add_argument("--stop-at", type=int, default=None, help="stop after this step, keeping the schedule")
        parser.add_argument("--max-time", type=float, default=None, metavar="MINUTES",
                            help="stop cleanly (checkpoint + final files) this long after the start")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a training hyper-parameter, e.g. --set batch_size=8 --set "
                            "learning_rate=3e-4")
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
        parser.add_argument("--precision", default=None, choices=["auto", "bf16", "fp16", "fp32"],
                            help="training precision (default: the preset's, 'auto' = bf16 only where this "
                            "machine runs it fast, else float32)")
        parser.add_argument("--force-resume", action="store_true",
                            help="resume even if batch size, gradient accumulation or world size differ from the "
                            "checkpoint's")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    @classmethod
    def from_args(cls, args: argparse.Namespace, defaults: dict | None = None) -> "PretrainSettings":
        """Settings from parsed flags (:meth:`add_arguments`). ``defaults`` (``preset``, ``max_steps``,
        ``max_time`` in seconds, ``overrides``) stand where a flag was not given; ``--set`` and
        ``--precision`` go on top of their overrides, in that order."""
        defaults = defaults or {}
        overrides = dict(defaults.get("overrides") or {})
        overrides.update(parse_overrides(args.set))
        if args.precision:
            overrides["mixed_precision"] = args.precision
        preset = args.config or (None if args.init else defaults.get("preset", "base"))
        max_steps = args.max_steps if args.max_steps is not None else defaults.get("max_steps")
        max_time = args.max_time * 60 if args.max_time is not None else defaults.get("max_time")
        return cls.from_preset(
            preset, init=args.init, overrides=overrides, max_steps=max_steps,
            resume=True if args.resume else False if args.fresh else "auto", force_resume=args.force_resume,
            stop_at=args.stop_at, max_time=max_time, num_threads=args.threads, progress=not args.no_progress)


def _checked(name: str, value: Any) -> Any:
    """``value`` if it has the type hyper-parameter ``name`` takes, else a :class:`ConfigError` naming
    it. A whole float for an integer is made one, a number YAML read as a string (``1e-3``) a float,
    and YAML's bare ``no`` for ``mixed_precision`` the string ``"no"``."""
    kind = next(f.metadata["kind"] for f in fields(PretrainSettings) if f.name == name)
    if kind in ("float", "float?") and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "mixed_precision" and value in (False, None):
        return "no"
    if kind == "int" and number and float(value).is_integer():
        return int(value)
    if kind == "pair" and isinstance(value, (list, tuple)) and len(value) == 2:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return list(value)
    ok = {"float": number, "float?": number or value is None, "str": isinstance(value, str),
          "bool": isinstance(value, bool)}.get(kind, False)
    if not ok:
        raise ConfigError(f"pretrain: training key {name!r} must be {_KINDS[kind]}, not {value!r}")
    return value


def parse_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items -> ``{key: value}``, each value read as YAML (``8``, ``3e-4``,
    ``[0.9, 0.95]``, ``true``). Keys are checked against the training keys when applied.

    Raises:
        ConfigError: an item without ``=`` or without a key.
    """
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


#: Training hyper-parameters used where a preset leaves a key out: :class:`PretrainSettings`'s defaults.
TRAINING_DEFAULTS: dict[str, Any] = PretrainSettings().training()


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


def _read_preset(name_or_path: str | os.PathLike | dict) -> tuple[dict, str]:
    """The raw ``{"model", "training"}`` sections of a preset, and its name."""
    if isinstance(name_or_path, dict):
        return copy.deepcopy(name_or_path), name_or_path.get("name", "custom")
    text = str(name_or_path)
    path = Path(text)
    if not path.exists() and (PRESET_DIR / f"{text}.yaml").is_file():
        path = PRESET_DIR / f"{text}.yaml"
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"preset {text!r}: not a preset name ({', '.join(list_presets())}), "
                          "a preset YAML, or a config.json / folder holding one")
    if path.suffix in (".yaml", ".yml"):
        return _read_yaml(path), path.stem
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
    return data, path.parent.name


def load_preset(name_or_path: str | os.PathLike | dict) -> dict:
    """Return ``{"name", "model", "training"}`` for a preset name, a preset YAML, a ``config.json``
    (or a folder holding one: a run or any HF causal-LM checkpoint) or an already loaded dict.

    ``model`` is a dict of config keyword arguments (``model_type`` included); ``training`` holds
    every hyper-parameter: :data:`TRAINING_DEFAULTS` updated with the preset's own values.

    Raises:
        ConfigError: not a preset, invalid YAML or JSON, or training keys that are unknown (named)
            or of the wrong type.
    """
    data, name = _read_preset(name_or_path)
    unknown = set(data.get("training") or {}) - set(TRAINING_DEFAULTS)
    if unknown:
        raise ConfigError(f"preset {name!r}: unknown training keys {sorted(unknown)}; known: {sorted(TRAINING_DEFAULTS)}")
    training = {**TRAINING_DEFAULTS, **(data.get("training") or {})}
    training = {k: _checked(k, v) for k, v in training.items()}
    model = dict(data["model"])
    model.setdefault("model_type", "gpt2")
    return {"name": data.get("name", name), "model": model, "training": training}
