"""Deletion and insertion curves (Petsiuk et al. 2018, RISE) and pixel
flipping (Bach et al. 2015, as Quantus's ``PixelFlipping``): the model's
target output as features are removed from (or added to) the input in
attribution order, most important first.

Every curve point of every example is one generated row: example ``b``,
point ``k`` is row ``b * K + k``, the input with the features of rank
``< counts[k]`` taken from ``fill`` and the rest from ``source``. The rows
are made per chunk inside :func:`fastattr.engine.forward_rows`, never all
at once.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_PERTURBATION, forward_rows, row_examples
from ..engine.draws import group_uniforms
from ..engine.model_form import check_model_form
from .formed_model import FormedModel
from .infidelity import AttributionsOrExplainer, check_model, resolve_attributions
from .ordering import check_order, stable_order

OUTPUTS = ("probability", "logit")
# Pixel flipping's uniform fill values: a sub-stream of the perturbation
# purpose that no per-input stream (index < 32768) uses.
PIXEL_FLIPPING_STREAM = PURPOSE_PERTURBATION * 65536 + 32768
Baseline = Union[float, Tensor, str]


class Curve(NamedTuple):
    """A curve per example and its area."""

    values: Tensor  # float64 [B, K]: the target output at each point
    auc: Tensor  # float64 [B]: trapezoidal area under ``values``


def softmax_outputs(model: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``model`` followed by a softmax over its classes (dim 1)."""

    def probabilities(*args: Any) -> Tensor:
        out = model(*args)
        if not isinstance(out, Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"output: 'probability' needs a model with [B, C] outputs, got {shape}; use 'logit'")
        return torch.softmax(out, dim=1)

    probabilities.model = model  # type: ignore[attr-defined]  # the engine finds the module behind it (train mode)
    return probabilities


def descending_order(attributions: Tensor) -> Tensor:
    """int64 ``[B, Fa]``: each example's attribution elements from the largest
    down; ties in element order (a stable sort)."""
    return stable_order(attributions.reshape(attributions.shape[0], -1), descending=True)


def ranks_of(order: Tensor) -> Tensor:
    """``[B, Fa]``: the rank of each element in ``order`` (its inverse
    permutation), int32 where it fits (a chunk gathers one row per point)."""
    dtype = torch.int32 if order.shape[1] < 2**31 else torch.int64
    ranks = torch.empty(order.shape, dtype=dtype, device=order.device)
    positions = torch.arange(order.shape[1], dtype=dtype, device=order.device)
    return ranks.scatter_(1, order, positions.expand(order.shape))


