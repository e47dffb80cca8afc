"""``LayerActivation``, ``LayerGradientXActivation``, ``InternalInfluence``,
``LayerConductance`` and ``LayerGradientShap`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from torch import Tensor

from .. import _validate as v
from ..attr._layer import LayerType
from ..attr.layer_gradient_shap import layer_gradient_shap, layer_gradient_shap_at
from ..attr.smoothgrad import check_seed
from ..attr.layer_gradients import (
    LayerResult, internal_influence, layer_activation, layer_conductance, layer_gradient_x_activation,
)
from ._base import GradientAttribution, check_grad_kwargs
from ._global_draws import explain_on_captum_draws
from .layer import LayerAttribution


class LayerActivation(LayerAttribution):
    """Captum's ``LayerActivation(forward_func, layer, device_ids=None)``;
    ``layer`` may be a list of layers."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerType,
                 device_ids: Union[None, List[int]] = None) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = True  # Captum's answer: an activation is "global"

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> LayerResult:
        """The layer's output ``[B, *L]`` (or inputs), as :func:`fastattr.attr.layer_gradients.layer_activation`."""
        return layer_activation(self.forward_func, inputs, self.layer, additional_forward_args,
                                attribute_to_layer_input)


class LayerGradientXActivation(LayerAttribution, GradientAttribution):
    """Captum's ``LayerGradientXActivation(forward_func, layer, device_ids=None,
    multiply_by_inputs=True, memory_efficient=False)``. ``memory_efficient``
    (Captum: move activations to the CPU) is accepted and changes nothing:
    fastattr's memory is bounded by its chunks either way."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerType,
                 device_ids: Union[None, List[int]] = None, multiply_by_inputs: bool = True,
                 memory_efficient: bool = False) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs
        self._memory_efficient = memory_efficient

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> LayerResult:
        """As :func:`fastattr.attr.layer_gradients.layer_gradient_x_activation`."""
        check_grad_kwargs(grad_kwargs)
        return layer_gradient_x_activation(
            self.forward_func, inputs, self.layer, target, additional_forward_args,
            attribute_to_layer_input, self._multiply_by_inputs)


class InternalInfluence(LayerAttribution, GradientAttribution):
    """Captum's ``InternalInfluence(forward_func, layer, device_ids=None)``."""

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        baselines: v.BaselineType = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: Optional[int] = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> LayerResult:
        """As :func:`fastattr.attr.layer_gradients.internal_influence`."""
        check_grad_kwargs(grad_kwargs)
        return internal_influence(
            self.forward_func, inputs, self.layer, baselines, target, additional_forward_args, n_steps,
            method, internal_batch_size, attribute_to_layer_input)


class LayerConductance(LayerAttribution, GradientAttribution):
    """Captum's ``LayerConductance(forward_func, layer, device_ids=None)``,
    chunked under fastattr's memory budget (Captum evaluates every path point
    of every example at once unless ``internal_batch_size`` is set)."""

    has_delta = True

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerType,
                 device_ids: Union[None, List[int]] = None) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = True

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        baselines: v.BaselineType = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
        """As :func:`fastattr.attr.layer_gradients.layer_conductance`."""
        check_grad_kwargs(grad_kwargs)
        return layer_conductance(
            self.forward_func, inputs, self.layer, baselines, target, additional_forward_args, n_steps,
            method, internal_batch_size, return_convergence_delta, attribute_to_layer_input)


class LayerGradientShap(LayerAttribution, GradientAttribution):
    """Captum's ``LayerGradientShap(forward_func, layer, device_ids=None,
    multiply_by_inputs=True)``, and ``seed`` as :class:`~fastattr.captum.GradientShap`'s:
    None (default) for Captum's own draws from the global RNGs, an int for
    keyed draws (those of ``GradientShap`` with the same seed)."""

    has_delta = True

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerType,
                 device_ids: Union[None, List[int]] = None, multiply_by_inputs: bool = True,
                 seed: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs
        if seed is not None:
            check_seed(seed)
        self.seed = seed

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        baselines: Any,
        n_samples: int = 5,
        stdevs: Union[float, Tuple[float, ...]] = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
    ) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
        """As :func:`fastattr.attr.layer_gradient_shap.layer_gradient_shap`; deltas ``[B * n_samples]``."""
        if self.seed is not None:
            return layer_gradient_shap(
                self.forward_func, inputs, self.layer, baselines, n_samples, stdevs, target,
                additional_forward_args, return_convergence_delta, attribute_to_layer_input,
                self._multiply_by_inputs, self.seed)
        return explain_on_captum_draws(
            lambda rows, refs, alphas, t, args: layer_gradient_shap_at(
                self.forward_func, rows, refs, alphas, self.layer, t, args, return_convergence_delta,
                attribute_to_layer_input, self._multiply_by_inputs),
            inputs, baselines, n_samples, stdevs, target, additional_forward_args, return_convergence_delta)
