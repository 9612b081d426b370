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


@lru_cache(maxsize=1)
def _siblings() -> dict[int, tuple[int, ...]]:
    """For each Hall number: every Hall number of the same H-M symbol that differs only in its
    origin choice (``1``/``2``) or axes (``H``/``R``), the default one first."""
    groups: dict[tuple[int, str], list[int]] = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        if t.choice in ("1", "2", "H", "R"):
            groups.setdefault((t.number, t.international_short), []).append(hall)
    return {h: tuple(hs) for hs in groups.values() for h in hs}


def settings(symbol: str | None, number: int | None = None) -> tuple[tuple[int, ...], bool]:
    """The Hall numbers a space-group symbol may stand for, and whether it names one setting.

    A bare symbol of a group with two origin choices (``Fd-3m``) or two axis systems (``R-3m``)
    may mean either: it returns both Hall numbers, spglib's default first, and ``False``. A symbol
    with its choice (``Fd-3m:2``, ``R-3m:R``), any other symbol, or a number alone gives one Hall
    number and ``True``. Symbols only pymatgen knows give ``()``: use :func:`operations`.
    Raises :class:`SpaceGroupError` if neither symbol nor number is usable.
    """
    _, by_symbol, _ = _tables()
    if symbol:
        raw = symbol.strip().strip("'\"").replace(" ", "")
        hall = by_symbol.get(raw)
        if hall is None:
            return (), True
        siblings = _siblings().get(hall, (hall,))
        if ":" in raw or len(siblings) == 1:
            return (hall,), True
        return siblings, False
    if number is not None and 1 <= int(number) <= 230:
        return (default_hall_number(int(number)),), True
    raise SpaceGroupError(f"no usable space-group symbol or number ({symbol!r}, {number!r})")


def hall_choice(hall: int) -> str:
    """The origin choice or axes (``1``, ``2``, ``H``, ``R`` or ``""``) of a Hall number."""
    return spglib.get_spacegroup_type(hall).choice


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


_GRID = np.array(sorted({0.0, 1 / 8, 1 / 6, 1 / 4, 1 / 3, 3 / 8, 1 / 2, 5 / 8, 2 / 3, 3 / 4, 5 / 6, 7 / 8}))


def _allowed_table(rot: np.ndarray, trans: np.ndarray):
    """For each distinct rotation: its translations mod 1, padded with NaN into one array."""
    by_rot: dict[bytes, list] = {}
    for r, t in zip(rot, trans):
        by_rot.setdefault(np.rint(r).astype(int).tobytes(), []).append(np.mod(t, 1.0))
    width = max(len(v) for v in by_rot.values())
    table = {k: np.vstack([np.array(v), np.full((width - len(v), 3), np.nan)]) for k, v in by_rot.items()}
    return table