class ReplacedRows:
    """``rows_for`` of :func:`forward_rows`: row ``b * K + k`` is ``source[b]``
    with the features of rank ``< counts[k]`` replaced by ``fill[b]``.

    ``ranks`` ``[B, Fa]`` (any integers: equal ranks move together) and
    ``counts`` int64 ``[K]``. ``fill`` is ``[1 or B, *F]``, or, per
    replacement step, a table ``[B, T]`` whose value
    ``[b, rank // step_size + fill_offsets[k]]`` fills an element of that rank
    at point ``k`` (``fill_offsets`` int64 ``[K]``, default 0; every element's
    index must lie in ``[0, T)``, replaced or not).
    """

    def __init__(self, source: Tensor, fill: Tensor, ranks: Tensor, feature_shape: Tuple[int, ...],
                 counts: Tensor, step_size: int = 0, fill_offsets: Optional[Tensor] = None):
        self.source, self.fill, self.ranks = source, fill, ranks
        self.feature_shape, self.counts, self.step_size = feature_shape, counts, step_size
        self.fill_offsets = fill_offsets
        self.points = counts.shape[0]

    def __call__(self, r0: int, r1: int) -> Tuple[Tensor]:
        n = r1 - r0
        examples = row_examples(r0, r1, self.points, self.source.device)
        ranks = self.ranks.index_select(0, examples)  # [n, Fa]
        points = torch.arange(r0, r1, device=self.source.device) % self.points
        # The bound in the ranks' dtype: an int64 bound would promote (copy) them all.
        bound = self.counts.index_select(0, points).to(ranks.dtype).unsqueeze(1)
        replaced = (ranks < bound).view(n, *self.feature_shape)
        if self.step_size:
            steps = (ranks // self.step_size).long()
            if self.fill_offsets is not None:
                steps += self.fill_offsets.index_select(0, points).unsqueeze(1)
            fill = self.fill.index_select(0, examples).gather(1, steps)
            fill = fill.view(n, *self.feature_shape)
        else:
            fill = self.fill if self.fill.shape[0] == 1 else self.fill.index_select(0, examples)
        source = self.source if self.source.shape[0] == 1 else self.source.index_select(0, examples)
        return (torch.where(replaced, fill, source),)


def prepare_curve_call(model: Any, inputs: Any, attributions: AttributionsOrExplainer, target: Any, output: str,
                       additional_forward_args: Any, explainer_kwargs: Any, memory_budget: Any, chunk_rows: Any,
                       example_offset: int = 0, validate: Optional[Callable[[Tensor], Any]] = None,
                       model_form: str = "eager"):
    """Checked arguments shared by every curve: ``(x, attrs, target, args,
    model_for_output, memory_budget, chunk_rows)``. ``validate(x)`` runs the
    caller's own checks of the input before an explainer runs.
    ``model_for_output`` runs the model in ``model_form`` (a
    :class:`~fastattr.metrics.formed_model.FormedModel`), followed by a
    softmax for ``output="probability"``; the explainer runs in it too."""
    check_model(model)
    check_model_form(model_form)
    if isinstance(inputs, tuple):
        raise TypeError("inputs: expected one tensor [B, *F]; curves rank the features of a single input")
    (x,), _ = v.format_inputs(inputs)
    x = x.detach()
    v.check_choice(output, "output", OUTPUTS)
    memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
    chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")
    fmt_target = v.format_target(target, x.shape[0], x.device)
    args = v.format_additional_args(additional_forward_args, x.shape[0])
    if validate is not None:
        validate(x)
    if isinstance(attributions, Tensor):
        attrs = _broadcastable_attributions(attributions, x)
    else:
        (attrs,) = resolve_attributions(attributions, model, (x,), False, target, additional_forward_args,
                                        explainer_kwargs, memory_budget, example_offset, model_form)
    formed = FormedModel(model, model_form)
    evaluated = softmax_outputs(formed) if output == "probability" else formed
    return x, attrs, fmt_target, args, evaluated, memory_budget, chunk_rows


def _broadcastable_attributions(a: Tensor, x: Tensor) -> Tensor:
    """``a`` checked: ``[B, *Fa]`` with ``Fa`` broadcastable to the input's
    features (e.g. ``[B, 1, H, W]`` per pixel of ``[B, C, H, W]``), finite."""
    if not a.is_floating_point() and a.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"attributions: expected a numeric tensor, got {a.dtype}")
    if a.device != x.device:
        raise ValueError(f"attributions: on {a.device}, expected {x.device} like the inputs")
    if not (a.dim() == x.dim() and a.shape[0] == x.shape[0] and v.broadcasts_to(a.shape, x.shape)):
        raise ValueError(
            f"attributions: expected shape [{x.shape[0]}, ...] broadcastable to the input's "
            f"{tuple(x.shape)}, got {tuple(a.shape)}"
        )
    if not v._all_finite(a):
        raise ValueError("attributions: contains NaN or Inf")
    return a.detach()


def gaussian_blur(x: Tensor, sigma: float, kernel_size: int) -> Tensor:
    """``x`` ``[B, ..., H, W]`` blurred over its last two dims by a normalised
    ``kernel_size``-square Gaussian of std ``sigma``, zero-padded as RISE's
    blur (its 11 x 11, sigma 5 kernel is the default of the curves)."""
    if x.dim() < 3:
        raise ValueError(f"baseline: 'blur' needs inputs [B, ..., H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    offsets = torch.arange(kernel_size, dtype=torch.float64, device=x.device) - (kernel_size - 1) / 2
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = torch.outer(g, g)
    kernel = (kernel / kernel.sum()).to(x.dtype).view(1, 1, kernel_size, kernel_size)
    flat = x.reshape(-1, 1, h, w)
    return torch.nn.functional.conv2d(flat, kernel, padding=kernel_size // 2).reshape(x.shape)


def _baseline_tensor(baseline: Baseline, x: Tensor, blur_sigma: float, blur_kernel_size: int) -> Tensor:
    """The absent-feature values ``[1 or B, *F]``: a number, a tensor
    broadcastable to ``x``, or ``"blur"`` (a blurred copy of ``x``)."""
    if isinstance(baseline, str):
        v.check_choice(baseline, "baseline", ("blur",))
        if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float)) or not blur_sigma > 0 \
                or not math.isfinite(blur_sigma):
            raise ValueError(f"blur_sigma: expected a finite number > 0, got {blur_sigma!r}")
        if isinstance(blur_kernel_size, bool) or not isinstance(blur_kernel_size, int) \
                or blur_kernel_size < 1 or blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size: expected an odd integer >= 1, got {blur_kernel_size!r}")
        return gaussian_blur(x, float(blur_sigma), blur_kernel_size)
    (base,) = v.format_baselines(baseline, (x,), False)
    return base


