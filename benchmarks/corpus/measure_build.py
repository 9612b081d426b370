"""Run a `crystext corpus build` command and record its wall time and peak memory.

Memory is sampled every 0.2 s with psutil over the whole process tree (the build and its pool
workers): the peak of the tree's summed RSS, and the peak RSS of the main process alone. Summed RSS
counts pages shared between forked workers more than once, so it is an upper bound. CPU seconds
(user + system, last sample of each process) do not depend on how busy the machine is, wall time
does.

    python benchmarks/corpus/measure_build.py --json out.json -- crystext corpus build ... --out DIR

With ``--kill-after-shards K --signal KILL`` the build is killed (process group) once its manifest
lists K finished shards, to show that rerunning the same command resumes.
``--compare A B`` checks that two corpus folders hold the same documents in the same splits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _tree_rss(proc, cpu: dict) -> tuple[int, int]:
    """RSS of the main process and of the whole tree; records each process's CPU seconds in ``cpu``."""
    import psutil

    try:
        main = proc.memory_info().rss
        kids = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    for k in [proc, *kids]:
        try:
            total += k.memory_info().rss if k is not proc else main
            t = k.cpu_times()
            cpu[k.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return main, total


def _out_dir(cmd: list[str]) -> Path | None:
    return Path(cmd[cmd.index("--out") + 1]) if "--out" in cmd else None


def _shards(out: Path | None) -> int:
    if out is None:
        return 0
    try:
        return len(json.loads((out / "_build" / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def run(cmd: list[str], kill_after_shards: int | None = None, sig: str = "KILL", trace: str | None = None) -> dict:
    import psutil

    out = _out_dir(cmd)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True)
    ps = psutil.Process(proc.pid)
    peak_main = peak_tree = 0
    killed = False
    cpu: dict[int, float] = {}
    last_shards = -1
    while proc.poll() is None:
        main, tree = _tree_rss(ps, cpu)
        peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        shards = _shards(out) if trace else 0
        if trace and shards != last_shards:  # one line per finished shard: memory against records
            last_shards = shards
            with open(trace, "a") as fh:
                fh.write(json.dumps({"t_s": round(time.perf_counter() - start, 1), "shards": shards,
                                     "peak_rss_main_mib": round(peak_main / 2**20, 1),
                                     "peak_rss_tree_mib": round(peak_tree / 2**20, 1),
                                     "cpu_s": round(sum(cpu.values()), 1)}) + "\n")
        if kill_after_shards is not None and not killed and _shards(out) >= kill_after_shards:
            os.killpg(proc.pid, getattr(signal, f"SIG{sig}"))
            killed = True
        time.sleep(0.2)
    wall = time.perf_counter() - start
    return {"command": " ".join(cmd), "rc": proc.returncode, "wall_s": round(wall, 1),
            "peak_rss_main_mib": round(peak_main / 2**20, 1), "peak_rss_tree_mib": round(peak_tree / 2**20, 1),
            "cpu_s_main": round(cpu.get(proc.pid, 0.0), 1),
            "cpu_s_workers": round(sum(v for k, v in cpu.items() if k != proc.pid), 1),
            "killed": killed, "shards_at_end": _shards(out)}


def digest(folder: str | os.PathLike) -> dict:
    """Per split: number of documents and a SHA-256 over (id, text, input_ids) in row order."""
    from crystext.corpus import load_corpus

    corpus = load_corpus(folder)
    out = {}
    for name in corpus:
        h = hashlib.sha256()
        for batch in corpus[name].with_format("arrow").iter(batch_size=4096):
            for i, t, ids in zip(batch["id"].to_pylist(), batch["text"].to_pylist(), batch["input_ids"].to_pylist()):
                h.update(json.dumps([i, t, ids]).encode())
        out[name] = {"documents": len(corpus[name]), "sha256": h.hexdigest()[:16]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="append the result as one JSON line here")
    p.add_argument("--kill-after-shards", type=int, default=None)
    p.add_argument("--signal", default="KILL", choices=["KILL", "TERM", "INT"])
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    p.add_argument("--trace", help="append one JSON line per finished shard (time, peak RSS so far, CPU s)")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.compare:
        a, b = digest(args.compare[0]), digest(args.compare[1])
        result = {"compare": args.compare, "a": a, "b": b, "identical": a == b}
    else:
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        result = run(cmd, args.kill_after_shards, args.signal, args.trace)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")
    return 0 if result.get("identical", True) else 1


if __name__ == "__main__":
    sys.exit(main())
