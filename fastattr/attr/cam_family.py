"""The CAM family as pytorch-grad-cam 1.5.7 defines it: Grad-CAM++,
XGrad-CAM, HiResCAM, LayerCAM, Eigen-CAM, Score-CAM and Ablation-CAM.

Each method turns a layer's activations ``A`` (``[B, C, h, w]``, after an
optional ``reshape_transform`` of token layers) into a map ``[B, h, w]``:

* the gradient methods take ``A`` and ``dA = ∂f_target/∂A`` from one engine
  run (:class:`~fastattr.attr._layer.LayerLeaves`, as :func:`grad_cam`);
* Eigen-CAM projects ``A`` on its first principal direction;
* Score-CAM and Ablation-CAM are forward-only: one model output per (example,
  channel), evaluated in chunks under the byte budget without autograd.
  Score-CAM's masked inputs are made per chunk (never all ``B·C`` at once).
  Ablation-CAM runs the model on one example per chunk and, in a hook on
  the layer, replaces its one-row output by the chunk's ablated copies, so
  everything before the layer runs once per chunk instead of once per
  ablated channel (pytorch-grad-cam reruns it for every channel).

Maps come raw at the layer's resolution by default; ``scale=True,
upsample_to_input=True`` gives pytorch-grad-cam's output exactly (ReLU,
per-image min-max scaling, bilinear resize to the input, scaling again).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _validate as v
from ..engine import forward_rows, run, single_point_plan
from ..engine import budget as _budget
from ..engine.model_form import check_model_form
from ..engine.outputs import check_model_output, target_outputs
from ._call import build_request
from ._layer import LayerLeaves, capture_layers, format_layers, layers_activation_key

ReshapeTransform = Callable[[Tensor], Tensor]

# pytorch-grad-cam's constants, kept so that the maps equal its maps.
_GRAD_CAM_PP_EPS = 1e-6
_XGRAD_CAM_EPS = 1e-7
_SCORE_CAM_MASK_EPS = 1e-8
_SCALE_EPS = 1e-7
_ABLATION_OFFSET = 1e7  # an ablated channel of a layer with negative values is set this far below its minimum


# ---------------------------------------------------------------- reshape transforms


def vit_reshape_transform(height: int, width: int, prefix_tokens: int = 1) -> ReshapeTransform:
    """A ``reshape_transform`` for ViT tokens: ``[B, prefix_tokens + h·w, D]``
    -> ``[B, D, h, w]``, the ``prefix_tokens`` leading tokens (class token,
    registers) dropped, as pytorch-grad-cam's ViT example."""
    height = v.check_positive_int(height, "height")
    width = v.check_positive_int(width, "width")
    prefix_tokens = v.check_positive_int(prefix_tokens, "prefix_tokens", minimum=0)

    def transform(tokens: Tensor) -> Tensor:
        expected = prefix_tokens + height * width
        if tokens.dim() != 3 or tokens.shape[1] != expected:
            raise ValueError(
                f"reshape_transform: expected ViT tokens [B, {expected}, D] ({prefix_tokens} prefix + "
                f"{height}x{width} patches), got {tuple(tokens.shape)}"
            )
        grid = tokens[:, prefix_tokens:, :].reshape(tokens.shape[0], height, width, tokens.shape[2])
        return grid.permute(0, 3, 1, 2)

    return transform


def swin_reshape_transform(tokens: Tensor) -> Tensor:
    """A ``reshape_transform`` for Swin stages (torchvision, timm >= 0.9):
    ``[B, h, w, C]`` -> ``[B, C, h, w]``."""
    if tokens.dim() != 4:
        raise ValueError(f"reshape_transform: expected Swin tokens [B, h, w, C], got {tuple(tokens.shape)}")
    return tokens.permute(0, 3, 1, 2)


# ---------------------------------------------------------------- checks and shared steps


