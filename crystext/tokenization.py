"""Tokenizers for crystal text: built with ``tokenizers``, used as ``transformers.PreTrainedTokenizerFast``.

Two kinds share one grammar (the text form of :mod:`crystext.text`) and differ in granularity:

``crystext-cif`` (``kind="cif"``)
    CrystaLLM-like: one token per element symbol, per digit, per CIF keyword and per punctuation
    mark. Each of the 230 space groups is one token holding its whole line
    (``"_symmetry_space_group_name_H-M Pm-3m"``), so the space group ``Pm`` and the element
    ``Pm``, or ``P1`` and ``P`` + ``1``, can never be confused. Loop lines are one token with
    their newline (``"loop_\\n"``, ``" _atom_site_label\\n"``); two-space column separators are
    one token; site labels are element + digits (``Na0`` -> ``Na`` ``0``).
``crystext-compact`` (``kind="compact"``)
    The same symbols, with decimals as one 4-digit chunk (``0.2500`` -> ``0`` ``.2500``, integer
    parts digit by digit), column separators fused with the element or digit after them
    (``"  Cd"``, ``"  0"``), item keywords fused with their space (``"_cell_length_a "``), and
    each fixed loop header (symmetry, atom-type and atom-site loops) as one token: about 55%
    fewer tokens per structure. An element written in a site row is a second token (``"  Sr"``)
    besides the bare symbol of the header and formulas.
``crystext-pair`` (``kind="pair"``)
    compact's fused keywords and loop blocks, but every element one bare token wherever it stands
    (the separator ``"  "`` is a token of its own before a symbol), integer digits one by one
    (a separator fused with the digit after it: ``"  4"``), and each 4-decimal fraction as two
    two-digit pieces (``0.2500`` -> ``"  0"`` ``.25`` ``00``), so each number piece is one of 100
    values seen ~100x as often as a 4-digit chunk. 688 tokens; ~1.25x compact's tokens per structure,
    ~0.57x cif's.
``crystext-local`` (``kind="local"``)
    pair, plus the ``local`` block of :mod:`crystext.local` (each site's coordination, neighbour
    element and nearest distance): its loop header is one token and its keywords are tokens, the
    rows use pair's pieces. pair's 688 ids are kept (the new tokens come after them).

All are a ``BPE`` model behind one regex ``Split`` that isolates, at line starts only, the
pieces that are whole tokens (keywords, loop headers, the space-group line; looked up directly,
``ignore_merges``); everything between them (numbers, formulas, site rows) is split by BPE
merges, which costs several times less per token in the Rust pipeline than one pre-token per
token. The decoder concatenates tokens, so ``decode(encode(text)) == text`` for any text of
printable ASCII and newlines (each such character is a token); anything else is ``<unk>``. The
post-processor wraps ``<bos> ... <eos>``; pass ``add_special_tokens=False`` for a bare prompt.

A prompt cut at the end of a line (``"data_Na4Cl4\\n"``) gets the tokens the full text starts
with (for ``compact``: any line end outside the fixed loop headers), so generation can continue it.
"""

from __future__ import annotations

import bisect
import os
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import DataNotFoundError, TokenizerError

KINDS = ("cif", "compact", "pair", "local")
NAMES = {"crystext-cif": "cif", "crystext-compact": "compact", "crystext-pair": "pair", "crystext-local": "local"}
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3
#: Context length saved as ``model_max_length``: CrystaLLM's block size. A perov_5 structure takes
#: ~265 cif / ~124 compact tokens; 1024 holds ~27 asymmetric-unit sites in cif form, ~80 in compact.
MODEL_MAX_LENGTH = {"cif": 1024, "compact": 1024, "pair": 1024, "local": 1024}

#: Element symbols, Z = 1..118 (element token id = Z + 3 in both kinds).
ELEMENTS = tuple(
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se "
    "Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb "
    "Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm "
    "Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og".split()
)
DIGITS = tuple("0123456789")

