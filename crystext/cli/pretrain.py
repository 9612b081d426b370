"""``crystext pretrain``: train a causal LM on a corpus (no arguments: the ``base`` preset on the
embedded ``aflow-prototypes`` corpus, a few minutes on a laptop CPU)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

#: The no-argument main job: bounded so it ends inside 10 minutes on any 2-core x86 CPU. Batches
#: of 8 documents (~1,800 tokens) give many small updates: on the embedded corpus (269 training
#: documents, unigram baseline ~3.3 nats/token) the held-out loss is ~2.9 after 10 steps, ~1.9
#: after 30 and ~1.45 after 80 (bf16 and float32 alike). max_time (corpus, training, evaluation
#: and save; python start-up comes on top) cuts training short on a slow or busy machine.
MAIN_JOB = {"preset": "base", "corpus": ["aflow-prototypes"], "out": "runs/base-aflow", "max_steps": 80,
            "max_time": 480.0, "overrides": {"batch_size": 8, "warmup_steps": 5, "eval_interval": 20,
                                             "eval_samples": 64, "checkpoint_interval": 40, "log_interval": 5}}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="train a GPT-2-style model on a crystal-text corpus (accelerate; resumable)",
        description="Train a causal language model on a corpus and write a run folder (save_pretrained "
        "model + tokenizer, training_config.json, log.csv, loss.png, eval.json, checkpoints/). With no "
        f"arguments: the '{MAIN_JOB['preset']}' preset on the embedded 'aflow-prototypes' corpus for "
        f"{MAIN_JOB['max_steps']} steps into {MAIN_JOB['out']}. Multi-GPU / multi-node: "
        "accelerate launch --config_file training/accelerate/<cfg>.yaml -m crystext pretrain ...",
    )
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG_OR_PRESET",
                   help="preset name (tiny, base, crystallm-small), preset YAML, or an HF config.json "
                   "(default: base; with --init: the init run's own hyper-parameters)")
    p.add_argument("--corpus", nargs="+", default=None, metavar="SRC",
                   help="a corpus folder (crystext corpus), or sources to build one from (CIF folder, "
                   "table, aflow-prototypes, Matbench .json.bz2); default aflow-prototypes")
    p.add_argument("--out", default=None, help=f"run folder (default {MAIN_JOB['out']} for the main job, "
                   "else runs/<preset>-<corpus>)")
    p.add_argument("--init", default=None, metavar="DIR", help="fine-tune from this run folder's weights")
    p.add_argument("--max-steps", type=int, default=None, help="length of the run / schedule (optimiser steps)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out (required)")
    g.add_argument("--fresh", action="store_true", help="start afresh, deleting --out's old checkpoints "
                   "(default: resume if a checkpoint exists)")
    p.add_argument("--stop-at", type=int, default=None, help="stop after this step, keeping the schedule")
    p.add_argument("--max-time", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly (checkpoint + final files) this long after the start")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training hyper-parameter, e.g. --set batch_size=8 --set learning_rate=3e-4")
    p.add_argument("--tokenizer", default="crystext-cif", help="tokenizer for a corpus built on the fly")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp16", "fp32"],
                   help="training precision (default: the preset's, 'auto' = bf16 only where this machine "
                   "runs it fast, else float32)")
    p.add_argument("--force-resume", action="store_true",
                   help="resume even if batch size, gradient accumulation or world size differ from the checkpoint's")
    p.add_argument("--allow-worse", action="store_true",
                   help="exit 0 even if the held-out loss does not beat the unigram baseline")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_pretrain)


def _parse_set(items: list[str]) -> dict:
    import yaml

    from ..errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def _pretrain(args: argparse.Namespace) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared CPU spinning threads made steps
    # several times slower. Must be set before torch loads its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pathlib import Path

    from ..training import pretrain

    warnings.filterwarnings("ignore", message="pretrain .*unigram", category=RuntimeWarning)

    main_job = args.config is None and args.corpus is None and args.init is None
    overrides = dict(MAIN_JOB["overrides"]) if main_job else {}
    overrides.update(_parse_set(args.set))
    if args.precision:
        overrides["mixed_precision"] = args.precision
    preset = args.config or (None if args.init else MAIN_JOB["preset"])
    corpus = args.corpus or MAIN_JOB["corpus"]
    corpus_arg = corpus[0] if len(corpus) == 1 else corpus
    if args.out:
        out = args.out
    elif main_job:
        out = MAIN_JOB["out"]
    else:
        name = Path(str(preset or args.init)).stem
        out = f"runs/{name}-" + "+".join(Path(c).stem.split(".")[0] for c in corpus)
    max_steps = args.max_steps if args.max_steps is not None else (MAIN_JOB["max_steps"] if main_job else None)
    max_time = args.max_time * 60 if args.max_time is not None else (MAIN_JOB["max_time"] if main_job else None)
    run = pretrain(
        preset, corpus_arg, out, init=args.init,
        resume=True if args.resume else False if args.fresh else "auto", force_resume=args.force_resume,
        max_steps=max_steps, stop_at=args.stop_at, max_time=max_time, overrides=overrides,
        tokenizer=args.tokenizer, num_threads=args.threads, progress=not args.no_progress,
    )
    import json

    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch only the main process reports
        return 0
    report = json.loads((Path(run) / "eval.json").read_text())
    info = json.loads((Path(run) / "training_config.json").read_text())
    loss, baseline = report["held_out_loss"], report["unigram_baseline_entropy"]
    held = report[report["held_out_split"]]
    sample = "" if not held.get("sampled") else f", on {held['documents']} of {held['of']} documents"
    steps = f"{report['steps']} steps" + (f" (stopped by the time budget, of {info['max_steps']})"
                                         if report.get("stopped_by") == "max_time" else "")
    print(f"held-out loss {loss:.4f} nats/token (unigram baseline {baseline:.4f}{sample}) after {steps}; "
          f"precision {info['precision']['resolved']}")
    if not report.get("beats_unigram_baseline", loss < baseline):
        print(f"WARNING: the model does not beat the unigram baseline ({loss:.4f} >= {baseline:.4f} nats/token): "
              f"it predicts no better than token frequencies. Train longer (--max-steps, --max-time) or check the "
              f"data. Files written to {Path(run).resolve()} anyway.", file=sys.stderr)
        return 0 if args.allow_worse else 3
    print(f"model saved to {Path(run).resolve()}")
    print(f"  load: AutoModelForCausalLM.from_pretrained({str(run)!r}); sample: crystext generate {run}")
    return 0
