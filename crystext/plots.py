"""Pictures of element vectors: 2-D maps (PCA, t-SNE, UMAP) coloured by periodic-table group, and
cosine-similarity heatmaps in periodic order, ours beside any ElementEmbeddings set.

Every set is z-scored per dimension before projection and cosine similarity (as ElementEmbeddings
does by default), so sets with features on very different scales (Magpie) compare fairly.
Only the elements common to every plotted set are drawn, so panels show the same points.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError

METHODS = ("pca", "tsne", "umap")
_METHOD_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
ORDERS = ("z", "mendeleev")

# periodic-table group -> colour category (lanthanides and actinides apart from group 3)
_GROUP_LABELS = {1: "1 alkali", 2: "2 alkaline earth", **{g: str(g) for g in range(3, 13)}, 13: "13", 14: "14",
                 15: "15 pnictogens", 16: "16 chalcogens", 17: "17 halogens", 18: "18 noble gases"}


def element_group(symbol: str) -> str:
    """Colour category of an element: its group (1..18), or "lanthanides"/"actinides"."""
    from pymatgen.core import Element

    el = Element(symbol)
    if el.is_lanthanoid:
        return "lanthanides"
    if el.is_actinoid:
        return "actinides"
    return _GROUP_LABELS[el.group]


def _category_styles() -> dict[str, tuple[Any, str]]:
    """Category -> (colour, marker): bold colours and circles for the main groups, a grey ramp and
    squares for transition groups 3-12, triangles for the f-block."""
    import matplotlib

    tab = matplotlib.colormaps["tab10"]
    styles: dict[str, tuple[Any, str]] = {}
    for i, g in enumerate((1, 2, 13, 14, 15, 16, 17, 18)):
        styles[_GROUP_LABELS[g]] = (tab([0, 1, 2, 3, 4, 5, 6, 8][i]), "o")
    for g in range(3, 13):
        shade = 0.9 - 0.6 * (g - 3) / 9
        styles[_GROUP_LABELS[g]] = ((shade, shade, shade, 1.0), "s")
    styles["lanthanides"] = (tab(9), "^")
    styles["actinides"] = ((0.55, 0.0, 0.0, 1.0), "v")
    return styles


def _grid(n: int, width: float, height: float):
    """Panels in rows of two (one row for one or two sets)."""
    import matplotlib.pyplot as plt

    cols = 1 if n == 1 else 2
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def periodic_order(symbols, order: str = "z") -> list[str]:
    """Symbols sorted by atomic number (``"z"``) or Pettifor's Mendeleev number (``"mendeleev"``)."""
    from pymatgen.core import Element

    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, not {order!r}")
    if order == "z":
        return sorted(symbols, key=lambda s: Element(s).Z)
    return sorted(symbols, key=lambda s: (Element(s).mendeleev_no or 1000, Element(s).Z))


def load_table(spec: Any) -> tuple[str, pd.DataFrame]:
    """``(name, element x dim DataFrame)`` for a DataFrame, a CSV path or an ElementEmbeddings name."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], pd.DataFrame):
        return spec
    if isinstance(spec, pd.DataFrame):
        return "table", spec
    name = Path(str(spec)).stem if Path(str(spec)).is_file() else str(spec)
    try:
        from .composition import load_element_table
    except ImportError:  # composition pooling not installed here: read ElementEmbeddings directly
        load_element_table = None
    if load_element_table is not None:
        table = load_element_table(spec)
        df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table).T
    elif Path(str(spec)).is_file():
        df = pd.read_csv(spec, index_col=0)
    else:
        from elementembeddings.core import Embedding

        try:
            df = Embedding.load_data(str(spec)).as_dataframe()
        except KeyError:
            raise ConfigError(f"{spec!r} is neither a CSV file nor an ElementEmbeddings set name") from None
    return name, df.astype(float)


def _prepare(tables: list[tuple[str, pd.DataFrame]], max_z: int = 94) -> tuple[list[str], list[np.ndarray]]:
    """Common elements (Z <= max_z) and each set's z-scored matrix over them."""
    from pymatgen.core import Element

    common = set.intersection(*(set(map(str, df.index)) for _, df in tables))
    common = {s for s in common if Element.is_valid_symbol(s) and Element(s).Z <= max_z}
    if len(common) < 5:
        raise ConfigError(f"only {len(common)} elements are common to {[n for n, _ in tables]}; nothing to plot")
    symbols = periodic_order(common, "z")
    mats = []
    for _, df in tables:
        x = df.loc[symbols].to_numpy(dtype=float)
        std = x.std(0)
        mats.append((x - x.mean(0)) / np.where(std > 0, std, 1.0))
    return symbols, mats


