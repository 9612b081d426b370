"""The pretraining loop: nanoGPT-style, on ``accelerate``. A run's settings are one
:class:`~crystext.pretrain_config.PretrainSettings` (a preset plus overrides, or the CLI's flags);
:func:`pretrain` is its keyword face and :func:`run_pretrain` takes the object. The run is: set up
(precision, accelerator, corpus, model, optimiser, batch plan: :class:`_Session`), resume from the
last intact checkpoint or start afresh, train step by step with periodic evaluation and checkpoints,
evaluate the held-out splits, write the run folder.

One optimiser step consumes one *global batch* of ``batch_size x gradient_accumulation_steps x
world_size`` documents. Each document (a structure or a header-only partial document, both
already wrapped ``<bos> ... <eos>`` by the corpus) is one row, right-padded, with the padding
masked out of attention and loss, so no document attends across another's boundary.

- Data order: per epoch a seeded permutation; documents are sorted by length inside windows of
  ``bucket_size`` global batches (length bucketing cuts padding), cut into global batches, and the
  batches shuffled. Step ``s`` always uses global batch ``s`` of that plan, so the data position
  is the step number and resuming needs no iteration.
- Loss: summed token cross-entropy divided by the number of target tokens in the whole global
  batch (all micro-batches, all processes), so accumulating 4 micro-batches gives exactly the
  gradient of one batch 4x larger, whatever the padding.
- Checkpoints (``accelerator.save_state``): model, optimiser, scheduler, step counters and every
  process's RNG states; a resumed run continues the same data order, schedule and dropout masks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .batching import BatchPlan, epoch_plan  # noqa: F401 - epoch_plan: importable from here too
from .atomic import atomic_path, atomic_write_text, disk_full_guard, save_into
from .auxiliary import AuxObjective, document_targets
from .errors import ConfigError, CrystextError, DataNotFoundError
from .encoding import TEXT_FORM_KEY, TextForm
from .lineage import lineage_of_init
from .modeling import build_model
from .pretrain_config import PretrainSettings

LOG_FIELDS = ["step", "tokens", "train_loss", "eval_loss", "lr", "tokens_per_s", "aux_loss"]
CHECKPOINTS = "checkpoints"


# --------------------------------------------------------------------------- corpus


def _is_corpus_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file()


def resolve_corpus(corpus, tokenizer=None, cache_dir: str | Path | None = None):
    """Return ``(DatasetDict, tokenizer, description)`` for a corpus folder, a ``DatasetDict`` or
    source(s) accepted by :func:`crystext.corpus.build_corpus` (built into ``cache_dir`` once)."""
    import datasets

    if isinstance(corpus, datasets.DatasetDict):
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            from .tokenization import load_tokenizer

            tokenizer = load_tokenizer(tokenizer or "crystext-cif")
        return corpus, tokenizer, {"path": None, "name": None}
    sources = [corpus] if isinstance(corpus, (str, Path)) else list(corpus)
    if len(sources) == 1 and _is_corpus_dir(Path(sources[0])):
        path = Path(sources[0])
    else:
        from .corpus import build_corpus

        tok_name = tokenizer if isinstance(tokenizer, (str, Path)) else "crystext-cif"
        if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
            tok_name = tokenizer  # build_corpus accepts a tokenizer object too
        name = "+".join(Path(str(s)).name for s in sources)
        path = Path(cache_dir or "runs/corpora") / name
        if not _is_corpus_dir(path):
            build_corpus([str(s) for s in sources], out=path, tokenizer=tok_name)
    from .corpus import load_corpus

    dd = load_corpus(path)
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tok_dir = path / "tokenizer"
        if not tok_dir.is_dir():
            raise DataNotFoundError(f"corpus {path}: no tokenizer/ folder (which tokenizer made input_ids?)")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return dd, tokenizer, {"path": str(path.resolve()), "name": path.name}


def _lengths(ds) -> np.ndarray:
    import pyarrow.compute as pc

    table = ds.with_format("arrow")[:]
    return pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)


def _column(ds, name: str, default: str) -> np.ndarray:
    return np.asarray(ds[name]) if name in ds.column_names else np.full(len(ds), default, dtype=object)


# --------------------------------------------------------------------------- batches


def collate(rows: list[list[int]], pad_id: int, block_size: int):
    """Right-pad ``rows`` (truncated to ``block_size``) -> (input_ids, attention_mask) tensors."""
    from .tokenization import pad_batch

    return pad_batch(rows, pad_id, block_size)


def token_loss_sum(model, ids, mask, hidden: bool = False):
    """Summed next-token cross-entropy over real (non-pad) targets, and their count (and, with
    ``hidden``, the final hidden states as a third item).

    Rows are right-padded, so under the causal mask a real token only ever sees earlier tokens of
    its own document: the padding mask would change nothing but the (ignored) outputs at padded
    positions. Leaving it out lets SDPA take its fused causal kernel instead of a masked one.
    """
    import torch.nn.functional as F

    out = model(input_ids=ids, output_hidden_states=hidden)
    logits = out.logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")
    if hidden:
        return loss, int((targets != -100).sum()), out.hidden_states[-1]
    return loss, int((targets != -100).sum())


# --------------------------------------------------------------------------- schedule / state


def lr_at(step: int, cfg: dict) -> float:
    """nanoGPT's schedule: linear warm-up, then cosine decay to ``min_learning_rate`` at ``max_steps``."""
    lr, min_lr, warmup, total = cfg["learning_rate"], cfg["min_learning_rate"], cfg["warmup_steps"], cfg["max_steps"]
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


@dataclass
class TrainState:
    """Counters saved with each checkpoint (registered with ``accelerator`` for save/load)."""

    step: int = 0
    tokens: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    #: wall time of the training loop summed over every session of the run (resumes included),
    #: and the number of sessions; checkpoints written before these existed load as 0
    train_seconds: float = 0.0
    sessions: int = 0
    #: the batch geometry the checkpoint was trained with (0: a checkpoint from before they were
    #: recorded); a resume with another geometry would silently change the data order
    batch_size: int = 0
    gradient_accumulation_steps: int = 0
    world_size: int = 0
    #: the learning-rate schedule and the tokenizer the run was started with ("" in checkpoints from
    #: before they were recorded): a resume under another schedule or vocabulary is refused
    schedule: str = ""
    tokenizer_sha256: str = ""
    #: the auxiliary objective's weight (crystext.auxiliary): a checkpoint with its head resumes only with it
    aux_weight: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


_STEP_DIR = re.compile(r"step-\d+")
CHECKPOINT_MANIFEST = "manifest.json"


