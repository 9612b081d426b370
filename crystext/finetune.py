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

Task folders are read by the task layer (:func:`crystext.tasks.load_task`): ``train.csv`` /
``val.csv`` / ``test.csv``, ``val.csv`` / ``test.csv`` (the CDVAE sets: ``val`` is the training
split) or folds ``train{k}.csv`` / ``test{k}.csv`` (``fold=k``); without a validation file, one is
carved from the training split, and ``max_*`` subsamples use the same fixed data seed, so every
model seed and mode sees the same rows. Rows with an unparsable CIF, a missing target or a text
longer than the model's context are skipped and counted by reason (never truncated).

The run's settings are one :class:`~crystext.finetune_config.FinetuneSettings` (saved in
``training_config.json``); :func:`finetune` is its keyword face, :func:`run_finetune` takes the
object. The run is: resolve the settings and read the task, encode the splits, build the model
and optimiser (:class:`_Session`), train epoch by epoch with a checkpoint after each, save the
best epoch's model with its metrics and card.
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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import SkippedRows, atomic_write_text, check_model_folder, save_into, skipped_path
from .encoding import DEFAULT_SYMPREC, TextCache, TextForm, encode_cifs, encode_inputs
from .errors import ConfigError, DataNotFoundError
from .finetune_config import FinetuneSettings
from .settings import cache_dir
from .tasks import load_task

LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
CHECKPOINTS = "checkpoints"
LOG_FIELDS = ["epoch", "train_loss", "val_mae", "best_val_mae", "lr", "seconds"]


# --------------------------------------------------------------------------- encoding


def encode_split(df: pd.DataFrame, tokenizer, max_len: int, cache: TextCache, num_proc: int = 1,
                 progress: bool = True, desc: str = "text",
                 log: list | None = None) -> tuple[list[list[int]], np.ndarray, np.ndarray, Counter, list[str]]:
    """Token ids of a split's structures (the encode step, :func:`crystext.encoding.encode_cifs`).
    Returns ``(ids, y, kept row numbers, skip counts, examples)``; a structure that does not
    convert, does not tokenize, or is longer than ``max_len`` tokens is skipped and counted
    (``too_long`` for the last: never truncated). ``log``: a list that receives every skipped row
    as ``(row, reason, message)``."""
    enc = encode_cifs(df["cif"].tolist(), tokenizer, max_len, cache, num_proc=num_proc, progress=progress, desc=desc)
    rows = df["row"].to_numpy()
    if log is not None:
        log.extend((int(rows[i]), reason, message) for i, reason, message in enc.log)
    examples = [f"row {int(rows[i])}: {message}" for i, _, message in enc.log[:5]]
    return enc.ids, df["y"].to_numpy()[enc.kept], rows[enc.kept], enc.skipped, examples


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


# --------------------------------------------------------------------------- pieces of the loop


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


@dataclass
class _Progress:
    """Where the epochs stand; saved in ``checkpoints/state.json`` after each epoch."""

    epoch: int = 0
    best_val_mae: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    train_s: float = 0.0


