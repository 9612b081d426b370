"""Geometry targets of a structure: numbers that the cell and the atom positions decide and the
composition alone does not.

:func:`structure_targets` gives, for one structure:

- ``log_volume_per_atom``: ln of the cell volume per atom (Å³);
- ``packing_fraction``: the atoms' volume (spheres of their empirical atomic radii) over the cell's;
- ``nearest_over_radii``: mean over sites of the nearest-neighbour distance divided by the sum of the
  two atoms' radii (how tightly bonded the sites are);
- ``nearest_spread``: the coefficient of variation of the sites' nearest-neighbour distances (one
  kind of site environment or several).

They are what an auxiliary pretraining objective may regress from a structure vector
(:mod:`crystext.auxiliary`). None is a DFT quantity, and none is the geometry probe's target (the mean
coordination number, :func:`crystext.benchmark.probes.mean_coordination`), so the probe stays an
independent test.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .neighbors import neighbor_list

#: The targets, in the order :func:`structure_targets` returns them.
TARGET_NAMES = ("log_volume_per_atom", "packing_fraction", "nearest_over_radii", "nearest_spread")
#: Radius (Å) of an element pymatgen has none for.
FALLBACK_RADIUS = 1.5


@lru_cache(maxsize=None)
def atomic_radius(symbol: str) -> float:
    """Empirical atomic radius of an element (Å), :data:`FALLBACK_RADIUS` where pymatgen has none."""
    from pymatgen.core import Element

    radius = Element(symbol).atomic_radius
    return float(radius) if radius is not None else FALLBACK_RADIUS


def nearest_neighbours(structure: Any, cutoff: float = 6.0):
    """``(neighbour list, nearest distance of every site)``; a site with no neighbour within
    ``cutoff`` Å is looked for again at twice the cutoff, and ``ValueError`` is raised when a site has
    none even there."""
    for radius in (cutoff, 2 * cutoff):
        nbrs = neighbor_list(structure, radius)
        if np.bincount(nbrs.centers, minlength=nbrs.n_atoms).min() > 0:
            break
    else:
        raise ValueError(f"a site has no neighbour within {2 * cutoff} Å")
    nearest = np.full(nbrs.n_atoms, np.inf)
    np.minimum.at(nearest, nbrs.centers, nbrs.distances)
    return nbrs, nearest


def structure_targets(structure: Any, cutoff: float = 6.0) -> np.ndarray:
    """The :data:`TARGET_NAMES` of one pymatgen ``Structure`` (float64 array of 4).

    Sites with no neighbour within ``cutoff`` Å are looked for again at twice the cutoff; raises
    ``ValueError`` for an empty structure or a site with no neighbour even there.
    """
    n = len(structure)
    if n == 0:
        raise ValueError("the structure has no sites")
    volume = float(structure.volume)
    radii = np.array([atomic_radius(site.specie.symbol) for site in structure])
    nbrs, nearest = nearest_neighbours(structure, cutoff)
    partner = np.zeros(n)
    closest = nbrs.distances <= nearest[nbrs.centers] + 1e-8
    partner[nbrs.centers[closest]] = radii[nbrs.neighbors[closest]]
    return np.array([
        np.log(volume / n),
        float((4.0 / 3.0 * np.pi * radii**3).sum() / volume),
        float(np.mean(nearest / (radii + partner))),
        float(nearest.std() / nearest.mean()),
    ])
