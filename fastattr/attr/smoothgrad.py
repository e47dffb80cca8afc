"""SmoothGrad, SmoothGrad² and VarGrad over any single-point or path explainer
(Smilkov et al. 2017; Adebayo et al. 2018), as Captum's ``NoiseTunnel``, with
keyed, reproducible noise."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor

from .. import _validate as v
from ..engine import PURPOSE_SMOOTHGRAD, PointPlan, run, single_point_plan
from ._call import build_request, shape_output
from .integrated_gradients import delta_dtype, path_plan

KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
EXPLAINERS = ("saliency", "input_x_gradient", "integrated_gradients")


def check_seed(seed: Any) -> None:
    """A noise key: an int in ``[0, 2**63)``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed: expected an integer in [0, 2**63), got {seed!r}")


def _explainer_plan(explainer: str, kwargs: Dict[str, Any]) -> Tuple[PointPlan, bool, Any]:
    """``(plan, needs_baselines, baselines)`` of the wrapped explainer."""
    if not isinstance(kwargs, Mapping):
        raise TypeError(
            f"explainer_kwargs: expected a dict of the explainer's options, got {type(kwargs).__name__}"
        )
    kwargs = dict(kwargs)
    baselines = None
    if explainer == "saliency":
        plan = single_point_plan("abs" if kwargs.pop("abs", True) else "grad")
    elif explainer == "input_x_gradient":
        plan = single_point_plan("times_input")
    else:
        baselines = kwargs.pop("baselines", None)
        plan = path_plan(
            kwargs.pop("n_steps", 50),
            kwargs.pop("method", "gausslegendre"),
            kwargs.pop("multiply_by_inputs", True),
        )
    if kwargs:
        raise TypeError(
            f"explainer_kwargs: {sorted(kwargs)} not accepted by explainer {explainer!r}"
        )
    return plan, explainer == "integrated_gradients", baselines


def smoothgrad(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    n_samples: int = 5,
    stdev: Union[float, Tuple[float, ...]] = 1.0,
    kind: str = "smoothgrad",
    explainer: str = "saliency",
    explainer_kwargs: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
    """Average an explainer over ``n_samples`` Gaussian-noised copies of each input.

    The noise of example ``b``, sample ``n``, element ``d`` of input ``i`` is
    keyed by ``(seed, i, b, n, d)`` (``csrc/README.md``): the same seed gives
    the same result for any batch composition, chunk size or device.

    Args:
        model, inputs, target, additional_forward_args, memory_budget,
            chunk_rows: as :func:`fastattr.saliency` (inputs ``[B, *F]`` or a tuple).
        n_samples: noisy copies per example (Captum's ``nt_samples``).
        stdev: noise standard deviation, or one per input (Captum's ``stdevs``).
        kind: ``"smoothgrad"`` (mean), ``"smoothgrad_sq"`` (mean of squares)
            or ``"vargrad"`` (variance) of the per-sample attributions.
        explainer: ``"saliency"``, ``"input_x_gradient"`` or ``"integrated_gradients"``.
        explainer_kwargs: the explainer's own options: ``abs`` for saliency;
            ``baselines``, ``n_steps``, ``method``, ``multiply_by_inputs`` for IG.
        seed: key of the noise (int >= 0).
        example_offset: the noise of example ``b`` is keyed as example
            ``example_offset + b`` (its index in a data set explained batch
            by batch, so a batch's result does not depend on where it starts).
        return_convergence_delta: integrated gradients only: also return the
            ``[B * n_samples]`` deltas of every noisy sample (row ``b * n_samples + n``),
            as Captum's NoiseTunnel does.

    Returns:
        Attributions shaped and typed like ``inputs``; with
        ``return_convergence_delta`` a pair ``(attributions, delta)``.
    """
    v.check_choice(kind, "kind", KINDS)
    v.check_choice(explainer, "explainer", EXPLAINERS)
    n_samples = v.check_positive_int(n_samples, "n_samples")
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    if return_convergence_delta and explainer != "integrated_gradients":
        raise ValueError(
            f"return_convergence_delta: only integrated_gradients has a convergence "
            f"delta, not explainer {explainer!r}"
        )
    inner, needs_baselines, baselines = _explainer_plan(explainer, {} if explainer_kwargs is None else explainer_kwargs)

    def plan_for(xs: Tuple[Tensor, ...]) -> PointPlan:
        return dataclasses.replace(
            inner,
            n_samples=n_samples,
            noise="gaussian",
            noise_scales=v.check_scales(stdev, "stdev", len(xs)),
            seed=seed,
            example_offset=example_offset,
            purpose=PURPOSE_SMOOTHGRAD,
            keep_square=kind != "smoothgrad",
        )

    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args, plan_for,
        memory_budget, chunk_rows,
        baselines=baselines, needs_baselines=needs_baselines,
        want_deltas=bool(return_convergence_delta),
    )
    result = run(req)
    if kind == "smoothgrad":
        values = result.mean
    elif kind == "smoothgrad_sq":
        values = result.mean_sq
    else:
        values = tuple(sq - m * m for m, sq in zip(result.mean, result.mean_sq))
    attributions = shape_output(values, req.inputs, was_tuple)
    if return_convergence_delta:
        return attributions, result.deltas.to(delta_dtype(req.inputs[0]))
    return attributions