def _check_image_inputs(inputs: Any, need_image: bool) -> Tensor:
    """``inputs`` as one detached floating tensor (``[B, C, H, W]`` when
    ``need_image``: the map is upsampled to it or it is masked)."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs: expected one tensor [B, C, H, W], got {type(inputs).__name__}")
    (x,), _ = v.format_inputs(inputs)
    if need_image and x.dim() != 4:
        raise ValueError(f"inputs: expected an image batch [B, C, H, W], got shape {tuple(x.shape)}")
    return x.clone() if x.is_inference() else x.detach()


def _check_transform(reshape_transform: Any) -> None:
    if reshape_transform is not None and not callable(reshape_transform):
        raise TypeError(f"reshape_transform: expected a callable or None, got {type(reshape_transform).__name__}")


def _check_flags(**flags: Any) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def _one_layer(model: nn.Module, layer: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    return format_layers(model, layer, allow_list=False)[0][0]


def _one_tensor(values: Tuple[Tensor, ...]) -> Tensor:
    if len(values) != 1:
        raise TypeError(f"layer: expected it to output one tensor, got {len(values)}")
    return values[0]


def to_grid(t: Tensor, reshape_transform: Optional[ReshapeTransform]) -> Tensor:
    """A layer tensor as ``[B, C, h, w]``: through ``reshape_transform`` if given."""
    if reshape_transform is None:
        if t.dim() != 4:
            raise ValueError(
                f"layer: its output is {tuple(t.shape)}, expected [B, C, h, w]; pass reshape_transform "
                "to map token layers to a grid (vit_reshape_transform, swin_reshape_transform)"
            )
        return t
    grid = reshape_transform(t)
    if not isinstance(grid, Tensor) or grid.dim() != 4 or grid.shape[0] != t.shape[0]:
        got = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
        raise ValueError(f"reshape_transform: expected it to return [{t.shape[0]}, C, h, w], got {got}")
    return grid


def _default_target(model: nn.Module, x: Tensor, output: Optional[Tensor], target: v.TargetType) -> v.TargetType:
    """``target``, or for None each example's top class (pytorch-grad-cam's
    default) when the model's output is ``[B, K]``; a ``[B]`` output is its
    own target."""
    if target is not None:
        return target
    if output is None:
        with torch.no_grad():
            output = model(x)
    if isinstance(output, Tensor) and output.dim() == 2:
        return output.argmax(dim=1)
    return None


def _capture(model: nn.Module, layer: nn.Module, x: Tensor, need_output: bool = True) -> Tuple[Tensor, Any]:
    """``(layer output, model output)`` of one forward without autograd
    (stopped after the layer, the output None, without ``need_output``)."""
    values = capture_layers(model, [layer], ["layer"], False, (x,), need_output=need_output)
    return _one_tensor(values.values[0]), values.output


def _min_max_scaled(maps: Tensor) -> Tensor:
    """Each ``[h, w]`` map shifted to minimum 0 and divided by ``1e-7 +`` its
    maximum, as pytorch-grad-cam's ``scale_cam_image``."""
    shifted = maps - maps.amin(dim=(1, 2), keepdim=True)
    return shifted / (_SCALE_EPS + shifted.amax(dim=(1, 2), keepdim=True))


def finish_map(cam: Tensor, input_size: Tuple[int, int], upsample_to_input: bool, scale: bool) -> Tensor:
    """The raw map ``[B, h, w]`` post-processed as asked: ``scale`` is ReLU
    then per-image min-max scaling; ``upsample_to_input`` a bilinear resize
    (half-pixel centres, as OpenCV's) to ``input_size``. With both:
    pytorch-grad-cam's order (scale, resize, scale again)."""
    if scale:
        cam = _min_max_scaled(F.relu(cam))
    if upsample_to_input:
        cam = F.interpolate(cam[:, None], size=input_size, mode="bilinear", align_corners=False)[:, 0]
        if scale:
            cam = _min_max_scaled(cam)
    return cam


def _weighted_sum(weights: Tensor, acts: Tensor) -> Tensor:
    """``Σ_c weights[b, c] · acts[b, c]``: ``[B, C]``, ``[B, C, h, w]`` -> ``[B, h, w]``."""
    return (weights.to(acts.dtype)[:, :, None, None] * acts).sum(dim=1)


# ---------------------------------------------------------------- gradient methods


