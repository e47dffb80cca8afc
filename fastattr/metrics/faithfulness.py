"""Faithfulness by feature removal, as Quantus 0.6 scores it: faithfulness
correlation (Bhatt et al. 2020), faithfulness estimate (Alvarez-Melis &
Jaakkola 2018) and Sensitivity-N (Ancona et al. 2018).

Each compares how much the attributions of some removed features add up to
with how much the target output drops when those features are replaced by a
baseline. Every perturbed copy of every example is one generated row, made
per chunk inside :func:`fastattr.engine.forward_rows`, never all at once.
Random choices (feature subsets, ``"uniform"`` fill values) are keyed by
``(seed, example_offset + b, ...)``, so an example's value does not depend on
its batch or on the chunking; only Sensitivity-N's correlation, which Quantus
takes across the examples of a batch, does.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..engine import forward_rows, row_examples
from ..ops import generate_rows
from .deletion import Baseline, ReplacedRows, curve_outputs, ranks_of
from .faithfulness_common import (
    FAITHFULNESS_STREAMS, WindowRows, check_features_in_step, check_similarity, element_order, fill_values,
    flat_fill, order_check, prepare, prepend, row_correlation, step_counts, step_sums, steps_of,
)
from .infidelity import AttributionsOrExplainer

CORRELATION_SUBSET_STREAM = FAITHFULNESS_STREAMS + 64  # faithfulness correlation's subsets
CORRELATION_FILL_STREAM = FAITHFULNESS_STREAMS + 65  # its "uniform" fill, one per (example, run)
ESTIMATE_FILL_STREAM = FAITHFULNESS_STREAMS + 66  # faithfulness estimate's, one per (example, step)
SENSITIVITY_N_FILL_STREAM = FAITHFULNESS_STREAMS + 67  # Sensitivity-N's, one per (example, step)


# ---------------------------------------------------------------------------
# Faithfulness correlation: random feature subsets
# ---------------------------------------------------------------------------


def _subset_indices(keys_like: Tensor, n_runs: int, subset_size: int, seed: int, r0: int, r1: int,
                    example_offset: int) -> Tensor:
    """int64 ``[r1 - r0, subset_size]``: the subsets of rows ``r0 .. r1-1``
    (row ``b * n_runs + n``): the ``subset_size`` elements with the smallest
    keyed uniform keys ``(seed, CORRELATION_SUBSET_STREAM, b, n, element)``,
    in increasing order: a uniform draw without replacement."""
    keys = generate_rows(keys_like, None, None, n_runs, "uniform", 1.0, seed, CORRELATION_SUBSET_STREAM,
                         r0, r1 - r0, example_offset)
    return smallest_keys(keys, subset_size)


def smallest_keys(keys: Tensor, k: int) -> Tensor:
    """int64 ``[R, k]``: per row of ``keys`` (``[R, N]``, uniform in
    ``[-1, 1)`` as ``"uniform"`` rows are made, ``k <= N``), the columns of
    its ``k`` smallest keys in increasing column order (of equal keys at the
    ``k``-th, the lowest columns).

    On the CPU, ``topk`` over whole rows costs several times more than
    finding the ``k``-th key among those under a threshold: a row has
    Binomial(N, t) of them, set to ``k`` plus 8 standard deviations on
    average, so a row with fewer (sorted whole) is all but unseen. Elsewhere
    whole rows are sorted: the threshold's sizes would cost host
    synchronisations."""
    rows, n = keys.shape
    if rows == 0 or k == 0:
        return torch.empty(rows, k, dtype=torch.int64, device=keys.device)
    if keys.device.type != "cpu":
        return _sorted_smallest(keys, k)
    below = (keys < -1.0 + 2.0 * (k + 8.0 * math.sqrt(k) + 8.0) / n).view(-1)
    counts = below.view(rows, n).sum(1)
    flat = below.nonzero().view(-1)
    row = flat.div(n, rounding_mode="floor")
    # Each row's keys under the threshold, packed to the left in column order
    # (nonzero is row-major), padded with 2 (above any key).
    width = max(int(counts.max()), k)
    at = row * width + torch.arange(flat.numel()) - (counts.cumsum(0) - counts).repeat_interleave(counts)
    packed = torch.full((rows * width,), 2.0, dtype=keys.dtype).index_copy_(
        0, at, keys.view(-1).index_select(0, flat)).view(rows, width)
    columns = torch.zeros(rows * width, dtype=torch.int64).index_copy_(0, at, flat - row * n).view(rows, width)
    chosen = packed <= packed.kthvalue(k, dim=1, keepdim=True).values
    # Not exactly k: equal keys at the k-th, or fewer than k under the threshold.
    off = (chosen.sum(1) != k) | (counts < k)
    if not bool(off.any()):
        return columns[chosen].view(rows, k)
    out = torch.empty(rows, k, dtype=torch.int64)
    on = ~off
    out[on] = columns[on][chosen[on]].view(-1, k)
    out[off] = _sorted_smallest(keys[off], k)
    return out


def _sorted_smallest(keys: Tensor, k: int) -> Tensor:
    """:func:`smallest_keys` by a stable sort of whole rows."""
    return keys.sort(dim=1, stable=True).indices[:, :k].sort(dim=1).values


def correlation_subsets(batch: int, n_features: int, n_runs: int, subset_size: int, seed: int,
                        device: torch.device, example_offset: int = 0) -> Tensor:
    """int64 ``[batch, n_runs, subset_size]``: the feature subsets that
    :func:`faithfulness_correlation` removes (Quantus draws them with
    ``np.random.choice(F, subset_size, replace=False)``)."""
    zeros = torch.zeros((), dtype=torch.float64, device=device).expand(batch, n_features)
    idx = _subset_indices(zeros, n_runs, subset_size, seed, 0, batch * n_runs, example_offset)
    return idx.view(batch, n_runs, subset_size)


class SubsetRows:
    """``rows_for`` of :func:`forward_rows`: row ``b * N + n`` is ``x[b]`` with
    the elements of its keyed subset set to the fill (as made by
    :func:`~fastattr.metrics.faithfulness_common.prepare`; a keyed table has a
    column per run); the attributions of each subset are summed (float64
    ``att_sums`` ``[B * N]``) on the way."""

    def __init__(self, x: Tensor, fill: Tensor, per_run: bool, attrs: Tensor, n_runs: int, subset_size: int,
                 seed: int, example_offset: int):
        self.x, self.flat_x, self.n_runs = x, x.reshape(x.shape[0], -1), n_runs
        self.fill, self.per_run = flat_fill(fill, per_run, x), per_run
        self.flat_attrs = attrs.reshape(x.shape[0], -1).to(torch.float64)
        self.subset_size, self.seed, self.example_offset = subset_size, seed, example_offset
        self.keys_like = torch.zeros((), dtype=torch.float64, device=x.device).expand(self.flat_attrs.shape)
        self.att_sums = torch.empty(x.shape[0] * n_runs, dtype=torch.float64, device=x.device)

    def __call__(self, r0: int, r1: int) -> Tuple[Tensor]:
        idx = _subset_indices(self.keys_like, self.n_runs, self.subset_size, self.seed, r0, r1,
                              self.example_offset)
        examples = row_examples(r0, r1, self.n_runs, self.x.device)
        runs = torch.arange(r0, r1, device=self.x.device) % self.n_runs
        flat_idx = (examples * self.flat_attrs.shape[1]).unsqueeze(1) + idx
        self.att_sums[r0:r1] = self.flat_attrs.take(flat_idx).sum(1)
        values = fill_values(self.fill, self.per_run, examples, runs, idx)
        rows = self.flat_x.index_select(0, examples).scatter_(1, idx, values)
        return (rows.view(r1 - r0, *self.x.shape[1:]),)


def faithfulness_correlation(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    n_runs: int = 100,
    subset_size: int = 224,
    baseline: Baseline = "black",
    output: str = "logit",
    similarity: str = "pearson",
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
    """Faithfulness correlation (Bhatt et al. 2020; Quantus's
    ``FaithfulnessCorrelation``): over ``n_runs`` random subsets ``S`` of
    ``subset_size`` input elements, the correlation of ``sum_S a`` with
    ``f(x)[t] - f(x with S replaced)[t]``.

    Args:
        model: maps ``[n, *F]`` (and ``additional_forward_args``) to ``[n, C]``
            (or ``[n]`` with ``output="logit"``).
        inputs: ``[B, *F]``.
        attributions: ``[B, *Fa]`` broadcastable to ``F`` (e.g. ``[B, 1, H, W]``:
            every channel of a pixel carries its value), or the explainer that
            makes them (run once; options in ``explainer_kwargs``).
        target: None, a class, or one class per example.
        n_runs: subsets per example (>= 1).
        subset_size: elements per subset, ``1 .. F``. Subset ``n`` of example
            ``b`` is :func:`correlation_subsets` (keyed by ``(seed, b, n)``).
        baseline: value of the replaced elements: ``"black"`` / ``"white"``
            (the example's min / max), ``"uniform"`` (one value per example and
            run in ``[uniform_low, uniform_high)``, keyed), a number or a tensor
            broadcastable to ``inputs``.
        output: ``"logit"`` (raw output) or ``"probability"`` (softmax over classes).
        similarity: ``"pearson"`` or ``"spearman"``.
        memory_budget, chunk_rows: bytes and an optional row cap per forward chunk.
        example_offset: example ``b``'s draws are keyed as example ``example_offset + b``.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        float64 ``[B]`` (NaN where the sums or the output changes are constant).
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    n_runs = v.check_positive_int(n_runs, "n_runs")
    subset_size = v.check_positive_int(subset_size, "subset_size")
    check_similarity(similarity)
    check_seed(seed)

    def check(x: Tensor) -> None:
        if subset_size > x[0].numel():
            raise ValueError(f"subset_size: expected at most the {x[0].numel()} input elements, got {subset_size}")

    p = prepare(model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
                memory_budget, chunk_rows, example_offset, baseline, seed, uniform_low, uniform_high,
                CORRELATION_FILL_STREAM, lambda x: n_runs, check, model_form)
    x, batch = p.x, p.x.shape[0]
    clean = forward_rows(p.model, lambda r0, r1: (x[r0:r1],), batch, 1, (x,), p.target, p.args,
                         p.memory_budget, p.chunk_rows)
    rows = SubsetRows(x, p.fill, p.per_step, p.attrs, n_runs, subset_size, seed, example_offset)
    perturbed = forward_rows(p.model, rows, batch * n_runs, n_runs, (x,), p.target, p.args, p.memory_budget,
                             p.chunk_rows).view(batch, n_runs)
    return row_correlation(rows.att_sums.view(batch, n_runs), clean.unsqueeze(1) - perturbed, similarity)


