"""The encode step: any input -> canonical text -> token ids ``<bos> text <eos>``.

Everything that hands structures to a model goes through here: the embeddings
(:class:`crystext.embeddings.StructureEmbedder`), the ``crystal-embedding`` / ``crystal-property``
pipelines, fine-tuning (its task splits, :func:`crystext.finetune.predict`) and the benchmark's
structure texts. One input is one of what :func:`crystext.inputs.to_structure` takes (pymatgen
``Structure``, ASE ``Atoms`` or a subclass, CIF text or bytes, a path) or, with ``is_text``, a
crystal text used as written.

* :func:`canonical_text`: one input -> its canonical text at ``symprec``
  (:data:`DEFAULT_SYMPREC`), under the atom and time limits of :mod:`crystext.limits`; errors name
  the input.
* :func:`encode_text`: a text -> ``<bos> text <eos>`` ids, refusing a text the tokenizer cannot
  represent (:class:`~crystext.errors.TokenizerError`) or one longer than the model's context
  (:class:`~crystext.errors.DocumentTooLongError`): a text is never truncated.
* :func:`encode` / :func:`encode_inputs`: the two together, for one input or a list (errors name
  the list index).
* :class:`TextCache` and :func:`encode_cifs`: batch work over CIFs: canonical texts cached on
  disk by a hash of (symprec, CIF), converted in processes, and rows that cannot be encoded
  skipped and counted by reason (:func:`skip_reason`) instead of raised.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from contextlib import nullcontext
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CrystextError, DocumentTooLongError, TokenizerError
from .limits import DEFAULT_MAX_ATOMS, DEFAULT_TIME_LIMIT
from .settings import cache_dir

#: spglib tolerance (angstrom) of the canonical text, as in training (CrystaLLM uses 0.1)
DEFAULT_SYMPREC = 0.1
#: the skip reason of a text longer than the model's context in :func:`encode_cifs`
TOO_LONG = "too_long"
#: the model config attribute (``config.json`` key) holding the text form a run was trained on
TEXT_FORM_KEY = "crystext_text"


@dataclass(frozen=True)
class TextForm:
    """How a model's texts are written: the :func:`crystext.text.structure_to_text` settings its
    corpus was built with. A model reads structures in the form it was trained on, so the encode
    step takes it from the model (:meth:`of`); pretraining writes it into ``config.json``."""

    symprec: float = DEFAULT_SYMPREC
    properties: bool = False
    local: bool = False

    @classmethod
    def of(cls, config: Any, symprec: float | None = None) -> "TextForm":
        """The form saved in a model config (or its ``config``); CrystaLLM's form when none is
        saved. ``symprec``: replaces the saved tolerance when given."""
        saved = getattr(getattr(config, "config", config), TEXT_FORM_KEY, None) or {}
        form = cls.from_dict(saved)
        return form if symprec is None else cls(float(symprec), form.properties, form.local)

    @classmethod
    def from_dict(cls, values: dict) -> "TextForm":
        """From a corpus ``summary.json`` config or a saved form (other keys ignored)."""
        return cls(float(values.get("symprec", DEFAULT_SYMPREC)), bool(values.get("properties", False)),
                   bool(values.get("local", False)))

    def as_dict(self) -> dict:
        return {"symprec": self.symprec, "properties": self.properties, "local": self.local}

    @property
    def name(self) -> str:
        """File-name tag: ``symprec-0.1``, with ``-properties`` / ``-local`` for the blocks."""
        return f"symprec-{self.symprec}" + "-properties" * self.properties + "-local" * self.local

    @property
    def plain(self) -> bool:
        """No block beyond CrystaLLM's form."""
        return not (self.properties or self.local)


def as_form(symprec: float | TextForm) -> TextForm:
    """A :class:`TextForm` from a form or a bare tolerance (CrystaLLM's form at that tolerance)."""
    return symprec if isinstance(symprec, TextForm) else TextForm(float(symprec))


# --------------------------------------------------------------------------- one input


