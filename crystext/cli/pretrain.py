"""``crystext pretrain``: train a causal LM on a corpus (no arguments: the ``base`` preset on the
embedded ``aflow-prototypes`` corpus, a few minutes on a laptop CPU)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..pretrain_config import PretrainSettings

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
    p.add_argument("--corpus", nargs="+", default=None, metavar="SRC",
                   help="a corpus folder (crystext corpus), or sources to build one from (CIF folder, "
                   "table, aflow-prototypes, Matbench .json.bz2); default aflow-prototypes")
    p.add_argument("--out", default=None, help=f"run folder (default {MAIN_JOB['out']} for the main job, "
                   "else runs/<preset>-<corpus>)")
    PretrainSettings.add_arguments(p)  # the preset, --set, --max-steps, --precision, resume and stop flags
    p.add_argument("--tokenizer", default="crystext-cif", help="tokenizer for a corpus built on the fly")
    p.add_argument("--allow-worse", action="store_true",
                   help="exit 0 even if the held-out loss does not beat the unigram baseline")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared CPU spinning threads made steps
    # several times slower. Must be set before torch loads its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pathlib import Path

    from ..training import run_pretrain

    warnings.filterwarnings("ignore", message="pretrain .*unigram", category=RuntimeWarning)

    main_job = args.config is None and args.corpus is None and args.init is None
    settings = PretrainSettings.from_args(args, defaults=MAIN_JOB if main_job else None)
    corpus = args.corpus or MAIN_JOB["corpus"]
    if args.out:
        out = args.out
    elif main_job:
        out = MAIN_JOB["out"]
    else:
        name = Path(str(args.config or args.init or MAIN_JOB["preset"])).stem
        out = f"runs/{name}-" + "+".join(Path(c).stem.split(".")[0] for c in corpus)
    run = run_pretrain(settings, corpus[0] if len(corpus) == 1 else corpus, out, tokenizer=args.tokenizer)
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
