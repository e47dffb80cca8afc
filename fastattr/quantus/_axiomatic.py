"""Quantus 0.6's axiomatic metrics: ``Completeness``, ``NonSensitivity`` and
``InputInvariance``: the same constructors, calls and scores (bools; ints for
``NonSensitivity``), on :mod:`fastattr.metrics.axiomatic`: model rows in
budgeted chunks of :func:`fastattr.engine.forward_rows`, a fastattr explainer
on the engine.

``Completeness`` tests ``sum(a) == f(x) - f(baseline)`` exactly, as Quantus;
here both sides are float64 (Quantus compares float32 sums), so the two agree
wherever the arithmetic is exact and may differ where one rounds to equality
and the other does not. ``InputInvariance`` shifts every feature but the
first of each example, as Quantus 0.6 does (its ``perturb_batch`` passes
``indices[i][1:]``; the function
:func:`~fastattr.metrics.axiomatic.input_invariance` shifts them all).
``NonSensitivity`` with ``features_in_step > 1`` (which fails in Quantus 0.6)
gives every feature its group's output change; its ``|delta| < eps`` is
compared in float64 (Quantus: float32). ``"uniform"`` baselines are keyed
draws (``seed``), where Quantus calls ``np.random.uniform``; Quantus's
batch-wide ``normalise`` is per example here.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..captum._base import reject
from ..metrics.axiomatic import all_close, completeness, mean_shifted_model, non_sensitivity
from ._base import QuantusCall, baseline_replacement, quantus_function_name, require_perturb_func, uniform_range
from ._localisation import TypedScores


def _replacement_options(perturb_func: Any, perturb_baseline: Any,
                         perturb_func_kwargs: Optional[Mapping[str, Any]]) -> Tuple[Any, float, float]:
    """:func:`baseline_replacement`'s checks, plus ``"mean"``: fixed here,
    as every perturbed row starts from the input (in pixel flipping it is not)."""
    if isinstance(perturb_baseline, str) and perturb_baseline == "mean":
        require_perturb_func(perturb_func, "batch_baseline_replacement_by_indices")
        return ("mean", *uniform_range(perturb_func_kwargs))
    return baseline_replacement(perturb_func, perturb_baseline, perturb_func_kwargs)


def _numpy_output_func(output_func: Optional[Callable[..., Any]]) -> Optional[Callable[[Tensor], Tensor]]:
    """Quantus's ``output_func`` (NumPy in, NumPy out) on float64 tensors; None for its ``identity``."""
    if output_func is None or quantus_function_name(output_func, "quantus.helpers.utils") == "identity":
        return None
    if not callable(output_func):
        raise TypeError(f"output_func: expected a callable, got {type(output_func).__name__}")

    def on_tensor(change: Tensor) -> Tensor:
        out = np.asarray(output_func(change.detach().cpu().numpy()), dtype=np.float64)
        return torch.from_numpy(out).to(change.device)

    return on_tensor


class _ModelRowsMetric(TypedScores):
    """The options shared by Completeness and NonSensitivity: the baseline,
    its key, and the forward chunks."""

    def __init__(self, perturb_baseline: Any, perturb_func: Any, perturb_func_kwargs: Optional[Dict[str, Any]],
                 seed: int, memory_budget: Optional[int], chunk_rows: Optional[int], **options: Any) -> None:
        super().__init__(**options)
        self.perturb_baseline, self.uniform_low, self.uniform_high = _replacement_options(
            perturb_func, perturb_baseline, perturb_func_kwargs)
        check_seed(seed)
        self.seed = seed
        self.memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
        self.chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")

    def requires_explain_func(self) -> bool:
        return False

    def options(self, call: QuantusCall) -> Dict[str, Any]:
        """The keyword arguments of the fastattr function for one call."""
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        return dict(target=call.y, baseline=self.perturb_baseline, output="probability" if call.softmax else "logit",
                    seed=self.seed, uniform_low=self.uniform_low, uniform_high=self.uniform_high,
                    memory_budget=self.memory_budget, chunk_rows=self.chunk_rows,
                    model_form="eager")  # Quantus's numbers: the model as it is


