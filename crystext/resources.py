"""The data crystext ships: presets, accelerate configs, built-in tokenizers, the card template.

In the repository they live in their own folders (``training/presets``, ``training/accelerate``,
``tokenizers``, ``model_cards``); ``setup.py`` maps them into the package as
``crystext/_data/<kind>/`` at build time, so a wheel (or an editable install) reads them through
``importlib.resources`` and never through paths relative to a checkout. A bare source tree on
``sys.path`` (never installed) falls back to the repository folders.
"""

from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path

from .errors import DataNotFoundError

#: kind -> the repository folder it comes from (mirrors setup.py's DATA_PACKAGES)
REPO_FOLDERS = {
    "presets": "training/presets",
    "accelerate": "training/accelerate",
    "tokenizers": "tokenizers",
    "model_cards": "model_cards",
}


def resource_dir(kind: str) -> Path:
    """The folder of shipped data ``kind`` (``presets``, ``accelerate``, ``tokenizers``,
    ``model_cards``): the package data of an installed crystext, else (a source tree that was
    never installed) the repository folder.

    Raises:
        DataNotFoundError: ``kind`` is unknown or its folder is missing.
    """
    if kind not in REPO_FOLDERS:
        raise DataNotFoundError(f"resource kind {kind!r}: expected one of {', '.join(REPO_FOLDERS)}")
    packaged = Path(str(files("crystext"))) / "_data" / kind  # wheel / regular install
    if packaged.is_dir():
        return packaged
    try:  # editable install: setuptools' finder maps crystext._data.<kind> to the repository folder
        spec = importlib.util.find_spec(f"crystext._data.{kind}")
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(location).is_dir():
            return Path(location)
    source = Path(__file__).resolve().parent.parent / REPO_FOLDERS[kind]  # bare source tree
    if source.is_dir():
        return source
    raise DataNotFoundError(f"crystext data {kind!r} not found: neither package data ({packaged}) nor a "
                            f"source checkout folder ({source}); reinstall crystext")
