"""SmoothGrad, SmoothGrad² and VarGrad over any single-point or path explainer
(Smilkov et al. 2017; Adebayo et al. 2018), as Captum's ``NoiseTunnel``, with
keyed, reproducible noise."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from .. import ops
from ..engine import PURPOSE_SMOOTHGRAD, PointPlan, accumulator_dtype, run, single_point_plan
from ..engine.plan import noise_kind
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


class _MeanAndStandardError:
    """A ``Request.sample_sink``: the mean over samples of the per-sample
    values (the attributions, or their squares for ``smoothgrad_sq``), folded
    exactly as the engine folds it (same bits), and the standard error of
    that mean per example.

    The error is estimated from the ``K = N / unit`` independent units of an
    example: its samples (``unit = 1``) or its antithetic pairs (``unit = 2``,
    whose two samples are not independent). Per unit ``u`` the mean ``m_u``
    (float64) is kept as a running sum ``S1 = sum_u m_u`` (``[B, *F]``) and a
    norm ``|m_u|^2`` (``[B * K]``); every sum runs in row order, so the
    result does not depend on the chunking.
    """

    def __init__(self, inputs: Tuple[Tensor, ...], n_samples: int, unit: int, square: bool):
        self.n_samples, self.unit, self.square = n_samples, unit, square
        self.units = n_samples // unit  # K per example
        batch, device = inputs[0].shape[0], inputs[0].device
        self.mean = [torch.zeros(x.shape, dtype=accumulator_dtype(x.dtype), device=device) for x in inputs]
        self.mean_sq = [torch.zeros_like(m) for m in self.mean] if square else None
        self.unit_sums = [torch.zeros(x.shape, dtype=torch.float64, device=device) for x in inputs]
        self.unit_norms = torch.zeros(batch * self.units, dtype=torch.float64, device=device)
        self.pending: List[Optional[Tensor]] = [None] * len(inputs)  # an unfinished unit's first samples
        self.ones = torch.ones(n_samples, dtype=torch.float64, device=device)
        self.ones_units = torch.ones(self.units, dtype=torch.float64, device=device)

    def __call__(self, attrs: Tuple[Tensor, ...], g0: int, g1: int, _rows: Callable[[], Tuple[Tensor, ...]]) -> None:
        n_pending = 0
        norms = None
        for i, a in enumerate(attrs):
            sq = self.mean_sq[i] if self.mean_sq is not None else None
            ops.accumulate_(self.mean[i], sq, a, self.ones, g0, self.n_samples, 0)
            values = a.to(torch.float64)
            if self.square:
                values = values * values
            if self.pending[i] is not None:
                values = torch.cat([self.pending[i], values])
            n_pending = 0 if self.pending[i] is None else self.pending[i].shape[0]
            whole = values.shape[0] - values.shape[0] % self.unit
            self.pending[i] = values[whole:] if whole < values.shape[0] else None
            if whole == 0:
                continue
            # Units never straddle examples (unit divides N), so the first
            # sample here, g0 - n_pending, starts one.
            unit_means = values[:whole].reshape(whole // self.unit, self.unit, -1).mean(1)  # fast-form grads may be channels-last
            u0 = (g0 - n_pending) // self.unit
            ops.accumulate_(self.unit_sums[i].view(self.unit_sums[i].shape[0], -1), None, unit_means,
                            self.ones_units, u0, self.units, 0)
            part = unit_means.square().sum(1)
            norms = part if norms is None else norms + part
        if norms is not None:
            self.unit_norms[u0 : u0 + norms.shape[0]] = norms

    def result(self) -> Tuple[Tuple[Tensor, ...], Optional[Tuple[Tensor, ...]], Tensor]:
        """``(mean, mean_sq or None, standard_error [B])``: the means as the
        engine's :class:`~fastattr.engine.Result` gives them, and the relative
        standard error ``sqrt(sum_d Var(mean_d)) / |mean|`` over all inputs
        (float64; 0 where both are 0, inf where only the mean is 0)."""
        n = torch.tensor(float(self.n_samples), dtype=self.mean[0].dtype, device=self.mean[0].device)
        mean = tuple(a / n for a in self.mean)
        mean_sq = tuple(a / n for a in self.mean_sq) if self.mean_sq is not None else None
        k = self.units
        sum_sq = self.unit_norms.view(-1, k).sum(1)  # sum_u |m_u|^2
        grand = sum(s.reshape(s.shape[0], -1).square().sum(1) for s in self.unit_sums)  # |sum_u m_u|^2
        # sum_u |m_u - mean|^2 = sum_u |m_u|^2 - |sum_u m_u|^2 / K; clamped at 0 against rounding.
        spread = (sum_sq - grand / k).clamp_min(0)
        error = (spread / (k * (k - 1))).sqrt()
        size = grand.sqrt() / k
        relative = torch.where(error == 0, torch.zeros_like(error), error / size)
        return mean, mean_sq, relative


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
    antithetic: bool = True,
    return_standard_error: bool = False,
    model_form: str = "fast",
) -> Union[v.TensorOrTuple, Tuple[Any, ...]]:
    """Average an explainer over ``n_samples`` Gaussian-noised copies of each input.

    The noise of example ``b``, sample ``n``, element ``d`` of input ``i`` is
    keyed by ``(seed, i, b, n, d)`` (``csrc/README.md``): the same seed gives
    the same result for any batch composition, chunk size or device. With
    ``antithetic`` (the default) the samples come in pairs ``x + z, x - z``:
    sample ``n`` uses pair ``n // 2``'s draws with sign ``(-1)**n``. Each
    sample is still Gaussian, so the mean is as unbiased as with independent
    draws, and the part of the gradient that is odd in the noise cancels
    within each pair: on classifiers trained on digits, 15 to 39 antithetic
    samples reached the error of 50 independent ones (``docs/accuracy.md``). Captum's ``NoiseTunnel`` draws independent
    noise: pass ``antithetic=False`` for its numbers. For ``vargrad`` the
    pairs change the estimator's bias (as that of at most ``N / 2``
    independent samples; none when the gradient is linear in the noise).

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
        antithetic: draw the noise in antithetic pairs (default) or independently.
        return_standard_error: also return, per example, the estimated
            relative standard error of the average over samples (``kind``
            ``"smoothgrad"`` or ``"smoothgrad_sq"``): float64 ``[B]``,
            ``sqrt(sum_d Var(mean_d)) / |mean|`` over all inputs' features,
            the variance estimated from the example's independent units (its
            samples, or its antithetic pairs; needs at least 2 of them, and
            an even ``n_samples`` with ``antithetic``). It measures the noise
            average's own sampling error only, not an inner explainer's (the
            integration error of IG's path). An estimate from ``N`` samples
            itself: it scatters by about ``1 / sqrt(2 (K - 1))`` of itself.
        model_form: as :func:`fastattr.saliency`.

    Returns:
        Attributions shaped and typed like ``inputs``; then, in this order,
        ``delta`` with ``return_convergence_delta`` and ``standard_error``
        with ``return_standard_error`` (a tuple when either is asked for).
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
    if not isinstance(antithetic, bool):
        raise TypeError(f"antithetic: expected a bool, got {type(antithetic).__name__}")
    unit = 2 if antithetic else 1
    if return_standard_error:
        if kind == "vargrad":
            raise ValueError(
                "return_standard_error: only for kind 'smoothgrad' or 'smoothgrad_sq' (a mean over "
                "samples); vargrad is a variance, whose standard error is not computed"
            )
        if n_samples % unit or n_samples < 2 * unit:
            raise ValueError(
                f"n_samples: the standard error needs at least 2 independent "
                f"{'antithetic pairs (an even n_samples >= 4)' if antithetic else 'samples (n_samples >= 2)'}, "
                f"got {n_samples}"
            )
    inner, needs_baselines, baselines = _explainer_plan(explainer, {} if explainer_kwargs is None else explainer_kwargs)

    def plan_for(xs: Tuple[Tensor, ...]) -> PointPlan:
        return dataclasses.replace(
            inner,
            n_samples=n_samples,
            noise=noise_kind("gaussian", antithetic),
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
        want_deltas=bool(return_convergence_delta), model_form=model_form,
    )
    stats = None
    if return_standard_error:
        stats = _MeanAndStandardError(req.inputs, n_samples, unit, square=kind == "smoothgrad_sq")
        req.sample_sink = stats
    result = run(req)
    mean, mean_sq = result.mean, result.mean_sq
    if stats is not None:
        mean, mean_sq, standard_error = stats.result()
    if kind == "smoothgrad":
        values = mean
    elif kind == "smoothgrad_sq":
        values = mean_sq
    else:
        values = tuple(sq - m * m for m, sq in zip(mean, mean_sq))
    attributions = shape_output(values, req.inputs, was_tuple)
    extra: Tuple[Tensor, ...] = ()
    if return_convergence_delta:
        extra += (result.deltas.to(delta_dtype(req.inputs[0])),)
    if stats is not None:
        extra += (standard_error,)
    return (attributions, *extra) if extra else attributions
