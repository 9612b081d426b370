"""Multi-scale property heads: LM structure vectors + composition + crystal graph + ACE (+ CHGNet).

Every branch is projected to a common width and the projections are fused either by
concatenation + MLP (``fusion="concat"``) or by a gated attention over branches
(``fusion="gated"``: softmax weights per structure, reported by :meth:`MultiScaleRegressor.branch_weights`;
a branch dropped by branch dropout is masked out of the softmax). For a fusion that is never
worse than its best branch on validation, see :class:`crystext.heads.StackedRegressor`.

Branch inputs (:class:`BranchInputs`) are precomputed arrays for the vector branches
(``lm``, ``composition``, ``ace``, ``chgnet``, or any other name) and crystal graphs for the
trainable ``graph`` branch. :class:`BranchFeaturizer` makes them from structures (the LM branch
calls :func:`crystext.embeddings.structure_embeddings` with a run, or takes a precomputed array).
Training uses a validation split with early stopping on its MAE; ``save_pretrained`` writes a
native transformers folder (``config.json`` of :class:`crystext.heads.MultiScaleConfig` +
``model.safetensors`` [+ ``element_table.csv``]) that ``from_pretrained``,
``MultiScaleModel.from_pretrained`` and ``AutoModel.from_pretrained`` read back. ``score`` is R^2
(higher is better, as scikit-learn expects); ``mae`` gives the MAE.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..descriptors.params import ParamsMixin
from ..errors import ConfigError, CrystextError, DataNotFoundError
from .net import _build_net, _torch

__all__ = ["BranchInputs", "BranchFeaturizer", "MultiScaleRegressor", "KNOWN_BRANCHES", "TrainingDivergedError"]

KNOWN_BRANCHES = ("lm", "composition", "graph", "ace", "chgnet")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TABLE_NAME = "element_table.csv"


# ----------------------------------------------------------------------------- inputs
@dataclass
class BranchInputs:
    """Inputs of every branch for n structures.

    ``features[name]``: (n, d) float array of a vector branch (NaN rows mark structures a
    featuriser could not handle). ``graphs``: list of n :class:`crystext.descriptors.graph.Graph`
    (``None`` entries for skipped structures) for the ``graph`` branch.
    """

    features: dict[str, np.ndarray] = field(default_factory=dict)
    graphs: list | None = None

    def __len__(self) -> int:
        if self.features:
            return len(next(iter(self.features.values())))
        return len(self.graphs) if self.graphs is not None else 0

    @property
    def branches(self) -> list[str]:
        return list(self.features) + (["graph"] if self.graphs is not None else [])

    def subset(self, index: Sequence[int] | np.ndarray) -> "BranchInputs":
        idx = np.asarray(index, dtype=np.int64)
        return BranchInputs(
            {k: v[idx] for k, v in self.features.items()},
            None if self.graphs is None else [self.graphs[i] for i in idx],
        )

    def select(self, branches: Iterable[str]) -> "BranchInputs":
        """Only the named branches (raises if one is missing)."""
        branches = list(branches)
        missing = [b for b in branches if b not in self.branches]
        if missing:
            raise ConfigError(f"branch inputs lack {', '.join(missing)} (have: {', '.join(self.branches) or 'none'})")
        return BranchInputs({k: v for k, v in self.features.items() if k in branches}, self.graphs if "graph" in branches else None)

    def valid_rows(self) -> np.ndarray:
        """Boolean mask of structures every branch could featurise."""
        ok = np.ones(len(self), dtype=bool)
        for v in self.features.values():
            ok &= np.all(np.isfinite(v), axis=1)
        if self.graphs is not None:
            ok &= np.array([g is not None for g in self.graphs])
        return ok


class BranchFeaturizer:
    """Turns structures into :class:`BranchInputs` for the named branches.

    Args:
        branches: subset of ``lm, composition, graph, ace, chgnet``.
        run: LM run (folder, name or (model, tokenizer)) for the ``lm`` branch.
        element_table: table for composition pooling and graph node features: a name for
            ``crystext.composition.load_element_table`` / ElementEmbeddings (``"magpie"``), a CSV
            path or a DataFrame indexed by element symbol (e.g. ``crystext.element_embeddings(run)``).
        composition_pooling: pooling for ``crystext.composition.composition_embeddings``.
        ace_params: keyword arguments for :class:`crystext.descriptors.ACE` (defaults below use
            the element table, PCA-reduced to 3 channels, 3 radial functions and l <= 3, to keep
            body order 4 affordable for many-element data).
        graph_params: keyword arguments for :class:`crystext.descriptors.CrystalGraph`.
        lm_params: keyword arguments for ``structure_embeddings`` (layer, pooling, batch_size).
    """

    def __init__(
        self,
        branches: Sequence[str] = ("composition", "graph", "ace"),
        run: Any = None,
        element_table: Any = "magpie",
        composition_pooling: str = "stats4",
        ace_params: dict | None = None,
        graph_params: dict | None = None,
        lm_params: dict | None = None,
    ) -> None:
        unknown = [b for b in branches if b not in KNOWN_BRANCHES]
        if unknown:
            raise ConfigError(f"unknown branch(es) {', '.join(unknown)}; known: {', '.join(KNOWN_BRANCHES)}")
        self.branches = list(branches)
        self.run = run
        self.element_table = element_table
        self.composition_pooling = composition_pooling
        self.ace_params = dict(ace_params or {})
        self.graph_params = dict(graph_params or {})
        self.lm_params = dict(lm_params or {})

    def _table(self):
        if not hasattr(self, "_table_df"):
            self._table_df = load_table(self.element_table)
        return self._table_df

    def config(self) -> dict:
        """JSON-able description (the element table is saved separately when it is a DataFrame)."""
        table = self.element_table if isinstance(self.element_table, (str, type(None))) else TABLE_NAME
        return dict(
            branches=self.branches, run=self.run if isinstance(self.run, (str, type(None))) else None,
            element_table=table, composition_pooling=self.composition_pooling,
            ace_params=self.ace_params, graph_params=self.graph_params, lm_params=self.lm_params,
        )

    def fit(self, structures: Sequence[Any]) -> "BranchFeaturizer":
        """Fit the descriptor featurisers (species lists, tables) on ``structures``."""
        from ..descriptors import ACE, CrystalGraph

        if "ace" in self.branches:
            params = dict(cutoff=5.0, n_radial=3, max_angular=3, species_components=3, on_error="nan")
            params.update(self.ace_params)
            if "species_table" not in params:  # pass species_table=None for one-hot channels
                params["species_table"] = self._table()
            self.ace_ = ACE(**params).fit(structures)
        if "graph" in self.branches:
            params = dict(cutoff=5.0, element_table=self._table(), on_error="skip")
            params.update(self.graph_params)
            self.graph_ = CrystalGraph(**params).fit(structures)
        if "chgnet" in self.branches:
            from ..descriptors import CHGNetFeaturizer

            self.chgnet_ = CHGNetFeaturizer(on_error="nan").fit()
        return self

    def transform(self, structures: Sequence[Any], lm_embeddings: np.ndarray | None = None, progress: bool = False) -> BranchInputs:
        """Branch inputs for ``structures`` (LM vectors from ``lm_embeddings`` when given)."""
        structures = list(structures)
        feats: dict[str, np.ndarray] = {}
        graphs = None
        for b in self.branches:
            if progress:
                print(f"[heads] featurising branch {b} for {len(structures)} structures", file=sys.stderr, flush=True)
            if b == "lm":
                if lm_embeddings is None:
                    if self.run is None:
                        raise ConfigError("the lm branch needs run=... or a precomputed lm_embeddings array")
                    from ..finetune import finetuned_features, is_finetuned

                    if is_finetuned(self.run):  # a fine-tuned folder: mean-pooled states + its prediction
                        lm_embeddings = finetuned_features(self.run, structures, pooling="mean", with_prediction=True)
                    else:
                        from ..embeddings import structure_embeddings

                        lm_embeddings = structure_embeddings(structures, self.run, **self.lm_params)
                lm = np.asarray(lm_embeddings, dtype=np.float64)
                if lm.shape[0] != len(structures):
                    raise ConfigError(f"lm_embeddings has {lm.shape[0]} rows for {len(structures)} structures")
                feats["lm"] = lm
            elif b == "composition":
                feats["composition"] = composition_features(
                    [_formula(s) for s in structures], self._table(), self.composition_pooling
                )
            elif b == "ace":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    feats["ace"] = self.ace_.transform(structures)
            elif b == "chgnet":
                feats["chgnet"] = self.chgnet_.transform(structures)
            elif b == "graph":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.graph_.set_params(on_error="skip")
                    gs = self.graph_.graphs(structures)
                bad = {k for k, _ in self.graph_.skipped_}
                it = iter(gs)
                graphs = [None if k in bad else next(it) for k in range(len(structures))]
        return BranchInputs(feats, graphs)


def _formula(s: Any) -> str:
    from pymatgen.core import Structure

    if isinstance(s, Structure):
        return s.composition.formula
    from ..inputs import to_structure

    return to_structure(s).composition.formula


def load_table(table: Any):
    """Element table (DataFrame indexed by symbol) from a name, CSV path or DataFrame."""
    if table is None:
        raise ConfigError("an element table is needed (e.g. 'magpie', a CSV path, or crystext.element_embeddings(run))")
    from ..descriptors.graph import resolve_element_table

    return resolve_element_table(table)


def composition_features(formulas: Sequence[str], table, pooling: str = "stats4") -> np.ndarray:
    """Composition vectors (:func:`crystext.composition.composition_embeddings`; NaN rows for
    formulas with an element the table lacks)."""
    from ..composition import composition_embeddings

    return np.asarray(composition_embeddings(list(formulas), table, pooling=pooling, on_missing="nan"), dtype=np.float64)


class TrainingDivergedError(CrystextError, RuntimeError):
    """Training produced no epoch with a finite validation error."""


def _top_components(z: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading right singular vectors (d, k) and singular values of the centred matrix ``z`` (n, d),
    at most ``k_max`` of them and only above the numerical-rank threshold.

    A wide matrix with many rows (a 13k-wide ACE branch on 3k structures) takes its components from
    the eigenvectors of the n x n Gram matrix: the same subspace as the SVD at a fraction of the
    cost (seconds instead of 80 s on one core). Its eigenvalues are exact only down to about
    ``lambda_max * n * eps``, so there components need ``s > s_max * 1e-5`` (variance above 1e-10 of
    the largest), a stricter cut than the SVD's, which decides the rank where it can bind (fewer
    rows than ``k_max`` or a small matrix). Signs: each component's largest loading is positive.
    """
    n, d = z.shape
    if d > n > 2 * k_max and n * n * d > 2e9:
        from scipy.linalg import eigh

        lo = max(0, n - k_max)
        lam, u = eigh(z @ z.T, subset_by_index=[lo, n - 1])
        lam, u = lam[::-1], u[:, ::-1]
        keep = lam > lam[0] * 1e-10 if lam.size and lam[0] > 0 else np.zeros(0, dtype=bool)
        s = np.sqrt(lam[keep])
        comp = (z.T @ u[:, keep]) / s
    else:
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        rank = int(np.sum(s > s[0] * max(z.shape) * np.finfo(np.float64).eps * 10)) if s.size and s[0] > 0 else 0
        s, comp = s[:min(rank, k_max)], vt[:min(rank, k_max)].T
    flip = np.sign(comp[np.abs(comp).argmax(0), np.arange(comp.shape[1])])
    return comp * np.where(flip == 0, 1.0, flip), s


