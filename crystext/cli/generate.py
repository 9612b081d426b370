"""``crystext generate``: sample crystal text from a run and report its validity."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="sample crystal text from a trained run and check its validity",
        description="Sample texts starting with a prompt, parse each with text_to_structure and report "
        "check_text validity (parsable, formula, multiplicity, space group, bond lengths).",
    )
    p.add_argument("run", metavar="RUN", help="run folder, release name under models/, or Hub id")
    p.add_argument("--prompt", default="data_",
                   help="text to continue (default 'data_'); a composition is the cell's atoms with every count, "
                   "e.g. 'data_Na4Cl4'; with --constrained also 'data_NaCl' (the model chooses the formula units)")
    p.add_argument("-n", "--n", dest="n", type=int, default=8, help="number of samples (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the rest of the context")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=10,
                   help="keep the k likeliest tokens; 0 = off (default 10, CrystaLLM's). Unconstrained "
                   "crystext-compact runs (crystext-mp) sample better with 0: top-k 10 cuts away their "
                   "~10,000 decimal tokens; --constrained makes top-k safe with any tokenizer (it is "
                   "applied after the constraints)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--constrained", action="store_true",
                   help="constrained decoding: only canonical text that agrees with the prompt's composition and "
                   "its own space group (grammar, Wyckoff multiplicities, a site list that fills the formula, "
                   "special-position coordinates, no atoms closer than 0.68 x their bond length); see docs/generation.md")
    p.add_argument("--out", default=None,
                   help="write every sample with its checks: FILE.jsonl (one JSON object per sample: text and "
                   "per-check verdicts) or FILE.csv")
    p.add_argument("--allow-headers", action="store_true",
                   help="let samples be header-only documents (composition + space group, no sites)")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="write the validity summary (with the sampling settings) as JSON here, e.g. "
                   "RUN/generation.json, which the model card quotes")
    p.add_argument("--quiet", action="store_true",
                   help="print only the summary, not the texts (without it the texts go to stdout, the "
                   "summary to stderr, so `> FILE` keeps only texts)")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from ..generation import generate, validity_report
    from ..resolve import resolve_model

    texts = generate(resolve_model(args.run), prompt=args.prompt, n=args.n, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, seed=args.seed,
                     full_structures=not args.allow_headers, constrained=args.constrained)
    report = validity_report(texts)
    # with the texts on stdout, everything else goes to stderr: `generate RUN > samples.txt` is a
    # file of texts that `text check` and `text to-cif` read whole
    info = sys.stdout if args.quiet else sys.stderr
    if not args.quiet:
        for i, (text, row) in enumerate(zip(texts, report.table.itertuples())):
            print(f"# sample {i}: {'valid' if row.valid else 'invalid'}" + (f" ({row.errors})" if row.errors else ""))
            print(text.rstrip() + "\n")
    print(report.to_markdown(), file=info)
    if args.out:
        if str(args.out).endswith(".jsonl"):
            import json

            with open(args.out, "w", encoding="utf-8") as fh:
                for row in report.table.to_dict(orient="records"):
                    fh.write(json.dumps({"text": row.pop("text"), **row, "prompt": args.prompt,
                                         "temperature": args.temperature, "constrained": args.constrained}) + "\n")
        else:
            report.table.to_csv(args.out, index=False)
        print(f"samples and checks written to {args.out}", file=info)
    if args.report:
        import json
        from pathlib import Path

        summary = {"prompt": args.prompt, "n": report.summary["n"], "temperature": args.temperature,
                   "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "constrained": args.constrained,
                   "full_structures": not args.allow_headers}
        summary.update({f"{check} rate": round(v["rate"], 4) for check, v in report.summary.items() if check != "n"})
        Path(args.report).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"validity summary written to {args.report}", file=info)
    return 0
