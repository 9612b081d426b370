"""Fault campaign: interrupt, kill, damage and starve crystext's batch jobs, and check what survives.

    python benchmarks/faults/campaign.py --out benchmarks/faults/results.json [--full-fs]

Each trial runs the real command line (``python -m crystext ...``) on the ``tiny`` preset and a
40-structure AFLOW corpus, then compares against an undisturbed run:

- ``sigint``: Ctrl-C (SIGINT) during pretraining after k logged steps; the rerun of the same
  command must end bit-identical (weights, losses) to an uninterrupted run;
- ``sigkill``: SIGKILL at random moments of pretraining (mid-step or mid-checkpoint); the rerun
  resumes from the newest complete checkpoint and must end bit-identical;
- ``damage``: one file of the newest checkpoint emptied, truncated or one byte flipped; the rerun
  must warn, fall back to the previous checkpoint and end bit-identical;
- ``concurrent``: two ``crystext embed`` runs on one ``--out``; the file must be readable and hold
  exactly the rows of a run that exited 0, with no temporary file left;
- ``full-fs`` (``--full-fs``, needs root: mounts a 256 kB tmpfs): pretrain, embed and corpus build
  writing onto a file system that fills up; each must exit 2 with one line naming the path, leave
  no temporary file and nothing half-written under the final name.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
PY = [sys.executable, "-m", "crystext"]


def crystext(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*PY, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def same_run(a: Path, b: Path) -> bool:
    """Bit-identical weights and identical logged losses."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
        return False
    la, lb = pd.read_csv(a / "log.csv"), pd.read_csv(b / "log.csv")
    return la.step.tolist() == lb.step.tolist() and la.train_loss.tolist() == lb.train_loss.tolist()


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith((".partial", ".lock"))]


def pretrain_args(preset: Path, corpus: Path, out: Path) -> list[str]:
    return ["pretrain", str(preset), "--corpus", str(corpus), "--out", str(out), "--no-progress", "--allow-worse",
            "--threads", "1"]


def wait_for_steps(proc: subprocess.Popen, log: Path, steps: int, limit: float = 300) -> None:
    end = time.time() + limit
    while time.time() < end and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) > steps:
            return
        time.sleep(0.02)