def _checkpoints(out: Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first (``step-NNNNNNN``; temporary
    ``.tmp`` folders and ones set aside as ``.damaged`` are not checkpoints)."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(folder: Path, world_size: int) -> None:
    """``manifest.json``: every file of a finished checkpoint with its size and SHA-256, and the
    number of processes whose RNG states it must hold."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _file_sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKPOINT_MANIFEST}
    from .atomic import atomic_write_json

    atomic_write_json(folder / CHECKPOINT_MANIFEST, {"world_size": world_size, "files": files})


def verify_checkpoint(folder: str | Path) -> None:
    """Raise :class:`crystext.atomic.DamagedFileError` naming the first missing, empty, truncated or
    altered file of a checkpoint folder (weights, optimiser, scheduler, counters, RNG states).

    Checkpoints carry a ``manifest.json`` (sizes and SHA-256 of every file); older ones without it
    get the structural checks of :func:`crystext.atomic.check_file` alone."""
    from .atomic import DamagedFileError, check_file

    folder = Path(folder)
    manifest_path = folder / CHECKPOINT_MANIFEST
    if manifest_path.exists():
        check_file(manifest_path)
        manifest = json.loads(manifest_path.read_text())
        for name, meta in manifest["files"].items():
            path = check_file(folder / name)
            size = path.stat().st_size
            if size != meta["bytes"]:
                raise DamagedFileError(f"{path}: {size} bytes, the checkpoint recorded {meta['bytes']} (truncated or "
                                       "overwritten)")
            if _file_sha256(path) != meta["sha256"]:
                raise DamagedFileError(f"{path}: contents differ from the checkpoint's record (SHA-256 mismatch)")
        return
    needed = ["model.safetensors", "optimizer.bin", "random_states_0.pkl"]
    for name in needed:
        check_file(folder / name)
    for path in sorted(folder.iterdir()):
        if path.is_file():
            check_file(path)


def _save_checkpoint(accelerator, out: Path, step: int, keep: int) -> None:
    """Save the full training state as ``checkpoints/step-NNNNNNN``: written under ``.tmp``,
    fsynced, given a manifest (sizes and hashes) and renamed into place only when complete, so a
    kill or a full disk never leaves a half checkpoint under a checkpoint's name. The oldest
    checkpoints beyond ``keep`` are then removed. A full disk raises a one-line
    :class:`crystext.atomic.DiskFullError` and removes the partial folder."""
    from .atomic import disk_full_guard, fsync_tree, replace

    final = out / CHECKPOINTS / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    try:
        with disk_full_guard(final):
            accelerator.save_state(str(tmp), safe_serialization=True)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:  # a checkpoint appears only once complete
                _write_manifest(tmp, accelerator.num_processes)
                fsync_tree(tmp)
                replace(tmp, final)
                for old in _checkpoints(out)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()


def _usable_checkpoint(acc, existing: list[Path]) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that passes :func:`verify_checkpoint`, and a line per damaged newer
    one (each set aside as ``step-NNNNNNN.damaged`` by the main process)."""
    from .atomic import DamagedFileError

    skipped: list[str] = []
    for folder in reversed(existing):
        try:
            verify_checkpoint(folder)
            return folder, skipped
        except DamagedFileError as exc:
            skipped.append(f"{folder.name}: {exc}")
            acc.wait_for_everyone()  # every process has checked this one before it is moved
            if acc.is_main_process:
                aside = folder.with_name(folder.name + ".damaged")
                shutil.rmtree(aside, ignore_errors=True)
                folder.rename(aside)
            acc.wait_for_everyone()
    return None, skipped


def _param_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- logging / reports


class _Log:
    """``log.csv`` (kept in step with resumes) plus TensorBoard through accelerate's tracker."""

    def __init__(self, out: Path, accelerator, resume_step: int | None):
        self.path, self.acc = out / "log.csv", accelerator
        self.rows: list[dict] = []
        if accelerator.is_main_process:
            if resume_step is not None and self.path.is_file():
                with self.path.open() as fh:
                    self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
            with atomic_path(self.path) as tmp, tmp.open("w", newline="") as fh:  # a kill keeps the old log
                w = csv.DictWriter(fh, LOG_FIELDS)
                w.writeheader()
                w.writerows(self.rows)

    def write(self, row: dict) -> None:
        self.acc.log({f"{k}": v for k, v in row.items() if k != "step" and v != ""}, step=row["step"])
        if self.acc.is_main_process:
            self.rows.append(row)
            with self.path.open("a", newline="") as fh:
                csv.DictWriter(fh, LOG_FIELDS).writerow(row)


def plot_loss(log_csv: str | Path, png: str | Path, title: str = "") -> None:
    """Train and eval loss against step (``log.csv`` -> ``loss.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(log_csv)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["step"], df["train_loss"], label="train", lw=1)
    ev = df.dropna(subset=["eval_loss"])
    if len(ev):
        ax.plot(ev["step"], ev["eval_loss"], "o-", label="validation", ms=3)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def unigram_entropy(train_ds, eval_ds, vocab_size: int, block_size: int) -> float:
    """Cross-entropy (nats/token) of ``eval_ds``'s target tokens under the add-one smoothed unigram
    distribution of ``train_ds``'s target tokens: the loss of a model that ignores context."""
    import pyarrow.compute as pc

    def counts(ds):
        col = ds.with_format("arrow")[:]["input_ids"]
        flat = pc.list_flatten(pc.list_slice(col, 1, block_size)).to_numpy(zero_copy_only=False)
        return np.bincount(flat.astype(np.int64), minlength=vocab_size)[:vocab_size]

    train, held = counts(train_ds), counts(eval_ds)
    logp = np.log((train + 1.0) / (train.sum() + vocab_size))
    return float(-(held * logp).sum() / max(1, held.sum()))


# --------------------------------------------------------------------------- evaluation


def evaluate(model, accelerator, ds, lengths, kinds, indices, pad_id: int, block_size: int, batch_size: int,
             deadline: float | None = None) -> dict:
    """Token-weighted mean loss over ``indices`` (split over processes), overall and per ``kind``.

    Batches hold documents of similar length (less padding) and run in a fixed random order, so an
    evaluation cut short by ``deadline`` (a ``time.time()`` value, checked before every batch) is
    still a fair sample of the set (each process evaluates one batch at least); ``documents`` and
    ``complete`` say how much was evaluated.
    """
    import torch

    model.eval()
    ds = ds.select_columns(["input_ids"])
    indices = np.asarray(indices, dtype=np.int64)
    order = indices[np.argsort(lengths[indices], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = [batches[i] for i in np.random.default_rng(0).permutation(len(batches))]
    names = sorted(set(kinds[order].tolist()))
    # per kind: loss sum, target count; then documents evaluated, documents skipped (deadline)
    sums = torch.zeros(2 * len(names) + 2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for b in batches[accelerator.process_index::accelerator.num_processes]:
            if deadline is not None and sums[-2] > 0 and time.time() > deadline:  # one batch at least
                sums[-1] += len(b)
                continue
            b_kinds = kinds[b]
            for kind in names:  # one forward per kind keeps the per-kind sums exact
                sel = b[b_kinds == kind]
                if len(sel) == 0:
                    continue
                ids, mask = collate(ds[sel.tolist()]["input_ids"], pad_id, block_size)
                loss, n = token_loss_sum(model, ids.to(accelerator.device), mask.to(accelerator.device))
                k = names.index(kind)
                sums[2 * k] += loss.double()
                sums[2 * k + 1] += n
            sums[-2] += len(b)
    model.train()
    sums = accelerator.reduce(sums, reduction="sum")
    total_loss, total_n = float(sums[0:-2:2].sum()), float(sums[1:-2:2].sum())
    result = {"loss": total_loss / max(1.0, total_n), "tokens": int(total_n), "documents": int(sums[-2]),
              "complete": bool(sums[-1] == 0)}
    for k, kind in enumerate(names):
        result[f"loss_{kind}"] = float(sums[2 * k] / max(1.0, float(sums[2 * k + 1])))
    return result


# --------------------------------------------------------------------------- time budget


class Budget:
    """The ``max_time`` budget of one ``pretrain`` call (corpus, training, evaluation and save).

    Training stops while there is still time for one more step's worth of slack, the last
    checkpoint, a final evaluation (at most ``EVAL_SHARE`` of the budget; a seeded sample of the
    held-out documents when the whole set would not fit) and the write-out (``reserve_s``).
    Durations are measured as the run goes: step and checkpoint times, and evaluation speed in
    tokens per second (estimated as 3x the training rate until an evaluation has run).
    """

    EVAL_SHARE = 0.2

    def __init__(self, t_call: float, max_time: float | None):
        self.max_time = max_time
        self.deadline = None if max_time is None else t_call + float(max_time)
        self.reserve_s = 0.0 if max_time is None else max(10.0, 0.03 * float(max_time))
        self.step_s: list[float] = []
        self.checkpoint_s = 3.0
        self.train_tok_s: float | None = None
        self.eval_tok_s: float | None = None

    def eval_rate(self) -> float | None:
        """Forward tokens per second (measured, else 3x the training rate, else unknown)."""
        if self.eval_tok_s:
            return self.eval_tok_s
        return 3.0 * self.train_tok_s if self.train_tok_s else None

    def seconds_for(self, tokens: int) -> float:
        rate = self.eval_rate()
        return 0.0 if rate is None else tokens / rate

    def final_eval_s(self, held_tokens: int) -> float:
        """Seconds set aside for the final evaluation of ``held_tokens`` tokens."""
        if self.max_time is None:
            return 0.0
        return min(self.seconds_for(held_tokens), self.EVAL_SHARE * self.max_time)

    def eval_deadline(self) -> float | None:
        """The latest time an evaluation may run to, leaving the write-out its reserve."""
        return None if self.deadline is None else self.deadline - self.reserve_s

    def must_stop(self, held_tokens: int, periodic_tokens: int) -> bool:
        """Whether another training step would eat into the time the final steps need."""
        if self.deadline is None:
            return False
        recent = max(self.step_s[-3:]) if self.step_s else 0.0
        needed = (recent + self.checkpoint_s + self.seconds_for(periodic_tokens)
                  + self.final_eval_s(held_tokens) + self.reserve_s)
        return time.time() + needed > self.deadline


# --------------------------------------------------------------------------- the loop


@dataclass
class _Session:
    """Everything one ``pretrain`` call works with (built by :func:`_setup`)."""

    out: Path
    settings: PretrainSettings
    cfg: dict  # the training hyper-parameters as plain values (settings.training())
    precision: dict
    accelerator: Any
    model: Any
    train_model: Any
    optimizer: Any
    scheduler: Any
    state: TrainState
    plan: BatchPlan
    dd: Any
    tok: Any
    corpus_info: dict
    train_ds: Any
    train_len: np.ndarray
    val_ds: Any
    val_len: np.ndarray
    val_kinds: np.ndarray
    block: int
    init: Path | None
    eval_idx: np.ndarray
    resume_from: Path | None = None
    log: _Log | None = None
    t_start: float = 0.0  # when this session's training loop began
    seconds_before: float = 0.0  # training seconds of earlier sessions (from the checkpoint)
    keep: int = 2  # checkpoints kept
    interrupt: Any = None  # a _Interrupt while the loop runs
    aux: Any = None  # the auxiliary objective (crystext.auxiliary.AuxObjective), if aux_weight > 0
    aux_head: Any = None  # its head, prepared with the model

    @property
    def micro(self) -> int:
        return int(self.cfg["batch_size"])

    @property
    def accum(self) -> int:
        return int(self.cfg["gradient_accumulation_steps"])

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def eval_batch(self) -> int:
        return 2 * self.micro

    def evaluate(self, ds, lengths, kinds, indices, deadline: float | None = None) -> dict:
        return evaluate(self.model, self.accelerator, ds, lengths, kinds, indices, self.tok.pad_token_id,
                        self.block, self.eval_batch, deadline)


def _device_type(torch) -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _precision(setting: str) -> dict:
    """The precision of this run, decided by the machine's capability before the accelerator
    exists: ``{"setting", "resolved", "device", "reason"}`` (printed by the main process)."""
    import torch

    from .precision import bf16_speed, normalise_precision, resolve_precision

    device_type = _device_type(torch)
    setting = normalise_precision(setting)
    resolved = resolve_precision(setting, device_type, announce=False)
    reason = bf16_speed(device_type)["reason"] if setting == "auto" else "set explicitly"
    if int(os.environ.get("RANK", "0")) == 0:  # no PartialState() yet: it would fix the distributed set-up too early
        print(f"crystext pretrain: precision {resolved} (setting {setting!r}; {reason})", file=sys.stderr)
    return {"setting": setting, "resolved": resolved, "device": device_type, "reason": reason}


def _accelerator(precision: dict, out: Path):
    """A fresh ``Accelerator`` for ``precision``, logging to TensorBoard under ``out``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from .precision import accelerate_mixed_precision

    # accelerate keeps process-wide state; forget a previous run's precision (notebooks, tests)
    # while keeping the distributed set-up (PartialState).
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=accelerate_mixed_precision(precision["resolved"]), log_with="tensorboard",
        project_dir=str(out), step_scheduler_with_optimizer=False,
        # without an accelerator device, say so: accelerate then runs launched processes as gloo DDP
        cpu=precision["device"] == "cpu",
    )


def _load_data(accelerator, corpus, tokenizer, cache: Path, init: Path | None):
    """``(DatasetDict, tokenizer, corpus description)``: the corpus with its train and validation
    splits, and a tokenizer the init run (if any) shares."""
    from transformers import AutoTokenizer

    with accelerator.main_process_first():  # one process builds a missing corpus, the others load it
        dd, tok, corpus_info = resolve_corpus(corpus, tokenizer, cache)
    for split in ("train", "validation"):
        if split not in dd:
            raise DataNotFoundError(f"corpus {corpus_info['path'] or corpus!r}: no {split!r} split")
    if init is not None and AutoTokenizer.from_pretrained(init).get_vocab() != tok.get_vocab():
        raise ConfigError(f"init run {init}: its tokenizer differs from the corpus's; rebuild the corpus with "
                          f"tokenizer={str(init)!r}")
    return dd, tok, corpus_info


def _optimise(settings: PretrainSettings, cfg: dict, tok, accelerator):
    """``(model, compiled model, optimiser, scheduler, auxiliary head or None)``: the model (fresh,
    or the init run's weights) prepared by ``accelerator``, AdamW without decay on vectors, the
    nanoGPT schedule."""
    import torch
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM

    set_seed(cfg["seed"])
    if settings.init is not None:
        model = AutoModelForCausalLM.from_pretrained(settings.init, attn_implementation="sdpa", dtype=torch.float32)
    else:
        model = build_model({"name": settings.preset, "model": settings.model}, tok, seed=cfg["seed"])
    # the auxiliary head (crystext.auxiliary) trains beside the model and is never saved with it
    head = AuxObjective.head(model.config.n_embd) if cfg["aux_weight"] > 0 else None
    params = [*model.parameters(), *(head.parameters() if head is not None else [])]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["learning_rate"], betas=tuple(cfg["betas"]), fused=True,  # one kernel per step, CPU and GPU
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg["learning_rate"])
    if head is None:
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, head, optimizer = accelerator.prepare(model, head, optimizer)
    # The compiled module shares the prepared model's parameters; checkpoints and evaluation use
    # the plain one (evaluation would otherwise compile a second, no-grad graph).
    train_model = torch.compile(model, dynamic=True) if cfg["compile"] else model
    return model, train_model, optimizer, scheduler, head


def _setup(settings: PretrainSettings, corpus, out: Path, tokenizer, corpus_cache) -> _Session:
    """Precision, accelerator, data, model, optimiser, schedule and batch plan of a run."""
    import torch

    if settings.num_threads:
        torch.set_num_threads(int(settings.num_threads))
    _quiet_padding_warning()
    cfg = settings.training()
    init = None if settings.init is None else Path(settings.init)
    precision = _precision(cfg["mixed_precision"])
    accelerator = _accelerator(precision, out)
    dd, tok, corpus_info = _load_data(accelerator, corpus, tokenizer, corpus_cache or out.parent / "corpora", init)
    train_ds, val_ds = dd["train"].select_columns(["input_ids"]), dd["validation"]
    model, train_model, optimizer, scheduler, aux_head = _optimise(settings, cfg, tok, accelerator)
    aux = None
    if aux_head is not None:
        with accelerator.main_process_first():  # one process measures the corpus, the others read the cache
            aux = AuxObjective(document_targets(dd["train"], tok), cfg["aux_weight"])
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)

    world, accum = accelerator.num_processes, int(cfg["gradient_accumulation_steps"])
    train_len = _lengths(train_ds)
    plan = BatchPlan(train_len, int(cfg["batch_size"]) * accum * world, cfg["bucket_size"], cfg["seed"],
                     min_batch=accum * world)
    eval_idx = np.sort(np.random.default_rng(cfg["seed"]).permutation(len(val_ds))[: cfg["eval_samples"]])
    config = accelerator.unwrap_model(model).config  # a DDP wrapper has none of its own
    block = int(getattr(config, "n_positions", None) or config.max_position_embeddings)
    return _Session(out=out, settings=settings, cfg=cfg, precision=precision, accelerator=accelerator, model=model,
                    train_model=train_model, optimizer=optimizer, scheduler=scheduler, state=state, plan=plan, dd=dd,
                    tok=tok, corpus_info=corpus_info, train_ds=train_ds, train_len=train_len, val_ds=val_ds,
                    val_len=_lengths(val_ds), val_kinds=_column(val_ds, "kind", "structure"), block=block, init=init,
                    eval_idx=eval_idx, keep=settings.keep_checkpoints, aux=aux, aux_head=aux_head)


def _saved_geometry(checkpoint: Path) -> dict | None:
    """The TrainState a checkpoint holds (read before loading it), or None if none is found."""
    import torch

    for path in sorted(checkpoint.glob("custom_checkpoint_*.pkl")):
        try:
            data = torch.load(path, weights_only=False, map_location="cpu")
        except Exception:  # not ours, or unreadable: accelerate's load_state will say so
            continue
        if isinstance(data, dict) and "sessions" in data and "step" in data:
            return data
    return None


def _resume(s: _Session, resume: bool | str, force_resume: bool) -> None:
    """Load the last checkpoint of ``s.out`` (or clear old ones), refusing a change of batch
    geometry unless forced; open the log."""
    acc, out = s.accelerator, s.out
    existing = _checkpoints(out)
    if acc.is_main_process and (out / CHECKPOINTS).is_dir():  # left by a process killed while saving
        for stale in (out / CHECKPOINTS).glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    if resume is True and not existing:
        raise DataNotFoundError(f"resume: no checkpoint in {out / CHECKPOINTS}")
    s.resume_from = None
    if resume in (True, "auto") and existing:
        s.resume_from, damaged = _usable_checkpoint(acc, existing)
        for line in damaged:
            warnings.warn(f"pretrain {out}: skipped damaged checkpoint {line}; set aside as .damaged"
                          + ("" if s.resume_from is None else f"; resuming from {s.resume_from.name}"),
                          RuntimeWarning, stacklevel=3)
        if s.resume_from is None:
            raise CrystextError(
                f"resume: no intact checkpoint in {out / CHECKPOINTS} ({'; '.join(damaged)}); the run cannot be "
                "resumed exactly. Start afresh (--fresh / resume=False)")
    elif existing and acc.is_main_process:
        shutil.rmtree(out / CHECKPOINTS)
    acc.wait_for_everyone()
    now = {"batch_size": s.micro, "gradient_accumulation_steps": s.accum, "world_size": s.world}
    if s.resume_from is not None:
        saved = _saved_geometry(s.resume_from) or {}
        recorded = {k: int(saved.get(k, 0)) for k in now}
        changed = {k: (recorded[k], now[k]) for k in now if recorded[k] and recorded[k] != now[k]}
        if changed:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            if not force_resume:
                raise ConfigError(
                    f"resume from {s.resume_from}: the checkpoint was trained with another batch geometry ({what}); "
                    "resuming would change the global batch and the data order from here on. Use the same settings, "
                    "start afresh (--fresh / resume=False), or force it (--force-resume / force_resume=True)")
            if acc.is_main_process:
                print(f"crystext pretrain: resuming with a changed batch geometry ({what}) as forced", file=sys.stderr)
        _check_same_run(s, saved, force_resume)
        try:
            acc.load_state(str(s.resume_from))
        except Exception as exc:  # passed the checks, yet would not load: never go on inexactly
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CrystextError(f"resume from {s.resume_from}: the checkpoint does not load ({type(exc).__name__}: "
                                f"{first}); the run cannot be resumed exactly. Start afresh (--fresh / "
                                "resume=False)") from None
    for key, value in {**now, **_run_identity(s)}.items():
        setattr(s.state, key, value)
    out.mkdir(parents=True, exist_ok=True)
    s.log = _Log(out, acc, s.state.step if s.resume_from is not None else None)
    acc.init_trackers("tensorboard")


SCHEDULE_KEYS = ("learning_rate", "min_learning_rate", "warmup_steps", "max_steps")


def _run_identity(s: _Session) -> dict:
    """The schedule (its keys as JSON), the tokenizer (SHA-256 of its sorted vocabulary) and the
    auxiliary objective's weight of this run."""
    schedule = json.dumps({k: s.cfg[k] for k in SCHEDULE_KEYS}, sort_keys=True)
    vocab = json.dumps(sorted(s.tok.get_vocab().items()), separators=(",", ":"))
    return {"schedule": schedule, "tokenizer_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
            "aux_weight": float(s.cfg["aux_weight"])}


def _check_same_run(s: _Session, saved: dict, force_resume: bool) -> None:
    """Refuse a resume whose tokenizer differs from the checkpoint's (always: the ids would mean other
    tokens) or whose learning-rate schedule differs (unless forced, and then said)."""
    now = _run_identity(s)
    if saved.get("tokenizer_sha256") and saved["tokenizer_sha256"] != now["tokenizer_sha256"]:
        raise ConfigError(f"resume from {s.resume_from}: the checkpoint was trained with another tokenizer (vocabulary "
                          f"sha256 {saved['tokenizer_sha256'][:12]} -> {now['tokenizer_sha256'][:12]}); its token ids "
                          "would mean other tokens. Use the run's own corpus and tokenizer, or start afresh (--fresh)")
    if float(saved.get("aux_weight", 0.0)) != now["aux_weight"]:  # the checkpoint holds a head or not
        raise ConfigError(f"resume from {s.resume_from}: the checkpoint was trained with aux_weight "
                          f"{float(saved.get('aux_weight', 0.0))}, this call asks for {now['aux_weight']}; "
                          "use the run's own setting, or start afresh (--fresh)")
    if not saved.get("schedule") or saved["schedule"] == now["schedule"]:
        return
    old, new = json.loads(saved["schedule"]), json.loads(now["schedule"])
    what = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in SCHEDULE_KEYS if old.get(k) != new.get(k))
    if not force_resume:
        raise ConfigError(f"resume from {s.resume_from}: the checkpoint was trained with another learning-rate schedule "
                          f"({what}); resuming would jump the learning rate. Use the same settings, start afresh "
                          "(--fresh / resume=False), or force it (--force-resume / force_resume=True)")
    if s.accelerator.is_main_process:
        print(f"crystext pretrain: resuming with a changed schedule ({what}) as forced", file=sys.stderr)


class _Interrupt:
    """Ctrl-C (SIGINT) or SIGTERM while the loop runs: remembered, not raised mid-step. The loop
    saves a checkpoint at the end of the step it is in and raises ``KeyboardInterrupt`` (the CLI
    exits 130); a second signal stops at once. Handlers are installed only in the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> "_Interrupt":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print("\ncrystext pretrain: interrupted; saving a checkpoint at the end of this step (again to stop at once)",
              file=sys.stderr, flush=True)

    def requested(self, acc) -> bool:
        """Whether any process was signalled (every process then stops at the same step)."""
        flag = self.signum is not None
        if acc.num_processes > 1:
            import torch

            flag = float(acc.reduce(torch.tensor([float(flag)], device=acc.device), "max")) > 0
        return flag


def _stop_on_interrupt(s: _Session, saved: bool) -> None:
    """After a step: if interrupted, checkpoint this step (unless just saved) and raise ``KeyboardInterrupt``."""
    if s.interrupt is None or not s.interrupt.requested(s.accelerator):
        return
    if not saved:
        s.state.train_seconds = s.seconds_before + time.time() - s.t_start
        _save_checkpoint(s.accelerator, s.out, s.state.step, s.keep)
    if s.accelerator.is_main_process:
        print(f"crystext pretrain: checkpoint {s.out / CHECKPOINTS / f'step-{s.state.step:07d}'} saved; rerun the "
              "same command to resume", file=sys.stderr, flush=True)
    raise KeyboardInterrupt(f"pretrain interrupted at step {s.state.step}")


def _train_step(s: _Session) -> tuple[float, int, int, float]:
    """One optimiser step on global batch ``s.state.step``: (mean train loss, targets, tokens, lr,
    this process's auxiliary loss or 0)."""
    import torch

    acc, tok = s.accelerator, s.tok
    batch = s.plan[s.state.step]
    parts = [p for p in np.array_split(batch, s.accum * s.world)][acc.process_index::s.world]
    loaded = [collate(s.train_ds[p.tolist()]["input_ids"], tok.pad_token_id, s.block) for p in parts]
    n_local = sum(int(m[:, 1:].sum()) for _, m in loaded)
    n_tokens_local = sum(int(m.sum()) for _, m in loaded)
    counts = acc.reduce(torch.tensor([n_local, n_tokens_local], device=acc.device), "sum")
    n_targets, n_tokens = int(counts[0]), int(counts[1])
    loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
    aux_sum = 0.0
    for k, (ids, mask) in enumerate(loaded):
        sync = k == len(loaded) - 1
        with nullcontext() if sync else acc.no_sync(s.model):
            ids, mask = ids.to(acc.device), mask.to(acc.device)
            if s.aux is None:
                loss, _ = token_loss_sum(s.train_model, ids, mask)
                extra = 0.0
            else:
                loss, _, hidden = token_loss_sum(s.train_model, ids, mask, hidden=True)
                extra = s.aux.loss(s.aux_head, hidden, mask, parts[k])
                aux_sum += float(extra.detach()) / len(loaded)
                extra = extra * s.aux.weight / len(loaded)
            # DDP averages gradients over processes; scale so the result is the global token mean
            acc.backward(loss * s.world / n_targets + extra)
        loss_sum += loss.detach().double()
    if s.cfg["grad_clip"]:
        heads = list(s.aux_head.parameters()) if s.aux_head is not None else []
        acc.clip_grad_norm_([*s.model.parameters(), *heads], s.cfg["grad_clip"])
    lr = s.scheduler.get_last_lr()[0]
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return float(acc.reduce(loss_sum, "sum")) / n_targets, n_targets, n_tokens, lr, aux_sum


def _held_out_splits(s: _Session) -> list[str]:
    """The splits the final evaluation covers, the reported one (test if there is one) first."""
    return (["test"] if "test" in s.dd and len(s.dd["test"]) else []) + ["validation"]


def _tokens(lengths: np.ndarray, block: int) -> int:
    return int(np.minimum(lengths, block).sum())


def _train(s: _Session, stop: int, budget: Budget, progress: bool) -> str:
    """Train until step ``stop`` or until the time budget says stop; return why it stopped."""
    import torch
    from tqdm.auto import tqdm

    acc, state, cfg = s.accelerator, s.state, s.cfg
    s.model.train()
    bar = tqdm(total=cfg["max_steps"], initial=state.step, disable=not (progress and acc.is_main_process),
               desc=f"pretrain {s.settings.preset}", unit="step", dynamic_ncols=True)
    held_tokens = sum(_tokens(_lengths(s.dd[sp]), s.block) for sp in _held_out_splits(s))
    periodic_tokens = _tokens(s.val_len[s.eval_idx], s.block)
    win_loss, win_targets, win_tokens, win_aux, win_steps, win_t0 = 0.0, 0, 0, 0.0, 0, time.time()
    reason = "max_steps" if stop >= cfg["max_steps"] else "stop_at"
    while state.step < stop:
        t_step = time.time()
        train_loss, n_targets, n_tokens, lr, aux_loss = _train_step(s)
        budget.step_s.append(time.time() - t_step)
        budget.train_tok_s = n_tokens / max(1e-9, budget.step_s[-1])
        state.step += 1
        state.tokens += n_tokens
        state.epoch, state.batch_in_epoch = s.plan.position(state.step)
        win_loss += train_loss * n_targets
        win_targets += n_targets
        win_tokens += n_tokens
        win_aux, win_steps = win_aux + aux_loss, win_steps + 1
        bar.update(1)

        done = state.step >= stop
        if budget.deadline is not None and not done:
            flag = torch.tensor([float(budget.must_stop(held_tokens, periodic_tokens))], device=acc.device)
            if float(acc.reduce(flag, "max")) > 0:  # every process stops at the same step
                done, reason = True, "max_time"
        # a run cut by the clock skips the periodic evaluation: the final one follows at once
        is_eval = state.step % cfg["eval_interval"] == 0 or (done and reason != "max_time")
        if state.step % cfg["log_interval"] == 0 or is_eval or done:
            eval_loss = None
            if is_eval:
                t_eval = time.time()
                result = s.evaluate(s.val_ds, s.val_len, s.val_kinds, s.eval_idx, budget.eval_deadline())
                budget.eval_tok_s = result["tokens"] / max(1e-9, time.time() - t_eval) if result["tokens"] else None
                eval_loss = result["loss"] if result["complete"] else None
            dt = max(1e-9, time.time() - win_t0)
            row = {"step": state.step, "tokens": state.tokens, "train_loss": round(win_loss / win_targets, 6),
                   "eval_loss": "" if eval_loss is None else round(eval_loss, 6), "lr": lr,
                   "tokens_per_s": round(win_tokens / dt, 1),
                   "aux_loss": round(win_aux / win_steps, 6) if s.aux is not None and win_steps else ""}
            s.log.write(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}",
                            **({"eval": f"{eval_loss:.3f}"} if eval_loss is not None else {}))
            win_loss, win_targets, win_tokens, win_aux, win_steps, win_t0 = 0.0, 0, 0, 0.0, 0, time.time()
        if state.step % cfg["checkpoint_interval"] == 0 or done:
            state.train_seconds = s.seconds_before + time.time() - s.t_start
            t_ckpt = time.time()
            _save_checkpoint(acc, s.out, state.step, s.keep)
            budget.checkpoint_s = time.time() - t_ckpt
        _stop_on_interrupt(s, saved=state.step % cfg["checkpoint_interval"] == 0 or done)
        if done:
            break
    bar.close()
    return reason


def _final_eval(s: _Session, budget: Budget) -> dict:
    """Evaluate the held-out splits: all of them, or a seeded sample sized to the time budget.

    Returns ``{split: result}`` with each result's ``indices`` (the documents planned) and ``of``
    (the split's size)."""
    import torch

    acc = s.accelerator
    splits = _held_out_splits(s)
    data = {sp: s.dd[sp] for sp in splits}
    lengths = {sp: (s.val_len if sp == "validation" else _lengths(ds)) for sp, ds in data.items()}
    total = sum(_tokens(v, s.block) for v in lengths.values())
    fraction = 1.0
    if budget.deadline is not None and budget.eval_rate():
        allowed = max(0.0, budget.eval_deadline() - time.time())
        need = budget.seconds_for(total)
        if need > allowed:
            fraction = 0.9 * allowed / need
    # every process must evaluate the same documents
    fraction = -float(acc.reduce(torch.tensor([-fraction], dtype=torch.float64, device=acc.device), "max"))
    held = {}
    for sp in splits:
        n = len(data[sp])
        idx = np.arange(n)
        if fraction < 1.0:
            keep = max(1, int(round(fraction * n)))
            idx = np.sort(np.random.default_rng(s.cfg["seed"]).permutation(n)[:keep])
        kinds = s.val_kinds if sp == "validation" else _column(data[sp], "kind", "structure")
        result = s.evaluate(data[sp], lengths[sp], kinds, idx, budget.eval_deadline())
        held[sp] = {**result, "of": n, "sampled": bool(fraction < 1.0), "indices": idx}
    return held


def _eval_report(s: _Session, held: dict, reason: str) -> dict:
    """``eval.json``: the held-out loss (of the test split if there is one) against the unigram
    baseline of the same documents, and every held-out split's result."""
    held_split = next(iter(held))
    held_ds = s.dd[held_split]
    if held[held_split]["sampled"]:
        held_ds = held_ds.select(held[held_split]["indices"].tolist())
    baseline = unigram_entropy(s.train_ds, held_ds, len(s.tok), s.block)
    loss = held[held_split]["loss"]
    return {
        "held_out_split": held_split,
        "held_out_loss": loss,
        "unigram_baseline_entropy": baseline,
        "beats_unigram_baseline": bool(loss < baseline),
        "units": "nats per target token (every token after <bos>, <eos> included)",
        "baseline": "cross-entropy of held-out tokens under add-one smoothed training-split unigram frequencies"
                    + (" (on the same sampled documents)" if held[held_split]["sampled"] else ""),
        "steps": s.state.step,
        "stopped_by": reason,
        **{split: {k: v for k, v in values.items() if k != "indices"} for split, values in held.items()},
    }


def _save_model(s: _Session):
    """Write the model (in ``save_dtype``, loading as float32) and the tokenizer into the run
    folder, each file renamed into place whole; return the model as saved."""
    import torch

    unwrapped = s.accelerator.unwrap_model(s.model)
    save_dtype = getattr(torch, s.cfg["save_dtype"])
    to_save = unwrapped if save_dtype == torch.float32 else _copy_as(unwrapped, save_dtype)
    # the text form of the corpus, so the encode step writes structures as the model read them
    setattr(to_save.config, TEXT_FORM_KEY, TextForm.from_dict(_corpus_config(s)).as_dict())

    def save_model(tmp: Path) -> None:  # into a temporary folder; each file is renamed into place whole
        to_save.save_pretrained(tmp, safe_serialization=True)
        if save_dtype != torch.float32:
            # weights stored in save_dtype, but loaded as float32 by default (from_pretrained reads the
            # config's dtype): embeddings and fine-tuning want float32
            config_path = tmp / "config.json"
            config = json.loads(config_path.read_text())
            config["dtype"] = "float32"
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        s.tok.save_pretrained(tmp)

    save_into(s.out, save_model)
    return to_save


def _run_info(s: _Session, saved, reason: str, train_time: float, digests: list[str]) -> dict:
    """``training_config.json``: the settings (:meth:`PretrainSettings.to_saved`), the corpus, and
    what the run did (steps, tokens, time, precision, hardware, versions)."""
    state, acc = s.state, s.accelerator
    split_counts = {sp: {"documents": len(s.dd[sp]), **_kind_counts(s.dd[sp])} for sp in s.dd}
    return {
        **s.settings.to_saved(),  # preset, model, training, init
        "lineage": lineage_of_init(s.init),
        "corpus": {"path": portable_path(s.corpus_info.get("path"), s.out), "name": s.corpus_info.get("name"),
                   "splits": split_counts, "truncated_train_documents": int((s.train_len > s.block).sum()),
                   "block_size": s.block},
        "steps": state.step,
        "max_steps": s.cfg["max_steps"],
        "stopped_by": reason,
        "tokens": state.tokens,
        "epochs": round(state.step / s.plan.per_epoch, 3),
        "global_batch": s.micro * s.accum * s.world,
        "world_size": s.world,
        "mixed_precision": acc.mixed_precision,
        "precision": s.precision,
        "saved_dtype": str(next(saved.parameters()).dtype).replace("torch.", ""),
        "loads_as": "float32",
        "resumed_from": None if s.resume_from is None else s.resume_from.name,
        "train_time_s_this_session": round(train_time, 3),
        # summed over the sessions the checkpoints recorded; a checkpoint from before they were
        # recorded loads as 0 s and 0 sessions (the card then says "since the last resume")
        "train_time_s": round(state.train_seconds, 3),
        "sessions": state.sessions,
        "parameters": sum(p.numel() for p in acc.unwrap_model(s.model).parameters()),
        "rank_param_sha256": digests,
        "versions": _versions(),
        "hardware": _hardware(acc),
    }


def _write_out(s: _Session, held: dict, reason: str, train_time: float, digests: list[str]) -> dict:
    """Write the model, tokenizer, training_config.json, corpus_summary.json, the corpus identity,
    eval.json and loss.png (main process); return the eval report."""
    report = _eval_report(s, held, reason)
    if not s.accelerator.is_main_process:
        return report
    out = s.out
    saved = _save_model(s)
    info = _run_info(s, saved, reason, train_time, digests)
    atomic_write_text(out / "training_config.json", json.dumps(info, indent=2, default=str))
    summary = Path(s.corpus_info["path"]) / "summary.json" if s.corpus_info.get("path") else None
    if summary is not None and summary.is_file():  # sources, sizes, skips: what the card quotes
        scrubbed = _portable_json(json.loads(summary.read_text()), out)
        atomic_write_text(out / "corpus_summary.json", json.dumps(scrubbed, indent=2))
    _write_identity(s, out)
    atomic_write_text(out / "eval.json", json.dumps(report, indent=2))
    with atomic_path(out / "loss.png", suffix=".png") as png:
        plot_loss(out / "log.csv", png, title=f"{s.settings.preset}: {out.name}")
    return report


def _corpus_config(s: _Session) -> dict:
    """The corpus' build settings (``summary.json``'s ``config``; empty for an in-memory corpus)."""
    summary = Path(s.corpus_info["path"]) / "summary.json" if s.corpus_info.get("path") else None
    return json.loads(summary.read_text()).get("config", {}) if summary is not None and summary.is_file() else {}


def _write_identity(s: _Session, out: Path) -> None:
    """``corpus_identity.json.gz``: what the corpus held (formulas, structure-text hashes, formula and
    space-group pairs), so the benchmark's leakage table needs neither the corpus nor its sources."""
    from .corpus.identity import IDENTITY_FILE, identity_bytes, identity_of_corpus, read_identity

    needed = {"kind", "text", "formula", "spacegroup"}
    if not all(needed <= set(s.dd[sp].column_names) for sp in s.dd):
        return  # a corpus from before these columns: the leakage table rebuilds from its sources
    ident = identity_of_corpus(s.dd[sp] for sp in s.dd)
    config = _corpus_config(s)
    # a run trained from another carries the init run's identity too (when that run has one), so a
    # chain of runs (a corpus trained part by part) keeps the whole history in one file
    old = read_identity(s.init) if s.init is not None else None
    includes_init = old is not None
    if includes_init:
        ident["formulas"] = sorted(set(ident["formulas"]) | set(old.get("formulas", [])))
        ident["structures"] = sorted(set(ident["structures"]) | set(old.get("structure_text_sha1", [])))
        pairs = {tuple(p) for p in ident["formula_spacegroup"]} | {tuple(p) for p in old.get("formula_spacegroup", [])}
        ident["formula_spacegroup"] = sorted([f, int(g)] for f, g in pairs)
    with atomic_path(out / IDENTITY_FILE, suffix=".gz") as tmp:
        tmp.write_bytes(identity_bytes({
            "symprec": config.get("symprec", 0.1), "corpus": s.corpus_info.get("name"),
            "init": None if s.init is None else s.init.name, "includes_init": includes_init,
            "formulas": ident["formulas"], "structure_text_sha1": ident["structures"],
            "formula_spacegroup": ident["formula_spacegroup"]}))


def pretrain(
    preset_or_config: str | Path | dict | None = "base",
    corpus: Any = "aflow-prototypes",
    out: str | Path = "runs/base",
    *,
    init: str | Path | None = None,
    resume: bool | str = "auto",
    force_resume: bool = False,
    max_steps: int | None = None,
    stop_at: int | None = None,
    max_time: float | None = None,
    overrides: dict | None = None,
    tokenizer=None,
    corpus_cache: str | Path | None = None,
    keep_checkpoints: int = 2,
    num_threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Train a causal LM on a corpus and write a run folder; return its path.

    The keyword face of :class:`~crystext.pretrain_config.PretrainSettings` (built by its
    :meth:`~crystext.pretrain_config.PretrainSettings.from_preset`); :func:`run_pretrain` takes the
    object itself.

    Parameters
    ----------
    preset_or_config: preset name (``tiny``, ``base``, ``cpu``, ``crystallm-small``), preset YAML, HF
        ``config.json`` or dict (see :func:`crystext.pretrain_config.load_preset`). With ``init`` and
        no preset, the init run's own hyper-parameters are used. Its ``mixed_precision`` (default
        ``auto``: bf16 only where the machine runs it fast, see :mod:`crystext.precision`) is
        resolved before the accelerator is built; the choice is printed and stored.
    corpus: a corpus folder (``crystext.corpus.build_corpus`` output), a ``DatasetDict`` with an
        ``input_ids`` column, or source(s) for ``build_corpus`` (built into ``corpus_cache``).
    out: the run folder: ``config.json``, ``model.safetensors``, tokenizer files,
        ``training_config.json``, ``log.csv``, ``loss.png``, ``eval.json``, ``tensorboard/``,
        ``checkpoints/``.
    init: a run folder to fine-tune from (its weights; the corpus must use its tokenizer).
    resume: ``"auto"`` continues from the last checkpoint in ``out`` if there is one, ``True``
        requires one, ``False`` starts afresh (removing ``out``'s old checkpoints).
    force_resume: resume even though batch size, gradient accumulation, world size or the
        learning-rate schedule differ from the checkpoint's (otherwise a :class:`ConfigError`).
    max_steps: overrides the preset's ``max_steps`` (the schedule's length).
    stop_at: stop after this step (checkpoint and final files written) without changing the
        schedule, as if the run were interrupted there.
    max_time: seconds for the whole call (corpus building, set-up, training, evaluation and
        save): training stops early enough for the final evaluation (a sample of the held-out
        set when the whole would not fit) and the save; see :class:`Budget`.
    overrides: training hyper-parameters replacing the preset's (e.g. ``{"batch_size": 8}``); an
        unknown key raises a :class:`ConfigError` naming it.
    tokenizer: for a corpus built on the fly (a corpus folder brings its own ``tokenizer/``).
    keep_checkpoints: how many of the latest checkpoints to keep.
    num_threads: ``torch.set_num_threads`` for CPU training (default: torch's choice).

    ``eval.json`` reports the held-out loss against a unigram baseline
    (``beats_unigram_baseline``); a run that does not beat it warns.

    Faults (see ``docs/faults.md``): Ctrl-C / SIGTERM during training saves a checkpoint at the
    step reached and raises ``KeyboardInterrupt`` (the CLI exits 130); the rerun resumes from it
    exactly. Resuming verifies the newest checkpoint against its ``manifest.json`` and falls back,
    with a warning, to the newest intact one; a full disk raises a one-line
    :class:`crystext.atomic.DiskFullError`; final files appear whole (temporary name, rename).
    """
    t_call = time.time()  # the time budget counts from here
    settings = PretrainSettings.from_preset(
        preset_or_config, init=init, overrides=overrides, max_steps=max_steps, resume=resume,
        force_resume=force_resume, stop_at=stop_at, max_time=max_time, keep_checkpoints=keep_checkpoints,
        num_threads=num_threads, progress=progress)
    return run_pretrain(settings, corpus, out, tokenizer=tokenizer, corpus_cache=corpus_cache, t_call=t_call,
                        _stacklevel=3)


def run_pretrain(settings: PretrainSettings, corpus: Any, out: str | Path, *, tokenizer=None,
                 corpus_cache: str | Path | None = None, t_call: float | None = None, _stacklevel: int = 2) -> Path:
    """Run the pretraining ``settings`` describe on ``corpus`` into the run folder ``out``; return
    its path (see :func:`pretrain` for the arguments and the files). ``t_call``: when the call
    began, for ``settings.max_time`` (default: now); a warning that the model does not beat the
    unigram baseline points at the caller's line.

    Set up, resume (or start afresh), train to ``stop_at`` or ``max_steps`` or the time budget,
    evaluate the held-out splits, write the run folder.
    """
    from accelerate.utils import gather_object

    budget = Budget(time.time() if t_call is None else t_call, settings.max_time)
    out = Path(out)
    s = _setup(settings, corpus, out, tokenizer, corpus_cache)
    _resume(s, settings.resume, settings.force_resume)
    state, acc = s.state, s.accelerator

    s.t_start, s.seconds_before = time.time(), state.train_seconds
    state.sessions += 1
    max_steps = s.cfg["max_steps"]
    stop = min(max_steps, settings.stop_at if settings.stop_at is not None else max_steps)
    with _Interrupt() as s.interrupt, disk_full_guard(out):  # Ctrl-C: checkpoint at the step's end, then exit
        reason = _train(s, stop, budget, settings.progress)
    s.interrupt = None
    train_time = time.time() - s.t_start
    state.train_seconds = s.seconds_before + train_time

    digests = gather_object([_param_digest(acc.unwrap_model(s.model))])
    held = _final_eval(s, budget)
    with disk_full_guard(out):
        report = _write_out(s, held, reason, train_time, digests)
    acc.wait_for_everyone()
    acc.end_training()  # closes trackers (and the process group under accelerate launch)
    if len(set(digests)) > 1:
        raise CrystextError(f"pretrain: processes ended with different weights ({digests}); DDP lost sync")
    if not report["beats_unigram_baseline"]:
        warnings.warn(f"pretrain {out}: held-out loss {report['held_out_loss']:.4f} is not below the unigram "
                      f"baseline {report['unigram_baseline_entropy']:.4f} after {report['steps']} steps: the model "
                      "predicts no better than token frequencies", RuntimeWarning, stacklevel=_stacklevel)
    return out


def portable_path(path: str | Path | None, run: Path) -> str | None:
    """A path fit for a published JSON file: relative to the run folder or to the shared data
    folder when inside one, else the folder or file name alone (never an absolute local path)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    from .settings import data_dir

    for root in (run, data_dir()):  # inside the run, or a shared data set (perov_5/train.csv)
        try:
            return str(p.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return p.name


def _portable_json(value, run: Path):
    """``value`` with every absolute path string replaced by :func:`portable_path`."""
    if isinstance(value, dict):
        return {k: _portable_json(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable_json(v, run) for v in value]
    if isinstance(value, str) and "/" in value:  # absolute paths alone or inside a command line
        return _ABS_PATH.sub(lambda m: portable_path(m.group(0), run), value)
    return value


_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.+@=,-]+/)*[\w.+@=,-]+/?")


def _quiet_padding_warning() -> None:
    """transformers warns once that padded input_ids come without an attention mask; ours are
    right-padded under a causal mask, where the mask changes nothing (see token_loss_sum)."""
    import logging

    logger = logging.getLogger("transformers.modeling_utils")
    if not any(getattr(f, "_crystext", False) for f in logger.filters):
        def keep(record) -> bool:
            return "attention_mask` since your input_ids may be padded" not in record.getMessage()

        keep._crystext = True  # type: ignore[attr-defined]
        logger.addFilter(keep)


def _copy_as(model, dtype):
    import copy

    return copy.deepcopy(model).to(dtype)


def _kind_counts(ds) -> dict:
    if "kind" not in ds.column_names:
        return {}
    kinds, n = np.unique(np.asarray(ds["kind"]), return_counts=True)
    return {f"kind_{k}": int(c) for k, c in zip(kinds, n)}


def _hardware(accelerator) -> str:
    """What trained the run, for its card: processes x device, and the CPU."""
    import platform

    import torch

    device = accelerator.device
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU ({os.cpu_count()} cores, {platform.machine()}, {torch.get_num_threads()} torch threads)"
    return f"{accelerator.num_processes} x {what}"


def _versions() -> dict:
    from importlib.metadata import version

    import accelerate
    import torch
    import transformers

    return {"crystext": version("crystext"), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__}
