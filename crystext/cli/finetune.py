"""``crystext finetune``: a pretrained run -> a native sequence-regression model on one property."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..finetune_config import FinetuneSettings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a run on a property (head, LoRA or full) -> a regression model folder",
        description="Fine-tune a pretrained run on a task folder (train/val/test.csv, val/test.csv where val "
        "is the training split, or folds train{k}/test{k}.csv; a 'cif' column and a target column). "
        "Saves a GPT2ForSequenceClassification folder (AutoModelForSequenceClassification loads it, no "
        "custom code) with its card and metrics. Rerun the same command to continue an interrupted run.",
    )
    FinetuneSettings.add_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from ..finetune import run_finetune

    command = "crystext " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("crystext") else None
    summary = run_finetune(FinetuneSettings.from_args(args, command=command), args.out)
    if summary.get("status") != "done":
        print(f"paused after epoch {summary.get('epoch')}; rerun the same command to continue")
        return 0
    unit = f" {summary['unit']}" if summary.get("unit") else ""
    print(f"{summary['task']} ({summary['mode']}, seed {summary['seed']}): test MAE {summary['test']['mae']:.4g}{unit}, "
          f"val MAE {summary['val']['mae']:.4g}{unit}, best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
          f"{summary['s_per_epoch']} s/epoch -> {args.out}")
    skipped = summary.get("skipped") or {}
    if skipped:
        print("skipped " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    return 0
