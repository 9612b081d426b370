"""A training recipe chosen for a CPU budget: runs of equal CPU time compared on the same held-out documents.

Three phases, in one command (rerunning it skips the finished parts and resumes unfinished runs):

1. **Step speed, side by side.** For every candidate (a corpus = a tokenizer, and its batch size),
   training steps of the ``base`` model on the same documents, interleaved round-robin in one
   process so machine noise hits them alike: process CPU seconds per step, documents per CPU-hour,
   tokens/s and the share of a timed matmul peak (2048 x 2048, this process, the precision the runs
   use). The step is crystext's own (``crystext.training.token_loss_sum`` / ``collate``, fused AdamW).
2. **Runs of equal CPU time.** Each candidate trains with ``crystext pretrain`` for the number of
   optimiser steps that its measured CPU cost per step buys in ``--budget-cpu-min`` (its cosine
   schedule ends there, its warm-up a tenth of it), on ``--threads`` threads; ``--parallel`` runs
   share the machine at once, so machine noise hits them alike.
   The CPU time each run really used (user + system, from the operating system) is recorded.
3. **Held-out figures.** Nats per document and per general coordinate on the same canonical texts
   (``loss_by_token.py``: a seeded sample of the mp_e_form test structures, which no corpus here
   holds), for every run.

    python benchmarks/training/recipe.py --out /root/cx/recipe --budget-cpu-min 12 \\
        --candidate compact-old=CORPUS_COMPACT --candidate pair=CORPUS_PAIR \\
        --candidate pair-2layers=CORPUS_PAIR:n_layer=2 \\
        --candidate pair-lr2e-3=CORPUS_PAIR:learning_rate=2e-3 \\
        --md benchmarks/training/recipe.md --json benchmarks/training/recipe.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loss_by_token  # noqa: E402  (the sibling script: held-out figures by kind of token)
from throughput import matmul_peak  # noqa: E402  (the sibling script's timed matmul peak)


def parse_candidate(spec: str) -> dict:
    """``NAME=CORPUS[:key=value,...]`` -> {"name", "corpus", "overrides"}."""
    name, _, rest = spec.partition("=")
    corpus, _, sets = rest.partition(":")
    overrides = {}
    for item in filter(None, sets.split(",")):
        k, _, v = item.partition("=")
        overrides[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
    if not name or not corpus:
        raise SystemExit(f"--candidate {spec!r}: expected NAME=CORPUS[:key=value,...]")
    return {"name": name, "corpus": corpus, "overrides": overrides}


MODEL_KEYS = ("n_layer", "n_head", "n_embd", "n_inner")


def candidate_preset(cand: dict, preset: str) -> dict:
    """The preset a candidate trains: ``preset`` with the candidate's model keys (``n_layer``, ...) and
    training keys applied."""
    from crystext.modeling import load_preset

    out = load_preset(preset)
    out["model"].update({k: v for k, v in cand["overrides"].items() if k in MODEL_KEYS})
    out["training"].update({k: v for k, v in cand["overrides"].items() if k not in MODEL_KEYS})
    return out


def _setup(cand: dict, preset: str, threads: int):
    import torch

    from crystext.corpus import load_corpus
    from crystext.modeling import build_model
    from crystext.tokenization import load_tokenizer

    dd = load_corpus(cand["corpus"])
    tok = load_tokenizer(str(Path(cand["corpus"]) / "tokenizer"))
    spec = candidate_preset(cand, preset)
    cfg = spec["training"]
    model = build_model(spec, tok, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["learning_rate"]), fused=True)
    torch.set_num_threads(threads)
    return {"train": dd["train"], "tok": tok, "model": model, "opt": opt, "batch": int(cfg["batch_size"]),
            "cpu": 0.0, "wall": 0.0, "tokens": 0, "docs": 0, "steps": 0}


def _one_step(state: dict, rows: np.ndarray, dtype) -> None:
    import torch

    from crystext.training import collate, token_loss_sum

    ids, mask = collate(state["train"][rows.tolist()]["input_ids"], state["tok"].pad_token_id, 1024)
    c0, w0 = time.process_time(), time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss, n = token_loss_sum(state["model"], ids, mask)
    (loss / n).backward()
    torch.nn.utils.clip_grad_norm_(state["model"].parameters(), 1.0)
    state["opt"].step()
    state["opt"].zero_grad(set_to_none=True)
    state["cpu"] += time.process_time() - c0
    state["wall"] += time.perf_counter() - w0
    state["tokens"] += int(mask.sum())
    state["docs"] += len(rows)
    state["steps"] += 1


def measure_speed(cands: list[dict], preset: str, steps: int, threads: int, precision: str) -> list[dict]:
    """Interleaved step timing of every candidate on the same documents (phase 1)."""
    import torch

    from crystext.precision import autocast_dtype, resolve_precision

    resolved = resolve_precision(precision, announce=False)
    dtype = autocast_dtype(resolved)
    states = [_setup(c, preset, threads) for c in cands]
    n = min(len(s["train"]) for s in states)
    rng = np.random.default_rng(0)
    lengths = np.asarray(states[0]["train"][:n]["num_tokens"])
    widest = max(s["batch"] for s in states)
    for k in range(steps + 1):  # the first round warms up and is not counted
        draw = rng.choice(n, size=widest, replace=False) if k else np.arange(widest)
        for s in states:  # every candidate reads the same documents (its first batch_size of the draw)
            pick = draw[: s["batch"]]
            rows = pick[np.argsort(lengths[pick])]
            before = dict(s)
            _one_step(s, rows, dtype)
            if k == 0:
                s.update({key: before[key] for key in ("cpu", "wall", "tokens", "docs", "steps")})
    peak = matmul_peak(dtype or torch.float32)
    rows = []
    for c, s in zip(cands, states):
        cfg = s["model"].config
        d, layers, vocab = cfg.n_embd, cfg.n_layer, cfg.vocab_size
        mean_len = s["tokens"] / max(s["docs"], 1)
        flops_tok = 6 * (layers * 12 * d * d + vocab * d) + 12 * layers * d * mean_len
        rows.append({"name": c["name"], "vocab": vocab, "batch": s["batch"], "steps_timed": s["steps"],
                     "cpu_s_per_step": s["cpu"] / s["steps"], "docs_per_cpu_hour": 3600 * s["docs"] / s["cpu"],
                     "tokens_per_cpu_s": s["tokens"] / s["cpu"], "tokens_per_doc": mean_len,
                     "matmul_peak_share": flops_tok * s["tokens"] / s["wall"] / peak, "precision": resolved})
    return rows


def _pretrain_command(cand: dict, out: Path, steps: int, preset: str, threads: int) -> list[str]:
    if any(k in MODEL_KEYS for k in cand["overrides"]):
        import yaml

        spec = candidate_preset({**cand, "overrides": {k: v for k, v in cand["overrides"].items() if k in MODEL_KEYS}},
                                preset)
        path = out.parent / f"{cand['name']}.yaml"
        path.write_text(yaml.safe_dump({"model": spec["model"], "training": spec["training"]}))
        preset = str(path)
    cmd = ["crystext", "pretrain", preset, "--corpus", cand["corpus"], "--out", str(out), "--max-steps", str(steps),
           "--threads", str(threads), "--no-progress", "--allow-worse",
           "--set", f"eval_interval={steps}", "--set", "eval_samples=64", "--set", f"checkpoint_interval={max(steps // 8, 10)}"]
    training = {"warmup_steps": max(5, steps // 10), **cand["overrides"]}  # warm-up scaled to the run
    for k, v in training.items():
        if k not in MODEL_KEYS:
            cmd += ["--set", f"{k}={v}"]
    return cmd


def run_all(cands: list[dict], speed: list[dict], root: Path, budget_s: float, preset: str, threads: int,
            parallel: int) -> list[dict]:
    """Train every candidate for the steps its CPU cost buys in ``budget_s`` (phase 2)."""
    jobs, done = [], []
    for cand, sp in zip(cands, speed):
        out = root / cand["name"]
        job_file = root / f"{cand['name']}.job.json"
        if job_file.is_file():  # started before: keep its step count, whatever a new speed phase says
            job = json.loads(job_file.read_text())
            jobs.append({"name": cand["name"], "out": out, "steps": job["steps"], "command": job["command"]})
            continue
        steps = max(10, int(budget_s / sp["cpu_s_per_step"]))
        cmd = _pretrain_command(cand, out, steps, preset, threads)
        job_file.write_text(json.dumps({"steps": steps, "command": cmd}))
        jobs.append({"name": cand["name"], "out": out, "steps": steps, "command": cmd})
    pending = [j for j in jobs if not (j["out"] / "eval.json").is_file() or not (j["out"] / "cpu.json").is_file()]
    running: list[tuple[dict, subprocess.Popen, float, object]] = []
    while pending or running:
        while pending and len(running) < parallel:
            j = pending.pop(0)
            j["out"].mkdir(parents=True, exist_ok=True)
            log = open(j["out"].parent / f"{j['name']}.log", "a")
            running.append((j, subprocess.Popen(j["command"], stdout=log, stderr=subprocess.STDOUT), time.time(), log))
        for item in list(running):
            j, proc, t0, log = item
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            log.close()
            running.remove(item)
            cpu = usage.ru_utime + usage.ru_stime  # this process only: a run resumed after a kill counts its last part
            (j["out"] / "cpu.json").write_text(json.dumps({"cpu_s": cpu, "wall_s": time.time() - t0,
                                                           "exit": os.waitstatus_to_exitcode(status)}))
        time.sleep(2)
    for j in jobs:
        info = json.loads((j["out"] / "cpu.json").read_text())
        done.append({**j, "command": shlex.join(j["command"]), "out": str(j["out"]), **info})
    return done


def held_out(runs: list[dict], n: int, seed: int) -> list[dict]:
    """Nats per document and per general coordinate of every run on the same held-out texts (phase 3)."""
    from transformers import AutoTokenizer

    from crystext.settings import data_dir

    data = data_dir()
    texts = loss_by_token._held_out_texts(data / "mp_e_form" / "test.csv", n, seed)
    toks = [AutoTokenizer.from_pretrained(r["out"]) for r in runs]
    keep = [t for t in texts if all(len(tk(t)["input_ids"]) <= 1024 for tk in toks)]
    reference = loss_by_token._reference_texts(data, 300, seed + 1)
    marks = [loss_by_token.char_classes(t) for t in keep]
    totals = {k: sum(m[1][k] for m in marks) for k in marks[0][1]}
    for r in runs:
        res = loss_by_token.measure(r["out"], keep, marks, reference, 8)
        r.update(loss_by_token.summarise(np.asarray(res["model"]), totals, len(keep), res["tokens_per_doc"]))
        r["held_out_docs"] = len(keep)
    return runs


def _markdown(speed: list[dict], runs: list[dict], meta: dict) -> str:
    base = next((s for s in speed if s["name"] == meta["baseline"]), speed[0])
    out = [f"# Training recipe for a CPU budget\n\n```\n{meta['command']}\n```\n",
           f"Machine: {meta['machine']}; preset `{meta['preset']}`, {meta['threads']} thread(s) per run, "
           f"{meta['parallel']} run(s) at once, budget {meta['budget_cpu_min']} CPU-minutes per run.\n",
           "## Step speed, side by side (one process, interleaved)\n",
           "| candidate | vocab | batch | tokens/doc | CPU s/step | documents per CPU-hour | x baseline | tokens per CPU-s | share of matmul peak |",
           "|---|---|---|---|---|---|---|---|---|"]
    for s in speed:
        out.append(f"| {s['name']} | {s['vocab']} | {s['batch']} | {s['tokens_per_doc']:.0f} | {s['cpu_s_per_step']:.2f} "
                   f"| {s['docs_per_cpu_hour']:.0f} | {s['docs_per_cpu_hour'] / base['docs_per_cpu_hour']:.2f} "
                   f"| {s['tokens_per_cpu_s']:.0f} | {100 * s['matmul_peak_share']:.1f} % |")
    if runs:
        out += ["\n## Runs of equal CPU time, held-out mp_e_form test documents\n",
                f"{runs[0].get('held_out_docs', 0)} documents; general coordinate: nats per coordinate off a special "
                "position (uniform 9.21).\n",
                "| run | steps | CPU min used | nats/doc | general coord (nats) | element (nats) | command |", "|---|---|---|---|---|---|---|"]
        for r in runs:
            out.append(f"| {r['name']} | {r['steps']} | {r['cpu_s'] / 60:.1f} | {r.get('nats_per_doc', float('nan')):.1f} "
                       f"| {r.get('general_coord_nats', float('nan')):.2f} | {r.get('element_nats', float('nan')):.3f} "
                       f"| `{r['command']}` |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidate", action="append", required=True, help="NAME=CORPUS[:key=value,...]")
    ap.add_argument("--baseline", default=None, help="candidate the ratios are against (default: the first)")
    ap.add_argument("--out", required=True, help="folder for the runs (outside the repository)")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--budget-cpu-min", type=float, default=12.0)
    ap.add_argument("--speed-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--held-out", type=int, default=300, help="held-out documents (0: skip phase 3)")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args(argv)
    cands = [parse_candidate(c) for c in args.candidate]
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    speed_file = root / "speed.json"
    if speed_file.is_file() and [s["name"] for s in json.loads(speed_file.read_text())] == [c["name"] for c in cands]:
        speed = json.loads(speed_file.read_text())
    else:
        speed = measure_speed(cands, args.preset, args.speed_steps, args.threads, args.precision)
        speed_file.write_text(json.dumps(speed, indent=2))
    print(json.dumps(speed, indent=1), flush=True)
    runs = [] if args.speed_only else run_all(cands, speed, root, 60 * args.budget_cpu_min, args.preset, args.threads,
                                              args.parallel)
    if runs and args.held_out:
        runs = held_out(runs, args.held_out, 0)
    meta = {"command": "python " + shlex.join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
            "machine": loss_by_token.cpu_name(), "preset": args.preset, "threads": args.threads,
            "parallel": args.parallel, "budget_cpu_min": args.budget_cpu_min,
            "baseline": args.baseline or cands[0]["name"]}
    md = _markdown(speed, runs, meta)
    if args.md:
        Path(args.md).write_text(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "speed": speed, "runs": runs}, indent=2, default=str))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
