"""``crystext text``: write crystal text for structure files, rebuild CIFs, check texts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..limits import DEFAULT_MAX_ATOMS, DEFAULT_TIME_LIMIT


def _convert(args) -> int:
    from ..text import structure_to_text

    for path in args.inputs:
        sys.stdout.write(
            structure_to_text(
                Path(path), symprec=args.symprec, p1=args.p1, properties=args.properties, disorder=args.disorder,
                style=args.style, max_atoms=args.max_atoms or None, time_limit=args.time_limit or None,
            )
        )
    return 0


def _check(args) -> int:
    from ..inputs import read_text_file
    from ..text import check_texts

    bad = 0
    for path in args.inputs:  # a file may hold several texts (one per data_ line): each is checked
        for index, report in enumerate(check_texts(read_text_file(path), symprec=args.symprec)):
            bad += not report.valid
            print(json.dumps({"file": str(path), "index": index, **report.as_dict()}))
    return 1 if bad else 0


def _to_cif(args) -> int:
    from ..inputs import read_text_file
    from ..text import text_to_structure

    for path in args.inputs:
        sys.stdout.write(text_to_structure(read_text_file(path)).to(fmt="cif"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("text", help="convert structures to crystal text, back to CIF, or check texts")
    verbs = p.add_subparsers(dest="text_command", metavar="ACTION", required=True)
    c = verbs.add_parser("convert", help="structure files (CIF, pymatgen JSON) -> canonical crystal text")
    c.add_argument("inputs", nargs="+", help="CIF or pymatgen JSON files")
    c.add_argument("--symprec", type=float, default=0.1, help="symmetry tolerance in angstrom (default 0.1)")
    c.add_argument("--p1", action="store_true", help="write every site in P1 instead of symmetrising")
    c.add_argument("--properties", action="store_true", help="add the atom-property block")
    c.add_argument("--disorder", choices=["raise", "dominant", "order"], default="raise",
                   help="what to do with partially occupied sites (default: refuse)")
    c.add_argument("--style", choices=["default", "crystallm"], default="default",
                   help="whitespace of the text: crystext's (default) or CrystaLLM's (no indentation, single "
                        "spaces, property block first), which CrystaLLM's evaluation code reads")
    c.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS, metavar="N",
                   help=f"refuse an input cell of more than N atoms, before any symmetry work "
                        f"(default {DEFAULT_MAX_ATOMS}; 0: no limit)")
    c.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                   help=f"give up on a structure after this many seconds (default {DEFAULT_TIME_LIMIT:g}; 0: no limit)")
    c.set_defaults(func=_convert)
    k = verbs.add_parser("check", help="validity report (JSON lines) for crystal text files; exit 1 if any is invalid")
    k.add_argument("inputs", nargs="+", help="crystal text files")
    k.add_argument("--symprec", type=float, default=0.1)
    k.set_defaults(func=_check)
    b = verbs.add_parser("to-cif", help="rebuild the full structure of crystal text files as CIF")
    b.add_argument("inputs", nargs="+", help="crystal text files")
    b.set_defaults(func=_to_cif)
