"""Sampling crystal text from a trained run, and judging it with :func:`crystext.text.check_text`.

Generation is a check of what a model learned: a model that has learned the text form writes
parsable CIF-like text whose formulas, multiplicities, space group and bond lengths agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import ConfigError, DataNotFoundError

#: the checks of :func:`crystext.text.check_text`, ``valid`` (all of them) and ``crystallm_valid``
#: (CrystaLLM's looser verdict, the one its published rates use)
CHECKS = ("parsable", "formula_consistent", "multiplicity_consistent", "space_group_consistent",
          "bond_lengths_reasonable", "valid", "crystallm_valid")


#: the key a header-only document writes right after the space group, and the last cell key
#: of a full structure (which writes the Int_Tables number after its cell)
HEADER_BRANCH, CELL_DONE = "_symmetry_Int_Tables_number", "_cell_angle_gamma"


def line_start_token(tok, key: str) -> int | None:
    """The id of the token a line ``key <value>`` starts with under ``tok``, or None when that token
    is not ``key`` itself (with its separator). ``crystext-cif`` has ``key`` as a token,
    ``crystext-compact`` ``key`` + space: looking ``key`` up in the vocabulary would miss the latter."""
    ids = tok(f"{key} 1\n", add_special_tokens=False)["input_ids"]
    if not ids or tok.decode(ids[:1]).strip() != key:
        return None
    return ids[0]


class _NoHeaderOnly:
    """Logits processor: ``banned`` is impossible in a row until ``until`` has appeared in it."""

    def __init__(self, banned: int, until: int):
        self.banned, self.until = banned, until

    def __call__(self, input_ids, scores):
        open_rows = ~(input_ids == self.until).any(dim=1)
        scores[open_rows, self.banned] = float("-inf")
        return scores


def _load(run):
    """(model, tokenizer) from a run folder / Hub id, or a ``(model, tokenizer)`` pair."""
    if isinstance(run, tuple):
        return run
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(str(run))
    if path.exists() and not (path / "config.json").is_file():
        raise DataNotFoundError(f"run {run}: no config.json; not a run folder (save_pretrained output)")
    if path.is_dir():  # a truncated or empty file: one line naming it
        from .atomic import check_model_folder

        check_model_folder(path)
    return AutoModelForCausalLM.from_pretrained(str(run)), AutoTokenizer.from_pretrained(str(run))


def generate(
    run,
    prompt: str = "data_",
    n: int = 8,
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = 10,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    full_structures: bool = True,
    constrained: bool = False,
) -> list[str]:
    """Sample ``n`` crystal texts that start with ``prompt`` (``"data_"`` for anything,
    ``"data_NaCl"`` for a composition, ...).

    ``run``: a run folder, Hub id or ``(model, tokenizer)``. Each sample starts at ``<bos>`` +
    prompt and ends at ``<eos>`` or after ``max_new_tokens`` (default: the rest of the context).
    ``temperature`` > 0 scales logits; ``top_k`` keeps the k likeliest tokens (None or 0: all);
    ``top_p`` < 1 keeps the smallest set of likeliest tokens whose probability reaches it (nucleus).
    Top-k depends on the tokenizer: with digit tokens (``crystext-cif``, CrystaLLM) k = 10 never cuts
    a digit, but ``crystext-compact`` spreads a number's decimals over ~10,000 tokens, each less
    likely than a single integer digit, so top-k 10 keeps only digits and numbers never end. Use
    ``top_k=None`` (the model's own distribution over texts, the same under any tokenizer) or
    ``top_p`` with compact runs.
    ``full_structures``: a corpus may mix in header-only documents (composition and space group,
    no cell or sites: see :func:`crystext.corpus.header_text`); they branch off right after the
    space-group line with ``_symmetry_Int_Tables_number`` where a full structure writes its
    cell. True forbids that token until the cell is written, so every sample is a structure.
    ``constrained``: sample through :class:`crystext.constrained.CrystalTextLogitsProcessor`, which
    allows only canonical text consistent with the prompt's composition and the space group the
    sample states (grammar, elements, Wyckoff multiplicities, a site list that fills the formula,
    special-position coordinates, no two atoms closer than :func:`crystext.constrained.min_distance`).
    The prompt must then start with a composition: ``data_Na4Cl4`` (the cell's atoms; elements
    put in the text form's order) or ``data_NaCl`` (the model chooses the formula units, at most
    :data:`crystext.constrained.MAX_FORMULA_UNITS`), optionally followed by further lines of the text.
    Unconstrained, a ``data_`` line whose elements lack counts (``data_NaCl``) is refused with the
    form to use, since the text form writes every count (``data_Na4Cl4``).
    Returns the texts, prompt included (constrained: the prompt as rewritten), special tokens
    removed. Same ``seed``, same texts.
    """
    _check_sampling(n, temperature, top_p)
    constraint = None
    if constrained:
        constraint = _constraint(run, prompt)  # bad prompts fail before the model loads
        prompt = constraint.prompt
    else:
        check_prompt(prompt)
    model, tok = _load(run)
    model.eval()
    ids, max_new_tokens = _prompt_ids(model, tok, prompt, max_new_tokens)
    return _sample(model, tok, ids, n, seed, batch_size, _processors(tok, constraint, full_structures),
                   temperature=temperature, top_k=top_k or 0, top_p=top_p, max_new_tokens=max_new_tokens)


def _check_sampling(n: int, temperature: float, top_p: float) -> None:
    if n < 1:
        raise ConfigError(f"generate: n must be >= 1, not {n}")
    if temperature <= 0:
        raise ConfigError(f"generate: temperature must be > 0, not {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"generate: top_p must be in (0, 1], not {top_p}")


def _constraint(run, prompt: str):
    """The constrained-sampling logits processor for ``prompt``, from the run's tokenizer alone."""
    from .constrained import CrystalTextLogitsProcessor

    _, tok_only = _load(run) if isinstance(run, tuple) else (None, None)
    if tok_only is None:
        from transformers import AutoTokenizer

        tok_only = AutoTokenizer.from_pretrained(str(run))
    return CrystalTextLogitsProcessor(tok_only, prompt)


def _prompt_ids(model, tok, prompt: str, max_new_tokens: int | None) -> tuple[list[int], int]:
    """``<bos>`` + the prompt's ids, and how many tokens may follow them in the model's context."""
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if tok.unk_token_id is not None and tok.unk_token_id in prompt_ids:
        raise ConfigError(f"generate: prompt {prompt!r} has characters the tokenizer does not know")
    ids = [tok.bos_token_id] + prompt_ids
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    room = context - len(ids)
    if room <= 0:
        raise ConfigError(f"generate: prompt is {len(ids)} tokens, the model's context is {context}")
    return ids, room if max_new_tokens is None else min(int(max_new_tokens), room)


def _processors(tok, constraint, full_structures: bool):
    """The logits processors of a sampling run: the constraint, else the header-only ban, else none."""
    if constraint is not None:
        from transformers import LogitsProcessorList

        return LogitsProcessorList([constraint])
    if full_structures:
        from transformers import LogitsProcessorList

        banned, until = line_start_token(tok, HEADER_BRANCH), line_start_token(tok, CELL_DONE)
        if banned is not None and until is not None:
            return LogitsProcessorList([_NoHeaderOnly(banned, until)])
    return None


def _sample(model, tok, ids: list[int], n: int, seed: int, batch_size: int, processors, **sampling) -> list[str]:
    """``n`` texts sampled after ``ids`` in batches of ``batch_size``, each batch seeded on its own."""
    import torch

    texts: list[str] = []
    with torch.no_grad():
        while len(texts) < n:
            k = min(batch_size, n - len(texts))
            torch.manual_seed(seed * 1_000_003 + len(texts))  # each batch reproducible on its own
            inp = torch.tensor([ids] * k)
            out = model.generate(
                input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=True, **sampling,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, logits_processor=processors,
            )
            texts += tok.batch_decode(out, skip_special_tokens=True)
    return texts


def check_prompt(prompt: str) -> None:
    """Refuse a prompt whose ``data_`` line cannot begin a text of the text form, naming the form
    to use: the form writes the cell composition with every count (``data_Na4Cl4``), so an
    element without its count before another element (``data_NaCl``), or a finished ``data_``
    line without counts (``data_NaCl\n``), would make the model continue a text it never saw.
    A bare ``data_`` or an unfinished last element (``data_Na``, the model writes its count) is fine.
    Raises :class:`ConfigError`."""
    import re

    text = prompt.lstrip()
    if not text.startswith("data_"):
        return
    line, newline, _ = text.partition("\n")
    parts = re.findall(r"([A-Z][a-z]?)(\d*)", line[5:])
    missing = [el for i, (el, n) in enumerate(parts) if not n and (newline or i < len(parts) - 1)]
    if missing:
        example = "".join(f"{el}{n or 1}" for el, n in parts)
        raise ConfigError(
            f"prompt {line!r}: {', '.join(missing)} has no count; the text form writes the cell composition with "
            f"every count (e.g. data_{example}, or that times the formula units in the cell, data_Na4Cl4 for rock "
            "salt); or sample with constrained=True (--constrained), which lets the model choose the formula units"
        )


def wilson_interval(count: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a pass rate ``count / n`` (95 % for ``z=1.96``).

    With a few dozen samples a rate is coarse: 0 of 32 is consistent with anything up to about
    11 %, so a rate is quoted with this interval, which (unlike the normal approximation) stays
    inside [0, 1] and is not empty at 0 or ``n``."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= count <= n:
        raise ConfigError(f"wilson_interval: count {count} is not between 0 and n={n}")
    p, z2 = count / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * ((p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class ValidityReport:
    """Per-sample checks (``table``, one row per text) and their rates (``summary``)."""

    table: "object"  # pandas.DataFrame
    summary: dict = field(default_factory=dict)

    def to_markdown(self) -> str:
        rows = ["| check | passed | rate | 95 % interval |", "|---|---|---|---|"]
        n = self.summary["n"]
        for check in CHECKS:
            s = self.summary[check]
            low, high = s["interval"]
            rows.append(f"| {check} | {s['count']}/{n} | {s['rate']:.3f} | {low:.3f}-{high:.3f} |")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.to_markdown()


def validity_report(texts: Iterable[str]) -> ValidityReport:
    """Parse each text with :func:`crystext.text.text_to_structure` and run
    :func:`crystext.text.check_text`; report every check's pass count and rate, and overall
    validity (all checks pass). A text that fails to parse fails every check."""
    import pandas as pd

    from .text import check_text

    rows = []
    for i, text in enumerate(texts):
        report = check_text(text).as_dict()
        report["errors"] = "; ".join(report["errors"])
        rows.append({"index": i, **report, "text": text})
    table = pd.DataFrame(rows, columns=["index", *CHECKS[:5], "bond_length_score", *CHECKS[5:], "errors", "text"])
    n = len(table)
    summary = {"n": n}
    for check in CHECKS:
        count = int(table[check].sum()) if n else 0
        summary[check] = {"count": count, "rate": count / n if n else 0.0,
                          "interval": wilson_interval(count, n)}
    return ValidityReport(table=table, summary=summary)