# ---------------------------------------------------------------------------
# Faithfulness estimate and Sensitivity-N: attribution-ordered steps
# ---------------------------------------------------------------------------


def faithfulness_estimate(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    features_in_step: int = 1,
    baseline: Baseline = "black",
    output: str = "logit",
    similarity: str = "pearson",
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
) -> Tensor:
    """Faithfulness estimate (Alvarez-Melis & Jaakkola 2018; Quantus's
    ``FaithfulnessEstimate``): the input elements, from the largest
    attribution down, are cut into ``K = ceil(F / features_in_step)`` steps;
    step ``k`` alone is replaced (the others keep their values), and the
    correlation over steps of the step's attribution sum with
    ``f(x)[t] - f(x_k)[t]`` is the score.

    Args:
        model, inputs, attributions, target, baseline, output, similarity,
            additional_forward_args, explainer_kwargs, memory_budget,
            chunk_rows, example_offset, model_form: as :func:`faithfulness_correlation`
            (``"uniform"``: one value per example and step).
        features_in_step: elements per step (>= 1).
        order: int64 ``[B, F]``, the element order to use instead of the
            attributions' stable descending order (e.g. NumPy's ``argsort`` to
            reproduce Quantus's order of ties).

    Returns:
        float64 ``[B]``.
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    step = check_features_in_step(features_in_step)
    check_similarity(similarity)
    p = prepare(model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
                memory_budget, chunk_rows, example_offset, baseline, seed, uniform_low, uniform_high,
                ESTIMATE_FILL_STREAM, lambda x: steps_of(x, step), order_check(order), model_form)
    x, n_features = p.x, p.x[0].numel()
    n_steps = steps_of(x, step)
    order = element_order(order, p.attrs, descending=True)
    # Point 0 replaces nothing (the clean output); point k + 1 step k only.
    k = torch.arange(n_steps, dtype=torch.int64, device=x.device)
    rows = WindowRows(x, order, prepend(0, k * step), prepend(0, step_counts(n_features, step, n_steps, x.device)),
                      step, p.fill, p.per_step, prepend(0, k))
    out = curve_outputs(p.model, rows, x, p.target, p.args, p.memory_budget, p.chunk_rows)
    return row_correlation(step_sums(p.attrs, order, step), out[:, :1] - out[:, 1:], similarity)


class SensitivityN(NamedTuple):
    """Sensitivity-N's per-example curves and their correlation across the batch."""

    attribution_sums: Tensor  # float64 [B, K]: the attributions of the elements of step k
    output_changes: Tensor  # float64 [B, K]: f(x)[t] - f(x with steps 0..k replaced)[t]
    correlation: Tensor  # float64 [K]: per step, the correlation of the two over the examples


