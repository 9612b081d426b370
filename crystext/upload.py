"""Upload a saved thing to the Hugging Face Hub: save it into a temporary folder, create the
repository if needed, upload the folder. One copy for every estimator that has a ``push_to_hub``
(the heads), below all of them."""

from __future__ import annotations

import tempfile
from typing import Any, Callable


def push_saved(save: Callable[[str], Any], repo_id: str, private: bool = False, token: str | None = None,
               commit_message: str = "Upload crystext model") -> str:
    """Call ``save(folder)`` on a temporary folder and upload that folder to the Hub repository
    ``repo_id`` (created if needed; ``token``: ``None`` reads ``HF_TOKEN`` or the stored login).
    Returns ``repo_id``."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save(tmp)
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=tmp, repo_id=repo_id, commit_message=commit_message)
    return repo_id


__all__ = ["push_saved"]
