"""scikit-learn's parameter protocol for the featurisers, in one place.

``get_params`` reads the constructor's arguments back from same-named attributes (so
``sklearn.base.clone`` and grid searches work); ``set_params`` refuses unknown names with a
:class:`~crystext.errors.ConfigError` naming the class.
"""

from __future__ import annotations

import inspect

from ..errors import ConfigError


class ParamsMixin:
    """``get_params`` / ``set_params`` from the signature of ``__init__``."""

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in inspect.signature(type(self).__init__).parameters if k != "self"}

    def set_params(self, **params):
        known = self.get_params()
        for k, v in params.items():
            if k not in known:
                raise ConfigError(f"{type(self).__name__} has no parameter {k!r}")
            setattr(self, k, v)
        return self
