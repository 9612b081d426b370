"""The pretraining loop: nanoGPT-style, short enough to read in one sitting, on ``accelerate``.

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
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, CrystextError, DataNotFoundError
from .modeling import build_model, load_preset

LOG_FIELDS = ["step", "tokens", "train_loss", "eval_loss", "lr", "tokens_per_s"]
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
        return corpus, tokenizer, {"path": None}
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
    try:
        from .corpus import load_corpus
    except ImportError:  # pragma: no cover - corpus module missing
        load_corpus = datasets.load_from_disk
    dd = load_corpus(path)
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tok_dir = path / "tokenizer"
        if not tok_dir.is_dir():
            raise DataNotFoundError(f"corpus {path}: no tokenizer/ folder (which tokenizer made input_ids?)")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return dd, tokenizer, {"path": str(path.resolve())}


def _lengths(ds) -> np.ndarray:
    import pyarrow.compute as pc

    table = ds.with_format("arrow")[:]
    return pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)


def _column(ds, name: str, default: str) -> np.ndarray:
    return np.asarray(ds[name]) if name in ds.column_names else np.full(len(ds), default, dtype=object)


# --------------------------------------------------------------------------- batches


def epoch_plan(lengths: np.ndarray, global_batch: int, bucket_size: int, seed: int, epoch: int,
               min_batch: int = 1) -> list[np.ndarray]:
    """The global batches (arrays of row indices) of one epoch: a seeded permutation, sorted by
    length within windows of ``bucket_size`` batches, cut into batches, batches shuffled.
    Batches smaller than ``min_batch`` (only an epoch's tail) are dropped."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    window = global_batch * max(1, bucket_size)
    batches: list[np.ndarray] = []
    for start in range(0, len(perm), window):
        chunk = perm[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
    batches = [b for b in batches if len(b) >= min_batch]
    return [batches[i] for i in rng.permutation(len(batches))]


class BatchPlan:
    """Global batch ``step`` of an endless, epoch-by-epoch deterministic plan."""

    def __init__(self, lengths: np.ndarray, global_batch: int, bucket_size: int, seed: int, min_batch: int):
        self.args = (lengths, global_batch, bucket_size, seed)
        self.min_batch = min_batch
        self._cache: dict[int, list[np.ndarray]] = {}
        self.per_epoch = len(self._epoch(0))
        if self.per_epoch == 0:
            raise ConfigError(
                f"training split has {len(lengths)} documents, fewer than one global batch needs "
                f"({min_batch}); lower batch_size / gradient_accumulation_steps"
            )

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._cache:
            self._cache = {epoch: epoch_plan(*self.args, epoch, self.min_batch)}
        return self._cache[epoch]

    def position(self, step: int) -> tuple[int, int]:
        return divmod(step, self.per_epoch)

    def __getitem__(self, step: int) -> np.ndarray:
        epoch, index = self.position(step)
        return self._epoch(epoch)[index]


def collate(rows: list[list[int]], pad_id: int, block_size: int):
    """Right-pad ``rows`` (truncated to ``block_size``) -> (input_ids, attention_mask) tensors."""
    import torch

    rows = [r[:block_size] for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def token_loss_sum(model, ids, mask):
    """Summed next-token cross-entropy over real (non-pad) targets, and their count.

    Rows are right-padded, so under the causal mask a real token only ever sees earlier tokens of
    its own document: the padding mask would change nothing but the (ignored) outputs at padded
    positions. Leaving it out lets SDPA take its fused causal kernel instead of a masked one.
    """
    import torch.nn.functional as F

    logits = model(input_ids=ids).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")
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

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def _checkpoints(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")) if root.is_dir() else []


def _save_checkpoint(accelerator, out: Path, step: int, keep: int) -> None:
    final = out / CHECKPOINTS / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # a checkpoint appears only once complete
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


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
            with self.path.open("w", newline="") as fh:
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


def evaluate(model, accelerator, ds, lengths, kinds, indices, pad_id: int, block_size: int, batch_size: int) -> dict:
    """Token-weighted mean loss over ``indices`` (split over processes), overall and per ``kind``."""
    import torch

    model.eval()
    ds = ds.select_columns(["input_ids"])
    order = np.asarray(indices)[np.argsort(lengths[indices], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    names = sorted(set(kinds[order].tolist()))
    sums = torch.zeros(2 * len(names) + 2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for b in batches[accelerator.process_index::accelerator.num_processes]:
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
    model.train()
    sums = accelerator.reduce(sums, reduction="sum")
    total_loss, total_n = float(sums[0:-2:2].sum()), float(sums[1:-2:2].sum())
    result = {"loss": total_loss / max(1.0, total_n), "tokens": int(total_n)}
    for k, kind in enumerate(names):
        result[f"loss_{kind}"] = float(sums[2 * k] / max(1.0, float(sums[2 * k + 1])))
    return result


# --------------------------------------------------------------------------- the loop


def pretrain(
    preset_or_config: str | Path | dict | None = "base",
    corpus: Any = "aflow-prototypes",
    out: str | Path = "runs/base",
    *,
    init: str | Path | None = None,
    resume: bool | str = "auto",
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

    Parameters
    ----------
    preset_or_config: preset name (``tiny``, ``base``, ``crystallm-small``), preset YAML, HF
        ``config.json`` or dict (see :func:`crystext.modeling.load_preset`). With ``init`` and no
        preset, the init run's own hyper-parameters are used.
    corpus: a corpus folder (``crystext.corpus.build_corpus`` output), a ``DatasetDict`` with an
        ``input_ids`` column, or source(s) for ``build_corpus`` (built into ``corpus_cache``).
    out: the run folder: ``config.json``, ``model.safetensors``, tokenizer files,
        ``training_config.json``, ``log.csv``, ``loss.png``, ``eval.json``, ``tensorboard/``,
        ``checkpoints/``.
    init: a run folder to fine-tune from (its weights; the corpus must use its tokenizer).
    resume: ``"auto"`` continues from the last checkpoint in ``out`` if there is one, ``True``
        requires one, ``False`` starts afresh (removing ``out``'s old checkpoints).
    max_steps: overrides the preset's ``max_steps`` (the schedule's length).
    stop_at: stop after this step (checkpoint and final files written) without changing the
        schedule, as if the run were interrupted there.
    max_time: stop (likewise) once this many seconds have passed since the call (corpus
        building and set-up included), so a time-boxed job ends on time.
    overrides: training hyper-parameters replacing the preset's (e.g. ``{"batch_size": 8}``).
    tokenizer: for a corpus built on the fly (a corpus folder brings its own ``tokenizer/``).
    keep_checkpoints: how many of the latest checkpoints to keep.
    num_threads: ``torch.set_num_threads`` for CPU training (default: torch's choice).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_call = time.time()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    _quiet_padding_warning()
    out = Path(out)
    if preset_or_config is None:
        if init is None:
            raise ConfigError("pretrain: give a preset/config or an init run")
        preset_or_config = init
    preset = load_preset(preset_or_config)
    cfg = dict(preset["training"])
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise ConfigError(f"pretrain: unknown training key {key!r}; known: {sorted(cfg)}")
        cfg[key] = value
    if max_steps is not None:
        cfg["max_steps"] = int(max_steps)
    if cfg["mixed_precision"] in (False, None):  # YAML reads a bare `no` as false
        cfg["mixed_precision"] = "no"

    # accelerate keeps process-wide state; forget a previous run's precision (notebooks, tests)
    # while keeping the distributed set-up (PartialState).
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=cfg["mixed_precision"], log_with="tensorboard", project_dir=str(out),
        step_scheduler_with_optimizer=False,
        # without an accelerator device, say so: accelerate then runs launched processes as gloo DDP
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process

    # -- data
    with accelerator.main_process_first():  # one process builds a missing corpus, the others load it
        dd, tok, corpus_info = resolve_corpus(corpus, tokenizer, corpus_cache or out.parent / "corpora")
    for split in ("train", "validation"):
        if split not in dd:
            raise DataNotFoundError(f"corpus {corpus_info['path'] or corpus!r}: no {split!r} split")
    if init is not None:
        init_tok = AutoTokenizer.from_pretrained(init)
        if init_tok.get_vocab() != tok.get_vocab():
            raise ConfigError(f"init run {init}: its tokenizer differs from the corpus's; rebuild the corpus with "
                              f"tokenizer={str(init)!r}")
    train_ds, val_ds = dd["train"].select_columns(["input_ids"]), dd["validation"]
    train_len, val_len = _lengths(train_ds), _lengths(val_ds)
    val_kinds = _column(val_ds, "kind", "structure")

    # -- model, optimiser, schedule
    set_seed(cfg["seed"])
    if init is not None:
        model = AutoModelForCausalLM.from_pretrained(init, attn_implementation="sdpa", dtype=torch.float32)
    else:
        model = build_model(preset, tok, seed=cfg["seed"])
    block = int(getattr(model.config, "n_positions", None) or model.config.max_position_embeddings)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["learning_rate"], betas=tuple(cfg["betas"]), fused=True,  # one kernel per step, CPU and GPU
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg["learning_rate"])
    model, optimizer = accelerator.prepare(model, optimizer)
    # The compiled module shares the prepared model's parameters; checkpoints and evaluation use
    # the plain one (evaluation would otherwise compile a second, no-grad graph).
    train_model = torch.compile(model, dynamic=True) if cfg["compile"] else model
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)

    micro, accum = int(cfg["batch_size"]), int(cfg["gradient_accumulation_steps"])
    plan = BatchPlan(train_len, micro * accum * world, cfg["bucket_size"], cfg["seed"], min_batch=accum * world)

    # -- resume
    existing = _checkpoints(out)
    if resume is True and not existing:
        raise DataNotFoundError(f"resume: no checkpoint in {out / CHECKPOINTS}")
    resume_from = existing[-1] if (resume in (True, "auto") and existing) else None
    if resume_from is None and existing and main:
        shutil.rmtree(out / CHECKPOINTS)
    accelerator.wait_for_everyone()
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out, accelerator, state.step if resume_from is not None else None)
    accelerator.init_trackers("tensorboard")

    rng_eval = np.random.default_rng(cfg["seed"])
    eval_idx = np.sort(rng_eval.permutation(len(val_ds))[: cfg["eval_samples"]])
    eval_batch = 2 * micro

    def run_eval(indices):
        return evaluate(model, accelerator, val_ds, val_len, val_kinds, indices, tok.pad_token_id, block, eval_batch)

    # -- train
    model.train()
    start_step, t_start = state.step, time.time()
    seconds_before = state.train_seconds
    state.sessions += 1
    stop = min(cfg["max_steps"], stop_at if stop_at is not None else cfg["max_steps"])
    bar = tqdm(total=cfg["max_steps"], initial=start_step, disable=not (progress and main),
               desc=f"pretrain {preset['name']}", unit="step", dynamic_ncols=True)
    win_loss, win_targets, win_tokens, win_t0 = 0.0, 0, 0, time.time()
    truncated = int((train_len > block).sum())
    while state.step < stop:
        step = state.step
        batch = plan[step]
        parts = [p for p in np.array_split(batch, accum * world)][rank::world]
        loaded = [collate(train_ds[p.tolist()]["input_ids"], tok.pad_token_id, block) for p in parts]
        n_local = sum(int(m[:, 1:].sum()) for _, m in loaded)
        n_tokens_local = sum(int(m.sum()) for _, m in loaded)
        counts = accelerator.reduce(torch.tensor([n_local, n_tokens_local], device=accelerator.device), "sum")
        n_targets, n_tokens = int(counts[0]), int(counts[1])
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        for k, (ids, mask) in enumerate(loaded):
            sync = k == len(loaded) - 1
            with nullcontext() if sync else accelerator.no_sync(model):
                loss, _ = token_loss_sum(train_model, ids.to(accelerator.device), mask.to(accelerator.device))
                # DDP averages gradients over processes; scale so the result is the global token mean
                accelerator.backward(loss * world / n_targets)
            loss_sum += loss.detach().double()
        if cfg["grad_clip"]:
            accelerator.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        train_loss = float(accelerator.reduce(loss_sum, "sum")) / n_targets
        state.step += 1
        state.tokens += n_tokens
        state.epoch, state.batch_in_epoch = plan.position(state.step)
        win_loss += train_loss * n_targets
        win_targets += n_targets
        win_tokens += n_tokens
        bar.update(1)

        done = state.step >= stop
        if max_time is not None and not done:
            elapsed = torch.tensor([time.time() - t_call], device=accelerator.device)
            done = float(accelerator.reduce(elapsed, "max")) > max_time
        is_eval = state.step % cfg["eval_interval"] == 0 or done
        if state.step % cfg["log_interval"] == 0 or is_eval:
            eval_loss = run_eval(eval_idx)["loss"] if is_eval else None
            dt = max(1e-9, time.time() - win_t0)
            row = {"step": state.step, "tokens": state.tokens, "train_loss": round(win_loss / win_targets, 6),
                   "eval_loss": "" if eval_loss is None else round(eval_loss, 6), "lr": lr,
                   "tokens_per_s": round(win_tokens / dt, 1)}
            log.write(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}",
                            **({"eval": f"{eval_loss:.3f}"} if eval_loss is not None else {}))
            win_loss, win_targets, win_tokens, win_t0 = 0.0, 0, 0, time.time()
        if state.step % cfg["checkpoint_interval"] == 0 or done:
            state.train_seconds = seconds_before + time.time() - t_start
            _save_checkpoint(accelerator, out, state.step, keep_checkpoints)
        if done:
            break
    bar.close()
    train_time = time.time() - t_start
    state.train_seconds = seconds_before + train_time

    # -- final files
    from accelerate.utils import gather_object

    digests = gather_object([_param_digest(accelerator.unwrap_model(model))])
    full_val = run_eval(np.arange(len(val_ds)))
    held = {"validation": full_val}
    if "test" in dd and len(dd["test"]):
        test_ds = dd["test"]
        held["test"] = evaluate(model, accelerator, test_ds, _lengths(test_ds), _column(test_ds, "kind", "structure"),
                                np.arange(len(test_ds)), tok.pad_token_id, block, eval_batch)
    if main:
        unwrapped = accelerator.unwrap_model(model)
        save_dtype = getattr(torch, cfg["save_dtype"])
        to_save = unwrapped if save_dtype == torch.float32 else _copy_as(unwrapped, save_dtype)
        to_save.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        split_counts = {s: {"documents": len(dd[s]), **_kind_counts(dd[s])} for s in dd}
        info = {
            "preset": preset["name"],
            "model": {k: v for k, v in preset["model"].items()} if init is None else {"init": str(init)},
            "training": cfg,
            "init": None if init is None else str(Path(init).resolve()),
            "corpus": {**corpus_info, "splits": split_counts, "truncated_train_documents": truncated,
                       "block_size": block},
            "steps": state.step,
            "tokens": state.tokens,
            "epochs": round(state.step / plan.per_epoch, 3),
            "global_batch": micro * accum * world,
            "world_size": world,
            "mixed_precision": accelerator.mixed_precision,
            "resumed_from": None if resume_from is None else resume_from.name,
            "train_time_s_this_session": round(train_time, 1),
            # summed over the sessions the checkpoints recorded; a checkpoint from before they were
            # recorded loads as 0 s and 0 sessions (the card then says "since the last resume")
            "train_time_s": round(state.train_seconds, 1),
            "sessions": state.sessions,
            "parameters": sum(p.numel() for p in unwrapped.parameters()),
            "rank_param_sha256": digests,
            "versions": _versions(),
            "hardware": _hardware(accelerator),
        }
        (out / "training_config.json").write_text(json.dumps(info, indent=2, default=str))
        summary = Path(corpus_info["path"]) / "summary.json" if corpus_info.get("path") else None
        if summary is not None and summary.is_file():  # sources, sizes, skips: what the card quotes
            shutil.copyfile(summary, out / "corpus_summary.json")
        held_split = "test" if "test" in held else "validation"
        baseline = unigram_entropy(train_ds, dd[held_split], len(tok), block)
        report = {
            "held_out_split": held_split,
            "held_out_loss": held[held_split]["loss"],
            "unigram_baseline_entropy": baseline,
            "units": "nats per target token (every token after <bos>, <eos> included)",
            "baseline": "cross-entropy of held-out tokens under add-one smoothed training-split unigram frequencies",
            "steps": state.step,
            **{f"{split}": values for split, values in held.items()},
        }
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        plot_loss(out / "log.csv", out / "loss.png", title=f"{preset['name']}: {out.name}")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers (and the process group under accelerate launch)
    if len(set(digests)) > 1:
        raise CrystextError(f"pretrain: processes ended with different weights ({digests}); DDP lost sync")
    return out


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
