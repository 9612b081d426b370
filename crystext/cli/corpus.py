"""``crystext corpus build SOURCES... --out DIR``, ``crystext corpus stats DIR`` and
``crystext corpus pack DIR... --out FILE`` / ``crystext corpus unpack FILE --out DIR``."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..limits import DEFAULT_MAX_ATOMS, DEFAULT_TIME_LIMIT


def _q(items) -> str:
    return " ".join(shlex.quote(str(a)) for a in items)


def _build_command(args) -> str:
    """The command line, rebuilt from the parsed arguments (with every default spelled out)."""
    parts = ["crystext corpus build", _q(args.sources), f"--out {_q([args.out])}", f"--tokenizer {_q([args.tokenizer])}",
             f"--num-proc {args.num_proc}", f"--dedupe {args.dedupe}", f"--split {_q(args.split)}",
             f"--split-by {args.split_by}", f"--seed {args.seed}", f"--symprec {args.symprec}", f"--disorder {args.disorder}",
             f"--max-atoms {args.max_atoms}", f"--time-limit {args.time_limit:g}", f"--max-tokens {args.max_tokens}",
             f"--shard-size {args.shard_size}"]
    if args.properties:
        parts.append("--properties")
    if args.local:
        parts.append("--local")
    if args.limit is not None:
        parts.append(f"--limit {args.limit}")
    if args.part:
        parts.append(f"--part {args.part}")
    return " ".join(parts)


def _stats_command(args) -> str:
    parts = ["crystext corpus stats", _q(args.dirs), f"--split {args.split}"]
    if args.tokenizer:
        parts.append(f"--tokenizer {_q([args.tokenizer])}")
    if args.markdown:
        parts.append(f"--markdown {_q([args.markdown])}")
    if args.reference:
        parts.append(f"--reference {_q(args.reference)}")
    parts.append(f"--min-count {args.min_count}")
    return " ".join(parts)


def _build(args) -> int:
    from ..corpus import build_corpus

    dedupe = None if args.dedupe == "none" else args.dedupe
    corpus = build_corpus(
        args.sources,
        out=args.out,
        tokenizer=args.tokenizer,
        num_proc=args.num_proc,
        dedupe=dedupe,
        split=tuple(args.split),
        split_by=args.split_by,
        seed=args.seed,
        symprec=args.symprec,
        properties=args.properties,
        local=args.local,
        disorder=args.disorder,
        limit=args.limit,
        part=args.part,
        progress=not args.quiet,
        command=_build_command(args),
        max_atoms=args.max_atoms or None,
        time_limit=args.time_limit or None,
        max_tokens=args.max_tokens or None,
        shard_size=args.shard_size,
        fresh=args.fresh,
        keep_shards=not args.drop_shards,
    )
    if corpus is None:  # pragma: no cover - only with max_new_shards, which the CLI does not set
        return 1
    print(f"corpus written to {args.out}")
    return 0


def _stats(args) -> int:
    from ..corpus import add_counts, coverage_markdown, load_corpus, reference_elements, token_counts

    corpora = [load_corpus(d) for d in args.dirs]
    counts = add_counts(token_counts(c, tokenizer=args.tokenizer or str(Path(d) / "tokenizer"), split=args.split)
                        for c, d in zip(corpora, args.dirs))
    if args.markdown:
        reference = reference_elements(args.reference) if args.reference else None
        command = _stats_command(args)
        built = [c.summary.get("command") for c in corpora]
        if len(corpora) == 1:
            made = f"Made by `{command}`" + (f" on the corpus built by `{built[0]}`." if built[0] else ".")
        else:
            made = (f"Made by `{command}`: the counts of {len(corpora)} corpora added up (what a run trained "
                    "on them in turn has seen), built by " + "; ".join(f"`{b}`" for b in built if b) + ".")
        head = ["# Element coverage of the pretraining corpus", "", made, ""]
        if args.reference:
            head += [f"Elements the benchmarks use: every element in {', '.join(f'`{r}`' for r in args.reference)}.", ""]
        summaries = [c.summary for c in corpora]
        text = "\n".join(head) + "\n" + coverage_markdown(counts, reference, args.min_count,
                                                           summaries[0] if len(summaries) == 1 else summaries)
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
        print(f"report written to {args.markdown}")
    shown = counts if args.all else counts[counts.tokens > 0]
    with_pd_options(lambda: print(shown.to_string()))
    return 0


def _pack(args) -> int:
    import os

    from ..corpus import pack_corpus

    meta = pack_corpus(args.dirs, args.out)
    tokens = sum(v["tokens"] for v in meta["splits"].values())
    print(f"packed {len(args.dirs)} corpus folder(s), "
          + ", ".join(f"{k} {v['documents']} docs / {v['tokens']} tokens" for k, v in meta["splits"].items())
          + f" into {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB, {os.path.getsize(args.out) / max(tokens, 1):.2f} bytes/token)")
    return 0


def _unpack(args) -> int:
    from ..corpus import unpack_corpus

    dd = unpack_corpus(args.file, args.out)
    print(f"corpus written to {args.out}: " + ", ".join(f"{k} {len(v)} docs" for k, v in dd.items()))
    return 0


def _retokenize(args) -> int:
    from ..corpus import retokenize_corpus

    dd = retokenize_corpus(args.corpus, args.out, args.tokenizer, max_tokens=args.max_tokens or None)
    info = dd.summary["retokenized"]["splits"]
    print(f"corpus written to {args.out} ({args.tokenizer}): "
          + ", ".join(f"{k} {v['documents']} docs / {v['tokens']} tokens" for k, v in info.items())
          + f"; {sum(v['excluded_too_long'] for v in info.values())} over --max-tokens excluded, "
          + f"{sum(v['documents_with_unk'] for v in info.values())} with <unk>, "
          + f"{sum(v['documents_not_round_trip'] for v in info.values())} not decoding back to their text")
    return 0


def _exclude(args) -> int:
    from ..corpus import exclude_structures, held_out_hashes
    from ..settings import data_dir

    data = args.data or data_dir(required=True)
    hashes = held_out_hashes(data, args.tasks, symprec=args.symprec, text_cache=args.text_cache,
                             num_proc=args.num_proc)
    dd = exclude_structures(args.corpus, args.out, hashes)
    removed = dd.summary["excluded_held_out"]["removed"]
    print(f"corpus written to {args.out}: " + ", ".join(f"{k} {len(v)} docs" for k, v in dd.items())
          + f"; {sum(sum(r.values()) for r in removed.values())} documents removed, being held-out structures of "
          + f"{len(hashes)} checked (" + ", ".join(f"{k}: {r or 0}" for k, r in removed.items()) + ")")
    return 0


def with_pd_options(fn) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.width", 120):
        fn()


def _register_build(verbs) -> None:
    """``corpus build``: sources -> a corpus folder."""
    b = verbs.add_parser(
        "build",
        help="build a corpus folder from sources",
        description="Convert every record to crystal text over --num-proc processes (bad records are skipped "
        "and counted by reason), tokenize, write Arrow shards as it goes (--out/_build), then deduplicate "
        "and split by a seeded hash; writes DatasetDict splits, summary.json, skipped.csv and tokenizer/ "
        "into --out. Memory does not grow with the number of records. Killed, it resumes: rerun the same "
        "command and the finished shards are kept.",
    )
    b.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a CIF folder, a .csv/.parquet/.jsonl table with a cif column, pymatgen .json, "
                   "a Matbench .json.bz2 (header documents) or 'aflow-prototypes'")
    b.add_argument("--out", required=True, metavar="DIR", help="output corpus folder")
    b.add_argument("--tokenizer", default="crystext-cif", help="tokenizer name, folder or Hub id (default: crystext-cif)")
    b.add_argument("--num-proc", type=int, default=1, help="worker processes (default: 1)")
    b.add_argument("--dedupe", choices=["formula-spacegroup", "structure", "text", "none"], default="formula-spacegroup",
                   help="one document per formula+space group, StructureMatcher duplicates within formula+space "
                   "group, identical canonical text only, or none (default: formula-spacegroup)")
    b.add_argument("--split", type=float, nargs=3, default=[0.9, 0.05, 0.05], metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions (default: 0.9 0.05 0.05)")
    b.add_argument("--split-by", choices=["random", "composition"], default="random",
                   help="'composition' keeps every reduced formula in one split (default: random)")
    b.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    b.add_argument("--symprec", type=float, default=0.1, help="symmetry tolerance in angstrom (default: 0.1)")
    b.add_argument("--properties", action="store_true", help="add the atom-property block to each text")
    b.add_argument("--local", action="store_true",
                   help="add the local block (each site's coordination, neighbour element and nearest distance); "
                        "use --tokenizer crystext-local")
    b.add_argument("--disorder", choices=["raise", "dominant", "order"], default="raise",
                   help="partially occupied sites: skip the record (raise), keep the majority species, or order")
    b.add_argument("--limit", type=int, default=None, help="at most N records per source")
    b.add_argument("--part", default=None, metavar="K/N",
                   help="only part K of N disjoint random parts of every source (a hash of the record id), "
                        "e.g. 1/4: a corpus too large for one training session, built and trained part by part; "
                        "records keep the split they have in the whole corpus")
    b.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS,
                   help=f"skip (and count) structures with more atoms; 0: no limit (default: {DEFAULT_MAX_ATOMS})")
    b.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                   help=f"skip (and count) records whose conversion takes longer, in seconds; 0: no limit "
                   f"(default: {DEFAULT_TIME_LIMIT:g})")
    b.add_argument("--max-tokens", type=int, default=1024,
                   help="exclude (and count) documents of more tokens, <bos>/<eos> included; they are never cut; "
                   "0: no limit (default: 1024, the context of the released models)")
    b.add_argument("--shard-size", type=int, default=2000,
                   help="records per conversion shard, the unit of restart (default: 2000)")
    b.add_argument("--fresh", action="store_true",
                   help="discard conversion shards of a different earlier build in --out (else refused)")
    b.add_argument("--drop-shards", action="store_true",
                   help="remove the conversion shards (--out/_build) once the corpus is written; by default they "
                   "are kept so a rerun with another --split/--seed/--dedupe converts nothing")
    b.add_argument("--quiet", action="store_true", help="no progress bars or summary table")
    b.set_defaults(func=_build)


def _register_stats(verbs) -> None:
    """``corpus stats``: per-element token counts, optionally a Markdown coverage report."""
    s = verbs.add_parser(
        "stats",
        help="per-element token counts of a corpus split",
        description="Print how often each element's token occurs in a split (and in how many "
        "documents) of one corpus or of several added up, optionally as a Markdown coverage report "
        "against benchmark tables.",
    )
    s.add_argument("dirs", nargs="+", metavar="DIR",
                   help="corpus folder (from `crystext corpus build`); several: their counts added up (the "
                   "parts a run was trained on in turn)")
    s.add_argument("--split", default="train", help="split to count (default: train)")
    s.add_argument("--tokenizer", default=None, help="tokenizer (default: the corpus folder's tokenizer/)")
    s.add_argument("--all", action="store_true", help="also list elements with zero tokens")
    s.add_argument("--markdown", metavar="FILE", help="write a Markdown coverage report here")
    s.add_argument("--reference", nargs="+", metavar="PATH",
                   help="benchmark tables or folders whose elements the report checks (formula/composition/cif columns)")
    s.add_argument("--min-count", type=int, default=1000, help="coverage threshold for the report (default: 1000)")
    s.set_defaults(func=_stats)


def _register_pack(verbs) -> None:
    """``corpus pack``: corpus folders -> one compressed file."""
    k = verbs.add_parser(
        "pack",
        help="pack corpus folders into one small file (token ids + short columns, LZMA)",
        description="Write one or more corpus folders of the same tokenizer (e.g. the --part K/N parts of one "
        "build) into a single compressed file, each split the concatenation of theirs: ~0.5 bytes per token "
        "instead of ~9. The text is not stored; `crystext corpus unpack` decodes it back from the ids.",
    )
    k.add_argument("dirs", nargs="+", metavar="DIR", help="corpus folders (from `crystext corpus build`)")
    k.add_argument("--out", required=True, metavar="FILE", help="packed file to write (e.g. mp.corpus.xz)")
    k.set_defaults(func=_pack)


def _register_unpack(verbs) -> None:
    """``corpus unpack``: a packed file -> a corpus folder."""
    u = verbs.add_parser(
        "unpack",
        help="write a corpus folder from a packed file",
        description="Rebuild a corpus folder from `crystext corpus pack`'s file: the same splits, rows, order "
        "and columns, the text decoded from the token ids and checked to encode back to them.",
    )
    u.add_argument("file", metavar="FILE", help="packed corpus file")
    u.add_argument("--out", required=True, metavar="DIR", help="corpus folder to write")
    u.set_defaults(func=_unpack)


def _register_retokenize(verbs) -> None:
    """``corpus retokenize``: a corpus under another tokenizer."""
    r = verbs.add_parser(
        "retokenize",
        help="write a corpus under another tokenizer from its text (no structure converted again)",
        description="Tokenize a built corpus's text column with another tokenizer into a new corpus folder: "
        "same splits, rows and order; documents over --max-tokens excluded and counted, never cut.",
    )
    r.add_argument("corpus", metavar="DIR", help="corpus folder (crystext corpus build output)")
    r.add_argument("--out", required=True, metavar="DIR", help="corpus folder to write")
    r.add_argument("--tokenizer", required=True, help="tokenizer name (crystext-pair, ...) or folder")
    r.add_argument("--max-tokens", type=int, default=1024, help="exclude longer documents; 0: keep all (default: 1024)")
    r.set_defaults(func=_retokenize)


def _register_exclude(verbs) -> None:
    """``corpus exclude``: benchmark structures out of a corpus."""
    r = verbs.add_parser(
        "exclude",
        help="remove the benchmark tasks' held-out structures from a corpus",
        description="Write a corpus without the documents whose canonical text is that of a validation or "
        "test structure of a benchmark task (default: the shared structure tasks perov_5, carbon_24, "
        "mp_e_form, mp_dielectric_n, mp_log_kvrh, mp_log_gvrh under --data): the same structure can "
        "sit in the Materials Project under another id. Same splits and order; the summary counts what went.",
    )
    r.add_argument("corpus", metavar="DIR", help="corpus folder (crystext corpus build output)")
    r.add_argument("--out", required=True, metavar="DIR", help="corpus folder to write")
    r.add_argument("--data", help="data folder holding the task folders (default: $CRYSTEXT_DATA or ../shared/data)")
    r.add_argument("--tasks", nargs="+", metavar="TASK", help="task folders under --data (default: the shared structure tasks)")
    r.add_argument("--symprec", type=float, default=0.1, help="symmetry tolerance of the corpus' texts (default 0.1)")
    r.add_argument("--text-cache", metavar="FILE", help="JSONL cache of canonical texts (default under the crystext cache)")
    r.add_argument("--num-proc", type=int, default=1, help="processes converting the held-out CIFs (default 1)")
    r.set_defaults(func=_exclude)


def register(sub) -> None:
    """Add ``crystext corpus`` and its actions to the CLI's subparsers."""
    p = sub.add_parser(
        "corpus",
        help="build, inspect, pack, retokenize or clean a tokenized corpus of crystal text",
        description="Build a datasets corpus (train/validation/test) of crystal text from CIF folders, "
        "tables with a cif column, pymatgen JSON, the built-in 'aflow-prototypes' and Matbench "
        "(composition, space group) tables as header documents; print per-element token counts; pack "
        "corpora into one small file and back; move one to another tokenizer; remove the benchmark "
        "tasks' held-out structures from one.",
    )
    verbs = p.add_subparsers(dest="corpus_command", metavar="ACTION")
    for add in (_register_build, _register_stats, _register_pack, _register_unpack, _register_retokenize,
                _register_exclude):
        add(verbs)
    p.set_defaults(func=lambda args: p.print_help() or 0)
