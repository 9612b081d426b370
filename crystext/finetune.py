"""Fine-tune a pretrained crystext run on a property: a native ``transformers`` regression model.

A pretrained run (a GPT-2 causal LM folder) is loaded as ``GPT2ForSequenceClassification`` with
``num_labels=1`` and ``problem_type="regression"``: the transformer's weights are the run's, the
``score`` head (a bias-free ``Linear(d, 1)``) is new. The saved folder loads back with
``AutoModelForSequenceClassification.from_pretrained(DIR)`` and no custom code.

Pooling (what the head sees): GPT-2's sequence-classification model reads the hidden state of the
*last token that is not the pad token* (``config.pad_token_id``). Every document is
``<bos> text <eos>`` and batches are right-padded with ``<pad>`` (id distinct from ``<eos>``), so
that token is ``<eos>``, the one position that has attended to the whole text (the
``pooling="last"`` view of :mod:`crystext.embeddings`).

Modes:

* ``head``: the transformer frozen, only ``score`` trained. As a frozen, dropout-free transformer
  gives the same ``<eos>`` state at every epoch, those states are computed once and the head is
  trained on them (identical result, epochs cost microseconds).
* ``lora``: ``peft`` LoRA adapters on the attention and MLP projections (``c_attn``, ``c_proj``,
  ``c_fc``) plus the trainable ``score`` head; merged into the weights for the save, so the
  folder is a plain GPT-2 checkpoint.
* ``full``: every weight trained.

Targets are standardised with the training split's mean and standard deviation (kept in
``config.crystext_target = {"name", "unit", "mean", "std"}`` and undone by :func:`predict` and the
``crystal-property`` pipeline). Early stopping on the validation MAE (``patience`` epochs), the
best epoch's weights restored. A checkpoint per epoch in ``DIR/checkpoints/`` (the last one kept,
plus the best weights): rerunning the same command continues where it stopped.

Task folders: ``train.csv`` / ``val.csv`` / ``test.csv`` (no ``val.csv``: an inner validation
split of train), or 5 folds ``train{k}.csv`` / ``test{k}.csv`` (``fold=k``; inner validation split
of the training fold). A folder with ``val.csv`` and ``test.csv`` but no ``train.csv`` (the CDVAE
sets ``perov_5``, ``carbon_24`` in the shared data) follows that data's README: ``val`` is the
training split, and the validation split is carved from it. Inner validation splits and ``max_*``
subsamples use the benchmark's fixed data seed, so every model seed and mode sees the same rows.
Rows with an unparsable CIF, a missing target or a text longer than the model's context are
skipped and counted by reason (never truncated).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import SkippedRows, atomic_write_text, check_model_folder, save_into, skipped_path
from .errors import ConfigError, CrystextError, DataNotFoundError
from .settings import cache_dir

MODES = ("head", "lora", "full")
#: per-mode defaults (learning rate, epochs, patience): chosen so each mode converges on perov_5
MODE_DEFAULTS = {
    "head": {"lr": 3e-3, "epochs": 200, "patience": 20},
    "lora": {"lr": 1e-3, "epochs": 30, "patience": 4},
    "full": {"lr": 2e-4, "epochs": 30, "patience": 4},
}
#: share of the training rows held out for validation when a task has no validation split
#: (the benchmark protocol's :data:`crystext.benchmark.tasks.CARVED_VAL_FRACTION`)
VAL_FRACTION = 0.15
#: the benchmark's fixed data seed (:data:`crystext.benchmark.tasks.DATA_SEED`)
DATA_SEED = 20240501
#: units of the targets of the shared structure tasks, by (folder, column)
KNOWN_UNITS = {
    ("perov_5", "heat_all"): "eV/cell", ("perov_5", "heat_ref"): "eV/cell", ("perov_5", "dir_gap"): "eV",
    ("perov_5", "ind_gap"): "eV", ("carbon_24", "energy_per_atom"): "eV/atom",
    ("mp_e_form", "target"): "eV/atom", ("mp_dielectric_n", "target"): "",
    ("mp_log_kvrh", "target"): "log10(GPa)", ("mp_log_gvrh", "target"): "log10(GPa)",
}
#: default target column of the shared structure tasks whose targets are not called ``target``
DEFAULT_TARGETS = {"perov_5": "heat_all", "carbon_24": "energy_per_atom"}
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
CHECKPOINTS = "checkpoints"
LOG_FIELDS = ["epoch", "train_loss", "val_mae", "best_val_mae", "lr", "seconds"]


# --------------------------------------------------------------------------- task folders


@dataclass
class TaskData:
    """The splits of one task, rows already cleaned: ``{"train", "val", "test"}`` -> DataFrame
    with columns ``cif``, ``y`` (float) and ``row`` (row number in its file)."""

    name: str
    target: str
    unit: str | None
    splits: dict[str, pd.DataFrame]
    files: dict[str, str]
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    #: rows dropped while reading the tables: (split:row N, file, reason, message)
    dropped: list[tuple[str, str, str, str]] = field(default_factory=list)


def _read_split(path: Path, target: str) -> tuple[pd.DataFrame, Counter]:
    df = pd.read_csv(path, keep_default_na=False, na_values={target: ["", "nan", "NaN"]})
    missing = [c for c in ("cif", target) if c not in df.columns]
    if missing:
        raise DataNotFoundError(f"{path}: no column {' or '.join(repr(c) for c in missing)} "
                                f"(columns: {', '.join(map(str, df.columns))}); pass --target COL")
    y = pd.to_numeric(df[target], errors="coerce").to_numpy(dtype=np.float64)
    cif = df["cif"].astype(str)
    ok_y = np.isfinite(y)
    ok_cif = cif.str.strip().str.len().to_numpy() > 0
    skipped = Counter({"missing_target": int((~ok_y).sum()), "empty_cif": int((ok_y & ~ok_cif).sum())})
    keep = ok_y & ok_cif
    out = pd.DataFrame({"cif": cif[keep].tolist(), "y": y[keep], "row": np.flatnonzero(keep)})
    out.attrs["dropped"] = [(int(r), "missing_target", f"{target} is not a number") for r in np.flatnonzero(~ok_y)]
    out.attrs["dropped"] += [(int(r), "empty_cif", "the cif cell is empty") for r in np.flatnonzero(ok_y & ~ok_cif)]
    return out, +skipped


def _carve(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    n_val = max(1, int(round(fraction * len(df))))
    if len(df) - n_val < 2:
        raise ConfigError(f"{len(df)} training rows: too few to carve a validation split")
    val = df.iloc[np.sort(order[:n_val])].reset_index(drop=True)
    return df.iloc[np.sort(order[n_val:])].reset_index(drop=True), val


def _cap(df: pd.DataFrame, n_max: int | None, seed: int) -> pd.DataFrame:
    if n_max is None or n_max <= 0 or len(df) <= n_max:
        return df
    rng = np.random.default_rng(seed)
    return df.iloc[np.sort(rng.permutation(len(df))[:n_max])].reset_index(drop=True)


def load_task(data: str | os.PathLike, target: str | None = None, fold: int | None = None,
              train_split: str | None = None, unit: str | None = None, max_train: int | None = None,
              max_val: int | None = None, max_test: int | None = None) -> TaskData:
    """Read a task folder's splits (see the module docstring for the layouts).

    Args:
        data: the task folder.
        target: target column; default ``target``, or the shared sets' own (``perov_5``:
            ``heat_all``, ``carbon_24``: ``energy_per_atom``).
        fold: fold number for a 5-fold folder (``train{k}.csv`` / ``test{k}.csv``).
        train_split: the file stem used as the training split (``"val"`` for the CDVAE sets,
            which is what ``None`` picks when there is no ``train.csv``).
        unit: the target's unit (default: known for the shared tasks, else unknown).
        max_train, max_val, max_test: seeded subsamples (``None``/0 = all rows).

    Raises:
        DataNotFoundError: no such folder, split files absent, or no ``cif``/target column (the
            message names the file).
    """
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"task folder {folder}: no such folder")
    target = target or DEFAULT_TARGETS.get(folder.name, "target")
    notes: list[str] = []
    has = {p.name for p in folder.glob("*.csv")}
    if fold is not None:
        train_f, test_f, val_f = folder / f"train{fold}.csv", folder / f"test{fold}.csv", None
        if f"val{fold}.csv" in has:
            val_f = folder / f"val{fold}.csv"
        for f in (train_f, test_f):
            if not f.is_file():
                raise DataNotFoundError(f"task folder {folder}: fold {fold} needs {f.name} (found: "
                                        f"{', '.join(sorted(has)) or 'no CSV files'})")
    else:
        folds = sorted(n for n in has if n.startswith("train") and n[5:-4].isdigit())
        if train_split is None:
            if "train.csv" in has:
                train_split = "train"
            elif "val.csv" in has and "test.csv" in has:
                train_split = "val"
                notes.append(f"{folder.name}: no train.csv; val.csv is the training split (the shared "
                             "data README's convention for the CDVAE sets), validation carved from it")
            elif folds:
                raise DataNotFoundError(f"task folder {folder} holds folds ({', '.join(folds)}): pass a fold "
                                        "number (--fold K)")
        if train_split is None or f"{train_split}.csv" not in has or "test.csv" not in has:
            raise DataNotFoundError(
                f"task folder {folder}: expected train.csv/val.csv/test.csv, val.csv/test.csv, or folds "
                f"train{{k}}.csv/test{{k}}.csv (found: {', '.join(sorted(has)) or 'no CSV files'})")
        train_f, test_f = folder / f"{train_split}.csv", folder / "test.csv"
        val_f = folder / "val.csv" if train_split != "val" and "val.csv" in has else None
    skipped: Counter = Counter()
    dropped: list[tuple[str, str, str, str]] = []

    def read(name: str, path: Path) -> pd.DataFrame:
        df, sk = _read_split(path, target)
        skipped.update({f"{name}:{k}": v for k, v in sk.items()})
        dropped.extend((f"{name}:row {row}", path.name, reason, msg) for row, reason, msg in df.attrs.pop("dropped"))
        return df

    train, test = read("train", train_f), read("test", test_f)
    if val_f is not None:
        val = read("val", val_f)
    else:
        train, val = _carve(train, VAL_FRACTION, DATA_SEED)
        notes.append(f"validation: {len(val)} rows carved from {train_f.name} (seed {DATA_SEED})")
    splits = {"train": _cap(train, max_train, DATA_SEED), "val": _cap(val, max_val, DATA_SEED + 1),
              "test": _cap(test, max_test, DATA_SEED + 2)}
    name = folder.name + (f"/fold{fold}" if fold is not None else "") + (f"/{target}" if target != "target" else "")
    files = {"train": str(train_f), "val": str(val_f) if val_f else f"{train_f} (carved)", "test": str(test_f)}
    return TaskData(name, target, unit if unit is not None else KNOWN_UNITS.get((folder.name, target)), splits,
                    files, skipped, notes, dropped)


# --------------------------------------------------------------------------- text cache


def _cif_key(cif: str, symprec: float) -> str:
    return hashlib.sha1(f"{symprec}\n{cif}".encode()).hexdigest()


def _convert(args: tuple[str, float]) -> tuple[str | None, str | None]:
    """CIF -> (text, None) or (None, "Reason: message"); runs in worker processes."""
    cif, symprec = args
    from .inputs import to_structure
    from .text import structure_to_text

    try:
        return structure_to_text(to_structure(cif, name="cif"), symprec=symprec), None
    except Exception as exc:  # noqa: BLE001 - counted by reason, never fatal
        reason = type(exc).__name__ if isinstance(exc, CrystextError) else f"other:{type(exc).__name__}"
        return None, f"{reason}: {str(exc)[:200]}"


class TextCache:
    """Canonical texts of CIFs, cached on disk by a hash of (symprec, CIF) in an append-only JSONL
    file, so a killed conversion keeps what it finished and every run of a task reuses it."""

    def __init__(self, path: str | os.PathLike | None = None, symprec: float = 0.1) -> None:
        self.path = Path(path) if path else cache_dir() / "texts" / f"symprec-{symprec}.jsonl"
        self.symprec = symprec
        self.data: dict[str, tuple[str | None, str | None]] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        continue
                    self.data[rec["k"]] = (rec.get("t"), rec.get("e"))

    def texts(self, cifs: list[str], num_proc: int = 1, progress: bool = True,
              desc: str = "text") -> list[tuple[str | None, str | None]]:
        """``(text, error)`` for each CIF, converting (in ``num_proc`` processes) what is not cached."""
        from tqdm.auto import tqdm

        keys = [_cif_key(c, self.symprec) for c in cifs]
        todo = sorted({k: c for k, c in zip(keys, cifs) if k not in self.data}.items())
        if todo:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            bar = tqdm(total=len(todo), desc=desc, unit="cif", disable=not progress)
            with open(self.path, "a", encoding="utf-8") as fh:
                if num_proc > 1:
                    from concurrent.futures import ProcessPoolExecutor

                    with ProcessPoolExecutor(num_proc) as pool:
                        results = pool.map(_convert, [(c, self.symprec) for _, c in todo], chunksize=8)
                        for (k, _), res in zip(todo, results):
                            self._put(fh, k, res)
                            bar.update(1)
                else:
                    for k, c in todo:
                        self._put(fh, k, _convert((c, self.symprec)))
                        bar.update(1)
            bar.close()
        return [self.data[k] for k in keys]

    def _put(self, fh, key: str, res: tuple[str | None, str | None]) -> None:
        self.data[key] = res
        fh.write(json.dumps({"k": key, "t": res[0], "e": res[1]}) + "\n")
        fh.flush()


def encode_split(df: pd.DataFrame, tokenizer, max_len: int, cache: TextCache, num_proc: int = 1,
                 progress: bool = True, desc: str = "text",
                 log: list | None = None) -> tuple[list[list[int]], np.ndarray, np.ndarray, Counter, list[str]]:
    """Token ids of a split's structures. Returns ``(ids, y, kept row numbers, skip counts,
    examples)``; a structure that does not convert, does not tokenize, or is longer than
    ``max_len`` tokens is skipped and counted (``too_long`` for the last: never truncated).
    ``log``: a list that receives every skipped row as ``(row, reason, message)``."""
    from .tokenization import encode_checked

    def skip(row: int, reason: str, message: str) -> None:
        skipped[reason] += 1
        if len(examples) < 5:
            examples.append(f"row {row}: {message}")
        if log is not None:
            log.append((row, reason, message))

    results = cache.texts(df["cif"].tolist(), num_proc=num_proc, progress=progress, desc=desc)
    ids: list[list[int]] = []
    keep: list[int] = []
    skipped: Counter = Counter()
    examples: list[str] = []
    for i, (text, err) in enumerate(results):
        row = int(df["row"].iloc[i])
        if text is None:
            skip(row, err.split(":", 1)[0] if err else "unknown", str(err))
            continue
        try:
            tok = encode_checked(tokenizer, text, add_special_tokens=True)
        except CrystextError as exc:
            skip(row, type(exc).__name__, str(exc))
            continue
        if len(tok) > max_len:
            skip(row, "too_long", f"{len(tok)} tokens, longer than the context of {max_len}")
            continue
        ids.append(tok)
        keep.append(i)
    return ids, df["y"].to_numpy()[keep], df["row"].to_numpy()[keep], skipped, examples


# --------------------------------------------------------------------------- model


def load_for_regression(run: str | os.PathLike, seed: int = 0, dtype: str = "float32"):
    """A pretrained run as ``(GPT2ForSequenceClassification, tokenizer)``: ``num_labels=1``,
    ``problem_type="regression"``, ``pad_token_id`` from the tokenizer, a fresh ``score`` head
    (initialised under ``seed``), float32 weights whatever the release's storage dtype."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .embeddings import _resolve_run_path

    source = _resolve_run_path(run)
    if Path(source).is_dir():
        check_model_folder(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise DataNotFoundError(f"run {run}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"run {run}: its tokenizer has no pad token; batching needs one")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ConfigError(f"run {run}: pad and eos share id {tokenizer.pad_token_id}; the last-token pooling "
                          "would pick the wrong token")
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is the point here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, problem_type="regression", pad_token_id=tokenizer.pad_token_id,
            use_safetensors=True, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise DataNotFoundError(f"run {run}: cannot load as a sequence-regression model "
                                f"({str(exc).strip().splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer.padding_side = "right"
    return model, tokenizer


def _pad(batch: list[list[int]], pad_id: int):
    from .tokenization import pad_batch

    return pad_batch(batch, pad_id)  # over-long texts were excluded and counted before


def _batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Seeded per-epoch batches, sorted by length within windows of 16 batches (less padding)."""
    from .batching import epoch_plan

    return epoch_plan(lengths, batch_size, 16, seed, epoch, min_batch=1)


def _amp(device, precision: str):
    import torch

    from .precision import autocast_dtype

    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _final_states(model, ids: list[list[int]], pad_id: int, batch_size: int, precision: str,
                  poolings: tuple[str, ...] = ("last",), special_ids: list[int] = ()) -> list:
    """Final-layer hidden states pooled per document, one (n, d) float32 tensor per pooling, from one
    forward pass a batch: ``"last"`` is the state at the last non-pad token (``<eos>``, what
    ``score`` reads), ``"mean"`` the average over the tokens not in ``special_ids``."""
    import torch

    from .embeddings import pool_views

    device = next(model.parameters()).device
    order = np.argsort([len(r) for r in ids], kind="stable")
    out = [torch.zeros((len(ids), model.config.n_embd), dtype=torch.float32) for _ in poolings]
    views = [(int(model.config.n_layer), p) for p in poolings]
    model.eval()
    with torch.inference_mode(), _amp(device, precision):
        for start in range(0, len(order), batch_size):
            idx = torch.as_tensor(order[start:start + batch_size])
            x, m = _pad([ids[i] for i in idx.tolist()], pad_id)
            for whole, part in zip(out, pool_views(model, x.to(device), m.to(device), special_ids, views)):
                whole[idx] = part.float().cpu()
    return out


def _eos_states(model, ids: list[list[int]], pad_id: int, batch_size: int, precision: str):
    """Final-layer hidden state at the last non-pad token (what ``score`` reads): (n, d) float32."""
    return _final_states(model, ids, pad_id, batch_size, precision)[0]


class EosCache:
    """Frozen ``<eos>`` states of one pretrained run, on disk, keyed by a hash of each document's
    token ids: head mode's one forward pass is paid once per document, not once per learning
    rate, seed and fold (every fold of a 5-fold task holds the same structures).

    The folder is named by a hash of the run's weights file and the precision, so another run, a
    retrained release or another autocast dtype never reads these states."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)

    @classmethod
    def for_run(cls, run: str | os.PathLike, precision: str, root: str | os.PathLike | None = None,
                digest: str | None = None) -> "EosCache | None":
        """The cache of a local run folder (``None`` for a Hub id: no local weights file to name it by);
        ``digest``: the run's :func:`~crystext.embeddings.weights_digest` when the caller has it."""
        from .embeddings import weights_digest

        digest = digest or weights_digest(run)
        if digest is None:
            return None
        return cls(Path(root or cache_dir() / "eos") / f"{digest[:16]}-{precision}")

    @staticmethod
    def _key(ids: list[int]) -> str:
        return hashlib.sha1(np.asarray(ids, dtype=np.int32).tobytes()).hexdigest()

    def _load(self) -> tuple[list[str], np.ndarray | None]:
        try:
            with np.load(self.dir / "states.npz", allow_pickle=False) as z:
                return z["keys"].tolist(), z["states"]
        except (OSError, ValueError, KeyError):
            return [], None

    def states(self, model, ids: list[list[int]], pad_id: int, batch_size: int, precision: str):
        """(n, d) float32 tensor of the ``<eos>`` states of ``ids``, computing only what is missing."""
        import torch

        keys, states = self._load()
        index = {k: i for i, k in enumerate(keys)}
        want = [self._key(r) for r in ids]
        todo = sorted({k: i for i, k in enumerate(want) if k not in index}.values())
        if todo:
            new = _eos_states(model, [ids[i] for i in todo], pad_id, batch_size, precision).numpy()
            keys = keys + [want[i] for i in todo]
            states = new if states is None else np.concatenate([states, new])
            index = {k: i for i, k in enumerate(keys)}
            self.dir.mkdir(parents=True, exist_ok=True)
            # keys and states in one file, replaced whole: a kill or a concurrent writer never pairs
            # one write's keys with another's states
            tmp = self.dir / f"states.{os.getpid()}.tmp.npz"
            np.savez(tmp, keys=np.asarray(keys), states=states)
            os.replace(tmp, self.dir / "states.npz")
        return torch.from_numpy(np.ascontiguousarray(states[[index[k] for k in want]], dtype=np.float32))


def _predict_ids(model, ids: list[list[int]], pad_id: int, batch_size: int, precision: str) -> np.ndarray:
    """Standardised predictions of token-id lists, in input order."""
    import torch

    device = next(model.parameters()).device
    order = np.argsort([len(r) for r in ids], kind="stable")
    out = np.zeros(len(ids), dtype=np.float64)
    model.eval()
    with torch.inference_mode(), _amp(device, precision):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x, m = _pad([ids[i] for i in idx], pad_id)
            logits = model(input_ids=x.to(device), attention_mask=m.to(device)).logits
            out[idx] = logits.float().reshape(-1).cpu().numpy()
    return out


def _trainable(model, mode: str, lora_r: int, lora_alpha: int, lora_dropout: float):
    """Freeze / wrap ``model`` for ``mode``; returns the model to train (a peft model for lora)."""
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if mode == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("score."))
        return model
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(LORA_TARGETS),
                     fan_in_fan_out=True, modules_to_save=["score"], task_type="SEQ_CLS", bias="none")
    return get_peft_model(model, cfg)


