"""A built corpus under another tokenizer, from its ``text`` column: no structure is converted again.

Comparing tokenizers on the same documents, or moving a corpus to a new tokenizer, costs a
tokenization pass instead of a symmetry analysis of every structure (the Materials Project: ~1 CPU
minute against ~55). Documents keep their split and order; the ones longer than ``max_tokens``
under the new tokenizer are excluded and counted, never cut; documents holding ``<unk>``, or whose
ids do not decode back to their text, are kept and counted in the summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..errors import ConfigError
from .build import DEFAULT_MAX_TOKENS, features, load_corpus, resolve_tokenizer, save_splits


def _retokenize_split(ds, tok, max_tokens: int | None, chunk: int = 4096):
    from ..tokenization import encode_batch

    unk = tok.unk_token_id
    ids: list[list[int]] = []
    not_round_trip = 0
    for i in range(0, len(ds), chunk):
        texts = ds[i:i + chunk]["text"]
        part = encode_batch(tok, texts)
        decoded = tok.batch_decode(part, skip_special_tokens=True)
        not_round_trip += sum(d != t for d, t in zip(decoded, texts))
        ids += part
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    keep = np.ones(len(ids), dtype=bool) if not max_tokens else lengths <= max_tokens
    with_unk = sum(1 for x in ids if unk in x)
    kept = np.flatnonzero(keep)
    order, schema = ds.column_names, features()
    ds = ds.select(kept.tolist()).remove_columns(["input_ids", "num_tokens"])
    ds = ds.add_column("input_ids", [ids[i] for i in kept], feature=schema["input_ids"])
    ds = ds.add_column("num_tokens", lengths[keep].tolist(), feature=schema["num_tokens"]).select_columns(order)
    stats = {"documents": int(keep.sum()), "tokens": int(lengths[keep].sum()),
             "excluded_too_long": int((~keep).sum()), "documents_with_unk": with_unk,
             "documents_not_round_trip": not_round_trip}
    return ds, stats


def retokenize_corpus(src: str | os.PathLike, out: str | os.PathLike, tokenizer,
                      max_tokens: int | None = DEFAULT_MAX_TOKENS):
    """Write the corpus ``src`` tokenized with ``tokenizer`` into ``out``; return it loaded.

    Args:
        src: a corpus folder written by :func:`crystext.corpus.build_corpus` (with its ``text`` column).
        out: the new corpus folder (``save_to_disk`` splits, ``tokenizer/``, ``summary.json``).
        tokenizer: a name (``crystext-pair``), folder or tokenizer object.
        max_tokens: exclude (and count) documents longer than this under the new tokenizer; 0/None: keep all.

    Raises:
        ConfigError: ``out`` is ``src``, or ``src`` has no ``text`` column.
    """
    from datasets import DatasetDict

    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ConfigError(f"retokenize {src}: --out must be another folder than the source corpus")
    corpus = load_corpus(src)
    missing = [sp for sp in corpus if "text" not in corpus[sp].column_names]
    if missing:
        raise ConfigError(f"retokenize {src}: split {missing[0]!r} has no text column (a corpus from before texts were kept)")
    tok = resolve_tokenizer(tokenizer)
    splits, stats = {}, {}
    for name in corpus:
        splits[name], stats[name] = _retokenize_split(corpus[name], tok, max_tokens)
    dd = DatasetDict(splits)
    save_splits(dd, out)
    with atomic_path(out / "tokenizer", folder=True) as tok_dir:
        tok.save_pretrained(str(tok_dir))
    summary = dict(corpus.summary)
    name = str(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else getattr(tok, "name_or_path", "")
    summary["config"] = {**summary.get("config", {}), "tokenizer": name, "max_tokens": max_tokens}
    summary["splits"] = {n: {**summary.get("splits", {}).get(n, {}), "documents": s["documents"], "tokens": s["tokens"]}
                         for n, s in stats.items()}
    summary["retokenized"] = {"from": str(src.resolve()), "tokenizer": name, "splits": stats}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return load_corpus(out)
