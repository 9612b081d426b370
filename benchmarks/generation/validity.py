"""Validity of sampled crystal text: what a trained run has learned of the text form.

Usage:
    python benchmarks/generation/validity.py --run models/crystext-base [--n 32] [--seed 0]
        [--out benchmarks/generation/validity.md] [--json RUN/generation.json]

Three prompt sets, each sampled with CrystaLLM's settings (temperature 1.0, top-k 10) and judged
by :func:`crystext.generation.validity_report` (parsable, formula / multiplicity / space-group
consistency, CrystaLLM's bond-length rule, and all of them = valid; ``crystallm_valid`` is CrystaLLM's
own looser verdict, the one beside which its published rates stand, see
:func:`crystext.text.check_text`):

- ``unconditional``: the prompt ``data_`` alone (``--n`` samples);
- ``<set> test`` for each of ``--sets`` (default ``perov_5 carbon_24``): the ``data_`` line of ``--n``
  seeded structures of that shared set's ``test.csv`` (never in the pretraining corpora), one
  sample each. ``--sets mp_e_form`` prompts with held-out Materials Project compositions (the
  benchmark structures that ``mp/`` leaves out): the check of issue 11 for ``crystext-mp``;

each at every ``--temperatures`` value. A sample is as good as its worst token: one digit
sampled from the tail of the distribution breaks a number, so small models gain much from a
lower temperature.

Samples are forced to be full structures (``full_structures=True``: no header-only documents).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def data_lines(name: str, n: int, seed: int) -> list[str]:
    """The ``data_`` lines of ``n`` seeded test structures of a shared set."""
    from crystext.inputs import to_structure
    from crystext.settings import data_dir
    from crystext.text import structure_to_text

    df = pd.read_csv(data_dir(required=True) / name / "test.csv")
    rows = np.random.default_rng(seed).choice(len(df), size=min(n, len(df)), replace=False)
    return [structure_to_text(to_structure(df.cif.iloc[i])).splitlines()[0] + "\n" for i in sorted(rows)]


def main(argv: list[str] | None = None) -> int:
    import torch

    from crystext.generation import CHECKS, _load, generate, validity_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="models/crystext-base")
    ap.add_argument("--n", type=int, default=32, help="samples per prompt set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperatures", nargs="+", type=float, default=[1.0],
                    help="sampling temperatures (CrystaLLM samples at 1.0)")
    ap.add_argument("--sets", nargs="+", default=["perov_5", "carbon_24"],
                    help="shared data sets whose test.csv gives the data_ prompts")
    ap.add_argument("--no-unconditional", action="store_true", help="leave out the bare data_ prompt set")
    ap.add_argument("--top-k", type=int, default=10,
                    help="0: off (the model's own distribution over texts; right for crystext-compact "
                         "runs, whose ~10,000 decimal tokens top-k 10 cuts away, see crystext.generate)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1: off)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="cap on sampled tokens per sample (default: the rest of the context); a sample "
                         "cut by it counts as invalid (it has not ended), so a cap only makes runaway "
                         "samples cheaper, unless a valid text would be longer than the cap")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).with_name("validity.md")))
    ap.add_argument("--json", default=None, help="also write the summary here (default RUN/generation.json)")
    ap.add_argument("--samples", default=None,
                    help="also write every sample (prompt set, text, checks, errors) to this JSON-lines file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load(args.run)
    start = time.perf_counter()
    sets = {} if args.no_unconditional else {"unconditional": ["data_"] * args.n}
    for name in args.sets:
        sets[f"{name} test"] = data_lines(name, args.n, args.seed)
    summary, intervals, tables = {}, {}, []
    for temperature, (name, prompts) in ((t, item) for t in args.temperatures for item in sets.items()):
        label = f"{name}, T={temperature:g}"
        texts: list[str] = []
        if len(set(prompts)) == 1:
            texts = generate(model, prompt=prompts[0], n=len(prompts), temperature=temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=8,
                             max_new_tokens=args.max_new_tokens)
        else:
            for i, prompt in enumerate(prompts):
                texts += generate(model, prompt=prompt, n=1, temperature=temperature, top_k=args.top_k,
                                  top_p=args.top_p, seed=args.seed + i, max_new_tokens=args.max_new_tokens)
        report = validity_report(texts)
        summary[label] = {check: round(report.summary[check]["rate"], 4) for check in CHECKS}
        summary[label]["n"] = len(texts)
        intervals[label] = {check: [round(v, 4) for v in report.summary[check]["interval"]]
                            for check in ("valid", "crystallm_valid")}
        report.table.insert(0, "prompt_set", label)
        report.table.insert(1, "prompt", prompts)
        tables.append(report.table)
        print(f"[validity] {label}: valid {summary[label]['valid']:.3f} of {len(texts)}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start

    cmd = "python benchmarks/generation/validity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Validity of sampled crystal text", "", f"Command: `{cmd}` ({seconds:.0f} s)", "",
             f"Run: `{args.run}`; temperatures {', '.join(f'{t:g}' for t in args.temperatures)}, "
             f"top-k {args.top_k or 'off'}, " + (f"top-p {args.top_p:g}, " if args.top_p < 1 else "") +
             f"seed {args.seed}; "
             + (f"at most {args.max_new_tokens} new tokens per sample; " if args.max_new_tokens else "") +
             "samples forced to be full structures. Rates are fractions of the samples; the intervals are "
             "Wilson 95 % intervals (crystext.generation.wilson_interval).", "",
             "| prompt set | samples | " + " | ".join(CHECKS) + " | valid, 95 % interval | crystallm_valid, 95 % interval |",
             "|---|---|" + "---|" * (len(CHECKS) + 2)]
    for label, s in summary.items():
        spans = " | ".join(f"{lo:.3f}-{hi:.3f}" for lo, hi in intervals[label].values())
        lines.append(f"| {label} | {s['n']} | " + " | ".join(f"{s[c]:.3f}" for c in CHECKS) + f" | {spans} |")
    errors = pd.concat(tables)
    errors = errors[errors.errors.astype(str) != ""]
    if len(errors):
        lines += ["", "Most frequent first errors:", ""]
        first = errors.errors.astype(str).str.split(";").str[0].str.replace(r"line \d+", "line N", regex=True)
        first = first.str.replace(r"\(.*\)", "(...)", regex=True)
        for text, count in first.value_counts().head(8).items():
            lines.append(f"- {count} x {text}")
    if args.samples:
        pd.concat(tables).to_json(args.samples, orient="records", lines=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    summary_json = {"temperature": ", ".join(f"{t:g}" for t in args.temperatures), "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
                    "command": cmd, "prompt_sets": summary,
                    "intervals": intervals}
    json_path = Path(args.json) if args.json else Path(args.run) / "generation.json"
    json_path.write_text(json.dumps(summary_json, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
