"""The ``crystal-embedding`` task for ``transformers.pipeline``.

>>> import crystext, transformers                      # importing crystext registers the task
>>> pipe = transformers.pipeline("crystal-embedding", model="models/crystext-base", device="cpu")
>>> pipe(structure)                                   # (d,) numpy vector
>>> pipe([structure, atoms, cif_text, "x.cif"], batch_size=16, layer=4, pooling="last")   # list of (d,)

Inputs are anything :func:`crystext.inputs.to_structure` takes (pymatgen ``Structure``, ASE
``Atoms``, CIF text, bytes, a path). Each is written as canonical text, tokenized as in training and
pooled exactly as :func:`crystext.embeddings.structure_embeddings` does, so both give the same
vectors. No remote code: the run folder is a plain GPT-2 checkpoint, the task lives in crystext.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .embeddings import (
    DEFAULT_LAYER,
    check_layer,
    check_pooling,
    encode_text,
    max_positions,
    pool_hidden_states,
    special_token_ids,
)

TASK = "crystal-embedding"


class CrystalEmbeddingPipeline(Pipeline):
    """Structure(s) -> numpy vector(s): one (d,) float32 vector per input, a list for a list input.

    Call parameters (also accepted by ``transformers.pipeline(...)``): ``layer`` (0 = embedding
    output .. n_layer, -1 = last), ``pooling`` (``"mean"`` over text tokens or ``"last"``),
    ``symprec`` (symmetry tolerance of the canonical text), and the usual ``batch_size``.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model.eval()
        # right padding: pad_collate_fn pads on the tokenizer's side; the pooling copes with either
        # side, but right padding keeps positions identical to unbatched inputs
        if self.tokenizer is not None:
            self.tokenizer.padding_side = "right"

    def _sanitize_parameters(self, layer: int | None = None, pooling: str | None = None,
                             symprec: float | None = None, **kwargs: Any):
        if kwargs:
            raise TypeError(f"{TASK} pipeline: unexpected parameters {sorted(kwargs)} "
                            "(accepted: layer, pooling, symprec, batch_size)")
        preprocess: dict[str, Any] = {}
        forward: dict[str, Any] = {}
        if symprec is not None:
            preprocess["symprec"] = float(symprec)
        if layer is not None:
            n_layer = getattr(self.model.config, "n_layer", None) or self.model.config.num_hidden_layers
            forward["layer"] = check_layer(layer, int(n_layer))
        if pooling is not None:
            forward["pooling"] = check_pooling(pooling)
        return preprocess, forward, {}

    def preprocess(self, inputs: Any, symprec: float = 0.1) -> dict[str, torch.Tensor]:
        from .inputs import to_structure
        from .text import structure_to_text

        name = _describe(inputs)
        text = structure_to_text(to_structure(inputs, name=name), symprec=symprec)
        ids = encode_text(text, self.tokenizer, max_positions(self.model), name=name)
        input_ids = torch.tensor([ids], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def _forward(self, model_inputs: dict[str, torch.Tensor], layer: int = DEFAULT_LAYER,
                 pooling: str = "mean") -> dict[str, torch.Tensor]:
        vec = pool_hidden_states(self.model, model_inputs["input_ids"], model_inputs["attention_mask"],
                                 special_token_ids(self.tokenizer), layer=layer, pooling=pooling)
        return {"embedding": vec}

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> np.ndarray:
        return model_outputs["embedding"][0].float().cpu().numpy().astype(np.float32)


def _describe(obj: Any) -> str:
    """A short name for error messages: the path, or the kind of object."""
    import os

    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, str):
        return "CIF text" if "\n" in obj else obj
    return type(obj).__name__


def register_pipeline() -> None:
    """Register the ``crystal-embedding`` task (idempotent; ``import crystext`` calls it)."""
    if PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl") is CrystalEmbeddingPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=CrystalEmbeddingPipeline,
        pt_model=AutoModelForCausalLM,
    )


# Importing this module registers the task (``import crystext`` arranges for that to happen as soon
# as transformers' pipelines are imported).
register_pipeline()
