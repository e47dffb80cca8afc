"""``GuidedBackprop`` and ``Deconvolution`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .. import _validate as v
from ..attr.guided import deconvolution, guided_backprop
from ..attr.relu_rules import require_module
from ._base import GradientAttribution


class _ModifiedReluGradient(GradientAttribution):
    """Captum's ``ModifiedReluGradientAttribution``: the model must be an
    ``nn.Module`` (its ``nn.ReLU`` modules get the rule); subclasses name the
    fastattr function that computes their attributions."""

    _function: Callable[..., v.TensorOrTuple]

    def __init__(self, model: nn.Module) -> None:
        require_module(model, self._function.__name__)
        super().__init__(model)
        self.model = model

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> v.TensorOrTuple:
        """Attributions ``[B, *F]`` (or a tuple), as the fastattr function of the class."""
        return self._function(self.model, inputs, target=target,
                              additional_forward_args=additional_forward_args)


class GuidedBackprop(_ModifiedReluGradient):
    """Captum's ``GuidedBackprop(model)``: :func:`fastattr.attr.guided.guided_backprop`."""

    _function = staticmethod(guided_backprop)


class Deconvolution(_ModifiedReluGradient):
    """Captum's ``Deconvolution(model)``: :func:`fastattr.attr.guided.deconvolution`."""

    _function = staticmethod(deconvolution)
