"""``crystext tokenizer``: build the crystext tokenizers, or tokenize crystal text files."""

from __future__ import annotations

import json
import sys


def _build(args) -> int:
    from ..tokenization import build_tokenizer

    out = args.out or f"tokenizers/crystext-{args.kind}"  # the repository's folder when run from its root
    tok = build_tokenizer(args.kind, out=out)
    print(f"crystext-{args.kind}: {len(tok)} tokens, model_max_length {tok.model_max_length} -> {out}")
    return 0


def _encode(args) -> int:
    from ..inputs import read_text_file
    from ..tokenization import encode_checked, load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    for path in args.inputs:
        text = sys.stdin.read() if path == "-" else read_text_file(path)
        ids = encode_checked(tok, text, add_special_tokens=not args.no_special)
        record = {"file": str(path), "n_tokens": len(ids)}
        record["tokens" if args.tokens else "input_ids"] = tok.convert_ids_to_tokens(ids) if args.tokens else ids
        print(json.dumps(record))
    return 0


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="build the crystext tokenizers or tokenize crystal text")
    verbs = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    b = verbs.add_parser("build", help="build a tokenizer folder (tokenizer.json + config) loadable by AutoTokenizer")
    b.add_argument("--kind", choices=["cif", "compact", "pair"], default="cif",
                   help="cif: CrystaLLM-like, one token per digit; compact: 4-decimal chunks, fused keywords; "
                   "pair: one token per element everywhere, two-digit decimal pieces")
    b.add_argument("--out", default=None, help="output folder (default: tokenizers/crystext-KIND under the current folder, i.e. the "
                   "repository's shipped copy when run from its root)")
    b.set_defaults(func=_build)
    e = verbs.add_parser("encode", help="token ids (or tokens) of crystal text files as JSON lines; "
                                        "fails on <unk>, unknown keywords or space groups")
    e.add_argument("inputs", nargs="+", help="crystal text files ('-' for stdin)")
    e.add_argument("--tokenizer", default="crystext-cif", help="name, folder or Hub id (default crystext-cif)")
    e.add_argument("--tokens", action="store_true", help="print token strings instead of ids")
    e.add_argument("--no-special", action="store_true", help="leave out <bos>/<eos>")
    e.set_defaults(func=_encode)
