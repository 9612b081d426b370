"""Text-conversion speed: crystext's structure_to_text against the CrystaLLM-style pipeline.

Usage:
    python benchmarks/text/conversion_speed.py [--limit N] [--repeats 5] [--procs 1 2]
        [--out benchmarks/text/conversion_speed.md]

Both pipelines start from the same pymatgen Structures (perov_5 val, CIFs parsed beforehand and
not timed) and end with a string:

- ``crystext``: ``crystext.text.structure_to_text(structure)`` (symprec 0.1, no property block);
- ``crystallm-style``: pymatgen ``CifWriter(structure, symprec=0.1)`` followed by CrystaLLM's
  post-processing, re-implemented here: the ``data_`` line replaced by the cell composition
  (``_chemical_formula_sum`` without spaces), the symmetry-operation loop cut to the single
  ``x, y, z`` line, and every number with more than 4 decimals rounded to 4.

Each repeat times both pipelines back to back (alternating which goes first) on every process
count; the report gives medians over repeats, in structures per second, with the ratio
crystext / baseline measured in the same run. Multi-process runs use a forked pool (started
before timing) that receives chunks of structure indices.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

STRUCTURES: list = []  # filled before the pool forks, so workers inherit it

_FORMULA_SUM = re.compile(r"^_chemical_formula_sum\s+'?([^'\n]+?)'?\s*$", re.M)
_DATA_LINE = re.compile(r"^data_.*$", re.M)
_SYMOP_LOOP = re.compile(r"(_symmetry_equiv_pos_as_xyz\n)(?:[ \t]+\d+[ \t]+'[^'\n]*'\n)+")
_NUMBER = re.compile(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?")


def _round4(match: re.Match) -> str:
    text = match.group()
    if len(text.split(".")[-1]) <= 4:
        return text
    return f"{round(float(text), 4):.4f}"


def crystallm_style(structure) -> str:
    """CifWriter(symprec=0.1) plus CrystaLLM's post-processing (see the module docstring)."""
    from pymatgen.io.cif import CifWriter

    cif = str(CifWriter(structure, symprec=0.1))
    if int(re.search(r"_cell_formula_units_Z\s+(\d+)", cif).group(1)) == 0:
        raise ValueError("Z = 0")
    formula = _FORMULA_SUM.search(cif).group(1).replace(" ", "")
    cif = _DATA_LINE.sub(lambda _: "data_" + formula, cif, count=1)
    cif = _SYMOP_LOOP.sub(lambda m: m.group(1) + "  1  'x, y, z'\n", cif, count=1)
    return _NUMBER.sub(_round4, cif)


def crystext_text(structure) -> str:
    from crystext.text import structure_to_text

    return structure_to_text(structure, symprec=0.1)


METHODS = {"crystext": crystext_text, "crystallm-style": crystallm_style}


def _work(args: tuple[str, int, int]) -> int:
    name, start, stop = args
    fn = METHODS[name]
    for s in STRUCTURES[start:stop]:
        fn(s)
    return stop - start


def _time(name: str, pool, n: int, procs: int) -> float:
    t0 = time.perf_counter()
    if pool is None:
        _work((name, 0, n))
    else:
        chunk = max(1, n // (procs * 8))
        list(pool.imap_unordered(_work, [(name, i, min(n, i + chunk)) for i in range(0, n, chunk)]))
    return n / (time.perf_counter() - t0)


def main() -> None:
    warnings.simplefilter("ignore")
    from pymatgen.core import Structure

    from crystext.settings import data_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=1000, help="structures of perov_5 val (default 1000; 0 = all)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(Path(__file__).with_name("conversion_speed.md")))
    args = ap.parse_args()

    df = pd.read_csv(data_dir(required=True) / "perov_5" / "val.csv")
    if args.limit:
        df = df.head(args.limit)
    STRUCTURES.extend(Structure.from_str(c, fmt="cif") for c in df.cif)
    n = len(STRUCTURES)
    # warm-up (imports, caches) and a sanity check that both give text for every structure
    for fn in METHODS.values():
        for s in STRUCTURES[:20]:
            assert fn(s).startswith("# generated using pymatgen\ndata_") or fn(s).startswith("data_")

    pools = {p: (None if p == 1 else mp.get_context("fork").Pool(p)) for p in args.procs}
    for p, pool in pools.items():  # warm the workers
        if pool is not None:
            pool.map(_work, [(m, 0, 5) for m in METHODS for _ in range(p)])
    load_before = os.getloadavg()[0]
    rates: dict[tuple[str, int], list[float]] = {(m, p): [] for m in METHODS for p in args.procs}
    for r in range(args.repeats):
        for p, pool in pools.items():
            order = list(METHODS) if r % 2 == 0 else list(METHODS)[::-1]
            for m in order:
                rates[(m, p)].append(_time(m, pool, n, p))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{m} x{p} {v[-1]:.0f}/s" for (m, p), v in rates.items()), flush=True)
    for pool in pools.values():
        if pool is not None:
            pool.close()

    load_after = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in rates.items()}
    # ratio within each repeat (both pipelines timed back to back), then the median over repeats
    paired = {p: statistics.median(a / b for a, b in zip(rates[("crystext", p)], rates[("crystallm-style", p)])) for p in args.procs}
    base1 = med[("crystallm-style", 1)]
    lines = [
        "# Text conversion speed: crystext vs the CrystaLLM-style pipeline",
        "",
        f"Command: `python benchmarks/text/conversion_speed.py --limit {args.limit} --repeats {args.repeats} "
        f"--procs {' '.join(map(str, args.procs))}`",
        "",
        f"Data: the first {n} structures of `perov_5/val.csv` (parsed to pymatgen Structures before timing). "
        f"Machine: {platform.processor() or platform.machine()}, {mp.cpu_count()} CPU cores "
        f"(shared with other jobs: 1-minute load average {load_before:.1f} before, {load_after:.1f} after), "
        f"Python {platform.python_version()}. Medians over {args.repeats} repeats; both pipelines "
        "timed back to back in each repeat (alternating order).",
        "",
        "- `crystext`: `crystext.text.structure_to_text(s, symprec=0.1)`",
        "- `crystallm-style`: `str(CifWriter(s, symprec=0.1))`, then the data_ line replaced by the cell "
        "composition, the symmetry-operation loop cut to `x, y, z`, numbers rounded to 4 decimals",
        "",
        "| pipeline | processes | structures/s (median) | min-max | per process | vs crystallm-style, same processes (median of paired ratios) | vs 1 process |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in METHODS:
        for p in args.procs:
            v = rates[(m, p)]
            lines.append(
                f"| {m} | {p} | {med[(m, p)]:.0f} | {min(v):.0f}-{max(v):.0f} | {med[(m, p)] / p:.0f} | "
                f"{paired[p] if m == 'crystext' else 1.0:.2f}x | {med[(m, p)] / med[(m, args.procs[0])]:.2f}x |"
            )
    lines += [
        "",
        f"Single process, crystext runs at {paired[1]:.2f}x the CrystaLLM-style pipeline "
        f"({med[('crystext', 1)]:.0f} vs {base1:.0f} structures/s)." if 1 in args.procs else "",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
