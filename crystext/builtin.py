"""The embedded default corpus, ``aflow-prototypes``: data that installed packages ship.

pymatgen's AFLOW prototype library (288 prototype structures, Mehl et al. 2017) plus the
structures bundled in ``pymatgen/util/structures`` (21 well-known crystals). No network needed.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

def _pymatgen_root() -> Path:
    import pymatgen.core

    return Path(pymatgen.core.__file__).resolve().parent.parent


def aflow_prototypes() -> list[tuple[str, Structure, dict]]:
    """Return ``(id, structure, properties)`` for the AFLOW prototypes and pymatgen's bundled structures."""
    from pymatgen.core import Structure

    root = _pymatgen_root()
    records: list[tuple[str, Structure, dict]] = []
    with gzip.open(root / "analysis" / "prototypes" / "aflow_prototypes.json.gz", "rt") as fh:
        for entry in json.load(fh):
            tags = entry.get("tags", {})
            struct = Structure.from_dict(entry["snl"])
            label = tags.get("aflow") or tags.get("mineral") or struct.composition.reduced_formula
            records.append((f"aflow:{label}", struct, {"source": "aflow-prototypes"}))
    for path in sorted((root / "util" / "structures").glob("*.json")):
        struct = Structure.from_file(path)
        records.append((f"pymatgen:{path.stem}", struct, {"source": "pymatgen-structures"}))
    return records
