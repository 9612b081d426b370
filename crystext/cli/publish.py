"""``crystext publish RUN --repo-id OWNER/NAME [--export DIR]``: release a run on the Hub."""

from __future__ import annotations


def _run(args) -> int:
    from ..hub import publish
    from ..resolve import resolve_model

    result = publish(
        resolve_model(args.run),
        args.repo_id,
        export_dir=args.export,
        benchmark=args.benchmark,
        private=args.private,
        revision=args.revision,
        commit_message=args.message,
        export_only=args.export is not None and not args.upload,
    )
    exported_only = args.export is not None and not args.upload
    checked = ("loads offline in a fresh process (model, tokenizer, pipeline, model card; "
               "safetensors only)")
    if exported_only:
        print(f"exported to {result}; the folder {checked}")
    else:
        print(f"verified that the folder {checked}, then uploaded: {result}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "publish",
        help="export a run as a verified Hub folder and upload it",
        description="Assemble a Hub-ready folder (weights as safetensors, tokenizer, model card, "
        "element vectors, benchmark results), verify it loads offline, then upload it. With "
        "--export DIR it stops after the verified folder unless --upload is also given. The token "
        "comes from `huggingface-cli login` or HF_TOKEN.",
    )
    p.add_argument("run", help="run folder (a save_pretrained folder) or release name under models/")
    p.add_argument("--repo-id", required=True, help="Hub repository, OWNER/NAME")
    p.add_argument("--export", metavar="DIR", help="write the verified folder here and stop")
    p.add_argument("--upload", action="store_true", help="with --export: upload after exporting")
    p.add_argument("--benchmark", metavar="DIR", nargs="+",
                   help="benchmark output folder(s) (results.csv) for the card; a later folder's tasks replace "
                   "an earlier one's rows of the same tasks (e.g. a rerun of the probes beside a full run)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to upload to (created if absent)")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=_run)
