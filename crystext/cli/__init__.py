"""The ``crystext`` command. Each module in this package adds one verb.

A verb module defines ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed ``argparse.Namespace``. The CLI holds
no logic of its own: every verb calls a function of the public API.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystext",
        description="Crystal structures as language-model text: corpora, tokenizers, "
        "pretraining, embeddings, benchmarks and Hub release.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``crystext`` command; returns the exit status.

    Errors crystext raises on purpose (and missing files, folders, permissions) print one line,
    ``crystext VERB: error: ...``, and give status 2; Ctrl-C gives status 130 without a
    traceback; a closed output pipe (``crystext text convert x.cif | head``) ends quietly.
    Verbs run inside :func:`crystext.inputs.cli_mode`, so messages name CLI flags.
    """
    from ..errors import CrystextError
    from ..inputs import cli_mode
    from ..quiet import silence_library_noise

    silence_library_noise()  # no weight-loading bars, no advice meant for library authors
    command = "crystext"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        command = f"crystext {args.command}"
        with cli_mode():
            result = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except (CrystextError, OSError) as exc:
        print(f"{command}: error: {_message(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)


def _message(exc: BaseException) -> str:
    """The error's message; OSErrors raised by Python itself read '[Errno 2] ...': keep their words."""
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror.lower()}"
    return str(exc) or type(exc).__name__


def _silence_stdout() -> None:
    # the reader went away: point stdout at devnull so the interpreter's final flush stays quiet
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
