"""The fixed regression protocol every representation goes through.

Three regressors, each fitted on the training split only; the validation split is used for
tuning / early stopping only, never for fitting; the test split only for the reported MAE.

* ``ridge``: features standardised (training mean/std), target centred; the penalty ``alpha`` is
  chosen from :attr:`ProtocolConfig.ridge_alphas` by validation MAE. Solved exactly through one
  eigendecomposition of the Gram matrix (primal or dual, whichever is smaller), so the whole
  alpha path costs one fit. Deterministic.
* ``hgb``: scikit-learn ``HistGradientBoostingRegressor`` on raw features (trees need no
  scaling), squared-error loss, early stopping on the validation split (``X_val``/``y_val``).
  Deterministic (no subsampling below 200k rows).
* ``mlp``: a small torch MLP (``d -> 256 -> 128 -> 1``, ReLU) on standardised features and target,
  L1 loss, AdamW, mini-batches; the weights of the epoch with the lowest validation MAE are kept
  (patience :attr:`ProtocolConfig.mlp_patience`). Seeded (initialisation and batch order):
  the only regressor whose result depends on the seed.

Everything runs on one thread (``threadpoolctl`` / ``torch.set_num_threads``) so results do not
depend on the machine's core count; parallelism is across work units (``n_jobs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

REGRESSORS = ("ridge", "hgb", "mlp")
#: regressors whose result does not depend on the seed: fitted once (seed = the first seed)
DETERMINISTIC = ("ridge", "hgb")


@dataclass(frozen=True)
class ProtocolConfig:
    """Hyper-parameters of the protocol (the same for every representation)."""

    ridge_alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 5, 17))
    hgb_learning_rate: float = 0.1
    hgb_max_iter: int = 500
    hgb_patience: int = 10
    hgb_max_bins: int = 63
    mlp_hidden: tuple[int, ...] = (256, 128)
    mlp_lr: float = 1e-3
    mlp_weight_decay: float = 1e-4
    mlp_batch_size: int = 128
    mlp_max_epochs: int = 150
    mlp_patience: int = 12

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the small settings of ``--quick`` (tests, smoke runs)
QUICK = ProtocolConfig(ridge_alphas=tuple(float(a) for a in np.logspace(-3, 3, 7)), hgb_max_iter=60,
                       hgb_patience=5, mlp_hidden=(64,), mlp_max_epochs=40, mlp_patience=6)


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, dtype=np.float64) - np.asarray(pred, dtype=np.float64))))


def _scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    std = x.std(0)
    std[std < 1e-12] = 1.0  # constant columns stay 0 after centring
    return mean, std


def fit_ridge(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray, xte: np.ndarray,
              alphas: Sequence[float]) -> tuple[np.ndarray, dict[str, Any]]:
    """Ridge with ``alpha`` tuned on the validation split; returns test predictions and the alpha."""
    mean, std = _scaler(xtr)
    a, v, t = ((x - mean) / std for x in (xtr, xva, xte))
    y0 = ytr.mean()
    yc = ytr - y0
    alphas = np.asarray(alphas, dtype=np.float64)
    n, d = a.shape
    if d <= n:  # primal: w(alpha) = V diag(1/(s+alpha)) V^T A^T y
        s, vecs = np.linalg.eigh(a.T @ a)
        proj = vecs.T @ (a.T @ yc)
        coef = lambda al: vecs @ (proj / (np.maximum(s, 0) + al))  # noqa: E731
    else:  # dual: w(alpha) = A^T U diag(1/(s+alpha)) U^T y
        s, vecs = np.linalg.eigh(a @ a.T)
        proj = vecs.T @ yc
        coef = lambda al: a.T @ (vecs @ (proj / (np.maximum(s, 0) + al)))  # noqa: E731
    scores = [mae(yva, v @ coef(al) + y0) for al in alphas]
    best = int(np.argmin(scores))
    return t @ coef(alphas[best]) + y0, {"alpha": float(alphas[best]), "val_mae": scores[best]}


def fit_hgb(xtr, ytr, xva, yva, xte, config: ProtocolConfig, seed: int = 0):
    """HistGradientBoosting with early stopping on the validation split."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(
        learning_rate=config.hgb_learning_rate, max_iter=config.hgb_max_iter, max_bins=config.hgb_max_bins,
        early_stopping=True, n_iter_no_change=config.hgb_patience, random_state=seed,
    )
    model.fit(xtr, ytr, X_val=xva, y_val=yva)
    return model.predict(xte), {"n_iter": int(model.n_iter_), "val_mae": mae(yva, model.predict(xva))}


def fit_mlp(xtr, ytr, xva, yva, xte, config: ProtocolConfig, seed: int = 0):
    """Small MLP, L1 loss, best-validation-epoch weights kept (early stopping)."""
    import torch

    mean, std = _scaler(xtr)
    ym, ys = float(ytr.mean()), float(ytr.std()) or 1.0
    tr, va, te = (torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (xtr, xva, xte))
    ytr_t = torch.from_numpy(((ytr - ym) / ys).astype(np.float32))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    width = tr.shape[1]
    for h in config.mlp_hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, 1))
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.AdamW(net.parameters(), lr=config.mlp_lr, weight_decay=config.mlp_weight_decay)
    best, best_state, best_epoch, wait = np.inf, None, 0, 0
    n = tr.shape[0]
    for epoch in range(config.mlp_max_epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, config.mlp_batch_size):
            idx = order[start : start + config.mlp_batch_size]
            opt.zero_grad()
            loss = torch.nn.functional.l1_loss(net(tr[idx]).squeeze(-1), ytr_t[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = mae(yva, net(va).squeeze(-1).numpy() * ys + ym)
        if val < best - 1e-12:
            best, best_epoch, wait = val, epoch + 1, 0
            best_state = {k: p.detach().clone() for k, p in net.state_dict().items()}
        else:
            wait += 1
            if wait >= config.mlp_patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        pred = net(te).squeeze(-1).numpy().astype(np.float64) * ys + ym
    return pred, {"epochs": best_epoch, "val_mae": best}


def fit_predict(regressor: str, xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray,
                xte: np.ndarray, seed: int = 0, config: ProtocolConfig | None = None) -> tuple[np.ndarray, dict]:
    """Fit ``regressor`` (one of :data:`REGRESSORS`) under the protocol; test predictions and fit info.

    Runs single-threaded (BLAS, OpenMP and torch) so the numbers are the same on any machine.
    """
    from threadpoolctl import threadpool_limits

    config = config or ProtocolConfig()
    if regressor not in REGRESSORS:
        raise ConfigError(f"regressor must be one of {REGRESSORS}, not {regressor!r}")
    xtr, xva, xte = (np.ascontiguousarray(x, dtype=np.float64) for x in (xtr, xva, xte))
    ytr, yva = np.asarray(ytr, dtype=np.float64), np.asarray(yva, dtype=np.float64)
    if len(ytr) < 2 or len(yva) < 1:
        raise ConfigError(f"too few rows to fit ({len(ytr)} train, {len(yva)} validation)")
    with threadpool_limits(limits=1):
        if regressor == "ridge":
            return fit_ridge(xtr, ytr, xva, yva, xte, config.ridge_alphas)
        if regressor == "hgb":
            return fit_hgb(xtr, ytr, xva, yva, xte, config, seed)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fit_mlp(xtr, ytr, xva, yva, xte, config, seed)
        finally:
            torch.set_num_threads(threads)


__all__ = ["DETERMINISTIC", "QUICK", "REGRESSORS", "ProtocolConfig", "fit_predict", "mae"]
