"""What a model learned, by kind of token: held-out loss split by what each character of the text is.

Every run reads the same canonical texts (a seeded sample of a held-out structure set, by default
the mp_e_form test split, whose structures are kept out of the shared MP corpus), each tokenized
with its own tokenizer. Each character of a text gets a class from the text form's grammar
(element symbol, cell length, angle, volume, integer, special or general fractional coordinate
by digit position, space group, syntax); a token's loss is shared equally among the informative
characters it spans (digits, element letters, space-group symbols; a token of only spaces,
keywords or punctuation counts as syntax). So the figures compare across tokenizers: nats per
document, per general coordinate, per element symbol, whatever the tokens are.

References: ``uniform`` is a uniform guess over the four decimals of a coordinate (ln 10^4 = 9.21
nats per general coordinate, ln 10 per digit); ``unigram`` is each tokenizer's add-one smoothed
unigram over a seeded sample of MP training texts, attributed the same way.

    python benchmarks/training/loss_by_token.py \\
        --runs models/crystext-base models/crystext-compact models/crystext-mp \\
        --n 500 --json benchmarks/training/loss_by_token.json --md benchmarks/training/loss_by_token.md
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_loss import _unigram_logp, paired_difference  # noqa: E402  (the sibling script's unigram and pairing)
from precision import cpu_name  # noqa: E402  (the sibling script's CPU model name)

from crystext.corpus.identity import text_hash  # noqa: E402

CLASSES = (
    "syntax", "element", "integer", "space_group", "cell_length", "cell_angle", "volume",
    "coord_special", "coord_general_int", "coord_d1", "coord_d2", "coord_d3", "coord_d4", "other",
)
C = {name: i for i, name in enumerate(CLASSES)}
GENERAL = ("coord_general_int", "coord_d1", "coord_d2", "coord_d3", "coord_d4")
#: Fractions of the special positions (denominators 1, 2, 3, 4, 6, 8) at four decimals.
SPECIAL = {f"{k / d:.4f}" for d in (1, 2, 3, 4, 6, 8) for k in range(d + 1)}
_ITEM = re.compile(r"^(_\S+) (.*)$")
_NUMBER_CLASS = {"_cell_length": "cell_length", "_cell_angle": "cell_angle", "_cell_volume": "volume"}


def _mark_formula(classes: np.ndarray, start: int, text: str) -> None:
    for i, ch in enumerate(text):
        classes[start + i] = C["element"] if ch.isalpha() else C["integer"] if ch.isdigit() else C["syntax"]


def _mark_number(classes: np.ndarray, start: int, text: str, kind: str) -> None:
    for i, ch in enumerate(text):
        if ch.isdigit():
            classes[start + i] = C[kind]


def _mark_coordinate(classes: np.ndarray, start: int, value: str) -> int:
    """Mark one fractional coordinate; returns 1 for a general coordinate, 0 for a special one."""
    if value in SPECIAL or value.lstrip("-") in SPECIAL:
        _mark_number(classes, start, value, "coord_special")
        return 0
    dot = value.find(".")
    for i, ch in enumerate(value):
        if ch.isdigit():
            pos = i - dot
            classes[start + i] = C["coord_general_int"] if pos < 0 or dot < 0 else C[f"coord_d{min(pos, 4)}"]
    return 1


def _mark_site_row(classes: np.ndarray, start: int, line: str, counts: dict) -> None:
    fields = [(m.start(), m.group()) for m in re.finditer(r"\S+", line)]
    if len(fields) < 7:  # a property-block row or something the text form does not write
        for off, f in fields:
            _mark_number(classes, start + off, f, "other")
            for i, ch in enumerate(f):
                if ch.isalpha():
                    classes[start + off + i] = C["element"]
        return
    (o0, el), (o1, label), (o2, mult) = fields[:3]
    _mark_formula(classes, start + o0, el)
    _mark_formula(classes, start + o1, label)
    _mark_number(classes, start + o2, mult, "integer")
    for off, value in fields[3:6]:
        general = _mark_coordinate(classes, start + off, value)
        counts["coord_general"] += general
        counts["coord_special"] += 1 - general
    for off, f in fields[6:]:
        _mark_number(classes, start + off, f, "integer")
    counts["sites"] += 1


def char_classes(text: str) -> tuple[np.ndarray, dict]:
    """Class index of every character of a canonical crystext text, and item counts."""
    classes = np.full(len(text), C["syntax"], dtype=np.int8)
    counts = {"coord_general": 0, "coord_special": 0, "sites": 0, "elements": 0,
              "cell_length": 0, "cell_angle": 0}
    pos = 0
    in_sites = False
    for line in text.split("\n"):
        if line.startswith("data_"):
            _mark_formula(classes, pos + 5, line[5:])
        elif line.startswith(" _atom_site_"):
            in_sites = True
        elif line.startswith("loop_") or line.startswith(" _"):
            in_sites = False
        elif in_sites and line.startswith("  "):
            _mark_site_row(classes, pos, line, counts)
        elif (m := _ITEM.match(line)) is not None:
            key, value, at = m.group(1), m.group(2), pos + m.start(2)
            if key == "_symmetry_space_group_name_H-M":
                classes[at:at + len(value)] = C["space_group"]
            elif key.startswith("_chemical_formula"):
                _mark_formula(classes, at, value)
            elif (kind := next((v for k, v in _NUMBER_CLASS.items() if key.startswith(k)), None)) is not None:
                _mark_number(classes, at, value, kind)
                counts[kind] = counts.get(kind, 0) + 1
            elif key in ("_symmetry_Int_Tables_number", "_cell_formula_units_Z"):
                _mark_number(classes, at, value, "integer")
        pos += len(line) + 1
    counts["elements"] = int((np.diff(np.r_[0, (classes == C["element"]).astype(np.int8)]) == 1).sum())
    return classes, counts


def attribute(losses: np.ndarray, offsets: list[tuple[int, int]], classes: np.ndarray) -> np.ndarray:
    """Nats per class: each token's loss shared equally among the informative characters it spans."""
    out = np.zeros(len(CLASSES))
    for loss, (s, e) in zip(losses, offsets):
        span = classes[s:e]
        informative = span[span != C["syntax"]]
        if len(informative) == 0:
            out[C["syntax"]] += loss
        else:
            np.add.at(out, informative, loss / len(informative))
    return out


