"""``LayerGradCam``, ``GuidedGradCam`` and ``LayerIntegratedGradients`` as Captum 0.9's."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _validate as v
from ..attr._layer import LayerType
from ..attr.grad_cam import INTERPOLATE_MODES, grad_cam, guided_grad_cam
from ..attr.layer_integrated_gradients import LayerAttributions, layer_integrated_gradients
from ._base import Attribution, GradientAttribution, check_grad_kwargs, reject

_NO_DATA_PARALLEL = "fastattr runs the model on one device; pass the module itself, not device ids"


class LayerAttribution(Attribution):
    """Captum's ``LayerAttribution``: an attribution of a layer of ``forward_func``."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerType,
                 device_ids: Union[None, List[int]] = None) -> None:
        super().__init__(forward_func)
        reject("device_ids", device_ids, why=_NO_DATA_PARALLEL)
        self.layer = layer
        self.device_ids = device_ids

    @staticmethod
    def interpolate(layer_attribution: Tensor, interpolate_dims: Union[int, Tuple[int, ...]],
                    interpolate_mode: str = "nearest") -> Tensor:
        """``[B, C, *S]`` resized to ``[B, C, *interpolate_dims]`` (``F.interpolate``), as Captum's."""
        return F.interpolate(layer_attribution, interpolate_dims, mode=interpolate_mode)


class LayerGradCam(LayerAttribution, GradientAttribution):
    """Captum's ``LayerGradCam(forward_func, layer, device_ids=None)``."""

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> v.TensorOrTuple:
        """Grad-CAM map ``[B, 1, *S]`` of the layer (a tuple for a layer with
        several tensors), as :func:`fastattr.attr.grad_cam.grad_cam`."""
        check_grad_kwargs(grad_kwargs)
        return grad_cam(
            self.forward_func, inputs, self.layer, target=target,
            additional_forward_args=additional_forward_args,
            attribute_to_layer_input=attribute_to_layer_input,
            relu_attributions=relu_attributions, attr_dim_summation=attr_dim_summation,
        )


class GuidedGradCam(GradientAttribution):
    """Captum's ``GuidedGradCam(model, layer, device_ids=None)``."""

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Union[None, List[int]] = None) -> None:
        super().__init__(model)
        reject("device_ids", device_ids, why=_NO_DATA_PARALLEL)
        self.layer = layer
        self.device_ids = device_ids

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
    ) -> v.TensorOrTuple:
        """Attributions shaped like ``inputs``, as :func:`fastattr.attr.grad_cam.guided_grad_cam`.
        As in Captum, an ``interpolate_mode`` that ``F.interpolate`` does not
        know gives every input an empty tensor ``[0]``, with a warning."""
        if interpolate_mode not in INTERPOLATE_MODES:
            xs, was_tuple = v.format_inputs(inputs)
            warnings.warn(
                f"interpolate_mode={interpolate_mode!r} is not one of {list(INTERPOLATE_MODES)}: "
                "the Grad-CAM map cannot be upsampled to any input, whose attributions are "
                "empty tensors (Captum's behaviour)", stacklevel=2)
            empty = tuple(torch.empty(0, dtype=x.dtype, device=x.device) for x in xs)
            return empty if was_tuple else empty[0]
        return guided_grad_cam(
            self.forward_func, inputs, self.layer, target=target,
            additional_forward_args=additional_forward_args, interpolate_mode=interpolate_mode,
            attribute_to_layer_input=attribute_to_layer_input,
        )


class LayerIntegratedGradients(LayerAttribution, GradientAttribution):
    """Captum's ``LayerIntegratedGradients(forward_func, layer, device_ids=None,
    multiply_by_inputs=True)``; ``layer`` may be a list of layers."""

    has_delta = True

    def __init__(self, forward_func: Callable[..., Tensor], layer: LayerType,
                 device_ids: Union[None, List[int]] = None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs

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
    ) -> Union[LayerAttributions, Tuple[LayerAttributions, Tensor]]:
        """As :func:`fastattr.attr.layer_integrated_gradients.layer_integrated_gradients`;
        ``internal_batch_size`` caps the rows per forward (on top of the memory budget)."""
        check_grad_kwargs(grad_kwargs)
        return layer_integrated_gradients(
            self.forward_func, inputs, self.layer, baselines=baselines,
            target=target, additional_forward_args=additional_forward_args,
            n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
            return_convergence_delta=return_convergence_delta,
            attribute_to_layer_input=attribute_to_layer_input,
            multiply_by_inputs=self._multiply_by_inputs,
        )
