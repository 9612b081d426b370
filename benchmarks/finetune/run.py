"""Fine-tuning benchmark: head / LoRA / full fine-tuning of a crystext run on the structure tasks.

Protocol (as the representation benchmark): the learning rate of each (task, mode) is picked on
the *validation* MAE of seed 0 from a small grid; the other seeds rerun the picked setting; test
MAE is reported for the picked setting only. Fold tasks (mp_dielectric_n, mp_log_kvrh,
mp_log_gvrh) run every fold with an inner validation split of the training fold; their rows carry
the fold number (average over folds for the task's figure). One CSV row per finished run, appended
as it finishes, so an interrupted benchmark resumes (finished runs are skipped; a run cut mid-way
continues from its checkpoint through ``crystext.finetune``).

Full run (hours on 2 CPU cores; minutes per task on one GPU):

    python benchmarks/finetune/run.py --run models/crystext-base --out runs/finetune-bench

Small run of the README:

    python benchmarks/finetune/run.py --run models/crystext-base --tasks perov_5 --seeds 0 \
        --max-train 300 --max-val 200 --max-test 300 --epochs 2 --no-grid --out runs/finetune-small
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from crystext.tasks import SHARED_STRUCTURE_TASKS  # task folder -> folds (None: one split)

HERE = Path(__file__).resolve().parent
LR_GRID = {"head": (1e-3, 3e-3, 1e-2), "lora": (5e-4, 1e-3, 2e-3), "full": (1e-4, 2e-4, 5e-4)}
FIELDS = ["task", "fold", "mode", "seed", "lr", "mae", "val_mae", "rmse", "r2", "best_epoch", "epochs",
          "s_per_epoch", "feature_s", "train_s", "n_train", "n_val", "n_test", "skipped", "precision", "run",
          "run_sha", "picked_on", "out", "max_train", "max_val", "max_test", "max_epochs"]


def done_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def append(path: Path, row: dict) -> None:
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != FIELDS:  # a file of an older layout: rewritten with today's columns, blanks where new
            old = done_rows(path)
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows({k: r.get(k, "") for k in FIELDS} for r in old)
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k) for k in FIELDS})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="models/crystext-base")
    p.add_argument("--data", default=None, help="shared data folder (default crystext.settings.data_dir())")
    p.add_argument("--tasks", nargs="+", default=list(SHARED_STRUCTURE_TASKS), choices=list(SHARED_STRUCTURE_TASKS))
    p.add_argument("--modes", nargs="+", default=["head", "lora", "full"], choices=["head", "lora", "full"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--folds", nargs="+", type=int, default=None, help="folds of the fold tasks (default all 5)")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-val", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs of lora/full (default per mode); head mode keeps its own default "
                   "(its epochs run over cached <eos> states and cost milliseconds)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--no-grid", action="store_true", help="the per-mode default learning rate only")
    p.add_argument("--num-proc", type=int, default=1, help="processes for CIF -> text conversion")
    p.add_argument("--out", default="runs/finetune-bench", help="folder of the fine-tuned models")
    p.add_argument("--results", default=str(HERE / "results.csv"))
    p.add_argument("--keep-models", action="store_true", help="keep every model folder (default: picked ones)")
    args = p.parse_args(argv)

    from crystext.embeddings import weights_digest
    from crystext.finetune import finetune
    from crystext.finetune_config import MODE_DEFAULTS
    from crystext.settings import data_dir

    data = Path(args.data) if args.data else data_dir(required=True)
    results = Path(args.results)
    run_name = Path(args.run).name
    # the weights, not only the name: a retrained release keeps its folder name
    run_sha = (weights_digest(args.run) or "")[:12]

    def budget(row: dict) -> tuple:
        # a finished row counts only for the same run (weights), row caps and epoch budget
        return tuple(str(row.get(k) or "") for k in ("run", "run_sha", "max_train", "max_val", "max_test", "max_epochs"))

    def caps(mode: str) -> dict:
        return {"run": run_name, "run_sha": run_sha, "max_train": args.max_train or "", "max_val": args.max_val or "",
                "max_test": args.max_test or "", "max_epochs": "" if mode == "head" else (args.epochs or "")}

    finished = {(r["task"], r["fold"], r["mode"], r["seed"], r["lr"], budget(r)): r for r in done_rows(results)}

    def one(task: str, fold: int | None, mode: str, seed: int, lr: float, picked_on: str) -> dict:
        key = (task, "" if fold is None else str(fold), mode, str(seed), f"{lr:g}", budget(caps(mode)))
        if key in finished:
            return finished[key]
        budget_tag = "".join(f"-{k}{v}" for k, v in caps(mode).items() if k not in ("run", "run_sha") and v)
        out = (Path(args.out) / (f"{run_name}-{run_sha[:8]}" if run_sha else run_name) / task / (f"fold{fold}" if fold is not None else "all")
               / f"{mode}-lr{lr:g}{budget_tag}-s{seed}")
        t0 = time.time()
        # the target: the task folder's default (crystext.tasks.DEFAULT_TARGETS)
        s = finetune(args.run, data / task, out, mode=mode, fold=fold, seed=seed, lr=lr,
                     epochs=None if mode == "head" else args.epochs, batch_size=args.batch_size, max_train=args.max_train,
                     max_val=args.max_val, max_test=args.max_test, precision=args.precision, device=args.device,
                     num_proc=args.num_proc, progress=sys.stderr.isatty(),
                     command="python benchmarks/finetune/run.py " + " ".join(sys.argv[1:]))
        row = {"task": task, "fold": "" if fold is None else fold, "mode": mode, "seed": seed, "lr": f"{lr:g}",
               "mae": s["test"]["mae"], "val_mae": s["val"]["mae"], "rmse": s["test"]["rmse"], "r2": s["test"]["r2"],
               "best_epoch": s["best_epoch"], "epochs": s["epochs_run"], "s_per_epoch": s["s_per_epoch"],
               "feature_s": s["feature_s"], "train_s": s["train_s"], "n_train": s["rows"]["train"],
               "n_val": s["rows"]["val"], "n_test": s["rows"]["test"],
               "skipped": sum(s["skipped"].values()), "precision": s["precision"],
               "picked_on": picked_on, "out": str(out), **caps(mode)}
        append(results, row)
        finished[key] = {k: str(v) for k, v in row.items()}
        print(f"{task}{'' if fold is None else f'/fold{fold}'} {mode} lr {lr:g} seed {seed}: test MAE "
              f"{row['mae']:.4g}, val MAE {row['val_mae']:.4g} ({time.time() - t0:.0f} s)", flush=True)
        return row

    for task in args.tasks:
        n_folds = SHARED_STRUCTURE_TASKS[task]
        folds = [None] if n_folds is None else (args.folds or list(range(n_folds)))
        for mode in args.modes:
            grid = [MODE_DEFAULTS[mode]["lr"]] if args.no_grid else list(LR_GRID[mode])
            for fold in folds:
                first = args.seeds[0]
                rows = [one(task, fold, mode, first, lr, "grid" if len(grid) > 1 else "default") for lr in grid]
                best = min(rows, key=lambda r: float(r["val_mae"]))  # picked on validation only
                for seed in args.seeds[1:]:
                    one(task, fold, mode, seed, float(best["lr"]), f"val of seed {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
