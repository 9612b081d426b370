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
from .local import local_rows
from .inputs import StructureLike, option_hint, resolve_disorder, source_name, to_structure
from .reading import (  # noqa: F401 - the reader lives below crystext.inputs; its names stay importable here
    _FRAC_TOL,
    DECIMALS,
    _TOKEN,
    ParsedText,
    _orbit,
    _rebuild,
    parse_text,
    text_to_structure,
)

#: Text styles: ``"default"`` (crystext's layout: loop columns indented, values two spaces apart)
#: and ``"crystallm"`` (CrystaLLM's preprocessed CIFs: no indentation, single spaces, the
#: atom-property block right after the ``data_`` line), which CrystaLLM's evaluation code reads.
STYLES = ("default", "crystallm")



def _fmt(x: float, decimals: int = DECIMALS) -> str:
    s = f"{x:.{decimals}f}"
    return "0." + "0" * decimals if s.startswith("-") and float(s) == 0 else s


def _wrap(frac: np.ndarray, decimals: int = DECIMALS) -> np.ndarray:
    """Round, wrap into [0, 1) and round again so that 0.99996 becomes 0.0 rather than 1.0."""
    out = np.round(np.mod(np.round(frac, decimals), 1.0), decimals)
    out[out >= 1.0] = 0.0
    return out + 0.0  # no -0.0


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
    local: bool = False,
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
        local: add the ``local`` block after the site loop: each site's coordination, most common
            neighbour element and nearest-neighbour distance (:mod:`crystext.local`).
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
        text = _structure_to_text(structure, label, symprec, angle_tolerance, p1, properties, disorder,
                                  decimals, style, max_atoms, time_limit)
        if local:
            rows = local_rows(text)
            text += "\n".join(_single_spaced(r) for r in rows) + "\n" if style == "crystallm" else "\n".join(rows) + "\n"
        return text


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


#: CrystaLLM's bond-length rule, as its ``bond_length_reasonableness_score``: a bond passes when its
#: length is within ``1 ± BOND_TOLERANCE`` of the expected length; a bond to H passes below
#: ``BOND_H_FACTOR`` times it. ``check_text`` needs every bond to pass (score 1.0).
BOND_TOLERANCE, BOND_H_FACTOR = 0.32, 2.5


def expected_bond_length(a: Element, b: Element) -> float:
    """Ionic radii (cation + anion) when the electronegativities differ by >= 1.7, else atomic radii."""
    xa = a.X if not math.isnan(a.X) else 0.0
    xb = b.X if not math.isnan(b.X) else 0.0
    def radius(*values) -> float:  # the first known radius, as a plain float (pymatgen's carry units)
        return next((float(v) for v in values if v), 1.0)

    if abs(xa - xb) >= 1.7:
        cat, an = (a, b) if xa < xb else (b, a)
        return (radius(cat.average_cationic_radius, cat.atomic_radius)
                + radius(an.average_anionic_radius, an.atomic_radius))
    return radius(a.atomic_radius) + radius(b.atomic_radius)


def crystalnn_bonds(structure: Structure) -> list[tuple[int, int, float, bool]]:
    """Every CrystalNN bond of the cell as ``(i, j, length, self_image)``: atom ``i`` to atom ``j``
    (``self_image``: ``j`` is a periodic image of ``i`` itself), ``length`` the distance to the
    image CrystalNN names (not the minimum-image distance, which is 0 for a self-image)."""
    import warnings

    from pymatgen.analysis.local_env import CrystalNN

    cnn = CrystalNN()
    bonds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, site in enumerate(structure):
            for info in cnn.get_nn_info(structure, i):
                j = int(info["site_index"])
                length = float(np.linalg.norm(info["site"].coords - site.coords))
                bonds.append((i, j, length, j == i))
    return bonds


#: atoms closer than this (angstrom) fail the bond-length check whatever CrystalNN finds: it does not
#: list two atoms on (almost) one spot as bonded, so CrystaLLM's score alone passes them
MIN_ATOM_DISTANCE = 0.5


