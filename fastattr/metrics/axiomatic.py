"""Axioms an explanation should satisfy, as Quantus 0.6's axiomatic metrics:
completeness (Sundararajan et al. 2017), non-sensitivity (Nguyen and
Martinez 2020) and input invariance (Kindermans et al. 2017).

Model rows run through :func:`fastattr.engine.forward_rows` in budgeted
chunks (completeness: the input and its baseline; non-sensitivity: the input
and one row per replaced group of features, made per chunk, never all at
once); input invariance explains a mean-shifted copy of the model with any
explainer. Replacement values follow Quantus's ``perturb_baseline``
(``"black"``/``"white"``/``"mean"`` of the example, ``"uniform"`` keyed draws,
a number or a tensor).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import _validate as v
from ..engine import PURPOSE_PERTURBATION, forward_rows, row_examples
from ._explain import Explainer, ExplainerType
from .deletion import Baseline, flipping_fill, prepare_curve_call
from .infidelity import AttributionsOrExplainer, check_model

_NAMED_BASELINES = ("black", "white", "mean", "uniform")
# Keyed "uniform" fill values: sub-streams of the perturbation purpose above
# every per-input stream (< 32768), pixel flipping's (32768) and the
# faithfulness metrics' (32768 + 0 .. 95).
COMPLETENESS_FILL_STREAM = PURPOSE_PERTURBATION * 65536 + 32768 + 96  # one per example
NON_SENSITIVITY_FILL_STREAM = PURPOSE_PERTURBATION * 65536 + 32768 + 97  # one per (example, group)


def _replacement(baseline: Baseline, x: Tensor, n_steps: int, seed: int, uniform_low: float, uniform_high: float,
                 example_offset: int, stream: int) -> Tuple[Tensor, bool]:
    """``(fill, per_step)``: the values that replace features, as pixel
    flipping's (``"black"``, ``"white"``, keyed ``"uniform"`` per (example,
    step) in a table ``[B, n_steps]`` drawn on ``stream``, a number or a
    tensor) plus ``"mean"``: the example's mean, fixed here because every
    perturbed row starts from the input."""
    if isinstance(baseline, str) and v.check_choice(baseline, "baseline", _NAMED_BASELINES) == "mean":
        mean = x.reshape(x.shape[0], -1).to(torch.float64).mean(1).to(x.dtype)
        return mean.view(-1, *([1] * (x.dim() - 1))), False
    return flipping_fill(baseline, x, n_steps, seed, uniform_low, uniform_high, example_offset, stream)


def _prepare_replacing(model: Any, inputs: Any, attributions: AttributionsOrExplainer, target: Any, output: str,
                       additional_forward_args: Any, explainer_kwargs: Any, memory_budget: Any, chunk_rows: Any,
                       example_offset: int, baseline: Baseline, seed: int, uniform_low: float, uniform_high: float,
                       stream: int, n_steps: Callable[[Tensor], int], model_form: str):
    """The curves' checked arguments (:func:`~fastattr.metrics.deletion.prepare_curve_call`,
    the model in ``model_form``) plus ``(fill, per_step)`` of :func:`_replacement` with ``n_steps(x)``
    columns, made (so checked) before an explainer given as ``attributions`` runs."""
    made = []

    def validate(x: Tensor) -> None:
        made.append(_replacement(baseline, x, n_steps(x), seed, uniform_low, uniform_high, example_offset, stream))

    prepared = prepare_curve_call(model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
                        memory_budget, chunk_rows, example_offset, validate, model_form)
    return (*prepared, *made[0])


def completeness(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    baseline: Baseline = "black",
    output: str = "logit",
    output_func: Optional[Callable[[Tensor], Tensor]] = None,
    seed: int = 0,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Completeness gap: float64 ``[B]``, ``sum(a) - output_func(f(x)[t] -
    f(x_base)[t])`` where ``x_base`` has every feature replaced by
    ``baseline``; 0 where the explanation is complete (Quantus's
    ``Completeness`` scores ``gap == 0``).

    Args:
        model: maps ``[n, *F]`` (and ``additional_forward_args``) to ``[n, C]``
            (or ``[n]`` with ``output="logit"``).
        inputs: ``[B, *F]``.
        attributions: ``[B, *Fa]`` with ``Fa`` broadcastable to ``F`` (summed
            as given), or the explainer that makes them (run once; options in
            ``explainer_kwargs``).
        target: None, a class, or one class per example.
        baseline: ``"black"`` / ``"white"`` / ``"mean"`` (the example's
            min / max / mean), ``"uniform"`` (one keyed value per example in
            ``[uniform_low, uniform_high)``, on ``COMPLETENESS_FILL_STREAM``),
            a number, or a tensor broadcastable to ``inputs``.
        output: ``"logit"`` (raw output) or ``"probability"`` (softmax).
        output_func: applied to the float64 output differences ``[B]``
            (default: identity).
        seed, example_offset: key of the ``"uniform"`` draws (and of a random
            explainer's), example ``b`` keyed as ``example_offset + b``.
        memory_budget, chunk_rows: bytes and an optional row cap per forward chunk.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    if output_func is not None and not callable(output_func):
        raise TypeError(f"output_func: expected a callable, got {type(output_func).__name__}")
    x, attrs, target, args, evaluated, memory_budget, chunk_rows, fill, per_step = _prepare_replacing(
        model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs, memory_budget,
        chunk_rows, example_offset, baseline, seed, uniform_low, uniform_high, COMPLETENESS_FILL_STREAM,
        lambda x: 1, model_form)
    batch = x.shape[0]
    base = (fill.view(batch, *([1] * (x.dim() - 1))) if per_step else fill).expand(x.shape)

    def rows_for(r0: int, r1: int) -> Tuple[Tensor]:
        # Row 2b is example b, row 2b + 1 its baseline.
        examples = row_examples(r0, r1, 2, x.device)
        is_base = (torch.arange(r0, r1, device=x.device) % 2 == 1).view(-1, *([1] * (x.dim() - 1)))
        return (torch.where(is_base, base.index_select(0, examples), x.index_select(0, examples)),)

    out = forward_rows(evaluated, rows_for, 2 * batch, 2, (x,), target, args, memory_budget, chunk_rows)
    out = out.view(batch, 2)
    change = out[:, 0] - out[:, 1]
    if output_func is not None:
        change = output_func(change)
        if not isinstance(change, Tensor) or change.shape != (batch,):
            raise ValueError(f"output_func: expected it to return a tensor [{batch}], got "
                             f"{tuple(getattr(change, 'shape', ())) or type(change).__name__}")
    return attrs.reshape(batch, -1).to(torch.float64).sum(1) - change.to(torch.float64)


class _GroupReplacedRows:
    """``rows_for`` of :func:`forward_rows` for non-sensitivity, ``K + 1`` rows
    per example: row ``b * (K + 1)`` is example ``b``, row ``b * (K + 1) + 1 + k``
    the example with its flat features ``[k * step, (k + 1) * step)`` replaced
    by ``fill`` (``[1 or B, *F]``, or a table ``[B, K]`` of one value per step)."""

    def __init__(self, x: Tensor, fill: Tensor, per_step: bool, step: int, n_groups: int):
        self.x, self.fill, self.per_step = x, fill, per_step
        self.step, self.per_example = step, n_groups + 1
        self.group = torch.arange(x[0].numel(), device=x.device) // step  # [D]

    def __call__(self, r0: int, r1: int) -> Tuple[Tensor]:
        n, x = r1 - r0, self.x
        d = x[0].numel()
        examples = row_examples(r0, r1, self.per_example, x.device)
        group = torch.arange(r0, r1, device=x.device) % self.per_example - 1  # -1: the clean row
        rows = x.index_select(0, examples).reshape(n, d)
        # Only each row's own group is written: a mask over every feature of
        # every row cost as much as the model's forward on small conv nets.
        # Positions past the last feature (a short last group) repeat the
        # group's first one, and a clean row rewrites its first feature with
        # its own value: duplicate positions of a row get the same value.
        first = group.clamp(min=0).unsqueeze(1) * self.step  # [n, 1]
        cols = first + torch.arange(self.step, device=x.device)
        cols = torch.where(cols < d, cols, first)  # [n, step]
        if self.per_step:
            fill = self.fill.index_select(0, examples).gather(1, group.clamp(min=0).unsqueeze(1)).expand(n, self.step)
        else:
            table = self.fill.broadcast_to((self.fill.shape[0], *x.shape[1:])).reshape(self.fill.shape[0], d)
            owner = examples if table.shape[0] > 1 else torch.zeros_like(examples)
            fill = table[owner.unsqueeze(1), cols]
        values = torch.where(group.unsqueeze(1) >= 0, fill.to(rows.dtype), rows.gather(1, cols))
        return (rows.scatter_(1, cols, values).view(n, *x.shape[1:]),)


def non_sensitivity(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    eps: float = 1e-5,
    features_in_step: int = 1,
    baseline: Baseline = "black",
    output: str = "probability",
    seed: int = 0,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Non-sensitivity: int64 ``[B]``, how many features break the axiom
    "a feature that does not change the output has zero attribution": the
    flat features of the input are replaced by ``baseline`` in consecutive
    groups of ``features_in_step``, one group per row; feature ``j`` counts
    when exactly one of ``|f(x)[t] - f(x with j's group replaced)[t]| < eps``
    and ``a_j < eps`` holds.

    With ``features_in_step = 1`` (or one group of all features) this is
    Quantus's ``NonSensitivity``; for other steps Quantus 0.6 fails (it
    compares ``[B, groups]`` with ``[B, features]``) and here each feature
    takes its group's output change.

    Args:
        model, inputs, target, output, additional_forward_args,
            explainer_kwargs, memory_budget, chunk_rows, model_form: as :func:`completeness`
            (``output`` defaults to ``"probability"``, Quantus's ``softmax=True``).
        attributions: ``[B, *Fa]`` broadcastable to ``inputs`` (broadcast, as
            Quantus), or an explainer.
        eps: the threshold of both tests; ``a_j < eps`` is compared in the
            attributions' dtype (as NumPy does), the output change in float64.
        features_in_step: features per group (>= 1; the last group may be short).
        baseline: as :func:`completeness`; ``"uniform"`` draws one value per
            (example, group), on ``NON_SENSITIVITY_FILL_STREAM``.
        seed, example_offset: as :func:`completeness`.
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise ValueError(f"eps: expected a finite number, got {eps!r}")
    step = v.check_positive_int(features_in_step, "features_in_step")
    x, attrs, target, args, evaluated, memory_budget, chunk_rows, fill, per_step = _prepare_replacing(
        model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs, memory_budget,
        chunk_rows, example_offset, baseline, seed, uniform_low, uniform_high, NON_SENSITIVITY_FILL_STREAM,
        lambda x: -(-x[0].numel() // step), model_form)
    batch, n_features = x.shape[0], x[0].numel()
    n_groups = -(-n_features // step)
    rows = _GroupReplacedRows(x, fill, per_step, step, n_groups)
    out = forward_rows(evaluated, rows, batch * (n_groups + 1), n_groups + 1, (x,), target, args,
                       memory_budget, chunk_rows).view(batch, n_groups + 1)
    unchanged = (out[:, 1:] - out[:, :1]).abs() < eps  # [B, groups]
    unattributed = attrs.expand(x.shape).reshape(batch, -1) < eps  # [B, D]
    return (unchanged.index_select(1, rows.group) ^ unattributed).sum(1)


def _first_leaf(model: nn.Module) -> nn.Module:
    """The first module without children in ``model.modules()`` order (the
    model's first layer as Quantus picks it, ``named_modules()[1]``, when that is a leaf)."""
    return next(m for m in model.modules() if next(m.children(), None) is None)


def mean_shifted_model(model: nn.Module, input_shift: float, input_shape: Sequence[int]) -> nn.Module:
    """A copy of ``model`` whose first layer absorbs a constant shift of its
    input (Quantus's ``add_mean_shift_to_first_layer``): with ``z = W * d``
    the first layer's output on the constant input ``d = input_shift`` of
    ``input_shape``, each output channel's bias ``b`` becomes ``2 b - min z``
    (``b - W m`` where the layer sees no padding), so ``copy(x + shift)``
    equals ``model(x)`` up to border effects. ``model`` is not modified.

    Args:
        model: an ``nn.Module`` whose first leaf module (e.g. a ``Conv2d`` or
            ``Linear``) has a bias with one value per output channel (dim 1).
        input_shift: the shift (a finite number).
        input_shape: the shape of one input row, ``[1, *F]``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module (its first layer's bias is shifted), got "
                        f"{type(model).__name__}")
    if isinstance(input_shift, bool) or not isinstance(input_shift, (int, float)) or not math.isfinite(input_shift):
        raise ValueError(f"input_shift: expected a finite number, got {input_shift!r}")
    layer = _first_leaf(model)
    bias = getattr(layer, "bias", None)
    if not isinstance(bias, Tensor) or bias.dim() != 1:
        raise ValueError(f"model: its first layer {type(layer).__name__} has no bias with one value per "
                         "output channel to absorb the input shift")
    shifted = copy.deepcopy(model)
    layer = _first_leaf(shifted)
    with torch.no_grad():
        constant = torch.full(tuple(input_shape), float(input_shift), dtype=layer.bias.dtype,
                              device=layer.bias.device)
        z = layer(constant)[0]
        if z.shape[0] != layer.bias.shape[0]:
            raise ValueError(f"model: the first layer's output has {z.shape[0]} channels at dim 1, its bias "
                             f"{layer.bias.shape[0]}")
        layer.bias.copy_(2 * layer.bias - z.reshape(z.shape[0], -1).amin(1))
    return shifted


def all_close(a: Tensor, b: Tensor, atol: float = 1e-4, rtol: float = 1e-5) -> Tensor:
    """bool ``[B]``: whether every element of ``a[i]`` is within
    ``atol + rtol * |b[i]|`` of ``b[i]`` (``numpy.isclose``, in the tensors'
    promoted dtype; ``a`` ``[B, *A]`` and ``b`` broadcast to one shape)."""
    if a.dim() != b.dim() or a.shape[0] != b.shape[0] or any(
            p != q and 1 not in (p, q) for p, q in zip(a.shape, b.shape)):
        raise ValueError(f"a, b: expected [B, ...] tensors of broadcastable shapes, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = torch.broadcast_tensors(a.to(dtype), b.to(dtype))
    return ((a - b).abs() <= atol + rtol * b.abs()).reshape(a.shape[0], -1).all(1)


def input_invariance(
    model: nn.Module,
    inputs: Tensor,
    explainer: ExplainerType = "saliency",
    target: v.TargetType = None,
    input_shift: float = -1.0,
    attributions: Optional[Tensor] = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Input invariance: bool ``[B]``, whether the explanation of ``x + shift``
    on the mean-shifted model (:func:`mean_shifted_model`, which computes the
    same function of ``x``) equals the explanation of ``x`` on ``model``,
    elementwise within ``atol + rtol * |shifted|``.

    Args:
        model: an ``nn.Module`` whose first layer has a bias.
        inputs: ``[B, *F]``.
        explainer: a fastattr explainer (function or name) or a callable with
            its signature; options in ``explainer_kwargs``. A random one draws
            the same keyed noise for both explanations.
        target: None, a class, or one class per example.
        input_shift: the constant added to every input feature.
        attributions: the explanation of ``inputs`` if already made
            (``[B, *F]``; None: the explainer makes it).
        atol, rtol: as ``numpy.isclose`` (Quantus's ``atol=1e-4``, NumPy's ``rtol``).
        memory_budget, example_offset: passed to the explainer.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).
    """
    check_model(model)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    (x,), _ = v.format_inputs(inputs)
    if attributions is not None and (not isinstance(attributions, Tensor) or attributions.dim() != x.dim()
                                     or attributions.shape[0] != x.shape[0]
                                     or not v.broadcasts_to(attributions.shape, x.shape)):
        got = tuple(getattr(attributions, "shape", ())) or type(attributions).__name__
        raise ValueError(f"attributions: expected a tensor [{x.shape[0]}, ...] broadcastable to the inputs' "
                         f"{tuple(x.shape)}, got {got}")
    explain = Explainer(explainer, explainer_kwargs, model_form)
    shifted = mean_shifted_model(model, input_shift, (1, *x.shape[1:]))
    if attributions is None:
        (attributions,) = explain(model, (x,), False, target, additional_forward_args, memory_budget, example_offset)
    (moved,) = explain(shifted, (x.detach() + input_shift,), False, target, additional_forward_args, memory_budget,
                       example_offset)
    return all_close(attributions.detach(), moved.detach(), atol, rtol)