class Completeness(_ModelRowsMetric):
    """Quantus's ``Completeness`` (Sundararajan et al. 2017): per example,
    whether ``sum(a) == output_func(f(x)[y] - f(baseline)[y])``.

    Extra keywords: ``seed`` (key of the ``"uniform"`` baseline), ``memory_budget``,
    ``chunk_rows``. Unsupported (:class:`NotImplementedError`): a
    ``perturb_func`` other than Quantus's ``batch_baseline_replacement_by_indices``,
    ``model_predict_kwargs``.
    """

    name = "Completeness"
    score_dtype = np.bool_

    def __init__(self, abs: bool = False, normalise: bool = True, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 output_func: Optional[Callable[..., Any]] = None, perturb_baseline: Any = "black",
                 perturb_func: Optional[Callable[..., Any]] = None,
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, seed: int = 0, memory_budget: Optional[int] = None,
                 chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(perturb_baseline, perturb_func, perturb_func_kwargs, seed, memory_budget, chunk_rows,
                         abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        self.output_func = _numpy_output_func(output_func)

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        options = self.options(call)
        gap = completeness(call.model, call.x, call.clean_attributions(), output_func=self.output_func, **options)
        return self.typed(gap == 0)


class NonSensitivity(_ModelRowsMetric):
    """Quantus's ``NonSensitivity`` (Nguyen and Martinez 2020): per example,
    how many features have ``a < eps`` but change the output by ``>= eps``
    when replaced, or the reverse (``softmax`` defaults to True, as Quantus).

    Extra keywords and unsupported options as :class:`Completeness`.
    """

    name = "Non-Sensitivity"
    score_dtype = np.int64

    def __init__(self, eps: float = 1e-5, features_in_step: int = 1, abs: bool = True, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, perturb_baseline: Any = "black",
                 perturb_func: Optional[Callable[..., Any]] = None,
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Callable[..., Any] = np.mean, default_plot_func: Optional[Callable[..., Any]] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False, seed: int = 0,
                 memory_budget: Optional[int] = None, chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(perturb_baseline, perturb_func, perturb_func_kwargs, seed, memory_budget, chunk_rows,
                         abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
            raise ValueError(f"eps: expected a finite number, got {eps!r}")
        self.eps = eps
        self.features_in_step = v.check_positive_int(features_in_step, "features_in_step")

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Mapping[str, Any]] = None,
                 model_predict_kwargs: Optional[Mapping[str, Any]] = None, softmax: Optional[bool] = True,
                 device: Optional[Any] = None, batch_size: int = 64, **kwargs: Any) -> List[Any]:
        """A count per example (a list of ints), or ``[aggregate]``; arguments
        as Quantus's (``softmax`` defaults to True)."""
        return super().__call__(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                                explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size, **kwargs)

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        spatial = int(np.prod(call.x.shape[2:]))
        if spatial % self.features_in_step:
            raise ValueError(f"features_in_step: {self.features_in_step} must divide the product of the input's "
                             f"spatial shape ({spatial}), as Quantus asserts")
        options = self.options(call)
        counts = non_sensitivity(call.model, call.x, call.clean_attributions(), eps=self.eps,
                                 features_in_step=self.features_in_step, **options)
        return self.typed(counts)


class InputInvariance(TypedScores):
    """Quantus's ``InputInvariance`` (Kindermans et al. 2017): per example,
    whether the explanation of ``x + input_shift`` on the model with its first
    layer's bias shifted to compensate equals that of ``x`` (``numpy.isclose``,
    ``atol=1e-4``). Needs ``explain_func``, as Quantus.

    Unsupported (:class:`NotImplementedError`): a ``perturb_func`` other than
    Quantus's ``baseline_replacement_by_shift``, ``perturb_func_kwargs`` but
    ``input_shift``.
    """

    name = "Input Invariance"
    score_dtype = np.bool_

    def __init__(self, abs: bool = False, normalise: bool = False, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, input_shift: float = -1,
                 perturb_func: Optional[Callable[..., Any]] = None,
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        require_perturb_func(perturb_func, "baseline_replacement_by_shift")
        extra = dict(perturb_func_kwargs or {})
        input_shift = extra.pop("input_shift", input_shift)  # Quantus's make_perturb_func lets it override
        reject("perturb_func_kwargs", extra or None, None, "only input_shift is used")
        if isinstance(input_shift, bool) or not isinstance(input_shift, (int, float)) \
                or not math.isfinite(input_shift):
            raise ValueError(f"input_shift: expected a finite number, got {input_shift!r}")
        self.input_shift = input_shift

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        x = call.x
        shifted = mean_shifted_model(call.model, self.input_shift, (1, *x.shape[1:]))
        a = call.clean_attributions()
        moved_x = (x + self.input_shift).reshape(x.shape[0], -1)
        moved_x[:, 0] = x.reshape(x.shape[0], -1)[:, 0]  # Quantus 0.6 leaves the first feature unshifted
        moved = dataclasses.replace(call, model=shifted).explain(moved_x.view(x.shape), call.y)
        return self.typed(all_close(a, moved))
