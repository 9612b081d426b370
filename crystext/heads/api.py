"""The heads' two entry points for the command line and notebooks: :func:`train_heads` (tables in,
a trained head and its MAEs out) and :func:`load_head` (either kind of saved head). They sit above
both estimators (:mod:`.core`, :mod:`.stacking`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .core import BranchFeaturizer, MultiScaleRegressor, read_structures_table
from .stacking import STACK_NAME, StackedRegressor


def load_head(path: str | os.PathLike, device: str = "cpu") -> MultiScaleRegressor | StackedRegressor:
    """A saved head of either kind: :class:`StackedRegressor` (folder with ``stack.json``) or
    :class:`MultiScaleRegressor`."""
    if (Path(path) / STACK_NAME).is_file():
        return StackedRegressor.from_pretrained(path, device=device)
    return MultiScaleRegressor.from_pretrained(path, device=device)


def train_heads(
    train: str | os.PathLike,
    test: str | os.PathLike | None,
    target: str,
    branches: Sequence[str],
    out: str | os.PathLike | None = None,
    run: Any = None,
    element_table: Any = "magpie",
    limit: int | None = None,
    fusion: str = "stack",
    n_folds: int = 5,
    **regressor_kwargs,
) -> dict:
    """Featurise a train (and test) table, train a head, report MAEs.

    ``fusion="stack"`` (default): :class:`StackedRegressor` (``regressor_kwargs`` go to every
    per-branch regressor; ``seed``/``device``/``verbose``/``joint``/``subset_means``/``predict_with``
    to the stack); ``"gated"``/``"concat"``:
    one :class:`MultiScaleRegressor`. Returns a dict with ``val_mae``, ``test_mae`` (if ``test``),
    ``dummy_test_mae`` (predicting the training mean), ``branch_test_mae`` (stack),
    ``branch_weights``, and ``choice`` (stack); saves the model to ``out`` if given, with the rows
    of either table that were skipped (unparsable, missing target) listed in ``out/skipped.csv``.
    """
    from ..atomic import SkippedRows, skipped_path

    skipped = SkippedRows(skipped_path(out, folder=True)) if out is not None else None
    s_train, y_train, _ = read_structures_table(train, target, limit, skipped=skipped)
    feat = BranchFeaturizer(branches=branches, run=run, element_table=element_table)
    s_test, y_test = [], np.zeros(0)
    if test is not None:
        s_test, y_test, _ = read_structures_table(test, target, limit, skipped=skipped)
    feat.fit(s_train + s_test)  # species/tables only: no targets involved
    x_train = feat.transform(s_train, progress=True)
    if fusion == "stack":
        outer = {k: regressor_kwargs.pop(k) for k in ("seed", "device", "verbose", "joint", "subset_means", "predict_with")
                 if k in regressor_kwargs}
        model = StackedRegressor(branches=list(branches), n_folds=n_folds, base_params=regressor_kwargs, **outer).fit(x_train, y_train)
        result = dict(branches=list(branches), target=target, n_train=len(y_train), val_mae=model.best_val_mae_,
                      choice=model.choice_, missing=model.missing_)
    else:
        model = MultiScaleRegressor(branches=branches, fusion=fusion, **regressor_kwargs).fit(x_train, y_train)
        result = dict(branches=list(branches), target=target, n_train=len(y_train), val_mae=model.best_val_mae_,
                      epochs=model.n_epochs_, dropped=model.dropped_)
    if test is not None:
        x_test = feat.transform(s_test, progress=True)
        result.update(test_mae=model.mae(x_test, y_test), n_test=len(y_test),
                      dummy_test_mae=float(np.mean(np.abs(y_test - y_train.mean()))))
        if fusion == "stack":
            result.update(branch_test_mae=model.branch_maes(x_test, y_test),
                          branch_weights={b: float(w) for b, w in zip(model.learner_names, model.weights_)})
        else:
            result.update(branch_weights=model.branch_weights(x_test))
    if out is not None:
        model.save_pretrained(out, featurizer=feat)
        result.update(saved=str(out), skipped=len(skipped), skipped_file=str(skipped.write()))
    return result


__all__ = ["load_head", "train_heads"]
