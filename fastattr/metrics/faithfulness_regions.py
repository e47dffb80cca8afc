"""Region perturbation (Samek et al. 2015) and selectivity (Montavon et al.
2018), as Quantus 0.6's ``RegionPerturbation`` and ``Selectivity``: square
patches of an image (all channels), ranked by the sum of their attributions,
are replaced by a baseline one after another, cumulatively.

The patch grid is Quantus's: an image side that ``patch_size`` does not
divide is padded to a multiple of it (half the padding, rounded down, before
the image), and a patch that reaches into the padding covers fewer pixels.
Series ``[B, C, T]`` are images of height 1. Every curve point of every
example is one generated row (:class:`~fastattr.metrics.deletion.ReplacedRows`)
run in budgeted chunks.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from ..engine.draws import group_uniforms
from .deletion import Baseline, Curve, ReplacedRows, curve_outputs, ranks_of
from .faithfulness_common import FAITHFULNESS_STREAMS, prepare, prepend
from .infidelity import AttributionsOrExplainer
from .ordering import check_order

REGION_ORDER_STREAM = FAITHFULNESS_STREAMS + 70  # "random" patch order, one key per (example, patch)
REGION_FILL_STREAM = FAITHFULNESS_STREAMS + 71  # "uniform" fill, one per (example, step)
SELECTIVITY_FILL_STREAM = FAITHFULNESS_STREAMS + 72
ORDERS = ("morf", "lerf", "random")


def patch_grid(spatial: Tuple[int, ...], patch_size: int, device: torch.device) -> Tuple[Tensor, int]:
    """``(patch_of, n_patches)``: int64 ``[prod(spatial)]``, the row-major
    index of the patch of each position of an image ``[H, W]`` (a series
    ``[T]`` as ``[1, T]``) on Quantus's padded grid, and the number of patches."""
    height, width = (1, spatial[0]) if len(spatial) == 1 else spatial
    pad_h, pad_w = (-height) % patch_size, (-width) % patch_size
    rows = (torch.arange(height, device=device) + pad_h // 2) // patch_size
    cols = (torch.arange(width, device=device) + pad_w // 2) // patch_size
    n_cols = (width + pad_w) // patch_size
    return (rows.unsqueeze(1) * n_cols + cols).reshape(-1), (height + pad_h) // patch_size * n_cols


def patch_sums(attrs: Tensor, patch_of: Tensor, n_patches: int) -> Tensor:
    """float64 ``[B, n_patches]``: the attributions ``[B, C, *S]`` summed over
    the channels and positions of each patch."""
    per_position = attrs.reshape(attrs.shape[0], attrs.shape[1], -1).to(torch.float64).sum(1)
    out = torch.zeros(attrs.shape[0], n_patches, dtype=torch.float64, device=attrs.device)
    return out.index_add_(1, patch_of, per_position)


def random_patch_order(seed: int, batch: int, n_patches: int, device: torch.device,
                       example_offset: int = 0) -> Tensor:
    """int64 ``[batch, n_patches]``: a random permutation of the patches per
    example, keyed by ``(seed, REGION_ORDER_STREAM, example_offset + b)``
    (Quantus: ``np.random.permutation(n_patches)`` per example)."""
    keys, _ = group_uniforms(seed, REGION_ORDER_STREAM, batch, n_patches, device, example_offset)
    return keys.view(batch, n_patches).sort(dim=1, stable=True).indices


def _region_outputs(model, inputs, attributions, target, patch_size, order, n_regions, with_clean, baseline,
                    output, seed, uniform_low, uniform_high, stream, additional_forward_args, explainer_kwargs,
                    patch_order, memory_budget, chunk_rows, example_offset, model_form) -> Tensor:
    """float64 ``[B, (1 +) K]``: the target output with the first ``k + 1``
    patches of the order replaced, ``k < min(n_regions, n_patches)`` (after
    the clean output when ``with_clean``)."""
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    patch_size = v.check_positive_int(patch_size, "patch_size")
    v.check_choice(order, "order", ORDERS)

    def patches(x: Tensor) -> int:
        return patch_grid(tuple(x.shape[2:]), patch_size, x.device)[1]

    def check(x: Tensor) -> None:
        if x.dim() not in (3, 4):
            raise ValueError(f"inputs: expected images [B, C, H, W] or series [B, C, T], got {tuple(x.shape)}")
        if patch_order is not None:
            check_order(patch_order, x.shape[0], patches(x), x.device, "patch_order")

    # The fill table has a column per patch of any element (the rows gather it for all).
    p = prepare(model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
                memory_budget, chunk_rows, example_offset, baseline, seed, uniform_low, uniform_high, stream,
                patches, check, model_form)
    x, batch, spatial = p.x, p.x.shape[0], tuple(p.x.shape[2:])
    patch_of, n_patches = patch_grid(spatial, patch_size, x.device)
    if patch_order is not None:
        patch_order = patch_order.to(x.device)
    elif order == "random":
        patch_order = random_patch_order(seed, batch, n_patches, x.device, example_offset)
    else:
        sums = patch_sums(p.attrs, patch_of, n_patches)
        patch_order = torch.sort(sums, dim=1, descending=order == "morf", stable=True).indices
    counts = torch.arange(1, min(n_regions, n_patches) + 1, dtype=torch.int64, device=x.device)
    if with_clean:
        counts = prepend(0, counts)
    ranks = ranks_of(patch_order).gather(1, patch_of.expand(batch, -1))
    rows = ReplacedRows(x, p.fill, ranks, (1, *spatial), counts, 1 if p.per_step else 0)
    return curve_outputs(p.model, rows, x, p.target, p.args, p.memory_budget, p.chunk_rows)


def region_perturbation(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    patch_size: int = 8,
    order: str = "morf",
    regions_evaluation: int = 100,
    baseline: Baseline = "black",
    output: str = "probability",
    seed: int = 0,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    patch_order: Optional[Tensor] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Curve:
    """Region perturbation: the drop of the target output,
    ``f(x)[t] - f(x_k)[t]``, where ``x_k`` has the first ``k + 1`` patches of
    the order replaced, for ``k < min(regions_evaluation, n_patches)``.

    Args:
        model: maps ``[n, C, *S]`` (and ``additional_forward_args``) to
            ``[n, classes]`` (or ``[n]`` with ``output="logit"``).
        inputs: images ``[B, C, H, W]`` or series ``[B, C, T]``.
        attributions: ``[B, *Fa]`` broadcastable to ``inputs``, or the
            explainer that makes them (options in ``explainer_kwargs``).
        target: None, a class, or one class per example.
        patch_size: side of the square patches (>= 1).
        order: ``"morf"`` (largest attribution sum first), ``"lerf"``
            (smallest first; ties in patch order) or ``"random"`` (keyed by
            ``(seed, example)``: :func:`random_patch_order`).
        regions_evaluation: the most patches replaced (>= 1).
        baseline: ``"black"`` / ``"white"`` (the example's min / max),
            ``"uniform"`` (one value per example and step in
            ``[uniform_low, uniform_high)``, keyed), a number or a tensor
            broadcastable to ``inputs``.
        output: ``"probability"`` (softmax over classes) or ``"logit"``.
        patch_order: int64 ``[B, n_patches]`` to use instead of ``order``
            (e.g. NumPy's ``argsort`` of the sums, for Quantus's order of ties).
        memory_budget, chunk_rows: bytes and an optional row cap per forward chunk.
        example_offset: example ``b``'s draws are keyed as example ``example_offset + b``.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        :class:`~fastattr.metrics.deletion.Curve`: ``values`` float64 ``[B, K]``
        and ``auc`` float64 ``[B]`` (trapezoids of width 1).
    """
    n_regions = v.check_positive_int(regions_evaluation, "regions_evaluation")
    out = _region_outputs(model, inputs, attributions, target, patch_size, order, n_regions, True, baseline,
                          output, seed, uniform_low, uniform_high, REGION_FILL_STREAM, additional_forward_args,
                          explainer_kwargs, patch_order, memory_budget, chunk_rows, example_offset, model_form)
    values = out[:, :1] - out[:, 1:]
    return Curve(values, torch.trapezoid(values, dx=1.0, dim=1))


def selectivity(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    patch_size: int = 8,
    baseline: Baseline = "black",
    output: str = "probability",
    seed: int = 0,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    patch_order: Optional[Tensor] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Curve:
    """Selectivity: the target output ``f(x_k)[t]``, where ``x_k`` has the
    ``k + 1`` patches of largest attribution sum replaced, for every patch
    ``k``; arguments as :func:`region_perturbation` (order ``"morf"``).

    Returns:
        :class:`~fastattr.metrics.deletion.Curve`: ``values`` float64
        ``[B, n_patches]`` and ``auc`` float64 ``[B]`` (trapezoids of width 1).
    """
    values = _region_outputs(model, inputs, attributions, target, patch_size, "morf", math.inf, False, baseline,
                             output, seed, uniform_low, uniform_high, SELECTIVITY_FILL_STREAM,
                             additional_forward_args, explainer_kwargs, patch_order, memory_budget, chunk_rows,
                             example_offset, model_form)
    return Curve(values, torch.trapezoid(values, dx=1.0, dim=1))
