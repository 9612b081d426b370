"""The multi-scale head's torch network: per-branch projections, then gated or concatenation
fusion and an MLP. Shared by the estimator (:mod:`.core`) and the transformers classes (:mod:`.hf`),
so it lives below both."""

from __future__ import annotations

from typing import Any


def _torch() -> Any:
    """The torch module, imported on first use."""
    import torch

    return torch


def _branch_classes() -> tuple[type, type]:
    """The ``VectorBranch`` and ``GraphBranch`` module classes (defined on use: torch loads lazily)."""
    torch = _torch()
    from torch import nn

    from ..descriptors.graph import GraphEncoder

    class VectorBranch(nn.Module):
        """Standardise (and optionally PCA-project) a fixed vector, then Linear -> SiLU -> LayerNorm."""

        def __init__(self, d_in: int, d_red: int, width: int, dropout: float) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(d_in))
            self.register_buffer("scale", torch.ones(d_in))
            # PCA projection (identity when the branch is not reduced)
            self.register_buffer("proj", torch.eye(d_in) if d_red >= d_in else torch.zeros(d_in, d_red))
            self.net = nn.Sequential(nn.Dropout(dropout * 0.5), nn.Linear(d_red, width), nn.SiLU(), nn.LayerNorm(width))

        def project(self, x):
            """Standardised (and PCA-projected) input: fixed buffers, no trainable weight."""
            return ((x - self.mean) / self.scale) @ self.proj

        def forward(self, x, projected: bool = False):
            return self.net(x if projected else self.project(x))

    class GraphBranch(nn.Module):
        def __init__(self, enc_cfg: dict, width: int) -> None:
            super().__init__()
            self.encoder = GraphEncoder(**{**enc_cfg, "out_dim": width})
            self.norm = nn.LayerNorm(width)

        def forward(self, batch):
            return self.norm(self.encoder(batch))

    return VectorBranch, GraphBranch


def _fuse(net, hs: list) -> tuple[Any, Any]:
    """The fused vector of the branch outputs ``hs`` and the gate's branch weights (None for
    concatenation); in training, each branch of a sample dropped with ``net.branch_dropout``."""
    torch = _torch()
    keep = None
    if net.training and net.branch_dropout > 0 and len(hs) > 1:
        keep = torch.rand(hs[0].shape[0], len(hs), device=hs[0].device) >= net.branch_dropout
        # at least one branch kept per sample
        keep[torch.arange(len(keep)), torch.randint(len(hs), (len(keep),), device=keep.device)] |= ~keep.any(1)
        hs = [h * keep[:, k : k + 1].to(h.dtype) for k, h in enumerate(hs)]
    if net.fusion != "gated":
        return torch.cat(hs, 1), None
    h = torch.stack(hs, 1)  # (B, n_branches, w)
    logits = net.gate(h).squeeze(-1)
    if keep is not None:  # a dropped branch is left out of the softmax, not just zeroed
        logits = logits.masked_fill(~keep, float("-inf"))
    alpha = torch.softmax(logits, dim=1)
    return (alpha[:, :, None] * h).sum(1), alpha


def _build_net(config: dict) -> Any:
    """The torch module for ``config`` (dims, width, fusion, graph encoder, ...)."""
    torch = _torch()
    from torch import nn

    VectorBranch, GraphBranch = _branch_classes()

    class Net(nn.Module):
        def __init__(self, cfg: dict) -> None:
            super().__init__()
            w, hid, p = cfg["width"], cfg["hidden"], cfg["dropout"]
            self.names = list(cfg["branches"])
            self.fusion = cfg["fusion"]
            self.branch_dropout = float(cfg.get("branch_dropout", 0.0))
            self.branches = nn.ModuleDict()
            for name in self.names:
                if name == "graph":
                    self.branches[name] = GraphBranch(cfg["graph_encoder"], w)
                else:
                    self.branches[name] = VectorBranch(cfg["dims"][name], cfg["reduced_dims"][name], w, p)
            if self.fusion == "gated":
                self.gate = nn.Sequential(nn.Linear(w, w), nn.Tanh(), nn.Linear(w, 1))
                d_head = w
            else:
                d_head = w * len(self.names)
            self.head = nn.Sequential(nn.Linear(d_head, hid), nn.SiLU(), nn.Dropout(p), nn.Linear(hid, hid), nn.SiLU(), nn.Linear(hid, 1))
            # per-branch linear read-outs for the auxiliary loss (every branch must predict alone)
            self.aux = nn.ModuleDict({n: nn.Linear(w, 1) for n in self.names}) if cfg.get("aux_weight", 0) > 0 and len(self.names) > 1 else None
            self.register_buffer("y_mean", torch.zeros(()))
            self.register_buffer("y_scale", torch.ones(()))

        def forward(self, feats: dict, graph_batch=None, return_aux: bool = False, projected: bool = False):
            # projected: the vector features already went through their branch's project()
            hs = [self.branches[n](graph_batch) if n == "graph" else self.branches[n](feats[n], projected=projected)
                  for n in self.names]
            aux = [self.aux[n](h).squeeze(-1) for n, h in zip(self.names, hs)] if (return_aux and self.aux is not None) else None
            fused, alpha = _fuse(self, hs)
            pred = self.head(fused).squeeze(-1) * self.y_scale + self.y_mean
            if return_aux:
                return pred, alpha, aux
            return pred, alpha

    return Net(config)