def _fraction_counts(n_features: int, n_steps: Any, device: torch.device) -> Tensor:
    """int64 ``[n_steps + 1]``: features moved at each point, ``floor(k * Fa / n_steps)``."""
    n_steps = v.check_positive_int(n_steps, "n_steps")
    return torch.arange(n_steps + 1, dtype=torch.int64, device=device) * n_features // n_steps


def curve_outputs(model: Callable[..., Tensor], rows: ReplacedRows, x: Tensor, target: Any, args: Tuple[Any, ...],
                  memory_budget: Optional[int], chunk_rows: Optional[int]) -> Tensor:
    """float64 ``[B, K]``: the target output of every row of ``rows``, ``model``
    run as it is (a metric's model comes in its form: :func:`prepare_curve_call`)."""
    b, k = x.shape[0], rows.points
    out = forward_rows(model, rows, b * k, k, (x,), target, args, memory_budget, chunk_rows, model_form="eager")
    return out.view(b, k)


def _fraction_curve(remove: bool, model, inputs, attributions, target, n_steps, baseline, output,
                    additional_forward_args, explainer_kwargs, blur_sigma, blur_kernel_size,
                    memory_budget, chunk_rows, model_form) -> Curve:
    x, attrs, target, args, evaluated, memory_budget, chunk_rows = prepare_curve_call(
        model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
        memory_budget, chunk_rows, model_form=model_form)
    counts = _fraction_counts(attrs[0].numel(), n_steps, x.device)
    base = _baseline_tensor(baseline, x, blur_sigma, blur_kernel_size)
    ranks = ranks_of(descending_order(attrs))
    source, fill = (x, base) if remove else (base, x)
    values = curve_outputs(evaluated, ReplacedRows(source, fill, ranks, tuple(attrs.shape[1:]), counts),
                    x, target, args, memory_budget, chunk_rows)
    fractions = counts.to(torch.float64) / attrs[0].numel()
    return Curve(values, torch.trapezoid(values, fractions, dim=1))


def deletion_curve(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    n_steps: int = 20,
    baseline: Baseline = 0.0,
    output: str = "probability",
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    blur_sigma: float = 5.0,
    blur_kernel_size: int = 11,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    model_form: str = "fast",
) -> Curve:
    """Deletion curve: the target output as the most important features are
    removed (set to ``baseline``), ``floor(k * Fa / n_steps)`` of them at point
    ``k = 0 .. n_steps``; lower area is better.

    Args:
        model: maps ``[n, *F]`` (and ``additional_forward_args``) to ``[n, C]``
            (or ``[n]`` with ``output="logit"``).
        inputs: ``[B, *F]``.
        attributions: ``[B, *Fa]`` with ``Fa`` broadcastable to ``F`` (e.g. one
            value per pixel, ``[B, 1, H, W]``, removes all channels of the pixel),
            or the explainer that makes them (run once; options in ``explainer_kwargs``).
            Ties are removed in element order.
        target: None, a class, or one class per example.
        n_steps: points after the first (>= 1).
        baseline: value of removed features: a number, a tensor broadcastable
            to ``inputs``, or ``"blur"`` (``inputs`` blurred by a
            ``blur_kernel_size``-square Gaussian of std ``blur_sigma``).
        output: ``"probability"`` (softmax over classes) or ``"logit"`` (raw output).
        memory_budget, chunk_rows: bytes and an optional row cap per forward chunk.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        :class:`Curve`: ``values`` float64 ``[B, n_steps + 1]`` and ``auc``
        float64 ``[B]``, the trapezoidal area over the fraction of features moved.
    """
    return _fraction_curve(True, model, inputs, attributions, target, n_steps, baseline, output,
                           additional_forward_args, explainer_kwargs, blur_sigma, blur_kernel_size,
                           memory_budget, chunk_rows, model_form)