def _trained_state(model) -> dict:
    """The weights a checkpoint must keep: the trainable parameters (the frozen ones are the
    pretrained run's and are reloaded from it)."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def _base(model):
    """The plain transformers model under a peft wrapper (weights merged), or the model itself."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


# --------------------------------------------------------------------------- settings


@dataclass
class FinetuneSettings:
    """What a fine-tuning run depends on; a resume refuses settings that differ."""

    run: str
    data: str
    target: str
    mode: str
    fold: int | None = None
    train_split: str | None = None
    seed: int = 0
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 32
    patience: int = 4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    symprec: float = 0.1
    precision: str = "float32"
    #: SHA-256 of the run's weights (``None`` for a Hub id): a retrained release under the same
    #: folder name is another starting point, so its folder is never "complete" from the old one
    run_weights: str | None = None

    def fingerprint(self) -> str:
        # every setting, the epoch budget included: the cosine schedule spans ``epochs``, so a run
        # of another budget is another run (neither "complete" nor resumable as this one)
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    err = pred - y
    ss = float(((y - y.mean()) ** 2).sum())
    return {"n": int(len(y)), "mae": float(np.abs(err).mean()) if len(y) else float("nan"),
            "rmse": float(np.sqrt((err ** 2).mean())) if len(y) else float("nan"),
            "r2": float(1 - (err ** 2).sum() / ss) if ss > 0 else float("nan")}


