"""How often real crystals pass :func:`crystext.text.check_text`: the validity checks judged on
DFT-relaxed structures, which should pass them all.

Usage:
    nice python benchmarks/generation/check_real_structures.py [--n 400] [--seed 0]
        [--sets perov_5 carbon_24 mp_e_form] [--out benchmarks/generation/check_real_structures.md]

For each shared set (``$CRYSTEXT_DATA/<set>/test.csv``) ``--n`` seeded test structures (all of
them with ``--n 0``) are written as canonical text (:func:`crystext.text.structure_to_text`) and
judged by ``check_text``; the report gives every check's pass rate with its Wilson interval and
lists each failing structure with the reason (for bond lengths: the worst bond, its length and
the expected length). Writes a Markdown report (command first) and a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHECKS = ("parsable", "formula_consistent", "multiplicity_consistent", "space_group_consistent",
          "bond_lengths_reasonable", "valid")


def worst_bond(text: str) -> str:
    """The bond furthest outside the tolerance band, as ``A-B 1.234 A (expected 2.345, ratio 0.53)``."""
    from crystext.text import (BOND_TOLERANCE, expected_bond_length, crystalnn_bonds,
                               text_to_structure)

    structure = text_to_structure(text)
    bonds = crystalnn_bonds(structure)
    kept = [b for b in bonds if not b[3]] or bonds
    worst, worst_dev = "", -1.0
    for i, j, length, _ in kept:
        a, b = structure[i].specie, structure[j].specie
        expected = expected_bond_length(a, b)
        ratio = length / expected
        dev = abs(ratio - 1) - BOND_TOLERANCE
        if "H" not in (a.symbol, b.symbol) and dev > worst_dev:
            worst_dev = dev
            worst = f"{a.symbol}-{b.symbol} {length:.3f} A (expected {expected:.3f}, ratio {ratio:.2f})"
    return worst


def judge(name: str, n: int, seed: int) -> tuple[list[dict], int]:
    """Check ``n`` seeded test structures of one shared set; one row per structure."""
    from crystext.generation import wilson_interval  # noqa: F401 - imported for the report
    from crystext.inputs import to_structure
    from crystext.settings import data_dir
    from crystext.text import check_text, structure_to_text

    df = pd.read_csv(data_dir(required=True) / name / "test.csv")
    rows = np.arange(len(df)) if n <= 0 or n >= len(df) else np.sort(
        np.random.default_rng(seed).choice(len(df), size=n, replace=False))
    out = []
    for i in rows:
        ident = str(df.material_id.iloc[i]) if "material_id" in df else str(i)
        try:
            text = structure_to_text(to_structure(df.cif.iloc[i]))
        except Exception as exc:  # a structure the text form refuses is reported, not judged
            out.append({"set": name, "id": ident, "converted": False, "errors": f"conversion: {exc}"})
            continue
        report = check_text(text).as_dict()
        row = {"set": name, "id": ident, "converted": True, "formula": text.splitlines()[0][5:],
               "space_group": text.splitlines()[1].split()[-1],
               **{c: bool(report[c]) for c in CHECKS}, "bond_length_score": report["bond_length_score"],
               "errors": "; ".join(report["errors"])}
        if not report["bond_lengths_reasonable"] and report["parsable"]:
            row["worst_bond"] = worst_bond(text)
        out.append(row)
    return out, len(df)


def report(rows: list[dict], sizes: dict[str, int], command: str, seconds: float) -> tuple[str, dict]:
    """Markdown and JSON summaries of the judged rows."""
    from crystext.generation import wilson_interval

    df = pd.DataFrame(rows)
    lines = [f"Command: `{command}`", "",
             "Real (DFT-relaxed) test structures written as canonical text and judged by `check_text` "
             "(bond lengths: CrystaLLM's rule, every CrystalNN bond within 1 ± 0.32 of the expected length, "
             "an atom's bonds to its own periodic images skipped).", "",
             "| set | structures (of test split) | " + " | ".join(CHECKS) + " |",
             "|---|---|" + "---|" * len(CHECKS)]
    summary: dict = {"command": command, "seconds": round(seconds, 1), "sets": {}}
    for name, part in df.groupby("set", sort=False):
        judged = part[part.converted]
        n = len(part)  # a structure that fails to convert fails every check
        cells, entry = [], {"n": n, "test_rows": sizes[name], "not_converted": int((~part.converted).sum())}
        for c in CHECKS:
            k = int(judged[c].sum())
            low, high = wilson_interval(k, n)
            cells.append(f"{k}/{n} = {k / n:.1%} ({low:.1%}-{high:.1%})")
            entry[c] = {"count": k, "rate": k / n, "interval": [low, high]}
        summary["sets"][name] = entry
        lines.append(f"| {name} | {n} of {sizes[name]} | " + " | ".join(cells) + " |")
    total = len(df)
    k = int(df.get("valid", pd.Series(dtype=bool)).fillna(False).astype(bool).sum())
    low, high = wilson_interval(k, total)
    summary["all"] = {"n": total, "valid": k, "rate": k / total, "interval": [low, high]}
    lines += ["", f"All sets: {k}/{total} = {k / total:.2%} valid (95 % Wilson interval {low:.2%}-{high:.2%}).",
              "", "## Structures that fail a check", ""]
    failing = df[~df.get("valid", pd.Series(False, index=df.index)).fillna(False).astype(bool)]
    if failing.empty:
        lines.append("None.")
    else:
        lines += ["| set | id | formula | space group | failed checks | reason |", "|---|---|---|---|---|---|"]
        for _, r in failing.iterrows():
            failed = [c for c in CHECKS[:-1] if not r.get(c, False)]
            reason = r.get("worst_bond") if isinstance(r.get("worst_bond"), str) else r["errors"]
            lines.append(f"| {r['set']} | {r['id']} | {r.get('formula', '')} | {r.get('space_group', '')} | "
                         f"{', '.join(failed)} | {reason} |")
    summary["failing"] = failing.to_dict(orient="records")
    lines += ["", f"{total} structures in {seconds:.0f} s."]
    return "\n".join(lines) + "\n", summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="structures per set (0: the whole test split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", nargs="+", default=["perov_5", "carbon_24", "mp_e_form"])
    ap.add_argument("--out", default=str(Path(__file__).with_name("check_real_structures.md")))
    args = ap.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    rows, sizes = [], {}
    for name in args.sets:
        part, sizes[name] = judge(name, args.n, args.seed)
        rows += part
        print(f"{name}: {sum(r.get('valid', False) for r in part)}/{len(part)} valid", flush=True)
    markdown, summary = report(rows, sizes, command, time.perf_counter() - start)
    out = Path(args.out)
    out.write_text(markdown)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