SG_KEYWORD = "_symmetry_space_group_name_H-M"
DISORDER_KEYWORD = "_crystext_disorder"
#: Keywords written as ``key value`` lines by :func:`crystext.text.structure_to_text`.
ITEM_KEYWORDS = (
    SG_KEYWORD,
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
    "_symmetry_Int_Tables_number",
    "_chemical_formula_structural",
    "_chemical_formula_sum",
    "_cell_volume",
    "_cell_formula_units_Z",
    DISORDER_KEYWORD,
)
#: Loop blocks the text form writes, each a ``loop_`` line and ``" _key"`` header lines.
LOOPS = (
    ("_symmetry_equiv_pos_site_id", "_symmetry_equiv_pos_as_xyz"),
    ("_atom_type_symbol", "_atom_type_electronegativity", "_atom_type_radius", "_atom_type_ionic_radius"),
    (
        "_atom_site_type_symbol",
        "_atom_site_label",
        "_atom_site_symmetry_multiplicity",
        "_atom_site_fract_x",
        "_atom_site_fract_y",
        "_atom_site_fract_z",
        "_atom_site_occupancy",
    ),
)
LOOP_KEYWORDS = tuple(k for loop in LOOPS for k in loop)
SYMMETRY_LINE = "  1  'x, y, z'\n"
#: Values of ``_crystext_disorder`` (how a disordered structure was made ordered).
DISORDER_VALUES = ("dominant", "order")
DECIMALS = 4  # digits per decimal chunk in the compact kind

# Every printable ASCII character is a token, so any ASCII text decodes exactly.
_CHARS = tuple(dict.fromkeys(DIGITS + tuple(string.ascii_letters) + tuple(string.punctuation) + (" ", "\n")))
_KEY = r"_[A-Za-z][A-Za-z0-9_\-]*"


def _escape(text: str) -> str:
    """Escape a literal for Oniguruma (the regex engine of ``tokenizers``)."""
    return "".join(c if c.isalnum() or c == "_" else ("\\n" if c == "\n" else "\\" + c) for c in text)


def _loop_block(keys: Sequence[str]) -> str:
    block = "loop_\n" + "".join(f" {k}\n" for k in keys)
    return block + SYMMETRY_LINE if keys[0] == "_symmetry_equiv_pos_site_id" else block


def _space_groups() -> list[str]:
    from .spacegroups import symbols

    return list(symbols())


def _closed_lines(newline: bool) -> list[str]:
    """Lines whose value comes from a closed set, each one token: space group and disorder."""
    end = "\n" if newline else ""
    return [f"{SG_KEYWORD} {s}{end}" for s in _space_groups()] + [
        f"{DISORDER_KEYWORD} {w}{end}" for w in DISORDER_VALUES
    ]


def _closed_lines_regex(newline: bool) -> str:
    """Oniguruma alternation matching exactly the lines of :func:`_closed_lines`."""
    sgs = "|".join(_escape(s) for s in sorted(_space_groups(), key=len, reverse=True))
    words = "|".join(DISORDER_VALUES)
    end = r"\n" if newline else r"(?![^\n])"
    return rf"{_escape(SG_KEYWORD)} (?:{sgs}){end}|{DISORDER_KEYWORD} (?:{words}){end}"


