"""Integrated gradients (Sundararajan et al. 2017) with Captum's five
integration rules."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from ..engine import PointPlan, run
from ._call import build_request, shape_output
from .quadrature import METHODS, path_rule


def path_plan(n_steps: int, method: str, multiply_by_inputs: bool) -> PointPlan:
    """The IG plan: ``n_steps`` points on the path, weighted by the rule's step sizes."""
    v.check_choice(method, "method", METHODS)
    v.check_positive_int(n_steps, "n_steps")
    return _path_plan(int(n_steps), method, bool(multiply_by_inputs))


@functools.lru_cache(maxsize=64)
def _path_plan(n_steps: int, method: str, multiply_by_inputs: bool) -> PointPlan:
    alphas, step_sizes = path_rule(method, n_steps)
    return PointPlan(
        alphas=alphas,
        step_weights=step_sizes,
        sample_transform="times_input_minus_baseline" if multiply_by_inputs else "grad",
    )


def delta_dtype(x: Tensor) -> torch.dtype:
    """Convergence deltas come in the input's dtype, at least float32."""
    return torch.promote_types(x.dtype, torch.float32)


def integrated_gradients(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    baselines: v.BaselineType = None,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    return_convergence_delta: bool = False,
    multiply_by_inputs: bool = True,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    rtol: Optional[float] = None,
    max_steps: int = 256,
    safety_factor: float = 1.0,
    model_form: str = "fast",
) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Any]]:
    """Integrated gradients of ``model(inputs)[:, target]``, as Captum's
    ``IntegratedGradients.attribute``; or, with ``rtol``, each example's path
    refined until its estimated error is below ``rtol``
    (:func:`fastattr.attr.adaptive_ig.adaptive_integrated_gradients`).

    Args:
        model, inputs, target, additional_forward_args, memory_budget,
            chunk_rows: as :func:`fastattr.saliency` (inputs ``[B, *F]`` or a tuple).
        baselines: None (zeros), a number, a tensor broadcastable to the input
            (``[*F]``, ``[1, *F]``, ``[B, *F]``), or a tuple of those per input.
        n_steps: points on the path per example.
        method: ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``,
            ``"riemann_trapezoid"`` or ``"gausslegendre"``. On
            ReLU networks the integrand is piecewise constant, every rule's
            error falls as ``1 / n_steps``, and 50 steps can be far too few
            (``docs/accuracy.md``): ``rtol`` chooses the steps per example.
        return_convergence_delta: also return ``[B]`` deltas
            ``sum(attributions) - (f(x)[t] - f(baseline)[t])``.
        multiply_by_inputs: multiply the path-averaged gradient by
            ``inputs - baselines`` (True, global attribution) or not (local).
        rtol: None (a fixed rule of ``n_steps``), or the relative L2 error
            each example's attribution is refined to, as estimated; then
            ``n_steps`` and ``method`` must keep their defaults and
            ``return_convergence_delta`` be False (the rule is the adaptive
            trapezoid; the delta is in the report).
        max_steps, safety_factor: with ``rtol``: the most path points per
            example, and the factor the error estimate is multiplied by.
        model_form: as :func:`fastattr.saliency` (with ``rtol``: ``"fast"`` or ``"eager"``).

    Returns:
        Attributions shaped and typed like ``inputs``; with
        ``return_convergence_delta`` a pair ``(attributions, delta [B])``;
        with ``rtol`` a pair ``(attributions, accuracy)``, ``accuracy`` an
        :class:`~fastattr.attr.adaptive_ig.IGAccuracy` of ``[B]`` tensors
        ``error`` (estimated), ``steps``, ``converged`` and ``delta``.
    """
    if rtol is not None:
        for name, value, default in (("n_steps", n_steps, 50), ("method", method, "gausslegendre"),
                                     ("return_convergence_delta", return_convergence_delta, False)):
            if value != default:
                raise ValueError(
                    f"{name}: not taken with rtol (the adaptive rule picks the steps per example "
                    f"and returns the convergence delta in its report), got {value!r}"
                )
        from .adaptive_ig import adaptive_integrated_gradients  # it imports this module

        return adaptive_integrated_gradients(
            model, inputs, baselines, target, additional_forward_args, rtol=rtol,
            max_steps=max_steps, safety_factor=safety_factor, multiply_by_inputs=multiply_by_inputs,
            memory_budget=memory_budget, chunk_rows=chunk_rows, model_form=model_form,
        )
    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args,
        lambda xs: path_plan(n_steps, method, multiply_by_inputs),
        memory_budget, chunk_rows,
        baselines=baselines, needs_baselines=True,
        want_deltas=bool(return_convergence_delta), model_form=model_form,
    )
    result = run(req)
    attributions = shape_output(result.mean, req.inputs, was_tuple)
    if return_convergence_delta:
        return attributions, result.deltas.to(delta_dtype(req.inputs[0]))
    return attributions