def sigint_trials(preset: Path, corpus: Path, reference: Path, root: Path, moments: list[int]) -> list[dict]:
    out = []
    for k in moments:
        run = root / f"sigint-{k}"
        proc = subprocess.Popen([*PY, *pretrain_args(preset, corpus, run)], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        wait_for_steps(proc, run / "log.csv", k)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        saved = sorted(p.name for p in (run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
        again = crystext(*pretrain_args(preset, corpus, run))
        out.append({"fault": "sigint", "after_steps": k, "exit": proc.returncode, "checkpoint": saved[-1:] or None,
                    "rerun_exit": again.returncode,
                    "bit_identical": again.returncode == 0 and same_run(reference, run), "leftovers": leftovers(run)})
        shutil.rmtree(run)
    return out


def sigkill_trials(preset: Path, corpus: Path, reference: Path, root: Path, delays: list[float]) -> list[dict]:
    out = []
    for d in delays:
        run = root / f"sigkill-{d:.2f}"
        proc = subprocess.Popen([*PY, *pretrain_args(preset, corpus, run)], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        wait_for_steps(proc, run / "log.csv", 1)
        time.sleep(d)
        proc.kill()
        proc.wait()
        steps = len(pd.read_csv(run / "log.csv")) if (run / "log.csv").is_file() else 0
        again = crystext(*pretrain_args(preset, corpus, run))
        info = json.loads((run / "training_config.json").read_text()) if again.returncode == 0 else {}
        out.append({"fault": "sigkill", "seconds_into_training": round(d, 2), "steps_logged": steps,
                    "resumed_from": info.get("resumed_from"), "rerun_exit": again.returncode,
                    "bit_identical": again.returncode == 0 and same_run(reference, run), "leftovers": leftovers(run)})
        shutil.rmtree(run)
    return out


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte flipped near the end (data, not header)
        flipped = bytearray(data)
        flipped[-8] ^= 0xFF
        path.write_bytes(bytes(flipped))


def damage_trials(preset: Path, corpus: Path, reference: Path, root: Path, stop: int) -> list[dict]:
    out = []
    base = root / "damage-base"
    done = crystext(*pretrain_args(preset, corpus, base), "--stop-at", str(stop))
    assert done.returncode == 0, done.stderr[-2000:]
    newest = sorted((base / "checkpoints").glob("step-*"))[-1]
    for name in sorted(p.name for p in newest.iterdir()):
        for how in ("empty", "truncated", "flipped"):
            run = root / f"damage-{name}-{how}"
            shutil.copytree(base, run)
            damage(run / "checkpoints" / newest.name / name, how)
            again = crystext(*pretrain_args(preset, corpus, run))
            warned = "skipped damaged checkpoint" in again.stderr and name in again.stderr
            info = json.loads((run / "training_config.json").read_text()) if again.returncode == 0 else {}
            out.append({"fault": "damage", "file": name, "how": how, "rerun_exit": again.returncode,
                        "warned_naming_file": warned, "resumed_from": info.get("resumed_from"),
                        "bit_identical": again.returncode == 0 and same_run(reference, run)})
            shutil.rmtree(run)
    return out


def concurrent_trials(run: Path, tables: dict[str, tuple[Path, list[str]]], root: Path, n: int) -> list[dict]:
    from crystext.embeddings import read_vectors

    out = []
    for t in range(n):
        target = root / f"same-{t}.parquet"
        procs = {name: subprocess.Popen([*PY, "embed", str(path), "--model", str(run), "--out", str(target),
                                         "--no-progress"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True) for name, (path, _) in tables.items()}
        codes = {name: p.wait(timeout=600) for name, p in procs.items()}
        for p in procs.values():
            p.stderr.close()
        ids, _ = read_vectors(target)
        winners = [name for name, c in codes.items() if c == 0]
        out.append({"fault": "concurrent-embed", "exits": codes,
                    "file_is_a_winners_output": any(ids == tables[w][1] for w in winners),
                    "leftovers": leftovers(root)})
    return out


def full_fs_trials(preset: Path, corpus: Path, run: Path, table: Path, root: Path) -> list[dict]:
    mount = root / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode != 0:
        return [{"fault": "full-fs", "skipped": "cannot mount a tmpfs here"}]
    out = []
    try:
        jobs = {
            "pretrain": pretrain_args(preset, corpus, mount / "run"),
            "embed": ["embed", str(table), "--model", str(run), "--out", str(mount / "v.parquet"), "--no-progress"],
            "corpus build": ["corpus", "build", "aflow-prototypes", "--out", str(mount / "corpus"), "--quiet"],
        }
        for name, args in jobs.items():
            done = crystext(*args)
            lines = done.stderr.strip().splitlines()
            out.append({"fault": "full-fs", "job": name, "exit": done.returncode,
                        "one_line": bool(lines) and "no space left on device" in lines[-1].lower(),
                        "last_line": lines[-1] if lines else "", "leftovers": leftovers(mount)})
            for p in mount.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    finally:
        subprocess.run(["umount", str(mount)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/faults/results.json")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--full-fs", action="store_true", help="also fill a real (tmpfs) file system (root only)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="crystext-faults-"))
    from crystext.builtin import aflow_prototypes
    from crystext.corpus import build_corpus
    from crystext.modeling import build_model, load_preset
    from crystext.tokenization import load_tokenizer

    corpus = root / "corpus"
    build_corpus(["aflow-prototypes"], out=corpus, limit=40, split=(0.7, 0.15, 0.15), progress=False)
    preset = load_preset("tiny")
    preset["training"].update(max_steps=args.steps, checkpoint_interval=10, eval_interval=1000, log_interval=1)
    preset_file = root / "preset.yaml"
    preset_file.write_text(yaml.safe_dump({"model": preset["model"], "training": preset["training"]}))
    reference = root / "reference"
    done = crystext(*pretrain_args(preset_file, corpus, reference))
    assert done.returncode == 0, done.stderr[-2000:]

    tok = load_tokenizer("crystext-cif")
    run = root / "tiny"
    build_model("tiny", tok, seed=0).save_pretrained(run)
    tok.save_pretrained(run)
    good = [s for _, s, _ in aflow_prototypes() if s.is_ordered and len(s) <= 8]
    tables = {}
    for name, n in (("small", 5), ("large", 60)):
        rows = [{"material_id": f"m{i}", "cif": good[i % len(good)].to(fmt="cif")} for i in range(n)]
        path = root / f"{name}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        tables[name] = (path, [r["material_id"] for r in rows])

    results = []
    results += sigint_trials(preset_file, corpus, reference, root, [3, 17, 41, 77, 110])
    # early kills (before the first checkpoint: a clean restart over the leftovers) and later ones
    # (a resume from the newest complete checkpoint)
    delays = sorted(rng.uniform(0.05, 2.0) for _ in range(5)) + sorted(rng.uniform(3.0, 12.0) for _ in range(5))
    results += sigkill_trials(preset_file, corpus, reference, root, delays)
    results += damage_trials(preset_file, corpus, reference, root, stop=30)
    results += concurrent_trials(run, tables, root, 5)
    if args.full_fs:
        big = root / "big.csv"
        pd.DataFrame([{"material_id": f"m{i}", "cif": good[i % len(good)].to(fmt="cif")} for i in range(3000)]
                     ).to_csv(big, index=False)
        results += full_fs_trials(preset_file, corpus, run, big, root)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "trials": results}, indent=1) + "\n")
    for r in results:
        print(json.dumps(r))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
