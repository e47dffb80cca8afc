"""Monotonicity (Arya et al. 2019) and monotonicity correlation (Nguyen &
Martinez 2020), as Quantus 0.6's ``Monotonicity`` and
``MonotonicityCorrelation``: input elements taken in order of increasing
attribution, ``features_in_step`` at a time.

Every row is generated per chunk inside :func:`fastattr.engine.forward_rows`
(:class:`~fastattr.metrics.deletion.ReplacedRows`); ``"uniform"`` fill values
are keyed by ``(seed, example_offset + b, point)``, so an example's value
does not depend on its batch or on the chunking.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from .. import _validate as v
from .deletion import Baseline, ReplacedRows, curve_outputs, ranks_of
from .faithfulness_common import (
    FAITHFULNESS_STREAMS, WindowRows, check_features_in_step, check_similarity, element_order, order_check,
    prepare, prepend, row_correlation, step_counts, step_sums, steps_of,
)
from .infidelity import AttributionsOrExplainer

MONOTONICITY_FILL_STREAM = FAITHFULNESS_STREAMS + 68  # column 0: the start, column k + 1: step k
MONOTONICITY_CORRELATION_FILL_STREAM = FAITHFULNESS_STREAMS + 69  # one per (example, step, sample)
INSERTED = ("input", "baseline")


def monotonicity(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    features_in_step: int = 1,
    baseline: Baseline = "black",
    output: str = "probability",
    inserted: str = "input",
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
    """Monotonicity: starting from an input made of ``baseline`` only, the
    elements are put in from the smallest attribution up, ``features_in_step``
    more at each of ``K = ceil(F / features_in_step)`` steps; an example is
    monotonic when its target output never decreases from one step to the next.

    ``inserted`` says what a step puts in:

    * ``"input"`` (Arya et al.): the input's own values, so the last step is
      the input itself.
    * ``"baseline"``: fresh baseline values, as Quantus 0.6's ``Monotonicity``
      does (its steps call the baseline replacement on the baseline image, so
      the input never enters). With ``"black"``, ``"white"`` or a number every
      step is then the same image (evaluated once, and monotonic); with
      ``"uniform"`` each step draws new values for its elements.

    Args:
        model, inputs, attributions, target, additional_forward_args,
            explainer_kwargs, memory_budget, chunk_rows, example_offset, model_form: as
            :func:`~fastattr.metrics.faithfulness.faithfulness_correlation`.
        features_in_step: elements per step (>= 1).
        baseline: the start (and, with ``inserted="baseline"``, the inserted
            values): ``"black"`` / ``"white"`` (the example's min / max),
            ``"uniform"`` (one value per example for the start and one per
            step, in ``[uniform_low, uniform_high)``, keyed), a number or a
            tensor broadcastable to ``inputs``.
        output: ``"probability"`` (softmax over classes) or ``"logit"``.
        order: int64 ``[B, F]``, the element order to use instead of the
            attributions' stable ascending order (e.g. NumPy's ``argsort``).

    Returns:
        bool ``[B]``.
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    step = check_features_in_step(features_in_step)
    v.check_choice(inserted, "inserted", INSERTED)
    p = prepare(model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
                memory_budget, chunk_rows, example_offset, baseline, seed, uniform_low, uniform_high,
                MONOTONICITY_FILL_STREAM, lambda x: steps_of(x, step) + 1, order_check(order), model_form)
    x, fill = p.x, p.fill
    order = element_order(order, p.attrs, descending=False)
    start = fill[:, :1].view(-1, *([1] * (x.dim() - 1))) if p.per_step else fill
    counts = step_counts(x[0].numel(), step, steps_of(x, step), x.device)
    ranks, shape = ranks_of(order), tuple(x.shape[1:])
    if inserted == "input":
        rows = ReplacedRows(start, x, ranks, shape, counts)
    elif p.per_step:
        rows = ReplacedRows(start, fill, ranks, shape, counts, step, torch.ones_like(counts))
    else:
        rows = ReplacedRows(start, start, ranks, shape, counts[:1])  # every step: the start itself
    values = curve_outputs(p.model, rows, x, p.target, p.args, p.memory_budget, p.chunk_rows)
    return (values.diff(dim=1) >= 0).all(dim=1)


def monotonicity_correlation(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    features_in_step: int = 1,
    n_samples: int = 100,
    baseline: Baseline = "uniform",
    output: str = "probability",
    similarity: str = "spearman",
    eps: float = 1e-5,
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
    """Monotonicity correlation (Nguyen & Martinez 2020; Quantus's
    ``MonotonicityCorrelation``): the elements, from the smallest attribution
    up, are cut into ``K = ceil(F / features_in_step)`` steps; step ``k`` alone
    is replaced ``n_samples`` times, and the correlation over steps of the
    step's attribution sum with ``mean_n (f(x_kn)[t] - f(x)[t])**2 / f(x)[t]**2``
    (``/ 1`` where ``|f(x)[t]| < eps``) is the score.

    Args:
        model, inputs, attributions, target, additional_forward_args,
            explainer_kwargs, order, memory_budget, chunk_rows, example_offset,
            model_form: as :func:`monotonicity`.
        features_in_step: elements per step (>= 1).
        n_samples: replacements per step (>= 1); a deterministic baseline
            gives identical ones, evaluated once.
        baseline: ``"uniform"`` (one value per example, step and sample in
            ``[uniform_low, uniform_high)``, keyed), ``"black"``, ``"white"``, a
            number or a tensor broadcastable to ``inputs``.
        similarity: ``"spearman"`` or ``"pearson"``.
        eps: outputs smaller than this in magnitude are not divided by.

    Returns:
        float64 ``[B]`` (NaN where the sums or the variances are constant).
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    step = check_features_in_step(features_in_step)
    n_samples = v.check_positive_int(n_samples, "n_samples")
    check_similarity(similarity)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    samples = n_samples if isinstance(baseline, str) and baseline == "uniform" else 1
    p = prepare(model, inputs, attributions, target, output, additional_forward_args, explainer_kwargs,
                memory_budget, chunk_rows, example_offset, baseline, seed, uniform_low, uniform_high,
                MONOTONICITY_CORRELATION_FILL_STREAM, lambda x: steps_of(x, step) * samples, order_check(order),
                model_form)
    x, n_features, batch = p.x, p.x[0].numel(), p.x.shape[0]
    n_steps = steps_of(x, step)
    order = element_order(order, p.attrs, descending=False)
    # Point 0 is the clean input; point 1 + q (q = k * samples + n) replaces
    # step k only, with fill column q.
    point = torch.arange(n_steps * samples, dtype=torch.int64, device=x.device)
    k = point // samples
    rows = WindowRows(x, order, prepend(0, k * step), prepend(0, ((k + 1) * step).clamp_(max=n_features)), step,
                      p.fill, p.per_step, prepend(0, point))
    out = curve_outputs(p.model, rows, x, p.target, p.args, p.memory_budget, p.chunk_rows)
    clean = out[:, 0]
    inverse = torch.where(clean.abs() >= eps, 1.0 / clean.abs(), torch.ones_like(clean)) ** 2
    spread = (out[:, 1:].view(batch, n_steps, samples) - clean.view(batch, 1, 1)).pow(2).mean(2)
    return row_correlation(step_sums(p.attrs, order, step), spread * inverse.unsqueeze(1), similarity)
