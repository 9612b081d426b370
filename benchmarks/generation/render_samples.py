"""Render a few generated structures beside their text (one PNG), from a samples JSON-lines file.

Usage:
    nice python benchmarks/generation/render_samples.py benchmarks/generation/constrained_crystext-mp_samples.jsonl
        [--k 3] [--temperature 0.7] [--out benchmarks/generation/samples.png]

Picks the first ``--k`` constrained samples at ``--temperature`` that pass every check (distinct
prompts), draws each structure's conventional cell with ASE's matplotlib renderer and prints its
text beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.visualize.plot import plot_atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    from crystext.text import text_to_structure

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--out", default=str(Path(__file__).with_name("samples.png")))
    args = ap.parse_args(argv)
    picked, prompts = [], set()
    for line in Path(args.samples).read_text().splitlines():
        row = json.loads(line)
        if row.get("constrained") and row.get("valid") and row["temperature"] == args.temperature \
                and row["prompt"] not in prompts:
            picked.append(row)
            prompts.add(row["prompt"])
        if len(picked) == args.k:
            break
    if not picked:
        raise SystemExit(f"no valid constrained sample at T={args.temperature} in {args.samples}")
    fig, axes = plt.subplots(len(picked), 2, figsize=(11, 4.2 * len(picked)),
                             gridspec_kw={"width_ratios": [1, 1.3]}, squeeze=False)
    for (ax_img, ax_txt), row in zip(axes, picked):
        atoms = AseAtomsAdaptor.get_atoms(text_to_structure(row["text"]))
        plot_atoms(atoms, ax_img, rotation="10x,-20y,0z", radii=0.45)
        ax_img.set_axis_off()
        ax_img.set_title(f"{row['text'].splitlines()[0]}  {row['text'].splitlines()[1].split()[-1]}")
        lines = row["text"].splitlines()
        body = "\n".join(lines[:13] + ["..."] + [ln for ln in lines if ln.startswith("  ") and "'" not in ln])
        ax_txt.text(0, 1, body, family="monospace", fontsize=7.5, va="top")
        ax_txt.set_axis_off()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(picked)} structures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