def _spec(kind: str) -> tuple[list[str], list[tuple[str, str]], str]:
    """Vocabulary (ordered), BPE merges (by rank) and the split regex of one kind.

    The regex isolates, at line starts only, the pieces that are whole tokens (looked up
    directly: ``ignore_merges``); the text between them is split by the BPE merges.
    """
    elements_merges = [(e[0], e[1]) for e in ELEMENTS if len(e) == 2]
    head = list(SPECIAL_TOKENS) + list(ELEMENTS) + list(_CHARS) + ["  "]
    headers = [f" {k}\n" for k in LOOP_KEYWORDS]
    if kind == "cif":
        vocab = head + ["data_", "loop_\n"] + list(ITEM_KEYWORDS) + headers + _closed_lines(newline=False)
        merges = [(" ", " ")] + elements_merges
        split = rf"^(?:{_closed_lines_regex(newline=False)}|data_|loop_\n| {_KEY}\n| ?{_KEY})"
    elif kind == "compact":
        blocks = [_loop_block(loop) for loop in LOOPS]
        vocab = head + ["data_", "loop_\n"] + [k + " " for k in ITEM_KEYWORDS] + headers + blocks
        vocab += _closed_lines(newline=True) + ["  " + e for e in ELEMENTS] + ["  " + d for d in DIGITS]
        merges = []
        chunks = [""]
        for _ in range(DECIMALS):  # .d, .dd, .ddd, .dddd built digit by digit from "."
            nxt = []
            for c in chunks:
                for d in DIGITS:
                    vocab.append("." + c + d)
                    merges.append(("." + c, d))
                    nxt.append(c + d)
            chunks = nxt
        # decimal chains first (so integer-part digits never steal a decimal digit), then the
        # two-space separator, elements, and last the separator fused with what follows it
        merges += [(" ", " ")] + elements_merges + [("  ", e) for e in ELEMENTS] + [("  ", d) for d in DIGITS]
        split = (
            rf"^(?:{_closed_lines_regex(newline=True)}"
            + "".join("|" + _escape(b) for b in blocks)
            + rf"|data_|loop_\n| {_KEY}\n|{_KEY} | ?{_KEY})"
        )
    elif kind in ("pair", "local"):
        vocab, merges, split = _pair_spec(head, elements_merges, headers, local=kind == "local")
    else:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    vocab = list(dict.fromkeys(vocab))
    return vocab, merges, split


def _pair_spec(head: list[str], elements_merges: list[tuple[str, str]], headers: list[str], local: bool = False):
    """The ``pair`` kind: compact's fused keywords and loop blocks, every element one bare token
    wherever it stands (the column separator ``"  "`` is a token of its own before a symbol),
    integer digits one by one (a separator fused with the digit after it), and each 4-decimal
    fraction as two two-digit pieces (``.2500`` -> ``.25`` ``00``). ``local``: the ``local`` kind,
    pair's vocabulary followed by the local block's keywords and its loop header (one token)."""
    blocks = [_loop_block(loop) for loop in LOOPS]
    pairs = [a + b for a in DIGITS for b in DIGITS]
    vocab = head + ["data_", "loop_\n"] + [k + " " for k in ITEM_KEYWORDS] + headers + blocks
    vocab += _closed_lines(newline=True) + ["  " + d for d in DIGITS]
    vocab += ["." + d for d in DIGITS] + ["." + p for p in pairs] + pairs
    merges = [(" ", " ")] + elements_merges + [("  ", d) for d in DIGITS]
    merges += [(".", d) for d in DIGITS] + [("." + a, b) for a in DIGITS for b in DIGITS]
    merges += [(a, b) for a in DIGITS for b in DIGITS]
    if local:
        from .local import LOCAL_KEYS

        blocks.append(_loop_block(LOCAL_KEYS))
        vocab += [f" {k}\n" for k in LOCAL_KEYS] + [blocks[-1]]
    # Every number piece is its own pre-token, so the two-digit merge only ever meets the second
    # decimal pair: "90" stays "9" "0", ".2500" is ".25" + "00", "  12" is "  1" + "2".
    numbers = r"|\.\d\d|(?<=\.\d\d)\d\d|(?:  )?\d"
    split = (
        rf"^(?:{_closed_lines_regex(newline=True)}"
        + "".join("|" + _escape(b) for b in blocks)
        + rf"|data_|loop_\n| {_KEY}\n|{_KEY} | ?{_KEY})"
        + numbers
    )
    return vocab, merges, split


