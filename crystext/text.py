"""Structure <-> canonical CIF-like text (CrystaLLM-compatible), and parsing of that text.

The default form is CrystaLLM's: the structure is symmetrised with spglib (``symprec`` 0.1),
written in the standard conventional setting as its asymmetric unit with Wyckoff multiplicities,
the short H-M symbol and number, a ``data_`` line with the cell composition, an optional
atom-property block, a single ``x, y, z`` symmetry line, and every number rounded to 4 decimals.
The choice of orbit representative and the order of sites are canonical, so symmetry-equivalent
inputs (rotated, translated, permuted) give the same text.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import spglib
from pymatgen.core import Composition, Element, Lattice, Structure

from . import limits, spacegroups
from .errors import CIFParseError, EmptyStructureError, SpaceGroupError, UnknownElementError
from .inputs import StructureLike, option_hint, resolve_disorder, source_name, to_structure

#: Text styles: ``"default"`` (crystext's layout: loop columns indented, values two spaces apart)
#: and ``"crystallm"`` (CrystaLLM's preprocessed CIFs: no indentation, single spaces, the
#: atom-property block right after the ``data_`` line), which CrystaLLM's evaluation code reads.
STYLES = ("default", "crystallm")

DECIMALS = 4
_FRAC_TOL = 2e-3  # fractional tolerance for merging symmetry images of rounded coordinates


def _fmt(x: float, decimals: int = DECIMALS) -> str:
    s = f"{x:.{decimals}f}"
    return "0." + "0" * decimals if s.startswith("-") and float(s) == 0 else s


def _wrap(frac: np.ndarray, decimals: int = DECIMALS) -> np.ndarray:
    """Round, wrap into [0, 1) and round again so that 0.99996 becomes 0.0 rather than 1.0."""
    out = np.round(np.mod(np.round(frac, decimals), 1.0), decimals)
    out[out >= 1.0] = 0.0
    return out + 0.0  # no -0.0


def _orbit(rot: np.ndarray, trans: np.ndarray, frac: np.ndarray, decimals: int = DECIMALS) -> np.ndarray:
    """All distinct images of one fractional position under the operations, wrapped to [0, 1)."""
    images = np.mod(np.einsum("nij,j->ni", rot, frac) + trans, 1.0)
    close = np.all(np.abs((images[:, None, :] - images[None, :, :] + 0.5) % 1.0 - 0.5) < _FRAC_TOL, axis=2)
    first = np.argmax(close, axis=1)  # the first image each one coincides with
    if np.all(first[first] == first):  # "coincides" groups the images cleanly: keep the first of each
        return images[first == np.arange(len(images))]
    unique: list[int] = []  # chains of near-coincident images: keep each image no kept one is close to
    for i in range(len(images)):
        if not close[i, unique].any():
            unique.append(i)
    return images[unique]


def _element_order(el: Element) -> tuple:
    x = el.X if not math.isnan(el.X) else 100.0
    return (x, el.symbol)


@dataclass
class _Site:
    element: Element
    multiplicity: int
    frac: np.ndarray


def _symmetrised_sites(structure: Structure, symprec: float, angle_tolerance: float):
    """Standard conventional cell (spglib), its space-group number and canonical asymmetric sites."""
    numbers = [site.specie.Z for site in structure]
    cell = (structure.lattice.matrix, structure.frac_coords, numbers)
    dataset = None
    for kwargs in ({"symprec": symprec, "angle_tolerance": angle_tolerance}, {"symprec": 1e-5}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
            try:
                dataset = spglib.get_symmetry_dataset(cell, **kwargs)
            except spglib.SpglibError:
                dataset = None
        if dataset is not None:
            break
    if dataset is None:  # spglib could not analyse the cell at all: fall back to P1
        return structure.lattice, 1, [
            _Site(site.specie, 1, _wrap(site.frac_coords)) for site in structure
        ]
    number = int(dataset.number)
    lattice = Lattice(dataset.std_lattice)
    rot, trans = spacegroups._operations_for_hall(spacegroups.default_hall_number(number))
    positions = np.asarray(dataset.std_positions)
    types = np.asarray(dataset.std_types)
    refined = _symmetrise(structure, dataset, rot, trans, lattice)
    if refined is not None:
        positions, types = refined
    seen = np.zeros(len(positions), dtype=bool)
    orbits: list[tuple[int, np.ndarray]] = []
    for i in range(len(positions)):
        if seen[i]:
            continue
        orbit = _orbit(rot, trans, positions[i])
        diff = (positions[:, None, :] - orbit[None, :, :] + 0.5) % 1.0 - 0.5
        seen |= np.any(np.all(np.abs(diff) < _FRAC_TOL, axis=2), axis=1) & (types == types[i])
        orbits.append((int(types[i]), orbit))
    return lattice, number, _canonical_sites(number, orbits, lattice)


def _symmetrise(structure: Structure, dataset, rot: np.ndarray, trans: np.ndarray, lattice: Lattice):
    """Symmetrised positions in the standard setting that depend only on the *set* of atoms.

    spglib's own ``std_positions`` average each orbit relative to an origin it estimates from the
    input order, so two descriptions of one slightly distorted crystal can differ by ~1e-5 and
    round differently at the 4th decimal. Here the origin is refined by least squares over every
    (operation, atom) pair, then each atom is replaced by the average of its symmetry images.
    Returns ``None`` (keep spglib's positions) if an image finds no partner atom.
    """
    P, p = np.asarray(dataset.transformation_matrix), np.asarray(dataset.origin_shift)
    x = np.mod(structure.frac_coords @ P.T + p, 1.0)  # input atoms in the standard cell
    z = np.array([site.specie.Z for site in structure])
    # the conventional cell holds det(P^-1) copies of the input cell: add the centring images
    cent = _centrings(int(dataset.number))
    x = np.mod((x[None, :, :] + cent[:, None, :]).reshape(-1, 3), 1.0)
    z = np.tile(z, len(cent))
    if len(x) > len(dataset.std_types):  # a supercell was given: its copies coincide here
        d = x[:, None, :] - x[None, :, :]
        d -= np.round(d)
        same = (np.abs(d).max(axis=2) < 1e-5) & (z[:, None] == z[None, :])
        first = np.argmax(same, axis=1)  # the first atom each one coincides with
        keep = first == np.arange(len(x))
        x, z = x[keep], z[keep]
    if len(x) != len(dataset.std_types):
        return None
    metric = lattice.matrix @ lattice.matrix.T
    a = rot - np.eye(3)  # the mismatch e of g(y_i) moves by (R - I) s when the origin moves by s
    shift = np.zeros(3)
    for _ in range(2):
        e = _mismatch(x + shift, z, rot, trans, metric, lattice.matrix)
        if e is None:
            return None
        lhs = np.einsum("gji,gjk->ik", a, a) * len(x)
        rhs = -np.einsum("gji,gnj->i", a, e)
        shift = shift + np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    y = x + shift
    e = _mismatch(y, z, rot, trans, metric, lattice.matrix)
    if e is None:
        return None
    # atom i's estimate from operation g: g^-1 of the partner of g(y_i), unwrapped near y_i
    estimates = y[None, :, :] - np.einsum("gij,gnj->gni", np.linalg.inv(rot), e)
    return np.mod(estimates.mean(axis=0), 1.0), z


@lru_cache(maxsize=None)
def _centrings(number: int) -> np.ndarray:
    """The pure translations (centring vectors) of a space group's standard setting."""
    rot, trans = spacegroups._operations_for_hall(spacegroups.default_hall_number(number))
    return np.array([t for r, t in zip(rot, trans) if np.allclose(r, np.eye(3))])


def _mismatch(y: np.ndarray, z: np.ndarray, rot: np.ndarray, trans: np.ndarray, metric: np.ndarray,
              matrix: np.ndarray | None = None):
    """For every operation g and atom i: g(y_i) minus its nearest same-species atom (wrapped);
    ``None`` if some image has no atom of its species within reach. Chunked over operations so
    memory stays ~ 4e6 pair distances whatever the cell size; large cells (given ``matrix``, the
    lattice vectors as rows) look partners up in a k-d tree instead of comparing every pair."""
    n = len(y)
    chunk = max(1, int(4e6 // (n * n)))
    if matrix is not None and len(rot) * n * n > _KDTREE_PAIRS:
        images = np.concatenate([
            np.einsum("gij,nj->gni", rot[lo:lo + chunk], y) + trans[lo:lo + chunk, None, :]
            for lo in range(0, len(rot), chunk)
        ])
        out = _mismatch_kdtree(images, y, z, matrix)
        if out is not None:
            return out
    same = z[:, None] == z[None, :]
    out = np.empty((len(rot), n, 3))
    for lo in range(0, len(rot), chunk):
        images = np.einsum("gij,nj->gni", rot[lo:lo + chunk], y) + trans[lo:lo + chunk, None, :]
        d = images[:, :, None, :] - y[None, None, :, :]
        d -= np.round(d)
        dc = d @ matrix if matrix is not None else None  # Cartesian differences (a matmul, not a 3-way einsum)
        dist = np.einsum("gnmi,gnmi->gnm", dc, dc) if dc is not None else np.einsum("gnmi,ij,gnmj->gnm", d, metric, d)
        dist[:, ~same] = np.inf
        partner = np.argmin(dist, axis=2)
        best = np.take_along_axis(dist, partner[..., None], axis=2)[..., 0]
        if not np.all(np.isfinite(best)):
            return None
        out[lo:lo + chunk] = np.take_along_axis(d, partner[..., None, None], axis=2)[:, :, 0, :]
    return out


_KDTREE_PAIRS = 1e6  # above this many (operation, atom, atom) triples, use the k-d tree
_CELLS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


def _mismatch_kdtree(images: np.ndarray, y: np.ndarray, z: np.ndarray, matrix: np.ndarray):
    """:func:`_mismatch` in O(g n log n): the nearest same-species atom of each image from a k-d
    tree over the atoms and their 26 neighbouring cells. It gives the same partners (and the same
    numbers) as the pairwise search whenever every partner lies within half the smallest
    interplanar spacing, which makes the wrapped fractional difference the true shortest one;
    otherwise it returns ``None`` and the caller compares every pair."""
    from scipy.spatial import cKDTree

    spacing = 1.0 / np.linalg.norm(np.linalg.inv(matrix).T, axis=1).max()
    queries = np.mod(images, 1.0) @ matrix  # (g, n, 3) Cartesian
    home = np.mod(y, 1.0)
    partner = np.empty(images.shape[:2], dtype=np.int64)
    for species in np.unique(z):
        idx = np.flatnonzero(z == species)
        points = ((home[idx][None, :, :] + _CELLS[:, None, :]).reshape(-1, 3)) @ matrix
        dist, hit = cKDTree(points).query(queries[:, idx].reshape(-1, 3))
        if not np.all(dist < 0.5 * spacing):
            return None
        partner[:, idx] = idx[hit % len(idx)].reshape(len(images), len(idx))
    d = images - y[partner]
    d -= np.round(d)
    return d


def _canonical_sites(number: int, orbits: list[tuple[int, np.ndarray]], lattice: Lattice) -> list[_Site]:
    """The asymmetric unit under the origin/axis choice that gives the smallest site list.

    Each orbit is represented by its lexicographically smallest member; the structure is tried
    under every map of the space group's normaliser that is also a symmetry of the lattice, and
    along polar axes with each atom of the rarest orbits placed on the origin. All maps are
    applied at once: the site list of a map, sorted by (element, multiplicity, position), is one
    row of numbers, and the smallest row wins (the first map on ties).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        maps, free = spacegroups.origin_choices(number, lattice.matrix)
    if any(free):
        key = min((len(o), z) for z, o in orbits)
        rare = np.vstack([o for z, o in orbits if (len(o), z) == key])
        mask = np.array(free, dtype=float)
        maps = [(m, t - (m @ p) * mask) for m, t in maps for p in rare]
    lin = np.stack([m for m, _ in maps])  # (M, 3, 3)
    shifts = np.stack([t for _, t in maps])  # (M, 3)
    points = np.vstack([o for _, o in orbits])  # every atom of the standard cell, orbit by orbit
    sizes = np.array([len(o) for _, o in orbits])
    owner = np.repeat(np.arange(len(orbits)), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # x' = m x + t written as a fixed sum of products (m is integer), so every map and every
    # orbit is computed the same way
    moved = (
        points[None, :, 0, None] * lin[:, None, :, 0]
        + points[None, :, 1, None] * lin[:, None, :, 1]
        + points[None, :, 2, None] * lin[:, None, :, 2]
    ) + shifts[:, None, :]
    moved = _wrap(moved)  # (M, N, 3)
    # the representative of each orbit: its lexicographically smallest member
    order = np.lexsort((moved[..., 2], moved[..., 1], moved[..., 0], np.broadcast_to(owner, moved.shape[:2])), axis=-1)
    reps = np.take_along_axis(moved, order[:, starts, None], axis=1)  # (M, n_orbits, 3)
    elements = [Element.from_Z(z) for z, _ in orbits]
    rank = {el: r for r, el in enumerate(sorted(set(elements), key=_element_order))}
    el_rank = np.array([rank[el] for el in elements])
    rounded = np.round(reps, DECIMALS)
    rows = np.empty_like(reps)
    site_orders = np.empty(reps.shape[:2], dtype=np.int64)
    for k in range(len(maps)):
        so = np.lexsort((rounded[k, :, 2], rounded[k, :, 1], rounded[k, :, 0], sizes, el_rank))
        site_orders[k] = so
        rows[k] = reps[k, so]
    flat = rows.reshape(len(maps), -1)
    best = int(np.lexsort(flat.T[::-1])[0])
    return [_Site(elements[o], int(sizes[o]), reps[best, o].copy()) for o in site_orders[best]]


def _site_key(s: _Site) -> tuple:
    return (_element_order(s.element), s.multiplicity, tuple(np.round(s.frac, DECIMALS)))


def structure_to_text(
    structure: StructureLike,
    symprec: float = 0.1,
    angle_tolerance: float = 5.0,
    p1: bool = False,
    properties: bool = False,
    disorder: str = "raise",
    decimals: int = DECIMALS,
    *,
    style: str = "default",
    name: str | None = None,
    max_atoms: int | None = limits.DEFAULT_MAX_ATOMS,
    time_limit: float | None = limits.DEFAULT_TIME_LIMIT,
) -> str:
    """Write a structure as canonical crystal text.

    Args:
        structure: a pymatgen ``Structure`` (or anything :func:`crystext.inputs.to_structure` takes).
        symprec: spglib symmetry tolerance in angstrom (CrystaLLM uses 0.1).
        angle_tolerance: spglib angle tolerance in degrees.
        p1: write every site of the given cell in space group P1 instead of symmetrising.
        properties: add the atom-property block (electronegativity, atomic radius, ionic radius).
        disorder: ``"raise"`` (default), ``"dominant"`` or ``"order"`` for partially occupied sites;
            a treatment that was applied is stated in the text as ``_crystext_disorder``.
        decimals: digits after the point for every number.
        style: ``"default"`` or ``"crystallm"`` (same content in CrystaLLM's whitespace: no
            indentation, single spaces, so CrystaLLM's evaluation code reads it; see :data:`STYLES`).
        name: how error messages call the input (default: its file name, or ``structure``).
        max_atoms: refuse an input cell of more atoms (checked before any symmetry work;
            ``None`` or 0: no limit; default :data:`crystext.limits.DEFAULT_MAX_ATOMS`).
        time_limit: give up after this many seconds (``None`` or 0: no limit; default
            :data:`crystext.limits.DEFAULT_TIME_LIMIT`).

    Raises:
        DisorderError, UnknownElementError, EmptyStructureError, CIFParseError,
        StructureTooLargeError, RecordTimeoutError.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, not {style!r}")
    if type(structure).__name__ in ("Structure", "Atoms") and hasattr(structure, "__len__"):
        _check_atoms(len(structure), max_atoms, name or source_name(structure))  # before any per-site work
    elif isinstance(structure, (str, os.PathLike)) and max_atoms:
        structure, name = _precount_cif(structure, name, max_atoms)  # before pymatgen parses it
    hint = f"raise it with {option_hint('time_limit', 4 * time_limit if time_limit else 0)} (0: no limit)"
    with limits.time_limit(time_limit, f"{name or source_name(structure)}: text conversion", hint=hint):
        structure = to_structure(structure, name=name)
        label = name or source_name(structure)
        _check_atoms(len(structure), max_atoms, label)
        return _structure_to_text(structure, label, symprec, angle_tolerance, p1, properties, disorder,
                                  decimals, style, max_atoms, time_limit)


def _precount_cif(obj, name: str | None, max_atoms: int):
    """For a CIF path or text: refuse from the atom-site rows alone when they exceed ``max_atoms``
    (pymatgen needs minutes for a 64,000-atom supercell). Returns what to parse and its name."""
    from .inputs import cif_site_count, read_text_file

    path = Path(obj) if isinstance(obj, os.PathLike) or (
        isinstance(obj, str) and "\n" not in obj and len(obj) < 4096) else None
    if path is not None and path.name.lower().endswith((".cif", ".cif.gz")) and path.is_file():
        text = read_text_file(path, str(path))
        if "data_" not in text:  # empty or not a CIF: to_structure says what is wrong with the file
            return obj, name
        name, obj = name or str(path), text
    if isinstance(obj, str) and "data_" in obj:
        _check_atoms(cif_site_count(obj), max_atoms, name or "CIF text")
    return obj, name


def _check_atoms(n: int, max_atoms: int | None, label: str) -> None:
    limits.check_size(n, max_atoms, label, hint=f"raise the limit with {option_hint('max_atoms', 2 * n)} (0: no limit)")


def _structure_to_text(structure, label, symprec, angle_tolerance, p1, properties, disorder, decimals, style,
                       max_atoms, time_limit) -> str:
    structure, treatment = resolve_disorder(structure, disorder, label, max_atoms=max_atoms, time_limit=time_limit)
    if any(getattr(sp, "oxi_state", 0) for sp in structure.composition):
        structure = structure.copy()
        structure.remove_oxidation_states()
    if p1:
        lattice, number = structure.lattice, 1
        sites = [_Site(site.specie, 1, _wrap(site.frac_coords, decimals)) for site in structure]
    else:
        lattice, number, sites = _symmetrised_sites(structure, symprec, angle_tolerance)
    sites.sort(key=_site_key)

    counts: dict[str, float] = {}
    for s in sites:
        counts[s.element.symbol] = counts.get(s.element.symbol, 0) + s.multiplicity
    comp = Composition(counts)
    elements = sorted(comp.elements, key=_element_order)
    formula_sum = " ".join(f"{el.symbol}{int(comp[el])}" for el in elements)
    reduced, z = comp.get_reduced_composition_and_factor()
    symbol = spacegroups.symbol_of(number)

    lines = [
        f"data_{formula_sum.replace(' ', '')}",
        f"_symmetry_space_group_name_H-M {symbol}",
        f"_cell_length_a {_fmt(lattice.a, decimals)}",
        f"_cell_length_b {_fmt(lattice.b, decimals)}",
        f"_cell_length_c {_fmt(lattice.c, decimals)}",
        f"_cell_angle_alpha {_fmt(lattice.alpha, decimals)}",
        f"_cell_angle_beta {_fmt(lattice.beta, decimals)}",
        f"_cell_angle_gamma {_fmt(lattice.gamma, decimals)}",
        f"_symmetry_Int_Tables_number {number}",
        f"_chemical_formula_structural {reduced.reduced_formula}",
        f"_chemical_formula_sum '{formula_sum}'",
        f"_cell_volume {_fmt(lattice.volume, decimals)}",
        f"_cell_formula_units_Z {int(z)}",
    ]
    if treatment:
        lines.append(f"_crystext_disorder {treatment}")
    if properties:
        block = [
            "loop_",
            " _atom_type_symbol",
            " _atom_type_electronegativity",
            " _atom_type_radius",
            " _atom_type_ionic_radius",
        ]
        for el in elements:
            x = 0.0 if math.isnan(el.X) else el.X
            radius = float(el.atomic_radius or 0.0)
            ionic = float(el.average_ionic_radius or 0.0)
            block.append(f"  {el.symbol}  {_fmt(x, decimals)}  {_fmt(radius, decimals)}  {_fmt(ionic, decimals)}")
        if style == "crystallm":  # CrystaLLM puts the property block first, after the data_ line
            lines[1:1] = block
        else:
            lines += block
    lines += [
        "loop_",
        " _symmetry_equiv_pos_site_id",
        " _symmetry_equiv_pos_as_xyz",
        "  1  'x, y, z'",
        "loop_",
        " _atom_site_type_symbol",
        " _atom_site_label",
        " _atom_site_symmetry_multiplicity",
        " _atom_site_fract_x",
        " _atom_site_fract_y",
        " _atom_site_fract_z",
        " _atom_site_occupancy",
    ]
    for i, s in enumerate(sites):
        x, y, zc = (_fmt(v, decimals) for v in s.frac)
        lines.append(f"  {s.element.symbol}  {s.element.symbol}{i}  {s.multiplicity}  {x}  {y}  {zc}  1")
    if style == "crystallm":
        lines = [_single_spaced(line) for line in lines]
    return "\n".join(lines) + "\n"


def _single_spaced(line: str) -> str:
    """A line in CrystaLLM's whitespace: no indentation, one space between values (quoted values kept)."""
    return " ".join(_TOKEN.findall(line))


# --------------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|\S+")


@dataclass
class ParsedText:
    """The fields of a crystal text, as written (no symmetry applied)."""

    data_formula: str
    items: dict[str, str]
    loops: list[dict[str, list[str]]]

    def loop_with(self, key: str) -> dict[str, list[str]] | None:
        return next((loop for loop in self.loops if key in loop), None)


def parse_text(text: str) -> ParsedText:
    """Split crystal text into its ``data_`` name, key-value items and loops.

    Raises :class:`CIFParseError` naming the line that is malformed.
    """
    if isinstance(text, bytes):
        from .inputs import decode_bytes

        text = decode_bytes(text, "crystal text")
    lines = text.splitlines()
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines) or not lines[i].strip().startswith("data_"):
        raise CIFParseError("crystal text: the first line must be a data_ line")
    data_formula = lines[i].strip()[5:]
    items: dict[str, str] = {}
    loops: list[dict[str, list[str]]] = []
    i += 1
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        if line == "loop_":
            headers: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip().startswith("_"):
                headers.append(lines[i].strip())
                i += 1
            if not headers:
                raise CIFParseError(f"crystal text line {i}: loop_ without column names")
            columns: dict[str, list[str]] = {h: [] for h in headers}
            while i < len(lines):
                row = lines[i].strip()
                if not row or row.startswith(("_", "loop_", "data_")):
                    break
                values = [v.strip("'\"") for v in _TOKEN.findall(row)]
                if len(values) != len(headers):
                    raise CIFParseError(
                        f"crystal text line {i + 1}: {len(values)} values for {len(headers)} columns ({row!r})"
                    )
                for h, v in zip(headers, values):
                    columns[h].append(v)
                i += 1
            loops.append(columns)
            continue
        if line.startswith("_"):
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise CIFParseError(f"crystal text line {i + 1}: {parts[0]} has no value")
            items[parts[0]] = parts[1].strip().strip("'\"")
            i += 1
            continue
        if line.startswith("data_"):
            break  # only the first block
        raise CIFParseError(f"crystal text line {i + 1}: unexpected {line!r}")
    return ParsedText(data_formula, items, loops)


def _float(parsed: ParsedText, key: str) -> float:
    if key not in parsed.items:
        raise CIFParseError(f"crystal text: missing {key}")
    try:
        return float(parsed.items[key].split("(")[0])
    except ValueError:
        raise CIFParseError(f"crystal text: {key} is not a number ({parsed.items[key]!r})") from None


@dataclass
class _Rebuilt:
    structure: Structure
    number: int | None
    stated_multiplicities: list[int]
    orbit_sizes: list[int]
    site_elements: list[str]


def _rebuild(text: str) -> tuple[ParsedText, _Rebuilt]:
    parsed = parse_text(text)
    lattice_params = [_float(parsed, f"_cell_length_{k}") for k in "abc"]
    angles = [_float(parsed, f"_cell_angle_{k}") for k in ("alpha", "beta", "gamma")]
    if min(lattice_params) <= 0:
        raise EmptyStructureError("crystal text: a cell length is not positive")
    lattice = Lattice.from_parameters(*lattice_params, *angles)
    if not lattice.volume > 1e-6 or math.isnan(lattice.volume):
        raise EmptyStructureError("crystal text: the cell has zero volume")

    number = None
    if "_symmetry_Int_Tables_number" in parsed.items:
        try:
            number = int(parsed.items["_symmetry_Int_Tables_number"])
        except ValueError:
            raise CIFParseError("crystal text: _symmetry_Int_Tables_number is not an integer") from None
    sites = parsed.loop_with("_atom_site_fract_x")
    if sites is None:
        raise EmptyStructureError("crystal text: no _atom_site loop (the cell holds no atoms)")
    symbols = sites.get("_atom_site_type_symbol") or sites.get("_atom_site_label")
    if symbols is None:
        raise CIFParseError("crystal text: _atom_site loop has no _atom_site_type_symbol")
    n = len(symbols)
    if n == 0:
        raise EmptyStructureError("crystal text: the cell holds no atoms")
    has_mults = "_atom_site_symmetry_multiplicity" in sites
    mults = sites.get("_atom_site_symmetry_multiplicity", ["0"] * n)
    fracs, stated, elems = [], [], []
    for k in range(n):
        sym = re.sub(r"[^A-Za-z]", "", symbols[k])
        if not Element.is_valid_symbol(sym):
            raise UnknownElementError(f"crystal text: unknown element {symbols[k]!r} in site {k}")
        try:
            fracs.append(np.array([float(sites[f"_atom_site_fract_{c}"][k].split("(")[0]) for c in "xyz"]))
            stated.append(int(mults[k]))
        except ValueError:
            raise CIFParseError(f"crystal text: site {k} has a non-numeric coordinate or multiplicity") from None
        elems.append(sym)

    symops = parsed.loop_with("_symmetry_equiv_pos_as_xyz")
    if symops and len(symops["_symmetry_equiv_pos_as_xyz"]) > 1:  # explicit operations win
        from pymatgen.core.operations import SymmOp

        ops = [SymmOp.from_xyz_str(s) for s in symops["_symmetry_equiv_pos_as_xyz"]]
        rot = np.array([op.rotation_matrix for op in ops])
        trans = np.array([op.translation_vector for op in ops])
    else:
        symbol = parsed.items.get("_symmetry_space_group_name_H-M")
        if symbol is None and number is None:
            raise SpaceGroupError("crystal text: no space-group symbol or number")
        halls, _ = spacegroups.settings(symbol, number)
        if not halls:  # a symbol only pymatgen knows
            rot, trans = spacegroups.operations(symbol or "", number)
        else:
            # the semisymmetrised layout (one x, y, z line, multiplicities) of crystext and
            # CrystaLLM writes a bare symbol in spglib's default setting
            conventional = symops is not None and has_mults
            hall = _choose_setting(symbol or str(number), halls, lattice, fracs, stated if has_mults else None,
                                   elems, conventional)
            rot, trans = spacegroups._operations_for_hall(hall)

    species, coords, sizes = [], [], []
    for sym, frac in zip(elems, fracs):
        orbit = _orbit(rot, trans, frac)
        species += [sym] * len(orbit)
        coords.extend(orbit)
        sizes.append(len(orbit))
    structure = Structure(lattice, species, coords)
    return parsed, _Rebuilt(structure, number, stated, sizes, elems)


_MIN_DISTANCE = 0.5  # angstrom: atoms closer than this mean a wrong setting


def _metric_fits(rot: np.ndarray, lattice: Lattice, tol: float = 0.02) -> bool:
    """Whether every rotation keeps the cell's metric (so the operations suit these axes)."""
    g = lattice.matrix @ lattice.matrix.T
    moved = np.einsum("nji,jk,nkl->nil", rot, g, rot)
    return bool(np.max(np.abs(moved - g)) <= tol * np.max(np.abs(g)))


def _choose_setting(symbol: str, halls: tuple[int, ...], lattice: Lattice, fracs: list[np.ndarray],
                    stated: list[int] | None, elems: list[str], conventional: bool) -> int:
    """The setting (Hall number) in which to expand the sites of a text naming only a symbol.

    Hexagonal vs rhombohedral axes: the one whose rotations keep the cell's metric. Origin
    choices: the ones where every site's orbit has its stated multiplicity and no two atoms come
    closer than 0.5 A; if both fit and give different crystals, the semisymmetrised text forms
    (crystext's, CrystaLLM's) mean spglib's default, anything else is refused as ambiguous.
    Raises :class:`SpaceGroupError`.
    """
    name = symbol.strip().strip("'\"")
    if len(halls) == 1:
        if spacegroups.hall_choice(halls[0]) in ("H", "R") and not _metric_fits(
            spacegroups._operations_for_hall(halls[0])[0], lattice
        ):
            raise SpaceGroupError(_axes_message(name, lattice))
        return halls[0]
    if spacegroups.hall_choice(halls[0]) in ("H", "R"):
        fitting = [h for h in halls if _metric_fits(spacegroups._operations_for_hall(h)[0], lattice)]
        if len(fitting) != 1:
            raise SpaceGroupError(_axes_message(name, lattice))
        return fitting[0]
    built = {}
    for h in halls:
        rot, trans = spacegroups._operations_for_hall(h)
        orbits = [_orbit(rot, trans, f) for f in fracs]
        if stated is not None and [len(o) for o in orbits] != stated:
            continue
        structure = Structure(lattice, [e for e, o in zip(elems, orbits) for _ in o], np.vstack(orbits))
        if len(structure) > 1:
            d = structure.distance_matrix
            np.fill_diagonal(d, np.inf)
            if d.min() < _MIN_DISTANCE:
                continue
        built[h] = structure
    if not built:
        return halls[0]  # fits no setting: the text is inconsistent, which check_text reports
    if len(built) == 1:
        return next(iter(built))
    if conventional:
        return halls[0]
    from pymatgen.analysis.structure_matcher import StructureMatcher

    first, *others = built.values()
    if all(StructureMatcher().fit(first, other) for other in others):
        return halls[0]
    choices = " or ".join(f"{name}:{spacegroups.hall_choice(h)}" for h in built)
    raise SpaceGroupError(
        f"crystal text: {name} has {len(halls)} origin choices and the sites fit both, giving different "
        f"crystals; name the setting ({choices}) or list the symmetry operations"
    )


def _axes_message(name: str, lattice: Lattice) -> str:
    return (
        f"crystal text: {name} on a cell with a={lattice.a:.4f} b={lattice.b:.4f} c={lattice.c:.4f} "
        f"alpha={lattice.alpha:.2f} beta={lattice.beta:.2f} gamma={lattice.gamma:.2f}: its operations need "
        "hexagonal axes (a = b, gamma = 120, setting :H) or rhombohedral axes (a = b = c, alpha = beta = gamma, "
        "setting :R); the cell fits neither the setting named nor any other"
    )


def text_to_structure(text: str) -> Structure:
    """Rebuild the full structure from crystal text by applying its space group's operations.

    Accepts the text form of :func:`structure_to_text` and CIF-like text naming a space group in
    any setting spglib or pymatgen knows (or listing explicit symmetry operations).

    Raises:
        CIFParseError, SpaceGroupError, UnknownElementError, EmptyStructureError, EncodingError.
    """
    return _rebuild(text)[1].structure


# --------------------------------------------------------------------------- validity

@dataclass
class TextReport:
    """Validity of one crystal text; each check is reported on its own."""

    parsable: bool = False
    formula_consistent: bool = False
    multiplicity_consistent: bool = False
    space_group_consistent: bool = False
    bond_length_score: float = 0.0
    bond_lengths_reasonable: bool = False
    #: CrystaLLM's looser forms of the first two checks: the three formulas agree once reduced, and
    #: the stated multiplicities add up to ``_chemical_formula_sum`` per element (orbits unchecked)
    reduced_formulas_agree: bool = False
    site_counts_add_up: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return (
            self.parsable
            and self.formula_consistent
            and self.multiplicity_consistent
            and self.space_group_consistent
            and self.bond_lengths_reasonable
        )

    @property
    def crystallm_valid(self) -> bool:
        """Valid as CrystaLLM's ``is_valid`` judges a CIF (the figure its paper reports): reduced
        formulas agree, site counts add up to the formula, space group and bond lengths as here.
        It never fails where :attr:`valid` passes."""
        return (
            self.parsable
            and self.reduced_formulas_agree
            and self.site_counts_add_up
            and self.space_group_consistent
            and self.bond_lengths_reasonable
        )

    def as_dict(self) -> dict:
        return {
            "parsable": self.parsable,
            "formula_consistent": self.formula_consistent,
            "multiplicity_consistent": self.multiplicity_consistent,
            "space_group_consistent": self.space_group_consistent,
            "bond_length_score": self.bond_length_score,
            "bond_lengths_reasonable": self.bond_lengths_reasonable,
            "reduced_formulas_agree": self.reduced_formulas_agree,
            "site_counts_add_up": self.site_counts_add_up,
            "valid": self.valid,
            "crystallm_valid": self.crystallm_valid,
            "errors": list(self.errors),
        }


def _composition(formula: str) -> Composition:
    return Composition(formula.replace("'", ""))


def bond_length_score(structure: Structure, tolerance: float = 0.32, h_factor: float = 2.5) -> float:
    """CrystaLLM's bond-length rule: the fraction of CrystalNN bonds whose length is within
    ``1 ± tolerance`` of the expected length (ionic radii for electronegativity difference >= 1.7,
    atomic radii otherwise; bonds to H only need a ratio below ``h_factor``). 0.0 if no bonds."""
    import warnings

    from pymatgen.analysis.local_env import CrystalNN

    cnn = CrystalNN()
    good = total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, site in enumerate(structure):
            for info in cnn.get_nn_info(structure, i):
                other = info["site"]
                a, b = site.specie, other.specie
                length = site.distance(other)
                xa = a.X if not math.isnan(a.X) else 0.0
                xb = b.X if not math.isnan(b.X) else 0.0
                if abs(xa - xb) >= 1.7:
                    cat, an = (a, b) if xa < xb else (b, a)
                    expected = (cat.average_cationic_radius or cat.atomic_radius or 1.0) + (
                        an.average_anionic_radius or an.atomic_radius or 1.0
                    )
                else:
                    expected = (a.atomic_radius or 1.0) + (b.atomic_radius or 1.0)
                ratio = float(length / expected)
                if "H" in (a.symbol, b.symbol):
                    good += ratio < h_factor
                else:
                    good += (1 - tolerance) < ratio < (1 + tolerance)
                total += 1
    return good / total if total else 0.0


def check_text(text: str, symprec: float = 0.1, bond_tolerance: float = 0.32) -> TextReport:
    """Check a crystal text the way CrystaLLM judges generated CIFs, each check separately.

    - formula: the ``data_`` composition, ``_chemical_formula_sum`` and ``_chemical_formula_structural``
      agree (the first two exactly, the structural formula after reduction);
    - multiplicity: every site's stated multiplicity equals its orbit under the space group, and
      the multiplicities per element add up to ``_chemical_formula_sum``;
    - space group: the rebuilt structure re-analysed at ``symprec`` has the stated number;
    - bond lengths: :func:`bond_length_score` is 1.0 (every bond within ``1 ± bond_tolerance``).

    ``valid`` needs all four. CrystaLLM's own ``is_valid`` is looser on the first two (reduced
    formulas only; site multiplicities only summed, never checked against their orbits): that
    verdict is ``crystallm_valid``, the one to set beside CrystaLLM's published rates.
    """
    report = TextReport()
    try:
        parsed, rebuilt = _rebuild(text)
    except Exception as exc:  # any failure to parse or rebuild makes the text unparsable
        report.errors.append(f"unparsable: {exc}")
        return report
    report.parsable = True
    items = parsed.items

    try:
        data_comp = _composition(parsed.data_formula)
        sum_comp = _composition(items["_chemical_formula_sum"])
        struct_comp = _composition(items["_chemical_formula_structural"])
        report.formula_consistent = (
            data_comp.almost_equals(sum_comp)
            and data_comp.reduced_composition.almost_equals(struct_comp.reduced_composition)
        )
        report.reduced_formulas_agree = (
            data_comp.reduced_composition.almost_equals(sum_comp.reduced_composition)
            and data_comp.reduced_composition.almost_equals(struct_comp.reduced_composition)
        )
        if not report.formula_consistent:
            report.errors.append(
                f"formula: data_ {data_comp.formula}, sum {sum_comp.formula}, structural {struct_comp.formula}"
            )
    except Exception as exc:
        sum_comp = None
        report.errors.append(f"formula: {exc}")

    mult_ok = rebuilt.stated_multiplicities == rebuilt.orbit_sizes
    if not mult_ok:
        report.errors.append(
            f"multiplicity: stated {rebuilt.stated_multiplicities}, space group gives {rebuilt.orbit_sizes}"
        )
    if sum_comp is not None:
        per_el: dict[str, float] = {}
        for el, m in zip(rebuilt.site_elements, rebuilt.stated_multiplicities):
            per_el[el] = per_el.get(el, 0) + m
        report.site_counts_add_up = Composition(per_el).almost_equals(sum_comp)
        if not report.site_counts_add_up:
            mult_ok = False
            report.errors.append(f"multiplicity: sites sum to {Composition(per_el).formula}, formula_sum {sum_comp.formula}")
    report.multiplicity_consistent = mult_ok

    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        found = SpacegroupAnalyzer(rebuilt.structure, symprec=symprec).get_space_group_number()
        stated = rebuilt.number
        if stated is None and "_symmetry_space_group_name_H-M" in items:
            stated = spacegroups.number_of(items["_symmetry_space_group_name_H-M"])
        report.space_group_consistent = found == stated
        if not report.space_group_consistent:
            report.errors.append(f"space group: stated {stated}, found {found} at symprec {symprec}")
    except Exception as exc:
        report.errors.append(f"space group: {exc}")

    try:
        report.bond_length_score = bond_length_score(rebuilt.structure, bond_tolerance)
        report.bond_lengths_reasonable = report.bond_length_score >= 1.0
        if not report.bond_lengths_reasonable:
            report.errors.append(f"bond lengths: score {report.bond_length_score:.3f} < 1")
    except Exception as exc:
        report.errors.append(f"bond lengths: {exc}")
    return report


def text_header(text: str) -> str:
    """The header part of a text (everything before the first ``loop_``): a partial document
    carrying composition, cell and space group but no sites."""
    idx = text.find("loop_")
    return text if idx < 0 else text[:idx]
