"""Training and forward throughput per preset, with model FLOPs utilisation (MFU).

Usage:
    python benchmarks/training/throughput.py [--presets base crystallm-small] [--steps 4]
        [--batch-size 8] [--threads N] [--limit 300] [--out benchmarks/training/throughput.md]

For each preset, in one process and one run, on the same corpus sample (perov_5 val + carbon_24
val, ``--limit`` rows each, + the AFLOW prototypes; the embedded corpus alone without shared data):

- ``Trainer fp32``: the baseline, a plain Hugging Face ``Trainer`` (fp32, random batches padded to
  their longest document by ``DataCollatorForLanguageModeling``, attention mask passed);
- ``crystext fp32`` and ``crystext bf16``: :func:`crystext.training.pretrain` with
  ``mixed_precision`` "no" / "bf16" (length-bucketed batches, no mask needed under right padding,
  fused AdamW), timed from its own ``log.csv``;
- ``forward bf16``: ``model.eval()`` forward passes under bf16 autocast, no grad.

Tokens are real (non-pad) tokens, ``<bos>``/``<eos>`` included. Every training row times
``--steps`` optimiser steps of ``--batch-size`` documents after one untimed warm-up step, from the
end of one step to the end of the next (data, forward, backward, clipping, optimiser step).

MFU = achieved model FLOP/s / matmul peak, the peak measured in the same run (``torch.matmul`` of
2048 x 2048 matrices, fp32 and bf16, median of 5) and matched to the row's precision. Model FLOPs
per token: training ``6 N + 12 L d T``, forward ``2 N + 4 L d T`` (N = parameters in matrix
multiplies including the output projection, L layers, d width, T the mean document length).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see the report

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def cpu_info() -> dict:
    info = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                info["processor"] = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = line.split()
                info["bf16_flags"] = [f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")]
    except OSError:
        pass
    return info


def matmul_peak(dtype, n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def build_bench_corpus(limit: int, cache: Path) -> Path:
    from crystext.corpus import build_corpus
    from crystext.settings import data_dir

    out = cache / f"bench-throughput-{limit}"
    if (out / "dataset_dict.json").is_file():
        return out
    sources = ["aflow-prototypes"]
    for name in ("perov_5", "carbon_24"):
        path = data_dir() / name / "val.csv"
        if path.is_file():
            sources.append(str(path))
    build_corpus(sources, out=out, limit=limit, dedupe=None, progress=False)
    return out


def flops_per_token(config, mean_len: float) -> tuple[float, float]:
    """(training, forward) model FLOPs per token."""
    d, layers = config.n_embd, config.n_layer
    inner = config.n_inner or 4 * d
    n_matmul = layers * (4 * d * d + 2 * d * inner) + config.vocab_size * d
    return 6 * n_matmul + 12 * layers * d * mean_len, 2 * n_matmul + 4 * layers * d * mean_len


def time_trainer(preset: str, dd, tok, batch: int, steps: int, seed: int) -> dict:
    """The plain HF Trainer baseline in fp32; tokens/s over ``steps`` steps after one warm-up."""
    import torch
    from accelerate.state import AcceleratorState
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from crystext.modeling import build_model, load_preset

    AcceleratorState._reset_state(reset_partial_state=False)
    cfg = load_preset(preset)["training"]
    model = build_model(preset, tok, seed=seed)
    base_collate = DataCollatorForLanguageModeling(tok, mlm=False)
    tokens: list[int] = []
    padded: list[int] = []

    def collate(rows):
        out = base_collate(rows)
        tokens.append(int(out["attention_mask"].sum()))
        padded.append(out["input_ids"].numel())
        return out

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps + 1, learning_rate=cfg["learning_rate"],
            lr_scheduler_type="cosine", warmup_steps=cfg["warmup_steps"], weight_decay=cfg["weight_decay"],
            adam_beta1=cfg["betas"][0], adam_beta2=cfg["betas"][1], max_grad_norm=cfg["grad_clip"],
            use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no", logging_strategy="no",
            eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=seed,
        )
        train = dd["train"].select_columns(["input_ids"])
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate,
                          callbacks=[Clock()])
        trainer.train()
    dt = ends[-1] - ends[0]
    n = sum(tokens[1 : steps + 1])
    return {"tokens_per_s": n / dt, "tokens": n, "seconds": dt, "pad_fraction": 1 - n / sum(padded[1 : steps + 1])}


def time_crystext(preset: str, corpus: Path, batch: int, steps: int, precision: str, threads) -> dict:
    import pandas as pd

    from crystext.training import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        run = pretrain(preset, corpus, Path(tmp) / "run", max_steps=steps + 1, progress=False, num_threads=threads,
                       overrides={"batch_size": batch, "gradient_accumulation_steps": 1, "mixed_precision": precision,
                                  "log_interval": 1, "eval_interval": 10**9, "checkpoint_interval": 10**9,
                                  "eval_samples": 8})
        log = pd.read_csv(run / "log.csv")
    timed = log.iloc[1 : steps + 1]
    step_tokens = timed.tokens.diff().fillna(timed.tokens.iloc[0] - log.tokens.iloc[0])
    seconds = float((step_tokens / timed.tokens_per_s).sum())
    return {"tokens_per_s": float(step_tokens.sum()) / seconds, "tokens": int(step_tokens.sum()), "seconds": seconds}


def time_forward(preset: str, dd, tok, batch: int, n_batches: int, dtype) -> dict:
    import torch

    from crystext.modeling import build_model

    model = build_model(preset, tok, seed=0).eval()
    ds = dd["train"].select_columns(["input_ids"])
    rows = ds["input_ids"]
    order = np.argsort([len(r) for r in rows])
    starts = np.linspace(0, len(order) - batch, n_batches + 1).astype(int)  # batches across the length range
    batches = [[rows[i][:1024] for i in order[s : s + batch]] for s in starts]
    pad = tok.pad_token_id

    def run(b):
        width = max(len(r) for r in b)
        ids = torch.full((len(b), width), pad)
        for i, r in enumerate(b):
            ids[i, : len(r)] = torch.tensor(r)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            model(input_ids=ids)

    run(batches[0])  # warm-up
    t = time.perf_counter()
    for b in batches[1:]:
        run(b)
    seconds = time.perf_counter() - t
    n = sum(len(r) for b in batches[1:] for r in b)
    return {"tokens_per_s": n / seconds, "tokens": n, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["base", "crystallm-small"])
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps per row (after 1 warm-up)")
    parser.add_argument("--batch-size", type=int, default=8, help="documents per step")
    parser.add_argument("--forward-batches", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--limit", type=int, default=300, help="rows of perov_5 / carbon_24 / AFLOW in the corpus")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every row this many times (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "training" / "throughput.md"))
    args = parser.parse_args(argv)

    import torch

    from crystext.modeling import model_config

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    load_before = os.getloadavg()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    corpus_dir = build_bench_corpus(args.limit, REPO / "runs" / "corpora")
    from crystext.corpus import load_corpus

    dd = load_corpus(corpus_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(corpus_dir / "tokenizer")
    train = dd["train"]
    lengths = np.array(train["num_tokens"])
    sources = np.array(train["source"])
    mean_len = float(lengths.mean())

    rows = []
    for preset in args.presets:
        config = model_config(preset, tok)
        f_train, f_fwd = flops_per_token(config, mean_len)
        jobs = {
            "Trainer fp32 (baseline)": ("fp32", f_train, lambda: time_trainer(preset, dd, tok, args.batch_size, args.steps, args.seed)),
            "crystext fp32": ("fp32", f_train, lambda: time_crystext(preset, corpus_dir, args.batch_size, args.steps, "no", args.threads)),
            "crystext bf16": ("bf16", f_train, lambda: time_crystext(preset, corpus_dir, args.batch_size, args.steps, "bf16", args.threads)),
            "forward fp32": ("fp32", f_fwd, lambda: time_forward(preset, dd, tok, args.batch_size, args.forward_batches, torch.float32)),
            "forward bf16": ("bf16", f_fwd, lambda: time_forward(preset, dd, tok, args.batch_size, args.forward_batches, torch.bfloat16)),
        }
        # rounds alternate the order so that a change in the CPU's load hits every row alike
        runs: dict[str, list[dict]] = {name: [] for name in jobs}
        for rnd in range(args.rounds):
            for name in (list(jobs) if rnd % 2 == 0 else list(jobs)[::-1]):
                runs[name].append(jobs[name][2]())
        results = {}
        for name, (prec, fpt, _) in jobs.items():
            rates = [r["tokens_per_s"] for r in runs[name]]
            results[name] = (prec, fpt, {**runs[name][0], "tokens_per_s": statistics.median(rates), "all": rates})
        base = results["Trainer fp32 (baseline)"][2]["tokens_per_s"]
        for name, (prec, fpt, r) in results.items():
            mfu = r["tokens_per_s"] * fpt / peaks[prec]
            rows.append({"preset": preset, "row": name, "tokens_per_s": r["tokens_per_s"], "mfu": mfu, "all": r["all"],
                         "pad_fraction": r.get("pad_fraction"),
                         "vs_baseline": r["tokens_per_s"] / base if not name.startswith("forward") else None,
                         "tokens": r["tokens"], "seconds": r["seconds"]})
            print(f"{preset:16s} {name:24s} {r['tokens_per_s']:9.0f} tok/s  MFU {100 * mfu:5.1f}%", flush=True)
    load_after = os.getloadavg()

    # ---- report
    info = cpu_info()
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *(argv or sys.argv[1:])])
    lines = [
        "# Training throughput",
        "",
        f"Command: `{cmd}` (from the repository root; {time.time() - t0:.0f} s).",
        "",
        f"Machine: {info['processor']}, {info['cores']} cores, flags {', '.join(info.get('bf16_flags', []))}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
        f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after (other jobs share this CPU).",
        "",
        f"Matmul peak measured in this run (2048 x 2048 torch.matmul): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s.",
        "",
        f"Corpus sample: {len(train)} training documents (`{corpus_dir.name}`), mean {mean_len:.0f} tokens; "
        f"batch {args.batch_size} documents; {args.steps} timed steps per training row.",
        "",
        "| preset | run | tokens/s | MFU | x Trainer fp32 |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        vs = "" if r["vs_baseline"] is None else f"{r['vs_baseline']:.2f}"
        lines.append(f"| {r['preset']} | {r['row']} | {r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% | {vs} |")
    pads = [r["pad_fraction"] for r in rows if r.get("pad_fraction") is not None]
    if pads:
        lines += ["", f"The Trainer's random batches were {100 * statistics.mean(pads):.0f}% padding (crystext's "
                  "length-bucketed batches pad far less). Rounds: " + str(args.rounds) + "; every row's rates: "
                  + "; ".join(f"{r['preset']} {r['row']}: " + ", ".join(f"{x:.0f}" for x in r["all"]) for r in rows) + "."]
    lines += ["", "## Tokens per structure (crystext-cif)", "", "| source | documents | mean | median | 90th pct | max |",
              "|---|---:|---:|---:|---:|---:|"]
    for src in sorted(set(sources)):
        sel = lengths[sources == src]
        lines.append(f"| {src} | {len(sel)} | {sel.mean():.0f} | {np.median(sel):.0f} | {np.percentile(sel, 90):.0f} | {sel.max()} |")
    epoch_tokens = 1e6 * mean_len
    lines += ["", f"An epoch over 1M structures of this mix is about {epoch_tokens / 1e6:.0f}M tokens. At the "
              "crystext bf16 rates above, on this CPU:", ""]
    for r in rows:
        if r["row"] == "crystext bf16":
            lines.append(f"- {r['preset']}: {epoch_tokens / r['tokens_per_s'] / 3600:.0f} hours per epoch")
    Path(args.out).write_text("\n".join(lines) + "\n")
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(
        {"peaks": peaks, "rows": rows, "mean_tokens": mean_len, "load": [load_before, load_after], "threads": torch.get_num_threads()},
        indent=1))
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
