"""Library noise a crystext command does not need to show: the weight-loading bar of every
``from_pretrained``, accelerate's "Removed shared tensor ... while saving" for the tied input and
output embeddings of every checkpoint, and transformers' ``attention_mask`` advice for prompts of
one length. The command line (:func:`crystext.cli.main`) turns it off for its own process; the
Python API leaves the user's logging and progress bars as they are.

Nothing here imports torch, transformers or accelerate: the filters attach to the named loggers,
which those libraries fetch by the same names when they are imported.
"""

from __future__ import annotations

import logging
import os
import sys

#: logger name -> message starts that are dropped
NOISE: dict[str, tuple[str, ...]] = {
    "accelerate.utils.other": ("Removed shared tensor",),
    "transformers.generation.utils": (
        "The attention mask and the pad token id were not set",
        "The attention mask is not set with a batched input",
    ),
}
PROGRESS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


class DropMessages(logging.Filter):
    """A logging filter that drops the records whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a known noisy message, True for everything else."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        if message.startswith("[RANK "):  # accelerate's process adapter prefixes "[RANK n] "
            message = message.split("] ", 1)[-1]
        return not message.startswith(self.starts)


def silence_library_noise() -> None:
    """Drop the :data:`NOISE` messages and the Hugging Face weight-loading bars in this process
    (idempotent). An explicit ``HF_HUB_DISABLE_PROGRESS_BARS=0`` keeps the bars."""
    for name, starts in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(starts))
    if os.environ.setdefault(PROGRESS_ENV, "1") == "1" and "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging  # already imported: costs nothing

        hf_logging.disable_progress_bar()


__all__ = ["NOISE", "DropMessages", "silence_library_noise"]
