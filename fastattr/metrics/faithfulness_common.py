"""What the faithfulness metrics share: the correlations (SciPy's, per row),
the element order and its check, per-step attribution sums, and the checked
arguments with the fill values of the replaced elements, made before an
explainer given as the attributions runs."""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from ..engine import PURPOSE_PERTURBATION
from .deletion import Baseline, flipping_fill, prepare_curve_call
from .infidelity import AttributionsOrExplainer
from .ordering import check_order, stable_order
from .similarity import average_ranks, pearson

SIMILARITIES = ("pearson", "spearman")
# Sub-streams of the perturbation purpose above every per-input stream (< 32768)
# and pixel flipping's (32768): one per random choice of these metrics.
FAITHFULNESS_STREAMS = PURPOSE_PERTURBATION * 65536 + 32768


def row_correlation(a: Tensor, b: Tensor, similarity: str) -> Tensor:
    """float64 ``[R]``: the Pearson or Spearman (average ranks for ties)
    correlation of each row pair of ``[R, K]`` tensors, as SciPy's
    ``pearsonr`` / ``spearmanr`` per row: NaN where a row is constant (or
    ``K < 2``), clipped to ``[-1, 1]``."""
    x, y = a.to(torch.float64), b.to(torch.float64)
    if similarity == "spearman":
        x, y = average_ranks(x), average_ranks(y)
    # SciPy tests constancy exactly; a mean that rounds would hide it.
    constant = (x == x[:, :1]).all(1) | (y == y[:, :1]).all(1)
    return pearson(x, y).clamp(-1.0, 1.0).masked_fill(constant, math.nan)


def check_similarity(similarity: Any) -> str:
    """``similarity`` checked: one of :data:`SIMILARITIES`."""
    return v.check_choice(similarity, "similarity", SIMILARITIES)


def element_order(order: Optional[Tensor], attrs: Tensor, descending: bool) -> Tensor:
    """int64 ``[B, F]``: ``order`` (checked by :func:`check_order`) on the
    attributions' device, or the elements of ``attrs`` ``[B, *F]`` sorted
    stably, from the largest (``descending``) or from the smallest."""
    if order is not None:
        return order.to(attrs.device)
    flat = attrs.reshape(attrs.shape[0], -1)
    return stable_order(flat, descending)


class Prepared(NamedTuple):
    """The checked arguments of a metric that replaces input elements."""

    x: Tensor  # [B, *F]
    attrs: Tensor  # [B, *F]: the attributions expanded to the input's shape
    target: Any  # formatted
    args: Tuple[Any, ...]  # formatted additional_forward_args
    model: Callable[..., Tensor]  # the model in its form, followed by a softmax for output="probability"
    memory_budget: Optional[int]
    chunk_rows: Optional[int]
    fill: Tensor  # [1 or B, *F] values, or a keyed table [B, n_fill] with per_step
    per_step: bool


def prepare(model: Any, inputs: Any, attributions: AttributionsOrExplainer, target: Any, output: str,
            additional_forward_args: Any, explainer_kwargs: Any, memory_budget: Any, chunk_rows: Any,
            example_offset: int, baseline: Baseline, seed: int, uniform_low: float, uniform_high: float,
            stream: int, n_fill: Callable[[Tensor], int],
            check: Optional[Callable[[Tensor], None]] = None, model_form: str = "eager") -> Prepared:
    """The arguments checked, and the fill values (a keyed ``"uniform"`` table
    of ``n_fill(x)`` columns on ``stream``) made, before an explainer given as
    ``attributions`` runs; ``check(x)`` adds the metric's own checks. The
    model (and the explainer) run in ``model_form``."""
    made = []

    def validate(x: Tensor) -> None:
        if check is not None:
            check(x)
        made.append(flipping_fill(baseline, x, n_fill(x), seed, uniform_low, uniform_high, example_offset,
                                   stream))

    x, attrs, target, args, evaluated, memory_budget, chunk_rows = prepare_curve_call(
        model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
        memory_budget, chunk_rows, example_offset, validate, model_form)
    (fill, per_step), = made
    return Prepared(x, attrs.expand(x.shape), target, args, evaluated, memory_budget, chunk_rows, fill, per_step)


