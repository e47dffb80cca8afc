"""Quantus 0.6's ``MaxSensitivity``, ``AvgSensitivity`` and
``LocalLipschitzEstimate``: the same constructors, calls and scores, on
fastattr's keyed perturbations (a ``seed`` keyword picks them).

Quantus draws its noise from numpy's global RNG, one ``[B, D]`` draw per
sample; here sample ``n`` of example ``b`` is keyed by ``(seed, b, n)``, so a
score does not depend on ``batch_size`` or on the rest of the batch (Quantus's
``normalise`` spans the batch; here it is per example).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from torch import Tensor

from .. import _validate as v
from ..attr._call import build_request
from ..attr.smoothgrad import check_seed
from ..captum._base import reject
from ..engine import single_point_plan
from ..metrics.lipschitz import lipschitz_values
from ..metrics.sensitivity import Perturbation, PerturbedExplanations, sensitivity_values
from ._base import QuantusCall, QuantusMetric, quantus_function_name

_NORMS = {"fro_norm": 2.0, "l2_norm": 2.0, "linf_norm": float("inf")}
_DISTANCES = {"distance_euclidean": 2.0, "distance_manhattan": 1.0, "distance_chebyshev": float("inf")}
_FUNCTIONS = "quantus.functions"


def _order(fn: Optional[Callable[..., Any]], name: str, known: Dict[str, float], default: str) -> float:
    """The vector-norm order of one of Quantus's norm / distance functions."""
    key = default if fn is None else quantus_function_name(fn, _FUNCTIONS)
    if key not in known:
        raise NotImplementedError(f"{name}={fn!r}: fastattr supports Quantus's {sorted(known)} only")
    return known[key]


def perturbation_of(perturb_func: Optional[Callable[..., Any]], perturb_func_kwargs: Optional[Dict[str, Any]],
                    defaults: Dict[str, Any], nr_samples: int, seed: int,
                    default: str = "batch_uniform_noise") -> Perturbation:
    """Quantus's ``batch_uniform_noise`` (``U[-lower, lower)``, or ``U[lower, upper)``)
    or ``batch_gaussian_noise`` (``N(mean, std)``), with the metric's defaults
    overridden by ``perturb_func_kwargs`` as Quantus's ``make_perturb_func`` does."""
    name = default if perturb_func is None else quantus_function_name(perturb_func, _FUNCTIONS)
    kwargs = {**defaults, **(perturb_func_kwargs or {})}
    if name == "batch_uniform_noise":
        lower, upper = float(kwargs.get("lower_bound", 0.02)), kwargs.get("upper_bound")
        if upper is None:
            if lower <= 0:
                raise ValueError(f"lower_bound: expected a number > 0 (the noise is U[-lower, lower)), got {lower}")
            return Perturbation("uniform", (lower,), nr_samples, seed)
        if not float(upper) > lower:
            raise ValueError(f"upper_bound: must be larger than lower_bound, got {upper} <= {lower}")
        return Perturbation("uniform", ((float(upper) - lower) / 2,), nr_samples, seed, (float(upper) + lower) / 2)
    if name == "batch_gaussian_noise":
        std = float(kwargs.get("perturb_std", 0.01))
        if std <= 0:
            raise ValueError(f"perturb_std: expected a number > 0, got {std}")
        return Perturbation("gaussian", (std,), nr_samples, seed, float(kwargs.get("perturb_mean", 0.0)))
    raise NotImplementedError(
        f"perturb_func={perturb_func!r}: fastattr supports Quantus's batch_uniform_noise and "
        "batch_gaussian_noise only"
    )


