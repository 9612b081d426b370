"""Throughput and memory of structure embedding.

1. Text conversion: perov_5 CIF -> Structure -> canonical text, structures/s (the part of
   ``crystext embed`` that does not depend on the model).
2. Model: structures/s for each preset (random weights: speed does not depend on them) and for a
   trained run (``--model``), on texts converted and tokenized beforehand, batched as
   ``crystext embed`` batches them (read-ahead, sorted by length, right padding). Each is given as
   a fraction of the forward-pass FLOP limit at the float32 matmul peak measured in the same run.
3. Memory: peak RSS of ``crystext embed`` (the full path: CSV table -> text -> tokens -> model ->
   Parquet) in a fresh process per input size, 1k .. 10k perov_5 structures (val + test rows,
   cycled to reach 10k), with the tiny preset (the streaming machinery is the same for every model).

Writes a Markdown report. Example:

    python benchmarks/embeddings/throughput.py --n 256 --memory-sizes 1000 3000 10000 \
        --out benchmarks/embeddings/throughput.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def perov_rows(n: int) -> pd.DataFrame:
    from crystext.settings import data_dir

    folder = data_dir(required=True) / "perov_5"
    df = pd.concat([pd.read_csv(folder / f"{split}.csv") for split in ("val", "test")], ignore_index=True)
    df = df[["material_id", "cif"]]
    reps = -(-n // len(df))
    out = pd.concat([df] * reps, ignore_index=True).iloc[:n].copy()
    out["material_id"] = [f"{m}-{i}" for i, m in enumerate(out["material_id"])]
    return out


def matmul_peak(device, size: int = 2048, reps: int = 5) -> float:
    """Best float32 matmul rate (FLOP/s) over ``reps`` products of two size x size matrices."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = 0.0
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - t))
    return best


def forward_flops(lengths, n_layer: int, d: int) -> float:
    """FLOPs of the transformer body's forward pass (no LM head) over unpadded sequences:
    per layer and token 24 d^2 for the QKV, output and MLP matmuls, plus 4 d t for causal attention
    (scores and weighted sum over the t tokens seen), summed over t = 1..L."""
    total = 0.0
    for L in lengths:
        total += n_layer * (24 * d * d * L + 2 * d * L * (L + 1))
    return total


def time_texts(cifs: list[str]) -> tuple[list[str], float]:
    from crystext.inputs import to_structure
    from crystext.text import structure_to_text

    for c in cifs[:8]:  # warm-up: imports, spglib and space-group tables load on first use
        structure_to_text(to_structure(c))
    t = time.perf_counter()
    texts = [structure_to_text(to_structure(c)) for c in cifs]
    return texts, len(cifs) / (time.perf_counter() - t)


def time_model(name: str, run, texts: list[str], batch_size: int, repeats: int) -> dict:
    import torch

    from crystext.embeddings import StructureEmbedder, max_positions
    from crystext.encoding import encode_text

    emb = StructureEmbedder(run, batch_size=batch_size, device="cpu" if not torch.cuda.is_available() else None)
    ids = [encode_text(t, emb.tokenizer, max_positions(emb.model)) for t in texts]
    emb._embed_sorted(ids[: batch_size * 2])  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        emb._embed_sorted(ids)
        if emb.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    cfg = emb.model.config
    flops = forward_flops([len(x) for x in ids], cfg.n_layer, cfg.n_embd)
    params = sum(p.numel() for p in emb.model.base_model.parameters())
    return {
        "name": name, "n_layer": cfg.n_layer, "d": cfg.n_embd, "params": params,
        "tokens_per_structure": float(np.mean([len(x) for x in ids])),
        "structures_per_s": len(ids) / sec, "flop_per_s": flops / sec, "seconds": sec,
        "device": str(emb.device), "load": os.getloadavg()[0],
    }


def memory_child(csv: str, model: str, batch_size: int) -> None:
    """Run ``crystext embed`` on one table; print peak RSS (VmHWM and sampled) as JSON."""
    import threading

    import psutil

    from crystext.embeddings import embed_to_parquet

    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start_rss = proc.memory_info().rss
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = embed_to_parquet([csv], model, Path(tmp) / "v.parquet", batch_size=batch_size, progress=False,
                                   device="cpu")
    seconds = time.perf_counter() - t
    done.set()
    thread.join()
    print(json.dumps({
        "embedded": summary["embedded"], "skipped": summary["skipped"], "seconds": seconds,
        "rss_before_mb": start_rss / 2**20, "peak_sampled_mb": peak[0] / 2**20, "vmhwm_mb": vm_hwm_mb(),
    }))


