"""Relative input stability of an explanation (Agarwal et al. 2022,
"Rethinking stability for attribution-based explanations")."""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ._explain import ExplainerType
from .sensitivity import (
    Perturbation, PerturbedExplanations, check_norm, check_radius, flat_norm, float64_copies,
)


def _relative_change(new: Sequence[Tensor], old: Sequence[Tensor], examples: Tensor,
                     eps_min: float) -> Tuple[Tensor, ...]:
    """float64 ``(old - new) / old`` per element (``old`` float64, one row
    per example, gathered per row), a zero ``old`` counted as ``eps_min``
    (Quantus's guard against division by 0)."""
    out = []
    for n, o in zip(new, old):
        o = o.index_select(0, examples)
        out.append((o - n) / torch.where(o == 0, eps_min, o))
    return tuple(out)


def stability_values(audit: PerturbedExplanations, perturbation: Perturbation, ord: float,
                     eps_min: float) -> Tensor:
    """float64 ``[B, n_samples]``:
    ``||(a - a') / a||_ord / max(||(x - x') / x||_ord, eps_min)``."""
    clean, xs = float64_copies(audit.clean), float64_copies(audit.req.inputs)

    def value(perturbed: Tuple[Tensor, ...], attrs: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        num = flat_norm(_relative_change(attrs, clean, examples, eps_min), ord)
        den = flat_norm(_relative_change(perturbed, xs, examples, eps_min), ord)
        return num / den.clamp_min(eps_min)

    return audit.sample_values(perturbation, value, needs_inputs=True)


def relative_input_stability(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    radius: Union[float, Tuple[float, ...]] = 0.02,
    n_samples: int = 10,
    norm: Union[str, float] = 2.0,
    eps_min: float = 1e-6,
    seed: int = 0,
    additional_forward_args: Any = None,
    attributions: Optional[v.TensorOrTuple] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
) -> Tensor:
    """Relative input stability: ``max_n ||(a - a_n) / a||_p / max(||(x - x_n) / x||_p, eps_min)``
    per example (elementwise ratios; a zero ``a`` or ``x`` element divides by ``eps_min``).

    ``x_n`` is uniform in the L-infinity ball of radius ``radius`` around
    ``x``, keyed by ``(seed, example, n, element)`` as in
    :func:`fastattr.metrics.max_sensitivity` (same keys, same perturbations).

    Args:
        model, inputs, target, additional_forward_args, explainer,
            explainer_kwargs, radius, n_samples, seed, attributions,
            memory_budget, chunk_rows, example_offset: as :func:`fastattr.metrics.max_sensitivity`.
        norm: ``p`` (default 2; ``"fro"`` is 2), over all inputs' elements together.
        eps_min: floor of the input change and stand-in for zero elements (> 0).

    Returns:
        float64 ``[B]``.
    """
    n_samples = v.check_positive_int(n_samples, "n_samples")
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    ord = check_norm(norm)
    if isinstance(eps_min, bool) or not isinstance(eps_min, Real) or not math.isfinite(eps_min) or eps_min <= 0:
        raise ValueError(f"eps_min: expected a finite number > 0, got {eps_min!r}")
    scales = check_radius(radius, "radius", len(inputs) if isinstance(inputs, tuple) else 1)
    audit = PerturbedExplanations.prepare(
        model, inputs, target, explainer, explainer_kwargs, additional_forward_args,
        attributions, memory_budget, chunk_rows, example_offset,
    )
    values = stability_values(audit, Perturbation("uniform", scales, n_samples, seed, example_offset=example_offset), ord, float(eps_min))
    return values.amax(dim=1)
