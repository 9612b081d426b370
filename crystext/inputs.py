"""Turn what users hand in (Structure, ASE Atoms, CIF text, bytes, paths) into a pymatgen Structure.

Every failure raises one of crystext's own errors naming the input and the problem. Messages
that suggest an option name it as the caller would write it: ``disorder='dominant'`` from
Python, ``--disorder dominant`` from the command line (see :func:`option_hint`, :func:`cli_mode`).

pymatgen is imported inside the functions that need it, so the CLI can import this module
(for :func:`cli_mode`) without paying for pymatgen on ``crystext --help``.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import shlex
import warnings
import zlib
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from . import limits
from .decoding import _encoding_message, decode_bytes
from .errors import (
    CIFParseError,
    CrystextError,
    DisorderError,
    EmptyStructureError,
    EncodingError,
    StructureTooLargeError,
    UnknownElementError,
)

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: What :func:`to_structure` accepts.
StructureLike = Any  # Structure | ase.Atoms | str (CIF text or path) | bytes | os.PathLike | dict

#: ``disorder="order"`` refuses a structure with more possible arrangements than this. pymatgen's
#: ordering tries them all when no oxidation states are known (about 2,000 per second on one core).
DEFAULT_MAX_ORDERINGS = 50_000
#: ``disorder="order"`` builds a supercell of at most this many cells to make occupancies integral.
DEFAULT_MAX_SUPERCELL = 8

# ----------------------------------------------------------------------------- CLI context

_CLI_ENV = "CRYSTEXT_CLI"  # inherited by worker processes (spawned pools do not copy contextvars)
_cli: ContextVar[bool | None] = ContextVar("crystext_cli_mode", default=None)
_NO_VALUE = object()


def in_cli() -> bool:
    """True while the ``crystext`` command runs (messages then name CLI flags, not keywords)."""
    value = _cli.get()
    if value is None:
        return os.environ.get(_CLI_ENV) == "1"
    return value


@contextmanager
def cli_mode(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`option_hint` writes options as CLI flags (``--disorder dominant``).

    :func:`crystext.cli.main` runs every verb inside ``cli_mode()``. The setting is also put in
    the environment (``CRYSTEXT_CLI=1``) so worker processes and threads see it; both are
    restored on exit.
    """
    token = _cli.set(enabled)
    old = os.environ.get(_CLI_ENV)
    os.environ[_CLI_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        _cli.reset(token)
        if old is None:
            os.environ.pop(_CLI_ENV, None)
        else:
            os.environ[_CLI_ENV] = old


def option_hint(option: str, value: Any = _NO_VALUE, flag: str | None = None) -> str:
    """How the user sets ``option``: ``--disorder dominant`` in the CLI, ``disorder='dominant'`` else.

    ``flag`` overrides the CLI spelling when it is not ``--`` + the option with ``-`` for ``_``.
    ``value=True`` (or no value) gives the bare flag in the CLI.
    """
    if in_cli():
        cli_flag = flag or "--" + option.replace("_", "-")
        if value is _NO_VALUE or value is True:
            return cli_flag
        return f"{cli_flag} {shlex.quote(str(value))}"
    if value is _NO_VALUE:
        return option
    return f"{option}={value!r}"


def item_name(index: int) -> str:
    """The name of the ``index``-th input of a list in error messages: ``item 3`` (0-based)."""
    return f"item {index}"


# ----------------------------------------------------------------------------- names

_SOURCE_ATTR = "_crystext_source"


def source_name(structure: Any, default: str = "structure") -> str:
    """The name :func:`to_structure` gave ``structure`` (its file, ``item 3``...), else ``default``."""
    return getattr(structure, _SOURCE_ATTR, None) or default


def _named(structure: Structure, name: str | None) -> Structure:
    if name:
        try:
            setattr(structure, _SOURCE_ATTR, name)
        except AttributeError:  # pragma: no cover - a Structure subclass with __slots__
            pass
    return structure


# ----------------------------------------------------------------------------- bytes and files


def _comment_start(line: bytes) -> int | None:
    """Offset of a CIF comment (``#`` at the start or after a blank, outside quotes) in ``line``."""
    quote = None
    for i, byte in enumerate(line):
        ch = chr(byte)
        if quote:
            if ch == quote and (i + 1 == len(line) or chr(line[i + 1]).isspace()):
                quote = None
        elif ch in "'\"" and (i == 0 or chr(line[i - 1]).isspace()):
            quote = ch
        elif ch == "#" and (i == 0 or chr(line[i - 1]).isspace()):
            return i
    return None


def decode_cif_bytes(data: bytes, name: str = "CIF") -> str:
    """Decode a CIF's bytes as UTF-8, tolerating non-UTF-8 bytes in comments only.

    Bytes that are not UTF-8 inside ``#`` comments (often Latin-1 author names) are replaced by
    U+FFFD with a warning naming the input and the lines; anywhere else (data, text fields) they
    raise :class:`EncodingError` naming the input, the byte offset and the line.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    replaced: list[int] = []
    offset = 0
    in_text_field = False
    for lineno, raw in enumerate(data.splitlines(keepends=True), 1):
        if raw.startswith(b";"):
            in_text_field = not in_text_field
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            start = None if in_text_field else _comment_start(raw)
            if start is None or exc.start < start:
                raise EncodingError(_encoding_message(data, offset + exc.start, name)) from None
            text = raw[:start].decode("utf-8") + raw[start:].decode("utf-8", errors="replace")
            replaced.append(lineno)
        out.append(text)
        offset += len(raw)
    lines = ", ".join(map(str, replaced[:10])) + (" ..." if len(replaced) > 10 else "")
    warnings.warn(f"{name}: non-UTF-8 bytes in comments (line {lines}) were replaced; "
                  "comments are not used", UserWarning, stacklevel=2)
    return "".join(out)


_CIF_SUFFIXES = (".cif", ".mcif")


def _is_cif_path(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in _CIF_SUFFIXES


def _check_path(path: Path, what: str = "file") -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a {what} (give the files inside it)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")


def read_text_file(path: str | os.PathLike, name: str | None = None) -> str:
    """Read a file as UTF-8 text with a clear error for a missing file, a folder or bad bytes.

    ``.gz`` files are decompressed. CIF files (``.cif``, ``.cif.gz``) may hold non-UTF-8 bytes
    in comments (read with a warning, see :func:`decode_cif_bytes`).
    """
    path = Path(path)
    name = name or str(path)
    _check_path(path)
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise CIFParseError(f"{name}: not a valid gzip file ({exc})") from None
    return decode_cif_bytes(data, name) if _is_cif_path(path) else decode_bytes(data, name)


# ----------------------------------------------------------------------------- CIF


def _looks_like_cif(text: str) -> bool:
    return "data_" in text and "_cell_length_a" in text


def _short(exc: BaseException) -> str:
    """pymatgen's message without its 'No structure parsed for section 1 in CIF.' preamble."""
    msg = str(exc).strip()
    msg = re.sub(r"^No structure parsed for section \d+ in CIF\.\s*", "", msg)
    msg = " ".join(msg.split())
    if not msg:
        msg = type(exc).__name__
    elif isinstance(exc, KeyError) or re.fullmatch(r"'_[\w.\-]+'", msg):
        msg = f"missing {msg}"
    elif isinstance(exc, ZeroDivisionError):
        msg = "an empty or truncated loop"
    elif m := re.fullmatch(r"Occupancy ([\d.eE+-]+) exceeded tolerance\.?", msg):
        msg = f"the occupancies of a site add up to {float(m.group(1)):.4g}, more than 1"
    return msg[:300]


#: Site occupancies adding up to at most this are scaled down to 1 (0.667 + 0.334 = 1.001 is
#: rounding in the CIF, not an error); more is refused.
_OCCUPANCY_TOLERANCE = 1.01
_ATOM_SITE_COORDS = ("_atom_site_fract_x", "_atom_site_cartn_x")
_CELL_LENGTHS = ("_cell_length_a", "_cell_length_b", "_cell_length_c")
_CELL_ANGLES = ("_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")


def _cif_number(value: Any) -> float:
    """A CIF number: '5.640(2)' -> 5.64; raises ValueError on anything else."""
    if isinstance(value, list):
        value = value[0] if value else ""
    text = re.sub(r"\(\d+\)$", "", str(value).strip())
    return float(text)


def _check_cell(data: dict, name: str) -> None:
    keys = {k.lower(): v for k, v in data.items()}
    for key in _CELL_LENGTHS + _CELL_ANGLES:
        if key not in keys:
            raise CIFParseError(f"{name}: unparsable CIF (no {key}: the unit cell is incomplete)")
        try:
            value = _cif_number(keys[key])
        except ValueError:
            raise CIFParseError(f"{name}: unparsable CIF ({key} {keys[key]!r} is not a number)") from None
        if not math.isfinite(value):
            raise CIFParseError(f"{name}: unparsable CIF ({key} is {value})")
        if key in _CELL_LENGTHS and value <= 0:
            raise CIFParseError(f"{name}: unparsable CIF ({key} {value:g} is not a positive length)")
        if key in _CELL_ANGLES and not 0 < value < 180:
            raise CIFParseError(f"{name}: unparsable CIF ({key} {value:g} is not an angle between 0 and 180 degrees)")


def cif_site_count(text: str) -> int:
    """Rows of the atom-site loops of CIF text (summed over data blocks), without parsing it.

    Each listed site gives at least one atom, so this is a lower bound on the atoms of the cell
    (the exact count for a P1 CIF). Batch jobs use it to refuse a 64,000-atom supercell before
    pymatgen spends minutes parsing it.
    """
    count, in_loop, header, is_site_loop = 0, False, False, False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        low = line.lower()
        if low.startswith("loop_"):
            in_loop, header, is_site_loop = True, True, False
            continue
        if low.startswith("data_"):
            in_loop = False
            continue
        if line.startswith("_"):
            if in_loop and header:
                is_site_loop |= low.split()[0] in _ATOM_SITE_COORDS
            else:
                in_loop = False
            continue
        if in_loop:
            header = False
            if is_site_loop and not line.startswith(";"):
                count += 1
    return count


def structure_from_cif(text: str, name: str = "CIF", block: str | int | None = None) -> Structure:
    """Parse CIF text with pymatgen, raising :class:`CIFParseError` naming ``name`` on any failure.

    A CIF may hold several ``data_`` blocks; blocks without atom sites (a publication block)
    are ignored. If more than one block holds a structure, ``block`` (the block name without
    ``data_``, or its index among the structure blocks) says which; without it the CIF is refused
    rather than silently reduced to its first structure. Partially occupied sites are kept (so
    callers can decide what to do with disorder).
    """
    from pymatgen.io.cif import CifParser

    if not text.strip():
        raise CIFParseError(f"{name}: empty CIF text")
    if "data_" not in text:
        raise CIFParseError(f"{name}: not a CIF (no data_ block)")
    _check_cif_elements(text, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(text, occupancy_tolerance=_OCCUPANCY_TOLERANCE)
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many types on bad text
            raise CIFParseError(f"{name}: unparsable CIF ({_short(exc)})") from None
        blocks = dict(parser._cif.data)  # block name -> CifBlock  # noqa: SLF001
        with_atoms = {k: b for k, b in blocks.items()
                      if any(c in {key.lower() for key in b.data} for c in _ATOM_SITE_COORDS)}
        if not with_atoms:
            raise CIFParseError(f"{name}: unparsable CIF (no atom sites: no _atom_site_fract_x loop)")
        chosen = _choose_block(with_atoms, block, name)
        label = name if len(blocks) == 1 else f"{name} (data_{chosen})"
        _check_cell(with_atoms[chosen].data, label)
        if len(blocks) > 1:
            parser = CifParser.from_str(str(with_atoms[chosen]), occupancy_tolerance=_OCCUPANCY_TOLERANCE)
        if _needs_setting_choice(with_atoms[chosen].data) or _symmetry_implied_by_symbol(with_atoms[chosen].data):
            return _rebuild_symbol_only(text if len(blocks) == 1 else str(with_atoms[chosen]), label)
        try:
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except Exception as exc:  # noqa: BLE001 - ValueError, KeyError, IndexError, ZeroDivisionError...
            raise CIFParseError(f"{label}: unparsable CIF ({_short(exc)})") from None
    if not structures:
        said = "; ".join(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))[:300]
        raise CIFParseError(f"{label}: CIF holds no structure{f' ({said})' if said else ''}")
    return structures[0]


_SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz",
               "_space_group_symop.operation_xyz", "_symmetry_equiv_pos_as_xyz_")