def quantus_explanations(call: QuantusCall) -> PerturbedExplanations:
    """The audit of one Quantus call: a fastattr explainer folded into the
    engine plan (or called on chunks), any other ``explain_func`` called on
    chunks as Quantus calls it; explanations finished (normalise, abs) as Quantus does."""
    exp = call.explainer
    native = exp is not None and exp.engine_name is not None
    plan, needs_baselines, baselines = exp.plan() if native else (single_point_plan("grad"), False, None)
    req, _ = build_request(call.model, call.x, call.y, None, lambda xs: plan, None, None,
                           baselines=baselines, needs_baselines=needs_baselines, model_form="eager")
    clean = call.clean_attributions()
    if native and clean.shape != call.x.shape:
        raise ValueError(
            f"a_batch: shape {tuple(clean.shape)} differs from the explainer's attributions "
            f"{tuple(call.x.shape)} (shaped like x_batch)"
        )

    def explain_rows(xs: Tuple[Tensor, ...], y: Tensor, _args: Any, _examples: Tensor,
                     _first_key: int) -> Tuple[Tensor, ...]:
        a = call.explain_raw(xs[0], y)
        if a.shape[1:] != clean.shape[1:]:
            raise ValueError(
                f"explain_func: explanations of shape {tuple(a.shape[1:])} per example differ from "
                f"a_batch's {tuple(clean.shape[1:])}"
            )
        return (a,)

    def finish(attrs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        return (call.finish(attrs[0]),)

    return PerturbedExplanations(req, False, (clean,), None if native else explain_rows, finish)


class _PerturbationMetric(QuantusMetric):
    """What the three metrics share: samples, perturbation, seed, and no NaN on a changed prediction."""

    def __init__(self, nr_samples: int, perturb_func: Optional[Callable[..., Any]],
                 perturb_func_kwargs: Optional[Dict[str, Any]], perturb_defaults: Dict[str, Any],
                 return_nan_when_prediction_changes: bool, seed: int,
                 default_perturb_func: str = "batch_uniform_noise", **options: Any) -> None:
        super().__init__(**options)
        self.nr_samples = v.check_positive_int(nr_samples, "nr_samples")
        check_seed(seed)
        self.seed = seed
        reject("return_nan_when_prediction_changes", return_nan_when_prediction_changes, False)
        self.perturbation = perturbation_of(perturb_func, perturb_func_kwargs, perturb_defaults,
                                            self.nr_samples, seed, default_perturb_func)

    def values(self, call: QuantusCall) -> Tensor:
        """float64 ``[B, nr_samples]``: the per-sample scores."""
        raise NotImplementedError


class _Sensitivity(_PerturbationMetric):
    reduce = staticmethod(lambda values: values.amax(dim=1))

    def __init__(self, similarity_func: Optional[Callable[..., Any]] = None,
                 norm_numerator: Optional[Callable[..., Any]] = None,
                 norm_denominator: Optional[Callable[..., Any]] = None, nr_samples: int = 200,
                 abs: bool = False, normalise: bool = False, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, lower_bound: float = 0.2,
                 upper_bound: Optional[float] = None, perturb_func_kwargs: Optional[Dict[str, Any]] = None,
                 return_aggregate: bool = False, aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, return_nan_when_prediction_changes: bool = False,
                 seed: int = 0, **kwargs: Any) -> None:
        if similarity_func is not None and quantus_function_name(similarity_func, _FUNCTIONS) != "difference":
            raise NotImplementedError(
                f"similarity_func={similarity_func!r}: fastattr supports Quantus's difference only"
            )
        self.norm_numerator = _order(norm_numerator, "norm_numerator", _NORMS, "fro_norm")
        self.norm_denominator = _order(norm_denominator, "norm_denominator", _NORMS, "fro_norm")
        super().__init__(nr_samples, perturb_func, perturb_func_kwargs,
                         {"lower_bound": lower_bound, "upper_bound": upper_bound},
                         return_nan_when_prediction_changes, seed, abs=abs, normalise=normalise,
                         normalise_func=normalise_func, normalise_func_kwargs=normalise_func_kwargs,
                         return_aggregate=return_aggregate, aggregate_func=aggregate_func,
                         default_plot_func=default_plot_func, disable_warnings=disable_warnings,
                         display_progressbar=display_progressbar, **kwargs)

    def values(self, call: QuantusCall) -> Tensor:
        return sensitivity_values(quantus_explanations(call), self.perturbation, self.norm_numerator,
                                  True, self.norm_denominator)

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        return self.reduce(self.values(call)).cpu().numpy()


class MaxSensitivity(_Sensitivity):
    """Quantus's ``MaxSensitivity`` (Yeh et al. 2019): per example, the max over
    ``nr_samples`` perturbations (default ``U[-0.2, 0.2)`` per element) of
    ``||a(x) - a(x')|| / ||a(x)||``. Differences from Quantus: keyed noise
    (``seed``), per-example ``normalise``, a zero ``||a(x)||`` divides by 1."""

    name = "Max-Sensitivity"


class AvgSensitivity(_Sensitivity):
    """Quantus's ``AvgSensitivity``: :class:`MaxSensitivity` with the mean over perturbations."""

    name = "Avg-Sensitivity"
    reduce = staticmethod(lambda values: values.mean(dim=1))


class LocalLipschitzEstimate(_PerturbationMetric):
    """Quantus's ``LocalLipschitzEstimate`` (Alvarez-Melis & Jaakkola 2018): per
    example, the max over ``nr_samples`` Gaussian perturbations (``perturb_std=0.1``)
    of ``||a(x) - a(x')||_2 / (||x - x'||_2 + 1e-10)``, explanations normalised
    by their max (per example here, over the batch in Quantus)."""

    name = "Local Lipschitz Estimate"

    def __init__(self, similarity_func: Optional[Callable[..., Any]] = None,
                 norm_numerator: Optional[Callable[..., Any]] = None,
                 norm_denominator: Optional[Callable[..., Any]] = None, nr_samples: int = 200,
                 abs: bool = False, normalise: bool = True, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_mean: float = 0.0,
                 perturb_std: float = 0.1, perturb_func_kwargs: Optional[Dict[str, Any]] = None,
                 return_aggregate: bool = False, aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, return_nan_when_prediction_changes: bool = False,
                 seed: int = 0, **kwargs: Any) -> None:
        if similarity_func is not None and quantus_function_name(similarity_func, _FUNCTIONS) != "lipschitz_constant":
            raise NotImplementedError(
                f"similarity_func={similarity_func!r}: fastattr supports Quantus's lipschitz_constant only"
            )
        self.norm_numerator = _order(norm_numerator, "norm_numerator", _DISTANCES, "distance_euclidean")
        self.norm_denominator = _order(norm_denominator, "norm_denominator", _DISTANCES, "distance_euclidean")
        super().__init__(nr_samples, perturb_func, perturb_func_kwargs,
                         {"perturb_mean": perturb_mean, "perturb_std": perturb_std},
                         return_nan_when_prediction_changes, seed, "batch_gaussian_noise", abs=abs, normalise=normalise,
                         normalise_func=normalise_func, normalise_func_kwargs=normalise_func_kwargs,
                         return_aggregate=return_aggregate, aggregate_func=aggregate_func,
                         default_plot_func=default_plot_func, disable_warnings=disable_warnings,
                         display_progressbar=display_progressbar, **kwargs)

    def values(self, call: QuantusCall) -> Tensor:
        return lipschitz_values(quantus_explanations(call), self.perturbation, self.norm_numerator,
                                self.norm_denominator)

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        return self.values(call).amax(dim=1).cpu().numpy()

