"""Corpus statistics: per-element token counts, the elements benchmark tables use, and a Markdown
coverage report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import TokenizerError
from .build import load_corpus, resolve_tokenizer as _resolve_tokenizer
from .sources import TABLE_SUFFIXES, iter_table_chunks, table_columns


def token_counts(corpus: Any, tokenizer: Any = None, split: str = "train"):
    """Per-element token counts of one split of a corpus.

    Args:
        corpus: a corpus folder, a ``DatasetDict`` or a ``Dataset``.
        tokenizer: the tokenizer the corpus was built with; default: the corpus folder's
            ``tokenizer/`` when ``corpus`` is a path, else ``crystext-cif``.
        split: which split of a ``DatasetDict`` to count.

    Returns:
        ``pandas.DataFrame`` indexed by element symbol (ordered by Z) with columns ``Z``,
        ``tokens`` (occurrences of the element's token), ``structure_tokens`` and
        ``header_tokens`` (the same in full and header documents) and ``documents`` (documents
        holding the element's token at least once). A token counts for an element when it is the
        element's symbol, alone or fused with spacing (``"  Cd"`` in ``crystext-compact``);
        space-group tokens (``" Pm"``) never count.
    """
    import pandas as pd
    import pyarrow.compute as pc
    from pymatgen.core import Element

    from ..tokenization import element_token_ids, spacegroup_token_ids

    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if tokenizer is None and (path / "tokenizer").is_dir():
            tokenizer = str(path / "tokenizer")
        corpus = load_corpus(path)
    tok = _resolve_tokenizer(tokenizer if tokenizer is not None else "crystext-cif")
    ds = corpus[split] if hasattr(corpus, "keys") else corpus
    mapping = element_token_ids(tok)
    symbols = sorted(mapping, key=lambda s: Element(s).Z)
    index = {s: k for k, s in enumerate(symbols)}
    vocab = tok.get_vocab()
    lut = np.full(max(max(vocab.values()), len(tok)) + 1, -1, dtype=np.int64)
    # tokens that stand for an element: its own token, and tokens fused with spacing ("  Cd" in
    # crystext-compact), but not space-group tokens that look like one (" Pm", " Cm")
    try:
        sg_ids = set(spacegroup_token_ids(tok).values())
    except TokenizerError:
        sg_ids = set()
    for token, tid in vocab.items():
        sym = token.strip()
        if sym in index and tid not in sg_ids:
            lut[tid] = index[sym]
    for sym, tid in mapping.items():
        lut[tid] = index[sym]
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    ids_col = table.column("input_ids")
    kinds = np.asarray(table.column("kind").to_pylist())
    tokens = np.zeros((len(symbols), 2), dtype=np.int64)  # [structure, header]
    docs = np.zeros(len(symbols), dtype=np.int64)
    offset = 0
    for chunk in ids_col.chunks:
        flat = pc.list_flatten(chunk).to_numpy(zero_copy_only=False).astype(np.int64)
        parents = pc.list_parent_indices(chunk).to_numpy(zero_copy_only=False).astype(np.int64) + offset
        which = lut[flat]
        hit = which >= 0
        which, parents = which[hit], parents[hit]
        is_header = (kinds[parents] == "header").astype(np.int64)
        np.add.at(tokens, (which, is_header), 1)
        pairs = np.unique(parents * len(symbols) + which)
        docs += np.bincount(pairs % len(symbols), minlength=len(symbols))
        offset += len(chunk)
    frame = pd.DataFrame(
        {
            "Z": [Element(s).Z for s in symbols],
            "tokens": tokens.sum(axis=1),
            "structure_tokens": tokens[:, 0],
            "header_tokens": tokens[:, 1],
            "documents": docs,
        },
        index=pd.Index(symbols, name="element"),
    )
    return frame


def formula_elements(formulas: Iterable[str]) -> set[str]:
    """The set of element symbols in some formulas (unparsable ones are ignored)."""
    from pymatgen.core import Composition

    out: set[str] = set()
    for f in formulas:
        try:
            out.update(el.symbol for el in Composition(str(f)).elements if hasattr(el, "Z"))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def reference_elements(paths: Iterable[str | os.PathLike]) -> set[str]:
    """Elements used by benchmark tables: CSVs with a ``formula`` column, Matbench tables
    (``composition``), or tables with a ``cif`` column (elements of the CIF's formula). Tables
    are read in chunks, one column at a time."""
    import re

    out: set[str] = set()
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.name.endswith(TABLE_SUFFIXES)) if p.is_dir() else [p]
        for f in files:
            columns = table_columns(f)
            col = next((c for c in ("formula", "composition", "cif") if c in columns), None)
            if col is None:
                continue
            values: set[str] = set()
            for chunk in iter_table_chunks(f, columns=[col], chunk_rows=8192):
                series = chunk[col].dropna()
                if col == "cif":
                    sums = (re.search(r"_chemical_formula_sum\s+'?([^'\n]+)", c) for c in series)
                    values.update(m.group(1) for m in sums if m)
                else:
                    values.update(str(v) for v in series.unique())
            out |= formula_elements(values)
    return out


def corpus_markdown(summary: dict, title: str = "Corpus") -> list[str]:
    """Markdown lines on a corpus's make-up (sources, splits, skips) from its ``summary.json``."""
    lines = [f"## {title}", "", "| source | kind | records | skipped | duplicates | documents |", "|---|---|---:|---:|---:|---:|"]
    for name, s in summary.get("sources", {}).items():
        lines.append(f"| {name} | {s['kind']} | {s['records']:,} | {s['skipped']:,} | {s['duplicates']:,} | {s['documents']:,} |")
    lines.append("")
    for name, s in summary.get("splits", {}).items():
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(s.get("kinds", {}).items()))
        lines.append(f"- {name}: {s['documents']:,} documents ({kinds}), {s['tokens']:,} tokens")
    if summary.get("skip_reasons"):
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(summary["skip_reasons"].items(), key=lambda kv: -kv[1]))
        lines.append(f"- skipped records by reason: {reasons}")
    lines.append("")
    return lines


def add_counts(frames):
    """Element counts of several corpora (frames of :func:`token_counts`) summed element by element:
    what a run trained on them in turn has seen."""
    frames = list(frames)
    total = frames[0].copy()
    counted = [c for c in total.columns if c != "Z"]
    for f in frames[1:]:
        if list(f.index) != list(total.index):
            raise TokenizerError("element counts of corpora with different element tokens cannot be added")
        total[counted] += f[counted]
    return total


def coverage_markdown(counts, reference: set[str] | None = None, min_count: int = 1000,
                      summary: dict | list[dict] | None = None) -> str:
    """A Markdown report of per-element token counts (from :func:`token_counts` or :func:`add_counts`).

    With ``reference`` (elements the benchmarks use) it lists those seen fewer than ``min_count``
    times; ``summary`` (a corpus ``summary.json``, or one per corpus) adds the corpus make-up.
    """
    lines: list[str] = []
    seen = counts[counts.tokens > 0]
    summaries = summary if isinstance(summary, list) else [summary] if summary else []
    for k, one in enumerate(summaries):
        lines += corpus_markdown(one, "Corpus" if len(summaries) == 1 else f"Corpus {k + 1}")
    lines += ["## Summary", ""]
    lines.append(f"- elements seen in the split{'s' if len(summaries) > 1 else ''}: {len(seen)} (of {len(counts)} element tokens)"
                 + (f"; seen at least {min_count:,} times: {int((counts.tokens >= min_count).sum())}" if len(seen) else ""))
    if len(seen):
        lines.append(
            f"- tokens per seen element: median {int(seen.tokens.median()):,}, min {int(seen.tokens.min()):,} "
            f"({seen.tokens.idxmin()}), max {int(seen.tokens.max()):,} ({seen.tokens.idxmax()})"
        )
        only_header = seen[seen.structure_tokens == 0].index.tolist()
        lines.append(f"- elements seen only in header documents: {len(only_header)} ({' '.join(only_header) or 'none'})")
    if reference is not None:
        ref = sorted(reference, key=lambda s: counts.loc[s, "Z"] if s in counts.index else 999)
        low = [s for s in ref if s not in counts.index or counts.loc[s, "tokens"] < min_count]
        low_text = ", ".join(f"{s} {int(counts.loc[s, 'tokens']) if s in counts.index else 0:,}" for s in low)
        lines.append(
            f"- elements the benchmarks use: {len(ref)}; seen fewer than {min_count:,} times: {len(low)}"
            + (f" ({low_text})" if low else "")
        )
    lines += ["", "## Per-element token counts (training split)", "",
              "| element | Z | tokens | in structures | in headers | documents |" + (" benchmarks use |" if reference is not None else ""),
              "|---|---:|---:|---:|---:|---:|" + ("---|" if reference is not None else "")]
    for sym, row in counts.iterrows():
        if row.tokens == 0 and (reference is None or sym not in reference):
            continue
        used = (" yes |" if sym in reference else " |") if reference is not None else ""
        lines.append(f"| {sym} | {row.Z} | {row.tokens:,} | {row.structure_tokens:,} | {row.header_tokens:,} | {row.documents:,} |{used}")
    return "\n".join(lines) + "\n"
