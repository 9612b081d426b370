"""A built-in element-property table (from pymatgen's element data; no download, no extra package).

Used as the default species channels of :class:`crystext.descriptors.ACE` on data sets with many
elements: a few smooth chemical coordinates instead of one channel per element, so the number of
features does not grow with the number of elements.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

__all__ = ["element_property_table", "PROPERTY_COLUMNS"]

#: columns of :func:`element_property_table`
PROPERTY_COLUMNS = ("row", "group", "mendeleev_no", "electronegativity", "radius", "log_mass", "ionization_energy",
                    "block_s", "block_p", "block_d", "block_f")
MAX_Z = 103


@functools.lru_cache(maxsize=1)
def _raw_table() -> tuple[tuple[str, ...], np.ndarray]:
    from pymatgen.core import Element

    symbols, rows = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing data for heavy elements
        for z in range(1, MAX_Z + 1):
            e = Element.from_Z(z)

            def num(v):
                try:
                    f = float(v)
                except (TypeError, ValueError):
                    return np.nan
                return f if np.isfinite(f) else np.nan

            radius = num(e.atomic_radius)
            if np.isnan(radius):
                radius = num(e.atomic_radius_calculated)
            try:
                ion = num(e.ionization_energy)
            except Exception:  # noqa: BLE001 - missing data for some heavy elements
                ion = np.nan
            block = str(e.block)
            symbols.append(e.symbol)
            rows.append([num(e.row), num(e.group), num(e.mendeleev_no), num(e.X), radius, np.log(num(e.atomic_mass)), ion]
                        + [float(block == b) for b in "spdf"])
    return tuple(symbols), np.array(rows, dtype=np.float64)


def element_property_table():
    """DataFrame (103 elements H..Lr x 11 columns, indexed by symbol): period, group, Mendeleev
    number, Pauling electronegativity, atomic radius, log atomic mass, first ionisation energy and
    a one-hot of the block. Missing values (e.g. the electronegativity of He, Ne, Ar) are filled
    with the column mean, so every row is finite."""
    import pandas as pd

    symbols, x = _raw_table()
    x = x.copy()
    mean = np.nanmean(x, axis=0)
    bad = ~np.isfinite(x)
    x[bad] = np.take(mean, np.nonzero(bad)[1])
    return pd.DataFrame(x, index=list(symbols), columns=list(PROPERTY_COLUMNS))