_SYMBOL_KEYS = ("_symmetry_space_group_name_h-m", "_space_group_name_h-m_alt", "_space_group.name_h-m_alt")
_NUMBER_KEYS = ("_symmetry_int_tables_number", "_space_group_it_number", "_space_group.it_number")


def _multi_setting_groups() -> set[int]:
    """Space-group numbers with two origin choices or hexagonal/rhombohedral axes."""
    import spglib

    return {spglib.get_spacegroup_type(h).number for h in range(1, 531)
            if spglib.get_spacegroup_type(h).choice in ("1", "2", "H", "R")}


def _needs_setting_choice(data: dict) -> bool:
    """True for a CIF block that names its space group by symbol only (no symmetry-operation
    loop) where the symbol alone does not fix the setting: a group with two origin choices or
    two axis systems, or an explicit ``:1``/``:2``/``:H``/``:R`` suffix, which pymatgen misreads
    (origin-2 diamond came back with 16 atoms, ``Fd-3m:2`` as P1)."""
    keys = {k.lower(): v for k, v in data.items()}
    if any(k in keys for k in _SYMOP_KEYS):
        return False
    symbol = next((str(keys[k]) for k in _SYMBOL_KEYS if k in keys), "").strip().strip("'\"")
    if not symbol or symbol.replace(" ", "") in ("P1", "P-1"):
        return False
    if ":" in symbol:
        return True
    number = next((keys[k] for k in _NUMBER_KEYS if k in keys), None)
    try:
        if number is None:
            from pymatgen.symmetry.groups import SpaceGroup

            number = SpaceGroup(symbol).int_number
        return int(str(number).split("(")[0]) in _multi_setting_groups()
    except Exception:  # noqa: BLE001 - an unknown symbol: let pymatgen say what it makes of it
        return False


