"""Round trip structure -> text -> structure on perov_5, carbon_24 and the AFLOW prototypes.

Usage: python benchmarks/text/roundtrip.py [--limit N] [--num-proc 2] [--out benchmarks/text/roundtrip.md]
Reads the shared data from $CRYSTEXT_DATA (default ../shared/data). A structure passes when
pymatgen's StructureMatcher (default tolerances) matches the rebuilt structure to the original.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import warnings
from pathlib import Path

import pandas as pd


def _one(args):
    name, cif_or_struct = args
    warnings.simplefilter("ignore")
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from crystext.text import structure_to_text, text_to_structure

    try:
        s = cif_or_struct if isinstance(cif_or_struct, Structure) else Structure.from_str(cif_or_struct, fmt="cif")
        if not s.is_ordered:
            return name, "skipped", "disordered"
        s.remove_oxidation_states()  # the text form carries elements, not ions
        rebuilt = text_to_structure(structure_to_text(s))
        ok = StructureMatcher().fit(s, rebuilt)
        return name, "ok" if ok else "mismatch", f"{s.composition.reduced_formula}"
    except Exception as exc:  # reported, not fatal
        return name, "error", f"{type(exc).__name__}: {exc}"


def main() -> None:
    from crystext.builtin import aflow_prototypes
    from crystext.settings import data_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="structures per set (default: all)")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("roundtrip.md")))
    args = ap.parse_args()

    data = data_dir(required=True)
    sets: dict[str, list] = {}
    for name in ("perov_5", "carbon_24"):
        frames = [pd.read_csv(data / name / f"{split}.csv") for split in ("val", "test")]
        df = pd.concat(frames, ignore_index=True)
        if args.limit:
            df = df.head(args.limit)
        sets[name] = [(f"{name}:{mid}", cif) for mid, cif in zip(df.material_id, df.cif)]
    protos = [(pid, s) for pid, s, _ in aflow_prototypes()]
    sets["aflow-prototypes"] = protos[: args.limit] if args.limit else protos

    rows = []
    t0 = time.perf_counter()
    with mp.Pool(args.num_proc) as pool:
        for set_name, items in sets.items():
            for name, status, detail in pool.imap(_one, items, chunksize=16):
                rows.append({"set": set_name, "id": name, "status": status, "detail": detail})
    elapsed = time.perf_counter() - t0
    df = pd.DataFrame(rows)
    lines = [
        "# Text round trip (structure -> text -> structure, StructureMatcher defaults)",
        "",
        f"Command: `python benchmarks/text/roundtrip.py{' --limit ' + str(args.limit) if args.limit else ''}`"
        f" ({elapsed:.0f} s on {args.num_proc} processes)",
        "",
        "| set | structures | matched | rate | skipped (disordered) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for set_name, g in list(df.groupby("set", sort=False)) + [("all", df)]:
        tried = g[g.status != "skipped"]
        ok = (tried.status == "ok").sum()
        lines.append(
            f"| {set_name} | {len(tried)} | {ok} | {100 * ok / max(len(tried), 1):.2f}% | "
            f"{(g.status == 'skipped').sum()} | {(g.status == 'error').sum()} |"
        )
    bad = df[df.status.isin(["mismatch", "error"])]
    lines += ["", f"## Failures ({len(bad)})", ""]
    lines += [f"- {r.id}: {r.status} ({r.detail})" for r in bad.itertuples()] or ["none"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
