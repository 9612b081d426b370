"""Turn what users hand in (Structure, ASE Atoms, CIF text, bytes, paths) into a pymatgen Structure.

Every failure raises one of crystext's own errors naming the input and the problem.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from pymatgen.core import Element, Structure

from .errors import (
    CIFParseError,
    DisorderError,
    EmptyStructureError,
    EncodingError,
    UnknownElementError,
)

#: What :func:`to_structure` accepts.
StructureLike = Any  # Structure | ase.Atoms | str (CIF text or path) | bytes | os.PathLike


def decode_bytes(data: bytes, name: str = "input") -> str:
    """Decode UTF-8 bytes, raising :class:`EncodingError` that names the input and byte offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncodingError(
            f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def read_text_file(path: str | os.PathLike, name: str | None = None) -> str:
    """Read a file as UTF-8 text with a clear error for missing files or bad bytes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return decode_bytes(path.read_bytes(), name or str(path))


def _looks_like_cif(text: str) -> bool:
    return "data_" in text and "_cell_length_a" in text


def structure_from_cif(text: str, name: str = "CIF") -> Structure:
    """Parse a CIF string (first block) with pymatgen, raising :class:`CIFParseError` on failure.

    Partially occupied sites are kept (so callers can decide what to do with disorder).
    """
    from pymatgen.io.cif import CifParser

    if not text.strip():
        raise CIFParseError(f"{name}: empty CIF text")
    if "data_" not in text:
        raise CIFParseError(f"{name}: not a CIF (no data_ block)")
    _check_cif_elements(text, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = CifParser.from_str(text, occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False, on_error="raise")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise CIFParseError(f"{name}: unparsable CIF ({exc})") from None
    if not structures:
        raise CIFParseError(f"{name}: CIF holds no structure")
    return structures[0]


def _check_cif_elements(text: str, name: str) -> None:
    """Find element symbols in the atom_site loop that are not elements (pymatgen would guess)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "loop_":
            headers = []
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("_"):
                headers.append(lines[j].strip())
                j += 1
            if "_atom_site_type_symbol" in headers:
                col = headers.index("_atom_site_type_symbol")
                while j < len(lines) and lines[j].strip() and not lines[j].strip().startswith(("_", "loop_")):
                    parts = lines[j].split()
                    if len(parts) > col:
                        symbol = parts[col].strip("'\"")
                        element = "".join(c for c in symbol if c.isalpha())
                        if not Element.is_valid_symbol(element):
                            raise UnknownElementError(f"{name}: unknown element {symbol!r} in _atom_site_type_symbol")
                    j += 1
            i = j
        else:
            i += 1


def check_structure(structure: Structure, name: str = "structure") -> Structure:
    """Check a structure has atoms, a non-degenerate cell and only real elements."""
    if len(structure) == 0:
        raise EmptyStructureError(f"{name}: the cell holds no atoms")
    if not structure.lattice.volume > 1e-6:
        raise EmptyStructureError(f"{name}: the cell has zero volume")
    for site in structure:
        for sp in site.species:
            symbol = getattr(sp, "symbol", str(sp))
            if not isinstance(getattr(sp, "element", sp), Element) or not Element.is_valid_symbol(symbol):
                raise UnknownElementError(f"{name}: unknown element {symbol!r}")
    return structure


def to_structure(obj: StructureLike, name: str | None = None) -> Structure:
    """Return a pymatgen :class:`Structure` from a Structure, ASE Atoms, CIF text, bytes or a path.

    Raises :class:`CIFParseError`, :class:`EncodingError`, :class:`UnknownElementError` or
    :class:`EmptyStructureError` naming the input and the problem.
    """
    if isinstance(obj, Structure):
        return check_structure(obj, name or "structure")
    if type(obj).__name__ == "Atoms" and hasattr(obj, "get_chemical_symbols"):
        from pymatgen.io.ase import AseAtomsAdaptor

        if len(obj) == 0:
            raise EmptyStructureError(f"{name or 'Atoms'}: the cell holds no atoms")
        return check_structure(AseAtomsAdaptor.get_structure(obj), name or "Atoms")
    if isinstance(obj, bytes):
        return to_structure(decode_bytes(obj, name or "bytes"), name or "bytes")
    if isinstance(obj, os.PathLike) or (isinstance(obj, str) and not _looks_like_cif(obj) and "\n" not in obj):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected a CIF file, CIF text or a Structure)")
        text = read_text_file(path)
        if path.suffix == ".json":
            try:
                return check_structure(Structure.from_str(text, fmt="json"), str(path))
            except (ValueError, KeyError) as exc:
                raise CIFParseError(f"{path}: not a pymatgen Structure JSON ({exc})") from None
        return to_structure(text, name or str(path))
    if isinstance(obj, str):
        return check_structure(structure_from_cif(obj, name or "CIF text"), name or "CIF text")
    if isinstance(obj, dict) and "lattice" in obj and "sites" in obj:
        return check_structure(Structure.from_dict(obj), name or "structure dict")
    raise TypeError(
        f"{name or 'input'}: cannot make a Structure from {type(obj).__name__}; "
        "give a pymatgen Structure, ASE Atoms, CIF text or a path"
    )


def resolve_disorder(structure: Structure, disorder: str = "raise", name: str = "structure") -> tuple[Structure, str | None]:
    """Handle partially occupied sites.

    ``disorder``: ``"raise"`` refuses them (:class:`DisorderError`), ``"dominant"`` keeps each
    site's majority species, ``"order"`` enumerates an ordered supercell approximant with pymatgen.
    Returns the ordered structure and the treatment applied (``None`` if it was ordered already).
    """
    if structure.is_ordered:
        return structure, None
    if disorder == "raise":
        bad = next(i for i, s in enumerate(structure) if not s.is_ordered)
        raise DisorderError(
            f"{name}: site {bad} is partially occupied ({structure[bad].species.formula}); "
            "use disorder='dominant' or disorder='order'"
        )
    if disorder == "dominant":
        species, coords = [], []
        for site in structure:
            sp, occ = max(site.species.items(), key=lambda kv: kv[1])
            if occ <= 0:
                continue
            species.append(getattr(sp, "element", sp))
            coords.append(site.frac_coords)
        return Structure(structure.lattice, species, coords), "dominant"
    if disorder == "order":
        from pymatgen.transformations.standard_transformations import OrderDisorderedStructureTransformation

        clean = structure.copy()
        clean.remove_oxidation_states()
        try:
            ordered = OrderDisorderedStructureTransformation(no_oxi_states=True).apply_transformation(clean)
        except Exception as exc:  # pymatgen raises bare ValueError/RuntimeError here
            raise DisorderError(f"{name}: could not order the disordered sites ({exc})") from None
        return ordered, "order"
    raise ValueError(f"disorder must be 'raise', 'dominant' or 'order', not {disorder!r}")
