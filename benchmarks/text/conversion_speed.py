"""Text-conversion speed on random Materials Project structures: crystext against pymatgen's CifWriter.

Usage:
    nice -n 5 python benchmarks/text/conversion_speed.py [--n 2000] [--seed 0]
        [--out benchmarks/text/conversion_speed.md]

A random sample (numpy ``default_rng(seed)``, without replacement) of the MP structures in
``<data>/mp/structures-*.parquet`` is parsed to pymatgen Structures (timed, reported apart);
then, in one process and one pass, each structure is converted by both methods back to back
(alternating which goes first):

- ``crystext``: ``crystext.text.structure_to_text(s, symprec=0.1)`` (the canonical text);
- ``CifWriter``: ``str(pymatgen.io.cif.CifWriter(s, symprec=0.1))`` (symmetrised CIF, the step
  CrystaLLM's preprocessing starts from).

Per-structure CPU time (``time.process_time``, so other jobs on a shared machine weigh less than
in wall time) gives median / mean / p99 / max for each method and the ratio of the means and of
the medians. Caches (crystext's per-space-group tables) start empty, so their build is counted.
After timing, the round trip ``text_to_structure(structure_to_text(s))`` is checked against the
input with ``StructureMatcher()`` defaults.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def _stats(t: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(t)), "mean": float(t.mean()), "p99": float(np.percentile(t, 99)),
            "max": float(t.max()), "total": float(t.sum())}


def main() -> int:
    warnings.simplefilter("ignore")
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    from crystext.settings import data_dir
    from crystext.text import structure_to_text, text_to_structure

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="random MP structures (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("conversion_speed.md")))
    args = ap.parse_args()

    files = sorted((data_dir(required=True) / "mp").glob("structures-*.parquet"))
    df = pd.concat([pd.read_parquet(f, columns=["material_id", "cif"]) for f in files], ignore_index=True)
    idx = np.random.default_rng(args.seed).choice(len(df), args.n, replace=False)
    ids, cifs = df.material_id.to_numpy()[idx], df.cif.to_numpy()[idx]
    del df

    # warm imports (not the per-group caches) on a structure outside the sample
    warm = Structure.from_spacegroup("P1", [[3, 0, 0], [0, 3.1, 0], [0, 0, 3.2]], ["Na"], [[0, 0, 0]])
    structure_to_text(warm), str(CifWriter(warm, symprec=0.1))

    load_before = os.getloadavg()[0]
    wall0 = time.perf_counter()
    structures, parse_t = [], []
    for cif in cifs:
        t0 = time.process_time()
        structures.append(Structure.from_str(cif, fmt="cif"))
        parse_t.append(time.process_time() - t0)

    times = {"crystext": [], "CifWriter": []}
    texts, errors = [], {"crystext": 0, "CifWriter": 0}
    for k, s in enumerate(structures):
        order = ["crystext", "CifWriter"] if k % 2 == 0 else ["CifWriter", "crystext"]
        for method in order:
            t0 = time.process_time()
            try:
                if method == "crystext":
                    texts.append(structure_to_text(s, symprec=0.1))
                else:
                    str(CifWriter(s, symprec=0.1))
            except Exception:
                errors[method] += 1
                if method == "crystext":
                    texts.append(None)
            times[method].append(time.process_time() - t0)
        if (k + 1) % 250 == 0:
            print(f"{k + 1}/{len(structures)} converted", flush=True)
    convert_wall = time.perf_counter() - wall0

    matcher = StructureMatcher()
    failed = []
    for mid, s, text in zip(ids, structures, texts):
        try:
            ok = text is not None and matcher.fit(s, text_to_structure(text))
        except Exception:
            ok = False
        if not ok:
            failed.append(str(mid))
    load_after = os.getloadavg()[0]

    st = {m: _stats(np.array(v)) for m, v in times.items()}
    ps = _stats(np.array(parse_t))
    n = len(structures)
    natoms = np.array([len(s) for s in structures])
    c, w = st["crystext"], st["CifWriter"]
    lines = [
        "# Text conversion speed: crystext vs pymatgen CifWriter(symprec=0.1), random MP structures",
        "",
        f"Command: `nice -n 5 python benchmarks/text/conversion_speed.py --n {args.n} --seed {args.seed}`",
        "",
        f"Data: {n} structures drawn at random (seed {args.seed}) from the {sum(1 for _ in files)} MP parquet "
        f"files in `<data>/mp/` ({natoms.min()}-{natoms.max()} atoms per cell, median {int(np.median(natoms))}). "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other "
        f"jobs (1-minute load average {load_before:.1f} before, {load_after:.1f} after), Python "
        f"{platform.python_version()}. One process; both methods on each structure back to back "
        "(alternating order); CPU seconds per structure (`time.process_time`); crystext's per-space-group "
        f"caches start empty. Conversion pass took {convert_wall:.0f} s wall.",
        "",
        "| method | median (ms) | mean (ms) | p99 (ms) | max (ms) | total (s) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in times:
        s_ = st[m]
        lines.append(f"| {m} | {1e3 * s_['median']:.1f} | {1e3 * s_['mean']:.1f} | {1e3 * s_['p99']:.0f} | "
                     f"{1e3 * s_['max']:.0f} | {s_['total']:.1f} | {errors[m]} |")
    lines += [
        f"| (CIF parsing, `Structure.from_str`, not in the rows above) | {1e3 * ps['median']:.1f} | "
        f"{1e3 * ps['mean']:.1f} | {1e3 * ps['p99']:.0f} | {1e3 * ps['max']:.0f} | {ps['total']:.1f} | |",
        "",
        f"Ratio crystext / CifWriter: {c['mean'] / w['mean']:.2f}x on the mean, {c['median'] / w['median']:.2f}x "
        f"on the median, {c['p99'] / w['p99']:.2f}x at p99 (below 1 means crystext is faster).",
        "",
        f"Round trip `text_to_structure(structure_to_text(s))` matches `s` under `StructureMatcher()` "
        f"defaults: {n - len(failed)}/{n} = {100 * (n - len(failed)) / n:.2f} %"
        + (f" (failures: {', '.join(failed[:20])}{' ...' if len(failed) > 20 else ''})." if failed else "."),
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
