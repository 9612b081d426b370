"""Space-group symbols and symmetry operations, from spglib's database (all 230 groups).

The text form writes a structure in spglib's standard setting (the default Hall number of its
space-group type) and names the group by its short Hermann-Mauguin symbol; reading resolves the
symbol back to that setting's operations. Other settings (any symbol spglib or pymatgen knows,
such as ``P 1 21/c 1``, ``P2_1/a`` or ``R-3m:R``) are accepted on reading.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import spglib

from .errors import SpaceGroupError


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[int, int], dict[str, int], dict[int, str]]:
    default_hall: dict[int, int] = {}
    by_symbol: dict[str, int] = {}
    short: dict[int, str] = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        if t.number not in default_hall:
            default_hall[t.number] = hall
            short[t.number] = t.international_short
            by_symbol[t.international_short] = hall
    for hall in range(1, 531):  # other settings, never shadowing a standard short symbol
        t = spglib.get_spacegroup_type(hall)
        keys = [t.international.replace(" ", ""), t.international_full.replace(" ", ""), t.international_short]
        if t.choice:
            keys += [k + ":" + t.choice for k in keys]
        for key in keys:
            by_symbol.setdefault(key, hall)
    return default_hall, by_symbol, short


def symbols() -> list[str]:
    """The 230 short H-M symbols of the standard settings, in space-group-number order."""
    _, _, short = _tables()
    return [short[n] for n in range(1, 231)]


def symbol_of(number: int) -> str:
    """Short H-M symbol of the standard setting of space group ``number`` (1-230)."""
    if not 1 <= int(number) <= 230:
        raise SpaceGroupError(f"space-group number {number} is outside 1-230")
    return _tables()[2][int(number)]


def default_hall_number(number: int) -> int:
    """spglib's default Hall number (the setting its standardisation uses) for a space-group type."""
    if not 1 <= int(number) <= 230:
        raise SpaceGroupError(f"space-group number {number} is outside 1-230")
    return _tables()[0][int(number)]


@lru_cache(maxsize=1024)
def _operations_for_hall(hall: int) -> tuple[np.ndarray, np.ndarray]:
    ops = spglib.get_symmetry_from_database(hall)
    return ops["rotations"].astype(float), ops["translations"]


def operations(symbol: str, number: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (n, 3, 3) and translations (n, 3) acting on fractional coordinates.

    ``symbol`` is resolved against spglib's settings first, then pymatgen's symbol tables;
    ``number`` is the fallback when the symbol is unknown. Raises :class:`SpaceGroupError`.
    """
    _, by_symbol, _ = _tables()
    key = symbol.strip().strip("'\"").replace(" ", "")
    hall = by_symbol.get(key)
    if hall is not None:
        return _operations_for_hall(hall)
    try:  # pymatgen knows further aliases and settings
        from pymatgen.symmetry.groups import SpaceGroup

        group = SpaceGroup(symbol.strip().strip("'\""))
        ops = group.symmetry_ops
        rot = np.array([op.rotation_matrix for op in ops], dtype=float)
        trans = np.array([op.translation_vector for op in ops], dtype=float)
        return rot, trans
    except Exception:
        pass
    if number is not None and 1 <= int(number) <= 230:
        return _operations_for_hall(default_hall_number(int(number)))
    raise SpaceGroupError(f"unknown space-group symbol {symbol!r}")


def number_of(symbol: str) -> int:
    """Space-group number of a symbol in any setting spglib or pymatgen knows."""
    _, by_symbol, _ = _tables()
    hall = by_symbol.get(symbol.strip().strip("'\"").replace(" ", ""))
    if hall is not None:
        return spglib.get_spacegroup_type(hall).number
    try:
        from pymatgen.symmetry.groups import SpaceGroup

        return SpaceGroup(symbol.strip().strip("'\"")).int_number
    except Exception:
        raise SpaceGroupError(f"unknown space-group symbol {symbol!r}") from None
