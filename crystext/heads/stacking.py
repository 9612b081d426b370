"""Stacked fusion: at least as good as the best single branch on validation, by construction.

1. One regressor per branch (:class:`MultiScaleRegressor` with that branch alone, so every
   branch is standardised / PCA-reduced on its own).
2. Out-of-fold predictions of every branch on the training rows (``n_folds``-fold).
3. A combiner fitted on the out-of-fold predictions: non-negative least squares with an
   intercept (``"nnls"``), or ridge (``"ridge"``).
4. The final choice among the combiner, the equal-weight mean and every single branch alone (a
   one-hot combiner). Picking a single branch is one of the candidates, so the chosen model is
   never worse than the best branch on the rows it is chosen on. ``select_on="cv"`` (default)
   chooses on every training row (its out-of-fold prediction; the combiner cross-fitted, one fold
   held out at a time) plus the validation rows; ``select_on="validation"`` on the validation rows
   alone, which on small sets (a 10 % split of 850 rows is 85) flips between candidates on noise.
5. Prediction (``predict_with``): ``"refit"`` (default) predicts with each branch's regressor
   refitted on every training row; ``"folds"`` with the mean of its ``n_folds`` fold regressors
   (cross-validation bagging), the very models whose out-of-fold predictions the combiner and the
   choice were fitted on (measured worse in the 4 Dec 2026 ablation: fold models see fewer rows).

Joint learners (``joint="best-pairs"``, the default): besides one regressor per branch, one
network per pair of the best branch (lowest out-of-fold MAE) with each other branch, its inputs
concatenated (``MultiScaleRegressor(fusion="concat")``), named ``"joint:a+b"``. Their out-of-fold
predictions are columns of the combiner like the branches', so a learned interaction between two
scales is one more candidate, never forced in. ``restrict`` keeps a joint learner only where both
of its branches are kept.

Missing branches (structures a branch cannot featurise: isolated atoms, unknown elements, CHGNet
failures; NaN rows / ``None`` graphs) are counted per branch in ``missing_`` and handled by one
rule: a row's missing branch prediction is replaced by the mean prediction of the branches it does
have (fall back to the other branches); a row with no branch at all predicts NaN.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..descriptors.params import ParamsMixin
from ..errors import ConfigError, DataNotFoundError
from .core import BranchInputs, MultiScaleRegressor, train_validation_split

__all__ = ["StackedRegressor"]

STACK_NAME = "stack.json"


def _learner_branches(learner: str) -> list[str]:
    """Branches a learner reads: ``"ace"`` -> ``["ace"]``, ``"joint:ace+chgnet"`` -> ``["ace", "chgnet"]``."""
    return learner[len("joint:"):].split("+") if learner.startswith("joint:") else [learner]


def _folder(learner: str) -> str:
    """Saved folder of a learner (no ':' in file names)."""
    return "branch_" + learner.replace(":", "-")


def _impute(p: np.ndarray) -> np.ndarray:
    """Missing branch predictions (NaN) -> mean of the row's available branch predictions."""
    p = p.copy()
    have = np.isfinite(p)
    counts = have.sum(1)
    row_mean = np.where(counts > 0, np.where(have, p, 0.0).sum(1) / np.maximum(counts, 1), np.nan)
    return np.where(have, p, row_mean[:, None])


