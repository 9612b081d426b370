"""Crystal graphs: atoms as nodes, periodic neighbours within a cutoff as edges.

:class:`CrystalGraph` is the featuriser (scikit-learn style): ``fit`` learns the species and the
node-feature table, ``graphs``/``batch`` build graphs for the trainable :class:`GraphEncoder`,
and ``transform`` gives a fixed, training-free structure readout (mean node vector plus a
smooth, Gaussian-smeared radial distribution) for use as a plain feature array.

:class:`GraphEncoder` is a CGCNN-style message-passing network in plain torch (``index_add_``
scatter, no PyTorch Geometric): gated edge messages ``sigmoid(W_f z) * softplus(W_s z)`` with
``z = [h_i, h_j, e_ij]``, weighted by a smooth cutoff envelope so that a neighbour crossing the
cutoff changes nothing abruptly, residual updates, and a mean (or sum) readout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, CrystextError, UnknownElementError
from ..inputs import structure_at
from .params import ParamsMixin
from .neighbors import DEFAULT_MIN_DISTANCE, neighbor_list, warn_isolated

__all__ = ["CrystalGraph", "Graph", "GraphBatch", "GraphEncoder", "onehot_element_table", "resolve_element_table"]

MAX_Z = 103


# ----------------------------------------------------------------------------- element tables
def onehot_element_table(max_z: int = MAX_Z):
    """The fallback node-feature table: one-hot of the atomic number (H..Lr)."""
    import pandas as pd
    from pymatgen.core import Element

    symbols = [Element.from_Z(z).symbol for z in range(1, max_z + 1)]
    return pd.DataFrame(np.eye(max_z, dtype=np.float32), index=symbols, columns=[f"Z{z}" for z in range(1, max_z + 1)])


def resolve_element_table(table: Any):
    """A DataFrame indexed by element symbol from ``table``.

    ``None`` or ``"onehot"``: one-hot of Z. A DataFrame: used as is (e.g.
    ``crystext.element_embeddings(run)``, the LM's element vectors). Another string: a table name
    or CSV path for :func:`crystext.composition.load_element_table` (``"magpie"``, ...).
    """
    import pandas as pd

    if table is None or (isinstance(table, str) and table == "onehot"):
        return onehot_element_table()
    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, (str, Path)):
        from ..composition import load_element_table

        return load_element_table(str(table))
    raise ConfigError(f"element_table must be None, 'onehot', a name/path or a DataFrame, got {type(table).__name__}")


# ----------------------------------------------------------------------------- graph containers
@dataclass
class Graph:
    """One crystal graph (numpy). Edges are directed: message from ``src`` (neighbour) to ``dst`` (centre)."""

    node_features: np.ndarray  # (n, d) float32
    numbers: np.ndarray  # (n,) int64
    dst: np.ndarray  # (E,) int64 centre atom
    src: np.ndarray  # (E,) int64 neighbour atom
    distances: np.ndarray  # (E,) float64
    vectors: np.ndarray  # (E, 3) float64, centre -> neighbour
    name: str = ""

    @property
    def n_nodes(self) -> int:
        return len(self.numbers)

    @property
    def n_edges(self) -> int:
        return len(self.dst)


@dataclass
class GraphBatch:
    """Several graphs joined into one disconnected graph (torch tensors)."""

    x: torch.Tensor  # (N, d) node features
    dst: torch.Tensor  # (E,)
    src: torch.Tensor  # (E,)
    distances: torch.Tensor  # (E,)
    node_graph: torch.Tensor  # (N,) graph index of every node
    n_graphs: int
    numbers: torch.Tensor = field(default=None)  # (N,)

    def to(self, device: Any) -> "GraphBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return GraphBatch(mv(self.x), mv(self.dst), mv(self.src), mv(self.distances), mv(self.node_graph), self.n_graphs, mv(self.numbers))

    def index_select(self, graph_ids: Sequence[int]) -> "GraphBatch":
        """A sub-batch holding the given graphs (in that order)."""
        ids = torch.as_tensor(list(graph_ids), dtype=torch.long)
        counts = torch.bincount(self.node_graph.cpu(), minlength=self.n_graphs)
        starts = torch.cumsum(counts, 0) - counts
        node_ids = torch.cat([torch.arange(starts[g], starts[g] + counts[g]) for g in ids.tolist()]) if len(ids) else torch.zeros(0, dtype=torch.long)
        new_index = torch.full((len(self.node_graph),), -1, dtype=torch.long)
        new_index[node_ids] = torch.arange(len(node_ids))
        dst_cpu, src_cpu = self.dst.cpu(), self.src.cpu()
        keep = new_index[dst_cpu] >= 0
        graph_map = torch.full((self.n_graphs,), -1, dtype=torch.long)
        graph_map[ids] = torch.arange(len(ids))
        dev = self.x.device
        return GraphBatch(
            x=self.x[node_ids.to(dev)],
            dst=new_index[dst_cpu[keep]].to(dev),
            src=new_index[src_cpu[keep]].to(dev),
            distances=self.distances[keep.to(dev)],
            node_graph=graph_map[self.node_graph.cpu()[node_ids]].to(dev),
            n_graphs=len(ids),
            numbers=None if self.numbers is None else self.numbers[node_ids.to(dev)],
        )


def collate(graphs: Sequence[Graph], dtype: torch.dtype = torch.float32) -> GraphBatch:
    """Join graphs into one :class:`GraphBatch` (node indices offset per graph)."""
    sizes = np.array([g.n_nodes for g in graphs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(graphs) else np.zeros(0, dtype=np.int64)
    cat = lambda xs, dt=None: np.concatenate(xs) if len(xs) else np.zeros(0, dtype=dt)  # noqa: E731
    return GraphBatch(
        x=torch.as_tensor(np.concatenate([g.node_features for g in graphs]) if graphs else np.zeros((0, 0)), dtype=dtype),
        dst=torch.as_tensor(cat([g.dst + o for g, o in zip(graphs, offsets)], np.int64), dtype=torch.long),
        src=torch.as_tensor(cat([g.src + o for g, o in zip(graphs, offsets)], np.int64), dtype=torch.long),
        distances=torch.as_tensor(cat([g.distances for g in graphs], np.float64), dtype=dtype),
        node_graph=torch.as_tensor(np.repeat(np.arange(len(graphs)), sizes), dtype=torch.long),
        n_graphs=len(graphs),
        numbers=torch.as_tensor(cat([g.numbers for g in graphs], np.int64), dtype=torch.long),
    )


# ----------------------------------------------------------------------------- smooth pieces
def gaussian_expansion(d: torch.Tensor, cutoff: float, n_gaussians: int, width: float | None = None) -> torch.Tensor:
    """exp(-(d - mu_k)^2 / width^2) with mu_k evenly spaced on [0, cutoff] (CGCNN's edge features)."""
    mu = torch.linspace(0.0, cutoff, n_gaussians, dtype=d.dtype, device=d.device)
    w = width if width is not None else cutoff / (n_gaussians - 1)
    return torch.exp(-((d[:, None] - mu) ** 2) / w**2)


def envelope(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Cosine envelope 0.5 (cos(pi d / cutoff) + 1): 1 at d = 0, 0 with zero slope at the cutoff."""
    return torch.where(d < cutoff, 0.5 * (torch.cos(math.pi * d / cutoff) + 1.0), torch.zeros_like(d))


# ----------------------------------------------------------------------------- featuriser
class CrystalGraph(ParamsMixin):
    """Crystal-graph featuriser.

    Args:
        cutoff: neighbour radius in Å (all periodic images inside it become edges).
        n_gaussians: size of the Gaussian distance expansion of every edge.
        gaussian_width: width of each Gaussian (default: their spacing).
        element_table: node features: ``None``/"onehot" (one-hot of Z), a DataFrame indexed by
            element symbol (e.g. ``crystext.element_embeddings(run)``), a table name for
            ``crystext.composition.load_element_table`` or a CSV path.
        standardize: z-score every table column over the elements of the table (not for one-hot).
        max_neighbors: keep only the nearest ones per atom (ties broken by neighbour index);
            ``None`` keeps all inside the cutoff (smooth and exactly permutation invariant).
        min_distance: atoms closer than this raise OverlappingAtomsError.
        on_error: ``"raise"`` or ``"skip"`` (bad structures are left out of ``graphs`` and
            listed in ``skipped_``; ``transform`` gives them NaN rows).
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        n_gaussians: int = 40,
        gaussian_width: float | None = None,
        element_table: Any = None,
        standardize: bool = True,
        max_neighbors: int | None = None,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        on_error: str = "raise",
        neighbor_backend: str = "auto",
    ) -> None:
        self.cutoff = cutoff
        self.n_gaussians = n_gaussians
        self.gaussian_width = gaussian_width
        self.element_table = element_table
        self.standardize = standardize
        self.max_neighbors = max_neighbors
        self.min_distance = min_distance
        self.on_error = on_error
        self.neighbor_backend = neighbor_backend

    def fit(self, structures: Iterable[Any] = (), y: Any = None) -> "CrystalGraph":
        """Resolve the element table (and check it covers the species of ``structures``)."""
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if not self.cutoff > 0 or self.n_gaussians < 2:
            raise ConfigError("need cutoff > 0 and n_gaussians >= 2")
        table = resolve_element_table(self.element_table)
        x = table.to_numpy(dtype=np.float64)
        is_onehot = self.element_table is None or (isinstance(self.element_table, str) and self.element_table == "onehot")
        if self.standardize and not is_onehot:
            finite = np.isfinite(x)
            mean = np.nanmean(np.where(finite, x, np.nan), axis=0)
            std = np.nanstd(np.where(finite, x, np.nan), axis=0)
            x = (x - mean) / np.where(std > 0, std, 1.0)
        rows = np.all(np.isfinite(x), axis=1)
        self._rows = {str(sym): v.astype(np.float32) for sym, v, ok in zip(table.index, x, rows) if ok}
        self.node_labels_ = [str(c) for c in table.columns]
        self.node_dim_ = x.shape[1]
        species = set()
        for k, s in enumerate(structures):
            st = structure_at(s, k)
            species.update(site.specie.symbol for site in st)
        missing = sorted(sp for sp in species if sp not in self._rows)
        if missing:
            raise UnknownElementError(f"element table has no (finite) vector for {', '.join(missing)}")
        self.species_ = sorted(species)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "_rows"):
            raise ConfigError("this CrystalGraph is not fitted yet: call fit(structures) first")

    def graph(self, structure: Any, index: int = 0) -> Graph:
        """The graph of one structure (raises crystext errors on bad input)."""
        self._check_fitted()
        st = structure_at(structure, index)
        label = f"#{index} {st.composition.reduced_formula}"
        nb = neighbor_list(st, self.cutoff, min_distance=self.min_distance, backend=self.neighbor_backend, name=label)
        warn_isolated(nb, label, "graph messages", stacklevel=4)
        dst, src, dist, vec = nb.centers, nb.neighbors, nb.distances, nb.vectors
        if self.max_neighbors is not None and nb.n_pairs:
            order = np.lexsort((src, dist, dst))  # by centre, then distance, then index
            dst, src, dist, vec = dst[order], src[order], dist[order], vec[order]
            first = np.searchsorted(dst, dst)  # start of each centre's run
            keep = (np.arange(len(dst)) - first) < self.max_neighbors
            dst, src, dist, vec = dst[keep], src[keep], dist[keep], vec[keep]
        feats = np.empty((nb.n_atoms, self.node_dim_), dtype=np.float32)
        for k, site in enumerate(st):
            sym = site.specie.symbol
            try:
                feats[k] = self._rows[sym]
            except KeyError:
                raise UnknownElementError(f"structure {label!r}: the element table has no vector for {sym}") from None
        return Graph(feats, nb.numbers, dst, src, dist, vec, name=label)

    def graphs(self, structures: Iterable[Any]) -> list[Graph]:
        """Graphs of all good structures; bad ones raise, or are skipped (``on_error="skip"``)."""
        self._check_fitted()
        self.skipped_: list[tuple[int, str]] = []
        out = []
        for k, s in enumerate(structures):
            try:
                out.append(self.graph(s, k))
            except CrystextError as exc:
                if self.on_error == "raise":
                    raise
                self.skipped_.append((k, str(exc)))
        return out

    def batch(self, structures: Iterable[Any], dtype: torch.dtype = torch.float32) -> GraphBatch:
        """Graphs of ``structures`` joined into one :class:`GraphBatch` for :class:`GraphEncoder`."""
        return collate(self.graphs(structures), dtype=dtype)

    # training-free readout -------------------------------------------------------------
    def feature_labels(self) -> list[str]:
        self._check_fitted()
        mu = np.linspace(0.0, self.cutoff, self.n_gaussians)
        return [f"node_mean {c}" for c in self.node_labels_] + [f"rdf {m:.3f}A" for m in mu]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.feature_labels(), dtype=object)

    def transform(self, structures: Iterable[Any]) -> np.ndarray:
        """Training-free structure readout: mean node features and the per-atom mean of
        ``sum_j envelope(d_ij) g(d_ij)`` (a smooth radial distribution), one row per structure."""
        self._check_fitted()
        structures = list(structures)
        graphs = self.graphs(structures)
        bad = {k for k, _ in self.skipped_}
        rows = np.full((len(structures), self.node_dim_ + self.n_gaussians), np.nan)
        good = [k for k in range(len(structures)) if k not in bad]
        for k, g in zip(good, graphs):
            d = torch.as_tensor(g.distances)
            e = (gaussian_expansion(d, self.cutoff, self.n_gaussians, self.gaussian_width) * envelope(d, self.cutoff)[:, None]).numpy()
            rdf = np.zeros((g.n_nodes, self.n_gaussians))
            np.add.at(rdf, g.dst, e)
            rows[k] = np.concatenate([g.node_features.mean(0), rdf.mean(0)])
        return rows

    def fit_transform(self, structures: Iterable[Any], y: Any = None) -> np.ndarray:
        structures = list(structures)
        return self.fit(structures).transform(structures)

    def encoder(self, **kwargs) -> "GraphEncoder":
        """A :class:`GraphEncoder` sized for this featuriser (node_dim, cutoff, gaussians)."""
        self._check_fitted()
        return GraphEncoder(
            node_dim=self.node_dim_, cutoff=self.cutoff, n_gaussians=self.n_gaussians, gaussian_width=self.gaussian_width, **kwargs
        )