def sensitivity_n(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    features_in_step: int = 1,
    n_max_percentage: float = 0.8,
    baseline: Baseline = "black",
    output: str = "probability",
    similarity: str = "pearson",
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
) -> SensitivityN:
    """Sensitivity-N as Quantus's ``SensitivityN`` computes it: the input
    elements, from the largest attribution down, are replaced cumulatively,
    ``features_in_step`` more at each step; at step ``k`` the sum of the
    attributions of the elements replaced *at that step* is paired with the
    output change of the input with steps ``0 .. k`` replaced. The score of
    step ``k`` is the correlation of the two **across the examples of the
    batch** (so it depends on the batch by definition; the per-example curves
    do not). Steps ``k < int(n_max_percentage * prod(F[1:]) // features_in_step)``
    (Quantus counts the spatial size, without channels) are evaluated.

    Args:
        model, inputs, attributions, target, baseline, output, similarity,
            additional_forward_args, explainer_kwargs, order, memory_budget,
            chunk_rows, example_offset, model_form: as :func:`faithfulness_estimate`.
        features_in_step: elements per step (>= 1).
        n_max_percentage: the fraction of the spatial size evaluated (> 0).

    Returns:
        :class:`SensitivityN` (correlation NaN for a batch of one example).
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    step = check_features_in_step(features_in_step)
    check_similarity(similarity)
    if isinstance(n_max_percentage, bool) or not isinstance(n_max_percentage, (int, float)) \
            or not n_max_percentage > 0 or not math.isfinite(n_max_percentage):
        raise ValueError(f"n_max_percentage: expected a finite number > 0, got {n_max_percentage!r}")

    def evaluated_steps(x: Tensor) -> int:
        return min(steps_of(x, step), int(n_max_percentage * math.prod(x.shape[2:]) // step))

    def check(x: Tensor) -> None:
        order_check(order)(x)
        if evaluated_steps(x) < 1:
            raise ValueError(f"n_max_percentage: {n_max_percentage} of the spatial size "
                             f"{math.prod(x.shape[2:])} is less than one step of {step} elements")

    # The fill table has a column per step of any element (the rows gather it for all).
    p = prepare(model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
                memory_budget, chunk_rows, example_offset, baseline, seed, uniform_low, uniform_high,
                SENSITIVITY_N_FILL_STREAM, lambda x: steps_of(x, step), check, model_form)
    x, n_eval = p.x, evaluated_steps(p.x)
    order = element_order(order, p.attrs, descending=True)
    counts = prepend(0, step_counts(x[0].numel(), step, n_eval, x.device))
    rows = ReplacedRows(x, p.fill, ranks_of(order), tuple(x.shape[1:]), counts, step if p.per_step else 0)
    out = curve_outputs(p.model, rows, x, p.target, p.args, p.memory_budget, p.chunk_rows)
    changes = out[:, :1] - out[:, 1:]
    sums = step_sums(p.attrs, order, step)[:, :n_eval]
    return SensitivityN(sums, changes, row_correlation(changes.t(), sums.t(), similarity))