def _symmetry_implied_by_symbol(data: dict) -> bool:
    """True for crystext / CrystaLLM text: an operation loop holding the identity alone, while the
    atom sites state multiplicities above 1. The operations are those of the space-group symbol;
    pymatgen would apply the identity only and return the asymmetric unit (2 of 6 atoms of
    I4/mmm MoSi2)."""
    keys = {k.lower(): v for k, v in data.items()}
    ops = next((keys[k] for k in _SYMOP_KEYS if k in keys), None)
    mult = keys.get("_atom_site_symmetry_multiplicity")
    if ops is None or mult is None:
        return False
    ops = ops if isinstance(ops, list) else [ops]
    if [str(o).replace(" ", "").strip("'\"").lower() for o in ops] != ["x,y,z"]:
        return False
    try:
        return any(int(float(str(m).strip("'\""))) > 1 for m in (mult if isinstance(mult, list) else [mult]))
    except ValueError:
        return False


def _rebuild_symbol_only(text: str, label: str) -> Structure:
    """Rebuild a symbol-only CIF block with crystext's reader, which picks the setting that the
    sites fit or refuses when the symbol is ambiguous (never rebuilds in a wrong setting)."""
    from .errors import SpaceGroupError
    from .reading import text_to_structure

    try:
        return text_to_structure(text)
    except SpaceGroupError as exc:
        raise SpaceGroupError(f"{label}: {str(exc).removeprefix('crystal text: ')}") from None
    except CrystextError as exc:
        raise CIFParseError(f"{label}: unparsable CIF ({exc})") from None


