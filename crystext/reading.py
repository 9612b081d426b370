"""Crystal text -> Structure: the reader of crystext's text form (and of CIF-like text naming a
space group in any setting spglib or pymatgen knows, or listing its operations).

It sits below :mod:`crystext.inputs` (which reads symbol-only CIF blocks with it) and
:mod:`crystext.text` (the writer and the validity check, which re-export its public names).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from . import spacegroups
from .decoding import decode_bytes
from .errors import CIFParseError, EmptyStructureError, SpaceGroupError, UnknownElementError

DECIMALS = 4  # digits after the point of every number of the text form
_FRAC_TOL = 2e-3  # fractional tolerance for merging symmetry images of rounded coordinates


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


_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|\S+")


@dataclass
class ParsedText:
    """The fields of a crystal text, as written (no symmetry applied)."""

    data_formula: str
    items: dict[str, str]
    loops: list[dict[str, list[str]]]

    def loop_with(self, key: str) -> dict[str, list[str]] | None:
        """The first loop that has the column ``key`` (None if no loop has it)."""
        return next((loop for loop in self.loops if key in loop), None)


def parse_text(text: str) -> ParsedText:
    """Split crystal text into its ``data_`` name, key-value items and loops.

    Raises :class:`CIFParseError` naming the line that is malformed.
    """
    if isinstance(text, bytes):
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


__all__ = ["ParsedText", "parse_text", "text_to_structure"]