def canonical_text(item: Any, symprec: float | TextForm = DEFAULT_SYMPREC, name: str | None = None,
                   max_atoms: int | None = DEFAULT_MAX_ATOMS, time_limit: float | None = DEFAULT_TIME_LIMIT) -> str:
    """The canonical text of one input (anything :func:`crystext.inputs.to_structure` takes).

    ``symprec``: the tolerance, or a whole :class:`TextForm` (tolerance and blocks). ``name``: how
    errors call the input (default: its path, or its kind). ``max_atoms`` / ``time_limit``: the
    conversion's limits (``None`` or 0: no limit).

    Raises the crystext errors of :func:`crystext.inputs.to_structure` and
    :func:`crystext.text.structure_to_text`, naming the input.
    """
    from .inputs import to_structure
    from .text import structure_to_text

    form = as_form(symprec)
    return structure_to_text(to_structure(item, name=name), symprec=form.symprec, properties=form.properties,
                             local=form.local, max_atoms=max_atoms or None, time_limit=time_limit or None)


def encode_text(text: str, tokenizer: Any, max_length: int | None = None, name: str | None = "text") -> list[int]:
    """Token ids of ``<bos> text <eos>``.

    Raises :class:`TokenizerError` (prefixed with ``name`` unless it is None) for a text the
    tokenizer cannot represent (unknown characters, unknown keywords), and
    :class:`DocumentTooLongError` for one of more than ``max_length`` tokens.
    """
    from .tokenization import encode_checked

    prefix = f"{name}: " if name else ""
    try:
        ids = encode_checked(tokenizer, text, add_special_tokens=True)
    except TokenizerError as exc:
        if not prefix:
            raise
        raise TokenizerError(f"{prefix}{exc}") from None
    if max_length is not None and len(ids) > max_length:
        raise DocumentTooLongError(f"{prefix}{len(ids)} tokens, longer than the model's context of {max_length}")
    return ids


def encode(item: Any, tokenizer: Any, max_length: int | None = None, *, symprec: float | TextForm = DEFAULT_SYMPREC,
           name: str = "structure", is_text: bool = False, max_atoms: int | None = DEFAULT_MAX_ATOMS,
           time_limit: float | None = DEFAULT_TIME_LIMIT) -> list[int]:
    """One input -> canonical text -> ``<bos> text <eos>`` ids; errors name the input ``name``.

    ``is_text``: ``item`` is a crystal text, encoded as written (a ``TypeError`` if not a str).
    """
    if is_text and not isinstance(item, str):
        raise TypeError(f"{name}: expected crystal text, got {type(item).__name__}")
    text = item if is_text else canonical_text(item, symprec, name, max_atoms, time_limit)
    return encode_text(text, tokenizer, max_length, name=name)


def encode_inputs(items: Sequence[Any], tokenizer: Any, max_length: int | None = None,
                  symprec: float | TextForm = DEFAULT_SYMPREC) -> list[list[int]]:
    """:func:`encode` of every input of a list; the first bad one raises, named ``input <index>``."""
    return [encode(item, tokenizer, max_length, symprec=symprec, name=f"input {i}") for i, item in enumerate(items)]


def skip_reason(exc: BaseException, too_long: str = TOO_LONG) -> str:
    """The reason batch work counts a skipped input under: a crystext error's type name, ``too_long``
    for a text longer than the context, ``other:<type>`` for any other exception. The embeddings
    pass ``too_long="TokenizerError"``: their skip counts (and the benchmark tables) have always
    counted long texts with the tokenizer errors."""
    if isinstance(exc, DocumentTooLongError):
        return too_long
    return type(exc).__name__ if isinstance(exc, CrystextError) else f"other:{type(exc).__name__}"


# --------------------------------------------------------------------------- many CIFs


def _text_key(cif: str, symprec: float | TextForm) -> str:
    form = as_form(symprec)  # a plain form keeps the keys of a bare tolerance
    return hashlib.sha1(f"{form.symprec if form.plain else form.name}\n{cif}".encode()).hexdigest()


def _convert(args: tuple[str, float]) -> tuple[str | None, str | None]:
    """CIF -> (text, None) or (None, "Reason: message"); runs in worker processes."""
    cif, symprec = args
    try:
        return canonical_text(cif, symprec, name="cif"), None
    except Exception as exc:  # noqa: BLE001 - counted by reason, never fatal
        return None, f"{skip_reason(exc)}: {str(exc)[:200]}"