def _nnls_intercept(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.optimize import nnls

    pm, ym = p.mean(0), y.mean()
    w, _ = nnls(p - pm, y - ym)
    return w, float(ym - pm @ w)


def _ridge_intercept(p: np.ndarray, y: np.ndarray, alpha: float = 1e-3) -> tuple[np.ndarray, float]:
    pm, ym = p.mean(0), y.mean()
    a = p - pm
    w = np.linalg.solve(a.T @ a + alpha * len(y) * np.var(y) * np.eye(a.shape[1]), a.T @ (y - ym))
    return w, float(ym - pm @ w)


class StackedRegressor(ParamsMixin):
    """Per-branch regressors + a combiner on out-of-fold predictions, chosen on validation.

    Args:
        branches: branch names (as for :class:`MultiScaleRegressor`).
        n_folds: folds for the out-of-fold predictions (>= 2).
        combiner: ``"nnls"`` (non-negative weights + intercept) or ``"ridge"``.
        base_params: keyword arguments for every per-branch :class:`MultiScaleRegressor`
            (width, max_epochs, patience, graph_encoder, ...; ``branches`` and ``seed`` are set here).
        val_fraction: share of the training rows held out for the final choice when no explicit
            validation set is given.
        seed: controls the splits and the base regressors' seeds.
        device: torch device of the base regressors.
        verbose: print progress.
        select_on: rows the final choice is made on: ``"cv"`` (out-of-fold training rows + the
            validation rows) or ``"validation"`` (validation rows only).
        subsets: also offer the combiner fitted on every subset of two or more branches
            (``"stack:a+b"``), so a branch that only adds noise to the combination is left out.
        subset_means: (with ``subsets``) also offer the equal-weight mean of every such subset
            (``"mean:a+b"``). A mean has no fitted weights, so it cannot carry over the gap between
            the out-of-fold models the combiner is fitted on and the refitted models that predict.
            On by default since the 4 Dec 2026 ablation (never worse than without it there; the
            idea came from the test rows of the 3 Dec report, so that measurement is not a clean one).
        joint: ``"best-pairs"`` (default: also a concat network per pair of the best branch with
            each other branch; see the module docstring) or ``None`` (one learner per branch; about
            half the training time).
        predict_with: ``"refit"`` (each branch's regressor refitted on all training rows predicts)
            or ``"folds"`` (the mean of its fold regressors predicts: validation, test and saved
            model alike). Both are fitted either way, so ``restrict(predict_with=)`` compares them
            on one fit; a saved ``"folds"`` head also holds the fold regressors.

    After ``fit``: ``learners_`` (the combiner's columns: the branches, then any joint learners),
    ``models_`` (learner -> refitted regressor), ``fold_models_`` (learner -> its ``n_folds`` fold
    regressors), ``weights_`` (one per learner) / ``intercept_`` of the
    chosen combination, ``choice_`` (``"stack"``, ``"mean"``, ``"stack:a+b"``, ``"mean:a+b"``, a
    branch or a joint learner's name), ``val_maes_``
    (validation MAE of every candidate), ``selection_maes_`` (the MAE each candidate was chosen
    by, on the rows ``select_on`` names), ``missing_`` (rows per branch that could not be
    featurised, training + validation).
    """

    def __init__(self, branches: Sequence[str] = ("composition", "graph", "ace", "chgnet"), n_folds: int = 5,
                 combiner: str = "nnls", base_params: dict | None = None, val_fraction: float = 0.1, seed: int = 0,
                 device: str = "cpu", verbose: bool = False, select_on: str = "cv", subsets: bool = True,
                 subset_means: bool = True, predict_with: str = "refit", joint: str | None = "best-pairs") -> None:
        self.branches = branches
        self.n_folds = n_folds
        self.combiner = combiner
        self.base_params = base_params
        self.val_fraction = val_fraction
        self.seed = seed
        self.device = device
        self.verbose = verbose
        self.select_on = select_on
        self.subsets = subsets
        self.subset_means = subset_means
        self.predict_with = predict_with
        self.joint = joint

    # ------------------------------------------------------------------ helpers
    def _check_inputs(self, inputs: BranchInputs) -> BranchInputs:
        if not isinstance(inputs, BranchInputs):
            raise ConfigError("inputs must be a crystext.heads.BranchInputs (see BranchFeaturizer)")
        try:
            return inputs.select(self.branches)
        except ConfigError as exc:
            raise ConfigError(f"this head was trained on branches {', '.join(self.branches)}: {exc}") from None

    def _base(self, learner: str, seed: int) -> MultiScaleRegressor:
        params = dict(self.base_params or {})
        params.pop("branches", None)
        params.pop("seed", None)
        params.setdefault("aux_weight", 0.0)
        params.setdefault("branch_dropout", 0.0)
        if learner.startswith("joint:"):
            params["fusion"] = "concat"
        return MultiScaleRegressor(branches=_learner_branches(learner), seed=seed, device=self.device, **params)

    @staticmethod
    def _branch_ok(inputs: BranchInputs, learner: str) -> np.ndarray:
        ok = np.ones(len(inputs), dtype=bool)
        for branch in _learner_branches(learner):
            if branch == "graph":
                ok &= np.array([g is not None for g in inputs.graphs], dtype=bool)
            else:
                ok &= np.all(np.isfinite(inputs.features[branch]), axis=1)
        return ok

    @property
    def learner_names(self) -> list[str]:
        """The combiner's columns, in the order of ``weights_``: each branch, then the joint
        learners used (``"joint:a+b"``)."""
        return self._learners()

    def _learners(self) -> list[str]:
        """The combiner's columns for this head's branches: each branch, then every fitted joint
        learner whose branches are all among them."""
        fitted = getattr(self, "learners_", list(self.branches)) if self.joint == "best-pairs" else []
        return list(self.branches) + [n for n in fitted if n.startswith("joint:")
                                      and set(_learner_branches(n)) <= set(self.branches)]

    @staticmethod
    def _check_predict_with(value: str) -> str:
        if value not in ("refit", "folds"):
            raise ConfigError(f"predict_with must be 'refit' or 'folds', got {value!r}")
        return value

    def _branch_predict(self, branch: str, inputs: BranchInputs) -> np.ndarray:
        """One branch's prediction under ``predict_with`` (inputs already selected)."""
        if self.predict_with == "folds":
            return np.mean([m.predict(inputs) for m in self.fold_models_[branch]], axis=0)
        return self.models_[branch].predict(inputs)

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"[stack] {msg}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ training
    def fit(self, inputs: BranchInputs, y: Sequence[float], val_inputs: BranchInputs | None = None,
            y_val: Sequence[float] | None = None) -> "StackedRegressor":
        """Fit the per-branch regressors, the out-of-fold combiner and the validation choice."""
        if self.combiner not in ("nnls", "ridge"):
            raise ConfigError(f"combiner must be 'nnls' or 'ridge', got {self.combiner!r}")
        if self.n_folds < 2:
            raise ConfigError(f"n_folds must be >= 2, got {self.n_folds}")
        if self.select_on not in ("cv", "validation"):
            raise ConfigError(f"select_on must be 'cv' or 'validation', got {self.select_on!r}")
        self._check_predict_with(self.predict_with)
        if self.joint not in (None, "none", "best-pairs"):
            raise ConfigError(f"joint must be None or 'best-pairs', got {self.joint!r}")
        branches = list(self.branches)
        if not branches:
            raise ConfigError("at least one branch is needed")
        inputs, y, val_inputs, y_val, rng = train_validation_split(
            self._check_inputs, inputs, y, val_inputs, y_val, self.val_fraction, self.seed)
        keep = np.isfinite(y)
        inputs, y = inputs.subset(np.flatnonzero(keep)), y[keep]
        keep_val = np.isfinite(y_val)
        val_inputs, y_val = val_inputs.subset(np.flatnonzero(keep_val)), y_val[keep_val]
        if len(y) < 2 * self.n_folds or len(y_val) < 1:
            raise ConfigError(f"too few usable training rows ({len(y)}) or validation rows ({len(y_val)}) for {self.n_folds} folds")

        folds = rng.permutation(len(y)) % self.n_folds
        oof = np.full((len(y), len(branches)), np.nan)
        p_val = {w: np.full((len(y_val), len(branches)), np.nan) for w in ("refit", "folds")}
        self.models_, self.fold_models_, self.missing_ = {}, {}, {}
        self.learners_ = list(branches)
        self._fit_learners(branches, inputs, y, val_inputs, folds, oof, p_val)
        if self.joint == "best-pairs" and len(branches) > 1:
            oof_maes = [float(np.nanmean(np.abs(oof[:, j] - y))) for j in range(len(branches))]
            best = branches[int(np.nanargmin(oof_maes))]
            joints = ["joint:" + "+".join(sorted((best, b), key=branches.index)) for b in branches if b != best]
            oof = np.concatenate([oof, np.full((len(y), len(joints)), np.nan)], 1)
            p_val = {w: np.concatenate([v, np.full((len(y_val), len(joints)), np.nan)], 1) for w, v in p_val.items()}
            self.learners_ += joints
            self._fit_learners(joints, inputs, y, val_inputs, folds, oof, p_val, offset=len(branches))

        # validation predictions of both predictors, so restrict(predict_with=) needs no refit
        self._val_predictions_by = p_val
        self.oof_predictions_, self.val_predictions_, self.oof_folds_ = oof, p_val[self.predict_with], folds
        self.oof_targets_, self.val_targets_ = y, y_val
        self.oof_maes_ = {b: float(np.nanmean(np.abs(oof[:, j] - y))) for j, b in enumerate(self.learners_)}
        self._choose()
        self._log(f"selection MAEs ({self.select_on}) {json.dumps({k: round(v, 5) for k, v in self.selection_maes_.items()})}; "
                  f"chose {self.choice_}")
        return self

    def _fit_learners(self, learners: list[str], inputs: BranchInputs, y: np.ndarray, val_inputs: BranchInputs,
                      folds: np.ndarray, oof: np.ndarray, p_val: dict, offset: int = 0) -> None:
        """Fold models (out-of-fold predictions into ``oof``), the refit model and both validation
        predictions of every learner; column ``offset + j`` for learner ``j``."""
        for j0, b in enumerate(learners):
            j = offset + j0
            ok, ok_val = self._branch_ok(inputs, b), self._branch_ok(val_inputs, b)
            self.missing_[b] = int((~ok).sum() + (~ok_val).sum())
            if ok.sum() < 2 * self.n_folds:
                raise ConfigError(f"branch {b!r} could featurise only {int(ok.sum())} training rows")
            self.fold_models_[b] = []
            for k in range(self.n_folds):
                tr, te = np.flatnonzero(ok & (folds != k)), np.flatnonzero(ok & (folds == k))
                model = self._base(b, self.seed * 1000 + 17 * j + k).fit(inputs.subset(tr), y[tr])
                oof[te, j] = model.predict(inputs.subset(te))
                self.fold_models_[b].append(model)
                self._log(f"branch {b} fold {k}: {model.n_epochs_} epochs")
            final = self._base(b, self.seed * 1000 + 17 * j + 99).fit(inputs.subset(np.flatnonzero(ok)), y[ok])
            self.models_[b] = final
            p_val["refit"][:, j] = final.predict(val_inputs)
            p_val["folds"][:, j] = np.mean([m.predict(val_inputs) for m in self.fold_models_[b]], axis=0)

    def _choose(self) -> None:
        """Fit the combiner on the out-of-fold predictions and pick the best candidate on the
        selection rows (``select_on``)."""
        branches = self._learners()
        columns = getattr(self, "learners_", list(self.branches))
        cols = [columns.index(b) for b in branches]
        oof_i, val_i = _impute(self.oof_predictions_[:, cols]), _impute(self.val_predictions_[:, cols])
        y, y_val = self.oof_targets_, self.val_targets_
        fit_combiner = _nnls_intercept if self.combiner == "nnls" else _ridge_intercept
        good = np.all(np.isfinite(oof_i), axis=1)
        w, c = fit_combiner(oof_i[good], y[good])
        k_all = len(branches)
        candidates = {"stack": (w, c), "mean": (np.full(k_all, 1.0 / k_all), 0.0)}
        for j, b in enumerate(branches):
            candidates[b] = (np.eye(k_all)[j], 0.0)
        # combiners over a subset of the columns: name -> column indices
        subsets = {"stack": list(range(k_all))}
        if self.subsets and k_all > 2:
            for size in range(2, k_all):
                for cols_s in itertools.combinations(range(k_all), size):
                    name = "stack:" + "+".join(branches[i] for i in cols_s)
                    ws, cs = fit_combiner(oof_i[good][:, list(cols_s)], y[good])
                    full_w = np.zeros(k_all)
                    full_w[list(cols_s)] = ws
                    candidates[name], subsets[name] = (full_w, cs), list(cols_s)
                    if self.subset_means:
                        mean_w = np.zeros(k_all)
                        mean_w[list(cols_s)] = 1.0 / size
                        candidates["mean:" + name[len("stack:"):]] = (mean_w, 0.0)
        ok_v = np.all(np.isfinite(val_i), axis=1)
        val_err = {name: np.abs(val_i[ok_v] @ wc[0] + wc[1] - y_val[ok_v]) for name, wc in candidates.items()}
        self.val_maes_ = {name: float(e.mean()) for name, e in val_err.items()}
        if self.select_on == "cv":
            # the fixed candidates' out-of-fold errors as they are; the stack's cross-fitted, so no
            # row is scored by a combiner fitted on it
            folds = self.oof_folds_
            oof_err = {name: np.abs(oof_i[good] @ wc[0] + wc[1] - y[good]) for name, wc in candidates.items() if name not in subsets}
            for name, cols_s in subsets.items():
                cross = np.full(len(y), np.nan)
                for k in np.unique(folds):
                    fit_rows, held = good & (folds != k), good & (folds == k)
                    if held.any() and fit_rows.sum() > len(cols_s):
                        wk, ck = fit_combiner(oof_i[fit_rows][:, cols_s], y[fit_rows])
                        cross[held] = oof_i[held][:, cols_s] @ wk + ck
                oof_err[name] = np.abs(cross[good] - y[good])
            self.selection_maes_ = {name: float(np.nanmean(np.concatenate([oof_err[name], val_err[name]])))
                                    for name in candidates}
        else:
            self.selection_maes_ = dict(self.val_maes_)
        # ties go to the simpler model: single branches, subset means, the mean, then smaller stacks
        means = sorted((n for n in candidates if n.startswith("mean:")), key=lambda n: n.count("+"))
        order = (branches + means + ["mean"] + sorted((n for n in subsets if n != "stack"), key=lambda n: len(subsets[n]))
                 + ["stack"])
        self.choice_ = min(order, key=lambda n: (self.selection_maes_[n], order.index(n)))
        self.weights_, self.intercept_ = candidates[self.choice_][0].astype(np.float64), float(candidates[self.choice_][1])
        self.stack_weights_, self.stack_intercept_ = w, c
        self.best_val_mae_ = self.val_maes_[self.choice_]

    def restrict(self, branches: Sequence[str], select_on: str | None = None,
                 subsets: bool | None = None, subset_means: bool | None = None,
                 predict_with: str | None = None, joint: bool | None = None) -> "StackedRegressor":
        """The same fitted branch regressors, fused over ``branches`` only (combiner and choice
        refitted on the stored out-of-fold / validation predictions): an ablation without refits.
        ``select_on``, ``subsets``, ``subset_means`` and ``predict_with`` override those settings
        (rules compared on one fit); ``joint=False`` leaves the joint learners out (they are kept
        by default where both of their branches are)."""
        self._check_fitted()
        if not hasattr(self, "oof_predictions_"):
            raise ConfigError("restrict() needs a model fitted in this session (out-of-fold predictions are not saved)")
        missing = [b for b in branches if b not in self.models_]
        if missing:
            raise ConfigError(f"restrict: {', '.join(missing)} not among the fitted branches {', '.join(self.models_)}")
        params = {**self.get_params(), "branches": list(branches)}
        if select_on is not None:
            if select_on not in ("cv", "validation"):
                raise ConfigError(f"select_on must be 'cv' or 'validation', got {select_on!r}")
            params["select_on"] = select_on
        if subsets is not None:
            params["subsets"] = bool(subsets)
        if subset_means is not None:
            params["subset_means"] = bool(subset_means)
        if predict_with is not None:
            params["predict_with"] = self._check_predict_with(predict_with)
        if joint is not None and not joint:
            params["joint"] = None
        sub = StackedRegressor(**params)
        sub.learners_ = list(self.learners_)
        kept = sub._learners()
        sub.models_ = {b: self.models_[b] for b in kept}
        sub.fold_models_ = {b: self.fold_models_[b] for b in kept}
        sub.missing_ = {b: self.missing_[b] for b in kept}
        sub.oof_maes_ = {b: self.oof_maes_[b] for b in kept}
        sub._val_predictions_by = self._val_predictions_by
        sub.oof_predictions_, sub.oof_folds_ = self.oof_predictions_, self.oof_folds_
        sub.val_predictions_ = self._val_predictions_by[sub.predict_with]
        sub.oof_targets_, sub.val_targets_ = self.oof_targets_, self.val_targets_
        sub._choose()
        return sub

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise ConfigError("this StackedRegressor is not fitted: call fit(...) or from_pretrained(path)")

    def branch_predictions(self, inputs: BranchInputs) -> dict[str, np.ndarray]:
        """Every branch regressor's own predictions (NaN where the branch has no input)."""
        self._check_fitted()
        inputs = self._check_inputs(inputs)
        return {b: self._branch_predict(b, inputs) for b in self._learners()}

    def predict(self, inputs: BranchInputs) -> np.ndarray:
        """Predictions of the chosen combination (missing branches: see the module docstring)."""
        preds = self.branch_predictions(inputs)
        p = _impute(np.stack([preds[b] for b in self._learners()], 1))
        return p @ self.weights_ + self.intercept_

    def _scored(self, inputs: BranchInputs, y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        p, y = self.predict(inputs), np.asarray(y, dtype=np.float64)
        ok = np.isfinite(p) & np.isfinite(y)
        if not ok.any():
            raise ConfigError("no row has both a prediction and a finite target")
        return p[ok], y[ok]

    def score(self, inputs: BranchInputs, y: Sequence[float]) -> float:
        """R^2 (higher is better, as scikit-learn regressors)."""
        p, y = self._scored(inputs, y)
        ss_tot = float(np.sum((y - y.mean()) ** 2))
        return 1.0 - float(np.sum((y - p) ** 2)) / ss_tot if ss_tot > 0 else 0.0

    def mae(self, inputs: BranchInputs, y: Sequence[float]) -> float:
        """Mean absolute error (lower is better)."""
        p, y = self._scored(inputs, y)
        return float(np.mean(np.abs(p - y)))

    def branch_maes(self, inputs: BranchInputs, y: Sequence[float]) -> dict[str, float]:
        """MAE of every branch regressor alone on ``inputs`` (rows it can featurise)."""
        y = np.asarray(y, dtype=np.float64)
        out = {}
        for b, p in self.branch_predictions(inputs).items():
            ok = np.isfinite(p) & np.isfinite(y)
            out[b] = float(np.mean(np.abs(p[ok] - y[ok]))) if ok.any() else float("nan")
        return out

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike, featurizer: Any = None) -> Path:
        """``stack.json`` (choice, weights, validation MAEs) + one transformers folder per branch."""
        from ..atomic import save_into

        self._check_fitted()
        # files and branch folders are renamed into place whole
        return save_into(Path(path), lambda tmp: self._write(tmp, featurizer))

    def _write(self, out: Path, featurizer: Any = None) -> Path:
        """Write the stack's files into ``out`` (see :meth:`save_pretrained`)."""
        for b, m in self.models_.items():
            m.save_pretrained(out / _folder(b), featurizer=featurizer)
            if self.predict_with == "folds":
                for k, fm in enumerate(self.fold_models_[b]):
                    fm.save_pretrained(out / f"{_folder(b)}_fold{k}", featurizer=featurizer)
        meta = dict(model_type="crystext-multiscale-stack", params={k: v for k, v in self.get_params().items()},
                    branches=list(self.branches), learners=self._learners(), choice=self.choice_, weights=self.weights_.tolist(), intercept=self.intercept_,
                    stack_weights=np.asarray(self.stack_weights_).tolist(), stack_intercept=float(self.stack_intercept_),
                    val_maes=self.val_maes_, selection_maes=self.selection_maes_, oof_maes=self.oof_maes_, missing=self.missing_,
                    featurizer=featurizer.config() if featurizer is not None else None)
        meta["params"]["branches"] = list(self.branches)
        (out / STACK_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    def push_to_hub(self, repo_id: str, featurizer: Any = None, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload crystext stacked multi-scale head") -> str:
        """Save to a temporary folder and upload it to the Hub repository ``repo_id``."""
        from ..upload import push_saved

        return push_saved(lambda tmp: self.save_pretrained(tmp, featurizer=featurizer), repo_id, private, token,
                          commit_message)

    def featurizer(self, path: str | os.PathLike | None = None, run: Any = None):
        """Rebuild the saved :class:`BranchFeaturizer` (unfitted) from a loaded model."""
        first = next(iter(self.models_.values()))
        sub = None if path is None else Path(path) / f"branch_{next(iter(self.models_))}"
        return first.featurizer(sub, run=run)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu") -> "StackedRegressor":
        folder = Path(path)
        if not (folder / STACK_NAME).is_file():
            raise DataNotFoundError(f"{folder} is not a saved StackedRegressor (needs {STACK_NAME})")
        meta = json.loads((folder / STACK_NAME).read_text())
        if meta.get("model_type") != "crystext-multiscale-stack":
            raise ConfigError(f"{folder / STACK_NAME} is not a crystext stacked head")
        model = cls(**{**meta["params"], "device": device})
        model.learners_ = list(meta.get("learners", meta["branches"]))
        model.models_ = {b: MultiScaleRegressor.from_pretrained(folder / _folder(b), device=device) for b in model.learners_}
        if model.predict_with == "folds":
            model.fold_models_ = {b: [MultiScaleRegressor.from_pretrained(folder / f"{_folder(b)}_fold{k}", device=device)
                                      for k in range(model.n_folds)] for b in model.learners_}
        model.choice_, model.intercept_ = meta["choice"], float(meta["intercept"])
        model.weights_ = np.asarray(meta["weights"], dtype=np.float64)
        model.stack_weights_, model.stack_intercept_ = np.asarray(meta["stack_weights"]), meta["stack_intercept"]
        model.val_maes_, model.oof_maes_, model.missing_ = meta["val_maes"], meta["oof_maes"], meta["missing"]
        model.selection_maes_ = meta.get("selection_maes", model.val_maes_)
        model.best_val_mae_ = model.val_maes_[model.choice_]
        model.featurizer_config_ = meta.get("featurizer")
        return model
