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
                local=args.local, style=args.style, max_atoms=args.max_atoms or None,
                time_limit=args.time_limit or None,
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


def _read_texts(paths: list[str]) -> list[tuple[Path, list[str]]]:
    """Every input with its crystal texts (one per ``data_`` line)."""
    from ..inputs import read_text_file
    from ..text import split_texts

    return [(Path(path), split_texts(read_text_file(path))) for path in paths]


def _cif_targets(inputs: list[tuple[Path, list[str]]], out: str | None) -> list[list[Path | None]]:
    """Where each text's CIF goes: ``None`` (stdout) without ``--out``; the file ``--out`` names
    when it ends in ``.cif`` (one text in all, else refused); else files in the folder ``--out`` (created):
    ``STEM.cif`` for an input of one text, ``STEM-K.cif`` for text K of several (K from 0, as
    ``text check`` numbers them)."""
    from ..errors import ConfigError

    if out is None:
        return [[None] * len(texts) for _, texts in inputs]
    total = sum(len(texts) for _, texts in inputs)
    if out.endswith(".cif"):
        if total != 1:
            held = ", ".join(f"{path} holds {len(texts)}" for path, texts in inputs)
            raise ConfigError(f"--out {out} is one CIF file but there are {total} texts ({held}); "
                              "give a folder for one CIF per text")
        return [[Path(out)]]
    folder = Path(out)
    targets = []
    for path, texts in inputs:
        width = len(str(len(texts) - 1))
        targets.append([folder / f"{path.stem}.cif"] if len(texts) == 1 else
                       [folder / f"{path.stem}-{k:0{width}d}.cif" for k in range(len(texts))])
    names = [t for row in targets for t in row]
    clashes = sorted({str(t) for t in names if names.count(t) > 1})
    if clashes:
        raise ConfigError(f"inputs of the same name would write the same CIF ({', '.join(clashes)}); "
                          "convert them into separate --out folders")
    folder.mkdir(parents=True, exist_ok=True)
    return targets


def _to_cif(args) -> int:
    from ..errors import CrystextError
    from ..text import text_to_structure

    inputs = _read_texts(args.inputs)
    targets = _cif_targets(inputs, args.out)
    failed = written = 0
    for (path, texts), where in zip(inputs, targets):
        for k, (text, target) in enumerate(zip(texts, where)):
            label = str(path) if len(texts) == 1 else f"{path}, text {k} of {len(texts)}"
            try:
                cif = text_to_structure(text).to(fmt="cif")
            except CrystextError as exc:
                failed += 1
                print(f"crystext text to-cif: error: {label}: {exc}", file=sys.stderr)
                continue
            if target is None:
                sys.stdout.write(cif)
            else:
                target.write_text(cif)
                written += 1
    if args.out is not None and written:
        print(f"CIF written to {args.out}" if args.out.endswith(".cif") else f"{written} CIFs written to {args.out}")
    if failed:
        print(f"crystext text to-cif: {failed} of {sum(len(t) for _, t in inputs)} texts could not be rebuilt",
              file=sys.stderr)
    return 1 if failed else 0


def register(sub) -> None:
    p = sub.add_parser("text", help="convert structures to crystal text, back to CIF, or check texts")
    verbs = p.add_subparsers(dest="text_command", metavar="ACTION", required=True)
    c = verbs.add_parser("convert", help="structure files (CIF, pymatgen JSON) -> canonical crystal text")
    c.add_argument("inputs", nargs="+", help="CIF or pymatgen JSON files")
    c.add_argument("--symprec", type=float, default=0.1, help="symmetry tolerance in angstrom (default 0.1)")
    c.add_argument("--p1", action="store_true", help="write every site in P1 instead of symmetrising")
    c.add_argument("--properties", action="store_true", help="add the atom-property block")
    c.add_argument("--local", action="store_true",
                   help="add the local block (each site's coordination, neighbour element, nearest distance)")
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
    k = verbs.add_parser(
        "check", help="validity report (JSON lines) for crystal text files; exit 1 if any is invalid",
        description="Check every crystal text of every file: a file may hold several, each starting at a "
        "data_ line (as `crystext generate` prints them). One JSON line per text, with the file and the "
        "text's index in it (from 0); exit status 1 if any text is invalid.")
    k.add_argument("inputs", nargs="+", help="crystal text files")
    k.add_argument("--symprec", type=float, default=0.1)
    k.set_defaults(func=_check)
    b = verbs.add_parser(
        "to-cif", help="rebuild the full structure of crystal text files as CIF",
        description="Rebuild every crystal text of every file as a CIF: a file may hold several, each "
        "starting at a data_ line. Without --out the CIFs go to stdout one after another (several make "
        "one multi-block CIF). A text that cannot be rebuilt is named on stderr (file and text index) and "
        "skipped; the exit status is then 1.")
    b.add_argument("inputs", nargs="+", help="crystal text files")
    b.add_argument("--out", default=None, metavar="OUT",
                   help="write the CIFs to files instead: OUT ending in .cif is the file for a single text "
                   "(refused when there are several); any other OUT is a folder (created) holding STEM.cif for "
                   "an input of one text and STEM-K.cif for text K of an input of several (K from 0, the index "
                   "`text check` reports)")
    b.set_defaults(func=_to_cif)
