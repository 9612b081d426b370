"""Constrained sampling of crystal text: a ``transformers`` ``LogitsProcessor`` that lets the model
write only texts of the canonical form that agree with their own composition and space group.

The processor runs a small incremental parser over each sample's text. After every token it knows
where in the text form the sample is (which key, which number, which site row) and which
characters may come next; the allowed next tokens are the tokens whose whole string the parser
accepts from that point (a walk of a character trie of the vocabulary, cached by parser state).

What it guarantees for a sample that ends (``<eos>``) within the token budget:

- grammar: the keys of the text form in order, each number well formed (cell lengths and angles
  ``d.dddd`` with 1-3 integer digits, coordinates ``0.dddd``), seven values per site row, the site
  loop closed by ``<eos>``; the derived lines (``_symmetry_Int_Tables_number``, both formula lines,
  ``_cell_volume`` computed from the written cell, ``_cell_formula_units_Z``, the site labels and
  occupancies) are written for the model, not sampled;
- composition: only the prompt's elements, one block of rows per element in the canonical order,
  and the loop ends exactly when every element's count is filled;
- space group: only groups whose Wyckoff positions can hold the composition (a subset sum over
  their multiplicities, each special position without free parameters used at most once);
  the cell parameters its crystal system fixes are written (cubic ``b = c = a``, angles 90, ...);
- multiplicities: only those of the group's Wyckoff positions that still leave the rest of the
  composition fillable; the coordinates lie on a Wyckoff position of that multiplicity (fixed
  coordinates forced, free ones free), and a free coordinate may not take a value where the
  orbit would be smaller (a more special position).

Best effort: no two atoms closer than :func:`min_distance` (0.68 of their expected bond length,
CrystaLLM's lower bound), checked once a site's position is complete; where the atoms already
placed leave no place at that distance, a coordinate keeps atoms :data:`MIN_DISTANCE` apart, and
where even that leaves none, keeps to the Wyckoff rules alone (no dead end).

Left to the model: the cell lengths and free angles, the free coordinates, hence bond lengths and
whether the crystal has *more* symmetry than stated (then the space-group check fails), its
stability, and ending within the context (a very long site list can run out of tokens).
See docs/generation.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np

from . import spacegroups
from .errors import ConfigError, UnknownElementError

_GRID = 24  # every fixed Wyckoff coordinate of the standard settings is a multiple of 1/24
_STAB_TOL = 4e-3  # an operation fixes a point when it moves it by less than this (fractional)
_SOLVE_TOL = 6e-4  # typed (4-decimal) coordinates lie on a subspace within this
_ROUNDING = 2  # a coordinate fixed by earlier ones may differ by this many in its last digit


# --------------------------------------------------------------------------- Wyckoff positions

@dataclass(frozen=True)
class Subspace:
    """Points ``point + basis @ t`` (mod 1) of one Wyckoff position's image in the cell.

    ``orbit`` is the id of the orbit for a position without free parameters (``basis`` empty),
    else -1: such an orbit can be occupied once."""

    multiplicity: int
    point: tuple[float, float, float]
    basis: tuple[tuple[float, ...], ...]  # 3 rows of k columns (k = free parameters)
    orbit: int

    @property
    def dof(self) -> int:
        return len(self.basis[0]) if self.basis else 0


@dataclass(frozen=True)
class WyckoffTable:
    """The Wyckoff positions of a space group's standard setting, as the multiplicities and point
    sets the constrained sampler needs."""

    number: int
    operations: int  # symmetry operations of the conventional cell (centring included)
    subspaces: tuple[Subspace, ...]
    free: frozenset[int]  # multiplicities of positions with free parameters (reusable)
    fixed: tuple[tuple[int, int], ...]  # (multiplicity, number of fixed orbits), sorted

    @property
    def multiplicities(self) -> tuple[int, ...]:
        return tuple(sorted(self.free | {m for m, _ in self.fixed}))


def _null_space(mats: np.ndarray) -> np.ndarray:
    """Orthonormal basis (3, k) of the common fixed space of the rotations ``mats`` (the vectors
    ``v`` with ``(R - I) v = 0`` for every ``R``)."""
    stacked = (mats - np.eye(3)).reshape(-1, 3)
    _, s, vt = np.linalg.svd(stacked)
    rank = int(np.sum(s > 1e-8))
    return vt[rank:].T


_SHIFTS = np.array([[i, j, k] for i in range(-2, 3) for j in range(-2, 3) for k in range(-2, 3)], dtype=float)


def _same_subspace(points: np.ndarray, origin: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Which ``points`` lie on ``origin + span(basis)`` modulo lattice translations."""
    proj = np.eye(3) - basis @ basis.T if basis.size else np.eye(3)
    res = ((points - origin) @ proj.T)[:, None, :] + (_SHIFTS @ proj.T)[None, :, :]
    return np.any(np.abs(res).max(axis=2) < 1e-6, axis=1)


@lru_cache(maxsize=None)
def _stabilisers(number: int):
    """Every point of a 1/24 grid classified by its stabiliser in space group ``number``:
    (rotations, grid points / 24, stabiliser masks (S, G), class of each point, orbit id of each point)."""
    rot, trans = spacegroups._operations_for_hall(spacegroups.default_hall_number(number))
    ticks = np.arange(_GRID, dtype=np.int16)
    grid = np.array(np.meshgrid(ticks, ticks, ticks, indexing="ij")).reshape(3, -1).T  # (P, 3)
    r_int = np.rint(rot).astype(np.int16)
    t_int = np.rint(trans * _GRID).astype(np.int16)
    index = np.empty((len(rot), len(grid)), dtype=np.int32)
    stab = np.empty((len(grid), len(rot)), dtype=bool)
    for g in range(len(rot)):
        img = (grid @ r_int[g].T + t_int[g]) % _GRID
        stab[:, g] = np.all(img == grid, axis=1)
        index[g] = (img[:, 0].astype(np.int32) * _GRID + img[:, 1]) * _GRID + img[:, 2]
    packed = np.packbits(stab, axis=1)
    rows = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return rot, grid / _GRID, stab[first], inverse.ravel(), index.min(axis=0)