def step_sums(attrs: Tensor, order: Tensor, step: int) -> Tensor:
    """float64 ``[B, ceil(F / step)]``: per step ``k``, the sum of the
    attributions of elements ``order[:, k * step : (k + 1) * step]``.

    Args:
        attrs: ``[B, *F]``; order: int64 ``[B, F]``.
    """
    flat = attrs.reshape(attrs.shape[0], -1).to(torch.float64).gather(1, order)
    n_steps = -(-flat.shape[1] // step)
    padded = torch.nn.functional.pad(flat, (0, n_steps * step - flat.shape[1]))
    return padded.view(flat.shape[0], n_steps, step).sum(2)


def step_counts(n_features: int, step: int, n_steps: int, device: torch.device) -> Tensor:
    """int64 ``[n_steps]``: ``min((k + 1) * step, F)``, the elements moved up to step ``k``."""
    k = torch.arange(1, n_steps + 1, dtype=torch.int64, device=device)
    return (k * step).clamp_(max=n_features)


def steps_of(x: Tensor, step: int) -> int:
    """``ceil(F / step)``: the steps of ``step`` elements of an input ``[B, *F]``."""
    return -(-x[0].numel() // step)


def order_check(order: Optional[Tensor]) -> Callable[[Tensor], None]:
    """The check of an ``order`` argument (None or an int64 ``[B, F]``
    permutation per example) against an input ``[B, *F]``."""
    def check(x: Tensor) -> None:
        if order is not None:
            check_order(order, x.shape[0], x[0].numel(), x.device)
    return check


def prepend(value: int, t: Tensor) -> Tensor:
    """``t`` (1-D) with ``value`` in front."""
    return torch.cat((t.new_full((1,), value), t))


def check_features_in_step(features_in_step: Any) -> int:
    """``features_in_step`` checked: an integer >= 1."""
    return v.check_positive_int(features_in_step, "features_in_step")


def fill_values(fill: Tensor, per_step: bool, examples: Tensor, columns: Tensor, idx: Tensor) -> Tensor:
    """``[n, w]``: the fill of elements ``idx`` (int64 ``[n, w]``, flat indices)
    of rows of ``examples`` (int64 ``[n]``): from a keyed table ``[B, T]``
    (``per_step``: one value per row, its column ``columns[i]``) or from
    values ``[1 or B, F]`` per element."""
    if per_step:
        return fill[examples, columns].unsqueeze(1).expand(idx.shape)
    rows = fill if fill.shape[0] == 1 else fill.index_select(0, examples)
    return rows.expand(idx.shape[0], -1).gather(1, idx)


def flat_fill(fill: Tensor, per_step: bool, x: Tensor) -> Tensor:
    """The fill made by :func:`prepare` in the form :func:`fill_values` reads:
    a table as it is, values broadcast to the input's features as ``[1 or B, F]``."""
    if per_step:
        return fill
    return fill.expand(fill.shape[0], *x.shape[1:]).reshape(fill.shape[0], -1).to(x.dtype)


class WindowRows:
    """``rows_for`` of :func:`forward_rows`: row ``b * P + p`` is ``x[b]`` with
    the elements ``order[b, starts[p] : stops[p]]`` (at most ``width``) set
    to the fill (a keyed table: column ``columns[p]``); an empty window is
    ``x[b]`` itself. A row is a copy of its example and one scatter of at
    most ``width`` values, whatever the input size.

    Args:
        x: ``[B, *F]``; order: int64 ``[B, F]``; starts, stops, columns: int64 ``[P]``.
        fill, per_step: as made by :func:`prepare`.
    """

    def __init__(self, x: Tensor, order: Tensor, starts: Tensor, stops: Tensor, width: int, fill: Tensor,
                 per_step: bool, columns: Tensor):
        self.x, self.flat_x = x, x.reshape(x.shape[0], -1)
        self.flat_order = order.reshape(-1)
        self.starts, self.stops, self.columns = starts, stops, columns
        self.offsets = torch.arange(width, device=x.device)
        self.fill, self.per_step = flat_fill(fill, per_step, x), per_step
        self.points = starts.shape[0]

    def __call__(self, r0: int, r1: int) -> Tuple[Tensor]:
        device, n_features = self.x.device, self.flat_x.shape[1]
        examples = torch.arange(r0, r1, device=device) // self.points
        points = torch.arange(r0, r1, device=device) % self.points
        start, stop = self.starts.index_select(0, points), self.stops.index_select(0, points)
        # Positions past a window's end repeat its last element (the same value
        # scattered twice); an empty window reads (and writes back) element 0.
        last = torch.maximum(stop - 1, start).unsqueeze(1)
        pos = torch.minimum(start.unsqueeze(1) + self.offsets, last)
        idx = self.flat_order.take((examples * n_features).unsqueeze(1) + pos)
        rows = self.flat_x.index_select(0, examples)
        values = fill_values(self.fill, self.per_step, examples, self.columns.index_select(0, points), idx)
        values = torch.where((stop == start).unsqueeze(1), rows.gather(1, idx), values)
        return (rows.scatter_(1, idx, values).view(r1 - r0, *self.x.shape[1:]),)
