"""Periodic neighbour lists: every pair (i, j, image) closer than a cutoff.

vesin is used when installed (a compiled cell-list, ~3 ms for 1,000 atoms at 5 Å); otherwise
pymatgen's ``Structure.get_neighbor_list`` gives the same pairs. Overlapping atoms raise
:class:`OverlappingAtomsError`; atoms with no neighbour inside the cutoff are reported by
:func:`isolated_atoms` so featurisers can give them a defined (zero) environment.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CrystextError, EmptyStructureError

try:  # optional fast backend
    import vesin as _vesin
except ImportError:  # pragma: no cover - depends on the environment
    _vesin = None

#: Two atoms closer than this (Å) are treated as overlapping unless a featuriser says otherwise.
DEFAULT_MIN_DISTANCE = 0.5


class OverlappingAtomsError(CrystextError, ValueError):
    """Two atoms of a structure (or an atom and a periodic image) are closer than ``min_distance``."""


class IsolatedAtomWarning(UserWarning):
    """An atom has no neighbour inside the cutoff; its local-environment features are zero."""


@dataclass
class Neighbors:
    """Directed neighbour pairs of one periodic structure.

    ``vectors[k] = r_j + shift·cell - r_i`` points from centre ``centers[k]`` to neighbour
    ``neighbors[k]``; both directions of every pair are present.
    """

    centers: np.ndarray  # (E,) int64
    neighbors: np.ndarray  # (E,) int64
    vectors: np.ndarray  # (E, 3) float64, Å
    distances: np.ndarray  # (E,) float64, Å
    numbers: np.ndarray  # (n_atoms,) atomic numbers
    cutoff: float

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def n_pairs(self) -> int:
        return len(self.centers)

    def coordination(self) -> np.ndarray:
        """Number of neighbours inside the cutoff for every atom."""
        return np.bincount(self.centers, minlength=self.n_atoms)


def _structure(obj: Any):
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return obj
    from ..inputs import to_structure

    return to_structure(obj)


def _numbers(structure) -> np.ndarray:
    from ..errors import DisorderError

    if not structure.is_ordered:
        raise DisorderError(
            f"structure {structure.composition.reduced_formula} has partially occupied sites; "
            "resolve the disorder first (crystext.inputs.resolve_disorder)"
        )
    return np.array([site.specie.Z for site in structure], dtype=np.int64)


def neighbor_list(
    structure: Any,
    cutoff: float,
    *,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    backend: str = "auto",
    name: str | None = None,
) -> Neighbors:
    """All directed pairs closer than ``cutoff`` Å in a periodic structure.

    Args:
        structure: a pymatgen ``Structure`` or anything :func:`crystext.to_structure` accepts.
        cutoff: neighbour radius in Å (may exceed the cell: periodic images are included,
            including an atom's own images).
        min_distance: pairs closer than this raise :class:`OverlappingAtomsError`
            (``0`` disables the check).
        backend: ``"vesin"``, ``"pymatgen"`` or ``"auto"`` (vesin when installed).
        name: how to call the structure in error messages (defaults to its formula).
    """
    s = _structure(structure)
    label = name or s.composition.reduced_formula
    if len(s) == 0:
        raise EmptyStructureError(f"structure {label!r} holds no atoms")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    if s.volume <= 1e-8:
        raise EmptyStructureError(f"structure {label!r} has a zero-volume cell")
    numbers = _numbers(s)
    use_vesin = backend == "vesin" or (backend == "auto" and _vesin is not None)
    if backend not in ("auto", "vesin", "pymatgen"):
        raise ValueError(f"unknown neighbour-list backend {backend!r}: use 'auto', 'vesin' or 'pymatgen'")
    if use_vesin:
        if _vesin is None:
            raise ImportError("backend='vesin' needs `pip install vesin`")
        nl = _vesin.NeighborList(cutoff=float(cutoff), full_list=True)
        i, j, vec = nl.compute(
            points=np.ascontiguousarray(s.cart_coords, dtype=np.float64),
            box=np.ascontiguousarray(s.lattice.matrix, dtype=np.float64),
            periodic=True,
            quantities="ijD",
        )
        i = i.astype(np.int64)
        j = j.astype(np.int64)
        vec = np.asarray(vec, dtype=np.float64)
        dist = np.linalg.norm(vec, axis=1)
        # vesin works with <= cutoff in some versions; keep the strict definition
        keep = dist < cutoff
        i, j, vec, dist = i[keep], j[keep], vec[keep], dist[keep]
    else:
        # exclude_self=True would also drop coincident *different* atoms: drop only i-with-itself
        i, j, images, dist = s.get_neighbor_list(float(cutoff), exclude_self=False)
        i = i.astype(np.int64)
        j = j.astype(np.int64)
        cart = s.cart_coords
        vec = cart[j] + images @ s.lattice.matrix - cart[i]
        dist = np.asarray(dist, dtype=np.float64)
        keep = ~((i == j) & np.all(images == 0, axis=1))
        i, j, vec, dist = i[keep], j[keep], vec[keep], dist[keep]
    order = np.lexsort((j, i))  # deterministic order: by centre, then neighbour
    nbrs = Neighbors(i[order], j[order], vec[order], dist[order], numbers, float(cutoff))
    check_overlaps(nbrs, min_distance, label)
    return nbrs


def check_overlaps(nbrs: Neighbors, min_distance: float, label: str) -> None:
    """Raise :class:`OverlappingAtomsError` when any pair is closer than ``min_distance``."""
    if min_distance <= 0 or nbrs.n_pairs == 0:
        return
    k = int(np.argmin(nbrs.distances))
    d = float(nbrs.distances[k])
    if d < min_distance:
        a, b = int(nbrs.centers[k]), int(nbrs.neighbors[k])
        from pymatgen.core import Element

        sa, sb = Element.from_Z(int(nbrs.numbers[a])).symbol, Element.from_Z(int(nbrs.numbers[b])).symbol
        what = "a periodic image of itself" if a == b else f"atom {b} ({sb})"
        raise OverlappingAtomsError(
            f"structure {label!r}: atom {a} ({sa}) is {d:.3g} Å from {what}, closer than "
            f"min_distance={min_distance} Å (overlapping atoms; check the cell and coordinates)"
        )


def isolated_atoms(nbrs: Neighbors) -> np.ndarray:
    """Indices of atoms with no neighbour inside the cutoff."""
    return np.flatnonzero(nbrs.coordination() == 0)


def warn_isolated(nbrs: Neighbors, label: str, what: str = "features", stacklevel: int = 3) -> None:
    """Emit one :class:`IsolatedAtomWarning` naming the atoms with an empty environment."""
    lonely = isolated_atoms(nbrs)
    if len(lonely):
        shown = ", ".join(str(int(a)) for a in lonely[:8]) + (" ..." if len(lonely) > 8 else "")
        warnings.warn(
            f"structure {label!r}: {len(lonely)} atom(s) [{shown}] have no neighbour within "
            f"{nbrs.cutoff} Å; their {what} are zero",
            IsolatedAtomWarning,
            stacklevel=stacklevel,
        )