def _choose_block(with_atoms: dict, block: str | int | None, name: str) -> str:
    names = list(with_atoms)
    if block is None:
        if len(names) > 1:
            listed = ", ".join(f"data_{n}" for n in names[:5]) + (" ..." if len(names) > 5 else "")
            raise CIFParseError(
                f"{name}: the CIF holds {len(names)} structures ({listed}); give one structure per "
                "file" + ("" if in_cli() else " or choose one with block='NAME'")
            )
        return names[0]
    if isinstance(block, int):
        if not -len(names) <= block < len(names):
            raise CIFParseError(f"{name}: block {block} asked for, the CIF holds {len(names)} structures")
        return names[block]
    key = block[5:] if block.startswith("data_") else block
    if key not in with_atoms:
        raise CIFParseError(f"{name}: no structure block data_{key} (blocks: {', '.join(names)})")
    return key


_CIF_TOKEN = re.compile(r"""'[^']*'(?=\s|$)|"[^"]*"(?=\s|$)|\S+""")


def _check_cif_elements(text: str, name: str) -> None:
    """Find element symbols in the atom_site loop that are not elements (pymatgen would guess)."""
    from pymatgen.core import Element

    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip().lower() != "loop_":
            i += 1
            continue
        headers = []
        j = i + 1
        while j < len(lines) and lines[j].strip().startswith("_"):
            headers.append(lines[j].split()[0].lower())
            j += 1
        tokens: list[str] = []
        while j < len(lines):
            row = lines[j].strip()
            if row.startswith(("_", "loop_", "data_", ";")) or row.lower().startswith("loop_"):
                break
            if row and not row.startswith("#"):
                tokens.extend(t for t in _CIF_TOKEN.findall(row.split(" #")[0]))
            j += 1
        if "_atom_site_type_symbol" in headers:
            col = headers.index("_atom_site_type_symbol")
            for symbol in tokens[col::len(headers)]:
                symbol = symbol.strip("'\"")
                element = "".join(c for c in symbol if c.isalpha())
                if not Element.is_valid_symbol(element):
                    raise UnknownElementError(f"{name}: unknown element {symbol!r} in _atom_site_type_symbol")
        i = j