@lru_cache(maxsize=None)
def wyckoff_summary(number: int) -> tuple[int, tuple[tuple[int, int], ...], frozenset[int]]:
    """(operations, fixed, free) of space group ``number``: the number of symmetry operations of
    the conventional cell, ``(multiplicity, orbits)`` of its Wyckoff positions without free
    parameters, and the multiplicities of those with free parameters (see :class:`WyckoffTable`)."""
    rot, _, masks, inverse, orbit_of = _stabilisers(number)
    fixed: dict[int, set[int]] = {}
    free: set[int] = set()
    for k, key in enumerate(masks):
        m = len(rot) // int(key.sum())
        if _null_space(rot[key]).shape[1] == 0:
            fixed.setdefault(m, set()).update(np.unique(orbit_of[inverse == k]).tolist())
        else:
            free.add(m)
    return len(rot), tuple(sorted((m, len(o)) for m, o in fixed.items())), frozenset(free)


@lru_cache(maxsize=None)
def wyckoff_table(number: int) -> WyckoffTable:
    """The Wyckoff positions of space group ``number`` (standard setting, spglib's default Hall
    number, the setting the text form writes), found from the group's operations: every point of
    a 1/24 grid is classified by its stabiliser; points with one stabiliser form the affine
    subspaces (fixed space of the stabiliser) of one Wyckoff position."""
    rot, pts_all, masks, inverse, orbit_of = _stabilisers(number)
    n_ops, fixed, free = summary(number)
    subspaces: list[Subspace] = []
    for k, key in enumerate(masks):
        members = np.flatnonzero(inverse == k)
        m = n_ops // int(key.sum())
        basis = _null_space(rot[key])
        pts = pts_all[members]
        if basis.shape[1] == 0:
            subspaces += [Subspace(m, tuple(float(v) for v in p), (), int(o)) for p, o in zip(pts, orbit_of[members])]
            continue
        left = np.ones(len(pts), dtype=bool)
        while left.any():
            origin = pts[np.argmax(left)]
            left &= ~_same_subspace(pts, origin, basis)
            subspaces.append(Subspace(m, tuple(float(v) for v in origin),
                                      tuple(tuple(float(v) for v in row) for row in basis), -1))
    return WyckoffTable(number, n_ops, tuple(subspaces), free, fixed)


# --------------------------------------------------------------------------- filling the formula

@lru_cache(maxsize=None)
def _reachable(free: frozenset[int], limit: int) -> tuple[bool, ...]:
    """Which totals 0..limit are sums of the multiplicities in ``free`` (each any number of times)."""
    ok = [True] + [False] * limit
    for total in range(1, limit + 1):
        ok[total] = any(m <= total and ok[total - m] for m in free)
    return tuple(ok)


