"""GradientSHAP and expected gradients (Lundberg & Lee 2017; Erion et al. 2021):
the gradient at a random point between each input and a reference drawn from
a distribution, times their difference, averaged over draws; as Captum's
``GradientShap``, with every draw keyed by the seed.

Per (example ``b``, sample ``n``), keyed by ``(seed, b, n)``: a reference
``k`` among the ``M`` rows of the distribution, a path position ``alpha``,
and (with ``stdev > 0``) Gaussian noise on the input:
``x_n = x_b + stdev * eps``. The point is ``alpha x_n + (1 - alpha) ref_k``
and its attribution ``grad * (x_n - ref_k)``.

The ``N`` (reference, position) pairs of an example are a Latin hypercube
sample (:func:`reference_draws`): each of ``N`` equal strata of the
reference draw and of the position holds one sample, paired by a keyed
random permutation. Each pair is still uniform over references and
positions, so the estimate is Captum's expectation, unbiased; but its error
shrinks faster than with Captum's i.i.d. draws (with one reference, from
``O(N^-1/2)`` to ``O(N^-1)`` for the step-like path integrands of ReLU nets):
at ``N = 2000`` i.i.d. positions left errors of 4%, so that one example's
attribution changed with the other examples in its call (each gets its own
draws).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from ..engine import PURPOSE_GRADIENT_SHAP, PURPOSE_REFERENCE_DRAW, PointPlan, Request, run, single_point_plan
from ..engine.draws import group_uniforms
from ._call import build_request, shape_output
from .integrated_gradients import delta_dtype
from .smoothgrad import check_seed


def reference_draws(seed: int, batch: int, n_samples: int, device: torch.device,
                    example_offset: int = 0) -> Tuple[Tensor, Tensor]:
    """``(position, which)``, float64 ``[batch * n_samples]`` each, for group
    ``g = b * n_samples + n``: a Latin hypercube sample of (path position,
    reference) per example. ``which`` (``floor(which * M)`` picks the
    reference row) lies in the ``n``-th of ``N`` equal strata of ``[0, 1)``,
    ``position`` in stratum ``perm_b(n)``, ``perm_b`` a keyed permutation of
    ``0 .. N-1``; each within its stratum uniformly."""
    u_position, u_which = group_uniforms(seed, PURPOSE_REFERENCE_DRAW * 65536, batch, n_samples, device,
                                         example_offset)
    order, _ = group_uniforms(seed, PURPOSE_REFERENCE_DRAW * 65536 + 1, batch, n_samples, device,
                              example_offset)
    strata = torch.arange(n_samples, dtype=torch.float64, device=device).repeat(batch)
    permuted = order.view(batch, n_samples).argsort(dim=1).view(-1).to(torch.float64)
    position = permuted.add_(u_position).div_(n_samples)
    which = strata.add_(u_which).div_(n_samples)
    return position, which


def gradient_shap_request(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    baselines: Any,
    target: v.TargetType,
    n_samples: int,
    stdev: Union[float, Tuple[float, ...]],
    seed: int,
    additional_forward_args: Any,
    want_deltas: bool,
    sample_transform: str,
    memory_budget: Optional[int],
    chunk_rows: Optional[int],
    example_offset: int,
    **request_options: Any,
) -> Tuple[Request, bool]:
    """The checked engine request of a GradientSHAP call (``(request,
    inputs_was_tuple)``): one point per (example, sample) at its drawn
    reference and position, noisy inputs with ``stdev > 0``.
    ``request_options`` go to :func:`~fastattr.attr._call.build_request`
    (a layer variant's ``leaves``)."""
    n_samples = v.check_positive_int(n_samples, "n_samples")
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)

    def plan_for(xs: Tuple[Tensor, ...]) -> PointPlan:
        scales = v.check_scales(stdev, "stdev", len(xs))
        return PointPlan(
            alphas=None,
            step_weights=torch.ones(1, dtype=torch.float64),
            n_samples=n_samples,
            noise="gaussian" if any(scales) else "none",
            noise_scales=scales,
            seed=seed,
            example_offset=example_offset,
            purpose=PURPOSE_GRADIENT_SHAP,
            sample_transform=sample_transform,
        )

    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args, plan_for,
        memory_budget, chunk_rows, want_deltas=want_deltas, **request_options,
    )
    references = v.format_baseline_distribution(baselines, req.inputs, was_tuple)
    x = req.inputs[0]
    position, which = reference_draws(seed, x.shape[0], n_samples, x.device, example_offset)
    req = dataclasses.replace(
        req,
        baselines=references,
        reference_rows=(which * references[0].shape[0]).to(torch.int64),
        # In the inputs' dtype, as Captum's coefficient (float64 for half inputs would not be).
        group_alphas=position.to(torch.promote_types(x.dtype, torch.float32)),
    )
    return req, was_tuple


