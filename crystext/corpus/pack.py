"""Pack built corpora into one small file and unpack it again, losslessly.

A corpus folder stores every document twice (``text`` and ``input_ids`` as int32), about 9 bytes a
token; a packed file stores the token ids (uint16 when the vocabulary allows) and the short
columns, LZMA-compressed: about 0.45 bytes a token on the Materials Project (a sixth of it, 4.5 M
tokens: 40 MB of Arrow, 2 MB packed). The text is not stored: the crystext tokenizers decode ids
back to the exact text (checked for every document on unpacking), so :func:`unpack_corpus` writes
a corpus folder that :func:`~crystext.corpus.load_corpus` reads like the original, with the same
rows in the same order.

What it is for: a corpus that must travel where building it is slow or its sources are too big
to send (a GPU machine reached through a copy of the working tree, a Hub dataset repo), and the
parts of a corpus built session by session (``--part K/N``) joined into one.
"""

from __future__ import annotations

import io
import json
import lzma
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ConfigError, DataNotFoundError

FORMAT = "crystext-packed-corpus"
VERSION = 1
#: string columns kept as they are (``text`` is rebuilt from the ids, ``num_tokens`` from their count)
STRING_COLUMNS = ("id", "source", "kind", "formula", "properties")


def _strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unstrings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]


def _tokenizer_files(folder: Path) -> dict[str, str]:
    files = {p.name: p.read_text() for p in sorted(folder.glob("*")) if p.is_file()}
    if "tokenizer.json" not in files:
        raise DataNotFoundError(f"{folder}: no tokenizer.json (not a corpus built by crystext corpus build)")
    return files


def pack_corpus(corpora: Iterable[str | os.PathLike], out: str | os.PathLike, preset: int = 6) -> dict:
    """Write the corpus folders ``corpora`` (one, or the parts of one, all with the same tokenizer)
    into the single file ``out``; each split is the concatenation of theirs, in the order given.

    Returns the summary stored in the file (documents and tokens per split, the packed corpora's
    own summaries). Raises :class:`DataNotFoundError` for a folder that is not a corpus and
    :class:`ConfigError` for corpora of different tokenizers or split names.
    """
    from .build import load_corpus

    corpora = [Path(c) for c in corpora]
    if not corpora:
        raise ConfigError("pack_corpus: no corpus folder given")
    arrays: dict[str, np.ndarray] = {}
    tok_files, splits, parts = None, None, []
    loaded = [load_corpus(folder) for folder in corpora]
    for folder, dd in zip(corpora, loaded):
        files = _tokenizer_files(folder / "tokenizer")
        if tok_files is None:
            tok_files, splits = files, list(dd)
        elif files.get("tokenizer.json") != tok_files["tokenizer.json"]:
            raise ConfigError(f"{folder}: its tokenizer differs from {corpora[0]}'s; pack corpora of one tokenizer")
        elif list(dd) != splits:
            raise ConfigError(f"{folder}: splits {list(dd)} differ from {corpora[0]}'s {splits}")
        parts.append({"folder": folder.name, "summary": dd.summary})
    counts = {}
    for split in splits:
        columns: dict[str, list] = {c: [] for c in (*STRING_COLUMNS, "spacegroup")}
        ids, lengths = [], []
        for folder, dd in zip(corpora, loaded):
            table = dd[split].with_format("arrow")[:]
            flat = table["input_ids"].combine_chunks()
            lengths.append(np.diff(flat.offsets.to_numpy()))
            values = flat.flatten().to_numpy(zero_copy_only=False)  # flatten(): the slice's values only
            if len(values) and values.min() < 0:
                raise ConfigError(f"{folder}/{split}: negative token ids")
            ids.append(values.astype(np.uint32))
            for c in columns:
                if c not in table.column_names:
                    raise ConfigError(f"{folder}/{split}: no {c!r} column (a corpus from an older crystext: rebuild it)")
                columns[c].extend(table[c].to_pylist())
        flat_ids = np.concatenate(ids) if ids else np.zeros(0, np.uint32)
        # two bytes a token when the vocabulary allows (the crystext tokenizers' do)
        small = not len(flat_ids) or flat_ids.max() <= np.iinfo(np.uint16).max
        arrays[f"{split}.input_ids"] = flat_ids.astype(np.uint16) if small else flat_ids
        arrays[f"{split}.lengths"] = np.concatenate(lengths).astype(np.int32)
        arrays[f"{split}.spacegroup"] = np.asarray(columns.pop("spacegroup"), dtype=np.int16)
        for c, values in columns.items():
            arrays[f"{split}.{c}.utf8"], arrays[f"{split}.{c}.offsets"] = _strings(values)
        counts[split] = {"documents": int(len(arrays[f"{split}.lengths"])), "tokens": int(arrays[f"{split}.lengths"].sum())}
    meta = {"format": FORMAT, "version": VERSION, "splits": counts, "parts": parts, "tokenizer_files": tok_files}
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=preset))
    tmp.replace(out)
    return {k: v for k, v in meta.items() if k != "tokenizer_files"}


