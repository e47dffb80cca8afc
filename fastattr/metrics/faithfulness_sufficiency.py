"""Sufficiency (Dasgupta et al. 2022), as Quantus 0.6's ``Sufficiency``:
of the other examples whose explanation lies close to an example's, the
fraction the model assigns the same class.

The metric compares examples with each other, so **an example's score
depends on the rest of its batch by definition**: the distances are SciPy's
standardised Euclidean ``seuclidean`` with the variance of each feature taken
over the batch, and they are divided by the largest distance in the batch
before the ``threshold``. Nothing here is random.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from .. import _validate as v
from .deletion import prepare_curve_call
from .infidelity import AttributionsOrExplainer
from .robustness import predicted_classes

DISTANCES = ("seuclidean",)


def seuclidean_distances(a: Tensor) -> Tensor:
    """float64 ``[n, n]``: SciPy's ``cdist(a, a, "seuclidean")`` of the rows
    of ``a`` ``[n, D]``: ``sqrt(sum_d (a_id - a_jd)**2 / V_d)``, ``V`` the
    variance (``ddof=1``) of each feature over the rows stacked twice, as
    SciPy stacks ``XA`` and ``XB``. All NaN when a feature is constant (``0 / 0``)."""
    a = a.to(torch.float64)
    n = a.shape[0]
    variance = 2 * (a - a.mean(0)).pow(2).sum(0) / (2 * n - 1)
    if bool((variance == 0).any()):
        return torch.full((n, n), math.nan, dtype=torch.float64, device=a.device)
    scaled = a / variance.sqrt()
    return torch.cdist(scaled, scaled, compute_mode="donot_use_mm_for_euclid_dist")


def sufficiency_scores(attrs: Tensor, predicted: Tensor, threshold: float) -> Tensor:
    """float64 ``[n]``: per example ``i``, among the others ``j`` whose
    explanation distance over the largest distance of the batch is at most
    ``threshold``, the fraction with ``predicted[j] == predicted[i]`` (0 when
    there is none).

    Args:
        attrs: explanations ``[n, *A]``; predicted: int64 ``[n]``.
    """
    d = seuclidean_distances(attrs.reshape(attrs.shape[0], -1))
    peak = d.abs().max()  # NaN when any distance is (Quantus's normalise_by_max)
    if not bool(peak == 0):
        d = d / peak
    n = d.shape[0]
    close = (d <= threshold) & ~torch.eye(n, dtype=torch.bool, device=d.device)
    same = predicted.unsqueeze(0) == predicted.unsqueeze(1)
    hits = (close & same).sum(1).to(torch.float64)
    neighbours = close.sum(1).to(torch.float64)
    return torch.where(neighbours > 0, hits / neighbours.clamp(min=1), torch.zeros_like(hits))


def check_threshold(threshold: Any) -> float:
    """``threshold`` checked: a finite number."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
    return float(threshold)


def sufficiency(
    model: Callable[..., Tensor],
    inputs: Tensor,
    attributions: AttributionsOrExplainer,
    target: v.TargetType = None,
    threshold: float = 0.6,
    distance: str = "seuclidean",
    additional_forward_args: Any = None,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Sufficiency of the explanations of one batch (see the module note:
    each score depends on the whole batch).

    Args:
        model: maps ``[n, *F]`` (and ``additional_forward_args``) to class
            scores ``[n, C]``; its argmax is the predicted class.
        inputs: ``[B, *F]``.
        attributions: ``[B, *A]`` (compared as they are, flattened), or the
            explainer that makes them (options in ``explainer_kwargs``;
            ``target`` is its target).
        threshold: largest normalised distance of a neighbour.
        distance: ``"seuclidean"`` (the only distance Quantus 0.6 can run:
            it passes ``V=None`` to ``cdist``, which other distances reject).
        memory_budget, chunk_rows: bytes and an optional row cap per forward chunk.
        example_offset: keys a random explainer's draws.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        float64 ``[B]``.
    """
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    threshold = check_threshold(threshold)
    v.check_choice(distance, "distance", DISTANCES)
    x, attrs, _, args, _, memory_budget, chunk_rows = prepare_curve_call(
        model, inputs, attributions, target, "logit", additional_forward_args, explainer_kwargs,
        memory_budget, chunk_rows, example_offset, model_form=model_form)
    predicted = predicted_classes(model, lambda r0, r1: x[r0:r1], x.shape[0], args, x[:1], memory_budget,
                                  chunk_rows, model_form)
    return sufficiency_scores(attrs, predicted, threshold)
