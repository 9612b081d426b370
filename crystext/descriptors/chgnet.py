"""Pretrained-GNN baseline branch: CHGNet's 64-D crystal and atom vectors.

CHGNet (PyPI ``chgnet``, BSD-3; Deng et al., Nat. Mach. Intell. 2023) ships its MPtrj-trained
weights inside the wheel, so this works offline. It is an optional dependency:
``pip install chgnet`` (0.4.2 installs next to torch 2.13 without replacing it). Without it,
:class:`CHGNetFeaturizer` raises an ImportError that says so.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, Iterable

import numpy as np

from ..errors import ConfigError, CrystextError
from .params import ParamsMixin

__all__ = ["CHGNetFeaturizer", "chgnet_available"]

FEATURE_DIM = 64


def chgnet_available() -> bool:
    """Whether the optional ``chgnet`` package can be imported."""
    try:
        import chgnet  # noqa: F401
    except ImportError:
        return False
    return True


def _load_model(model_name: str, device: str):
    try:
        from chgnet.model import CHGNet
    except ImportError as exc:
        raise ImportError(
            "the CHGNet branch needs the optional package `chgnet` (pip install chgnet; it ships "
            "its pretrained weights and keeps the installed torch)"
        ) from exc
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
        return CHGNet.load(model_name=model_name, use_device=device, verbose=False)


class CHGNetFeaturizer(ParamsMixin):
    """CHGNet crystal vectors as features (scikit-learn style).

    ``transform(structures) -> (n, 64)``: CHGNet's pooled crystal feature (the input of its
    energy head); ``transform_atoms(structures)`` -> list of (n_atoms_i, 64) atom features.

    Args:
        model_name: CHGNet checkpoint shipped in the wheel ("0.3.0", "0.2.0", "r2scan").
        device: "cpu" or "cuda".
        batch_size: structures per CHGNet forward pass.
        on_error: ``"raise"`` or ``"nan"`` (structures CHGNet cannot graph, e.g. an isolated
            atom, give NaN rows; listed in ``skipped_``).
    """

    def __init__(self, model_name: str = "0.3.0", device: str = "cpu", batch_size: int = 32, on_error: str = "raise") -> None:
        self.model_name = model_name
        self.device = device
        self.batch_size = batch_size
        self.on_error = on_error

    def fit(self, structures: Iterable[Any] = (), y: Any = None) -> "CHGNetFeaturizer":
        """Load the pretrained model (nothing is learned)."""
        if self.on_error not in ("raise", "nan"):
            raise ConfigError(f"on_error must be 'raise' or 'nan', got {self.on_error!r}")
        self.model_ = _load_model(self.model_name, self.device)
        return self

    def feature_labels(self) -> list[str]:
        return [f"chgnet_{i}" for i in range(FEATURE_DIM)]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.feature_labels(), dtype=object)

    def _graphs(self, structures: list) -> tuple[list, list[int]]:
        from ..inputs import structure_at

        graphs, good = [], []
        self.skipped_: list[tuple[int, str]] = []
        for k, s in enumerate(structures):
            try:
                st = structure_at(s, k)
                graphs.append(self.model_.graph_converter(st))
                good.append(k)
            except (CrystextError, ValueError, RuntimeError) as exc:
                msg = f"structure #{k}: CHGNet cannot build its graph: {exc}"
                if self.on_error == "raise":
                    raise CrystextError(msg) from exc
                self.skipped_.append((k, msg))
        return graphs, good

    def _predict(self, structures: Iterable[Any], atoms: bool):
        if not hasattr(self, "model_"):
            self.fit()
        structures = list(structures)
        graphs, good = self._graphs(structures)
        preds = []
        if graphs:
            import torch

            with torch.no_grad() if not atoms else contextlib.nullcontext(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
                preds = self.model_.predict_graph(
                    graphs, task="e", return_atom_feas=atoms, return_crystal_feas=not atoms, batch_size=self.batch_size
                )
            if isinstance(preds, dict):
                preds = [preds]
        return structures, good, preds

    def transform(self, structures: Iterable[Any]) -> np.ndarray:
        """(n_structures, 64) CHGNet crystal features."""
        structures, good, preds = self._predict(structures, atoms=False)
        out = np.full((len(structures), FEATURE_DIM), np.nan)
        for k, p in zip(good, preds):
            out[k] = np.asarray(p["crystal_fea"], dtype=np.float64)
        return out

    def transform_atoms(self, structures: Iterable[Any]) -> list[np.ndarray]:
        """Per-atom (n_atoms_i, 64) CHGNet atom features (empty arrays for skipped structures)."""
        structures, good, preds = self._predict(structures, atoms=True)
        out = [np.zeros((0, FEATURE_DIM))] * len(structures)
        for k, p in zip(good, preds):
            out[k] = np.asarray(p["atom_fea"], dtype=np.float64)
        return out

    def fit_transform(self, structures: Iterable[Any], y: Any = None) -> np.ndarray:
        structures = list(structures)
        return self.fit(structures).transform(structures)
