"""IROF, Iterative Removal Of Features (Rieger and Hansen 2020), as Quantus
0.6's ``IROF``: an image is cut into superpixels (SLIC,
:mod:`fastattr.metrics.superpixels`), the superpixels are removed one more
at a time in the order of their mean attribution, highest first, and the
area over the curve of the target output (relative to the clean output) is
the score; higher is better.

Every step of every example is one generated row, ``b * (K + 1) + j``: the
input with its ``j`` most important segments replaced (row 0 is the clean
input), made per chunk inside :func:`fastattr.engine.forward_rows`. ``K`` is
the most segments of any example; an example with fewer has its own curve
and area (rows past its last segment are evaluated and left out).

Per example where Quantus spans the batch: Quantus's ``"mean"`` (and
``"black"`` / ``"white"``) fill is the mean (min / max) of the whole
batch's current images, and it pads shorter curves with zeros before its
trapezoids (adding half the last value to their area); here each example
has its own fill and its own curve, so its score does not depend on its
batch. With one example per batch the two agree.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from .. import _validate as v
from .. import ops
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_PERTURBATION
from .deletion import ReplacedRows, prepare_curve_call, curve_outputs, ranks_of
from .infidelity import AttributionsOrExplainer
from .superpixels import segment_counts, slic

# The "uniform" fill values: the sub-stream of the perturbation purpose after ROAD's noise
# (fastattr.metrics.road.ROAD_NOISE_STREAM lists those below it).
IROF_UNIFORM_STREAM = PURPOSE_PERTURBATION * 65536 + 32768 + 99
FILLS = ("mean", "black", "white", "uniform")


class IROFCurve(NamedTuple):
    """IROF's curve and score per example."""

    values: Tensor  # float64 [B, K]: output after removing j + 1 segments over the clean output; 0 past K_b
    aoc: Tensor  # float64 [B]: K_b minus the trapezoidal area under the example's K_b values
    segment_counts: Tensor  # int64 [B]: K_b, the segments of each example


def check_segments(segments: Tensor, x: Tensor) -> Tensor:
    """``segments`` checked: integer ``[B, H, W]`` on ``x``'s device, each
    example's labels exactly ``0 .. K_b - 1`` with ``K_b >= 2``. Returns int64."""
    b, _, h, w = x.shape
    if not isinstance(segments, Tensor) or segments.is_floating_point() or segments.dtype == torch.bool:
        raise TypeError(f"segments: expected an integer tensor [{b}, {h}, {w}], got "
                        f"{getattr(segments, 'dtype', type(segments).__name__)}")
    if tuple(segments.shape) != (b, h, w):
        raise ValueError(f"segments: expected shape [{b}, {h}, {w}] (a label per pixel), got {tuple(segments.shape)}")
    if segments.device != x.device:
        raise ValueError(f"segments: on {segments.device}, expected {x.device} like the inputs")
    segments = segments.long()
    flat = segments.reshape(b, -1)
    if bool((flat < 0).any()):
        raise ValueError("segments: labels must be >= 0")
    k = segment_counts(segments)
    present = torch.zeros(b, int(k.max()), dtype=torch.bool, device=x.device).scatter_(1, flat, True)
    if not bool((present.sum(1) == k).all()):
        raise ValueError("segments: each example's labels must be 0 .. K-1 with none missing")
    _check_two_segments(k)
    return segments


def _check_two_segments(k: Tensor) -> None:
    if bool((k < 2).any()):
        raise ValueError(f"segments: example {int((k < 2).nonzero()[0])} has a single segment; IROF needs at "
                         "least two (Quantus asserts it too)")


def _mean_fills(x: Tensor, segments: Tensor, order: Tensor) -> Tensor:
    """float64 ``[B, K]``: the fill of each removal step under Quantus's
    ``"mean"``, per example: the mean of the image as it is before that step,
    removed segments holding their own fills.

    With ``N`` elements, ``T`` their sum, ``n_j`` / ``S_j`` the element count /
    sum of the ``j``-th removed segment: ``f_0 = T / N`` and
    ``f_{j+1} = (1 + n_j / N) f_j - S_j / N``, solved in closed form:
    ``f_j = P_j (f_0 - sum_{i<j} (S_i / N) / P_{i+1})``, ``P_j = prod_{i<j} (1 + n_i / N)``
    (``P_j <= e``: no growth).
    """
    b, c = x.shape[:2]
    k = order.shape[1]
    flat = x.double().reshape(b, c, -1).sum(1)  # per pixel, over channels
    labels = segments.reshape(b, -1)
    n_elements = flat.shape[1] * c
    sums = torch.zeros(b, k, dtype=torch.float64, device=x.device).scatter_add_(1, labels, flat).gather(1, order)
    sizes = torch.zeros(b, k, dtype=torch.float64, device=x.device).scatter_add_(
        1, labels, torch.full_like(flat, float(c))).gather(1, order)
    growth = torch.cumprod(torch.cat((torch.ones_like(sizes[:, :1]), 1 + sizes / n_elements), 1), 1)  # P_0 .. P_K
    first = flat.sum(1, keepdim=True) / n_elements
    taken = torch.cumsum(sums / n_elements / growth[:, 1:], 1)
    return growth[:, :k] * (first - torch.cat((torch.zeros_like(taken[:, :1]), taken[:, :-1]), 1))