def build_backend(kind: str = "cif"):
    """The raw ``tokenizers.Tokenizer`` of one kind (BPE + regex split + concatenating decoder)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab, merges, split = _spec(kind)
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.BPE(ids, merges, unk_token=UNK, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(split), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B:1 {EOS}:1",
        special_tokens=[(BOS, ids[BOS]), (EOS, ids[EOS])],
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def build_tokenizer(kind: str = "cif", out: str | os.PathLike | None = None):
    """Build a crystext tokenizer as a ``transformers.PreTrainedTokenizerFast``.

    Args:
        kind: ``"cif"`` (CrystaLLM-like, one token per digit) or ``"compact"`` (4-decimal
            chunks, fused separators and keyword lines; 0.43-0.47x the tokens of ``cif``).
        out: if given, ``save_pretrained`` the tokenizer into this folder.

    The result is deterministic: the same kind always gives the same ids.
    """
    from transformers import PreTrainedTokenizerFast

    if kind in NAMES:
        kind = NAMES[kind]
    backend = build_backend(kind)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=MODEL_MAX_LENGTH[kind],
        padding_side="right",
        clean_up_tokenization_spaces=False,  # whitespace is data here
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.name_or_path = f"crystext-{kind}"
    if out is not None:
        save_tokenizer(tok, out)
    return tok


def save_tokenizer(tokenizer, out: str | os.PathLike) -> Path:
    """``save_pretrained`` into ``out``; returns the folder.

    Writes ``tokenizer.json``, ``tokenizer_config.json`` (with ``tokenizer_class``
    ``PreTrainedTokenizerFast``, a name every transformers version resolves without custom code)
    and ``special_tokens_map.json`` (read by transformers 4.x).
    """
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")
    return out


def builtin_dir(name: str) -> Path:
    """The shipped folder of a built-in tokenizer (package data; ``tokenizers/<name>/`` in the
    repository)."""
    from .resources import resource_dir

    return resource_dir("tokenizers") / name


def load_tokenizer(name_or_path: str | os.PathLike = "crystext-cif"):
    """Load a tokenizer by built-in name, folder or Hub id.

    A bare name resolves to the shipped ``tokenizers/<name>/`` (``crystext-cif``,
    ``crystext-compact``, package data; rebuilt in memory if that folder is absent);
    otherwise a folder holding ``tokenizer.json``; otherwise a Hub repo id.

    Raises:
        DataNotFoundError: nothing of that name can be found or loaded.
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if name in NAMES:
        folder = builtin_dir(name)
        if (folder / "tokenizer.json").is_file():
            return _from_pretrained(AutoTokenizer, folder, name)
        return build_tokenizer(NAMES[name])
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise DataNotFoundError(f"tokenizer {name}: folder holds no tokenizer.json")
        return _from_pretrained(AutoTokenizer, path, name)
    if path.exists():
        raise DataNotFoundError(f"tokenizer {name}: not a folder (give the folder holding tokenizer.json)")
    if isinstance(name_or_path, os.PathLike) or path.is_absolute() or name.startswith((".", "~")):
        raise DataNotFoundError(f"tokenizer {name}: no such folder")
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:  # noqa: BLE001 - HFValidationError; its module moved between versions
        raise DataNotFoundError(
            f"tokenizer {name}: not a built-in name ({', '.join(NAMES)}), not a folder, and not a Hub id"
        ) from None
    return _from_pretrained(AutoTokenizer, name, name)


def _from_pretrained(auto, source, name: str):
    try:
        return auto.from_pretrained(str(source))
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported the same way
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataNotFoundError(f"tokenizer {name}: cannot load ({type(exc).__name__}: {first})") from None


# --------------------------------------------------------------------------- token maps


def _vocab(tokenizer) -> dict[str, int]:
    if hasattr(tokenizer, "get_vocab"):
        return tokenizer.get_vocab()
    raise TokenizerError(f"{type(tokenizer).__name__} has no vocabulary (get_vocab)")


def element_token_ids(tokenizer) -> dict[str, int]:
    """Element symbol -> token id for every element the tokenizer holds (Z = 1..118, in Z order).

    Raises:
        TokenizerError: an element with Z <= 94 has no token of its own.
    """
    vocab = _vocab(tokenizer)
    found = {sym: vocab[sym] for sym in ELEMENTS if sym in vocab}
    missing = [sym for sym in ELEMENTS[:94] if sym not in found]
    if missing:
        raise TokenizerError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no token for {len(missing)} "
            f"elements (e.g. {', '.join(missing[:5])}); it is not a crystext tokenizer"
        )
    return found


