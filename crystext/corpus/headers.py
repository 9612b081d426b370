"""Header documents: the header part of the text form (``data_`` line, space group, formulas,
``Z``; no cell, no sites) for a composition and a space group, e.g. from a Matbench table."""

from __future__ import annotations

from typing import Any

from ..errors import CIFParseError, ConfigError, SpaceGroupError, UnknownElementError

#: atoms per conventional cell for each primitive one, by the lattice letter of the H-M symbol
#: (R groups are written in the hexagonal setting, three lattice points per cell)
CENTERING = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}



def header_lines(composition: Any, spacegroup: int, cell: str = "conventional") -> list[str]:
    """The header lines of the text form for a composition and space group, without the cell.

    The lines are exactly those :func:`crystext.text.structure_to_text` writes, in the same order,
    minus ``_cell_length_*``, ``_cell_angle_*`` and ``_cell_volume``: ``data_``, H-M symbol,
    space-group number, structural formula, formula sum and ``Z``.

    Args:
        composition: the cell composition (a formula string such as ``"Fe2 O3"`` or a pymatgen
            ``Composition``); its amounts must be whole numbers.
        spacegroup: space-group number, 1-230.
        cell: ``"conventional"`` if the composition is that of the standard conventional cell
            (what the text form writes), ``"primitive"`` if it is that of a primitive cell (as in
            Materials Project / Matbench); a primitive composition is multiplied by the number of
            lattice points of the conventional cell (2 for A/B/C/I, 4 for F, 3 for R).

    Raises:
        UnknownElementError, SpaceGroupError, CIFParseError (malformed or fractional composition).
    """
    from pymatgen.core import Composition, Element

    from .. import spacegroups
    from ..text import _element_order

    try:
        comp = composition if isinstance(composition, Composition) else Composition(str(composition))
    except (ValueError, KeyError, TypeError) as exc:
        raise CIFParseError(f"composition {composition!r}: not a formula ({exc})") from None
    if len(comp) == 0:
        raise CIFParseError(f"composition {composition!r}: empty")
    for el in comp:
        if not isinstance(el, Element):
            raise UnknownElementError(f"composition {composition!r}: unknown element {str(el)!r}")
    try:
        number = int(spacegroup)
    except (TypeError, ValueError):
        raise SpaceGroupError(f"space group {spacegroup!r} is not a number") from None
    symbol = spacegroups.symbol_of(number)
    if cell == "primitive":
        comp = comp * CENTERING[symbol[0]]
    elif cell != "conventional":
        raise ConfigError(f"cell must be 'conventional' or 'primitive', not {cell!r}")
    if any(abs(v - round(v)) > 1e-6 or v <= 0 for v in comp.values()):
        raise CIFParseError(f"composition {composition!r}: amounts are not whole numbers of atoms")
    elements = sorted(comp.elements, key=_element_order)
    formula_sum = " ".join(f"{el.symbol}{int(round(comp[el]))}" for el in elements)
    reduced, z = comp.get_reduced_composition_and_factor()
    return [
        f"data_{formula_sum.replace(' ', '')}",
        f"_symmetry_space_group_name_H-M {symbol}",
        f"_symmetry_Int_Tables_number {number}",
        f"_chemical_formula_structural {reduced.reduced_formula}",
        f"_chemical_formula_sum '{formula_sum}'",
        f"_cell_formula_units_Z {int(round(z))}",
    ]


def header_text(composition: Any, spacegroup: int, cell: str = "conventional") -> str:
    """A partial document: :func:`header_lines` joined, ending in a newline like the full text."""
    return "\n".join(header_lines(composition, spacegroup, cell)) + "\n"
