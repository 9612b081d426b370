"""Training tokens/s in float32 and in bf16 autocast, side by side, on the machine at hand.

What ``mixed_precision: auto`` decides between: the same model, batches and optimiser, one
optimiser step (forward, backward, fused AdamW) timed at a time, the two precisions interleaved
step by step so that a shared CPU's load hits both alike; medians reported. Also prints
``crystext.precision.bf16_speed()``'s verdict (the check ``auto`` uses) for comparison.

    python benchmarks/training/precision.py --preset base --steps 6 --batch-size 8 --out benchmarks/training/precision.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    except OSError:
        pass
    return []


def batches(corpus: str, batch_size: int, n: int, seed: int):
    """``n`` length-bucketed batches of the corpus's training split (rows of token ids)."""
    from crystext.training import resolve_corpus

    cache = Path(tempfile.gettempdir()) / "crystext-bench-corpora"
    dd, tok, _ = resolve_corpus(corpus, None, cache)
    ds = dd["train"]
    rng = np.random.default_rng(seed)
    rows = ds["input_ids"]
    order = rng.permutation(len(rows))[: batch_size * n]
    order = sorted(order, key=lambda i: len(rows[i]))  # like the trainer's bucketing: little padding
    out = [[rows[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
    rng.shuffle(out)
    return out, tok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--corpus", default="aflow-prototypes")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per precision (after one warm-up each)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write a Markdown report here (and a .json beside it)")
    args = parser.parse_args(argv)

    from crystext.modeling import build_model
    from crystext.precision import bf16_speed
    from crystext.training import collate, token_loss_sum

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    data, tok = batches(args.corpus, args.batch_size, args.steps + 1, args.seed)
    load_before = os.getloadavg()[0]
    models, opts = {}, {}
    for name in ("float32", "bfloat16"):
        models[name] = build_model(args.preset, tok, seed=args.seed)
        opts[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4, fused=True)
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    tokens: list[int] = []
    for k, rows in enumerate(data):  # step k of both precisions on the same batch, interleaved
        ids, mask = collate(rows, tok.pad_token_id, 1024)
        for name in ("float32", "bfloat16"):
            model, opt = models[name], opts[name]
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if name == "bfloat16" else nullcontext()
            t = time.perf_counter()
            with ctx:
                loss, n = token_loss_sum(model, ids, mask)
            (loss / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if k > 0:  # step 0 warms up
                times[name].append(time.perf_counter() - t)
        if k > 0:
            tokens.append(int(mask.sum()))
    speed = bf16_speed("cpu")
    rates = {name: [tk / s for tk, s in zip(tokens, ts)] for name, ts in times.items()}
    med = {name: statistics.median(r) for name, r in rates.items()}
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "preset": args.preset, "batch_size": args.batch_size,
        "steps": args.steps, "tokens_per_step_median": statistics.median(tokens),
        "tokens_per_s_median": {k: round(v, 1) for k, v in med.items()},
        "tokens_per_s_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "bf16_over_fp32": round(med["bfloat16"] / med["float32"], 2),
        "bf16_speed": speed, "auto_picks": "bfloat16" if speed["fast"] else "float32",
        "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.write_text(render(result))
    return 0


def render(r: dict) -> str:
    med = r["tokens_per_s_median"]
    return f"""# Training precision: float32 against bf16 autocast

Command: `{r['command']}` (from the repository root; {r['seconds']:.0f} s).

Machine: {r['cpu']}, {r['cores']} cores, flags {', '.join(r['flags']) or 'none of avx2/avx512/amx'}; torch {r['torch']},
{r['threads']} threads; load average (1 min) {r['load_average_before_after'][0]} before,
{r['load_average_before_after'][1]} after (other jobs share this CPU: absolute rates are low and
noisy, the two precisions were interleaved step by step so the ratio is fair).

Preset `{r['preset']}`, batches of {r['batch_size']} documents (median {r['tokens_per_step_median']} tokens),
{r['steps']} timed optimiser steps per precision (forward, backward, fused AdamW), medians:

| precision | tokens/s (median) |
|---|---:|
| float32 | {med['float32']:.0f} |
| bf16 autocast | {med['bfloat16']:.0f} |
| bf16 / float32 | {r['bf16_over_fp32']:.2f}x |

Every step's rate: float32 {r['tokens_per_s_all']['float32']}; bf16 {r['tokens_per_s_all']['bfloat16']}.

`crystext.precision.bf16_speed('cpu')` (the check `mixed_precision: auto` uses): supported
{r['bf16_speed']['supported']}, {r['bf16_speed']['reason']}; verdict fast = {r['bf16_speed']['fast']},
so `auto` picks **{r['auto_picks']}** here. On an AVX2-only CPU (no AVX512-BF16/AMX) the same check
finds bf16 unsupported (emulated, ~50x slower on a matmul) and `auto` picks float32.
"""


if __name__ == "__main__":
    sys.exit(main())