def _held_out_texts(path: Path, n: int, seed: int) -> list[str]:
    import pandas as pd
    from pymatgen.core import Structure

    from crystext.text import structure_to_text

    df = pd.read_csv(path)
    rows = df.sample(n=min(n * 2, len(df)), random_state=seed)
    texts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif in rows.cif:
            try:
                texts.append(structure_to_text(Structure.from_str(cif, fmt="cif")))
            except Exception:  # noqa: BLE001 - a structure the text form refuses is skipped
                continue
            if len(texts) == n:
                break
    return texts


def _trained_on(runs: list[str], data: Path) -> set[str]:
    """Text hashes of every structure document any of the runs (or the runs they came from) was
    pretrained on, so that the measured documents are ones no compared run has read."""
    from crystext.benchmark.leakage import corpus_identity

    seen: set[str] = set()
    for run in runs:
        seen |= corpus_identity(run, data_root=data).structures
    return seen


def _reference_texts(data: Path, n: int, seed: int) -> list[str]:
    import pandas as pd
    from pymatgen.core import Structure

    from crystext.text import structure_to_text

    df = pd.read_parquet(data / "mp" / "structures-00.parquet").sample(n=n, random_state=seed)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif in df.cif:
            try:
                out.append(structure_to_text(Structure.from_str(cif, fmt="cif")))
            except Exception:  # noqa: BLE001
                continue
    return out


def _token_losses(model, ids: list[list[int]], batch_size: int) -> list[np.ndarray]:
    import torch

    from crystext.tokenization import pad_batch

    out: list[np.ndarray] = [np.zeros(0)] * len(ids)
    order = np.argsort([len(x) for x in ids], kind="stable")
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            sel = order[i:i + batch_size]
            x, mask = pad_batch([ids[j] for j in sel], pad_id=0)
            logits = model(input_ids=x, attention_mask=mask).logits.float()
            nll = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, x[:, 1:, None])[..., 0]
            for row, j in enumerate(sel):
                out[j] = nll[row, : len(ids[j]) - 1].numpy()
    return out


