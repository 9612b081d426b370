"""Re-judge saved samples with the current :func:`crystext.text.check_text` (no sampling).

Usage:
    nice python benchmarks/generation/rejudge.py benchmarks/generation/samples_mp_topk_off.jsonl
        [--out benchmarks/generation/rejudge_samples_mp_topk_off.md]

For a JSON-lines file of samples (a ``text`` field, the verdicts they were saved with, and a
``prompt_set`` or ``temperature`` field naming their group), reports per group each check's pass
count as saved and as judged now, so figures measured before a change of the checks (issue 31: an
atom's bonds to its own periodic images are no longer measured as 0 A bonds) can be restated.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

CHECKS = ("parsable", "formula_consistent", "multiplicity_consistent", "space_group_consistent",
          "bond_lengths_reasonable", "valid", "crystallm_valid")


def main(argv: list[str] | None = None) -> int:
    from crystext.generation import wilson_interval
    from crystext.text import check_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    src = Path(args.samples)
    out = Path(args.out or src.with_name(f"rejudge_{src.stem}.md"))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    groups: dict[str, list[tuple[dict, dict]]] = {}
    for line in src.read_text().splitlines():
        row = json.loads(line)
        mode = {True: " constrained", False: " free"}.get(row.get("constrained"), "")
        group = str(row.get("prompt_set") or f"T={row.get('temperature')}{mode}")
        groups.setdefault(group, []).append((row, check_text(row["text"]).as_dict()))
    lines = [f"Command: `{command}`", "", f"Samples: `{src}`, judged as saved -> as judged now.", "",
             "| group | n | " + " | ".join(CHECKS) + " |", "|---|---|" + "---|" * len(CHECKS)]
    summary = {"command": command, "groups": {}}
    for group, rows in groups.items():
        n = len(rows)
        cells, entry = [], {"n": n}
        for c in CHECKS:
            before = sum(bool(r[c]) for r, _ in rows)
            now = sum(bool(v[c]) for _, v in rows)
            low, high = wilson_interval(now, n)
            cells.append(f"{before} -> {now} ({low:.0%}-{high:.0%})")
            entry[c] = {"saved": before, "now": now, "interval_now": [low, high]}
        summary["groups"][group] = entry
        lines.append(f"| {group} | {n} | " + " | ".join(cells) + " |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