# ----------------------------------------------------------------------------- structures


def check_structure(structure: Structure, name: str = "structure") -> Structure:
    """Check a structure has atoms, a non-degenerate cell and only real elements."""
    from pymatgen.core import Element

    import numpy as np

    if len(structure) == 0:
        raise EmptyStructureError(f"{name}: the cell holds no atoms")
    if not (np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.frac_coords).all()):
        raise CIFParseError(f"{name}: the cell or the coordinates hold NaN or infinite numbers")
    if not structure.lattice.volume > 1e-6:
        raise EmptyStructureError(f"{name}: the cell has zero volume")
    for site in structure:
        for sp in site.species:
            symbol = getattr(sp, "symbol", str(sp))
            if not isinstance(getattr(sp, "element", sp), Element) or not Element.is_valid_symbol(symbol):
                raise UnknownElementError(f"{name}: unknown element {symbol!r}")
    return structure


def _is_pathlike_str(obj: str) -> bool:
    """A one-line string that is not CIF text is taken as a path (too long or NUL: not a path)."""
    return not _looks_like_cif(obj) and "\n" not in obj and "\x00" not in obj and len(obj) < 4096


def _names_a_file(text: str) -> bool:
    """Whether a one-line string that is not an existing file still reads as a path: a folder
    separator, ``~``, or a structure file's suffix / name (``x.cif``, ``POSCAR``)."""
    path = Path(text.strip())
    return ("/" in text or "\\" in text or text.startswith("~") or _is_cif_path(path) or _is_poscar_path(path)
            or path.suffix.lower() in (".json", ".gz", ".mcif", ".txt"))


def _is_poscar_path(path: Path) -> bool:
    name = path.name.upper()
    return path.suffix.lower() in (".vasp", ".poscar") or name.startswith(("POSCAR", "CONTCAR"))


def is_ase_atoms(obj: Any) -> bool:
    """Whether ``obj`` is an ``ase.Atoms`` or an instance of any subclass of it (pymatgen's
    ``MSONAtoms`` from ``AseAtomsAdaptor.get_atoms`` is one), told without importing ase."""
    return any(cls.__name__ == "Atoms" and cls.__module__.split(".")[0] == "ase" for cls in type(obj).__mro__)


