"""crystext: crystal structures as language-model text.

Data flows one way: Structure -> text -> tokens -> corpus -> model -> embeddings -> fine-tuning ->
benchmarks/heads -> hub -> CLI; each module imports only from the floors below it (the floors and
the check: ``tests/test_layers.py``).
Public names are imported lazily so ``import crystext`` stays light: it imports neither torch
nor transformers. The pipeline tasks (``crystal-embedding`` and the others in
:mod:`crystext.pipeline`) are registered with transformers once both ``crystext`` and
``transformers.pipelines`` are imported, in either order; a process that never imports crystext
does not see them. :func:`crystext.pipeline.register_pipeline` registers them explicitly.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings
from typing import TYPE_CHECKING

from .version import __version__

# public name -> module that defines it
_EXPORTS = {
    # text form
    "structure_to_text": "text",
    "text_to_structure": "text",
    "check_text": "text",
    "parse_text": "text",
    "TextReport": "text",
    "to_structure": "inputs",
    "encode": "encoding",
    "encode_inputs": "encoding",
    "register_pipeline": "pipeline",
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
    "PretrainSettings": "pretrain_config",
    "pretrain": "training",
    "run_pretrain": "training",
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
    "BenchmarkSettings": "benchmark",
    "MultiScaleRegressor": "heads",
    # tasks: splits, targets, units and the carved validation split, for every layer above
    "discover_tasks": "tasks",
    "load_task": "tasks",
    # fine-tuning on a property
    "FinetuneSettings": "finetune_config",
    "run_finetune": "finetune",
    "finetune": "finetune",
    "predict": "finetune",
    "finetuned_features": "finetune",
    "element_counts": "embeddings",
    "resolve_precision": "precision",
    "resolve_model": "resolve",
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


_PIPELINES = "transformers.pipelines"


def _register_pipeline() -> None:
    """Register crystext's pipeline tasks; never breaks the user's import of transformers."""
    partial = sys.modules.get(f"{__name__}.pipeline")
    if partial is not None and not hasattr(partial, "register_pipeline"):
        return  # crystext.pipeline is being imported (it imported transformers): it registers at its end
    try:
        from .pipeline import register_pipeline

        register_pipeline()
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in ("torch", "transformers"):
            return  # not installed: nothing to register
        _warn_unregistered(exc)
    except Exception as exc:  # noqa: BLE001 - a registration failure must not break transformers
        _warn_unregistered(exc)


def _warn_unregistered(exc: BaseException) -> None:
    warnings.warn(f"crystext: could not register its pipeline tasks with transformers ({exc!r})",
                  RuntimeWarning, stacklevel=3)


class _RegisterAfterExec(importlib.abc.Loader):
    """Wraps the loader of ``transformers.pipelines``: runs it, then registers crystext's tasks."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        except BaseException:  # the import failed: try again at the next import
            if not any(isinstance(f, _PipelineImportHook) for f in sys.meta_path):
                sys.meta_path.insert(0, _PipelineImportHook())
            raise
        # leave no trace: the module's loader is the original one from here on
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        _register_pipeline()

    def __getattr__(self, name: str):  # get_resource_reader, is_package, get_code, ...
        return getattr(self._loader, name)


class _PipelineImportHook(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that fires once, when ``transformers.pipelines`` is imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _PIPELINES:
            return None
        _remove_hook()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PipelineImportHook)]


def _install_pipeline_hook() -> None:
    """Register now if transformers' pipelines are loaded, else when they are first imported."""
    if _PIPELINES in sys.modules:
        _register_pipeline()
    elif not any(isinstance(f, _PipelineImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _PipelineImportHook())


_install_pipeline_hook()

if TYPE_CHECKING:  # pragma: no cover
    from .text import check_text, structure_to_text, text_to_structure  # noqa: F401
