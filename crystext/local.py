"""Local environments of a crystal text's sites: the optional ``local`` block of the text form.

Text models read composition and local, discrete facts far better than coordinates (MatText,
Alampara et al. 2024). The block states, for each site row of the text (the asymmetric unit),
its first coordination shell in a form such a model can read::

    loop_
     _crystext_site_label
     _crystext_site_coordination
     _crystext_site_neighbour
     _crystext_site_distance
      Sr0  12  O  2.76

* coordination: the atoms (periodic images included) within :data:`SHELL` times the site's
  nearest-neighbour distance;
* neighbour: the most common element of that shell (ties: the lower atomic number);
* distance: the nearest-neighbour distance in angstrom, at :data:`DISTANCE_DECIMALS` decimals.

Everything is computed from the text itself (its cell and sites rebuilt by the space group), so
the block is a function of the rest of the text and adds no information a perfect reader of the
coordinates would lack; it states that information locally.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from pymatgen.core import Element

from .reading import _rebuild

#: the block's columns, in order
LOCAL_KEYS = (
    "_crystext_site_label",
    "_crystext_site_coordination",
    "_crystext_site_neighbour",
    "_crystext_site_distance",
)
#: the shell: neighbours within this factor of the site's nearest-neighbour distance
SHELL = 1.2
DISTANCE_DECIMALS = 2
_RADII = (5.0, 10.0, 20.0)  # search radii (angstrom), widened only for a site with no neighbour
_BLOCK = re.compile(rf"^loop_\n ?{LOCAL_KEYS[0]}\n", re.M)


def site_environments(structure, centres: list[int], shell: float = SHELL) -> list[tuple[int, str, float]]:
    """``(coordination, most common neighbour element, nearest distance)`` of each centre atom.

    ``structure``: a pymatgen ``Structure``; ``centres``: atom indices. A centre's own periodic
    images count as neighbours (a one-atom cell has them only).
    """
    out: dict[int, tuple[int, str, float]] = {}
    todo = list(dict.fromkeys(centres))
    for radius in _RADII:
        if not todo:
            break
        centre, point, _, dist = structure.get_neighbor_list(radius, sites=[structure[i] for i in todo])
        left = []
        for k, i in enumerate(todo):
            mine = (centre == k) & (dist > 1e-8)
            if not mine.any():
                left.append(i)
                continue
            d, near = dist[mine], point[mine]
            nearest = float(d.min())
            first = near[d <= shell * nearest + 1e-6]
            counts = Counter(structure[int(j)].specie.symbol for j in first)
            element = min(counts, key=lambda e: (-counts[e], Element(e).Z))
            out[i] = (len(first), element, nearest)
        todo = left
    for i in todo:  # isolated beyond the widest radius: no shell at all
        out[i] = (0, structure[i].specie.symbol, float(_RADII[-1]))
    return [out[i] for i in centres]


def local_rows(text: str, shell: float = SHELL) -> list[str]:
    """The ``local`` block (``loop_``, headers, one row per site row) of a crystal text."""
    parsed, rebuilt = _rebuild(text)
    labels = parsed.loop_with("_atom_site_fract_x").get("_atom_site_label") or [
        f"{e}{i}" for i, e in enumerate(rebuilt.site_elements)]
    starts = np.concatenate([[0], np.cumsum(rebuilt.orbit_sizes)[:-1]]).astype(int).tolist()
    rows = ["loop_"] + [f" {k}" for k in LOCAL_KEYS]
    for label, (cn, element, nearest) in zip(labels, site_environments(rebuilt.structure, starts, shell)):
        rows.append(f"  {label}  {cn}  {element}  {nearest:.{DISTANCE_DECIMALS}f}")
    return rows


def strip_local(text: str) -> str:
    """The text without its ``local`` block (the block is written last), so a structure has one
    identity whether or not its text carries the block."""
    found = _BLOCK.search(text)
    return text if found is None else text[:found.start()]


__all__ = ["LOCAL_KEYS", "SHELL", "local_rows", "site_environments", "strip_local"]
