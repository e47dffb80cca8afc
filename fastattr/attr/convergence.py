"""The completeness gap of precomputed attributions: what Captum's
``GradientAttribution.compute_convergence_delta`` returns."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from ..engine import forward_rows
from .integrated_gradients import delta_dtype


def convergence_delta(
    model: Callable[..., Tensor],
    attributions: v.TensorOrTuple,
    start_point: v.BaselineType,
    end_point: v.TensorOrTuple,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
) -> Tensor:
    """``sum(attributions) - (f(end_point)[target] - f(start_point)[target])``
    per example: ``[B]``.

    Args:
        attributions: ``[B, *F_i]`` per input (a tensor or a tuple like ``end_point``).
        start_point: baselines in any form :func:`fastattr.integrated_gradients`
            takes (None: zeros).
        end_point: the inputs ``[B, *F_i]`` (a tensor or a tuple).
        target, additional_forward_args, memory_budget: as :func:`fastattr.saliency`.
    """
    ends, was_tuple = v.format_inputs(end_point)
    ends = tuple(e.detach() for e in ends)
    attrs = attributions if isinstance(attributions, tuple) else (attributions,)
    if len(attrs) != len(ends) or any(
            not isinstance(a, Tensor) or a.dim() == 0 or a.shape[0] != e.shape[0]
            for a, e in zip(attrs, ends)):
        raise v.ArgumentError(
            "attributions: expected one tensor per end_point tensor with the same first "
            f"dimension {ends[0].shape[0]}, got "
            f"{[tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__ for a in attrs]}"
        )
    gap = completeness_gap(model, start_point, ends, was_tuple, target, additional_forward_args, memory_budget)
    total = sum(a.detach().reshape(a.shape[0], -1).sum(1, dtype=torch.float64) for a in attrs)
    return (total - gap).to(delta_dtype(ends[0]))


def completeness_gap(
    model: Callable[..., Tensor],
    start_point: v.BaselineType,
    ends: Tuple[Tensor, ...],
    was_tuple: bool,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
) -> Tensor:
    """float64 ``[B]``: ``f(end)[target] - f(start)[target]`` per example, in
    forward-only chunks; ``ends`` the inputs (checked), ``start_point`` any
    baseline form."""
    batch, device = ends[0].shape[0], ends[0].device
    starts = v.format_baselines(start_point, ends, was_tuple)
    fmt_target = v.format_target(target, batch, device)
    args = v.format_additional_args(additional_forward_args, batch)
    memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")

    def gap_rows(points):
        return lambda r0, r1: tuple(p.expand(batch, *p.shape[1:])[r0:r1] for p in points)

    f_end = forward_rows(model, gap_rows(ends), batch, 1, ends, fmt_target, args, memory_budget)
    f_start = forward_rows(model, gap_rows(starts), batch, 1, ends, fmt_target, args, memory_budget)
    return f_end - f_start