class TextCache:
    """Canonical texts of CIFs by a hash of (symprec, CIF), kept in an append-only JSONL file, so a
    killed conversion keeps what it finished and every run over the same structures reuses it.

    ``symprec``: the tolerance or a whole :class:`TextForm`. ``path``: the file (default
    ``<cache>/texts/<form name>.jsonl``, e.g. ``symprec-0.1.jsonl``, under
    :func:`crystext.settings.cache_dir`); ``persist=False`` keeps the texts in memory only.
    """

    def __init__(self, path: str | os.PathLike | None = None, symprec: float | TextForm = DEFAULT_SYMPREC,
                 persist: bool = True) -> None:
        self.path = Path(path) if path else cache_dir() / "texts" / f"{as_form(symprec).name}.jsonl"
        self.symprec = symprec
        self.persist = persist
        self.data: dict[str, tuple[str | None, str | None]] = {}
        if persist and self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        continue
                    self.data[rec["k"]] = (rec.get("t"), rec.get("e"))

    def texts(self, cifs: Sequence[str], num_proc: int = 1, progress: bool = True,
              desc: str = "text") -> list[tuple[str | None, str | None]]:
        """``(text, None)`` or ``(None, "Reason: message")`` for each CIF, converting (in
        ``num_proc`` processes) what is not cached."""
        from tqdm.auto import tqdm

        keys = [_text_key(c, self.symprec) for c in cifs]
        todo = sorted({k: c for k, c in zip(keys, cifs) if k not in self.data}.items())
        if todo:
            if self.persist:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            bar = tqdm(total=len(todo), desc=desc, unit="cif", disable=not progress)
            with open(self.path, "a", encoding="utf-8") if self.persist else nullcontext() as fh:
                if num_proc > 1:
                    from concurrent.futures import ProcessPoolExecutor

                    with ProcessPoolExecutor(num_proc) as pool:
                        results = pool.map(_convert, [(c, self.symprec) for _, c in todo], chunksize=8)
                        for (k, _), res in zip(todo, results):
                            self._put(fh, k, res)
                            bar.update(1)
                else:
                    for k, c in todo:
                        self._put(fh, k, _convert((c, self.symprec)))
                        bar.update(1)
            bar.close()
        return [self.data[k] for k in keys]

    def key(self, cif: str) -> str:
        """The cache key of a CIF at this cache's symprec."""
        return _text_key(cif, self.symprec)

    def add(self, results: dict[str, tuple[str | None, str | None]]) -> None:
        """Store ready ``{key: (text, error)}`` results (appended to the file when persistent)."""
        if not results:
            return
        if self.persist:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") if self.persist else nullcontext() as fh:
            for key, res in results.items():
                self._put(fh, key, res)

    def _put(self, fh: Any, key: str, res: tuple[str | None, str | None]) -> None:
        self.data[key] = res
        if fh is not None:
            fh.write(json.dumps({"k": key, "t": res[0], "e": res[1]}) + "\n")
            fh.flush()


@dataclass
class Encoded:
    """What :func:`encode_cifs` made of a list of CIFs."""

    #: ids of the encoded rows, in input order
    ids: list[list[int]] = field(default_factory=list)
    #: input positions of those rows
    kept: list[int] = field(default_factory=list)
    #: skipped rows by reason
    skipped: Counter = field(default_factory=Counter)
    #: every skipped row as ``(input position, reason, message)``
    log: list[tuple[int, str, str]] = field(default_factory=list)

    def skip(self, position: int, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        self.log.append((position, reason, message))


def encode_cifs(cifs: Sequence[str], tokenizer: Any, max_length: int, cache: TextCache, num_proc: int = 1,
                progress: bool = True, desc: str = "text") -> Encoded:
    """``<bos> text <eos>`` ids of CIFs through ``cache``. A CIF that does not convert, a text that
    does not tokenize, or one longer than ``max_length`` tokens (:data:`TOO_LONG`: never
    truncated) is skipped and counted by reason."""
    out = Encoded()
    for i, (text, err) in enumerate(cache.texts(cifs, num_proc=num_proc, progress=progress, desc=desc)):
        if text is None:
            out.skip(i, err.split(":", 1)[0] if err else "unknown", str(err))
            continue
        try:
            ids = encode_text(text, tokenizer, max_length, name=None)
        except CrystextError as exc:
            out.skip(i, skip_reason(exc), str(exc))
            continue
        out.ids.append(ids)
        out.kept.append(i)
    return out