def unpack_corpus(packed: str | os.PathLike, out: str | os.PathLike):
    """Write the corpus folder ``out`` from a file of :func:`pack_corpus` and return it loaded
    (:func:`~crystext.corpus.load_corpus`): the same splits, rows, order and columns as the packed
    corpora, ``text`` decoded from the token ids (every document checked to encode back to them).

    Raises :class:`DataNotFoundError` for a missing file and :class:`ConfigError` for one that is
    not a packed corpus or whose ids do not round-trip through its tokenizer.
    """
    from datasets import Dataset, DatasetDict

    from ..tokenization import load_tokenizer
    from .build import features, load_corpus

    packed, out = Path(packed), Path(out)
    if not packed.is_file():
        raise DataNotFoundError(f"{packed}: no such packed corpus file")
    try:
        z = np.load(io.BytesIO(lzma.decompress(packed.read_bytes())), allow_pickle=False)
        meta = json.loads(z["meta.json"].tobytes().decode("utf-8"))
    except (lzma.LZMAError, ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"{packed}: not a packed crystext corpus ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ConfigError(f"{packed}: format {meta.get('format')!r} v{meta.get('version')}, expected {FORMAT} v{VERSION}")
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    for name, text in meta["tokenizer_files"].items():
        (tok_dir / name).write_text(text)
    tokenizer = load_tokenizer(tok_dir)
    dd = {}
    for split in meta["splits"]:
        lengths = z[f"{split}.lengths"].astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        flat = z[f"{split}.input_ids"].astype(np.int32)
        ids = [flat[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
        texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        again = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"] if texts else []
        for i, (row, back) in enumerate(zip(ids, again)):
            if list(back) != row:
                raise ConfigError(f"{packed}: {split} document {i} does not encode back to its token ids "
                                  "with the packed tokenizer; unpack needs a lossless tokenizer")
        cols = {c: _unstrings(z[f"{split}.{c}.utf8"], z[f"{split}.{c}.offsets"]) for c in STRING_COLUMNS}
        data = {**cols, "text": texts, "input_ids": ids, "num_tokens": lengths.astype(np.int32).tolist(),
                "spacegroup": z[f"{split}.spacegroup"].tolist()}
        dd[split] = Dataset.from_dict({k: data[k] for k in features()}, features=features())
    DatasetDict(dd).save_to_disk(str(out))
    summary = {"splits": meta["splits"], "packed_from": meta["parts"],
               "command": f"crystext corpus unpack {packed} --out {out}"}
    first = (meta["parts"][0].get("summary") or {}) if meta["parts"] else {}
    for key in ("config", "limits"):  # what the parts share (one build, split by --part)
        if key in first:
            summary[key] = first[key]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return load_corpus(out)