@lru_cache(maxsize=200_000)
def fillable(counts: tuple[int, ...], fixed: tuple[tuple[int, int], ...], free: frozenset[int]) -> bool:
    """Whether element counts ``counts`` can be placed on Wyckoff positions: ``fixed`` gives
    ``(multiplicity, orbits left)`` of the positions without free parameters (each orbit holds one
    element once), ``free`` the multiplicities of positions with free parameters (any number of
    times). A subset sum over the multiplicities, element by element, memoised."""
    counts = tuple(c for c in counts if c)
    if not counts:
        return True
    first, rest = counts[0], counts[1:]
    reach = _reachable(free, max(counts))

    def use(i: int, left: int, avail: tuple[tuple[int, int], ...]) -> bool:
        if i == len(avail):
            return reach[left] and fillable(rest, tuple(a for a in avail if a[1]), free)
        m, k = avail[i]
        for n in range(min(k, left // m) + 1):
            trial = avail[:i] + ((m, k - n),) + avail[i + 1:]
            if use(i + 1, left - n * m, trial):
                return True
        return False

    return use(0, first, fixed)


@lru_cache(maxsize=None)
def _orbit_multiplicity(number: int) -> dict[int, int]:
    """Fixed orbit id -> its multiplicity, for space group ``number``."""
    return {s.orbit: s.multiplicity for s in wyckoff_table(number).subspaces if s.dof == 0}


def _fixed_left(table: WyckoffTable, used: frozenset[int]) -> tuple[tuple[int, int], ...]:
    """``table.fixed`` less the orbits already occupied."""
    mult = _orbit_multiplicity(table.number)
    taken: dict[int, int] = {}
    for orbit in used:
        taken[mult[orbit]] = taken.get(mult[orbit], 0) + 1
    return tuple((m, k - taken.get(m, 0)) for m, k in table.fixed)


@lru_cache(maxsize=None)
def summary(number: int) -> tuple[int, tuple[tuple[int, int], ...], frozenset[int]]:
    """:func:`wyckoff_summary` from the precomputed table (:mod:`crystext.wyckoff_data`)."""
    from .wyckoff_data import SUMMARY

    ops, fixed, free = SUMMARY[int(number)]
    return ops, fixed, frozenset(free)


def space_groups_for(counts: Iterable[int]) -> list[int]:
    """The space-group numbers whose Wyckoff positions can hold a cell with these element counts."""
    counts = tuple(int(c) for c in counts)
    return [n for n in range(1, 231) if fillable(counts, summary(n)[1], summary(n)[2])]


# --------------------------------------------------------------------------- the text form's grammar

_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_SITE_HEADER = (
    "loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n  1  'x, y, z'\n"
    "loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_symmetry_multiplicity\n"
    " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n"
)
#: ranges the sampler allows for free cell parameters (angstrom, degrees)
LENGTH_RANGE, ANGLE_RANGE = (1.0, 100.0), (45.0, 150.0)
#: most formula units a reduced-formula prompt (``data_NaCl``) may be expanded to, and most atoms
MAX_FORMULA_UNITS, MAX_CELL_ATOMS = 8, 64
_FRAC = np.arange(10_000) / 10_000.0  # every 4-decimal fractional part
_GENERIC = np.array([0.1370, 0.2690, 0.3857])  # a generic point for free parameters not yet written


@dataclass(frozen=True)
class _Ctx:
    """Where a sample is in the text form, with what it has written that later lines depend on.

    ``phase`` is the next decision (``formula``, ``group``, ``cell``, ``mult``, ``coord``, ``end``);
    ``lit`` the text that is forced before it."""

    phase: str
    lit: str = ""
    formula: tuple[tuple[str, int], ...] = ()
    reduced: tuple[tuple[str, int], ...] = ()
    group: int = 0
    cell: tuple[str, ...] = ()
    remaining: tuple[int, ...] = ()
    rows: int = 0
    used: frozenset[int] = frozenset()
    mult: int = 0
    coords: tuple[str, ...] = ()
    sites: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (element, coordinates) of the rows written
    loose: bool = False  # this row keeps to the Wyckoff rules only (the distances left no place)


State = tuple  # (_Ctx, typed text of the current decision)


def _frac_str(v: float) -> str:
    """A fractional coordinate as the text form writes it: 4 decimals in [0, 1)."""
    r = round(v % 1.0, 4)
    return f"{0.0 if r >= 1.0 else r:.4f}"


def crystal_system(number: int) -> str:
    """The crystal system of space group ``number``."""
    for bound, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                        (194, "hexagonal"), (230, "cubic")):
        if number <= bound:
            return name
    raise ConfigError(f"space-group number {number} is outside 1-230")


def _forced_cell(number: int, i: int, cell: tuple[str, ...]) -> str | None:
    """The value the crystal system fixes for cell parameter ``i`` (a, b, c, alpha, beta, gamma)."""
    system = crystal_system(number)
    if i == 1 and system in ("tetragonal", "hexagonal", "cubic"):
        return cell[0]
    if i == 2 and system == "cubic":
        return cell[0]
    if i >= 3 and system != "triclinic":
        if system == "monoclinic" and i == 4:
            return None
        return "120.0000" if (system == "hexagonal" and i == 5) else "90.0000"
    return None


def _element_key(symbol: str) -> tuple:
    from pymatgen.core import Element

    x = Element(symbol).X
    return (x if not math.isnan(x) else 100.0, symbol)


def _formula_text(formula: tuple[tuple[str, int], ...]) -> str:
    return "".join(f"{el}{n}" for el, n in formula)


def _tail(ctx: _Ctx) -> str:
    """The lines from ``_symmetry_Int_Tables_number`` to the site-loop header, all derived."""
    from pymatgen.core import Composition, Lattice

    comp = Composition(dict(ctx.formula))
    reduced, z = comp.get_reduced_composition_and_factor()
    volume = Lattice.from_parameters(*(float(v) for v in ctx.cell)).volume
    return (f"_symmetry_Int_Tables_number {ctx.group}\n_chemical_formula_structural {reduced.reduced_formula}\n"
            f"_chemical_formula_sum '{' '.join(f'{el}{n}' for el, n in ctx.formula)}'\n"
            f"_cell_volume {volume:.4f}\n_cell_formula_units_Z {int(z)}\n" + _SITE_HEADER)


@dataclass(frozen=True)
class _Choice:
    """One of ``options`` (each ending with its terminator character)."""

    options: frozenset[str]
    prefixes: frozenset[str]


@dataclass(frozen=True)
class _Number:
    """A number ``I.dddd`` ended by ``term``: ``ints`` the allowed integer parts, ``frac_ok(I)``
    the allowed 4-decimal fractional parts (cumulative counts, so any-in-range is two lookups)."""

    ints: frozenset[int]
    term: str
    frac_cum: Callable[[int], np.ndarray]
    ints_text: frozenset[str]


def _choice(options: Iterable[str]) -> _Choice:
    opts = frozenset(options)
    return _Choice(opts, frozenset(o[:k] for o in opts for k in range(len(o))))


def _number(ints: Iterable[int], term: str, frac_ok: Callable[[int], np.ndarray]) -> _Number:
    ints = frozenset(ints)
    cache: dict[int, np.ndarray] = {}

    def cum(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = np.concatenate([[0], np.cumsum(frac_ok(i))])
        return cache[i]

    prefixes = frozenset(str(i)[:k] for i in ints for k in range(1, len(str(i)) + 1))
    return _Number(ints, term, cum, prefixes)


def _number_step(seg: _Number, typed: str, ch: str) -> str | None:
    """``typed + ch`` if it can still become an allowed number, ``"DONE"`` if ``ch`` ends it."""
    dot = typed.find(".")
    if ch == seg.term:
        return "DONE" if dot >= 0 and len(typed) - dot == 5 else None
    new = typed + ch
    if dot < 0:
        if ch == ".":
            return new if typed and int(typed) in seg.ints and seg.frac_cum(int(typed))[-1] > 0 else None
        return new if ch.isdigit() and new in seg.ints_text else None
    decimals = new[dot + 1:]
    if not ch.isdigit() or len(decimals) > 4:
        return None
    lo = int(decimals.ljust(4, "0"))
    hi = lo + 10 ** (4 - len(decimals))
    cum = seg.frac_cum(int(typed[:dot]))
    return new if cum[hi] > cum[lo] else None


def _stabiliser_sizes(number: int, points: np.ndarray) -> np.ndarray:
    """How many operations of the group fix each of a few points (within ``_STAB_TOL``, fractional)."""
    rot, trans = spacegroups._operations_for_hall(spacegroups.default_hall_number(number))
    d = np.einsum("gij,pj->gpi", rot, points) + trans[:, None, :] - points[None]
    d -= np.round(d)
    return np.all(np.abs(d) < _STAB_TOL, axis=2).sum(axis=0)


def _stabiliser_sizes_on_line(number: int, q0: np.ndarray, dq: np.ndarray) -> np.ndarray:
    """:func:`_stabiliser_sizes` of the points ``q0 + v dq`` for every 4-decimal ``v`` in [0, 1),
    found per operation as the intervals of ``v`` where it fixes the point (it moves the point by
    an affine function of ``v``), not by trying every value."""
    rot, trans = spacegroups._operations_for_hall(spacegroups.default_hall_number(number))
    moved_a = np.einsum("gij,j->gi", rot, dq) - dq  # g(q(v)) - q(v) = b + a v
    moved_b = np.einsum("gij,j->gi", rot, q0) + trans - q0
    diff = np.zeros(len(_FRAC) + 1, dtype=np.int64)
    for a_row, b_row in zip(moved_a, moved_b):
        spans = [(0.0, 1.0)]
        for a, b in zip(a_row, b_row):
            if abs(a) < 1e-9:
                if abs(b - round(b)) >= _STAB_TOL:
                    spans = []
                continue
            lo_end, hi_end = b + min(0.0, a), b + max(0.0, a)
            near = [tuple(sorted(((n - b - _STAB_TOL) / a, (n - b + _STAB_TOL) / a)))
                    for n in range(math.floor(lo_end - _STAB_TOL), math.ceil(hi_end + _STAB_TOL) + 1)]
            spans = [(max(l1, l2), min(h1, h2)) for l1, h1 in spans for l2, h2 in near if max(l1, l2) < min(h1, h2)]
            if not spans:
                break
        for lo, hi in spans:
            first, last = max(0, math.ceil(lo * 10_000)), min(len(_FRAC) - 1, math.floor(hi * 10_000))
            if first <= last:
                diff[first] += 1
                diff[last + 1] -= 1
    return np.cumsum(diff)[:-1]


def _solutions(sub: Subspace, prefix: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Parameter solutions ``(t0, N)`` (``t = t0 + N s``) putting the subspace's first coordinates on
    ``prefix`` (mod 1, within ``_SOLVE_TOL``); empty if the subspace does not pass there."""
    p = np.array(sub.point)
    j = len(prefix)
    if sub.dof == 0:
        d = prefix - p[:j]
        return [(np.zeros(0), np.zeros((0, 0)))] if np.all(np.abs(d - np.round(d)) < _SOLVE_TOL) else []
    v = np.array(sub.basis)
    if j == 0:
        return [(np.zeros(sub.dof), np.eye(sub.dof))]
    a = v[:j]
    _, s, vt = np.linalg.svd(a)
    rank = int(np.sum(s > 1e-8))
    null = vt[rank:].T
    out, seen = [], []
    for shift in np.array(np.meshgrid(*[np.arange(-2, 3)] * j, indexing="ij")).reshape(j, -1).T:
        target = prefix - p[:j] + shift
        t0 = np.linalg.lstsq(a, target, rcond=None)[0]
        if np.max(np.abs(a @ t0 - target)) < _SOLVE_TOL and not any(np.allclose(t0, u) for u in seen):
            seen.append(t0)
            out.append((t0, null))
    return out


#: no two atoms closer than this fraction of their expected bond length (CrystaLLM's lower bound,
#: 1 - 0.32), and never closer than this many angstrom (bonds to H, which have no lower bound)
MIN_DISTANCE_FRACTION, MIN_DISTANCE = 0.68, 0.5


@lru_cache(maxsize=4096)
def min_distance(a: str, b: str) -> float:
    """The closest two atoms of elements ``a`` and ``b`` may come in a constrained sample (angstrom)."""
    from pymatgen.core import Element

    from .text import expected_bond_length

    if "H" in (a, b):
        return MIN_DISTANCE
    return max(MIN_DISTANCE, MIN_DISTANCE_FRACTION * expected_bond_length(Element(a), Element(b)))


@lru_cache(maxsize=256)
def _cell_matrix(cell: tuple[str, ...]) -> np.ndarray:
    from pymatgen.core import Lattice

    return Lattice.from_parameters(*(float(v) for v in cell)).matrix


@lru_cache(maxsize=4096)
def _placed_atoms(number: int, sites: tuple) -> tuple[np.ndarray, tuple[str, ...]]:
    """Every atom of the sites written so far (fractional), with its element."""
    rot, trans = spacegroups._operations_for_hall(spacegroups.default_hall_number(number))
    points, elements = [], []
    for el, coords in sites:
        images = np.mod(np.einsum("gij,j->gi", rot, np.array([float(c) for c in coords])) + trans, 1.0)
        d = images[:, None, :] - images[None, :, :]
        d -= np.round(d)
        first = np.argmax(np.all(np.abs(d) < 2e-3, axis=2), axis=1)
        unique = images[first == np.arange(len(images))]
        points.append(unique)
        elements += [el] * len(unique)
    return (np.vstack(points) if points else np.zeros((0, 3))), tuple(elements)


def _clear(number: int, cell: tuple[str, ...], sites: tuple, element: str, points: np.ndarray,
           relaxed: bool = False) -> np.ndarray:
    """Which candidate positions keep :func:`min_distance` (``relaxed``: :data:`MIN_DISTANCE`) from
    the atoms already placed and from the other atoms of their own orbit (fractional differences
    wrapped to the nearest image)."""
    matrix = _cell_matrix(cell)
    ok = np.ones(len(points), dtype=bool)
    placed, elements = _placed_atoms(number, sites)
    if len(placed):
        limit = np.array([MIN_DISTANCE if relaxed else min_distance(element, e) for e in elements])
        d = points[:, None, :] - placed[None, :, :]
        d -= np.round(d)
        ok &= np.all(np.linalg.norm(d @ matrix, axis=2) >= limit[None, :], axis=1)
    rot, trans = spacegroups._operations_for_hall(spacegroups.default_hall_number(number))
    own = MIN_DISTANCE if relaxed else min_distance(element, element)
    pts = points.astype(np.float32)
    for lo in range(0, len(rot), 16):  # the other atoms of the candidate's own orbit
        d = np.einsum("gij,pj->gpi", rot[lo:lo + 16].astype(np.float32), pts) + trans[lo:lo + 16, None, :] - pts
        d -= np.round(d)
        dist = np.sqrt(np.einsum("gpi,gpi->gp", *(2 * [d @ matrix.astype(np.float32)])))
        ok &= np.all((dist < 0.02) | (dist >= own), axis=0)  # the same atom (an operation fixing it) or far enough
    return ok


@lru_cache(maxsize=4096)
def _coord_ok(number: int, m: int, used: frozenset[int], free_ok: bool, fixed_ok: bool,
              coords: tuple[str, ...], cell: tuple[str, ...] = (), sites: tuple = (), element: str = "",
              rest: tuple[int, ...] = (), after: tuple[str, ...] = (), relaxed: bool = False) -> np.ndarray:
    """Which 4-decimal values the next coordinate of a site of multiplicity ``m`` may take: those
    on a Wyckoff position of multiplicity ``m`` (free ones if ``free_ok``, unoccupied fixed ones if
    ``fixed_ok``) through the coordinates written so far, where the site's orbit (with any later
    free coordinate at a generic value) has exactly ``m`` points and, given the ``cell`` and the
    ``sites`` written before, keeps its atoms :func:`min_distance` from every other atom; a site on
    a fixed position must leave element counts ``rest`` (of elements ``after``) fillable
    (``relaxed``: only :data:`MIN_DISTANCE` apart, and no look ahead)."""
    table = wyckoff_table(number)
    prefix = np.array([float(c) for c in coords])
    j = len(prefix)
    ok = np.zeros(len(_FRAC), dtype=bool)
    for sub in table.subspaces:
        if sub.multiplicity != m or not (free_ok if sub.dof else (fixed_ok and sub.orbit not in used)):
            continue
        p = np.array(sub.point)
        for t0, null in _solutions(sub, prefix):
            if sub.dof == 0:
                candidates = np.array([p])
            else:
                v = np.array(sub.basis)
                w = v[j] @ null
                base = p + v @ t0
                if np.linalg.norm(w) > 1e-9:  # the coordinate is free: every value, generic rest
                    perp = np.eye(len(w)) - np.outer(w, w) / (w @ w)
                    m_map = v @ null
                    q0 = base + (perp @ _GENERIC[:len(w)] - base[j] * w / (w @ w)) @ m_map.T
                    dq = (w / (w @ w)) @ m_map.T
                    q0[:j] = prefix
                    line_ok = table.operations == m * _stabiliser_sizes_on_line(number, q0, dq)
                    if cell and len(w) == 1 and line_ok.any():  # later coordinates fixed: check distances
                        keep = np.flatnonzero(line_ok)
                        line_ok[keep] = _clear(number, cell, sites, element, q0 + np.outer(_FRAC[keep], dq), relaxed)
                    ok |= line_ok
                    continue
                else:  # determined by the coordinates written: one value, generic rest
                    candidates = np.array([base + v @ (null @ _GENERIC[:null.shape[1]])])
            candidates[:, :j] = prefix
            good = table.operations == m * _stabiliser_sizes(number, np.mod(candidates, 1.0))
            if cell and (sub.dof == 0 or null.shape[1] == 0) and good.any():  # the whole site is fixed
                good &= _clear(number, cell, sites, element, candidates, relaxed)
            if cell and sub.dof == 0 and not relaxed and good.any():  # and the rest of the formula must still fit
                placed = sites + ((element, tuple(_frac_str(c) for c in sub.point)),)
                left = _fixed_left_clear(number, used | {sub.orbit}, cell, placed, after)
                good &= fillable(rest, left, summary(number)[2])
            elif cell and null.shape[1] == 1 and good.any():  # one free parameter left: keep a clear point on it
                direction = np.array(sub.basis) @ null[:, 0]
                steps = np.arange(1000) / 1000.0 / max(np.abs(direction).max(), 1e-9)
                line = candidates[0] + np.outer(steps, direction)
                line[:, :j] = prefix
                good &= bool(_clear(number, cell, sites, element, line, relaxed).any())
            idx = np.rint(np.mod(candidates[:, j], 1.0) * 10_000).astype(np.int64)
            spread = _ROUNDING if sub.dof else 0  # coordinates fixed by earlier ones were rounded one by one
            for near in range(-spread, spread + 1):
                ok[(idx[good] + near) % 10_000] = True
    return ok


def _fixed_orbit_at(number: int, m: int, coords: tuple[str, ...]) -> int:
    """The fixed orbit of multiplicity ``m`` a site at ``coords`` occupies, or -1 (a free position)."""
    point = np.array([float(c) for c in coords])
    for sub in wyckoff_table(number).subspaces:
        if sub.multiplicity == m and sub.dof == 0:
            d = point - np.array(sub.point)
            if np.all(np.abs(d - np.round(d)) < _SOLVE_TOL):
                return sub.orbit
    return -1


def _elements_left(formula: tuple[tuple[str, int], ...], remaining: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(el for (el, _), c in zip(formula, remaining) if c)


@lru_cache(maxsize=4096)
def _fixed_left_clear(number: int, used: frozenset[int], cell: tuple[str, ...], sites: tuple,
                      elements: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """``(multiplicity, orbits)`` of the fixed Wyckoff orbits still free: not occupied, and (given
    the cell) not within :func:`min_distance` of the atoms placed for every element in ``elements``."""
    table = wyckoff_table(number)
    reps: dict[int, Subspace] = {}
    for sub in table.subspaces:
        if sub.dof == 0 and sub.orbit not in used:
            reps.setdefault(sub.orbit, sub)
    counts: dict[int, int] = {}
    for sub in reps.values():
        point = np.array([sub.point])
        if not cell or any(_clear(number, cell, sites, el, point)[0] for el in elements):
            counts[sub.multiplicity] = counts.get(sub.multiplicity, 0) + 1
    return tuple((m, counts.get(m, 0)) for m, _ in table.fixed)


def _site_branches(ctx: _Ctx, m: int, geometric: bool = True) -> tuple[bool, bool]:
    """Whether a site of multiplicity ``m`` of the current element may go on a free position,
    and on a fixed one, leaving the rest of the composition fillable (``geometric``: on fixed
    orbits not blocked by the atoms placed so far)."""
    _, _, free = summary(ctx.group)
    table = wyckoff_table(ctx.group)
    e = next(i for i, c in enumerate(ctx.remaining) if c)
    if m > ctx.remaining[e]:
        return False, False
    rest = ctx.remaining[:e] + (ctx.remaining[e] - m,) + ctx.remaining[e + 1:]
    left = (_fixed_left_clear(ctx.group, ctx.used, ctx.cell, ctx.sites, _elements_left(ctx.formula, ctx.remaining))
            if geometric else _fixed_left(table, ctx.used))
    free_ok = m in free and fillable(rest, left, free)
    fewer = tuple((mm, k - (mm == m)) for mm, k in left)
    fixed_ok = any(mm == m and k > 0 for mm, k in left) and fillable(rest, fewer, free)
    return free_ok, fixed_ok


@lru_cache(maxsize=4096)
def _multiplicities(ctx: _Ctx) -> tuple[int, ...]:
    """The multiplicities the next site may have: those with a place at the distances
    :func:`min_distance` asks for, or, where the atoms already placed leave none (a dead end the
    sampler must not reach), those the Wyckoff positions alone allow."""
    table = wyckoff_table(ctx.group)
    placed = tuple(m for m in table.multiplicities if _has_place(ctx, m))
    return placed or tuple(m for m in table.multiplicities if any(_site_branches(ctx, m, geometric=False)))


def _has_place(ctx: _Ctx, m: int) -> bool:
    """Whether a site of multiplicity ``m`` can be written now: some first coordinate is allowed."""
    free_ok, fixed_ok = _site_branches(ctx, m)
    if not (free_ok or fixed_ok):
        return False
    e = next(i for i, c in enumerate(ctx.remaining) if c)
    rest = ctx.remaining[:e] + (ctx.remaining[e] - m,) + ctx.remaining[e + 1:]
    return bool(_coord_ok(ctx.group, m, ctx.used, free_ok, fixed_ok, (), ctx.cell, ctx.sites, ctx.formula[e][0],
                          rest, _elements_left(ctx.formula, rest)).any())


def _angle_ok(number: int, i: int, cell: tuple[str, ...]) -> Callable[[int], np.ndarray]:
    """Allowed fractional parts per integer part of free angle ``i``: inside :data:`ANGLE_RANGE`,
    and for the last angle of a triclinic cell, a cell of positive volume."""
    def ok(whole: int) -> np.ndarray:
        value = whole + _FRAC
        good = (value >= ANGLE_RANGE[0]) & (value <= ANGLE_RANGE[1])
        if i == 5 and crystal_system(number) == "triclinic":
            ca, cb = math.cos(math.radians(float(cell[3]))), math.cos(math.radians(float(cell[4])))
            cg = np.cos(np.radians(value))
            good &= 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg > 0.05
        return good
    return ok


@lru_cache(maxsize=65536)
def _segment(ctx: _Ctx):
    """What the sample decides at ``ctx``: a :class:`_Choice`, a :class:`_Number` or ``None`` (end)."""
    if ctx.phase == "formula":
        options = []
        for z in range(1, MAX_FORMULA_UNITS + 1):
            formula = tuple((el, n * z) for el, n in ctx.reduced)
            if sum(n for _, n in formula) <= MAX_CELL_ATOMS:
                options.append(_formula_text(formula) + "\n")
        return _choice(options)
    if ctx.phase == "group":
        counts = tuple(n for _, n in ctx.formula)
        return _choice(spacegroups.symbol_of(g) + "\n" for g in space_groups_for(counts))
    if ctx.phase == "cell":
        i = len(ctx.cell)
        if i < 3:  # every atom has images one lattice vector away: no shorter than min_distance
            shortest = max([LENGTH_RANGE[0]] + [min_distance(el, el) for el, _ in ctx.formula])
            return _number(range(int(shortest), int(LENGTH_RANGE[1])), "\n", lambda whole: whole + _FRAC >= shortest)
        return _number(range(int(ANGLE_RANGE[0]), int(ANGLE_RANGE[1]) + 1), "\n", _angle_ok(ctx.group, i, ctx.cell))
    if ctx.phase == "mult":
        return _choice(f"{m} " for m in _multiplicities(ctx))
    if ctx.phase == "coord":
        e = next(i for i, c in enumerate(ctx.remaining) if c)
        rest = ctx.remaining[:e] + (ctx.remaining[e] - ctx.mult,) + ctx.remaining[e + 1:]
        ok = np.zeros(len(_FRAC), dtype=bool)
        if not ctx.loose:
            free_ok, fixed_ok = _site_branches(ctx, ctx.mult)
            ok = _coord_ok(ctx.group, ctx.mult, ctx.used, free_ok, fixed_ok, ctx.coords, ctx.cell, ctx.sites,
                           ctx.formula[e][0], rest, _elements_left(ctx.formula, rest))
        if not ok.any():  # the distances leave no place: atoms only kept apart, then the Wyckoff rules alone
            free_ok, fixed_ok = _site_branches(ctx, ctx.mult, geometric=False)
            ok = _coord_ok(ctx.group, ctx.mult, ctx.used, free_ok, fixed_ok, ctx.coords, ctx.cell, ctx.sites,
                           ctx.formula[e][0], relaxed=True)
            if not ok.any():
                ok = _coord_ok(ctx.group, ctx.mult, ctx.used, free_ok, fixed_ok, ctx.coords)
        return _number([0], " ", lambda whole: ok)
    return None


def _next_cell(ctx: _Ctx, lit: str) -> _Ctx:
    """Write the forced cell parameters up to the next free one (or the derived lines after them)."""
    cell = ctx.cell
    while len(cell) < 6:
        i = len(cell)
        forced = _forced_cell(ctx.group, i, cell)
        if forced is None:
            return replace(ctx, phase="cell", lit=lit + _CELL_KEYS[i] + " ", cell=cell)
        lit += f"{_CELL_KEYS[i]} {forced}\n"
        cell = cell + (forced,)
    done = replace(ctx, cell=cell)
    return _next_row(done, lit + _tail(done))


def _next_row(ctx: _Ctx, lit: str) -> _Ctx:
    """Start the next site row (its element and label are forced) or end the loop."""
    if not any(ctx.remaining):
        return replace(ctx, phase="end", lit=lit, mult=0, coords=())
    e = next(i for i, c in enumerate(ctx.remaining) if c)
    el = ctx.formula[e][0]
    return replace(ctx, phase="mult", lit=lit + f"  {el}  {el}{ctx.rows}  ", mult=0, coords=(), loose=False)


def _decide(ctx: _Ctx, value: str) -> _Ctx:
    """The context after the decision of ``ctx.phase`` was written as ``value``."""
    if ctx.phase == "formula":
        formula = tuple((el, int(n)) for el, n in re.findall(r"([A-Z][a-z]?)(\d+)", value))
        return replace(ctx, phase="group", lit="_symmetry_space_group_name_H-M ", formula=formula,
                       remaining=tuple(n for _, n in formula))
    if ctx.phase == "group":
        return _next_cell(replace(ctx, group=spacegroups.number_of(value)), "")
    if ctx.phase == "cell":
        return _next_cell(replace(ctx, cell=ctx.cell + (value,)), "")
    if ctx.phase == "mult":
        m = int(value)
        return replace(ctx, phase="coord", lit=" ", mult=m, coords=(), loose=not _has_place(ctx, m))
    coords = ctx.coords + (value,)
    if len(coords) < 3:
        return replace(ctx, lit=" ", coords=coords)
    e = next(i for i, c in enumerate(ctx.remaining) if c)
    orbit = _fixed_orbit_at(ctx.group, ctx.mult, coords)
    remaining = ctx.remaining[:e] + (ctx.remaining[e] - ctx.mult,) + ctx.remaining[e + 1:]
    done = replace(ctx, remaining=remaining, rows=ctx.rows + 1, sites=ctx.sites + ((ctx.formula[e][0], coords),),
                   used=ctx.used | {orbit} if orbit >= 0 else ctx.used)
    return _next_row(done, " 1\n")


@lru_cache(maxsize=1 << 18)
def step(state: State, ch: str) -> State | None:
    """The parser state after one more character, or ``None`` if the text form does not allow it."""
    ctx, typed = state
    if ctx.lit:
        return (replace(ctx, lit=ctx.lit[1:]), "") if ctx.lit[0] == ch else None
    seg = _segment(ctx)
    if seg is None:
        return None
    if isinstance(seg, _Choice):
        new = typed + ch
        if new in seg.options:
            return _decide(ctx, new[:-1]), ""
        return (ctx, new) if new in seg.prefixes else None
    new = _number_step(seg, typed, ch)
    if new is None:
        return None
    return (_decide(ctx, typed), "") if new == "DONE" else (ctx, new)


def feed(state: State | None, text: str) -> State | None:
    """The parser state after ``text`` (``None`` once a character is not allowed)."""
    for ch in text:
        if state is None:
            return None
        state = step(state, ch)
    return state


def can_end(state: State | None) -> bool:
    """Whether the text may end here (every site written)."""
    return state is not None and state[0].phase == "end" and not state[0].lit


# --------------------------------------------------------------------------- prompts

_FORMULA = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_prompt_formula(prompt: str) -> tuple[tuple[tuple[str, int], ...], bool, str]:
    """The composition of a prompt's ``data_`` line, in the text form's element order.

    Returns ``(formula, reduced, rest)``: ``reduced`` is True for a formula written without counts
    (``data_NaCl``: the formula units are still to be chosen), ``rest`` the prompt after the
    ``data_`` line. Raises :class:`ConfigError` (not a ``data_`` line, not a formula, counts on
    some elements only, an element twice) or :class:`UnknownElementError`.
    """
    from pymatgen.core import Element

    text = prompt.lstrip()
    if not text.startswith("data_"):
        raise ConfigError(f"prompt {prompt[:40]!r}: a crystal text starts with a data_ line (e.g. data_Na4Cl4)")
    line, _, rest = text.partition("\n")
    body = line[5:].strip()
    if not body:
        raise ConfigError("prompt 'data_': constrained sampling needs a composition, e.g. data_Na4Cl4 "
                          "(the cell's atoms) or data_NaCl (the model chooses the formula units)")
    parts = _FORMULA.findall(body)
    if "".join(el + n for el, n in parts) != body:
        raise ConfigError(f"prompt data_{body}: not a composition (write element symbols with counts, "
                          "e.g. data_Na4Cl4)")
    for el, _ in parts:
        if not Element.is_valid_symbol(el):
            raise UnknownElementError(f"prompt data_{body}: unknown element {el!r}")
    if len({el for el, _ in parts}) != len(parts):
        raise ConfigError(f"prompt data_{body}: an element appears twice; write each once with its count")
    with_counts = [bool(n) for _, n in parts]
    if any(with_counts) and not all(with_counts):
        raise ConfigError(f"prompt data_{body}: counts on some elements only; write every count "
                          "(data_Na4Cl4, the cell's atoms) or none (data_NaCl, formula units chosen)")
    if any(int(n) == 0 for _, n in parts if n):
        raise ConfigError(f"prompt data_{body}: a count of 0")
    formula = tuple(sorted(((el, int(n) if n else 1) for el, n in parts), key=lambda p: _element_key(p[0])))
    if not all(with_counts):
        from math import gcd
        from functools import reduce

        g = reduce(gcd, (n for _, n in formula))
        formula = tuple((el, n // g) for el, n in formula)
    return formula, not all(with_counts), rest


def _group_message(formula: tuple[tuple[str, int], ...], number: int) -> str:
    _, fixed, free = summary(number)
    fixed_text = ", ".join(f"{m} (x{k}, fixed)" for m, k in fixed)
    free_text = ", ".join(str(m) for m in sorted(free))
    return (f"space group {spacegroups.symbol_of(number)} ({number}) cannot hold {_formula_text(formula)}: "
            f"no sum of its Wyckoff multiplicities ({free_text}{'; ' if fixed_text else ''}{fixed_text}) "
            "fills every element's count")


def start(prompt: str) -> tuple[str, State]:
    """The prompt to give the model (its ``data_`` line in the text form's element order) and the
    parser state after it. Raises :class:`ConfigError` for a prompt the text form or the
    constraints cannot continue (naming what is wrong) before any sampling."""
    formula, reduced, rest = parse_prompt_formula(prompt)
    if reduced:
        state: State = (_Ctx(phase="formula", reduced=formula), "")
        head = "data_"
    else:
        state = (_Ctx(phase="group", lit="_symmetry_space_group_name_H-M ", formula=formula,
                      remaining=tuple(n for _, n in formula)), "")
        head = "data_" + _formula_text(formula) + "\n"
    if rest:
        match = re.match(r"_symmetry_space_group_name_H-M\s+(\S+)", rest)
        if match and not reduced:
            number = spacegroups.number_of(match.group(1))
            if number not in space_groups_for(n for _, n in formula):
                raise ConfigError("prompt: " + _group_message(formula, number))
    if reduced and rest:
        raise ConfigError("prompt: a reduced formula (no counts) must be the whole prompt; write the cell "
                          "composition (e.g. data_Na4Cl4) to prompt with more lines")
    after = feed(state, rest)
    if after is None:
        good = rest
        while good and feed(state, good) is None:
            good = good[:-1]
        raise ConfigError(f"prompt: the text form does not allow {rest[len(good):len(good) + 30]!r} after "
                          f"{(head + good)[-40:]!r} (constrained sampling continues canonical crystal text)")
    return head + rest, after


# --------------------------------------------------------------------------- tokens

class _Vocab:
    """A tokenizer's token strings as a character trie (special tokens left out)."""

    def __init__(self, tokenizer):
        special = set(tokenizer.all_special_ids)
        self.strings: dict[int, str] = {}
        self.root: dict = {}
        for i in range(len(tokenizer)):
            if i in special:
                continue
            text = tokenizer.decode([i])
            if not text:
                continue
            self.strings[i] = text
            node = self.root
            for ch in text:
                node = node.setdefault(ch, {})
            node.setdefault(None, []).append(i)

    def allowed(self, state: State) -> list[int]:
        """Every token whose whole string the parser accepts from ``state``."""
        out: list[int] = []
        stack = [(self.root, state)]
        while stack:
            node, st = stack.pop()
            for ch, child in node.items():
                if ch is None:
                    continue
                nxt = step(st, ch)
                if nxt is None:
                    continue
                out.extend(child.get(None, ()))
                stack.append((child, nxt))
        return out


_VOCABS: dict[int, tuple[object, _Vocab]] = {}  # id -> (the tokenizer, kept so its id is not reused; its trie)


def _vocab(tokenizer) -> _Vocab:
    key = id(tokenizer)
    if key not in _VOCABS:
        _VOCABS[key] = (tokenizer, _Vocab(tokenizer))
    return _VOCABS[key][1]


class CrystalTextLogitsProcessor:
    """A ``transformers`` logits processor that keeps every sample of ``model.generate`` inside the
    constrained text form (see the module docstring for what is guaranteed).

    Build it with the tokenizer and the prompt, and prompt the model with :attr:`prompt` (the
    prompt's ``data_`` line in the text form's element order, ``data_`` alone for a reduced
    formula)::

        proc = CrystalTextLogitsProcessor(tok, "data_Na4Cl4")
        ids = tok(proc.prompt, add_special_tokens=False)["input_ids"]
        model.generate(torch.tensor([[tok.bos_token_id] + ids]), do_sample=True,
                       logits_processor=LogitsProcessorList([proc]), ...)

    Each row's text is parsed incrementally from the tokens it adds; the allowed next tokens of a
    parser state are cached. ``<eos>`` is allowed only when every site is written. A row whose
    parser fails (a token the processor did not allow, e.g. forced by another processor) is
    counted in :attr:`dead_rows` and may only end.
    """

    def __init__(self, tokenizer, prompt: str):
        self.prompt, self._start = start(prompt)
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ConfigError("constrained sampling needs a tokenizer with an <eos> token")
        self.vocab = _vocab(tokenizer)
        unknown = [ch for ch in set(self.prompt) if not any(ch in s for s in self.vocab.strings.values())]
        if unknown:
            raise ConfigError(f"prompt {self.prompt!r}: characters {unknown} are not in the tokenizer's vocabulary")
        self._cache: dict = {}
        self._rows: dict[int, tuple[int, State | None | str]] = {}
        self._prompt_len: int | None = None
        self.dead_rows = 0

    def _allowed(self, state) -> "object":
        import torch

        if state not in self._cache:
            if state == "done" or state is None:
                ids = [self.eos]
            else:
                ids = self.vocab.allowed(state) + ([self.eos] if can_end(state) else [])
                if not ids:  # the constraints left nothing: end rather than loop (never expected)
                    ids = [self.eos]
            self._cache[state] = torch.tensor(sorted(set(ids)), dtype=torch.long)
        return self._cache[state]

    def __call__(self, input_ids, scores):
        import torch

        length = input_ids.shape[1]
        if self._prompt_len is None or length <= self._prompt_len:  # a new generate call
            self._prompt_len, self._rows = length, {}
        mask = torch.full_like(scores, float("-inf"))
        for r in range(input_ids.shape[0]):
            seen, state = self._rows.get(r, (self._prompt_len, self._start))
            for t in input_ids[r, seen:].tolist():
                if state in ("done", None):
                    break
                if t == self.eos:
                    state = "done"
                    break
                state = feed(state, self.vocab.strings.get(t, "\x00"))
                if state is None:
                    self.dead_rows += 1
            self._rows[r] = (length, state)
            mask[r, self._allowed(state)] = 0.0
        return scores + mask


def _write_summary_table(path: str) -> None:
    """Regenerate :mod:`crystext.wyckoff_data` from :func:`wyckoff_summary` (all 230 groups)."""
    lines = ['"""Wyckoff multiplicities of the 230 space groups (standard settings), precomputed by',
             "``crystext.constrained.wyckoff_summary`` (regenerate: ``python -m crystext.constrained``).",
             "",
             "number -> (operations of the conventional cell, ((multiplicity, fixed orbits), ...),",
             "(multiplicities of positions with free parameters, ...)). ``tests/test_constrained.py`` checks",
             'entries against the computation."""',
             "",
             "SUMMARY = {"]
    for n in range(1, 231):
        ops, fixed, free = wyckoff_summary(n)
        lines.append(f"    {n}: ({ops}, {fixed!r}, {tuple(sorted(free))!r}),")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines + ["}"]) + "\n")


if __name__ == "__main__":
    from pathlib import Path

    _write_summary_table(str(Path(__file__).with_name("wyckoff_data.py")))
