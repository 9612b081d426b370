"""CrystaLLM interop: do CrystaLLM's evaluation checks pass on crystext's text of real structures?

Usage:
    nice -n 5 python benchmarks/text/crystallm_interop.py [--n 120] [--seed 0]
        [--out benchmarks/text/crystallm_interop.md]

For a random sample of Materials Project structures (``<data>/mp/structures-*.parquet``), the
text is written in both styles and judged by a re-implementation of the checks of CrystaLLM's
evaluation code (lantunes/CrystaLLM, ``crystallm/_utils.py`` and ``crystallm/_metrics.py``):

- expansion: the ``loop_ / _symmetry_equiv_pos_site_id / _symmetry_equiv_pos_as_xyz / 1 'x, y, z'``
  block, matched in CrystaLLM's exact whitespace, is replaced by pymatgen ``SpaceGroup(symbol)``
  operations; the count of atoms pymatgen then parses is compared with the input cell's
  (``atoms ok``: the expanded structure matches the input under ``StructureMatcher()``);
- formula: the ``data_`` formula, ``_chemical_formula_sum`` and ``_chemical_formula_structural``
  have one reduced formula;
- multiplicity: the multiplicities per element add up to ``_chemical_formula_sum``;
- space group: pymatgen's ``SpacegroupAnalyzer(symprec=0.1)`` symbol of the expanded structure
  equals the stated ``_symmetry_space_group_name_H-M``.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

_SYMOP_BLOCK = re.compile(r"(loop_\n_symmetry_equiv_pos_site_id\n_symmetry_equiv_pos_as_xyz\n1 'x, y, z')")
_SYMBOL = re.compile(r"_symmetry_space_group_name_H-M\s+('([^']+)'|(\S+))")
_DATA = re.compile(r"data_([A-Za-z0-9]+)\n")


def expand(text: str) -> str:
    from pymatgen.symmetry.groups import SpaceGroup

    m = _SYMBOL.search(text)
    ops = [op.as_xyz_str() for op in SpaceGroup(m.group(2) or m.group(3)).symmetry_ops]
    block = "loop_\n_symmetry_equiv_pos_site_id\n_symmetry_equiv_pos_as_xyz\n" + "\n".join(
        f"{i} '{op}'" for i, op in enumerate(ops, 1))
    return _SYMOP_BLOCK.sub(lambda _: block, text)


def judge(structure, text: str) -> dict[str, bool]:
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Composition, Structure
    from pymatgen.io.cif import CifParser
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    out = {"atoms": False, "formula": False, "multiplicity": False, "space_group": False}
    expanded = expand(text)
    try:
        rebuilt = Structure.from_str(expanded, fmt="cif")
        out["atoms"] = StructureMatcher().fit(structure, rebuilt)
    except Exception:
        return out
    data = next(iter(CifParser.from_str(expanded).as_dict().values()))
    try:
        f_data = Composition(_DATA.search(expanded).group(1))
        f_sum = Composition(data["_chemical_formula_sum"])
        f_struct = Composition(data["_chemical_formula_structural"])
        out["formula"] = f_data.reduced_formula == f_sum.reduced_formula == f_struct.reduced_formula
        counts: dict[str, int] = {}
        for el, m in zip(data["_atom_site_type_symbol"], data["_atom_site_symmetry_multiplicity"]):
            counts[el] = counts.get(el, 0) + int(m)
        out["multiplicity"] = f_sum.as_dict() == counts
    except Exception:
        pass
    try:
        stated = data["_symmetry_space_group_name_H-M"]
        out["space_group"] = stated.strip() == SpacegroupAnalyzer(rebuilt, symprec=0.1).get_space_group_symbol().strip()
    except Exception:
        pass
    return out


def main() -> int:
    warnings.simplefilter("ignore")
    from pymatgen.core import Structure

    from crystext.settings import data_dir
    from crystext.text import structure_to_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("crystallm_interop.md")))
    args = ap.parse_args()

    files = sorted((data_dir(required=True) / "mp").glob("structures-*.parquet"))
    df = pd.concat([pd.read_parquet(f, columns=["material_id", "cif"]) for f in files], ignore_index=True)
    idx = np.random.default_rng(args.seed).choice(len(df), args.n, replace=False)
    rows = []
    for mid, cif in zip(df.material_id.to_numpy()[idx], df.cif.to_numpy()[idx]):
        s = Structure.from_str(cif, fmt="cif")
        row = {"material_id": mid}
        for style in ("default", "crystallm"):
            try:
                verdict = judge(s, structure_to_text(s, style=style))
            except Exception:
                verdict = {"atoms": False, "formula": False, "multiplicity": False, "space_group": False}
            verdict["all"] = all(verdict.values())
            row.update({f"{style}:{k}": v for k, v in verdict.items()})
        rows.append(row)
    res = pd.DataFrame(rows)
    n = len(res)
    lines = [
        "# CrystaLLM's evaluation checks on crystext text",
        "",
        f"Command: `nice -n 5 python benchmarks/text/crystallm_interop.py --n {args.n} --seed {args.seed}`",
        "",
        f"{n} Materials Project structures drawn at random (seed {args.seed}) from `<data>/mp/`; each written by "
        "`structure_to_text(s, style=...)` and judged by a re-implementation of CrystaLLM's evaluation code "
        "(symmetry-operator expansion by its regular expression, then its formula, multiplicity and space-group "
        "checks; see the script's docstring). `atoms`: the expanded CIF, parsed by pymatgen, matches the input "
        "structure (`StructureMatcher()` defaults).",
        "",
        "| style | atoms | formula | multiplicity | space group | all four |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for style in ("default", "crystallm"):
        cells = [f"{int(res[f'{style}:{k}'].sum())}/{n}" for k in ("atoms", "formula", "multiplicity", "space_group", "all")]
        lines.append(f"| {style} | " + " | ".join(cells) + " |")
    failed = res.loc[~res["crystallm:all"], "material_id"].tolist()
    lines += ["", f"crystallm style failing any check: {', '.join(map(str, failed)) if failed else 'none'}.", ""]
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