def _rng_state() -> dict:
    import torch

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the loop


def finetune(run: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, mode: str = "lora",
             target: str | None = None, fold: int | None = None, train_split: str | None = None,
             unit: str | None = None, seed: int = 0, epochs: int | None = None, lr: float | None = None,
             batch_size: int = 32, patience: int | None = None, max_train: int | None = None,
             max_val: int | None = None, max_test: int | None = None, precision: str = "auto",
             device: Any = None, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0,
             weight_decay: float = 0.01, symprec: float = 0.1, num_proc: int = 1,
             text_cache: str | os.PathLike | None = None, progress: bool = True,
             stop_after: int | None = None, command: str | None = None,
             eos_cache: str | os.PathLike | bool | None = None) -> dict:
    """Fine-tune ``run`` on the task folder ``data`` and save a regression model in ``out``.

    Args:
        run: pretrained run folder, name under ``models/``, or Hub id.
        data: task folder (see :func:`load_task`); ``target``/``fold``/``train_split``/``unit``
            as there.
        out: output folder: ``save_pretrained`` files, ``training_config.json``, ``eval.json``
            (validation/test metrics), ``log.csv``, ``README.md`` (card), ``checkpoints/``.
        mode: ``head``, ``lora`` or ``full``.
        seed: model seed (head initialisation, batch order, dropout).
        epochs, lr, patience: default per mode (:data:`MODE_DEFAULTS`).
        precision: ``auto`` (bf16 autocast only where this machine runs it fast), ``bfloat16``,
            ``float32``; resolved by :func:`crystext.precision.resolve_precision`.
        stop_after: end this session after so many epochs (checkpoint kept; rerun to continue).
        text_cache: JSONL file of cached canonical texts (default under :func:`cache_dir`).
        eos_cache: head mode: root folder of cached frozen ``<eos>`` states (:class:`EosCache`;
            default ``<cache_dir>/eos``, one subfolder per run weights and precision), or ``False``
            to recompute them.

    Returns:
        The summary written to ``out/eval.json`` (``status`` is ``"done"`` or ``"paused"``).

    Raises:
        ConfigError: bad settings, or a resume with settings that differ from the checkpoint's.
        DataNotFoundError: missing run, task folder, split file or column.
    """
    import torch
    from tqdm.auto import tqdm

    from .embeddings import resolve_device, weights_digest
    from .precision import resolve_precision

    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, not {mode!r}")
    defaults = MODE_DEFAULTS[mode]
    epochs = int(epochs or defaults["epochs"])
    lr = float(lr or defaults["lr"])
    patience = int(patience or defaults["patience"])
    if batch_size < 1 or epochs < 1 or patience < 1 or lr <= 0:
        raise ConfigError("batch_size, epochs and patience must be >= 1 and lr > 0")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    out = Path(out)
    task = load_task(data, target, fold, train_split, unit, max_train, max_val, max_test)
    settings = FinetuneSettings(
        run=str(run), data=str(Path(data).resolve()), target=task.target, mode=mode, fold=fold,
        train_split=train_split, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, patience=patience,
        weight_decay=weight_decay, max_train=max_train, max_val=max_val, max_test=max_test, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, symprec=symprec, precision=precision,
        run_weights=weights_digest(run))
    ckpt_dir = out / CHECKPOINTS
    state_file = ckpt_dir / "state.json"
    if (out / "eval.json").is_file() and (out / "model.safetensors").is_file():
        done = json.loads((out / "eval.json").read_text())
        if done.get("status") == "done" and done.get("fingerprint") == settings.fingerprint():
            print(f"finetune: {out} is complete (best epoch {done.get('best_epoch')}); nothing to do", file=sys.stderr)
            return done
    resume = None
    if state_file.is_file():
        resume = json.loads(state_file.read_text())
        if resume["fingerprint"] != settings.fingerprint():
            raise ConfigError(
                f"{out}: holds a checkpoint of other settings ({resume['settings']}); use another --out or "
                "delete its checkpoints/ folder to start over")

    for note in task.notes:
        print(f"finetune: {note}", file=sys.stderr)
    model, tokenizer = load_for_regression(run, seed=seed)
    max_len = int(getattr(model.config, "n_positions", None) or model.config.max_position_embeddings)
    cache = TextCache(text_cache, symprec=symprec)
    encoded: dict[str, tuple] = {}
    skipped = Counter(task.skipped)
    examples: list[str] = []
    listing = SkippedRows(skipped_path(out, folder=True))
    listing.extend(task.dropped)
    for name, df in task.splits.items():
        log: list = []
        ids, y, rows, sk, ex = encode_split(df, tokenizer, max_len, cache, num_proc, progress, desc=f"text {name}",
                                            log=log)
        source = Path(str(task.files.get(name, name)).split(" ")[0]).name
        listing.extend((f"{name}:row {row}", source, reason, message) for row, reason, message in log)
        encoded[name] = (ids, y, rows)
        skipped.update({f"{name}:{k}": v for k, v in sk.items()})
        examples += [f"{name} {e}" for e in ex[:2]]
        if not ids:
            raise ConfigError(f"task {task.name}: no usable {name} rows ({dict(sk)}; first: {ex[:1]})")
    y_train = encoded["train"][1]
    mean, std = float(y_train.mean()), float(y_train.std()) or 1.0
    pad_id = tokenizer.pad_token_id

    _seed_all(seed)
    model.to(dev)
    trainee = _trainable(model, mode, lora_r, lora_alpha, lora_dropout)
    params = [p for p in trainee.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    train_ids, _, _ = encoded["train"]
    z_train = torch.tensor((y_train - mean) / std, dtype=torch.float32)
    lengths = np.array([len(r) for r in train_ids])
    steps_per_epoch = len(_batches(lengths, batch_size, seed, 0))
    total_steps = steps_per_epoch * epochs
    warmup = max(1, int(settings.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))))

    # head mode: the frozen transformer's <eos> states, once
    feature_s = 0.0
    feats: dict[str, Any] = {}
    if mode == "head":
        t0 = time.perf_counter()
        eos_cache = None if eos_cache is False else EosCache.for_run(
            run, precision, root=None if eos_cache in (None, True) else eos_cache, digest=settings.run_weights)
        embed = _eos_states if eos_cache is None else eos_cache.states
        names = ("train", "val", "test")
        # one call over every split: the cache file is read and rewritten once, not once per split
        states = embed(model, [r for n in names for r in encoded[n][0]], pad_id, batch_size * 2, precision).to(dev)
        for name, part in zip(names, torch.split(states, [len(encoded[n][0]) for n in names])):
            feats[name] = part
        feature_s = time.perf_counter() - t0

    def evaluate(split: str) -> np.ndarray:
        if mode == "head":
            with torch.inference_mode():
                return model.score(feats[split]).float().reshape(-1).cpu().numpy() * std + mean
        return _predict_ids(trainee, encoded[split][0], pad_id, batch_size * 2, precision) * std + mean

    start_epoch, best_val, best_epoch, bad_epochs, history = 0, float("inf"), -1, 0, []
    elapsed_before = 0.0
    if resume is not None:
        blob = torch.load(ckpt_dir / "last.pt", map_location=dev, weights_only=False)
        trainee.load_state_dict(blob["model"], strict=False)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        _set_rng_state(blob["rng"])
        start_epoch, best_val, best_epoch = resume["epoch"], resume["best_val_mae"], resume["best_epoch"]
        bad_epochs, history, elapsed_before = resume["bad_epochs"], resume["history"], resume["train_s"]
        print(f"finetune: resuming {out} after epoch {start_epoch} (best val MAE {best_val:.4g} at epoch "
              f"{best_epoch})", file=sys.stderr)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    train_t0 = time.perf_counter()
    status = "done"
    epoch = start_epoch
    while epoch < epochs and bad_epochs < patience:
        if stop_after is not None and epoch - start_epoch >= stop_after:
            status = "paused"
            break
        t0 = time.perf_counter()
        trainee.train()
        plan = _batches(lengths, batch_size, seed, epoch)
        losses = []
        bar = tqdm(plan, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=False)
        for idx in bar:
            with _amp(dev, precision):
                if mode == "head":
                    pred = model.score(feats["train"][torch.as_tensor(idx, device=dev)])
                else:
                    x, m = _pad([train_ids[i] for i in idx], pad_id)
                    pred = trainee(input_ids=x.to(dev), attention_mask=m.to(dev)).logits
            loss = torch.nn.functional.mse_loss(pred.float().reshape(-1), z_train[idx].to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", best_val_mae=f"{best_val:.4g}", refresh=False)
        bar.close()
        val_mae = _metrics(encoded["val"][1], evaluate("val"))["mae"]
        epoch += 1
        improved = val_mae < best_val
        if improved:
            best_val, best_epoch, bad_epochs = val_mae, epoch, 0
            torch.save(_trained_state(trainee), ckpt_dir / "best.pt")
        else:
            bad_epochs += 1
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_mae": val_mae,
                        "best_val_mae": best_val, "lr": scheduler.get_last_lr()[0], "seconds": seconds})
        line = (f"epoch {epoch}/{epochs}: train loss {np.mean(losses):.4f}, val MAE {val_mae:.4g}"
                f"{' (best)' if improved else ''}, {seconds:.1f} s")
        if progress:
            tqdm.write(line)
        torch.save({"model": _trained_state(trainee), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": _rng_state()}, ckpt_dir / "last.tmp")
        os.replace(ckpt_dir / "last.tmp", ckpt_dir / "last.pt")
        state = {"fingerprint": settings.fingerprint(), "settings": asdict(settings), "epoch": epoch,
                 "best_val_mae": best_val, "best_epoch": best_epoch, "bad_epochs": bad_epochs, "history": history,
                 "train_s": elapsed_before + time.perf_counter() - train_t0}
        (ckpt_dir / "state.tmp").write_text(json.dumps(state, indent=1))
        os.replace(ckpt_dir / "state.tmp", state_file)
    train_s = elapsed_before + time.perf_counter() - train_t0
    _write_log(out / "log.csv", history)
    if status == "paused":
        summary = {"status": "paused", "epoch": epoch, "best_epoch": best_epoch, "best_val_mae": best_val,
                   "fingerprint": settings.fingerprint()}
        print(f"finetune: paused after epoch {epoch}; rerun the same command to continue", file=sys.stderr)
        return summary

    trainee.load_state_dict(torch.load(ckpt_dir / "best.pt", map_location=dev, weights_only=True), strict=False)
    test_pred = evaluate("test")  # once: the test split is the slowest pass left
    metrics = {"val": _metrics(encoded["val"][1], evaluate("val")), "test": _metrics(encoded["test"][1], test_pred)}
    final = _base(trainee).float().cpu()
    final.config.crystext_target = {"name": task.target, "unit": task.unit, "mean": mean, "std": std,
                                    "task": task.name}
    final.config.id2label = {0: task.target}
    final.config.label2id = {task.target: 0}
    final.config.architectures = [type(final).__name__]

    def save_model(tmp: Path) -> None:  # each file renamed into place whole (see crystext.atomic.save_into)
        final.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        pd.DataFrame({"row": encoded["test"][2], "target": encoded["test"][1], "prediction": test_pred}).to_csv(
            tmp / "test_predictions.csv", index=False)

    save_into(out, save_model)
    listing.write()
    epoch_s = [h["seconds"] for h in history]
    summary = {
        "status": "done", "fingerprint": settings.fingerprint(), "task": task.name, "target": task.target,
        "unit": task.unit, "mode": mode, "seed": seed, "base_run": str(run), "files": task.files,
        "best_epoch": best_epoch, "epochs_run": len(history), "stopped_early": bad_epochs >= patience,
        "val": metrics["val"], "test": metrics["test"],
        "rows": {k: len(v[0]) for k, v in encoded.items()}, "skipped": dict(skipped), "skip_examples": examples,
        "target_mean": mean, "target_std": std, "trainable_parameters": int(n_trainable),
        "precision": precision, "feature_s": round(feature_s, 2), "train_s": round(train_s, 2),
        "s_per_epoch": round(float(np.median(epoch_s)), 3) if epoch_s else None, "notes": task.notes,
        "skipped_file": listing.path.name,
    }
    atomic_write_text(out / "eval.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "training_config.json", json.dumps({
        "finetune": asdict(settings), "mixed_precision": precision, "save_dtype": "float32",
        "architecture": type(final).__name__, "pooling": "last non-pad token (<eos>)", "command": command,
        "train_time_s": round(train_s + feature_s, 2), "versions": _versions(),
    }, indent=1))
    atomic_write_text(out / "README.md", render_finetune_card(out, summary))
    for stale in ("last.pt",):  # the best weights stay; the optimiser state is no longer needed
        (ckpt_dir / stale).unlink(missing_ok=True)
    return summary


