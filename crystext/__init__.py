"""crystext: crystal structures as language-model text.

Data flows one way: Structure -> text -> tokens -> corpus -> model -> embeddings -> benchmarks/heads.
Public names are imported lazily so ``import crystext`` stays light; importing the package
registers the ``crystal-embedding`` pipeline task with transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # text form
    "structure_to_text": "text",
    "text_to_structure": "text",
    "check_text": "text",
    "parse_text": "text",
    "TextReport": "text",
    "to_structure": "inputs",
    "aflow_prototypes": "builtin",
    # tokens and corpora
    "build_tokenizer": "tokenization",
    "load_tokenizer": "tokenization",
    "element_token_ids": "tokenization",
    "build_corpus": "corpus",
    "load_corpus": "corpus",
    # model and training
    "build_model": "modeling",
    "load_preset": "modeling",
    "pretrain": "training",
    "generate": "generation",
    "validity_report": "generation",
    # embeddings
    "load_run": "embeddings",
    "element_embeddings": "embeddings",
    "structure_embeddings": "embeddings",
    "composition_embeddings": "composition",
    "load_element_table": "composition",
    # benchmarks, heads, hub
    "run_benchmark": "benchmark",
    "MultiScaleRegressor": "heads",
    "publish": "hub",
    "export_for_hub": "hub",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crystext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def _register_pipeline() -> None:
    try:
        from .pipeline import register_pipeline
    except ImportError:  # transformers missing or pipeline module absent: nothing to register
        return
    register_pipeline()


_register_pipeline()

if TYPE_CHECKING:  # pragma: no cover
    from .text import check_text, structure_to_text, text_to_structure  # noqa: F401