def vm_hwm_mb() -> float:
    """Peak RSS of this process image (Linux VmHWM; unlike ru_maxrss it is not inherited from the
    parent across fork + exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_preset_run(preset: str, folder: Path) -> Path:
    from crystext.modeling import build_model
    from crystext.tokenization import load_tokenizer

    tok = load_tokenizer("crystext-cif")
    model = build_model(preset, tok, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="*", default=None, help="presets to time (default: all shipped)")
    p.add_argument("--model", action="append", default=[], help="a trained run to time as well (repeatable)")
    p.add_argument("--n", type=int, default=256, help="structures for the speed measurements")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed passes per model (median)")
    p.add_argument("--memory-sizes", nargs="*", type=int, default=[1000, 3000, 10000])
    p.add_argument("--memory-preset", default="tiny")
    p.add_argument("--out", default=None, help="Markdown report (default: print)")
    p.add_argument("--memory-child", nargs=3, metavar=("CSV", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], int(args.memory_child[2]))
        return 0

    import torch

    from crystext.modeling import list_presets

    presets = args.presets if args.presets is not None else list_presets()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    command = "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute()
                                    else sys.argv[0]] + sys.argv[1:])
    rows = perov_rows(args.n)
    texts, text_rate = time_texts(rows["cif"].tolist())
    print(f"text conversion: {text_rate:.1f} structures/s", file=sys.stderr)

    peak_before = matmul_peak(device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(name, build_preset_run(name, Path(tmp) / name)) for name in presets]
        runs += [(Path(m).name, m) for m in args.model]
        for name, run in runs:
            res = time_model(name, str(run), texts, args.batch_size, args.repeats)
            results.append(res)
            print(f"{name}: {res['structures_per_s']:.1f} structures/s", file=sys.stderr)
        peak_after = matmul_peak(device)
        peak = max(peak_before, peak_after)

        memory = []
        if args.memory_sizes:
            mem_run = build_preset_run(args.memory_preset, Path(tmp) / f"mem-{args.memory_preset}")
            for size in args.memory_sizes:
                csv = Path(tmp) / f"perov_{size}.csv"
                perov_rows(size).to_csv(csv, index=False)
                out = subprocess.run([sys.executable, __file__, "--memory-child", str(csv), str(mem_run),
                                      str(args.batch_size)], capture_output=True, text=True, check=True)
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                rec["size"] = size
                rec["load"] = os.getloadavg()[0]
                memory.append(rec)
                print(f"memory {size}: {rec}", file=sys.stderr)

    report = render(results, memory, text_rate, peak, peak_before, peak_after, device, args, command)
    if args.out:
        Path(args.out).write_text(report)
    print(report)
    return 0


def render(results, memory, text_rate, peak, peak_before, peak_after, device, args, command) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    lines = [
        "# Structure-embedding throughput and memory",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {device.type.upper()}, torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"({os.cpu_count()} logical cores, {cpu}). Other jobs may share the machine: the 1-minute load "
        "average after each measurement is given (above the core count means contention), and the FLOP "
        "fractions are measured against a matmul peak taken in the same run.",
        "",
        f"Data: {args.n} perov_5 structures (val then test rows of `perov_5/*.csv`), batch size "
        f"{args.batch_size}, median of {args.repeats} passes. float32 matmul peak (2048^3 products, best "
        f"of 5): {peak / 1e9:.1f} GFLOP/s (before the models: {peak_before / 1e9:.1f}, after: "
        f"{peak_after / 1e9:.1f}).",
        "",
        "## Speed",
        "",
        f"Text conversion alone (CIF -> Structure -> canonical text, one process): **{text_rate:.1f} "
        "structures/s**. The model rates below exclude it (texts converted and tokenized beforehand); "
        "`crystext embed` does both in one process, so its end-to-end rate is about "
        "1 / (1/text rate + 1/model rate), given in the last column.",
        "",
        "| model | layers x d | body params | tokens/structure | structures/s (model) | GFLOP/s | "
        "fraction of matmul peak | structures/s incl. text (est.) | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e2e = 1.0 / (1.0 / text_rate + 1.0 / r["structures_per_s"])
        lines.append(
            f"| {r['name']} | {r['n_layer']} x {r['d']} | {r['params'] / 1e6:.2f} M | "
            f"{r['tokens_per_structure']:.0f} | {r['structures_per_s']:.1f} | {r['flop_per_s'] / 1e9:.2f} | "
            f"{r['flop_per_s'] / peak:.1%} | {e2e:.1f} | {r['load']:.1f} |")
    lines += [
        "",
        "FLOPs counted: the transformer body's forward pass over the real (unpadded) tokens, "
        "24·d² per layer and token for the matmuls plus 4·d·t for causal attention over t earlier tokens; "
        "no LM head (embedding does not run it). Padding, layer norms, GELU and softmax are extra work not "
        "counted, so the fraction is a lower bound on hardware use.",
    ]
    if memory:
        lines += [
            "",
            "## Memory: peak RSS of `crystext embed` as the input grows",
            "",
            f"`embed_to_parquet` on a CSV table of N perov_5 rows (cycled past 7,572), `{args.memory_preset}` "
            f"preset, batch {args.batch_size}, each size in a fresh process; this path includes CIF parsing "
            "and text conversion. Peak RSS: the kernel's high-water mark (VmHWM) and psutil sampling every 50 ms; "
            "RSS at start is after the imports, before the model is loaded.",
            "",
            "| structures | embedded | seconds | structures/s | RSS at start (MiB) | peak RSS sampled (MiB) | "
            "peak RSS VmHWM (MiB) | load |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in memory:
            lines.append(
                f"| {m['size']:,} | {m['embedded']:,} | {m['seconds']:.1f} | {m['embedded'] / m['seconds']:.1f} | "
                f"{m['rss_before_mb']:.0f} | {m['peak_sampled_mb']:.0f} | {m['vmhwm_mb']:.0f} | {m['load']:.1f} |")
        first, last = memory[0], memory[-1]
        growth = last["vmhwm_mb"] - first["vmhwm_mb"]
        lines += ["", f"Peak RSS grows by {growth:.0f} MiB from {first['size']:,} to {last['size']:,} structures "
                  f"({growth / first['vmhwm_mb']:+.1%})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
