"""The ``crystal-embedding`` and ``crystal-property`` tasks for ``transformers.pipeline``.

>>> import crystext, transformers                      # importing crystext registers the tasks
>>> pipe = transformers.pipeline("crystal-embedding", model="models/crystext-base", device="cpu")
>>> pipe(structure)                                   # (d,) numpy vector
>>> pipe([structure, atoms, cif_text, "x.cif"], batch_size=16, layer=4, pooling="last")   # list of (d,)
>>> pipe(items, errors="skip")                        # bad items -> None (+ a warning naming the index)
>>> prop = transformers.pipeline("crystal-property", model="out/perov-heat")   # a fine-tuned folder
>>> prop(structure)                                   # {"value": -0.83, "target": "heat_all", "unit": "eV/cell"}

Inputs are anything :func:`crystext.inputs.to_structure` takes (pymatgen ``Structure``, ASE
``Atoms``, CIF text, bytes, a path). Each goes through the encode step of
:mod:`crystext.encoding` (canonical text, ``<bos> text <eos>`` ids) and is pooled exactly as
:func:`crystext.embeddings.structure_embeddings` does, so both give the same vectors. No remote
code: the run folder is a plain GPT-2 checkpoint, the tasks live in crystext.

Bad items: ``errors="raise"`` (default) raises the crystext error, naming the list index
(``input 3 (CIF text): unparsable CIF ...``); ``errors="skip"`` returns ``None`` in that item's
place and warns with the index and the reason, so one bad CIF does not lose the batch.

Weights stored in half precision (``models/crystext-compact`` is float16) are cast to float32 on
the CPU, as :func:`crystext.embeddings.load_run` loads them, so both give the same vectors.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .embeddings import DEFAULT_LAYER, check_layer, check_pooling, max_positions, pool_hidden_states, special_token_ids
from .encoding import DEFAULT_SYMPREC, TextForm, encode

TASK = "crystal-embedding"
PROPERTY_TASK = "crystal-property"
ERRORS = ("raise", "skip")


class _Indexed:
    """An input with its position in the caller's list (for error messages)."""

    __slots__ = ("index", "item")

    def __init__(self, index: int, item: Any) -> None:
        self.index, self.item = index, item


def _indexed(inputs: Any) -> Any:
    if isinstance(inputs, list):
        return [_Indexed(i, x) for i, x in enumerate(inputs)]
    if isinstance(inputs, tuple):  # a tuple is a list of inputs too (transformers treats it so)
        return [_Indexed(i, x) for i, x in enumerate(inputs)]
    import types

    if isinstance(inputs, types.GeneratorType):
        return (_Indexed(i, x) for i, x in enumerate(inputs))
    return inputs


def _error_tensor(message: str) -> torch.Tensor:
    data = message.encode("utf-8")[:2000] or b"?"
    return torch.tensor([list(data)], dtype=torch.uint8)


def _error_message(tensor: torch.Tensor | None) -> str | None:
    if tensor is None:
        return None
    data = bytes(int(b) for b in tensor.reshape(-1).tolist() if b)
    return data.decode("utf-8", errors="replace") or None


