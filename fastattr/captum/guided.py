"""``GuidedBackprop`` and ``Deconvolution`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any

from torch import nn

from .. import _validate as v
from ..attr.guided import deconvolution, guided_backprop
from ..attr.relu_rules import require_module
from ._base import Attribution, captum_target


class _ModifiedReluGradient(Attribution):
    """Captum's ``ModifiedReluGradientAttribution``: the model must be an
    ``nn.Module`` (its ``nn.ReLU`` modules get the rule)."""

    _method = ""

    def __init__(self, model: nn.Module) -> None:
        require_module(model, self._method)
        super().__init__(model)
        self.model = model


class GuidedBackprop(_ModifiedReluGradient):
    """Captum's ``GuidedBackprop(model)``."""

    _method = "guided_backprop"

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> v.TensorOrTuple:
        """Attributions ``[B, *F]`` (or a tuple), as :func:`fastattr.attr.guided.guided_backprop`."""
        return guided_backprop(self.model, inputs, target=captum_target(target),
                               additional_forward_args=additional_forward_args)


class Deconvolution(_ModifiedReluGradient):
    """Captum's ``Deconvolution(model)``."""

    _method = "deconvolution"

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> v.TensorOrTuple:
        """Attributions ``[B, *F]`` (or a tuple), as :func:`fastattr.attr.guided.deconvolution`."""
        return deconvolution(self.model, inputs, target=captum_target(target),
                             additional_forward_args=additional_forward_args)