def project(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D coordinates of the rows of ``x`` by PCA, t-SNE or UMAP."""
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(5, (len(x) - 1) // 4)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed).fit_transform(x)
    raise ConfigError(f"method must be one of {METHODS}, not {method!r}")


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    y = x / np.where(norm > 0, norm, 1.0)
    return y @ y.T


def plot_projection(tables: list[tuple[str, pd.DataFrame]], method: str, out: str | os.PathLike,
                    seed: int = 0) -> Path:
    """One panel per set: the elements in 2-D, coloured by group, each point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    symbols, mats = _prepare(tables)
    groups = [element_group(s) for s in symbols]
    styles = _category_styles()
    fig, axes = _grid(len(tables), 7.5, 6.8)
    for ax, (name, df), x in zip(axes, tables, mats):
        xy = project(x, method, seed)
        if method == "pca":
            from sklearn.decomposition import PCA

            ratio = PCA(n_components=2).fit(x).explained_variance_ratio_
            ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
            ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
        else:
            ax.set_xlabel(f"{_METHOD_LABELS[method]} 1")
            ax.set_ylabel(f"{_METHOD_LABELS[method]} 2")
        for cat in dict.fromkeys(groups):
            pick = [i for i, g in enumerate(groups) if g == cat]
            colour, marker = styles[cat]
            ax.scatter(xy[pick, 0], xy[pick, 1], color=colour, marker=marker, s=55, edgecolors="k", linewidths=0.4)
        for (px, py), sym in zip(xy, symbols):
            ax.annotate(sym, (px, py), fontsize=7, ha="center", va="bottom", xytext=(0, 3), textcoords="offset points")
        ax.set_title(f"{name} ({df.shape[1]}-D)")
        ax.grid(alpha=0.2)
    used = [c for c in styles if c in set(groups)]
    handles = [Line2D([], [], marker=styles[c][1], ls="", markerfacecolor=styles[c][0], markeredgecolor="k",
                      markersize=8, label=c) for c in used]
    fig.legend(handles=handles, title="periodic-table group", loc="center right", fontsize=9, title_fontsize=9)
    fig.suptitle(f"Element vectors, {_METHOD_LABELS[method]} of z-scored vectors ({len(symbols)} common elements)")
    fig.tight_layout(rect=(0, 0, 0.85, 0.97))
    out = Path(out)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def plot_cosine(tables: list[tuple[str, pd.DataFrame]], out: str | os.PathLike, order: str = "mendeleev") -> Path:
    """One heatmap per set: cosine similarity of z-scored vectors, rows/columns in periodic order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    symbols, mats = _prepare(tables)
    ordered = periodic_order(symbols, order)
    idx = [symbols.index(s) for s in ordered]
    fig, axes = _grid(len(tables), 7.8, 7.4)
    image = None
    for ax, (name, df), x in zip(axes, tables, mats):
        sim = cosine_matrix(x[idx])
        image = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(ordered)))
        ax.set_yticks(range(len(ordered)))
        ax.set_xticklabels(ordered, fontsize=5, rotation=90)
        ax.set_yticklabels(ordered, fontsize=5)
        ax.tick_params(length=1.5, pad=1)
        ax.set_title(f"{name} ({df.shape[1]}-D)")
    label = "Mendeleev (Pettifor) number" if order == "mendeleev" else "atomic number"
    fig.suptitle(f"Cosine similarity of z-scored element vectors, ordered by {label}")
    fig.tight_layout(rect=(0, 0, 0.9, 0.97))
    fig.colorbar(image, cax=fig.add_axes((0.92, 0.25, 0.015, 0.5)), label="cosine similarity")
    out = Path(out)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def plot_elements(run: Any, out_dir: str | os.PathLike, compare: list[str] = (), methods=("pca", "tsne"),
                  order: str = "mendeleev", name: str | None = None, seed: int = 0) -> list[Path]:
    """Draw our element vectors beside ElementEmbeddings sets; returns the PNG paths.

    Args:
        run: a run folder / name / Hub id / ``(model, tokenizer)``, or an element DataFrame or CSV.
        out_dir: folder for ``elements_<method>.png`` and ``elements_cosine.png``.
        compare: ElementEmbeddings set names (``magpie``, ``mat2vec``, ``crystallm``, ...) or CSVs.
        methods: any of ``pca``, ``tsne``, ``umap``.
        order: heatmap order, ``"mendeleev"`` or ``"z"``.
        name: title of our panel (default: the run folder's name).
    """
    from .embeddings import element_embeddings

    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, not {m!r}")
    if isinstance(run, pd.DataFrame) or (isinstance(run, (str, os.PathLike)) and Path(run).is_file()):
        ours = load_table(run)
    else:
        df = element_embeddings(run)
        # untrained rows sit far from the rest (initial weights) and squeeze every other element into a strip
        untrained = df.attrs.get("untrained", [])
        label = name or (Path(str(run)).name if isinstance(run, (str, os.PathLike)) else "crystext")
        ours = (f"{label} ({len(untrained)} untrained left out)" if untrained else label, df.drop(index=untrained))
    tables = [ours] + [load_table(c) for c in compare]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_projection(tables, m, out_dir / f"elements_{m}.png", seed) for m in methods]
    paths.append(plot_cosine(tables, out_dir / "elements_cosine.png", order))
    return paths
