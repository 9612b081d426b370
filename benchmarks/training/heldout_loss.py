"""Held-out loss of trained runs on one corpus split, per token and per document, side by side.

Every run reads the same documents (the corpus split's canonical texts), tokenized with its own
tokenizer, so runs with different vocabularies compare on the tokenizer-free figure, nats per
document. The unigram baseline of each run is the add-one smoothed unigram of the corpus training
split under that run's tokenizer (what ``crystext pretrain`` reports as ``unigram_baseline_entropy``).
Documents longer than any run's context are left out for all of them (and counted).

Every run reads the same documents, so runs compare pairwise: each row also gives the mean
per-document difference to the last run of ``--runs`` (the candidate) with a seeded bootstrap 95 %
interval over documents, and the share of documents the candidate reads better. A release is
replaced only when that interval lies wholly below zero.

    python benchmarks/training/heldout_loss.py --corpus corpora/mp-40k --split test \\
        --runs models/crystext-base models/crystext-compact models/crystext-mp \\
        --json benchmarks/training/mp_heldout.json --md benchmarks/training/mp_heldout.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _unigram_logp(tok, texts: list[str], vocab: int, block: int) -> np.ndarray:
    counts = np.zeros(vocab, dtype=np.int64)
    for i in range(0, len(texts), 2048):
        for ids in tok(texts[i:i + 2048], add_special_tokens=True)["input_ids"]:
            counts += np.bincount(np.asarray(ids[1:block], dtype=np.int64), minlength=vocab)[:vocab]
    return np.log((counts + 1.0) / (counts.sum() + vocab))


def measure(run: str, held_texts: list[str], train_texts: list[str], batch_size: int) -> tuple[dict, np.ndarray]:
    """Figures of ``run`` on ``held_texts`` against the unigram baseline, and its summed loss per
    document (for the paired comparison)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crystext.training import collate

    tok = AutoTokenizer.from_pretrained(run)
    model = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32).eval()
    block = int(model.config.n_positions)
    vocab = int(model.config.vocab_size)
    ids = tok(held_texts, add_special_tokens=True)["input_ids"]
    logp = _unigram_logp(tok, train_texts, vocab, block)
    order = np.argsort([len(x) for x in ids], kind="stable")
    doc_loss = np.zeros(len(ids))
    doc_tokens = np.array([len(x) - 1 for x in ids])
    doc_unigram = np.array([-logp[np.asarray(x[1:], dtype=np.int64)].sum() for x in ids])
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            sel = order[i:i + batch_size]
            batch, mask = collate([ids[j] for j in sel], tok.pad_token_id, block)
            logits = model(input_ids=batch).logits[:, :-1].float()
            targets = batch[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                                     reduction="none").sum(dim=1)
            doc_loss[sel] = loss.double().numpy()
    seconds = time.perf_counter() - start
    return {"run": run, "tokens_per_document": float(doc_tokens.mean()),
            "nats_per_token": float(doc_loss.sum() / doc_tokens.sum()),
            "nats_per_document": float(doc_loss.mean()),
            "nats_per_document_std": float(doc_loss.std()),
            "unigram_nats_per_token": float(doc_unigram.sum() / doc_tokens.sum()),
            "unigram_nats_per_document": float(doc_unigram.mean()),
            "seconds": round(seconds, 1), "context": block}, doc_loss


def paired_difference(candidate: np.ndarray, other: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean per-document loss difference ``candidate - other`` (nats; negative: the candidate is
    better), its bootstrap 95 % interval over documents, and the share of documents it reads better."""
    diff = np.asarray(candidate, dtype=float) - np.asarray(other, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high),
            "share_better": float((diff < 0).mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="corpus folder (crystext corpus build)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--runs", nargs="+", required=True, help="run folders")
    ap.add_argument("--max-docs", type=int, default=0, help="a seeded sample of this many documents (0: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--md", help="write a Markdown table here")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from crystext.corpus import load_corpus

    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    if args.split not in corpus:
        ap.error(f"{args.corpus}: no split {args.split!r} (has {sorted(corpus)})")
    held = corpus[args.split]["text"]
    if args.max_docs and args.max_docs < len(held):
        keep = np.sort(np.random.default_rng(0).permutation(len(held))[: args.max_docs])
        held = [held[i] for i in keep]
    # documents every run can read whole
    too_long = np.zeros(len(held), dtype=bool)
    for run in args.runs:
        tok = AutoTokenizer.from_pretrained(run)
        block = json.loads((Path(run) / "config.json").read_text()).get("n_positions", 1024)
        too_long |= np.array([len(x) > block for x in tok(held, add_special_tokens=True)["input_ids"]])
    held = [t for t, bad in zip(held, too_long) if not bad]
    train = corpus["train"]["text"]
    rows, losses = zip(*(measure(run, held, train, args.batch_size) for run in args.runs))
    for row, loss in zip(rows[:-1], losses[:-1]):
        row["candidate_minus_this"] = paired_difference(losses[-1], loss)
    command = "python benchmarks/training/heldout_loss.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"command": command, "corpus": args.corpus, "split": args.split, "documents": len(held),
              "left_out_too_long": int(too_long.sum()), "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "runs": rows}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.md:
        lines = [f"Held-out loss on `{args.corpus}` {args.split} ({len(held)} documents; "
                 f"{int(too_long.sum())} longer than a run's context left out for all runs)", "",
                 f"`{command}`", "",
                 f"The last two columns compare `{rows[-1]['run']}` (the last run) with each run on the same "
                 "documents: its mean per-document loss minus the run's, with a bootstrap 95 % interval "
                 "over documents, and the share of documents it reads with less loss.", "",
                 "| run | tokens / doc | nats / token | unigram nats / token | nats / document | unigram nats / document "
                 "| last run minus this, nats / document | documents the last run reads better |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            d = r.get("candidate_minus_this")
            paired = (f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] | {d['share_better']:.0%}"
                      if d else "| ")
            lines.append(f"| {r['run']} | {r['tokens_per_document']:.1f} | {r['nats_per_token']:.3f} | "
                         f"{r['unigram_nats_per_token']:.3f} | {r['nats_per_document']:.1f} | "
                         f"{r['unigram_nats_per_document']:.1f} | {paired} |")
        Path(args.md).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