def irof(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    segments: Optional[Tensor] = None,
    baseline: Union[str, float] = "mean",
    output: str = "probability",
    seed: int = 0,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    n_segments: int = 100,
    compactness: float = 10.0,
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Any] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> IROFCurve:
    """IROF per example: segments removed in descending order of their mean
    attribution, one more per step, the output relative to the clean one.

    Args:
        model: maps ``[n, C, H, W]`` (and ``additional_forward_args``) to
            ``[n, classes]`` (or one value per row with ``output="logit"``).
        inputs: images ``[B, C, H, W]``.
        attributions: ``[B, *Fa]`` broadcastable to ``inputs`` (a segment's
            importance is the mean over its pixels and the broadcast
            channels), or the explainer that makes them. Ties between
            segment means keep label order (a stable sort).
        target: None, a class, or one class per example.
        segments: int ``[B, H, W]``, labels ``0 .. K_b - 1`` per example, or
            None for :func:`fastattr.metrics.superpixels.slic` with
            ``n_segments`` and ``compactness`` (Quantus's segmentation).
        baseline: what a removed segment takes: ``"mean"`` (the mean of the
            example's image just before the step, Quantus's default),
            ``"black"`` / ``"white"`` (the example's minimum / maximum),
            ``"uniform"`` (per element, uniform in ``[uniform_low,
            uniform_high)``, keyed by ``(seed, IROF_UNIFORM_STREAM,
            example_offset + b, element)``) or a number.
        output: ``"probability"`` (softmax, Quantus's ``softmax=True``) or ``"logit"``.
        memory_budget, chunk_rows: bytes and an optional row cap per forward chunk.
        example_offset: example ``b``'s uniform fill (and a random
            explainer's draws) are keyed as example ``example_offset + b``.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        :class:`IROFCurve` (``values`` ``[B, K]``, ``aoc`` ``[B]``,
        ``segment_counts`` ``[B]``).
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError(f"inputs: IROF segments images [B, C, H, W], got "
                         f"{tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}")
    if isinstance(baseline, str):
        v.check_choice(baseline, "baseline", FILLS)
    elif isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not math.isfinite(baseline):
        raise ValueError(f"baseline: expected one of {list(FILLS)} or a finite number, got {baseline!r}")
    if baseline == "uniform":
        check_seed(seed)
        for name, value in (("uniform_low", uniform_low), ("uniform_high", uniform_high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if segments is not None:
        segments = check_segments(segments, inputs)
    x, attrs, target, args, evaluated, memory_budget, chunk_rows = prepare_curve_call(
        model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
        memory_budget, chunk_rows, example_offset, model_form=model_form)
    b, c, h, w = x.shape
    if segments is None:
        segments = slic(x, n_segments=n_segments, compactness=compactness, memory_budget=memory_budget)
        _check_two_segments(segment_counts(segments))
    counts = segment_counts(segments)
    k = int(counts.max())
    labels = segments.reshape(b, -1)
    # Mean attribution of each segment over its pixels and channels; absent labels sort last.
    per_pixel = attrs.expand(x.shape).double().reshape(b, c, -1).sum(1)
    totals = torch.zeros(b, k, dtype=torch.float64, device=x.device).scatter_add_(1, labels, per_pixel)
    sizes = torch.zeros(b, k, dtype=torch.float64, device=x.device).scatter_add_(
        1, labels, torch.full_like(per_pixel, float(c)))
    means = torch.where(torch.arange(k, device=x.device) < counts.unsqueeze(1), totals / sizes, -math.inf)
    order = torch.sort(means, dim=1, descending=True, stable=True).indices
    pixel_ranks = ranks_of(order).long().gather(1, labels)  # [B, H * W]: the step removing each pixel
    step_size = 0
    if baseline == "mean":
        fill, step_size = _mean_fills(x, segments, order).to(x.dtype), 1
    elif baseline in ("black", "white"):
        flat = x.reshape(b, -1)
        fill = (flat.amin(1) if baseline == "black" else flat.amax(1)).view(b, 1, 1, 1)
    elif baseline == "uniform":
        z = ops.generate_rows(torch.zeros(x.shape, dtype=torch.float64, device=x.device), None, None, 1,
                              "uniform", 1.0, seed, IROF_UNIFORM_STREAM, 0, b, example_offset)
        fill = (uniform_low + (uniform_high - uniform_low) * ((z + 1.0) / 2.0)).to(x.dtype)
    else:
        fill = torch.full((1, 1, 1, 1), float(baseline), dtype=x.dtype, device=x.device)
    steps = torch.arange(k + 1, dtype=torch.int64, device=x.device)  # segments removed at each row
    rows = ReplacedRows(x, fill, pixel_ranks, (1, h, w), steps, step_size)
    outputs = curve_outputs(evaluated, rows, x, target, args, memory_budget, chunk_rows)
    inside = torch.arange(k, device=x.device) < counts.unsqueeze(1)
    values = torch.where(inside, outputs[:, 1:] / outputs[:, :1], 0.0)
    last = values.gather(1, (counts - 1).unsqueeze(1)).squeeze(1)
    area = values.sum(1) - 0.5 * (values[:, 0] + last)
    return IROFCurve(values, counts.to(torch.float64) - area, counts)