def drawn_points_request(
    model: Callable[..., Tensor],
    rows: v.TensorOrTuple,
    references: Tuple[Tensor, ...],
    alphas: Tensor,
    target: v.TargetType,
    additional_forward_args: Any,
    want_deltas: bool,
    sample_transform: str,
    memory_budget: Optional[int],
    chunk_rows: Optional[int],
    **request_options: Any,
) -> Tuple[Request, bool]:
    """A GradientSHAP request on draws made by the caller (the Captum
    drop-in's, from Captum's global RNGs): row ``r`` of ``rows`` (an input
    ``x_n``, noise included) gets the point ``references[i][r] + alphas[r]
    (rows[i][r] - references[i][r])``; ``target`` and
    ``additional_forward_args`` are per row. The result is per row."""
    req, was_tuple = build_request(
        model, rows, target, additional_forward_args, lambda xs: single_point_plan(sample_transform),
        memory_budget, chunk_rows, want_deltas=want_deltas, **request_options,
    )
    n = req.inputs[0].shape[0]
    if alphas.shape != (n,) or any(r.shape != x.shape for r, x in zip(references, req.inputs)):
        raise ValueError("references / alphas: one per row of rows expected")
    req = dataclasses.replace(
        req, baselines=tuple(r.to(x.dtype) for r, x in zip(references, req.inputs)),
        reference_rows=torch.arange(n, device=alphas.device), group_alphas=alphas,
    )
    return req, was_tuple


def gradient_shap_at(
    model: Callable[..., Tensor],
    rows: v.TensorOrTuple,
    references: Tuple[Tensor, ...],
    alphas: Tensor,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    multiply_by_inputs: bool = True,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
    """GradientSHAP's term of each row at the caller's draws (see
    :func:`drawn_points_request`): attributions shaped like ``rows``, not
    averaged; with ``return_convergence_delta`` also ``[n]`` deltas."""
    req, was_tuple = drawn_points_request(
        model, rows, references, alphas, target, additional_forward_args, bool(return_convergence_delta),
        "times_input_minus_baseline" if multiply_by_inputs else "grad", memory_budget, chunk_rows,
    )
    result = run(req)
    attributions = shape_output(result.mean, req.inputs, was_tuple)
    if return_convergence_delta:
        return attributions, result.deltas.to(delta_dtype(req.inputs[0]))
    return attributions


def gradient_shap(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    baselines: Any,
    target: v.TargetType = None,
    n_samples: int = 5,
    stdev: Union[float, Tuple[float, ...]] = 0.0,
    seed: int = 0,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    multiply_by_inputs: bool = True,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
    """GradientSHAP attributions of ``model(inputs)[:, target]``.

    Args:
        model, inputs, target, additional_forward_args, memory_budget,
            chunk_rows, model_form: as :func:`fastattr.saliency` (inputs ``[B, *F]`` or a tuple).
        baselines: the reference distribution: ``[M, *F]`` (or ``[*F]``, or a
            number) per input, the same ``M`` for all inputs, or a callable
            returning it (Captum's forms).
        n_samples: draws per example.
        stdev: standard deviation of the Gaussian noise added to the inputs
            (0: none, expected gradients), or one per input.
        seed: key of every draw (int >= 0).
        return_convergence_delta: also return ``[B * n_samples]`` deltas,
            row ``b * n_samples + n``: ``sum(attribution of the draw) -
            (f(x_n)[t] - f(ref_k)[t])``, as Captum's.
        multiply_by_inputs: multiply the gradients by ``x_n - ref_k`` (global)
            or not (local).
        example_offset: draws of example ``b`` are keyed as example
            ``example_offset + b`` (its index in a data set explained batch by batch).

    Returns:
        Attributions shaped and typed like ``inputs``; with
        ``return_convergence_delta`` a pair ``(attributions, delta)``.
    """
    req, was_tuple = gradient_shap_request(
        model, inputs, baselines, target, n_samples, stdev, seed, additional_forward_args,
        bool(return_convergence_delta), "times_input_minus_baseline" if multiply_by_inputs else "grad",
        memory_budget, chunk_rows, example_offset, model_form=model_form,
    )
    x = req.inputs[0]
    result = run(req)
    attributions = shape_output(result.mean, req.inputs, was_tuple)
    if return_convergence_delta:
        return attributions, result.deltas.to(delta_dtype(x))
    return attributions


def expected_gradients(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    baselines: Any,
    target: v.TargetType = None,
    n_samples: int = 5,
    seed: int = 0,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
    """Expected gradients: :func:`gradient_shap` without input noise
    (``baselines`` is the background data set ``[M, *F]``)."""
    return gradient_shap(
        model, inputs, baselines, target=target, n_samples=n_samples, stdev=0.0, seed=seed,
        additional_forward_args=additional_forward_args,
        return_convergence_delta=return_convergence_delta,
        memory_budget=memory_budget, chunk_rows=chunk_rows, example_offset=example_offset,
        model_form=model_form,
    )