# ----------------------------------------------------------------------------- encoder
class GatedConv(nn.Module):
    """CGCNN convolution: h_i += LN(sum_j env(d_ij) sigmoid(W_f z_ij) * softplus(W_s z_ij))."""

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(2 * hidden + edge_dim, 2 * hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, dst: torch.Tensor, src: torch.Tensor, e: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        z = self.lin(torch.cat([h[dst], h[src], e], dim=1))
        gate, core = z.chunk(2, dim=1)
        msg = torch.sigmoid(gate) * nn.functional.softplus(core) * env[:, None]
        agg = torch.zeros_like(h).index_add_(0, dst, msg)
        return nn.functional.softplus(h + self.norm(agg))


class GraphEncoder(nn.Module):
    """CGCNN-style encoder: node embedding, ``n_layers`` gated convolutions, mean/sum readout,
    and a small MLP to ``out_dim``. ``forward(batch) -> (n_graphs, out_dim)``;
    ``node_states(batch) -> (n_nodes, hidden)``."""

    def __init__(
        self,
        node_dim: int,
        hidden: int = 64,
        n_layers: int = 3,
        out_dim: int = 64,
        cutoff: float = 5.0,
        n_gaussians: int = 40,
        gaussian_width: float | None = None,
        readout: str = "mean",
    ) -> None:
        super().__init__()
        if readout not in ("mean", "sum"):
            raise ConfigError(f"readout must be 'mean' or 'sum', got {readout!r}")
        self.config = dict(
            node_dim=node_dim, hidden=hidden, n_layers=n_layers, out_dim=out_dim, cutoff=cutoff,
            n_gaussians=n_gaussians, gaussian_width=gaussian_width, readout=readout,
        )
        self.embed = nn.Linear(node_dim, hidden)
        self.convs = nn.ModuleList(GatedConv(hidden, n_gaussians) for _ in range(n_layers))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def node_states(self, batch: GraphBatch) -> torch.Tensor:
        c = self.config
        d = batch.distances
        e = gaussian_expansion(d, c["cutoff"], c["n_gaussians"], c["gaussian_width"])
        env = envelope(d, c["cutoff"])
        h = self.embed(batch.x)
        for conv in self.convs:
            h = conv(h, batch.dst, batch.src, e, env)
        return h

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        h = self.node_states(batch)
        pooled = torch.zeros(batch.n_graphs, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, batch.node_graph, h)
        if self.config["readout"] == "mean":
            counts = torch.bincount(batch.node_graph, minlength=batch.n_graphs).clamp(min=1).to(h.dtype)
            pooled = pooled / counts[:, None]
        return self.head(pooled)