def spacegroup_token_ids(tokenizer) -> dict[str, int]:
    """Space-group symbol (short H-M, as :func:`crystext.spacegroups.symbols`) -> token id.

    The token is the whole space-group line: ``"_symmetry_space_group_name_H-M Pm-3m"`` in
    ``crystext-cif`` (its newline is the next token) and the same with its newline in
    ``crystext-compact``.

    Raises:
        TokenizerError: the tokenizer lacks a token for some of the 230 space groups.
    """
    vocab = _vocab(tokenizer)
    out: dict[str, int] = {}
    for sym in _space_groups():
        for form in (f"{SG_KEYWORD} {sym}", f"{SG_KEYWORD} {sym}\n"):
            if form in vocab:
                out[sym] = vocab[form]
                break
    if len(out) != 230:
        missing = [s for s in _space_groups() if s not in out]
        raise TokenizerError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no token for {len(missing)} "
            f"space groups (e.g. {', '.join(missing[:5])})"
        )
    return out


# --------------------------------------------------------------------------- checked encoding

_KEYWORD_RE = re.compile(r"^ ?(_[A-Za-z][A-Za-z0-9_\-]*)", re.M)
_SG_RE = re.compile(rf"^{re.escape(SG_KEYWORD)} +([^\n]*)$", re.M)


def _backend(tokenizer):
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def encode_checked(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text``, refusing any text the tokenizer cannot represent faithfully.

    Raises:
        TokenizerError: ``text`` produced ``<unk>`` (characters outside the vocabulary, named
            with their line), names a space group that has no token, or holds a keyword that is
            not a single token (a keyword the tokenizer does not know).
    """
    if not isinstance(text, str):
        raise TokenizerError(f"encode_checked: expected str, got {type(text).__name__}")
    vocab = _vocab(tokenizer)
    name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
    enc = _backend(tokenizer).encode(text, add_special_tokens=add_special_tokens)
    if vocab.get(UNK) in enc.ids:
        bad = sorted({c for c in text if c not in vocab})
        line = next((i + 1 for i, ln in enumerate(text.split("\n")) if any(c in ln for c in bad)), "?")
        shown = ", ".join(repr(c) for c in bad[:5]) or "a character sequence"
        raise TokenizerError(f"text tokenizes to <unk> with {name}: {shown} (first on line {line}) not in the vocabulary")
    spans = [(m.start(1), m.end(1), f"keyword {m.group(1)!r}") for m in _KEYWORD_RE.finditer(text)]
    spans += [(m.start(1), m.end(1), f"space group {m.group(1)!r}") for m in _SG_RE.finditer(text)]
    if spans:
        offsets = [(s, e) for s, e in enc.offsets if e > s]  # special tokens have empty spans
        starts = [s for s, _ in offsets]
        for start, end, what in spans:
            # the token holding the first character must also hold the last one
            i = bisect.bisect_right(starts, start) - 1
            if i < 0 or offsets[i][1] < end:
                raise TokenizerError(f"{what} is not a single token of {name}: the tokenizer does not know it")
    return list(enc.ids)


def encode_batch(tokenizer, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of many texts through the Rust batch path without character offsets.

    Same ids as ``tokenizer(texts)["input_ids"]`` but faster (``tokenizers``'
    ``encode_batch_fast``; parallel over ``RAYON_NUM_THREADS`` threads unless
    ``TOKENIZERS_PARALLELISM=false``).
    """
    backend = _backend(tokenizer)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in encode(list(texts), add_special_tokens=add_special_tokens)]


# --------------------------------------------------------------------------- Python baseline


