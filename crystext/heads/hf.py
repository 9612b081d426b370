"""The multi-scale head as native Hugging Face objects: :class:`MultiScaleConfig` (a
``PretrainedConfig``) and :class:`MultiScaleModel` (a ``PreTrainedModel``).

``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` are transformers' own; loading goes
through these classes (``from crystext.heads import MultiScaleModel``), so no ``trust_remote_code``
is involved. ``model(features, graph_batch)`` returns the predictions (target units).
The scikit-learn-style estimator is :class:`crystext.heads.MultiScaleRegressor`.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["MultiScaleConfig", "MultiScaleModel"]


class MultiScaleConfig(PretrainedConfig):
    """Everything needed to rebuild the network: ``net`` (branches, dims, PCA widths, fusion,
    graph encoder, training settings), the best validation MAE, epochs and the featuriser
    settings (``featurizer``: :meth:`crystext.heads.BranchFeaturizer.config`)."""

    model_type = "crystext-multiscale"

    def __init__(self, net: dict | None = None, best_val_mae: float | None = None, n_epochs: int | None = None,
                 featurizer: dict | None = None, **kwargs: Any) -> None:
        self.net = dict(net or {})
        self.best_val_mae = None if best_val_mae is None else float(best_val_mae)
        self.n_epochs = None if n_epochs is None else int(n_epochs)
        self.featurizer = featurizer
        super().__init__(**kwargs)


class MultiScaleModel(PreTrainedModel):
    """The fused torch network (``self.net``) as a ``PreTrainedModel``."""

    config_class = MultiScaleConfig
    base_model_prefix = "multiscale"
    main_input_name = "features"

    def __init__(self, config: MultiScaleConfig, net: Any = None) -> None:
        super().__init__(config)
        from .net import _build_net

        self.net = net if net is not None else _build_net(config.net)
        self.post_init()

    def _init_weights(self, module: Any) -> None:  # the network initialises itself (torch defaults)
        return

    def forward(self, features: dict, graph_batch: Any = None):
        """Predictions (batch,) from branch feature tensors (and a graph batch for ``graph``)."""
        pred, _ = self.net(features, graph_batch)
        return pred


def _register() -> None:
    """Let ``AutoConfig`` / ``AutoModel`` resolve ``model_type="crystext-multiscale"`` once crystext's
    heads are imported (no remote code: the classes are crystext's own)."""
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(MultiScaleConfig.model_type, MultiScaleConfig)
        AutoModel.register(MultiScaleConfig, MultiScaleModel)
    except ValueError:  # already registered (module reloaded)
        pass


_register()
