"""Real crystals inside the constrained form: is the canonical text of real test structures one that
constrained decoding could write, token for token?

Usage:
    nice python benchmarks/generation/grammar_roundtrip.py [--n 20] [--seed 1]
        [--out benchmarks/generation/grammar_roundtrip.md]

For ``--n`` seeded test structures of perov_5, carbon_24 and mp_e_form, the canonical text (its
``_cell_volume`` recomputed from the written cell, as the constrained form writes it) is fed to the
parser of :mod:`crystext.constrained` after its ``data_`` line; a structure passes when every
character is allowed and the text may end where it ends. A failure would mean the constraints rule
out a real crystal (a wrong Wyckoff table, a too strict distance rule). Writes a Markdown report.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta",
        "_cell_angle_gamma")


def with_computed_volume(text: str) -> str:
    from pymatgen.core import Lattice

    values = [float(re.search(k + r" (\S+)", text).group(1)) for k in KEYS]
    return re.sub(r"_cell_volume \S+", f"_cell_volume {Lattice.from_parameters(*values).volume:.4f}", text)


def first_refusal(text: str) -> str | None:
    """None if the constrained parser accepts the whole text, else where it stops."""
    from crystext import constrained as cons

    head, state = cons.start(text.splitlines()[0])
    body = text[len(head):]
    end = cons.feed(state, body)
    if end is not None and cons.can_end(end):
        return None
    good = body
    while good and cons.feed(state, good) is None:
        good = good[:-1]
    return f"after {good[-50:]!r}: {body[len(good):len(good) + 20]!r}"


def main(argv: list[str] | None = None) -> int:
    from crystext.inputs import to_structure
    from crystext.settings import data_dir
    from crystext.text import structure_to_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sets", nargs="+", default=["perov_5", "carbon_24", "mp_e_form"])
    ap.add_argument("--out", default=str(Path(__file__).with_name("grammar_roundtrip.md")))
    args = ap.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    lines = [f"Command: `{command}`", "", "| set | structures | accepted in full | space groups |", "|---|---|---|---|"]
    failures = []
    for name in args.sets:
        df = pd.read_csv(data_dir(required=True) / name / "test.csv")
        rows = np.random.default_rng(args.seed).choice(len(df), size=min(args.n, len(df)), replace=False)
        ok, groups = 0, set()
        for i in rows:
            text = with_computed_volume(structure_to_text(to_structure(df.cif.iloc[i])))
            groups.add(text.splitlines()[1].split()[-1])
            where = first_refusal(text)
            ok += where is None
            if where is not None:
                failures.append(f"- {name} row {i} ({text.splitlines()[0]}): refused {where}")
        lines.append(f"| {name} | {len(rows)} | {ok} | {len(groups)} |")
    lines += ["", "Refused:" if failures else "No structure refused.", *failures, "",
              f"{time.perf_counter() - start:.0f} s."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