class PythonRegexTokenizer:
    """CrystaLLM's approach in pure Python over a crystext vocabulary: baseline and test oracle.

    Like CrystaLLM's ``CIFTokenizer.tokenize_cif``: ``re.findall`` with an alternation of every
    token sorted longest first, then a token -> id lookup. The 4-decimal chunks of the compact
    vocabulary (``.2793``) are matched by one class ``\\.\\d{1,4}`` instead of 11,110
    literals. It gives the same ids as the crystext tokenizer on crystal text: it is the
    specification the Rust tokenizer is tested against.

    Args:
        tokenizer: a crystext tokenizer or its name/path.
        crystallm_style: also do CrystaLLM's per-call work: mark the space-group symbol with
            ``_sg`` by a ``re.sub`` over the 230 symbols, join the pattern on every call, and test
            membership against the token *list*. False precompiles and uses a dict.
    """

    def __init__(self, tokenizer: Any = "crystext-cif", crystallm_style: bool = False):
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        vocab = _vocab(tokenizer)
        self.crystallm_style = crystallm_style
        self.unk_id = vocab[UNK]
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        self._token_to_id = {t: i for t, i in vocab.items() if t not in SPECIAL_TOKENS}
        self._id_to_token = {i: t for t, i in vocab.items()}
        chunk, pair = re.compile(r"\.\d+"), re.compile(r"\d\d")
        literals = [t for t in self._token_to_id if not chunk.fullmatch(t) and not pair.fullmatch(t)]
        longest = max((len(t) - 1 for t in self._token_to_id if chunk.fullmatch(t)), default=0)
        self._prefix = [rf"\.\d{{1,{longest}}}"] if longest else []
        if "00" in self._token_to_id:  # the pair kind: two digits only as a fraction's second pair
            self._prefix.append(r"(?<=\.\d\d)\d\d")
        self._sg_sub = None
        if crystallm_style:  # CrystaLLM marks the symbol ("Pm-3m" -> "Pm-3m_sg") before matching
            sgs = sorted(_space_groups(), key=len, reverse=True)
            self._sg_sub = re.compile(rf"({re.escape(SG_KEYWORD)} (?:{'|'.join(map(re.escape, sgs))}))\n")
            marked = {}
            for t in list(literals):
                if t.startswith(SG_KEYWORD + " "):
                    m = t[:-1] + "_sg\n" if t.endswith("\n") else t + "_sg"
                    marked[m] = self._token_to_id[t]
                    literals.remove(t)
            self._token_to_id.update(marked)
            literals += list(marked)
        self._escaped = [re.escape(t) for t in sorted(literals, key=len, reverse=True)]
        self._tokens = list(self._token_to_id)  # CrystaLLM tests membership against a list
        self._pattern = re.compile(self._full_pattern())

    def _full_pattern(self) -> str:
        return "|".join(self._prefix + self._escaped + [r"(?s:.)"])

    def _raw(self, text: str) -> list[str]:
        if self.crystallm_style:
            text = self._sg_sub.sub(r"\1_sg\n", text)
            tokens = re.findall(self._full_pattern(), text)
            return [t if t in self._tokens else UNK for t in tokens]
        return self._pattern.findall(text)

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` as in the vocabulary (unknown characters as ``<unk>``)."""
        get = self._token_to_id.get
        return [self._id_to_token[get(t, self.unk_id)] for t in self._raw(text)]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``, wrapped ``<bos> ... <eos>`` unless ``add_special_tokens=False``."""
        get, unk = self._token_to_id.get, self.unk_id
        ids = [get(t, unk) for t in self._raw(text)]
        return [self.bos_id, *ids, self.eos_id] if add_special_tokens else ids

    def __call__(self, texts: Iterable[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [self.encode(t, add_special_tokens) for t in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Concatenate the tokens of ``ids`` (special tokens dropped unless ``skip_special_tokens=False``)."""
        tokens = (self._id_to_token[i] for i in ids)
        return "".join(t for t in tokens if not (skip_special_tokens and t in SPECIAL_TOKENS))


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, max_length: int | None = None):
    """Right-pad token-id lists into ``(input_ids, attention_mask)`` long tensors.

    The one padding collate of crystext (pretraining, fine-tuning, embeddings). Right padding keeps
    each document's positions equal to those of the unpadded text. ``max_length`` truncates; callers
    that must never cut a document check lengths before (``DocumentTooLongError``).
    """
    import torch

    if max_length is not None:
        rows = [r[:max_length] for r in rows]
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask

