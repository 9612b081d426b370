"""Element and structure vectors from a pretrained crystext run.

* :func:`element_embeddings`: the input-embedding rows of the element tokens, one row per element
  (the CrystaLLM-style atom vectors), as a DataFrame that ElementEmbeddings can read back
  (:func:`save_element_csv`).
* :func:`structure_embeddings`: a structure's canonical text is tokenized as in training,
  ``<bos> text <eos>`` (the encode step, :mod:`crystext.encoding`), run through the transformer,
  and the hidden states of one layer are pooled:

  - ``pooling="mean"``: the mean over the *text* tokens, i.e. every position except the special
    tokens ``<bos>``/``<eos>`` (``<bos>`` carries no information about the structure: its state is
    the same for every input);
  - ``pooling="last"``: the state at the last position, ``<eos>``, the one token that has attended
    to the whole text.

  ``layer`` counts like ``output_hidden_states``: 0 is the embedding output (token + position),
  ``i`` the output of block ``i``, ``n_layer`` (or ``-1``) the final, layer-normed output.

Batches are right-padded with an attention mask and explicit position ids, so a structure's vector
does not depend on what it is batched with (equal to one-at-a-time within float32 round-off).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .corpus.sources import ID_COLUMNS, iter_table_chunks, table_columns
from .encoding import DEFAULT_SYMPREC, TextForm, canonical_text, encode, skip_reason
from .errors import ConfigError, DataNotFoundError, TokenizerError
from .limits import DEFAULT_MAX_ATOMS, DEFAULT_TIME_LIMIT
from .resolve import resolve_model as _resolve_run_path  # one resolver: release, folder, Hub id
from .settings import REPO_ROOT

POOLINGS = ("mean", "last")
#: Default hidden layer for structure vectors (-1 = final, layer-normed output).
DEFAULT_LAYER = -1

RunLike = Any  # str | os.PathLike (run folder, bare name under models/, Hub id) | (model, tokenizer)


# --------------------------------------------------------------------------- loading


def resolve_device(device: Any = None):
    """``None`` -> CUDA when available, else CPU; ints are CUDA indices, -1 is CPU; strings as torch reads them."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int):
        return torch.device("cpu") if device < 0 else torch.device(f"cuda:{device}")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device ({exc})") from None