class _Session:
    """One fine-tuning run's model, optimiser and schedule on the encoded splits: an epoch, a
    prediction, a checkpoint and its restore."""

    def __init__(self, settings: FinetuneSettings, model, pad_id: int, encoded: dict[str, tuple], device) -> None:
        import torch

        self.s, self.model, self.pad_id, self.encoded, self.dev = settings, model, pad_id, encoded, device
        y_train = encoded["train"][1]
        self.mean, self.std = float(y_train.mean()), float(y_train.std()) or 1.0
        _seed_all(settings.seed)
        model.to(device)
        self.trainee = _trainable(model, settings.mode, settings.lora_r, settings.lora_alpha, settings.lora_dropout)
        self.params = [p for p in self.trainee.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.z_train = torch.tensor((y_train - self.mean) / self.std, dtype=torch.float32)
        self.lengths = np.array([len(r) for r in encoded["train"][0]])
        total = len(_batches(self.lengths, settings.batch_size, settings.seed, 0)) * settings.epochs
        warmup = max(1, int(settings.warmup_fraction * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 0
            self.optimizer,
            lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))))
        self.feats: dict[str, Any] = {}
        self.feature_s = 0.0

    def cache_head_inputs(self) -> None:
        """Head mode: the frozen transformer's ``<eos>`` states of every split, once (or from the
        :class:`EosCache`), so that each epoch trains the head alone."""
        import torch

        s, t0 = self.s, time.perf_counter()
        cache = None if s.eos_cache is False else EosCache.for_run(
            s.run, s.precision, root=None if s.eos_cache in (None, True) else s.eos_cache, digest=s.run_weights)
        embed = _eos_states if cache is None else cache.states
        names = ("train", "val", "test")
        # one call over every split: the cache file is read and rewritten once, not once per split
        ids = [r for n in names for r in self.encoded[n][0]]
        states = embed(self.model, ids, self.pad_id, s.batch_size * 2, s.precision).to(self.dev)
        self.feats = dict(zip(names, torch.split(states, [len(self.encoded[n][0]) for n in names])))
        self.feature_s = time.perf_counter() - t0

    def predict(self, split: str) -> np.ndarray:
        """Predictions of one split, in target units."""
        import torch

        if self.s.mode == "head":
            with torch.inference_mode():
                z = self.model.score(self.feats[split]).float().reshape(-1).cpu().numpy()
        else:
            z = _predict_ids(self.trainee, self.encoded[split][0], self.pad_id, self.s.batch_size * 2, self.s.precision)
        return z * self.std + self.mean

    def train_epoch(self, epoch: int, best_val: float) -> float:
        """One pass over the training rows in seeded, length-sorted batches; the mean loss."""
        import torch
        from tqdm.auto import tqdm

        s, dev = self.s, self.dev
        self.trainee.train()
        losses = []
        bar = tqdm(_batches(self.lengths, s.batch_size, s.seed, epoch), desc=f"epoch {epoch + 1}/{s.epochs}",
                   unit="batch", disable=not s.progress, leave=False)
        for idx in bar:
            with _amp(dev, s.precision):
                if s.mode == "head":
                    pred = self.model.score(self.feats["train"][torch.as_tensor(idx, device=dev)])
                else:
                    x, m = _pad([self.encoded["train"][0][i] for i in idx], self.pad_id)
                    pred = self.trainee(input_ids=x.to(dev), attention_mask=m.to(dev)).logits
            loss = torch.nn.functional.mse_loss(pred.float().reshape(-1), self.z_train[idx].to(dev))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", best_val_mae=f"{best_val:.4g}", refresh=False)
        bar.close()
        return float(np.mean(losses))

    def save_checkpoint(self, folder: Path, progress: _Progress) -> None:
        """The trainable weights, optimiser, schedule and random states, then the progress (each
        file replaced whole, so a kill leaves the previous epoch's checkpoint)."""
        import torch

        torch.save({"model": _trained_state(self.trainee), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": _rng_state()}, folder / "last.tmp")
        os.replace(folder / "last.tmp", folder / "last.pt")
        state = {"fingerprint": self.s.fingerprint(), "settings": self.s.to_dict(), **asdict(progress)}
        (folder / "state.tmp").write_text(json.dumps(state, indent=1))
        os.replace(folder / "state.tmp", folder / "state.json")

    def restore(self, folder: Path) -> None:
        """Continue from the last checkpoint in ``folder``."""
        import torch

        blob = torch.load(folder / "last.pt", map_location=self.dev, weights_only=False)
        self.trainee.load_state_dict(blob["model"], strict=False)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        _set_rng_state(blob["rng"])

    def load_best(self, folder: Path) -> None:
        """Back to the best epoch's weights (``folder/best.pt``)."""
        import torch

        self.trainee.load_state_dict(torch.load(folder / "best.pt", map_location=self.dev, weights_only=True),
                                     strict=False)


# --------------------------------------------------------------------------- the run


def _resolve(settings: FinetuneSettings):
    """``(settings, task, device)``: mode defaults, device and precision resolved, the task read,
    the data folder made absolute and the run's weights named by their digest."""
    from .embeddings import resolve_device, weights_digest
    from .precision import resolve_precision

    s = settings.with_mode_defaults()
    dev = resolve_device(s.device)
    precision = resolve_precision(s.precision, dev)
    task = load_task(s.data, s.target, s.fold, s.train_split, s.unit, s.max_train, s.max_val, s.max_test)
    s = replace(s, data=str(Path(s.data).resolve()), target=task.target, precision=precision,
                run_weights=weights_digest(s.run))
    return s, task, dev


def _finished(out: Path, fingerprint: str) -> dict | None:
    """The summary of a finished run of these settings in ``out``, else None."""
    if (out / "eval.json").is_file() and (out / "model.safetensors").is_file():
        done = json.loads((out / "eval.json").read_text())
        if done.get("status") == "done" and done.get("fingerprint") == fingerprint:
            print(f"finetune: {out} is complete (best epoch {done.get('best_epoch')}); nothing to do", file=sys.stderr)
            return done
    return None


def _saved_progress(out: Path, settings: FinetuneSettings) -> _Progress | None:
    """The progress of an interrupted run of these settings in ``out`` (None: none to continue).

    Raises:
        ConfigError: ``out`` holds a checkpoint of other settings.
    """
    state_file = out / CHECKPOINTS / "state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    if state["fingerprint"] != settings.fingerprint():
        raise ConfigError(f"{out}: holds a checkpoint of other settings ({state['settings']}); use another --out or "
                          "delete its checkpoints/ folder to start over")
    return _Progress(**{f.name: state[f.name] for f in fields(_Progress)})


def _encode_task(task, tokenizer, max_len: int, settings: FinetuneSettings, listing: SkippedRows,
                 form: TextForm) -> tuple[dict[str, tuple], Counter, list[str]]:
    """``({split: (ids, y, rows)}, skip counts, examples)`` of texts in the model's ``form``;
    skipped rows go to ``listing``.

    Raises:
        ConfigError: a split has no usable row.
    """
    cache = TextCache(settings.text_cache, symprec=form)
    encoded: dict[str, tuple] = {}
    skipped = Counter(task.skipped)
    examples: list[str] = []
    for name, df in task.splits.items():
        log: list = []
        ids, y, rows, sk, ex = encode_split(df, tokenizer, max_len, cache, settings.num_proc, settings.progress,
                                            desc=f"text {name}", log=log)
        source = Path(str(task.files.get(name, name)).split(" ")[0]).name
        listing.extend((f"{name}:row {row}", source, reason, message) for row, reason, message in log)
        encoded[name] = (ids, y, rows)
        skipped.update({f"{name}:{k}": v for k, v in sk.items()})
        examples += [f"{name} {e}" for e in ex[:2]]
        if not ids:
            raise ConfigError(f"task {task.name}: no usable {name} rows ({dict(sk)}; first: {ex[:1]})")
    return encoded, skipped, examples


def _train(session: _Session, progress: _Progress, out: Path) -> str:
    """Epochs until the budget, early stopping (``patience``) or ``stop_after``, a checkpoint after
    each and the best weights kept; ``"done"`` or ``"paused"``."""
    import torch
    from tqdm.auto import tqdm

    s, folder = session.s, out / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    start, elapsed_before, t_start = progress.epoch, progress.train_s, time.perf_counter()
    status = "done"
    while progress.epoch < s.epochs and progress.bad_epochs < s.patience:
        if s.stop_after is not None and progress.epoch - start >= s.stop_after:
            status = "paused"
            break
        t0 = time.perf_counter()
        loss = session.train_epoch(progress.epoch, progress.best_val_mae)
        val_mae = _metrics(session.encoded["val"][1], session.predict("val"))["mae"]
        progress.epoch += 1
        improved = val_mae < progress.best_val_mae
        if improved:
            progress.best_val_mae, progress.best_epoch, progress.bad_epochs = val_mae, progress.epoch, 0
            torch.save(_trained_state(session.trainee), folder / "best.pt")
        else:
            progress.bad_epochs += 1
        seconds = time.perf_counter() - t0
        progress.history.append({"epoch": progress.epoch, "train_loss": loss, "val_mae": val_mae,
                                 "best_val_mae": progress.best_val_mae, "lr": session.scheduler.get_last_lr()[0],
                                 "seconds": seconds})
        if s.progress:
            tqdm.write(f"epoch {progress.epoch}/{s.epochs}: train loss {loss:.4f}, val MAE {val_mae:.4g}"
                       f"{' (best)' if improved else ''}, {seconds:.1f} s")
        progress.train_s = elapsed_before + time.perf_counter() - t_start
        session.save_checkpoint(folder, progress)
    progress.train_s = elapsed_before + time.perf_counter() - t_start
    return status


def _save_outputs(out: Path, session: _Session, task, tokenizer, progress: _Progress, listing: SkippedRows,
                  skipped: Counter, examples: list[str]) -> dict:
    """The best epoch's model (LoRA merged, float32), tokenizer and test predictions, the skipped
    rows, ``eval.json`` (returned), ``training_config.json`` (the settings) and the card; the
    optimiser checkpoint removed."""
    s, encoded = session.s, session.encoded
    session.load_best(out / CHECKPOINTS)
    test_pred = session.predict("test")  # once: the test split is the slowest pass left
    metrics = {"val": _metrics(encoded["val"][1], session.predict("val")),
               "test": _metrics(encoded["test"][1], test_pred)}
    final = _base(session.trainee).float().cpu()
    final.config.crystext_target = {"name": task.target, "unit": task.unit, "mean": session.mean, "std": session.std,
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
    epoch_s = [h["seconds"] for h in progress.history]
    summary = {
        "status": "done", "fingerprint": s.fingerprint(), "task": task.name, "target": task.target,
        "unit": task.unit, "mode": s.mode, "seed": s.seed, "base_run": s.run, "files": task.files,
        "best_epoch": progress.best_epoch, "epochs_run": len(progress.history),
        "stopped_early": progress.bad_epochs >= s.patience, "val": metrics["val"], "test": metrics["test"],
        "rows": {k: len(v[0]) for k, v in encoded.items()}, "skipped": dict(skipped), "skip_examples": examples,
        "target_mean": session.mean, "target_std": session.std,
        "trainable_parameters": int(sum(p.numel() for p in session.params)), "precision": s.precision,
        "feature_s": round(session.feature_s, 2), "train_s": round(progress.train_s, 2),
        "s_per_epoch": round(float(np.median(epoch_s)), 3) if epoch_s else None, "notes": task.notes,
        "skipped_file": listing.path.name,
    }
    atomic_write_text(out / "eval.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "training_config.json", json.dumps({
        "finetune": s.to_dict(), "mixed_precision": s.precision, "save_dtype": "float32",
        "architecture": type(final).__name__, "pooling": "last non-pad token (<eos>)", "command": s.command,
        "train_time_s": round(progress.train_s + session.feature_s, 2), "versions": _versions(),
    }, indent=1))
    atomic_write_text(out / "README.md", render_finetune_card(out, summary))
    (out / CHECKPOINTS / "last.pt").unlink(missing_ok=True)  # the best weights stay; the optimiser state goes
    return summary


def run_finetune(settings: FinetuneSettings, out: str | os.PathLike) -> dict:
    """Fine-tune as ``settings`` say and save the regression model in ``out`` (see :func:`finetune`,
    its keyword face). A finished folder of the same settings is returned as it is; an interrupted
    one continues from its last checkpoint."""
    out = Path(out)
    settings, task, dev = _resolve(settings)
    done = _finished(out, settings.fingerprint())
    if done is not None:
        return done
    progress = _saved_progress(out, settings)
    for note in task.notes:
        print(f"finetune: {note}", file=sys.stderr)
    model, tokenizer = load_for_regression(settings.run, seed=settings.seed)
    max_len = int(getattr(model.config, "n_positions", None) or model.config.max_position_embeddings)
    listing = SkippedRows(skipped_path(out, folder=True))
    listing.extend(task.dropped)
    encoded, skipped, examples = _encode_task(task, tokenizer, max_len, settings, listing,
                                              TextForm.of(model, settings.symprec))
    session = _Session(settings, model, tokenizer.pad_token_id, encoded, dev)
    if settings.mode == "head":
        session.cache_head_inputs()
    if progress is not None:
        session.restore(out / CHECKPOINTS)
        print(f"finetune: resuming {out} after epoch {progress.epoch} (best val MAE {progress.best_val_mae:.4g} at "
              f"epoch {progress.best_epoch})", file=sys.stderr)
    progress = progress or _Progress()
    status = _train(session, progress, out)
    _write_log(out / "log.csv", progress.history)
    if status == "paused":
        print(f"finetune: paused after epoch {progress.epoch}; rerun the same command to continue", file=sys.stderr)
        return {"status": "paused", "epoch": progress.epoch, "best_epoch": progress.best_epoch,
                "best_val_mae": progress.best_val_mae, "fingerprint": settings.fingerprint()}
    return _save_outputs(out, session, task, tokenizer, progress, listing, skipped, examples)


def finetune(run: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, mode: str = "lora",
             target: str | None = None, fold: int | None = None, train_split: str | None = None,
             unit: str | None = None, seed: int = 0, epochs: int | None = None, lr: float | None = None,
             batch_size: int = 32, patience: int | None = None, max_train: int | None = None,
             max_val: int | None = None, max_test: int | None = None, precision: str = "auto",
             device: Any = None, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0,
             weight_decay: float = 0.01, symprec: float = 0.1, num_proc: int = 1,
             text_cache: str | os.PathLike | None = None, progress: bool = True,
             stop_after: int | None = None, command: str | None = None,
             eos_cache: str | os.PathLike | bool | None = None, warmup_fraction: float = 0.05,
             grad_clip: float = 1.0) -> dict:
    """Fine-tune ``run`` on the task folder ``data`` and save a regression model in ``out``: the
    keyword face of :class:`~crystext.finetune_config.FinetuneSettings` (every argument but ``out``
    is a setting; :func:`run_finetune` takes the settings object).

    Args:
        run: pretrained run folder, name under ``models/``, or Hub id.
        data: task folder (see :func:`crystext.tasks.load_task`); ``target``/``fold``/``train_split``/
            ``unit`` as there.
        out: output folder: ``save_pretrained`` files, ``training_config.json`` (the settings),
            ``eval.json`` (validation/test metrics), ``log.csv``, ``README.md`` (card), ``checkpoints/``.
        mode: ``head``, ``lora`` or ``full``.
        seed: model seed (head initialisation, batch order, dropout).
        epochs, lr, patience: default per mode (:data:`crystext.finetune_config.MODE_DEFAULTS`).
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
    settings = FinetuneSettings(
        run=run, data=data, mode=mode, target=target, fold=fold, train_split=train_split, unit=unit, seed=seed,
        epochs=epochs, lr=lr, batch_size=batch_size, patience=patience, max_train=max_train, max_val=max_val,
        max_test=max_test, precision=precision, device=device, lora_r=lora_r, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, weight_decay=weight_decay, warmup_fraction=warmup_fraction, grad_clip=grad_clip,
        symprec=symprec, num_proc=num_proc, text_cache=text_cache, progress=progress, stop_after=stop_after,
        command=command, eos_cache=eos_cache)
    return run_finetune(settings, out)


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


def predict(model_dir: str | os.PathLike, structures, batch_size: int = 32, device: Any = None,
            precision: str = "float32", symprec: float = DEFAULT_SYMPREC) -> np.ndarray:
    """Predicted targets (original units) of structures with a fine-tuned folder: (n,) float64.

    Structures: anything :func:`crystext.to_structure` takes. Errors name the list index.
    """
    from .precision import resolve_precision

    model, tokenizer, target = load_finetuned(model_dir, device)
    ids = encode_inputs(list(structures), tokenizer, int(model.config.n_positions), TextForm.of(model, symprec))
    prec = resolve_precision(precision, next(model.parameters()).device)
    z = _predict_ids(model, ids, tokenizer.pad_token_id, batch_size, prec)
    return z * float(target.get("std", 1.0)) + float(target.get("mean", 0.0))


def finetuned_features(model_dir: str | os.PathLike, structures, batch_size: int = 32, device: Any = None,
                       precision: str = "float32", symprec: float = DEFAULT_SYMPREC, with_prediction: bool = False,
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
    ids = encode_inputs(list(structures), tokenizer, int(model.config.n_positions), TextForm.of(model, symprec))
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