@lru_cache(maxsize=None)
def _group_arrays(number: int):
    """Everything the normaliser search needs that depends only on the space group (cached)."""
    rot, trans = _operations_for_hall(default_hall_number(number))
    table = _allowed_table(rot, trans)
    few = slice(None, None, max(1, len(rot) // 8))  # a cheap first pass rejects most shifts
    eye = np.eye(3)
    identity = _shift_checker(rot, trans, table, eye)
    free = tuple(
        bool(identity(eye[k][None, :] * 0.1234567, few)[0] and identity(eye[k][None, :] * 0.1234567, slice(None))[0])
        for k in range(3)
    )
    grids = [np.array([0.0]) if free[k] else _GRID for k in range(3)]
    ts = np.array([[x, y, z] for x in grids[0] for y in grids[1] for z in grids[2]])
    generic = np.mod(np.einsum("nij,j->ni", rot, np.array([0.1234, 0.3456, 0.5678])) + trans, 1.0)
    return rot, trans, table, few, free, ts, generic


def _shift_checker(rot: np.ndarray, trans: np.ndarray, table: dict, m: np.ndarray):
    """``None`` if the linear map ``m`` does not normalise the group's rotations, else a function
    telling, for shifts ``t`` (T, 3), which maps ``x -> m x + t`` send the operations onto
    themselves (checked on the operations selected by ``sel``)."""
    m_inv = np.linalg.inv(m)
    new_rot = np.einsum("ij,njk,kl->nil", m, rot, m_inv)
    keys = [np.rint(r).astype(int).tobytes() for r in new_rot]
    if any(k not in table for k in keys):
        return None
    allowed = np.stack([table[k] for k in keys])  # (n, width, 3), NaN-padded
    base = np.einsum("ij,nj->ni", m, trans)
    shift_op = np.eye(3) - new_rot

    def ok(ts: np.ndarray, sel) -> np.ndarray:
        keep = np.ones(len(ts), dtype=bool)
        for k in np.arange(len(rot))[sel]:  # one operation at a time: the candidates thin out fast
            live = np.flatnonzero(keep)
            if not len(live):
                break
            new = base[k] + ts[live] @ shift_op[k].T  # (T, 3)
            d = (new[:, None, :] - allowed[k][None] + 0.5) % 1.0 - 0.5  # (T, width, 3)
            keep[live] = np.any(np.all(np.abs(d) < 1e-6, axis=2), axis=1)
        return keep

    return ok


@lru_cache(maxsize=None)
def _valid_shifts(number: int, m_bytes: bytes) -> np.ndarray | None:
    """The grid shifts ``t`` for which ``x -> m x + t`` normalises the group (in grid order), or
    ``None`` if ``m`` does not normalise its rotations. Cached per (group, linear map)."""
    rot, trans, table, few, _, ts, _ = _group_arrays(number)
    m = np.frombuffer(m_bytes, dtype=np.int64).reshape(3, 3).astype(float)
    ok = _shift_checker(rot, trans, table, m)
    if ok is None:
        return None
    ts = ts[ok(ts, few)]
    return ts[ok(ts, slice(None))] if len(ts) else ts


@lru_cache(maxsize=4096)
def _normaliser(number: int, linear_maps: bytes) -> tuple[tuple, tuple[bool, bool, bool]]:
    _, _, _, _, free, _, generic = _group_arrays(number)
    maps = np.frombuffer(linear_maps, dtype=np.int64).reshape(-1, 3, 3)
    # maps that differ by an element of the group give the same description: keep one per coset,
    # told apart by where they send the orbit of a generic point
    choices, signatures = [], set()
    for mi in maps:
        valid = _valid_shifts(number, np.ascontiguousarray(mi).tobytes())
        if valid is None:
            continue
        m = mi.astype(float)
        gm = generic @ m.T
        for t in valid:
            image = np.round(np.mod(gm + t, 1.0), 6) % 1.0
            signature = np.round(image[np.lexsort(image.T[::-1])], 5).tobytes()
            if signature in signatures:
                continue
            signatures.add(signature)
            choices.append((m.astype(int).tobytes(), tuple(float(v) for v in t)))
    return tuple(choices), free


def origin_choices(number: int, lattice=None) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[bool, bool, bool]]:
    """Affine maps ``x -> M x + t`` that leave the standard setting's operations unchanged (the
    Euclidean normaliser restricted to symmetries of the given lattice), and the axes along
    which the origin is free (polar directions).

    Every such map turns a structure into an equally valid description in the same setting; the
    text form picks the smallest of them so the origin and axis choice is canonical.
    """
    if lattice is None:
        maps = np.array([np.eye(3, dtype=np.int64), -np.eye(3, dtype=np.int64)])
    else:
        sym = spglib.get_symmetry((np.asarray(lattice), [[0.0, 0.0, 0.0]], [1]), symprec=1e-3)
        maps = np.unique(sym["rotations"].astype(np.int64), axis=0) if sym else np.array([np.eye(3, dtype=np.int64)])
    choices, free = _normaliser(int(number), np.ascontiguousarray(maps, dtype=np.int64).tobytes())
    out = [(np.frombuffer(m, dtype=np.int64).reshape(3, 3).astype(float), np.array(t)) for m, t in choices]
    return out, free
