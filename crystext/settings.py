"""Where crystext finds things on disk: the shared data (``CRYSTEXT_DATA``) and its cache
(``CRYSTEXT_CACHE``)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataNotFoundError

DATA_ENV = "CRYSTEXT_DATA"
CACHE_ENV = "CRYSTEXT_CACHE"
#: The repository root (the folder holding ``crystext/``).
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(required: bool = False) -> Path:
    """Return the shared data folder: ``$CRYSTEXT_DATA`` or ``../shared/data`` beside the repo.

    With ``required=True`` a missing folder raises :class:`DataNotFoundError`.
    """
    env = os.environ.get(DATA_ENV)
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if required and not path.is_dir():
        raise DataNotFoundError(
            f"shared data folder {path} not found; set {DATA_ENV} to the folder holding "
            "perov_5/, carbon_24/, composition/ and matbench/"
        )
    return path


def cache_dir() -> Path:
    """Where canonical texts are cached: ``$CRYSTEXT_CACHE`` or ``~/.cache/crystext``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "crystext")