def _from_atoms(atoms: Any, name: str) -> Structure:
    from pymatgen.io.ase import AseAtomsAdaptor

    if len(atoms) == 0:
        raise EmptyStructureError(f"{name}: the cell holds no atoms")
    rank = getattr(atoms.cell, "rank", 3)
    if rank < 3:
        raise EmptyStructureError(
            f"{name}: the Atoms have no full unit cell (cell of rank {rank}); a crystal needs three "
            "cell vectors (for a molecule, atoms.center(vacuum=10) gives it a box)"
        )
    try:
        return AseAtomsAdaptor.get_structure(atoms)
    except Exception as exc:  # noqa: BLE001
        raise CIFParseError(f"{name}: cannot convert the ASE Atoms ({_short(exc)})") from None


def _from_text(text: str, label: str, block: str | int | None) -> Structure:
    """A pymatgen Structure JSON (text starting with ``{``) or CIF text, checked."""
    from pymatgen.core import Structure

    if text.lstrip().startswith("{"):
        try:
            structure = Structure.from_str(text, fmt="json")
        except Exception as exc:  # noqa: BLE001
            raise CIFParseError(f"{label}: not a pymatgen Structure JSON ({_short(exc)})") from None
        return check_structure(structure, label)
    return check_structure(structure_from_cif(text, label, block), label)


def to_structure(obj: StructureLike, name: str | None = None, block: str | int | None = None) -> Structure:
    """Return a pymatgen :class:`Structure` from a Structure, ASE Atoms, CIF text, bytes or a path.

    Paths may be ``.cif``, ``.cif.gz``, POSCAR (``.vasp``, ``POSCAR*``, ``CONTCAR*``) or pymatgen
    ``.json`` files; text and bytes may be CIF or pymatgen Structure JSON. ``name`` is how errors
    call the input (default: the path, or the kind of input); ``block`` picks the structure of a
    CIF that holds several (see :func:`structure_from_cif`).

    Raises :class:`CIFParseError`, :class:`EncodingError`, :class:`UnknownElementError`,
    :class:`EmptyStructureError` (all naming the input and the problem), ``FileNotFoundError``
    or ``IsADirectoryError``.
    """
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return _named(check_structure(obj, name or "structure"), name)
    if is_ase_atoms(obj):
        label = name or "Atoms"
        return _named(check_structure(_from_atoms(obj, label), label), name)
    if isinstance(obj, (bytes, bytearray)):
        label = name or "bytes"
        text = decode_cif_bytes(bytes(obj), label)
        if not text.strip():
            raise CIFParseError(f"{label}: empty (no CIF text)")
        return _named(_from_text(text, label, block), name)
    if isinstance(obj, str) and not obj.strip():
        raise CIFParseError(f"{name or 'input'}: empty string (expected CIF text, a path or a Structure)")
    if isinstance(obj, str) and obj.lstrip().startswith("{"):
        return _named(_from_text(obj, name or "JSON text", block), name)
    if isinstance(obj, os.PathLike) or (isinstance(obj, str) and _is_pathlike_str(obj)):
        path = Path(obj).expanduser()
        label = str(path) if not name else name if str(path) in name else f"{name} ({path})"
        if not path.is_file() and not path.is_dir():
            if isinstance(obj, str) and not _names_a_file(obj):  # words, not a path: say what it is not
                raise CIFParseError(f"{label}: neither an existing file nor CIF text (no data_ block); give a "
                                    "CIF or POSCAR path, CIF text or a Structure")
            raise FileNotFoundError(f"{label}: no such file (expected a CIF file, CIF text or a Structure)")
        text = read_text_file(path, label)
        if not text.strip():
            raise CIFParseError(f"{label}: the file is empty" if not text else f"{label}: the file holds only blank space")
        if path.suffix.lower() == ".json" or (path.suffixes[-2:] == [".json", ".gz"]):
            try:
                structure = Structure.from_str(text, fmt="json")
            except Exception as exc:  # noqa: BLE001
                raise CIFParseError(f"{label}: not a pymatgen Structure JSON ({_short(exc)})") from None
            return _named(check_structure(structure, label), label)
        if _is_poscar_path(path):
            try:
                structure = Structure.from_str(text, fmt="poscar")
            except Exception as exc:  # noqa: BLE001
                raise CIFParseError(f"{label}: unparsable POSCAR ({_short(exc)})") from None
            return _named(check_structure(structure, label), label)
        if "data_" not in text and not _is_cif_path(path):
            raise CIFParseError(f"{label}: not a CIF (no data_ block); crystext reads CIF (.cif, .cif.gz), "
                                "POSCAR (.vasp, POSCAR*, CONTCAR*) and pymatgen JSON (.json) files")
        return _named(_from_text(text, label, block), label)
    if isinstance(obj, str):
        label = name or "CIF text"
        return _named(check_structure(structure_from_cif(obj, label, block), label), name)
    if isinstance(obj, dict) and "lattice" in obj and "sites" in obj:
        label = name or "structure dict"
        try:
            structure = Structure.from_dict(obj)
        except Exception as exc:  # noqa: BLE001
            raise CIFParseError(f"{label}: not a pymatgen Structure dict ({_short(exc)})") from None
        return _named(check_structure(structure, label), name)
    raise TypeError(
        f"{name or 'input'}: cannot make a Structure from {type(obj).__name__}; "
        "give a pymatgen Structure, ASE Atoms, CIF text or a path"
    )