def _branch_statistics(x: np.ndarray, reduce_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Standardisation (mean, scale) of a vector branch and, when it is wider than ``reduce_dim``,
    a PCA projection (d, k) to unit-variance components. ``k`` is at most the numerical rank of
    the centred data (<= n - 1): a component with (near) zero training variance would be scaled
    up by ~1/0 and blow up held-out rows."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(0), x.std(0, ddof=1) if len(x) > 1 else np.zeros(x.shape[1])
    scale = np.where(std > 1e-8 * max(float(std.max(initial=0.0)), 1e-30), std, 1.0)
    if x.shape[1] <= reduce_dim:
        return mean, scale, None
    z = (x - mean) / scale
    comp, _ = _top_components(z, max(1, min(reduce_dim, len(x) - 1)))
    if comp.shape[1] == 0:  # constant data: one (arbitrary) direction, as before
        comp = np.eye(z.shape[1], 1)
    sd = (z @ comp).std(0, ddof=1) if len(x) > 1 else np.ones(comp.shape[1])
    return mean, scale, comp / np.where(sd > 0, sd, 1.0)


# ----------------------------------------------------------------------------- estimator
class MultiScaleRegressor(ParamsMixin):
    """A property head over several branches with early stopping (scikit-learn-like API).

    Args:
        branches: branch names in the order they are fused (``graph`` = trainable GNN, every
            other name = a fixed vector from :class:`BranchInputs.features`).
        width: common projection width of every branch.
        fusion: ``"concat"`` (concatenation + MLP) or ``"gated"`` (softmax attention over
            branches; per-branch weights via :meth:`branch_weights`).
        hidden: width of the fusion MLP.
        dropout: dropout inside branches and the fusion MLP.
        branch_dropout: during training, zero each branch's projection for a sample with this
            probability (at least one branch is kept), so the fusion cannot lean only on the
            branch that fits fastest.
        aux_weight: weight of an auxiliary loss in which every branch predicts the (scaled)
            target alone through its own linear read-out; keeps slow learners (the GNN) from
            being starved by the gate while faster fixed-vector branches fit first.
        reduce_dim: vector branches wider than this are PCA-projected (fitted on the training
            split) to this many components before their Linear layer.
        graph_encoder: keyword arguments for :class:`crystext.descriptors.GraphEncoder`
            (hidden, n_layers, cutoff, n_gaussians, ...; node_dim is taken from the graphs).
        lr, weight_decay, batch_size, max_epochs, patience: AdamW training with early stopping on
            the validation MAE (the best epoch's weights are kept).
        val_fraction: share of the training data held out for early stopping when no explicit
            validation set is given.
        loss: ``"l1"`` (MAE, the reported metric), ``"mse"`` or ``"huber"``.
        seed: controls initialisation, splits and batches.
        device: ``"cpu"`` or ``"cuda"``.
    """

    def __init__(
        self,
        branches: Sequence[str] = ("lm", "composition", "graph", "ace"),
        width: int = 128,
        fusion: str = "gated",
        hidden: int = 256,
        dropout: float = 0.1,
        branch_dropout: float = 0.1,
        aux_weight: float = 0.5,
        reduce_dim: int = 256,
        graph_encoder: dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 300,
        patience: int = 30,
        val_fraction: float = 0.1,
        loss: str = "l1",
        seed: int = 0,
        device: str = "cpu",
        verbose: bool = False,
    ) -> None:
        if fusion not in ("concat", "gated"):
            raise ConfigError(f"fusion must be 'concat' or 'gated', got {fusion!r}")
        if loss not in ("l1", "mse", "huber"):
            raise ConfigError(f"loss must be 'l1', 'mse' or 'huber', got {loss!r}")
        if not branches:
            raise ConfigError("at least one branch is needed")
        self.branches = branches  # kept as given (sklearn.base.clone checks identity)
        self.width = width
        self.fusion = fusion
        self.hidden = hidden
        self.dropout = dropout
        self.branch_dropout = branch_dropout
        self.aux_weight = aux_weight
        self.reduce_dim = reduce_dim
        self.graph_encoder = graph_encoder
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.loss = loss
        self.seed = seed
        self.device = device
        self.verbose = verbose

    # -------------------------------------------------------------- helpers
    def _hyper(self) -> dict:
        return dict(
            branches=list(self.branches), width=self.width, fusion=self.fusion, hidden=self.hidden, dropout=self.dropout,
            branch_dropout=self.branch_dropout, aux_weight=self.aux_weight, reduce_dim=self.reduce_dim,
            graph_encoder=dict(self.graph_encoder or {}), lr=self.lr, weight_decay=self.weight_decay,
            batch_size=self.batch_size, max_epochs=self.max_epochs, patience=self.patience,
            val_fraction=self.val_fraction, loss=self.loss, seed=self.seed,
        )

    def _graph_batch(self, inputs: BranchInputs, idx: np.ndarray):
        """The collated graphs of rows ``idx`` (None without a graph branch)."""
        if "graph" not in self.branches:
            return None
        from ..descriptors.graph import collate

        return collate([inputs.graphs[i] for i in idx]).to(self.device)

    def _batch(self, inputs: BranchInputs, idx: np.ndarray):
        torch = _torch()
        dev = torch.device(self.device)
        feats = {
            n: torch.as_tensor(inputs.features[n][idx], dtype=torch.float32, device=dev)
            for n in self.branches if n != "graph"
        }
        return feats, self._graph_batch(inputs, idx)

    def _check_inputs(self, inputs: BranchInputs) -> BranchInputs:
        """The branches this head uses; refuses inputs made for another branch set or width."""
        if not isinstance(inputs, BranchInputs):
            raise ConfigError("inputs must be a crystext.heads.BranchInputs (see BranchFeaturizer)")
        try:
            inputs = inputs.select(self.branches)
        except ConfigError as exc:
            raise ConfigError(f"this head was trained on branches {', '.join(self.branches)}: {exc}") from None
        dims = getattr(self, "config_", {}).get("dims", {})
        for n, d in dims.items():
            got = inputs.features[n].shape[1] if inputs.features[n].ndim == 2 else None
            if got != d:
                raise ConfigError(f"branch {n!r} has {got} features but this head was trained on {d} "
                                  "(inputs made by another featuriser setting?)")
        return inputs

    # -------------------------------------------------------------- training
    def fit(self, inputs: BranchInputs, y: Sequence[float], val_inputs: BranchInputs | None = None,
            y_val: Sequence[float] | None = None) -> "MultiScaleRegressor":
        """Train on ``inputs``/``y``; early stopping on ``val_inputs``/``y_val`` (or on a
        ``val_fraction`` split of the training data). Rows a featuriser could not handle (NaN
        features, missing graphs) are dropped and counted in ``dropped_``."""
        torch = _torch()
        inputs, y, val_inputs, y_val, rng = train_validation_split(
            self._check_inputs, inputs, y, val_inputs, y_val, self.val_fraction, self.seed)
        inputs, y, val_inputs, y_val = self._usable_rows(inputs, y, val_inputs, y_val)
        torch.manual_seed(self.seed)
        net = self._init_net(inputs, y)
        self.net_ = net
        best, best_state = self._train(net, inputs, y, val_inputs, y_val, rng)
        if best_state is None:
            raise TrainingDivergedError(
                f"the validation MAE was not finite in any of {len(self.history_)} epochs (training diverged, "
                f"or the features/targets hold inf or huge values): nothing to keep; try a lower lr (now {self.lr}) "
                "or check the inputs"
            )
        net.load_state_dict(best_state)
        self.best_val_mae_ = best
        self.n_epochs_ = len(self.history_)
        return self

    def _usable_rows(self, inputs: BranchInputs, y: np.ndarray, val_inputs: BranchInputs, y_val: np.ndarray):
        """The rows with every feature and a finite target; the others counted in ``dropped_``."""
        ok, ok_val = inputs.valid_rows() & np.isfinite(y), val_inputs.valid_rows() & np.isfinite(y_val)
        self.dropped_ = int((~ok).sum() + (~ok_val).sum())
        inputs, y = inputs.subset(np.flatnonzero(ok)), y[ok]
        val_inputs, y_val = val_inputs.subset(np.flatnonzero(ok_val)), y_val[ok_val]
        if len(y) < 2 or len(y_val) < 1:
            raise ConfigError(f"too few usable training rows ({len(y)}) or validation rows ({len(y_val)})")
        return inputs, y, val_inputs, y_val

    def _init_net(self, inputs: BranchInputs, y: np.ndarray):
        """A new network for these inputs (``config_`` set), its fixed buffers filled from the
        training data: standardisation, PCA, target scale."""
        torch = _torch()
        dims, reduced, stats = {}, {}, {}
        for n in self.branches:
            if n != "graph":
                dims[n] = int(inputs.features[n].shape[1])
                stats[n] = _branch_statistics(inputs.features[n], self.reduce_dim)
                reduced[n] = dims[n] if stats[n][2] is None else int(stats[n][2].shape[1])
        enc = {}
        if "graph" in self.branches:
            g0 = inputs.graphs[0]
            enc = dict(node_dim=int(g0.node_features.shape[1]), hidden=64, n_layers=3)
            enc.update({k: v for k, v in (self.graph_encoder or {}).items() if k != "out_dim"})
        self.config_ = dict(self._hyper(), dims=dims, reduced_dims=reduced, graph_encoder=enc)
        net = _build_net(self.config_)
        with torch.no_grad():
            for n in dims:
                mean, scale, comp = stats[n]
                br = net.branches[n]
                br.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
                br.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
                if comp is not None:
                    br.proj.copy_(torch.as_tensor(comp, dtype=torch.float32))
            net.y_mean.fill_(float(y.mean()))
            net.y_scale.fill_(float(y.std()) if y.std() > 0 else 1.0)
        return net.to(self.device)

    def _train(self, net, inputs: BranchInputs, y: np.ndarray, val_inputs: BranchInputs, y_val: np.ndarray,
               rng: np.random.Generator) -> tuple[float, dict | None]:
        """Epochs until the validation MAE stops improving for ``patience`` epochs (``history_``
        filled); the best validation MAE and that epoch's weights (None when none was finite)."""
        torch = _torch()
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, self.patience // 3))
        # the standardisation/PCA buffers are fixed: project every row once, not at every epoch
        # (a 13k-wide ACE branch spent most of its training time in that matmul)
        pre, pre_val = self._project(net, inputs), self._project(net, val_inputs)
        y_t = torch.as_tensor(y, dtype=torch.float32, device=self.device)
        best, best_state, bad_epochs = math.inf, None, 0
        self.history_ = []
        for epoch in range(self.max_epochs):
            total = self._train_epoch(net, opt, inputs, pre, y_t, rng.permutation(len(y)))
            val_mae = float(np.mean(np.abs(self._predict(val_inputs, projected=pre_val) - y_val)))
            sched.step(val_mae)
            self.history_.append(dict(epoch=epoch, train_loss=total / len(y), val_mae=val_mae))
            if self.verbose:
                print(f"[heads] epoch {epoch:3d} train {total / len(y):.4f} val MAE {val_mae:.4f}", file=sys.stderr, flush=True)
            if val_mae < best - 1e-9:
                best, best_state, bad_epochs = val_mae, copy.deepcopy(net.state_dict()), 0
            else:
                bad_epochs += 1
                if bad_epochs >= self.patience:
                    break
        return best, best_state

    def _train_epoch(self, net, opt, inputs: BranchInputs, pre: dict, y_t, order: np.ndarray) -> float:
        """One pass over the training rows in ``order``; the summed loss (times batch size)."""
        torch = _torch()
        loss_fn = {"l1": torch.nn.functional.l1_loss, "mse": torch.nn.functional.mse_loss,
                   "huber": torch.nn.functional.smooth_l1_loss}[self.loss]
        scale = float(net.y_scale)
        net.train()
        total = 0.0
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            if len(idx) < 2 and len(order) > 2:
                continue
            gb = self._graph_batch(inputs, idx)
            idx_t = torch.as_tensor(idx, device=self.device)
            pred, _, aux = net({n: x[idx_t] for n, x in pre.items()}, gb, return_aux=True, projected=True)
            loss = loss_fn(pred / scale, y_t[idx] / scale)
            if aux:
                z = (y_t[idx] - net.y_mean) / scale
                loss = loss + self.aux_weight * sum(loss_fn(a, z) for a in aux) / len(aux)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            total += loss.item() * len(idx)
        return total

    # -------------------------------------------------------------- inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise ConfigError("this MultiScaleRegressor is not fitted: call fit(...) or from_pretrained(path)")

    def _project(self, net, inputs: BranchInputs) -> dict:
        """Every vector branch of ``inputs`` through its fixed standardisation/PCA (float32 tensors),
        in chunks so that a wide branch is never held whole in float32 beside its float64 copy."""
        torch = _torch()
        out = {}
        with torch.no_grad():
            for n in self.branches:
                if n == "graph":
                    continue
                x = inputs.features[n]
                out[n] = torch.cat([net.branches[n].project(torch.as_tensor(x[lo : lo + 4096], dtype=torch.float32, device=self.device))
                                    for lo in range(0, len(x), 4096)]) if len(x) else torch.zeros(0, net.branches[n].proj.shape[1])
        return out

    def _predict(self, inputs: BranchInputs, weights: bool = False, projected: dict | None = None):
        torch = _torch()
        net = self.net_
        net.eval()
        preds, alphas = [], []
        with torch.no_grad():
            for lo in range(0, len(inputs), 512):
                idx = np.arange(lo, min(lo + 512, len(inputs)))
                if projected is None:
                    feats, gb = self._batch(inputs, idx)
                else:  # features already projected by _project (training's validation pass)
                    gb = self._graph_batch(inputs, idx)
                    feats = {n: x[lo : lo + len(idx)] for n, x in projected.items()}
                p, a = net(feats, gb, projected=projected is not None)
                preds.append(p.double().cpu().numpy())
                if a is not None:
                    alphas.append(a.double().cpu().numpy())
        pred = np.concatenate(preds) if preds else np.zeros(0)
        if weights:
            return pred, (np.concatenate(alphas) if alphas else None)
        return pred

    def predict(self, inputs: BranchInputs) -> np.ndarray:
        """Predictions (n,); NaN for rows a featuriser could not handle."""
        self._check_fitted()
        inputs = self._check_inputs(inputs)
        ok = inputs.valid_rows()
        out = np.full(len(inputs), np.nan)
        if ok.any():
            out[ok] = self._predict(inputs.subset(np.flatnonzero(ok)))
        return out

    def branch_weights(self, inputs: BranchInputs) -> dict[str, float] | None:
        """Mean gated-fusion weight of every branch over ``inputs`` (None for concat fusion)."""
        self._check_fitted()
        if self.fusion != "gated":
            return None
        inputs = self._check_inputs(inputs)
        inputs = inputs.subset(np.flatnonzero(inputs.valid_rows()))
        _, alpha = self._predict(inputs, weights=True)
        return {n: float(v) for n, v in zip(self.branches, alpha.mean(0))}

    def score(self, inputs: BranchInputs, y: Sequence[float]) -> float:
        """Coefficient of determination R^2 over rows with a prediction (higher is better, as for
        scikit-learn regressors, so model selection picks the best model). See :meth:`mae`."""
        p, y = self._scored(inputs, y)
        ss_res, ss_tot = float(np.sum((y - p) ** 2)), float(np.sum((y - y.mean()) ** 2))
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)

    def mae(self, inputs: BranchInputs, y: Sequence[float]) -> float:
        """Mean absolute error over rows with a prediction (lower is better)."""
        p, y = self._scored(inputs, y)
        return float(np.mean(np.abs(p - y)))

    def _scored(self, inputs: BranchInputs, y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        p = self.predict(inputs)
        y = np.asarray(y, dtype=np.float64)
        ok = np.isfinite(p) & np.isfinite(y)
        if not ok.any():
            raise ConfigError("no row has both a prediction and a finite target")
        return p[ok], y[ok]

    # -------------------------------------------------------------- persistence
    def to_hf(self, featurizer: BranchFeaturizer | None = None):
        """The fitted network as a :class:`crystext.heads.hf.MultiScaleModel` (a ``PreTrainedModel``)."""
        self._check_fitted()
        from .hf import MultiScaleConfig, MultiScaleModel

        fcfg = featurizer.config() if featurizer is not None else getattr(self, "featurizer_config_", None)
        config = MultiScaleConfig(net=self.config_, best_val_mae=self.best_val_mae_, n_epochs=self.n_epochs_, featurizer=fcfg)
        return MultiScaleModel(config, net=self.net_)

    def save_pretrained(self, path: str | os.PathLike, featurizer: BranchFeaturizer | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (a native ``transformers`` folder, read back by
        :meth:`from_pretrained` or ``MultiScaleModel.from_pretrained``) and, when the featuriser's
        element table is a DataFrame, ``element_table.csv``."""
        from ..atomic import save_into

        def write(tmp: Path) -> None:  # each file renamed into place whole; a full disk leaves none half-written
            self.to_hf(featurizer).save_pretrained(str(tmp))
            if featurizer is not None and featurizer.config()["element_table"] == TABLE_NAME:
                featurizer._table().to_csv(tmp / TABLE_NAME)

        return save_into(Path(path), write)

    def push_to_hub(self, repo_id: str, featurizer: BranchFeaturizer | None = None, private: bool = False,
                    token: str | None = None, commit_message: str = "Upload crystext multi-scale head") -> str:
        """Save to a temporary folder and upload it to the Hub repository ``repo_id`` (created if
        needed). Returns the repository id."""
        from ..upload import push_saved

        return push_saved(lambda tmp: self.save_pretrained(tmp, featurizer=featurizer), repo_id, private, token,
                          commit_message)

    @classmethod
    def from_hf(cls, model, device: str = "cpu") -> "MultiScaleRegressor":
        """Estimator around a loaded :class:`crystext.heads.hf.MultiScaleModel`."""
        cfg = dict(model.config.net)
        hyper = {k: cfg[k] for k in ("branches", "width", "fusion", "hidden", "dropout", "branch_dropout", "aux_weight", "reduce_dim", "lr",
                                     "weight_decay", "batch_size", "max_epochs", "patience", "val_fraction", "loss", "seed")}
        est = cls(**hyper, graph_encoder=cfg.get("graph_encoder"), device=device)
        est.config_ = cfg
        est.net_ = model.net.to(device)
        est.best_val_mae_ = model.config.best_val_mae
        est.n_epochs_ = model.config.n_epochs
        est.featurizer_config_ = model.config.featurizer
        return est

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu") -> "MultiScaleRegressor":
        """Load a folder written by :meth:`save_pretrained` (or a Hub repository id)."""
        from .hf import MultiScaleModel

        folder = Path(path)
        if folder.exists() or str(path).startswith((".", "/", "~")):
            if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
                raise DataNotFoundError(f"{folder} is not a saved MultiScaleRegressor (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
            cfg = json.loads((folder / CONFIG_NAME).read_text())
            if cfg.get("model_type") != "crystext-multiscale":
                raise ConfigError(f"{folder / CONFIG_NAME} is not a crystext multi-scale head config "
                                  f"(model_type {cfg.get('model_type')!r}; heads saved before the transformers format must be retrained)")
            from ..atomic import check_model_folder

            check_model_folder(folder)  # a truncated file: one line naming it
        return cls.from_hf(MultiScaleModel.from_pretrained(str(path)), device=device)

    def featurizer(self, path: str | os.PathLike | None = None, run: Any = None) -> BranchFeaturizer:
        """Rebuild the saved :class:`BranchFeaturizer` (unfitted) from a loaded model's config."""
        cfg = getattr(self, "featurizer_config_", None)
        if not cfg:
            raise ConfigError("this model was saved without featuriser settings")
        cfg = dict(cfg)
        if cfg.get("element_table") == TABLE_NAME and path is not None:
            cfg["element_table"] = str(Path(path) / TABLE_NAME)
        if run is not None:
            cfg["run"] = run
        return BranchFeaturizer(**cfg)


def train_validation_split(check, inputs: BranchInputs, y, val_inputs: BranchInputs | None, y_val,
                           val_fraction: float, seed: int):
    """Checked ``(inputs, y, val_inputs, y_val, rng)`` for a head's ``fit``: the given validation
    set, or a seeded ``val_fraction`` of the training rows when none is given. ``check`` validates
    an inputs object against the head's branches (raising a clear error)."""
    inputs = check(inputs)
    y = np.asarray(y, dtype=np.float64)
    if len(y) != len(inputs):
        raise ConfigError(f"{len(inputs)} inputs but {len(y)} targets")
    rng = np.random.default_rng(seed)
    if val_inputs is None:
        perm = rng.permutation(len(y))
        n_val = max(1, int(round(val_fraction * len(y))))
        val_inputs, y_val = inputs.subset(perm[:n_val]), y[perm[:n_val]]
        inputs, y = inputs.subset(perm[n_val:]), y[perm[n_val:]]
    else:
        val_inputs, y_val = check(val_inputs), np.asarray(y_val, dtype=np.float64)
    return inputs, y, val_inputs, y_val, rng


# ----------------------------------------------------------------------------- one-call training
def read_structures_table(path: str | os.PathLike, target: str | None, limit: int | None = None,
                          skipped: Any = None):
    """(structures, targets, ids) from a CSV/Parquet/JSON-lines table with a ``cif`` column and a
    target column (``target=None``: targets are NaN), read by crystext's one table reader
    (:func:`crystext.corpus.sources.iter_table_chunks`). Unparsable rows and missing targets are
    skipped and counted (printed); ``skipped`` (a :class:`crystext.atomic.SkippedRows`) also
    receives each one as ``(id, table, reason, message)``."""
    import pandas as pd

    from ..corpus.sources import ID_COLUMNS, iter_table_chunks, table_columns
    from ..inputs import structure_from_cif

    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"table {p} not found")
    names = table_columns(p)
    if "cif" not in names or (target is not None and target not in names):
        raise ConfigError(f"{p} needs columns 'cif' and {target!r} (has {', '.join(map(str, names))})")
    id_col = next((c for c in ID_COLUMNS if c in names), None)
    cols = ["cif"] + ([target] if target is not None else []) + ([id_col] if id_col else [])
    structures, ys, ids, bad, no_target = [], [], [], 0, 0
    for frame in iter_table_chunks(p, columns=list(dict.fromkeys(cols))):
        for k, row in zip(frame.index, frame.to_dict("records")):
            if limit and k >= limit:
                break
            y = float(pd.to_numeric(row[target], errors="coerce")) if target is not None else float("nan")
            key = str(row[id_col]) if id_col else f"{p.name}:{k}"
            if target is not None and not np.isfinite(y):
                no_target += 1
                if skipped is not None:
                    skipped.add(key, p.name, "missing_target", f"{key}: no numeric {target!r} value")
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    structures.append(structure_from_cif(str(row["cif"]), key))
            except Exception as exc:  # noqa: BLE001 - a bad row is counted, not fatal
                bad += 1
                if skipped is not None:
                    skipped.add(key, p.name, type(exc).__name__, str(exc))
                continue
            ys.append(y)
            ids.append(key)
        if limit and len(frame) and frame.index[-1] >= limit - 1:
            break
    if bad or no_target:
        print(f"[heads] {p.name}: skipped {bad} unparsable rows and {no_target} rows without a target",
              file=sys.stderr, flush=True)
    return structures, np.array(ys), ids
