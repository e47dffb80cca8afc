"""Captum drop-in for ``captum.metrics.infidelity`` and
``infidelity_perturb_func_decorator``: Captum 0.9's signatures and results
(the same perturbations give the same numbers), on fastattr's chunked
forward rows."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from ... import _validate as v
from ...metrics.infidelity import PerturbFunc
from ...metrics.infidelity import infidelity as _infidelity


def _safe_div(numerator: Tensor, denom: Any) -> Tensor:
    """Captum's ``safe_div(numerator, denom, default_denom=1.0)``."""
    if not isinstance(denom, Tensor):
        return numerator / (denom if denom != 0 else 1.0)
    return numerator / torch.where(denom != 0, denom, torch.tensor(1.0, dtype=denom.dtype, device=denom.device))


def infidelity_perturb_func_decorator(multiply_by_inputs: bool = True) -> Callable[[Callable[..., Any]], PerturbFunc]:
    """Turn a ``perturb_func(inputs[, baselines]) -> perturbed_inputs`` into
    Captum's ``(perturbations, perturbed_inputs)`` form: the perturbation is
    ``(input - perturbed) / (input - baseline)`` (baseline 0 when none; a zero
    denominator divides by 1) with ``multiply_by_inputs``, else
    ``input - perturbed``. Inputs and outputs are ``[n, *F_i]`` tensors or tuples."""

    def decorate(perturb_func: Callable[..., Any]) -> PerturbFunc:
        @functools.wraps(perturb_func)
        def with_perturbations(inputs: v.TensorOrTuple, baselines: Any = None) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
            perturbed = perturb_func(inputs, baselines) if baselines is not None else perturb_func(inputs)
            perturbed = perturbed if isinstance(perturbed, tuple) else (perturbed,)
            xs = inputs if isinstance(inputs, tuple) else (inputs,)
            if baselines is None:
                denominators: Tuple[Any, ...] = xs
            else:
                bases = baselines if isinstance(baselines, tuple) else (baselines,)
                denominators = tuple(x - b for x, b in zip(xs, bases))
            perturbations = tuple(
                _safe_div(x - p, d) if multiply_by_inputs else x - p
                for x, p, d in zip(xs, perturbed, denominators)
            )
            return perturbations, perturbed

        return with_perturbations

    return decorate


def infidelity(
    forward_func: Callable[..., Tensor],
    perturb_func: PerturbFunc,
    inputs: v.TensorOrTuple,
    attributions: v.TensorOrTuple,
    baselines: Any = None,
    additional_forward_args: Any = None,
    target: Any = None,
    n_perturb_samples: int = 10,
    max_examples_per_batch: Optional[int] = None,
    normalize: bool = False,
) -> Tensor:
    """Captum's ``infidelity``: ``[B]`` in the inputs' dtype,
    ``mean_n (I_n . a - (f(x) - f(x_n)))**2`` over ``n_perturb_samples``
    ``(I_n, x_n) = perturb_func(inputs[, baselines])`` per example (optimally
    rescaled with ``normalize``).

    ``perturb_func`` is called on the repeated inputs (row ``b * N + n``), once
    per forward chunk; ``max_examples_per_batch`` caps the rows of a chunk
    (Captum's meaning: a randomness-free ``perturb_func`` gives the same result
    for any value; Captum's own sub-batches split by samples instead).
    """
    if not callable(perturb_func):
        raise TypeError(f"perturb_func: expected a callable, got {type(perturb_func).__name__}")
    values = _infidelity(
        forward_func, inputs, attributions, target=target,
        n_samples=v.check_positive_int(n_perturb_samples, "n_perturb_samples"), normalize=normalize,
        additional_forward_args=additional_forward_args, baselines=baselines, perturb_func=perturb_func,
        chunk_rows=v.check_optional_positive_int(max_examples_per_batch, "max_examples_per_batch"),
        model_form="eager",  # Captum's numbers
    )
    xs = inputs if isinstance(inputs, tuple) else (inputs,)
    attrs = attributions if isinstance(attributions, tuple) else (attributions,)
    dtype = torch.promote_types(xs[0].dtype, attrs[0].dtype) if isinstance(attrs[0], Tensor) else xs[0].dtype
    return values.to(dtype)
