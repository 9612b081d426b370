"""Intrinsic element-vector metrics: how vector sets agree with each other and with the periodic table.

* :func:`similarity_agreement`: for every pair of sets, the Pearson and Spearman correlation
  between their pairwise cosine-similarity matrices (upper triangle, diagonal excluded) over the
  elements both sets have.
* :func:`periodic_nn_accuracy`: leave-one-out nearest-neighbour (cosine) accuracy of predicting an
  element's periodic-table group (1-18; pymatgen puts La-Lu and Ac-Lr in group 3) and block
  (s, p, d, f; pymatgen places He in the p block) from its vector, over the elements every
  compared set has, so all sets answer the same question.

Columns are standardised (z-score over the set's elements) before the cosine, for every set:
raw property tables such as Magpie mix units (kelvin, g/cm3, ...) and the largest would otherwise
decide the angle alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import pandas as pd


def _standardise(x: np.ndarray) -> np.ndarray:
    std = x.std(0)
    std[std < 1e-12] = 1.0
    return (x - x.mean(0)) / std


def cosine_matrix(table: pd.DataFrame, elements: list[str] | None = None, standardise: bool = True) -> np.ndarray:
    """Pairwise cosine similarities of ``table``'s rows (restricted to ``elements``, in that order)."""
    x = table.loc[elements].to_numpy(np.float64) if elements is not None else table.to_numpy(np.float64)
    if standardise:
        x = _standardise(x)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    norm[norm < 1e-12] = 1.0
    x = x / norm
    return x @ x.T


def _shared(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    return [e for e in a.index if e in set(b.index)]


def similarity_agreement(sets: Mapping[str, pd.DataFrame], standardise: bool = True) -> pd.DataFrame:
    """One row per unordered pair of sets: ``set_a, set_b, n_elements, pearson, spearman``."""
    from scipy.stats import pearsonr, spearmanr

    rows = []
    for (na, a), (nb, b) in itertools.combinations(sets.items(), 2):
        shared = _shared(a, b)
        if len(shared) < 3:
            rows.append({"set_a": na, "set_b": nb, "n_elements": len(shared), "pearson": np.nan, "spearman": np.nan})
            continue
        iu = np.triu_indices(len(shared), k=1)
        sa = cosine_matrix(a, shared, standardise)[iu]
        sb = cosine_matrix(b, shared, standardise)[iu]
        rows.append({"set_a": na, "set_b": nb, "n_elements": len(shared),
                     "pearson": float(pearsonr(sa, sb)[0]), "spearman": float(spearmanr(sa, sb)[0])})
    return pd.DataFrame(rows, columns=["set_a", "set_b", "n_elements", "pearson", "spearman"])


def agreement_matrix(agreement: pd.DataFrame, names: list[str], column: str = "spearman") -> pd.DataFrame:
    """Square, symmetric matrix (diagonal 1) of one column of :func:`similarity_agreement`."""
    m = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for row in agreement.itertuples():
        m.loc[row.set_a, row.set_b] = m.loc[row.set_b, row.set_a] = getattr(row, column)
    return m


def periodic_labels(elements: list[str]) -> pd.DataFrame:
    """Group and block of each element (pymatgen's values)."""
    from pymatgen.core import Element

    return pd.DataFrame({"group": [Element(e).group for e in elements],
                         "block": [Element(e).block for e in elements]}, index=elements)


def periodic_nn_accuracy(sets: Mapping[str, pd.DataFrame], elements: list[str] | None = None,
                         standardise: bool = True) -> pd.DataFrame:
    """Leave-one-out 1-NN accuracy of group and block, per set: ``representation, n_elements,
    group_accuracy, block_accuracy`` (over ``elements``, default: those every set has)."""
    if elements is None:
        common = set.intersection(*(set(t.index) for t in sets.values()))
        first = next(iter(sets.values()))
        from pymatgen.core import Element

        elements = sorted(common, key=lambda e: (Element(e).Z, e)) if common else list(first.index)
    labels = periodic_labels(elements)
    rows = []
    for name, table in sets.items():
        sim = cosine_matrix(table, elements, standardise)
        np.fill_diagonal(sim, -np.inf)
        nn = sim.argmax(1)  # ties: the lowest Z, deterministic
        rows.append({"representation": name, "n_elements": len(elements),
                     "group_accuracy": float(np.mean(labels["group"].to_numpy()[nn] == labels["group"].to_numpy())),
                     "block_accuracy": float(np.mean(labels["block"].to_numpy()[nn] == labels["block"].to_numpy()))})
    return pd.DataFrame(rows, columns=["representation", "n_elements", "group_accuracy", "block_accuracy"])