class _CrystalPipeline(Pipeline):
    """Shared parts: structure -> canonical text -> ``<bos> text <eos>`` ids; per-item errors."""

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    task_name = "crystal"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # a release stored in half precision (crystext-compact: float16) runs in float32 on the CPU,
        # like crystext.embeddings.load_run: same vectors, and CPU half matmuls are slow
        if self.device.type == "cpu" and self.model.dtype in (torch.float16, torch.bfloat16):
            self.model.float()
        self.model.eval()
        # right padding: positions then equal those of unbatched inputs
        if self.tokenizer is not None:
            self.tokenizer.padding_side = "right"

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any):
        return super().__call__(_indexed(inputs), *args, **kwargs)

    @staticmethod
    def _limits(preprocess: dict, max_atoms: int | None, time_limit: float | None) -> None:
        """``max_atoms`` / ``time_limit`` (0: no limit) of the text conversion, as the error hints advise."""
        if max_atoms is not None:
            preprocess["max_atoms"] = int(max_atoms)
        if time_limit is not None:
            preprocess["time_limit"] = float(time_limit)

    def _check_errors(self, errors: str | None, preprocess: dict) -> None:
        if errors is not None:
            if errors not in ERRORS:
                from .errors import ConfigError

                raise ConfigError(f"{self.task_name} pipeline: errors must be one of {ERRORS}, not {errors!r}")
            preprocess["errors"] = errors

    def preprocess(self, inputs: Any, symprec: float = DEFAULT_SYMPREC, errors: str = "raise",
                   max_atoms: int | None = None, time_limit: float | None = None) -> dict[str, torch.Tensor]:
        from .limits import DEFAULT_MAX_ATOMS, DEFAULT_TIME_LIMIT

        index = None
        if isinstance(inputs, _Indexed):
            index, inputs = inputs.index, inputs.item
        name = _describe(inputs) if index is None else f"input {index} ({_describe(inputs)})"
        try:
            ids = encode(inputs, self.tokenizer, max_positions(self.model), symprec=TextForm.of(self.model, symprec),
                         name=name, max_atoms=DEFAULT_MAX_ATOMS if max_atoms is None else max_atoms,
                         time_limit=DEFAULT_TIME_LIMIT if time_limit is None else time_limit)
        except Exception as exc:
            if errors != "skip":
                tag = f"input {index}"
                if index is None or tag in str(exc):
                    raise
                try:  # name the list index (a path-named error does not say it)
                    named = type(exc)(f"{tag}: {exc}")
                except Exception:  # noqa: BLE001 - an exception type with another signature
                    raise exc from None
                raise named from exc
            ids = [self.tokenizer.bos_token_id, self.tokenizer.eos_token_id]  # a placeholder row
            reason = f"{type(exc).__name__}: {exc}"
            name = name if index is None else f"input {index}"
            input_ids = torch.tensor([ids], dtype=torch.long)
            return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                    "error": _error_tensor(reason if name in reason else f"{name}: {reason}")}
        input_ids = torch.tensor([ids], dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if errors == "skip":  # every item of a batch needs the same keys
            out["error"] = torch.zeros((1, 1), dtype=torch.uint8)
        return out

    def _skipped(self, model_outputs: dict) -> bool:
        message = _error_message(model_outputs.get("error"))
        if message is None:
            return False
        warnings.warn(f"{self.task_name} pipeline: skipped {message}", stacklevel=2)
        return True


class CrystalEmbeddingPipeline(_CrystalPipeline):
    """Structure(s) -> numpy vector(s): one (d,) float32 vector per input, a list for a list input.

    Call parameters (also accepted by ``transformers.pipeline(...)``): ``layer`` (0 = embedding
    output .. n_layer, -1 = last), ``pooling`` (``"mean"`` over text tokens or ``"last"``),
    ``symprec`` (symmetry tolerance of the canonical text), ``errors`` (``"raise"`` or
    ``"skip"``: ``None`` for a bad item, with a warning naming its index), ``max_atoms`` and
    ``time_limit`` (the text conversion's limits, 0: none) and the usual ``batch_size``.
    """

    task_name = TASK

    def _sanitize_parameters(self, layer: int | None = None, pooling: str | None = None,
                             symprec: float | None = None, errors: str | None = None, max_atoms: int | None = None,
                             time_limit: float | None = None, **kwargs: Any):
        if kwargs:
            raise TypeError(f"{TASK} pipeline: unexpected parameters {sorted(kwargs)} "
                            "(accepted: layer, pooling, symprec, errors, max_atoms, time_limit, batch_size)")
        preprocess: dict[str, Any] = {}
        self._limits(preprocess, max_atoms, time_limit)
        forward: dict[str, Any] = {}
        if symprec is not None:
            preprocess["symprec"] = float(symprec)
        self._check_errors(errors, preprocess)
        if layer is not None:
            n_layer = getattr(self.model.config, "n_layer", None) or self.model.config.num_hidden_layers
            forward["layer"] = check_layer(layer, int(n_layer))
        if pooling is not None:
            forward["pooling"] = check_pooling(pooling)
        return preprocess, forward, {}

    def _forward(self, model_inputs: dict[str, torch.Tensor], layer: int = DEFAULT_LAYER,
                 pooling: str = "mean") -> dict[str, torch.Tensor]:
        vec = pool_hidden_states(self.model, model_inputs["input_ids"], model_inputs["attention_mask"],
                                 special_token_ids(self.tokenizer), layer=layer, pooling=pooling)
        out = {"embedding": vec}
        if "error" in model_inputs:
            out["error"] = model_inputs["error"]
        return out

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> np.ndarray | None:
        if self._skipped(model_outputs):
            return None
        return model_outputs["embedding"][0].float().cpu().numpy().astype(np.float32)


class CrystalPropertyPipeline(_CrystalPipeline):
    """Structure(s) -> predicted property with a fine-tuned folder (:mod:`crystext.finetune`):
    ``{"value": float, "target": name, "unit": unit}`` per input (a list for a list input).

    The model is the folder's ``GPT2ForSequenceClassification``; its standardised output is mapped
    back with ``config.crystext_target`` (``mean``/``std``). Parameters: ``symprec``, ``errors``
    (``"skip"``: ``None`` for a bad item, with a warning naming its index), ``batch_size``.
    """

    task_name = PROPERTY_TASK

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if int(getattr(self.model.config, "num_labels", 0)) != 1:
            from .errors import ConfigError

            raise ConfigError(f"{PROPERTY_TASK} pipeline: the model has {self.model.config.num_labels} outputs; "
                              "use a folder made by `crystext finetune` (one regression output)")
        self.target = dict(getattr(self.model.config, "crystext_target", None) or {})

    def _sanitize_parameters(self, symprec: float | None = None, errors: str | None = None,
                             max_atoms: int | None = None, time_limit: float | None = None, **kwargs: Any):
        if kwargs:
            raise TypeError(f"{PROPERTY_TASK} pipeline: unexpected parameters {sorted(kwargs)} "
                            "(accepted: symprec, errors, max_atoms, time_limit, batch_size)")
        preprocess: dict[str, Any] = {}
        self._limits(preprocess, max_atoms, time_limit)
        if symprec is not None:
            preprocess["symprec"] = float(symprec)
        self._check_errors(errors, preprocess)
        return preprocess, {}, {}

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # right padding + pad_token_id in the config: the model reads the last non-pad token (<eos>)
        logits = self.model(input_ids=model_inputs["input_ids"],
                            attention_mask=model_inputs["attention_mask"]).logits
        out = {"value": logits.float().reshape(-1, 1)}
        if "error" in model_inputs:
            out["error"] = model_inputs["error"]
        return out

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> dict | None:
        if self._skipped(model_outputs):
            return None
        z = float(model_outputs["value"].reshape(-1)[0])
        value = z * float(self.target.get("std", 1.0)) + float(self.target.get("mean", 0.0))
        return {"value": value, "target": self.target.get("name"), "unit": self.target.get("unit")}


def _describe(obj: Any) -> str:
    """A short name for error messages: the path, or the kind of object."""
    import os

    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, str):
        return "CIF text" if "\n" in obj else obj
    return type(obj).__name__


