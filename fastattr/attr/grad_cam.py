"""Grad-CAM (Selvaraju et al. 2017): a layer's activations weighted by the
spatially averaged gradient of the target, as Captum's ``LayerGradCam``.

The gradient comes from the engine: a single-point plan on the model whose
layer activations are made the leaves of the backward
(:class:`~fastattr.attr._layer.LayerLeaves`), so one forward per chunk gives
both the activations and, with a backward that stops at the layer, their
gradient.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _validate as v
from ..engine import run, single_point_plan
from ._call import build_request
from ._layer import LayerLeaves, LayerValues, format_layers, layer_names, layers_activation_key, per_layer
from .guided import guided_backprop
from .relu_rules import require_module

# F.interpolate's modes (Captum's interpolate_mode is passed to it), and the
# number of spatial dims the ones that need a fixed number take.
INTERPOLATE_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")
_MODE_SPATIAL_DIMS = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}


def grad_cam_map(grad: Tensor, act: Tensor, attr_dim_summation: bool, relu_attributions: bool) -> Tensor:
    """Grad-CAM of one layer tensor.

    Args:
        grad: ``[B, C, *S]`` gradient of the target w.r.t. the activations
            (``[B, C]`` when the layer has no spatial dims ``S``).
        act: ``[B, C, *S]`` activations.
        attr_dim_summation: sum over channels (dim 1, kept as size 1).
        relu_attributions: keep only the positive part.

    Returns:
        ``[B, 1, *S]`` (``[B, C, *S]`` without summation).
    """
    weights = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True) if grad.dim() > 2 else grad
    scaled = weights * act
    if attr_dim_summation:
        scaled = scaled.sum(dim=1, keepdim=True)
    return F.relu(scaled) if relu_attributions else scaled


def _check_upsample(maps_dims: Tuple[int, ...], size: Tuple[int, ...], mode: str) -> None:
    """Each map ``[B, C, *S]`` needs as many spatial dims as the input's
    ``[B, C, *size]``, and as many as ``mode`` interpolates."""
    for dims in maps_dims:
        if dims - 2 != len(size) or not size:
            raise ValueError(
                f"upsample_to_input: the Grad-CAM map has {max(dims - 2, 0)} spatial dims but "
                f"inputs[0] has {len(size)} ({tuple(size)}); upsampling needs the same number, at least 1"
            )
    if _MODE_SPATIAL_DIMS.get(mode, len(size)) != len(size):
        raise ValueError(
            f"interpolate_mode: {mode!r} interpolates {_MODE_SPATIAL_DIMS[mode]} spatial dims, "
            f"the map has {len(size)}"
        )


def grad_cam(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    layer: nn.Module,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    relu_attributions: bool = False,
    attr_dim_summation: bool = True,
    upsample_to_input: bool = False,
    interpolate_mode: str = "nearest",
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> v.TensorOrTuple:
    """Grad-CAM of ``layer`` for ``model(inputs)[:, target]``, as Captum's
    ``LayerGradCam.attribute``.

    Args:
        model: callable taking the inputs (and ``additional_forward_args``)
            and returning ``[B, C]`` (or ``[B]`` with ``target=None``).
        inputs: ``[B, *F]`` or a tuple of such tensors; integer tensors
            (token ids) are allowed.
        layer: the ``nn.Module`` inside ``model`` to explain; it must run once
            per forward.
        target, additional_forward_args, memory_budget, chunk_rows: as
            :func:`fastattr.saliency`.
        attribute_to_layer_input: explain the layer's positional inputs
            instead of its output.
        relu_attributions: keep only the positive part (the original Grad-CAM).
        attr_dim_summation: sum over dim 1 (channels).
        upsample_to_input: resize the map to ``inputs[0]``'s spatial size
            (``inputs[0].shape[2:]``), as ``LayerAttribution.interpolate``.
        interpolate_mode: ``F.interpolate`` mode for ``upsample_to_input``.

    Returns:
        For a layer tensor ``[B, C, *S]``: ``[B, 1, *S]`` (``[B, C, *S]``
        without summation; ``[B, 1]`` or ``[B, C]`` for a layer without
        spatial dims; ``S`` replaced by ``inputs[0].shape[2:]`` when
        upsampled), in the layer's dtype; a tuple when the layer's output (or
        input) has several tensors.
    """
    layers, _ = format_layers(model, layer, allow_list=False)
    v.check_choice(interpolate_mode, "interpolate_mode", INTERPOLATE_MODES)

    def check_layer_values(values: LayerValues) -> None:
        if upsample_to_input:
            _check_upsample(tuple(a.dim() for a in values.flat), size, interpolate_mode)

    # One forward per chunk: the layer's activations become the leaves the
    # engine differentiates at, and are kept for the map.
    leaf_model = LayerLeaves(model, layers, layer_names(layers, False), attribute_to_layer_input,
                             check=check_layer_values)
    req, _ = build_request(
        leaf_model, inputs, target, additional_forward_args,
        lambda xs: single_point_plan("grad"), memory_budget, chunk_rows,
        leaves=leaf_model.leaves,
        activation_key=layers_activation_key(model, layers, attribute_to_layer_input, "leaves"),
    )
    v.check_model_device(model, req.inputs[0].device)  # build_request saw only the wrapper
    size = tuple(req.inputs[0].shape[2:])  # read by check_layer_values during the run
    with leaf_model.installed():
        grads = run(req).mean
    acts = leaf_model.gathered()
    maps = []
    for g, a in zip(grads, acts.flat):
        m = grad_cam_map(g, a.to(g.dtype), attr_dim_summation, relu_attributions)
        if upsample_to_input:
            m = F.interpolate(m, size, mode=interpolate_mode)
        maps.append(m.to(a.dtype))
    return per_layer(tuple(maps), acts, was_list=False)


def guided_grad_cam(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    layer: nn.Module,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    interpolate_mode: str = "nearest",
    attribute_to_layer_input: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> v.TensorOrTuple:
    """Guided Grad-CAM, as Captum's ``GuidedGradCam.attribute``: guided
    backprop attributions times the (ReLU'd) Grad-CAM map of ``layer``
    upsampled to each input.

    Args:
        model: an ``nn.Module`` (guided backprop's rules go on its ``nn.ReLU``
            modules) taking the inputs and ``additional_forward_args``.
        inputs: ``[B, C_i, *S_i]`` or a tuple of such tensors.
        layer: an ``nn.Module`` inside ``model`` with one output tensor (one
            input tensor with ``attribute_to_layer_input``).
        target, additional_forward_args, memory_budget, chunk_rows: as
            :func:`fastattr.saliency`.
        interpolate_mode: ``F.interpolate`` mode for the upsampling.
        attribute_to_layer_input: Grad-CAM of the layer's input.

    Returns:
        Attributions shaped and typed like ``inputs`` (tensor or tuple). As in
        Captum, an input the map cannot be upsampled to (other spatial rank,
        e.g. a ``[B, F]`` input) gets an empty tensor ``[0]`` and a warning.
    """
    require_module(model, "guided_grad_cam")
    v.check_choice(interpolate_mode, "interpolate_mode", INTERPOLATE_MODES)
    cam = grad_cam(
        model, inputs, layer, target, additional_forward_args,
        attribute_to_layer_input=attribute_to_layer_input, relu_attributions=True,
        memory_budget=memory_budget, chunk_rows=chunk_rows,
    )
    if isinstance(cam, tuple):
        what = "input" if attribute_to_layer_input else "output"
        raise ValueError(f"layer: Guided Grad-CAM needs a layer {what} of one tensor, got {len(cam)}")
    guided = guided_backprop(model, inputs, target, additional_forward_args, memory_budget, chunk_rows)
    was_tuple = isinstance(guided, tuple)
    out = []
    for x, g in zip(inputs if was_tuple else (inputs,), guided if was_tuple else (guided,)):
        try:
            upsampled = F.interpolate(cam, tuple(x.shape[2:]), mode=interpolate_mode)
        except (ValueError, NotImplementedError):
            warnings.warn(
                f"guided_grad_cam: cannot upsample the Grad-CAM map {tuple(cam.shape)} to an input "
                f"of shape {tuple(x.shape)}; its attributions are an empty tensor",
                stacklevel=2,
            )
            out.append(torch.empty(0, dtype=g.dtype, device=g.device))
            continue
        out.append(g * upsampled.to(g.dtype))
    return tuple(out) if was_tuple else out[0]
