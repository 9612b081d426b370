"""Where a model comes from: one resolver for the command line, the Python API and the pipelines.

A name is looked up, in this order, as

1. a **release**: the name of a folder under the repository's ``models/`` (``crystext-mp``, or
   ``models/crystext-mp`` as the README writes it), wherever the user stands;
2. a **folder**, relative to the current directory (or absolute, or under ``~``);
3. a **Hugging Face Hub id** (``owner/name``), left to ``from_pretrained`` to fetch or read from
   the cache (``HF_HUB_OFFLINE=1`` keeps it offline).

A name that is none of these raises :class:`~crystext.errors.DataNotFoundError` listing what was
tried, at once, instead of a network error a minute later. ``transformers.pipeline`` reads its
``model`` argument itself, so a release goes to a pipeline through this resolver:
``pipeline("crystal-embedding", model=crystext.resolve_model("crystext-mp"))``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import DataNotFoundError
from .settings import REPO_ROOT

#: The releases' folder: ``models/`` of the repository crystext was installed from.
RELEASES_DIR = REPO_ROOT / "models"

# a Hub repository id: ``name`` or ``owner/name`` (letters, digits, ``-``, ``_``, ``.``)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def releases() -> list[str]:
    """The names of the releases this installation can see (folders under :data:`RELEASES_DIR`)."""
    if not RELEASES_DIR.is_dir():
        return []
    return sorted(p.name for p in RELEASES_DIR.iterdir() if p.is_dir() and not p.name.startswith("."))


def _release_name(text: str) -> str | None:
    """The release a name would be: ``NAME`` or ``models/NAME`` (None for anything with more parts)."""
    name = text.replace("\\", "/")
    name = name[len("models/"):] if name.startswith("models/") else name
    return name if name and "/" not in name and name not in (".", "..") else None


def resolve_model(name_or_path: str | os.PathLike, what: str = "run") -> str:
    """The folder or Hub id to load ``name_or_path`` from (see the module docstring for the order).

    Args:
        name_or_path: a release name, a folder, or a Hub repository id. A ``Path`` is always a folder.
        what: how error messages call the thing (``"run"``, ``"model"``...).

    Raises:
        DataNotFoundError: not a release, no such folder, and not usable as a Hub id; the message
            lists each of the three tries.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    tried: list[str] = []
    is_path = isinstance(name_or_path, os.PathLike)
    release = None if is_path else _release_name(text)
    if release is not None:
        folder = RELEASES_DIR / release
        if folder.is_dir():
            return str(folder)
        tried.append(f"not a release ({', '.join(releases()) or 'none'} under {RELEASES_DIR})")
    if path.is_dir():
        return str(path)
    if path.exists():
        raise DataNotFoundError(f"{what} {text}: {path.absolute()} is a file, not a folder "
                                "(give the save_pretrained folder)")
    tried.append(f"no such folder ({path.absolute()})")
    local = (is_path or path.is_absolute() or text.startswith((".", "~"))
             or ("/" in text.replace("\\", "/") and path.parent.is_dir()))
    if local or not _HUB_ID.fullmatch(text):
        tried.append("not a Hub id" if not local else "a local path, so not a Hub id")
        raise DataNotFoundError(f"{what} {text}: " + "; ".join(tried) + " (expected a save_pretrained run folder)")
    return text


__all__ = ["RELEASES_DIR", "releases", "resolve_model"]
