"""``crystext finetune``: a pretrained run -> a native sequence-regression model on one property."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a run on a property (head, LoRA or full) -> a regression model folder",
        description="Fine-tune a pretrained run on a task folder (train/val/test.csv, val/test.csv where val "
        "is the training split, or folds train{k}/test{k}.csv; a 'cif' column and a target column). "
        "Saves a GPT2ForSequenceClassification folder (AutoModelForSequenceClassification loads it, no "
        "custom code) with its card and metrics. Rerun the same command to continue an interrupted run.",
    )
    p.add_argument("run", metavar="RUN", help="pretrained run folder, name under models/, or Hub repo id")
    p.add_argument("--data", required=True, metavar="TASK_DIR", help="task folder")
    p.add_argument("--target", default=None, metavar="COL",
                   help="target column (default 'target'; perov_5: heat_all, carbon_24: energy_per_atom)")
    p.add_argument("--mode", choices=["head", "lora", "full"], default="lora",
                   help="head: frozen transformer, train the score head; lora: LoRA adapters + head (merged "
                   "for the save); full: every weight (default lora)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--fold", type=int, default=None, metavar="K", help="fold of a 5-fold task folder")
    p.add_argument("--train-split", default=None, metavar="NAME",
                   help="file stem of the training split (default: train, or val when there is no train.csv "
                   "as in the shared perov_5/carbon_24 folders)")
    p.add_argument("--unit", default=None, help="unit of the target (known for the shared tasks)")
    p.add_argument("--seed", type=int, default=0, help="model seed (default 0)")
    p.add_argument("--precision", default="auto",
                   help="auto (bf16 only where this machine runs it fast), bf16 or float32 (default auto)")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default per mode: head 200, else 30)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per mode: head 3e-3, lora 1e-3, "
                   "full 2e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="structures per step (default 32)")
    p.add_argument("--patience", type=int, default=None,
                   help="epochs without a better validation MAE before stopping (default head 20, else 4)")
    p.add_argument("--max-train", type=int, default=None, help="seeded subsample of the training rows")
    p.add_argument("--max-val", type=int, default=None, help="seeded subsample of the validation rows")
    p.add_argument("--max-test", type=int, default=None, help="seeded subsample of the test rows")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (default 16)")
    p.add_argument("--num-proc", type=int, default=1, help="processes for the CIF -> text conversion (default 1)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from ..finetune import finetune

    summary = finetune(
        args.run, args.data, args.out, mode=args.mode, target=args.target, fold=args.fold,
        train_split=args.train_split, unit=args.unit, seed=args.seed, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, patience=args.patience, max_train=args.max_train, max_val=args.max_val,
        max_test=args.max_test, precision=args.precision, device=args.device, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, num_proc=args.num_proc, progress=not args.no_progress,
        command="crystext " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("crystext")
        else None,
    )
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