def measure(run: str, texts: list[str], marks: list, reference: list[str], batch_size: int) -> dict:
    """Per-class nats of ``run`` and of its tokenizer's unigram on ``texts``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run)
    model = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32).eval()
    enc = tok(texts, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    start = time.perf_counter()
    losses = _token_losses(model, ids, batch_size)
    seconds = time.perf_counter() - start
    logp = _unigram_logp(tok, reference, int(model.config.vocab_size), 10**9)
    model_nats, uni_nats = np.zeros(len(CLASSES)), np.zeros(len(CLASSES))
    for k, (classes, _) in enumerate(marks):
        model_nats += attribute(losses[k], offsets[k][1:], classes)
        uni_nats += attribute(-logp[np.asarray(ids[k][1:])], offsets[k][1:], classes)
    tokens = sum(len(x) - 1 for x in ids)
    return {"run": run, "vocab": int(model.config.vocab_size), "tokens_per_doc": tokens / len(texts),
            "model": model_nats.tolist(), "unigram": uni_nats.tolist(), "seconds": round(seconds, 1),
            "doc_nats": [float(x.sum()) for x in losses]}


def summarise(nats: np.ndarray, totals: dict, n_docs: int, tokens: float | None) -> dict:
    """Per-document and per-item figures from per-class nats summed over documents."""
    general = float(sum(nats[C[c]] for c in GENERAL))
    row = {
        "nats_per_doc": float(nats.sum()) / n_docs,
        "nats_per_token": float(nats.sum()) / (tokens * n_docs) if tokens else None,
        "general_coord_nats": general / max(totals["coord_general"], 1),
        "general_share": general / float(nats.sum()),
        "special_coord_nats": float(nats[C["coord_special"]]) / max(totals["coord_special"], 1),
        "element_nats": float(nats[C["element"]]) / max(totals["elements"], 1),
        "cell_length_nats": float(nats[C["cell_length"]]) / max(totals["cell_length"], 1),
        "cell_angle_nats": float(nats[C["cell_angle"]]) / max(totals["cell_angle"], 1),
    }
    for c in ("coord_d1", "coord_d2", "coord_d3", "coord_d4"):
        row[c] = float(nats[C[c]]) / max(totals["coord_general"], 1)
    for c in ("integer", "space_group", "volume", "syntax"):
        row[f"{c}_per_doc"] = float(nats[C[c]]) / n_docs
    return row


def _markdown(rows: list[dict], meta: dict) -> str:
    uni = math.log(10.0)
    head = ("| run | vocab | tokens/doc | nats/doc | general coord (nats) | % of uniform | d1 | d2 | d3 | d4 "
            "| special coord | element | cell length | angle | share in general coords |")
    lines = [f"# Held-out loss by kind of token\n\n```\n{meta['command']}\n```\n",
             f"{meta['n_docs']} documents ({meta['held_out']}, seed {meta['seed']}), "
             f"{meta['general_coords']} general and {meta['special_coords']} special coordinates, "
             f"{meta['elements']} element symbols; machine: {meta['machine']}. Left out: "
             f"{meta.get('left_out_too_long', 0)} longer than the context for some run, "
             f"{meta.get('left_out_trained_on', 0)} whose canonical text is in a compared run's pretraining corpus.\n",
             "General coordinate: nats per fractional coordinate off a special position (uniform guess: "
             f"ln 10^4 = {4 * uni:.2f}, ln 10 = {uni:.2f} per digit d1-d4). Special: per coordinate at "
             "0, 1/8, 1/6, 1/4, 1/3, ... Element: per element symbol (header, formulas, site rows). "
             "`unigram`: the tokenizer's unigram over MP training texts, attributed the same way.\n",
             head, "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r.get('vocab', '')} | {r.get('tokens_per_doc', 0):.1f} | {r['nats_per_doc']:.1f} "
            f"| {r['general_coord_nats']:.2f} | {100 * r['general_coord_nats'] / (4 * uni):.0f} % "
            + "".join(f"| {r[c]:.2f} " for c in ("coord_d1", "coord_d2", "coord_d3", "coord_d4"))
            + f"| {r['special_coord_nats']:.3f} | {r['element_nats']:.3f} | {r['cell_length_nats']:.2f} "
            f"| {r['cell_angle_nats']:.3f} | {100 * r['general_share']:.0f} % |")
    if meta.get("paired_with_last"):
        last = rows[-2]["label"]
        lines += ["", f"Paired on the same documents: {last}'s nats per document minus each run's, with a "
                  "bootstrap 95 % interval over documents, and the share of documents it reads with less loss.", "",
                  f"| run | {last} minus this run (nats/doc) | 95 % interval | documents {last} reads better |",
                  "|---|---|---|---|"]
        for name, p in meta["paired_with_last"].items():
            lines.append(f"| {name} | {p['mean']:.1f} | [{p['low']:.1f}, {p['high']:.1f}] | {100 * p['share_better']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run folders (save_pretrained models)")
    ap.add_argument("--data", default=None, help="shared data folder (default: CRYSTEXT_DATA or ../shared/data)")
    ap.add_argument("--held-out", default="mp_e_form/test.csv", help="CSV with a cif column, under --data")
    ap.add_argument("--n", type=int, default=500, help="held-out documents (seeded sample)")
    ap.add_argument("--reference", type=int, default=1000, help="MP texts for the unigram references")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=1024, help="leave out documents longer than this for any run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from crystext.settings import data_dir

    data = Path(args.data) if args.data else data_dir()
    texts = _held_out_texts(data / args.held_out, args.n, args.seed)
    toks = [AutoTokenizer.from_pretrained(r) for r in args.runs]
    keep = [t for t in texts if all(len(tk(t)["input_ids"]) <= args.max_tokens for tk in toks)]
    seen = _trained_on(args.runs, data)
    n_short = len(keep)
    keep = [t for t in keep if text_hash(t) not in seen]
    reference = _reference_texts(data, args.reference, args.seed + 1)
    marks = [char_classes(t) for t in keep]
    totals = {k: sum(m[1][k] for m in marks) for k in marks[0][1]}
    rows, per_doc = [], {}
    for run in args.runs:
        res = measure(run, keep, marks, reference, args.batch_size)
        per_doc[run] = res["doc_nats"]
        for which in ("model", "unigram"):
            row = summarise(np.asarray(res[which]), totals, len(keep), res["tokens_per_doc"])
            label = Path(run).name if which == "model" else f"{Path(run).name} tokenizer, unigram"
            rows.append({"label": label, "run": run, "which": which, "vocab": res["vocab"],
                         "tokens_per_doc": res["tokens_per_doc"], "nats_by_class": dict(zip(CLASSES, res[which])),
                         "seconds": res["seconds"], **row})
        print(f"{run}: {rows[-2]['nats_per_doc']:.1f} nats/doc, general coordinate {rows[-2]['general_coord_nats']:.2f} nats",
              flush=True)
    meta = {"command": "python " + " ".join([sys.argv[0].replace(str(Path.cwd()) + "/", "")] + (argv or sys.argv[1:])),
            "n_docs": len(keep), "left_out_too_long": len(texts) - n_short,
            "left_out_trained_on": n_short - len(keep), "held_out": args.held_out,
            "seed": args.seed, "general_coords": totals["coord_general"], "special_coords": totals["coord_special"],
            "elements": totals["elements"], "machine": cpu_name()}
    last = args.runs[-1]
    meta["paired_with_last"] = {Path(r).name: paired_difference(per_doc[last], per_doc[r], seed=args.seed)
                                for r in args.runs[:-1]}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "totals": totals, "rows": rows}, indent=2))
    md = _markdown(rows, meta)
    if args.md:
        Path(args.md).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