def closest_distance(structure: Structure) -> float:
    """The shortest distance between two atoms of the crystal (periodic images included; an
    atom's distance to its own images is the shortest lattice translation)."""
    if len(structure) > 1:
        d = structure.distance_matrix.copy()
        np.fill_diagonal(d, np.inf)
        pair = float(d.min())
    else:
        pair = float("inf")
    lattice = structure.lattice
    own = min(float(np.linalg.norm(v)) for v in lattice.get_lll_reduced_lattice().matrix)
    return min(pair, own)


def bond_length_score(structure: Structure, tolerance: float = BOND_TOLERANCE,
                      h_factor: float = BOND_H_FACTOR) -> float:
    """CrystaLLM's bond-length rule: the fraction of CrystalNN bonds whose length is within
    ``1 ± tolerance`` of the expected length (ionic radii for electronegativity difference >= 1.7,
    atomic radii otherwise; bonds to H only need a ratio below ``h_factor``). 0.0 if no bonds.

    As in CrystaLLM's code, a bond from an atom to a periodic image of itself is skipped (it is
    not a bond between two atoms of the cell; measured by minimum image it would have length 0).
    Only when an atom's cell holds no other bonds at all (one atom per cell, e.g. simple cubic)
    are the self-image bonds scored, at their true length, instead of giving no score."""
    bonds = crystalnn_bonds(structure)
    kept = [b for b in bonds if not b[3]] or bonds
    good = 0
    for i, j, length, _ in kept:
        a, b = structure[i].specie, structure[j].specie
        ratio = length / expected_bond_length(a, b)
        if "H" in (a.symbol, b.symbol):
            good += ratio < h_factor
        else:
            good += (1 - tolerance) < ratio < (1 + tolerance)
    return good / len(kept) if kept else 0.0


def check_text(text: str, symprec: float = 0.1, bond_tolerance: float = BOND_TOLERANCE) -> TextReport:
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
    sum_comp = _check_formulas(report, parsed)
    _check_multiplicities(report, rebuilt, sum_comp)
    _check_space_group(report, rebuilt, parsed.items, symprec)
    _check_bond_lengths(report, rebuilt, bond_tolerance)
    return report


def _check_formulas(report: TextReport, parsed) -> Composition | None:
    """Fill the formula checks of ``report``; ``_chemical_formula_sum`` (None when unreadable)."""
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
    return sum_comp


def _check_multiplicities(report: TextReport, rebuilt, sum_comp: Composition | None) -> None:
    """Stated multiplicities against the orbits, and per element against the formula sum."""
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


def _check_space_group(report: TextReport, rebuilt, items: dict, symprec: float) -> None:
    """The rebuilt structure's space group at ``symprec`` against the stated one."""
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


def _check_bond_lengths(report: TextReport, rebuilt, bond_tolerance: float) -> None:
    """The bond-length score of the rebuilt structure, and no two atoms on top of each other."""
    try:
        report.bond_length_score = bond_length_score(rebuilt.structure, bond_tolerance)
        report.bond_lengths_reasonable = report.bond_length_score >= 1.0
        if not report.bond_lengths_reasonable:
            report.errors.append(f"bond lengths: score {report.bond_length_score:.3f} < 1")
        closest = closest_distance(rebuilt.structure)
        if closest < MIN_ATOM_DISTANCE:  # CrystalNN does not bond atoms that sit on one another
            report.bond_lengths_reasonable = False
            report.errors.append(f"bond lengths: two atoms {closest:.3f} A apart (< {MIN_ATOM_DISTANCE} A)")
    except Exception as exc:
        report.errors.append(f"bond lengths: {exc}")


def split_texts(text: str) -> list[str]:
    """The crystal texts of a file holding several, one per ``data_`` line (a file without a
    ``data_`` line is returned whole, so that checking it reports why it does not parse)."""
    starts = [m.start() for m in re.finditer(r"^[ \t]*data_", text, flags=re.MULTILINE)]
    if not starts:
        return [text]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def check_texts(text: str, symprec: float = 0.1, bond_tolerance: float = BOND_TOLERANCE) -> list[TextReport]:
    """:func:`check_text` for every text of a file holding several (see :func:`split_texts`)."""
    return [check_text(part, symprec=symprec, bond_tolerance=bond_tolerance) for part in split_texts(text)]