def structure_at(obj: StructureLike, index: int) -> Structure:
    """:func:`to_structure` for item ``index`` of a batch: a Structure passes through unchecked, and
    an error names the item (``structure #index: ...``) as well as the problem."""
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return obj
    try:
        return to_structure(obj)
    except CrystextError as exc:
        raise type(exc)(f"structure #{index}: {exc}") from exc


# ----------------------------------------------------------------------------- disorder


def _disorder_groups(structure: Structure) -> list[tuple[list[int], Any]]:
    """Disordered sites grouped as pymatgen's ordering groups them (same species and occupancies)."""
    groups: list[tuple[list[int], Any]] = []
    for i, site in enumerate(structure):
        if site.is_ordered:
            continue
        for members, species in groups:
            if site.species.almost_equals(species):
                members.append(i)
                break
        else:
            groups.append(([i], site.species))
    return groups


def _supercell_size(groups: list[tuple[list[int], Any]], max_cells: int, tol: float = 0.01) -> int | None:
    """The fewest cells whose repeat makes every group's species count whole, or None.

    ``tol`` is per site, so occupancies written with two decimals (0.33) still count as thirds,
    while a real dopant (0.03) is never rounded away.
    """
    for n in range(1, max_cells + 1):
        if all(abs(n * len(m) * occ - round(n * len(m) * occ)) <= tol * n * len(m)
               for m, species in groups for occ in species.values()):
            return n
    return None


def count_orderings(structure: Structure, max_supercell: int = DEFAULT_MAX_SUPERCELL) -> tuple[int, int] | None:
    """``(number of arrangements, supercell size)`` that ``disorder="order"`` would try, or None.

    Counts, in the smallest supercell (at most ``max_supercell`` cells) where occupancies give
    whole numbers of atoms, the ways to place each group's species (vacancies included) on its
    sites: the product of multinomial coefficients. None: no such supercell.
    """
    groups = _disorder_groups(structure)
    n = _supercell_size(groups, max_supercell)
    if n is None:
        return None
    total = 1
    for members, species in groups:
        sites = n * len(members)
        left = sites
        for occ in species.values():
            k = min(round(sites * occ), left)
            total *= math.comb(left, k)
            left -= k
    return total, n


def _supercell(structure: Structure, n: int) -> Structure:
    """``structure`` repeated ``n`` times, growing the shortest axis by each prime factor of ``n``."""
    scale = [1, 1, 1]
    lengths = list(structure.lattice.abc)
    p = 2
    while n > 1:
        while n % p == 0:
            axis = min(range(3), key=lambda a: lengths[a] * scale[a])
            scale[axis] *= p
            n //= p
        p += 1
    return structure * scale if scale != [1, 1, 1] else structure.copy()


