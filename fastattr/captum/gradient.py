"""``Saliency`` and ``InputXGradient`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from .. import _validate as v
from ..attr.input_x_gradient import input_x_gradient
from ..attr.saliency import saliency
from ._base import GradientAttribution


class Saliency(GradientAttribution):
    """Captum's ``Saliency(forward_func)``: the gradient (``abs`` by default)."""

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        abs: bool = True,
        additional_forward_args: Any = None,
    ) -> v.TensorOrTuple:
        """Attributions ``[B, *F]`` (or a tuple), as :func:`fastattr.saliency`."""
        return saliency(self.forward_func, inputs, target=target, abs=abs,
                        additional_forward_args=additional_forward_args, model_form="eager")


class InputXGradient(GradientAttribution):
    """Captum's ``InputXGradient(forward_func)``: the gradient times the input."""

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        super().__init__(forward_func, multiply_by_inputs=True)

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> v.TensorOrTuple:
        """Attributions ``[B, *F]`` (or a tuple), as :func:`fastattr.input_x_gradient`."""
        return input_x_gradient(self.forward_func, inputs, target=target,
                                additional_forward_args=additional_forward_args, model_form="eager")