def insertion_curve(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    n_steps: int = 20,
    baseline: Baseline = "blur",
    output: str = "probability",
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    blur_sigma: float = 5.0,
    blur_kernel_size: int = 11,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    model_form: str = "fast",
) -> Curve:
    """Insertion curve: the target output as the most important features are
    put back into ``baseline`` (by default the blurred input),
    ``floor(k * Fa / n_steps)`` of them at point ``k = 0 .. n_steps``; higher
    area is better. Arguments and result as :func:`deletion_curve`.
    """
    return _fraction_curve(False, model, inputs, attributions, target, n_steps, baseline, output,
                           additional_forward_args, explainer_kwargs, blur_sigma, blur_kernel_size,
                           memory_budget, chunk_rows, model_form)


def flipping_fill(baseline: Any, x: Tensor, n_points: int, seed: int, uniform_low: float,
                  uniform_high: float, example_offset: int,
                  stream: int = PIXEL_FLIPPING_STREAM) -> Tuple[Tensor, bool]:
    """``(fill, per_step)``: Quantus's ``perturb_baseline`` as fill values:
    ``"black"``/``"white"`` the example's min/max ``[B, 1, ...]``, a number or
    tensor ``[1 or B, *F]``, or ``"uniform"`` a keyed table ``[B, n_points]``
    of one value per (example, step) in ``[uniform_low, uniform_high)``, drawn
    on ``stream`` (each metric its own)."""
    if isinstance(baseline, str):
        v.check_choice(baseline, "baseline", ("black", "white", "uniform"))
        if baseline == "uniform":
            check_seed(seed)
            for name, value in (("uniform_low", uniform_low), ("uniform_high", uniform_high)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"{name}: expected a finite number, got {value!r}")
            u, _ = group_uniforms(seed, stream, x.shape[0], n_points, x.device, example_offset)
            table = uniform_low + (uniform_high - uniform_low) * u
            return table.view(x.shape[0], n_points).to(x.dtype), True
        flat = x.reshape(x.shape[0], -1)
        value = flat.amin(1) if baseline == "black" else flat.amax(1)
        return value.view(-1, *([1] * (x.dim() - 1))), False
    (base,) = v.format_baselines(baseline, (x,), False)
    return base, False


def pixel_flipping(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    features_in_step: int = 1,
    baseline: Baseline = "black",
    output: str = "probability",
    seed: int = 0,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    order: Optional[Tensor] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Curve:
    """Pixel flipping as Quantus's ``PixelFlipping``: the attributions are
    broadcast to the input's shape and its elements replaced in descending
    order, ``features_in_step`` more at each of ``K = ceil(F / features_in_step)``
    points (no unperturbed point).

    Args:
        model, inputs, target, output, additional_forward_args,
            explainer_kwargs, memory_budget, chunk_rows: as :func:`deletion_curve`.
        attributions: ``[B, *Fa]`` broadcastable to ``inputs``, or an explainer.
        features_in_step: elements replaced per step (>= 1).
        baseline: Quantus's ``perturb_baseline``: ``"black"`` (the example's
            minimum), ``"white"`` (its maximum), ``"uniform"`` (one value per
            example and step, uniform in ``[uniform_low, uniform_high)``, keyed
            by ``(seed, PIXEL_FLIPPING_STREAM, example, step)``), a number or a
            tensor broadcastable to ``inputs``.
        order: int64 ``[B, F]``, the element order to use instead of the
            attributions' stable descending order (e.g. NumPy's ``argsort``
            to reproduce Quantus's tie order).
        example_offset: ``"uniform"`` fills of example ``b`` (and a random
            explainer's draws) are keyed as example ``example_offset + b``
            (its index in a data set).
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        :class:`Curve`: ``values`` float64 ``[B, K]`` and ``auc`` float64
        ``[B]`` (trapezoids of width 1, Quantus's ``return_auc_per_sample``).
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    x, attrs, target, args, evaluated, memory_budget, chunk_rows = prepare_curve_call(
        model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
        memory_budget, chunk_rows, example_offset, model_form=model_form)
    step = v.check_positive_int(features_in_step, "features_in_step")
    n_features = x[0].numel()
    n_points = -(-n_features // step)
    counts = (torch.arange(1, n_points + 1, dtype=torch.int64, device=x.device) * step).clamp_(max=n_features)
    fill, per_step = flipping_fill(baseline, x, n_points, seed, uniform_low, uniform_high, example_offset)
    if order is None:
        order = descending_order(attrs.expand(x.shape))
    else:
        order = check_order(order, x.shape[0], n_features, x.device)
    rows = ReplacedRows(x, fill, ranks_of(order), tuple(x.shape[1:]), counts,
                         step if per_step else 0)
    values = curve_outputs(evaluated, rows, x, target, args, memory_budget, chunk_rows)
    return Curve(values, torch.trapezoid(values, dx=1.0, dim=1))
