"""The settings of a fine-tuning run in one object, :class:`FinetuneSettings`, with two faces:
:func:`crystext.finetune.finetune`'s keyword arguments and ``crystext finetune``'s flags
(:meth:`FinetuneSettings.add_arguments`, :meth:`FinetuneSettings.from_args`). A run saves its
settings in ``training_config.json`` (key ``"finetune"``); :meth:`FinetuneSettings.from_run` reads
them back.

Light on purpose (no numpy, pandas or torch): the command line builds its flags from this module
when it starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataNotFoundError

MODES = ("head", "lora", "full")
#: per-mode defaults (learning rate, epochs, patience): chosen so each mode converges on perov_5
MODE_DEFAULTS = {
    "head": {"lr": 3e-3, "epochs": 200, "patience": 20},
    "lora": {"lr": 1e-3, "epochs": 30, "patience": 4},
    "full": {"lr": 2e-4, "epochs": 30, "patience": 4},
}


def _setting(default: Any, help: str, *, type: Any = None, metavar: str | None = None,
             choices: tuple | None = None, result: bool = True, flag: bool = True) -> Any:
    """A field of :class:`FinetuneSettings`: ``result`` says whether the fine-tuned model depends on
    it (it is then part of the fingerprint); ``flag`` whether ``crystext finetune`` has a flag for it."""
    meta = {"help": help, "type": type, "metavar": metavar, "choices": choices, "result": result, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass
class FinetuneSettings:
    """Everything a fine-tuning run is told. The settings its result depends on make its
    :meth:`fingerprint`: a finished folder of the same fingerprint is not redone, and a resume
    refuses a checkpoint of another. ``epochs``, ``lr`` and ``patience`` left ``None`` take the
    mode's defaults (:data:`MODE_DEFAULTS`); ``precision="auto"`` is resolved on the device."""

    run: str = field(metadata={"help": "pretrained run folder, release name, or Hub repo id", "flag": True,
                               "positional": True, "metavar": "RUN", "result": True})
    data: str = field(metadata={"help": "task folder", "flag": True, "metavar": "TASK_DIR", "required": True,
                                "result": True})
    target: str | None = _setting(None, "target column (default 'target'; perov_5: heat_all, carbon_24: "
                                  "energy_per_atom)", metavar="COL")
    mode: str = _setting("lora", "head: frozen transformer, train the score head; lora: LoRA adapters + head "
                         "(merged for the save); full: every weight (default lora)", choices=MODES)
    fold: int | None = _setting(None, "fold of a 5-fold task folder", type=int, metavar="K")
    train_split: str | None = _setting(None, "file stem of the training split (default: train, or val when "
                                       "there is no train.csv as in the shared perov_5/carbon_24 folders)",
                                       metavar="NAME")
    unit: str | None = _setting(None, "unit of the target (known for the shared tasks)", result=False)
    seed: int = _setting(0, "model seed: head initialisation, batch order, dropout (default 0)", type=int)
    epochs: int | None = _setting(None, "maximum epochs (default per mode: head 200, else 30)", type=int)
    lr: float | None = _setting(None, "learning rate (default per mode: head 3e-3, lora 1e-3, full 2e-4)",
                                type=float)
    batch_size: int = _setting(32, "structures per step (default 32)", type=int)
    patience: int | None = _setting(None, "epochs without a better validation MAE before stopping (default "
                                    "head 20, else 4)", type=int)
    weight_decay: float = _setting(0.01, "AdamW weight decay (default 0.01)", type=float)
    warmup_fraction: float = _setting(0.05, "share of the steps of linear warm-up before the cosine decay "
                                      "(default 0.05)", type=float)
    grad_clip: float = _setting(1.0, "gradient norm clip (default 1.0)", type=float)
    max_train: int | None = _setting(None, "seeded subsample of the training rows", type=int)
    max_val: int | None = _setting(None, "seeded subsample of the validation rows", type=int)
    max_test: int | None = _setting(None, "seeded subsample of the test rows", type=int)
    lora_r: int = _setting(8, "LoRA rank (default 8)", type=int)
    lora_alpha: int = _setting(16, "LoRA alpha (default 16)", type=int)
    lora_dropout: float = _setting(0.0, "LoRA dropout (default 0)", type=float)
    symprec: float = _setting(0.1, "symmetry tolerance of the canonical text (default 0.1)", type=float)
    precision: str = _setting("auto", "auto (bf16 only where this machine runs it fast), bf16 or float32 "
                              "(default auto)")
    #: SHA-256 of the run's weights (``None`` for a Hub id): a retrained release under the same
    #: folder name is another starting point, so its folder is never "complete" from the old one
    run_weights: str | None = _setting(None, "", flag=False)
    device: str | None = _setting(None, "cpu, cuda, ... (default: CUDA when available)", result=False)
    num_proc: int = _setting(1, "processes for the CIF -> text conversion (default 1)", type=int, result=False)
    text_cache: str | None = _setting(None, "JSONL file of cached canonical texts (default under the cache "
                                      "folder)", metavar="FILE", result=False)
    #: head mode: root folder of cached frozen ``<eos>`` states (default ``<cache_dir>/eos``), or
    #: ``False`` to recompute them
    eos_cache: str | bool | None = _setting(None, "head mode: folder of cached frozen <eos> states (default "
                                            "under the cache folder)", metavar="DIR", result=False)
    progress: bool = _setting(True, "no progress bars", result=False)
    #: end this session after so many epochs (checkpoint kept; rerun to continue)
    stop_after: int | None = _setting(None, "end this session after N epochs (rerun to continue)", type=int,
                                      metavar="N", result=False)
    command: str | None = _setting(None, "", result=False, flag=False)

    def __post_init__(self) -> None:
        for name in ("run", "data", "text_cache", "eos_cache", "device"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, bool)):
                setattr(self, name, str(value))  # a path or a torch.device: saved as text

    def fingerprint(self) -> str:
        """A hash of every setting the result depends on (the epoch budget included: the cosine
        schedule spans ``epochs``, so a run of another budget is another run)."""
        result = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["result"]}
        return hashlib.sha1(json.dumps(result, sort_keys=True).encode()).hexdigest()[:16]

    def with_mode_defaults(self) -> "FinetuneSettings":
        """A copy with ``epochs``, ``lr`` and ``patience`` filled in from the mode's defaults.

        Raises:
            ConfigError: an unknown mode, or a batch size, epochs or patience below 1, or lr <= 0.
        """
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, not {self.mode!r}")
        defaults = MODE_DEFAULTS[self.mode]
        out = replace(self, epochs=int(self.epochs or defaults["epochs"]), lr=float(self.lr or defaults["lr"]),
                      patience=int(self.patience or defaults["patience"]))
        if out.batch_size < 1 or out.epochs < 1 or out.patience < 1 or out.lr <= 0:
            raise ConfigError("batch_size, epochs and patience must be >= 1 and lr > 0")
        return out

    def to_dict(self) -> dict:
        """Every setting, as saved with the run."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FinetuneSettings":
        """Settings from a saved dictionary; keys this version does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_run(cls, folder: str | os.PathLike) -> "FinetuneSettings":
        """The settings a fine-tuned folder was made with (its ``training_config.json``).

        Raises:
            DataNotFoundError: the folder has no fine-tuning settings.
        """
        path = Path(folder) / "training_config.json"
        try:
            return cls.from_dict(json.loads(path.read_text())["finetune"])
        except (OSError, ValueError, KeyError, TypeError):
            raise DataNotFoundError(f"{folder}: no fine-tuning settings ({path.name} with a 'finetune' "
                                    "entry)") from None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The command-line face: one flag per setting (``--batch-size`` for ``batch_size``,
        ``--no-progress`` for ``progress``), ``RUN`` positional."""
        for f in fields(cls):
            meta = f.metadata
            if not meta["flag"]:
                continue
            if meta.get("positional"):
                parser.add_argument(f.name, metavar=meta["metavar"], help=meta["help"])
            elif f.name == "progress":
                parser.add_argument("--no-progress", dest="progress", action="store_false", help=meta["help"])
            else:
                kw = {k: meta[k] for k in ("type", "metavar", "choices") if meta.get(k) is not None}
                if meta.get("required"):
                    kw["required"] = True
                else:
                    kw["default"] = f.default
                parser.add_argument("--" + f.name.replace("_", "-"), help=meta["help"], **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **extra: Any) -> "FinetuneSettings":
        """Settings from parsed command-line flags (:meth:`add_arguments`), plus ``extra``."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**values, **extra})
