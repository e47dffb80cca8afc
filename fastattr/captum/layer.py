"""``LayerGradCam``, ``GuidedGradCam`` and ``LayerIntegratedGradients`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn

from .. import _validate as v
from ..attr._layer import LayerType
from ..attr.grad_cam import grad_cam, guided_grad_cam
from ..attr.layer_integrated_gradients import LayerAttributions, layer_integrated_gradients
from ._base import Attribution, captum_target, reject

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


class LayerGradCam(LayerAttribution):
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
        reject("grad_kwargs", grad_kwargs, why="the engine takes its own gradients")
        return grad_cam(
            self.forward_func, inputs, self.layer, target=captum_target(target),
            additional_forward_args=additional_forward_args,
            attribute_to_layer_input=attribute_to_layer_input,
            relu_attributions=relu_attributions, attr_dim_summation=attr_dim_summation,
        )


class GuidedGradCam(Attribution):
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
        """Attributions shaped like ``inputs``, as :func:`fastattr.attr.grad_cam.guided_grad_cam`."""
        return guided_grad_cam(
            self.forward_func, inputs, self.layer, target=captum_target(target),
            additional_forward_args=additional_forward_args, interpolate_mode=interpolate_mode,
            attribute_to_layer_input=attribute_to_layer_input,
        )


class LayerIntegratedGradients(LayerAttribution):
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
        reject("grad_kwargs", grad_kwargs, why="the engine takes its own gradients")
        return layer_integrated_gradients(
            self.forward_func, inputs, self.layer, baselines=baselines,
            target=captum_target(target), additional_forward_args=additional_forward_args,
            n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
            return_convergence_delta=return_convergence_delta,
            attribute_to_layer_input=attribute_to_layer_input,
            multiply_by_inputs=self._multiply_by_inputs,
        )