def _write_log(path: Path, history: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for h in history:
            writer.writerow({k: h.get(k) for k in LOG_FIELDS})


def _versions() -> dict:
    import torch
    import transformers

    from .version import __version__

    out = {"crystext": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


CARD = """---
library_name: transformers
pipeline_tag: tabular-regression
tags: [materials, crystal-structure, cif, crystext, regression]
base_model: {base}
---

# {title}

A crystext model fine-tuned to predict **{target}**{unit_text} from a crystal structure: a native
`GPT2ForSequenceClassification` (one output, `problem_type="regression"`), loadable with
`AutoModelForSequenceClassification.from_pretrained` and no custom code. It reads the canonical
crystext text of a structure, `<bos> text <eos>`, and regresses from the final hidden state of the
last non-pad token (`<eos>`). Its raw output is standardised: multiply by `std` and add `mean`
from `config.crystext_target` (the `crystal-property` pipeline does this).

```python
import crystext, transformers
crystext.pipeline.register_pipeline()
predict = transformers.pipeline("crystal-property", model="{title}")
predict(structure)   # {{"value": ..., "target": "{target}", "unit": "{unit}"}}
```

## Task and metrics

- task: `{task}` (files: {files})
- fine-tuning: mode `{mode}` from `{base}`, seed {seed}, best epoch {best_epoch} of {epochs_run}
  (early stopping on the validation MAE), precision {precision}, {s_per_epoch} s per epoch
- rows used: train {n_train}, validation {n_val}, test {n_test}; skipped: {skipped}

| split | n | MAE | RMSE | R² |
|---|---|---|---|---|
| validation | {val[n]} | {val[mae]:.4g} | {val[rmse]:.4g} | {val[r2]:.3f} |
| test | {test[n]} | {test[mae]:.4g} | {test[rmse]:.4g} | {test[r2]:.3f} |

Made by `{command}`.
"""


def render_finetune_card(out: str | os.PathLike, summary: dict, repo_id: str | None = None) -> str:
    """The model card (README.md) of a fine-tuned folder from its ``eval.json`` summary; ``repo_id``
    (``OWNER/NAME``) names the model in the card's title and usage snippet (default: the folder)."""
    out = Path(out)
    if summary.get("status") != "done":
        raise ConfigError(f"{out}: the fine-tuning has not finished (eval.json status "
                          f"{summary.get('status')!r}); rerun the same crystext finetune command first")
    cfg = {}
    if (out / "training_config.json").is_file():
        cfg = json.loads((out / "training_config.json").read_text())
    unit = summary.get("unit") or ""
    return CARD.format(
        base=Path(str(summary["base_run"])).name, title=repo_id or out.name, target=summary["target"],
        unit=unit, unit_text=f" ({unit})" if unit else "", task=summary["task"],
        files=", ".join(f"{k}: `{Path(v.split(' ')[0]).name}`{' (carved)' if 'carved' in v else ''}"
                        for k, v in summary["files"].items()),
        mode=summary["mode"], seed=summary["seed"], best_epoch=summary["best_epoch"],
        epochs_run=summary["epochs_run"], precision=summary["precision"], s_per_epoch=summary["s_per_epoch"],
        n_train=summary["rows"]["train"], n_val=summary["rows"]["val"], n_test=summary["rows"]["test"],
        skipped=", ".join(f"{k} {v}" for k, v in sorted(summary["skipped"].items())) or "none",
        val=summary["val"], test=summary["test"], command=cfg.get("command") or "crystext finetune (API call)")


# --------------------------------------------------------------------------- using a fine-tuned folder


def is_finetuned(run: Any) -> bool:
    """True for a ``crystext finetune`` output folder (its ``config.json`` carries ``crystext_target``);
    False for anything else (a pretrained run, a model in memory, a missing folder)."""
    try:
        config = Path(run) / "config.json"
        return isinstance(run, (str, os.PathLike)) and config.is_file() and "crystext_target" in json.loads(
            config.read_text())
    except (OSError, ValueError, TypeError):
        return False


def load_finetuned(path: str | os.PathLike, device: Any = None):
    """``(model, tokenizer, target)`` of a fine-tuned folder: the model in eval mode, float32,
    right padding; ``target`` is ``config.crystext_target`` (``{}`` when absent)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .embeddings import _resolve_run_path, resolve_device

    source = _resolve_run_path(path)
    if Path(source).is_dir():
        check_model_folder(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise DataNotFoundError(f"fine-tuned model {path}: cannot load ({str(exc).strip().splitlines()[0]})") from None
    if model.config.num_labels != 1:
        raise ConfigError(f"{path}: {model.config.num_labels} outputs; a crystext property model has 1")
    tokenizer.padding_side = "right"
    model.to(resolve_device(device)).eval()
    return model, tokenizer, dict(getattr(model.config, "crystext_target", None) or {})


def _encode_structures(structures, tokenizer, max_len: int, symprec: float) -> list[list[int]]:
    from .embeddings import encode_text
    from .inputs import to_structure
    from .text import structure_to_text

    out = []
    for i, s in enumerate(structures):
        name = f"input {i}"
        out.append(encode_text(structure_to_text(to_structure(s, name=name), symprec=symprec), tokenizer,
                               max_len, name=name))
    return out


def predict(model_dir: str | os.PathLike, structures, batch_size: int = 32, device: Any = None,
            precision: str = "float32", symprec: float = 0.1) -> np.ndarray:
    """Predicted targets (original units) of structures with a fine-tuned folder: (n,) float64.

    Structures: anything :func:`crystext.to_structure` takes. Errors name the list index.
    """
    from .precision import resolve_precision

    model, tokenizer, target = load_finetuned(model_dir, device)
    ids = _encode_structures(list(structures), tokenizer, int(model.config.n_positions), symprec)
    prec = resolve_precision(precision, next(model.parameters()).device)
    z = _predict_ids(model, ids, tokenizer.pad_token_id, batch_size, prec)
    return z * float(target.get("std", 1.0)) + float(target.get("mean", 0.0))


def finetuned_features(model_dir: str | os.PathLike, structures, batch_size: int = 32, device: Any = None,
                       precision: str = "float32", symprec: float = 0.1, with_prediction: bool = False,
                       pooling: str = "last") -> np.ndarray:
    """LM-branch vectors of a fine-tuned folder for the multi-scale heads: (n, d) float32.

    ``pooling="last"``: the final hidden state at ``<eos>`` (what the regression head reads);
    ``"mean"``: the final hidden states averaged over the text tokens (as
    :func:`crystext.structure_embeddings` pools a pretrained run), which the multi-scale heads use
    (on perov_5 it gave the MLP 14 % lower MAE than ``<eos>`` + prediction;
    ``benchmarks/finetune/README.md``). With ``with_prediction`` the model's prediction (original
    units) is appended as column ``d``."""
    import torch

    from .embeddings import special_token_ids
    from .precision import resolve_precision

    if pooling not in ("last", "mean"):
        raise ConfigError(f"pooling must be 'last' or 'mean', not {pooling!r}")
    model, tokenizer, target = load_finetuned(model_dir, device)
    ids = _encode_structures(list(structures), tokenizer, int(model.config.n_positions), symprec)
    if not ids:
        return np.zeros((0, model.config.n_embd + int(with_prediction)), dtype=np.float32)
    prec = resolve_precision(precision, next(model.parameters()).device)
    last, mean = _final_states(model, ids, tokenizer.pad_token_id, batch_size, prec, ("last", "mean"),
                               special_token_ids(tokenizer))
    states = last if pooling == "last" else mean
    if with_prediction:
        with torch.inference_mode():
            z = model.score(last.to(next(model.parameters()).device)).float().cpu()
        pred = z * float(target.get("std", 1.0)) + float(target.get("mean", 0.0))
        states = torch.cat([states, pred], dim=1)
    return states.numpy().astype(np.float32)