def layer_activations_and_gradients(
    model: nn.Module,
    x: Tensor,
    layer: nn.Module,
    target: v.TargetType,
    reshape_transform: Optional[ReshapeTransform],
    memory_budget: Optional[int],
    chunk_rows: Optional[int],
) -> Tuple[Tensor, Tensor]:
    """``(A, dA)``, both ``[B, C, h, w]`` in the layer's dtype: the layer's
    output and the gradient of the target at it, from one engine run (one
    forward and backward per chunk), each through ``reshape_transform``."""
    target = _default_target(model, x, None, target)
    leaf_model = LayerLeaves(model, [layer], ["layer"], False)
    req, _ = build_request(
        leaf_model, x, target, None, lambda xs: single_point_plan("grad"), memory_budget, chunk_rows,
        leaves=leaf_model.leaves, activation_key=layers_activation_key(model, [layer], False, "leaves"),
    )
    v.check_model_device(model, x.device)  # build_request saw only the wrapper
    with leaf_model.installed():
        grads = run(req).mean
    acts = _one_tensor(leaf_model.gathered().values[0])
    grad = grads[0].to(acts.dtype)
    return to_grid(acts, reshape_transform), to_grid(grad, reshape_transform)


def _gradient_cam(
    map_of: Callable[[Tensor, Tensor], Tensor],
    model: nn.Module,
    inputs: Tensor,
    layer: nn.Module,
    target: v.TargetType,
    upsample_to_input: bool,
    scale: bool,
    reshape_transform: Optional[ReshapeTransform],
    memory_budget: Optional[int],
    chunk_rows: Optional[int],
) -> Tensor:
    """A gradient CAM: ``map_of(A, dA)`` ``[B, h, w]``, finished as asked."""
    _check_flags(upsample_to_input=upsample_to_input, scale=scale)
    _check_transform(reshape_transform)
    layer = _one_layer(model, layer)
    x = _check_image_inputs(inputs, upsample_to_input)
    acts, grads = layer_activations_and_gradients(model, x, layer, target, reshape_transform,
                                                  memory_budget, chunk_rows)
    return finish_map(map_of(acts, grads), tuple(x.shape[2:]), upsample_to_input, scale)


def _spatial_sum(t: Tensor) -> Tensor:
    return t.sum(dim=(2, 3), keepdim=True)


def grad_cam_plus_plus_map(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19) of ``acts``/``grads``
    ``[B, C, h, w]``: channel weights ``Σ_ij relu(g)·α``, ``α = g² / (2g² +
    Σ_ij A · g³ + 1e-6)`` (0 where ``g = 0``). Returns ``[B, h, w]``."""
    g2 = grads.pow(2)
    alpha = g2 / (2 * g2 + _spatial_sum(acts) * g2 * grads + _GRAD_CAM_PP_EPS)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    weights = (F.relu(grads) * alpha).sum(dim=(2, 3))
    return _weighted_sum(weights, acts)


def xgrad_cam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020): channel weights ``Σ_ij g · A / (Σ_ij A +
    1e-7)``. ``[B, C, h, w]`` -> ``[B, h, w]``."""
    weights = (grads * acts / (_spatial_sum(acts) + _XGRAD_CAM_EPS)).sum(dim=(2, 3))
    return _weighted_sum(weights, acts)