def weights_digest(run: str | os.PathLike) -> str | None:
    """SHA-256 (hex) of a local run folder's ``*.safetensors`` files, in name order; ``None`` for a
    Hub id or a folder without safetensors weights. Caches of anything computed from a run's
    weights are named by it, so a retrained run under the same folder name never reads stale ones."""
    import hashlib

    folder = Path(_resolve_run_path(run))
    if not folder.is_dir():
        return None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return None
    digest = hashlib.sha256()
    for w in weights:
        with open(w, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_run(name_or_path: str | os.PathLike, device: Any = None, dtype: Any = "float32", **hub_kwargs: Any):
    """Load a run folder (or a Hub repo id) as ``(model, tokenizer)``, model in eval mode on ``device``.

    ``name_or_path`` is a ``save_pretrained`` folder (``config.json``, ``model.safetensors``,
    tokenizer files), a bare name of a folder under the repository's ``models/``, or a Hub repo id
    (resolved by ``from_pretrained``; set ``HF_HUB_OFFLINE=1`` to stay on the local cache). Only
    safetensors weights are read. ``dtype`` defaults to float32 (reproducible vectors on every
    device); pass ``"auto"`` to keep the checkpoint's dtype or ``"bfloat16"`` for speed on GPU.
    ``hub_kwargs`` (``revision``, ``cache_dir``, ``local_files_only``, ``token``) go to both
    ``from_pretrained`` calls.

    Raises:
        DataNotFoundError: the folder or repo does not exist or holds no loadable model/tokenizer.
        crystext.atomic.DamagedFileError: a file of the folder is empty, truncated or not valid.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _resolve_run_path(name_or_path)
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ConfigError(f"dtype {dtype!r} is not a torch dtype")
        dtype = getattr(torch, dtype)
    if Path(source).is_dir():  # a truncated or empty file: one line naming it, not a loader's traceback
        from .atomic import check_model_folder

        check_model_folder(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, dtype=dtype, **hub_kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataNotFoundError(f"run {name_or_path}: cannot load a model and tokenizer ({first})") from None
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


def as_run(run: RunLike, device: Any = None):
    """``(model, tokenizer)`` from a run folder / name / Hub id, or a ``(model, tokenizer)`` pair as is."""
    if isinstance(run, tuple) and len(run) == 2:
        model, tokenizer = run
        if device is not None:
            model.to(resolve_device(device))
        model.eval()
        return model, tokenizer
    if isinstance(run, (str, os.PathLike)):
        return load_run(run, device=device)
    raise TypeError(f"run must be a run folder, a Hub id or a (model, tokenizer) pair, not {type(run).__name__}")


# --------------------------------------------------------------------------- element vectors


_ELEMENT_RE = None
_SYMBOLS: set[str] = set()


def _elements_in(formula: str) -> set[str]:
    """Element symbols of a formula string (``Fe2 O3``, ``Fe2O3``, ``'Cd1 Cu1 N3'``)."""
    import re

    global _ELEMENT_RE, _SYMBOLS
    if _ELEMENT_RE is None:
        from pymatgen.core import Element

        _ELEMENT_RE = re.compile(r"[A-Z][a-z]?")
        _SYMBOLS = {e.symbol for e in Element}
    return {m for m in _ELEMENT_RE.findall(str(formula)) if m in _SYMBOLS}


def _source_formulas(source: str) -> Iterator[str] | None:
    """Formulas of one corpus source as the corpus summary names it; None when it cannot be read here."""
    import re

    if source == "aflow-prototypes":
        from .builtin import aflow_prototypes

        return (s.composition.formula for _, s, _ in aflow_prototypes())
    path = Path(source)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / source
    if not path.is_file():
        return None
    name = path.name.lower()
    if name.endswith(".csv"):
        df = pd.read_csv(path)
        if "formula" in df.columns:
            return iter(df["formula"].astype(str))
        if "cif" in df.columns:
            rx = re.compile(r"_chemical_formula_sum\s+(.+)")
            return ((m.group(1) if (m := rx.search(str(c))) else "") for c in df["cif"])
        return None
    if name.endswith((".json.bz2", ".json")):
        df = pd.read_json(path, compression="bz2" if name.endswith(".bz2") else None)
        col = next((c for c in ("composition", "formula") if c in df.columns), None)
        return iter(df[col].astype(str)) if col else None
    return None


#: An element vector trained on fewer pretraining documents than this is flagged as untrained
#: (:func:`element_embeddings`' ``attrs["untrained"]``, the exported CSV's ``.trained.csv``, the plots).
MIN_ELEMENT_DOCUMENTS = 20


def _identity_element_counts(folder: Path) -> dict[str, int] | None:
    """Distinct formulas per element in the run's corpus identity (the corpora it and the runs it
    was trained from held), or None when the run has no identity file."""
    from .corpus.identity import read_identity

    identity = read_identity(folder)
    if identity is None:
        return None
    counts: Counter = Counter()
    for formula in identity.get("formulas", []):
        counts.update(set(_elements_in(formula)))
    return dict(counts)


def element_counts(run: str | os.PathLike) -> dict[str, int] | None:
    """How many pretraining documents of a run folder hold each element, or None when unknown.

    From the run's corpus identity (``corpus_identity.json``: distinct formulas of every corpus in
    the run's lineage, a lower bound on documents) when it has one; else from
    ``corpus_summary.json`` (``element_counts``) when it records them; else counted from the corpus
    sources it lists (all splits) when they are readable here, cached under ``$CRYSTEXT_CACHE``.
    An element absent from the result was never seen.
    """
    import hashlib
    import json

    folder = Path(_resolve_run_path(run)) if isinstance(run, (str, os.PathLike)) else None
    if folder is None:
        return None
    from_identity = _identity_element_counts(folder)
    if from_identity is not None:
        return from_identity
    if not (folder / "corpus_summary.json").is_file():
        return None
    raw = (folder / "corpus_summary.json").read_text()
    summary = json.loads(raw)
    if isinstance(summary.get("element_counts"), dict):
        return {k: int(v) for k, v in summary["element_counts"].items()}
    sources = (summary.get("config") or {}).get("sources") or []
    if not sources:
        return None
    from .settings import cache_dir

    cached = cache_dir() / "element_counts" / f"{hashlib.sha1(raw.encode()).hexdigest()[:16]}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    counts: Counter = Counter()
    for source in sources:
        formulas = _source_formulas(str(source))
        if formulas is None:
            return None
        for formula, n in Counter(formulas).items():  # many repeats: parse each formula once
            for element in _elements_in(formula):
                counts[element] += n
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(dict(counts)))
    return dict(counts)


def element_embeddings(run: RunLike, warn_unseen: bool = True) -> pd.DataFrame:
    """The input-embedding rows of the element tokens: index = element symbol (Z order), columns 0..d-1.

    Elements the run never saw in pretraining (see :func:`element_counts`) keep their initial,
    untrained rows: they are listed in ``df.attrs["unseen"]`` (with ``df.attrs["seen"]``, a
    boolean Series, when the counts are known) and, with ``warn_unseen``, in a warning.
    """
    import warnings

    from .tokenization import element_token_ids

    model, tokenizer = as_run(run, device="cpu" if isinstance(run, (str, os.PathLike)) else None)
    ids = element_token_ids(tokenizer)
    if not ids:
        raise TokenizerError("the run's tokenizer has no element tokens")
    weight = model.get_input_embeddings().weight.detach().float().cpu().numpy()
    from pymatgen.core import Element

    symbols = sorted(ids, key=lambda s: Element(s).Z)
    df = pd.DataFrame(weight[[ids[s] for s in symbols]], index=pd.Index(symbols, name="element"))
    df.columns = list(range(df.shape[1]))
    counts = element_counts(run) if isinstance(run, (str, os.PathLike)) else None
    if counts is not None:
        documents = pd.Series([int(counts.get(s, 0)) for s in symbols], index=df.index, name="documents")
        df.attrs["documents"] = documents
        df.attrs["seen"] = (documents > 0).rename("seen")
        df.attrs["unseen"] = [s for s in symbols if documents[s] == 0]
        df.attrs["untrained"] = [s for s in symbols if documents[s] < MIN_ELEMENT_DOCUMENTS]
        if warn_unseen and df.attrs["untrained"]:
            warnings.warn(f"{run}: {len(df.attrs['untrained'])} element vectors are untrained (fewer than "
                          f"{MIN_ELEMENT_DOCUMENTS} pretraining documents; never seen: {len(df.attrs['unseen'])}): "
                          f"{', '.join(df.attrs['untrained'])}", stacklevel=2)
    return df


def save_element_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write element vectors in the CSV layout ElementEmbeddings reads: header ``element,0,1,...``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    out.index.name = "element"
    out.columns = [str(c) for c in range(out.shape[1])]
    out.to_csv(path, float_format="%.8g")
    if "documents" in df.attrs:  # the CSV keeps ElementEmbeddings' layout; the flags go beside it
        flags = pd.DataFrame({"documents": df.attrs["documents"],
                              "trained": df.attrs["documents"] >= MIN_ELEMENT_DOCUMENTS})
        flags.index.name = "element"
        flags.to_csv(trained_flags_path(path))
    return path


def trained_flags_path(csv_path: str | os.PathLike) -> Path:
    """``X.csv`` -> ``X.trained.csv``: the element, its pretraining documents and whether its vector
    counts as trained (at least :data:`MIN_ELEMENT_DOCUMENTS`), written beside an exported table."""
    path = Path(csv_path)
    return path.with_name(path.stem + ".trained.csv")


# --------------------------------------------------------------------------- pooling core


def check_layer(layer: int, n_layer: int) -> int:
    """Normalise ``layer`` to 0..n_layer (negative counts from the end); ConfigError when out of range."""
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool):
        raise ConfigError(f"layer must be an integer, not {layer!r}")
    if not -(n_layer + 1) <= layer <= n_layer:
        raise ConfigError(f"layer {layer} out of range for a {n_layer}-layer model (0..{n_layer} or negative)")
    return int(layer) % (n_layer + 1)


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    return pooling


def _n_layer(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_layer", None) or getattr(cfg, "num_hidden_layers"))


def pool_hidden_states(model, input_ids, attention_mask, special_ids: Iterable[int], layer: int = DEFAULT_LAYER,
                       pooling: str = "mean"):
    """One forward pass of the base transformer and the pooled state of ``layer``: a (batch, d) float tensor.

    Works for right or left padding: position ids come from the attention mask, the mean runs over
    attended non-special positions, and "last" takes the last attended position.
    """
    return pool_views(model, input_ids, attention_mask, special_ids, [(layer, pooling)])[0]


def pool_views(model, input_ids, attention_mask, special_ids: Iterable[int], views: Sequence[tuple[int, str]]):
    """Like :func:`pool_hidden_states` for several ``(layer, pooling)`` views from one forward pass."""
    import torch

    n_layer = _n_layer(model)
    views = [(check_layer(layer, n_layer), check_pooling(pooling)) for layer, pooling in views]
    attention_mask = attention_mask.to(input_ids.device)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    want_all = any(layer != n_layer for layer, _ in views)
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           output_hidden_states=want_all, use_cache=False)
    keep = attention_mask.bool()
    for sid in set(special_ids):
        keep &= input_ids != sid
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (attention_mask.long() * (positions + 1)).argmax(-1)
    pooled = []
    for layer, pooling in views:
        hidden = (out.hidden_states[layer] if want_all else out.last_hidden_state).float()
        if pooling == "last":
            pooled.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
            continue
        weights = keep.to(hidden.dtype).unsqueeze(-1)
        pooled.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))
    return pooled


def special_token_ids(tokenizer) -> list[int]:
    """Ids excluded from mean pooling: bos, eos, pad (and any other special token)."""
    return sorted({i for i in tokenizer.all_special_ids if i is not None})


def max_positions(model) -> int | None:
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


# --------------------------------------------------------------------------- structure vectors


@dataclass
class StructureEmbedder:
    """Structure/text -> vector with one loaded run. Keeps skip counts for batch work.

    >>> emb = StructureEmbedder("models/crystext-base", layer=-1, pooling="mean")
    >>> vectors = emb.embed([structure1, structure2])         # (2, d)
    >>> for key, vec in emb.iter_keyed(records, skip_errors=True): ...
    """

    run: RunLike
    layer: int = DEFAULT_LAYER
    pooling: str = "mean"
    batch_size: int = 32
    device: Any = None
    #: the text's symmetry tolerance; the blocks it carries (``local``, ``properties``) are the
    #: run's own, read from its config (:class:`crystext.encoding.TextForm`)
    symprec: float = DEFAULT_SYMPREC
    #: items read ahead and sorted by length before batching (bounded memory, little padding)
    chunk_batches: int = 8
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list = field(default_factory=list)
    #: several (layer, pooling) views from one forward pass: each vector is then their
    #: concatenation, in this order (``layer``/``pooling`` are ignored)
    views: Sequence[tuple[int, str]] | None = None
    #: run the forward pass under ``torch.autocast`` in this dtype (``"bfloat16"`` / ``"float16"``);
    #: None keeps the model's dtype. bf16 is ~3x faster on CPUs with bf16 matmul units (AMX,
    #: AVX512-BF16); vectors stay float32 and agree with float32 ones to ~1e-5 cosine.
    autocast: str | None = None
    #: the text conversion's atom and time limits (``None`` or 0: no limit), as ``crystext text``
    max_atoms: int | None = DEFAULT_MAX_ATOMS
    time_limit: float | None = DEFAULT_TIME_LIMIT
    #: a list to receive every skipped record as ``(key, reason, message)`` (the skipped-rows file)
    skip_log: list | None = None

    def __post_init__(self) -> None:
        self.model, self.tokenizer = as_run(self.run, device=self.device)
        self.device = next(self.model.parameters()).device
        self.form = TextForm.of(self.model, self.symprec)
        self.layer = check_layer(self.layer, _n_layer(self.model))
        check_pooling(self.pooling)
        n_layer = _n_layer(self.model)
        self.views = [(check_layer(l, n_layer), check_pooling(p)) for l, p in (self.views or [(self.layer, self.pooling)])]
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, not {self.batch_size}")
        if self.tokenizer.pad_token_id is None:
            raise TokenizerError("the run's tokenizer has no pad token; batching needs one")
        self._special = special_token_ids(self.tokenizer)
        self._max_len = max_positions(self.model)
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ConfigError(f"autocast must be None, 'bfloat16' or 'float16', not {self.autocast!r}")

    @property
    def dim(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1]) * len(self.views)

    # -- one item -> token ids (the encode step, :mod:`crystext.encoding`)
    def text_of(self, structure: Any, name: str = "structure") -> str:
        return canonical_text(structure, self.form, name, self.max_atoms, self.time_limit)

    def encode(self, item: Any, is_text: bool = False, name: str = "structure") -> list[int]:
        return encode(item, self.tokenizer, self._max_len, symprec=self.form, name=name, is_text=is_text,
                      max_atoms=self.max_atoms, time_limit=self.time_limit)

    # -- a batch of token-id lists -> (n, d)
    def embed_ids(self, batch: list[list[int]]) -> np.ndarray:
        import torch

        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        from .tokenization import pad_batch

        input_ids, mask = pad_batch(batch, self.tokenizer.pad_token_id)
        amp = (torch.autocast(self.device.type, dtype=getattr(torch, self.autocast)) if self.autocast
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            vecs = pool_views(self.model, input_ids.to(self.device), mask.to(self.device), self._special, self.views)
        return torch.cat(vecs, dim=1).cpu().numpy().astype(np.float32)

    def _embed_sorted(self, encoded: list[list[int]]) -> list[np.ndarray]:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[np.ndarray | None] = [None] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            vecs = self.embed_ids([encoded[i] for i in idx])
            for i, v in zip(idx, vecs):
                out[i] = v
        return out  # type: ignore[return-value]

    # -- streams
    def iter_keyed(self, records: Iterable[tuple[Any, Any]], texts: bool = False,
                   skip_errors: bool = False) -> Iterator[tuple[Any, np.ndarray]]:
        """Yield ``(key, vector)`` for ``(key, item)`` records, in order, reading ahead one chunk.

        With ``skip_errors`` a record that cannot be converted/tokenized is skipped and counted in
        :attr:`skipped` (by error type; first messages in :attr:`skipped_examples`); otherwise its
        crystext error propagates. ``texts=True``: items are crystal texts, embedded as written.
        An item that is an exception instance stands for a record a reader found broken.
        """
        chunk = max(1, self.batch_size * self.chunk_batches)
        keys: list[Any] = []
        encoded: list[list[int]] = []
        for key, item in records:
            try:
                if isinstance(item, Exception):  # a reader's verdict on a broken record
                    raise item
                ids = self.encode(item, is_text=texts, name=f"input {key}" if isinstance(key, int) else str(key))
            except Exception as exc:  # noqa: BLE001 - batch work skips any bad record
                if not skip_errors:
                    raise
                self._skip(key, exc)
                continue
            keys.append(key)
            encoded.append(ids)
            if len(encoded) >= chunk:
                yield from zip(keys, self._embed_sorted(encoded))
                keys, encoded = [], []
        if encoded:
            yield from zip(keys, self._embed_sorted(encoded))

    def _skip(self, key: Any, exc: Exception) -> None:
        reason = skip_reason(exc, too_long=TokenizerError.__name__)
        self.skipped[reason] += 1
        if self.skip_log is not None:
            self.skip_log.append((key, reason, str(exc)))
        if len(self.skipped_examples) < 20:
            self.skipped_examples.append((key, f"{reason}: {exc}"))

    def iter(self, items: Iterable[Any], texts: bool = False) -> Iterator[np.ndarray]:
        """Yield one (d,) vector per item, in order (errors propagate)."""
        for _, vec in self.iter_keyed(enumerate(items), texts=texts):
            yield vec

    def embed(self, items: Iterable[Any], texts: bool = False) -> np.ndarray:
        """(n, d) float32 array, one row per item."""
        vecs = list(self.iter(items, texts=texts))
        return np.stack(vecs) if vecs else np.zeros((0, self.dim), dtype=np.float32)


def structure_embeddings(structures: Iterable[Any], run: RunLike, layer: int = DEFAULT_LAYER,
                         pooling: str = "mean", batch_size: int = 32, device: Any = None,
                         symprec: float = DEFAULT_SYMPREC) -> np.ndarray:
    """Vectors of structures: (n, d) float32.

    Args:
        structures: pymatgen Structures, ASE Atoms, CIF strings or paths (see :func:`crystext.to_structure`).
        run: a run folder, a bare name under ``models/``, a Hub id, or a ``(model, tokenizer)`` pair.
        layer: hidden layer, 0 (embedding output) .. n_layer; -1 = last.
        pooling: ``"mean"`` over the text tokens or ``"last"`` (the ``<eos>`` state).
        batch_size: structures per forward pass. Vectors depend on it, and on which structures
            share a batch, only at float32 rounding (a few 1e-7: the padded length changes the
            shapes of the matrix products); the same inputs in the same order with the same
            ``batch_size`` give bit-identical vectors, and ``batch_size=1`` vectors independent
            of any neighbour.
        device: ``"cpu"``, ``"cuda"``, an index, or None (CUDA when available).
        symprec: symmetry tolerance of the canonical text.

    Raises:
        CrystextError subclasses naming the bad input (unparsable CIF, disorder, unknown element,
        a text longer than the model's context, ...).
    """
    return StructureEmbedder(run, layer=layer, pooling=pooling, batch_size=batch_size, device=device,
                             symprec=symprec).embed(structures)


def iter_structure_embeddings(structures: Iterable[Any], run: RunLike, layer: int = DEFAULT_LAYER,
                              pooling: str = "mean", batch_size: int = 32, device: Any = None,
                              symprec: float = DEFAULT_SYMPREC) -> Iterator[np.ndarray]:
    """Streaming :func:`structure_embeddings`: yields one (d,) vector per structure, in order,
    holding at most a few batches of inputs in memory."""
    return StructureEmbedder(run, layer=layer, pooling=pooling, batch_size=batch_size, device=device,
                             symprec=symprec).iter(structures)


def text_embeddings(texts: Iterable[str], run: RunLike, layer: int = DEFAULT_LAYER, pooling: str = "mean",
                    batch_size: int = 32, device: Any = None) -> np.ndarray:
    """Vectors of crystal texts as written (e.g. a saved corpus' ``text`` column): (n, d) float32."""
    return StructureEmbedder(run, layer=layer, pooling=pooling, batch_size=batch_size,
                             device=device).embed(texts, texts=True)


# --------------------------------------------------------------------------- files -> parquet

TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson")


@dataclass
class InputSource:
    """One input of :func:`embed_to_parquet`: what it is, how many records (when cheap to know)."""

    path: Path
    kind: str  # "cif-folder" | "cif-file" | "table" | "corpus"
    count: int | None = None


def is_saved_corpus(path: Path) -> bool:
    """A ``datasets`` ``save_to_disk`` folder (a DatasetDict or a single Dataset)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def describe_input(path: str | os.PathLike) -> InputSource:
    """Classify an embed input; DataNotFoundError / ConfigError for what cannot be read."""
    path = Path(path)
    if path.is_dir():
        if is_saved_corpus(path):
            return InputSource(path, "corpus", _corpus_rows(path))
        cifs = sum(1 for _ in path.rglob("*.cif"))
        if not cifs:
            raise DataNotFoundError(f"{path}: no *.cif files and not a saved corpus (datasets folder)")
        return InputSource(path, "cif-folder", cifs)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".cif":
            return InputSource(path, "cif-file", 1)
        if suffix in TABLE_SUFFIXES:
            columns = table_columns(path)
            if "cif" not in columns:
                raise ConfigError(f"{path}: table has no 'cif' column (columns: {', '.join(columns)})")
            return InputSource(path, "table", _table_rows(path))
        raise ConfigError(f"{path}: not a CIF, a CIF folder, a table ({', '.join(TABLE_SUFFIXES)}) or a saved corpus")
    raise DataNotFoundError(f"{path}: no such file or folder")


def _table_rows(path: Path) -> int | None:
    """Rows of a table, for the progress bar's total and ETA (None when it cannot be counted)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    try:
        if suffix == ".csv":  # CIF cells span lines: count records with the CSV parser, one narrow column
            first = table_columns(path)[0]
            return int(sum(len(c) for c in pd.read_csv(path, usecols=[first], chunksize=65536)))
        with open(path, "rb") as fh:  # JSON lines: one record per non-blank line
            return sum(1 for line in fh if line.strip())
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def _corpus_rows(path: Path) -> int:
    from datasets import load_from_disk

    data = load_from_disk(str(path))
    return sum(len(d) for d in data.values()) if hasattr(data, "values") else len(data)


def _table_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The ``cif`` and id columns of a table, streamed by crystext's one table reader."""
    names = table_columns(path)
    cols = [c for c in names if c == "cif" or c in ID_COLUMNS]
    for frame in iter_table_chunks(path, columns=cols, chunk_rows=chunk_rows):
        for c in cols:
            if c != "cif":
                frame[c] = frame[c].astype(str)
        yield frame


def iter_records(source: InputSource, chunk_rows: int = 1024,
                 max_atoms: int | None = DEFAULT_MAX_ATOMS) -> Iterator[tuple[str, Any]]:
    """``(id, item)`` records of one input, streamed. Items are paths, CIF strings or crystal texts
    (corpus); a record that is broken before parsing (empty cell) or over ``max_atoms`` (``None``
    or 0: no limit) comes as an exception instance."""
    from .errors import CIFParseError
    from .inputs import check_structure, cif_site_count, option_hint, read_text_file, structure_from_cif
    from .limits import check_size

    def parse(text_or_file: Any, key: str) -> Any:
        try:  # a file or a cell holds CIF text, never a path: parse it as such
            text = read_text_file(text_or_file) if isinstance(text_or_file, Path) else text_or_file
            # a huge cell is refused from its site rows, before pymatgen spends minutes on it
            n = cif_site_count(text)
            hint = f"raise the limit with {option_hint('max_atoms', 2 * n)} (0: no limit)"
            check_size(n, max_atoms or None, key, hint)
            return check_structure(structure_from_cif(text, key), key)
        except Exception as exc:  # noqa: BLE001 - counted as a skipped record downstream
            return exc

    path = source.path
    if source.kind == "cif-file":
        yield path.stem, parse(path, str(path))
    elif source.kind == "cif-folder":
        for file in sorted(path.rglob("*.cif")):
            yield str(file.relative_to(path).with_suffix("")), parse(file, str(file))
    elif source.kind == "table":
        offset = 0
        for frame in _table_chunks(path, chunk_rows):
            id_col = next((c for c in ID_COLUMNS if c in frame.columns), None)
            for row, cif in enumerate(frame["cif"].tolist()):
                key = str(frame[id_col].iloc[row]) if id_col else f"{path.name}:{offset + row}"
                if not isinstance(cif, str) or not cif.strip():
                    yield key, CIFParseError(f"{key}: empty 'cif' cell")
                else:
                    yield key, parse(cif, key)
            offset += len(frame)
    elif source.kind == "corpus":
        from datasets import load_from_disk

        data = load_from_disk(str(path))
        splits = data.items() if hasattr(data, "items") else [("data", data)]
        for split, ds in splits:
            if "text" not in ds.column_names:
                raise ConfigError(f"{path}: saved corpus split {split!r} has no 'text' column")
            cols = ["text"] + (["id"] if "id" in ds.column_names else [])
            offset = 0
            for batch in ds.select_columns(cols).iter(batch_size=chunk_rows):
                for row, text in enumerate(batch["text"]):
                    key = batch["id"][row] if "id" in batch else f"{split}:{offset + row}"
                    yield str(key), text
                offset += len(batch["text"])
    else:  # pragma: no cover - describe_input makes only the kinds above
        raise ConfigError(f"unknown input kind {source.kind!r}")


def embed_to_parquet(inputs: Iterable[str | os.PathLike], run: RunLike, out: str | os.PathLike,
                     layer: int = DEFAULT_LAYER, pooling: str = "mean", batch_size: int = 32,
                     device: Any = None, symprec: float = DEFAULT_SYMPREC, rows_per_group: int = 2048,
                     progress: bool = True, precision: str = "float32", max_atoms: int | None = DEFAULT_MAX_ATOMS,
                     time_limit: float | None = DEFAULT_TIME_LIMIT) -> dict:
    """Embed every record of ``inputs`` into a Parquet file, streaming with bounded memory.

    Inputs: CIF files, folders of CIFs (recursive ``*.cif``), tables (CSV/Parquet/JSONL) with a
    ``cif`` column (id from ``id``/``material_id``/``mbid`` when present), saved corpora
    (``datasets`` folders: their ``text`` column is embedded as written). Bad records are skipped
    and counted, never fatal, and listed in ``OUT.skipped.csv`` (``id, source, reason, message``).
    Output columns: ``id`` (string), ``source`` (input path), ``embedding`` (fixed-size list of
    float32). Read back with :func:`read_vectors`.

    ``max_atoms`` / ``time_limit``: skip structures with more atoms / whose text conversion takes
    longer (``None`` or 0: no limit), as ``crystext corpus build`` does.
    ``precision``: ``float32`` (default: reproducible vectors), ``bfloat16``, or ``auto`` (bf16
    autocast only where :func:`crystext.precision.resolve_precision` finds it fast here).
    The progress bar shows a total, percentage and ETA whenever the inputs can be counted (CIF
    folders, CSV/Parquet/JSONL tables, saved corpora).

    Faults: ``out`` is written under a unique temporary name and renamed into place only when
    complete; while the job runs it holds ``OUT.lock`` (:class:`crystext.atomic.OutputLock`), so a
    second job on the same ``out`` refuses with the first one's pid instead of racing it. A full
    disk or an error removes the temporary file (:class:`crystext.atomic.DiskFullError` names the
    path). Vectors match those of :func:`structure_embeddings` up to float32 rounding that depends
    on which records share a batch (see its ``batch_size``).

    Returns a summary: ``{"embedded", "skipped", "skip_reasons", "examples", "out", "skipped_file",
    "dim", ...}``.
    """
    from tqdm.auto import tqdm

    from .atomic import OutputLock, SkippedRows, atomic_path, skipped_path

    sources = [describe_input(p) for p in inputs]
    if not sources:
        raise ConfigError("no inputs to embed")
    from .precision import resolve_precision

    out = Path(out)
    with OutputLock(out):  # before the model loads: a second job on this output refuses at once
        precision = resolve_precision(precision, resolve_device(device))
        skips: list = []
        embedder = StructureEmbedder(run, layer=layer, pooling=pooling, batch_size=batch_size, device=device,
                                     symprec=symprec, autocast=None if precision == "float32" else precision,
                                     max_atoms=max_atoms, time_limit=time_limit, skip_log=skips)
        total = sum(s.count for s in sources) if all(s.count is not None for s in sources) else None
        bar = tqdm(total=total, unit="struct", desc="embed", disable=not progress)
        with atomic_path(out) as tmp:
            embedded = _write_vectors(tmp, sources, embedder, bar, rows_per_group, max_atoms)
            bar.close()
            listing = SkippedRows(skipped_path(out))
            listing.extend((key, str(source), reason, message) for source, key, reason, message in skips)
            listing.write()
    return {
        "out": str(out),
        "embedded": embedded,
        "skipped": len(skips),
        "skip_reasons": dict(embedder.skipped),
        "examples": [f"{k}: {m}" for k, m in embedder.skipped_examples[:5]],
        "skipped_file": str(listing.path),
        "dim": embedder.dim,
        "layer": embedder.layer,
        "pooling": pooling,
        "precision": precision,
        "inputs": [f"{s.path} ({s.kind})" for s in sources],
    }


def _write_vectors(path: Path, sources: list[InputSource], embedder: StructureEmbedder, bar, rows_per_group: int,
                   max_atoms: int | None) -> int:
    """Stream every source's vectors into the Parquet file ``path``; return how many were written.
    Skipped records land in ``embedder.skip_log`` as ``(source, key, reason, message)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = embedder.dim
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])
    ids: list[str] = []
    srcs: list[str] = []
    vecs: list[np.ndarray] = []
    embedded = 0
    log = embedder.skip_log

    def flush(writer) -> None:
        if not ids:
            return
        flat = pa.array(np.stack(vecs).reshape(-1), type=pa.float32())
        table = pa.Table.from_arrays(
            [pa.array(ids, pa.string()), pa.array(srcs, pa.string()),
             pa.FixedSizeListArray.from_arrays(flat, dim)], schema=schema)
        writer.write_table(table)
        ids.clear(), srcs.clear(), vecs.clear()

    with pq.ParquetWriter(path, schema) as writer:
        for source in sources:
            def counted(records):
                for rec in records:
                    bar.update(1)
                    yield rec

            embedder.skip_log = []
            for key, vec in embedder.iter_keyed(counted(iter_records(source, max_atoms=max_atoms)),
                                                texts=source.kind == "corpus", skip_errors=True):
                ids.append(str(key))
                srcs.append(str(source.path))
                vecs.append(vec)
                embedded += 1
                if len(ids) >= rows_per_group:
                    flush(writer)
            log.extend((source.path, key, reason, message) for key, reason, message in embedder.skip_log)
            bar.set_postfix(skipped=sum(embedder.skipped.values()), refresh=False)
        flush(writer)
    embedder.skip_log = log
    return embedded


def read_vectors(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read a file written by :func:`embed_to_parquet`: ``(ids, (n, d) float32 array)``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "embedding"])
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    values = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return table.column("id").to_pylist(), values.reshape(-1, dim)