def _checked(auto_class: type) -> type:
    """``auto_class`` whose ``from_pretrained`` first checks a local folder's files
    (:func:`crystext.atomic.check_model_folder`): a truncated ``model.safetensors`` is named in one
    line instead of transformers' "could not load with any of the following classes" traceback."""

    def from_pretrained(cls, name_or_path, *args, **kwargs):
        import os

        if isinstance(name_or_path, (str, os.PathLike)) and os.path.isdir(name_or_path):
            from .atomic import check_model_folder

            check_model_folder(name_or_path)
        return auto_class.from_pretrained.__func__(cls, name_or_path, *args, **kwargs)

    return type(auto_class.__name__, (auto_class,), {"from_pretrained": classmethod(from_pretrained),
                                                     "__module__": __name__})


_CheckedCausalLM = _checked(AutoModelForCausalLM)
_CheckedSequenceClassification = _checked(AutoModelForSequenceClassification)


def register_pipeline() -> None:
    """Register the ``crystal-embedding`` and ``crystal-property`` tasks (idempotent; ``import
    crystext`` calls it)."""
    tasks = PIPELINE_REGISTRY.supported_tasks
    if tasks.get(TASK, {}).get("impl") is not CrystalEmbeddingPipeline:
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=CrystalEmbeddingPipeline,
                                            pt_model=_CheckedCausalLM)
    if tasks.get(PROPERTY_TASK, {}).get("impl") is not CrystalPropertyPipeline:
        PIPELINE_REGISTRY.register_pipeline(PROPERTY_TASK, pipeline_class=CrystalPropertyPipeline,
                                            pt_model=_CheckedSequenceClassification)


# Importing this module registers the tasks (``import crystext`` arranges for that to happen as soon
# as transformers' pipelines are imported).
register_pipeline()