def resolve_disorder(
    structure: Structure,
    disorder: str = "raise",
    name: str | None = None,
    *,
    max_orderings: int | None = DEFAULT_MAX_ORDERINGS,
    max_supercell: int = DEFAULT_MAX_SUPERCELL,
    max_atoms: int | None = limits.DEFAULT_MAX_ATOMS,
    time_limit: float | None = limits.DEFAULT_TIME_LIMIT,
) -> tuple[Structure, str | None]:
    """Handle partially occupied sites.

    ``disorder``: ``"raise"`` refuses them (:class:`DisorderError`), ``"dominant"`` keeps each
    site's majority species, ``"order"`` builds the smallest supercell (at most ``max_supercell``
    cells) in which the occupancies give whole atoms and picks pymatgen's lowest-energy ordering.
    ``"order"`` is bounded: more than ``max_orderings`` arrangements or ``max_atoms`` atoms
    raise :class:`StructureTooLargeError` up front, and more than ``time_limit`` seconds raise
    :class:`RecordTimeoutError` (None: no bound). ``name`` defaults to the name
    :func:`to_structure` gave the structure.
    Returns the ordered structure and the treatment applied (``None`` if it was ordered already).
    """
    name = name or source_name(structure)
    if structure.is_ordered:
        return structure, None
    if disorder == "raise":
        bad = next(i for i, s in enumerate(structure) if not s.is_ordered)
        raise DisorderError(
            f"{name}: site {bad} is partially occupied ({structure[bad].species.formula}); "
            f"use {option_hint('disorder', 'dominant')} or {option_hint('disorder', 'order')}"
        )
    if disorder == "dominant":
        from pymatgen.core import Structure as _Structure

        species, coords = [], []
        for site in structure:
            sp, occ = max(site.species.items(), key=lambda kv: kv[1])
            if occ <= 0:
                continue
            species.append(getattr(sp, "element", sp))
            coords.append(site.frac_coords)
        return _Structure(structure.lattice, species, coords), "dominant"
    if disorder == "order":
        return _order(structure, name, max_orderings, max_supercell, max_atoms, time_limit), "order"
    raise ValueError(f"disorder must be 'raise', 'dominant' or 'order', not {disorder!r}")


def _order(structure: Structure, name: str, max_orderings: int | None, max_supercell: int,
           max_atoms: int | None, time_limit: float | None) -> Structure:
    from pymatgen.transformations.standard_transformations import OrderDisorderedStructureTransformation

    dominant = option_hint("disorder", "dominant")
    clean = structure.copy()
    clean.remove_oxidation_states()
    counted = count_orderings(clean, max_supercell)
    if counted is None:
        bad = next(s for s in clean if not s.is_ordered)
        raise DisorderError(
            f"{name}: the occupancies ({bad.species.formula}) need a supercell of more than "
            f"{max_supercell} cells to give whole atoms; use {dominant}"
        )
    n_orderings, n_cells = counted
    limits.check_size(len(clean) * n_cells, max_atoms, what=f"{name}: the {n_cells}-cell ordering supercell",
                      hint=f"use {dominant}")
    if max_orderings is not None and max_orderings > 0 and n_orderings > max_orderings:
        more = "" if in_cli() else " or raise max_orderings"
        raise StructureTooLargeError(
            f"{name}: ordering the partially occupied sites means trying {n_orderings:.3g} arrangements "
            f"({n_cells}-cell supercell, {len(clean) * n_cells} sites), over the limit of "
            f"{max_orderings:,}; use {dominant}{more}"
        )
    cell = _supercell(clean, n_cells)
    with limits.time_limit(time_limit, what=f"{name}: ordering the partially occupied sites", hint=f"use {dominant}"):
        try:
            return OrderDisorderedStructureTransformation(no_oxi_states=True).apply_transformation(cell)
        except (ValueError, RuntimeError, KeyError, IndexError, ZeroDivisionError) as exc:
            raise DisorderError(f"{name}: could not order the disordered sites ({_short(exc)})") from None