def hires_cam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): ``Σ_c g · A``. ``[B, C, h, w]`` -> ``[B, h, w]``."""
    return (grads * acts).sum(dim=1)


def layer_cam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """LayerCAM (Jiang et al. 2021): ``Σ_c relu(g) · A``. ``[B, C, h, w]`` -> ``[B, h, w]``."""
    return (F.relu(grads) * acts).sum(dim=1)


def grad_cam_plus_plus(
    model: nn.Module, inputs: Tensor, layer: nn.Module, target: v.TargetType = None, *,
    upsample_to_input: bool = False, scale: bool = False,
    reshape_transform: Optional[ReshapeTransform] = None,
    memory_budget: Optional[int] = None, chunk_rows: Optional[int] = None,
) -> Tensor:
    """Grad-CAM++ of ``layer`` for ``model(inputs)[:, target]``, as
    pytorch-grad-cam's ``GradCAMPlusPlus`` (formula: :func:`grad_cam_plus_plus_map`).

    Args:
        model: an ``nn.Module`` taking ``inputs`` and returning ``[B, K]`` (or ``[B]``).
        inputs: ``[B, C, H, W]`` (any ``[B, *F]`` without ``upsample_to_input``).
        layer: the ``nn.Module`` inside ``model`` to explain; it runs once per
            forward and outputs ``[B, C, h, w]``, or anything
            ``reshape_transform`` maps to that.
        target: any Captum target (int, list of ``B``, int tensor ``[B]``, ...);
            None: each example's top class (pytorch-grad-cam's default) for a
            ``[B, K]`` output, the output itself for a ``[B]`` one.
        upsample_to_input: bilinear resize of the map to ``[H, W]``.
        scale: ReLU and min-max scale each map to ``[0, 1]``. With
            ``upsample_to_input`` too, the result equals pytorch-grad-cam's.
        reshape_transform: maps the layer's output (and its gradient) to
            ``[B, C, h, w]`` (:func:`vit_reshape_transform`, :func:`swin_reshape_transform`).
        memory_budget, chunk_rows: bytes and rows per engine chunk, as :func:`fastattr.saliency`.

    Returns:
        ``[B, h, w]`` (``[B, H, W]`` upsampled), in the layer's dtype; raw
        (signed, unscaled) unless ``scale``.
    """
    return _gradient_cam(grad_cam_plus_plus_map, model, inputs, layer, target, upsample_to_input, scale,
                         reshape_transform, memory_budget, chunk_rows)


def xgrad_cam(
    model: nn.Module, inputs: Tensor, layer: nn.Module, target: v.TargetType = None, *,
    upsample_to_input: bool = False, scale: bool = False,
    reshape_transform: Optional[ReshapeTransform] = None,
    memory_budget: Optional[int] = None, chunk_rows: Optional[int] = None,
) -> Tensor:
    """XGrad-CAM, as pytorch-grad-cam's ``XGradCAM`` (formula:
    :func:`xgrad_cam_map`). Arguments and result ``[B, h, w]`` (or ``[B, H,
    W]``) as :func:`grad_cam_plus_plus`."""
    return _gradient_cam(xgrad_cam_map, model, inputs, layer, target, upsample_to_input, scale,
                         reshape_transform, memory_budget, chunk_rows)


def hires_cam(
    model: nn.Module, inputs: Tensor, layer: nn.Module, target: v.TargetType = None, *,
    upsample_to_input: bool = False, scale: bool = False,
    reshape_transform: Optional[ReshapeTransform] = None,
    memory_budget: Optional[int] = None, chunk_rows: Optional[int] = None,
) -> Tensor:
    """HiResCAM, as pytorch-grad-cam's ``HiResCAM`` (formula:
    :func:`hires_cam_map`). Arguments and result ``[B, h, w]`` (or ``[B, H,
    W]``) as :func:`grad_cam_plus_plus`."""
    return _gradient_cam(hires_cam_map, model, inputs, layer, target, upsample_to_input, scale,
                         reshape_transform, memory_budget, chunk_rows)


def layer_cam(
    model: nn.Module, inputs: Tensor, layer: nn.Module, target: v.TargetType = None, *,
    upsample_to_input: bool = False, scale: bool = False,
    reshape_transform: Optional[ReshapeTransform] = None,
    memory_budget: Optional[int] = None, chunk_rows: Optional[int] = None,
) -> Tensor:
    """LayerCAM, as pytorch-grad-cam's ``LayerCAM`` (formula:
    :func:`layer_cam_map`). Arguments and result ``[B, h, w]`` (or ``[B, H,
    W]``) as :func:`grad_cam_plus_plus`."""
    return _gradient_cam(layer_cam_map, model, inputs, layer, target, upsample_to_input, scale,
                         reshape_transform, memory_budget, chunk_rows)


# ---------------------------------------------------------------- Eigen-CAM


def _first_right_singular_vectors(points: Tensor) -> Tensor:
    """``[B, C]``: the first right singular vector of each ``[n, C]`` of
    ``points`` ``[B, n, C]``. A singular vector's sign is arbitrary and
    torch's LAPACK picks the other one than numpy's for about half of all
    matrices; numpy's is pytorch-grad-cam's, so numpy computes it (on the
    CPU, in float32 for half types)."""
    work = points if points.dtype in (torch.float32, torch.float64) else points.float()
    vh = np.linalg.svd(work.detach().cpu().numpy(), full_matrices=False)[2]
    return torch.from_numpy(np.ascontiguousarray(vh[:, 0, :])).to(device=points.device, dtype=points.dtype)


def eigen_cam_map(acts: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): each example's activations as
    ``[h·w, C]``, centred per channel, projected on the first right singular
    vector (its sign as numpy's SVD gives it). ``[B, C, h, w]`` -> ``[B, h,
    w]``. NaNs count as 0, as in pytorch-grad-cam."""
    b, c, h, w = acts.shape
    points = torch.nan_to_num(acts, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
    points = points.reshape(b, c, h * w).transpose(1, 2)
    points = points - points.mean(dim=1, keepdim=True)
    first = _first_right_singular_vectors(points)
    return (points @ first[:, :, None]).reshape(b, h, w)


def eigen_cam(
    model: nn.Module, inputs: Tensor, layer: nn.Module, target: v.TargetType = None, *,
    upsample_to_input: bool = False, scale: bool = False,
    reshape_transform: Optional[ReshapeTransform] = None,
) -> Tensor:
    """Eigen-CAM of ``layer``, as pytorch-grad-cam's ``EigenCAM``: class
    agnostic (``target`` is accepted for a uniform call and ignored), one
    forward without autograd. Formula: :func:`eigen_cam_map`.

    Args and result as :func:`grad_cam_plus_plus` (no gradient, so no chunking).
    """
    _check_flags(upsample_to_input=upsample_to_input, scale=scale)
    _check_transform(reshape_transform)
    layer = _one_layer(model, layer)
    x = _check_image_inputs(inputs, upsample_to_input)
    v.check_model_device(model, x.device)
    acts = to_grid(_capture(model, layer, x, need_output=False)[0], reshape_transform)
    return finish_map(eigen_cam_map(acts), tuple(x.shape[2:]), upsample_to_input, scale)


# ---------------------------------------------------------------- Score-CAM


def score_cam_masks(acts: Tensor, size: Tuple[int, int]) -> Tensor:
    """Score-CAM's masks of some channels: ``acts`` ``[n, h, w]`` upsampled
    bilinearly (corners aligned, as ``nn.UpsamplingBilinear2d``) to ``size``
    and min-max scaled each: ``[n, 1, H, W]``."""
    up = F.interpolate(acts[:, None], size=size, mode="bilinear", align_corners=True)
    lo = up.amin(dim=(2, 3), keepdim=True)
    hi = up.amax(dim=(2, 3), keepdim=True)
    return (up - lo) / (hi - lo + _SCORE_CAM_MASK_EPS)


def distinct_mask_rows(acts: Tensor) -> Tuple[Tensor, Tensor]:
    """Which (example, channel) masked inputs Score-CAM must evaluate.

    A channel whose activations are all 0 (common after a ReLU) gives a mask
    of exact zeros, so all such channels of an example share one masked
    input; every other channel is its own. Returns ``(rows, row_of)``: int64
    ``[R]``, the evaluated ids ``example · C + channel`` in order, and int64
    ``[B·C]``, for every id the position in ``rows`` of the row whose score
    it takes. ``acts``: ``[B, C, h, w]``."""
    batch, channels = acts.shape[:2]
    ids = torch.arange(batch * channels, device=acts.device).reshape(batch, channels)
    dead = acts.flatten(2).eq(0).all(dim=2)
    first_dead = torch.where(dead, ids, batch * channels).amin(dim=1, keepdim=True)
    stands_for = torch.where(dead, first_dead, ids).flatten()
    rows = torch.unique(stands_for)  # sorted
    return rows, torch.searchsorted(rows, stands_for)


def _rows_layout(x: Tensor) -> torch.memory_format:
    # oneDNN's convolutions run ~1.2x faster on channels-last images on the
    # CPU; the values differ from contiguous ones by rounding only.
    return torch.channels_last if x.dim() == 4 and x.device.type == "cpu" else torch.contiguous_format


def score_cam(
    model: nn.Module, inputs: Tensor, layer: nn.Module, target: v.TargetType = None, *,
    upsample_to_input: bool = False, scale: bool = False,
    reshape_transform: Optional[ReshapeTransform] = None,
    memory_budget: Optional[int] = None, chunk_rows: Optional[int] = None,
    model_form: str = "fast",
) -> Tensor:
    """Score-CAM (Wang et al. 2020) of ``layer``, as pytorch-grad-cam's ``ScoreCAM``.

    Each channel ``c`` of the layer's activations ``A`` ``[B, C, h, w]`` is
    upsampled to the input and min-max scaled (:func:`score_cam_masks`); the
    target output at ``inputs · mask_c`` gives the score ``s_c``; the map is
    ``Σ_c softmax_c(s) · A_c``. The ``B·C`` masked inputs run forward-only
    in chunks under ``memory_budget`` bytes (at most ``chunk_rows`` rows),
    each chunk's masks made when it runs; channels whose activations are all
    0 share one row per example (:func:`distinct_mask_rows`).

    Args:
        inputs: ``[B, C, H, W]``.
        model, layer, target, upsample_to_input, scale, reshape_transform,
        memory_budget, chunk_rows: as :func:`grad_cam_plus_plus`.
        model_form: the form the masked rows run the model in, as
            :func:`fastattr.saliency`'s (the layer's activations are taken
            from the model as it is).

    Returns:
        ``[B, h, w]`` (``[B, H, W]`` upsampled), in the layer's dtype.
    """
    check_model_form(model_form)
    _check_flags(upsample_to_input=upsample_to_input, scale=scale)
    _check_transform(reshape_transform)
    layer = _one_layer(model, layer)
    x = _check_image_inputs(inputs, need_image=True)
    v.check_model_device(model, x.device)
    raw, output = _capture(model, layer, x, need_output=target is None)
    acts = to_grid(raw, reshape_transform)
    batch, channels = acts.shape[:2]
    size = tuple(x.shape[2:])
    layout = _rows_layout(x)

    rows, row_of = distinct_mask_rows(acts)

    def masked_rows(r0: int, r1: int) -> Tuple[Tensor]:
        ids = rows[r0:r1]
        examples, chans = ids // channels, ids % channels
        masks = score_cam_masks(acts[examples, chans], size).to(x.dtype)
        return ((x.index_select(0, examples) * masks).contiguous(memory_format=layout),)

    formatted = v.format_target(_default_target(model, x, output, target), batch, x.device)
    if isinstance(formatted, Tensor):  # one per example: one per evaluated row
        formatted = formatted.index_select(0, rows // channels)
    scores = forward_rows(model, masked_rows, rows.shape[0], 1, (x,), formatted,
                          memory_budget=v.check_optional_positive_int(memory_budget, "memory_budget"),
                          chunk_rows=v.check_optional_positive_int(chunk_rows, "chunk_rows"),
                          model_form=model_form)
    weights = torch.softmax(scores[row_of].reshape(batch, channels).to(acts.dtype), dim=1)
    return finish_map(_weighted_sum(weights, acts), size, upsample_to_input, scale)


# ---------------------------------------------------------------- Ablation-CAM


def ablation_value(raw: Tensor) -> Tensor:
    """What an ablated channel of one example's layer output ``raw`` is set
    to, as pytorch-grad-cam's ``AblationLayer``: 0 when the output's minimum
    is 0 (after a ReLU), else ``1e7`` below the minimum."""
    low = raw.amin()
    return torch.where(low == 0, low, low - _ABLATION_OFFSET)


def ablated_copies(raw: Tensor, channels: Tensor, channel_dim: int, value: Tensor) -> Tensor:
    """``len(channels)`` copies of one example's layer output ``raw``
    ``[1, *L]``, copy ``i`` with channel ``channels[i]`` (along
    ``channel_dim`` of ``raw``) set to ``value``: ``[n, *L]``."""
    n = channels.shape[0]
    copies = raw.expand(n, *raw.shape[1:]).clone()
    copies.movedim(channel_dim, 1)[torch.arange(n, device=raw.device), channels] = value
    return copies


@contextlib.contextmanager
def _output_replaced(layer: nn.Module, replacement: Callable[[], Tensor]) -> Iterator[None]:
    """The layer's output replaced by ``replacement()`` in every forward of the block."""
    handle = layer.register_forward_hook(lambda module, args, out: replacement())
    try:
        yield
    finally:
        handle.remove()


def _ablation_scores(
    model: nn.Module, x: Tensor, layer: nn.Module, raw: Tensor, channel_dim: int, channels: int,
    target: v.FormattedTarget, rows_per_chunk: int,
) -> Tensor:
    """float64 ``[B, channels]``: the target output with each channel of the
    layer ablated in turn. Per chunk the model runs on one example (one row
    up to the layer) and the layer's output becomes the chunk's ablated
    copies, which the rest of the model runs on."""
    batch = x.shape[0]
    scores = torch.empty(batch, channels, dtype=torch.float64, device=x.device)
    copies: Optional[Tensor] = None
    flat_target = None
    with torch.no_grad(), _output_replaced(layer, lambda: copies):
        for b in range(batch):
            value = ablation_value(raw[b])
            example = x[b : b + 1]
            for c0 in range(0, channels, rows_per_chunk):
                chans = torch.arange(c0, min(channels, c0 + rows_per_chunk), device=x.device)
                copies = ablated_copies(raw[b : b + 1], chans, channel_dim, value)
                out = model(example)
                if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != len(chans):
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"layer: ablation_cam runs the model after layer on {len(chans)} ablated copies of "
                        f"one example and expected {len(chans)} output rows, got {got}; the part of the "
                        "model after layer must keep rows apart and broadcast one-row tensors from before it"
                    )
                if flat_target is None:
                    flat_target = check_model_output(out, len(chans), target)
                example_ids = torch.full((len(chans),), b, dtype=torch.int64, device=x.device)
                scores[b, c0 : c0 + len(chans)] = target_outputs(out, flat_target, example_ids)
    return scores


def ablation_cam(
    model: nn.Module, inputs: Tensor, layer: nn.Module, target: v.TargetType = None, *,
    upsample_to_input: bool = False, scale: bool = False,
    reshape_transform: Optional[ReshapeTransform] = None,
    memory_budget: Optional[int] = None, chunk_rows: Optional[int] = None,
) -> Tensor:
    """Ablation-CAM (Desai & Ramaswamy 2020) of ``layer``, as pytorch-grad-cam's
    ``AblationCAM`` with every channel ablated (``ratio_channels_to_ablate=1``).

    With ``s`` the target output and ``s_c`` the same with channel ``c`` of
    the layer's output set to :func:`ablation_value`, the channel weights are
    ``(s - s_c) / s`` and the map is ``Σ_c w_c · A_c``. The channel is dim 1
    of the layer's output, or its last dim with ``reshape_transform`` (the
    token layout ``[B, N, D]`` / ``[B, h, w, D]``, as ``AblationLayerVit``;
    prefix tokens are ablated too). pytorch-grad-cam's ``AblationLayer``
    lowers each copy of a batch 1e7 further below the minimum than the one
    before when the layer has negative values, so its maps depend on its
    ``batch_size``: fastattr's equal its maps at ``batch_size=1``, and at any
    batch size for a layer whose minimum is 0.

    The model runs forward-only, per example in chunks of ablated copies
    under ``memory_budget`` bytes (at most ``chunk_rows`` copies): the
    layers up to ``layer`` run on the one example, and a hook replaces
    ``layer``'s output by the copies. So the part of the model after
    ``layer`` must treat rows independently and broadcast one-row tensors
    it gets from before ``layer`` (as residual connections do).

    Args:
        inputs: ``[B, C, H, W]`` (any ``[B, *F]`` without ``upsample_to_input``).
        model, layer, target, upsample_to_input, scale, reshape_transform,
        memory_budget, chunk_rows: as :func:`grad_cam_plus_plus`.

    Returns:
        ``[B, h, w]`` (``[B, H, W]`` upsampled), in the layer's dtype.
    """
    _check_flags(upsample_to_input=upsample_to_input, scale=scale)
    _check_transform(reshape_transform)
    layer = _one_layer(model, layer)
    x = _check_image_inputs(inputs, upsample_to_input)
    v.check_model_device(model, x.device)
    memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
    chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")
    raw, output = _capture(model, layer, x)
    acts = to_grid(raw, reshape_transform)
    batch, channels = acts.shape[:2]
    channel_dim = 1 if reshape_transform is None else raw.dim() - 1
    if raw.shape[channel_dim] != channels:
        raise ValueError(
            f"reshape_transform: the layer output {tuple(raw.shape)} has {raw.shape[channel_dim]} channels "
            f"in its last dim, the transformed [B, C, h, w] {tuple(acts.shape)} has {channels}"
        )
    formatted = v.format_target(_default_target(model, x, output, target), batch, x.device)
    flat_target = check_model_output(output, batch, formatted)
    original = target_outputs(output, flat_target, torch.arange(batch, device=x.device))
    rows = _budget.unmeasured_chunk_rows((raw,), memory_budget, channels, chunk_rows)
    ablated = _ablation_scores(model, x, layer, raw, channel_dim, channels, formatted, rows)
    weights = ((original[:, None] - ablated) / original[:, None]).to(acts.dtype)
    return finish_map(_weighted_sum(weights, acts), tuple(x.shape[2:]), upsample_to_input, scale)
