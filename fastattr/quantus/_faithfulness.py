"""Quantus 0.6's ``FaithfulnessCorrelation``, ``FaithfulnessEstimate``,
``SensitivityN``, ``Monotonicity`` and ``MonotonicityCorrelation``: the same
constructors, calls and scores, on fastattr's metrics
(:mod:`fastattr.metrics.faithfulness`, :mod:`~fastattr.metrics.faithfulness_monotonicity`).

The element order is NumPy's ``argsort`` of the attributions, as Quantus's
(its order of ties included). Quantus draws random subsets and ``"uniform"``
fill values from NumPy's global RNG; here they are keyed by ``(seed, example)``
(a ``seed`` keyword picks them), so a score does not depend on
``batch_size`` or on the rest of the batch. Quantus normalises explanations
over the whole batch; here per example, which none of these scores sees (a
positive scale per example changes neither a correlation over one example's
steps nor an order). Sensitivity-N correlates across examples: there the
explanations are not normalised at all, which is what Quantus's one scale
for the batch amounts to.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..captum._base import reject
from ..metrics.faithfulness import faithfulness_correlation, faithfulness_estimate, sensitivity_n
from ..metrics.faithfulness_monotonicity import INSERTED, monotonicity, monotonicity_correlation
from ._base import QuantusCall, QuantusMetric, baseline_replacement, quantus_function_name
from ._infidelity import explanation_like

_SIMILARITIES = {"correlation_pearson": "pearson", "correlation_spearman": "spearman"}


def similarity_name(fn: Optional[Callable[..., Any]], default: str) -> str:
    """``"pearson"`` / ``"spearman"`` for Quantus's ``correlation_pearson`` /
    ``correlation_spearman`` (``default`` for None)."""
    if fn is None:
        return default
    name = quantus_function_name(fn, "quantus.functions.similarity_func")
    if name not in _SIMILARITIES:
        raise NotImplementedError(f"similarity_func={fn!r}: fastattr supports Quantus's {sorted(_SIMILARITIES)} only")
    return _SIMILARITIES[name]


def numpy_order(attrs: Tensor, descending: bool) -> Tensor:
    """int64 ``[B, F]``: Quantus's element order, ``np.argsort(-a)`` (or
    ``np.argsort(a)``) of the flattened attributions, ties as NumPy leaves them."""
    flat = attrs.reshape(attrs.shape[0], -1).detach().cpu().numpy()
    order = np.argsort(-flat if descending else flat, axis=1)
    return torch.from_numpy(order).to(device=attrs.device, dtype=torch.int64)


def check_features_in_step(features_in_step: int, x: Tensor) -> None:
    """Quantus's ``assert_features_in_step``, as a ValueError."""
    spatial = math.prod(x.shape[2:])
    if spatial % features_in_step:
        raise ValueError(
            f"features_in_step: {features_in_step} must divide the product of the input's spatial shape "
            f"({spatial}), as Quantus asserts"
        )


class ReplacementMetric(QuantusMetric):
    """A metric that replaces input elements by Quantus's
    ``batch_baseline_replacement_by_indices``: its options, and the extra
    keywords ``seed`` (key of the random draws), ``memory_budget`` and
    ``chunk_rows`` (per forward chunk)."""

    def __init__(self, perturb_func: Any, perturb_baseline: Any, perturb_func_kwargs: Optional[Dict[str, Any]],
                 seed: int, memory_budget: Optional[int], chunk_rows: Optional[int], **options: Any) -> None:
        super().__init__(**options)
        self.perturb_baseline, self.uniform_low, self.uniform_high = baseline_replacement(
            perturb_func, perturb_baseline, perturb_func_kwargs)
        check_seed(seed)
        self.seed = seed
        self.memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
        self.chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")

    def requires_explain_func(self) -> bool:
        return False

    def options(self, call: QuantusCall) -> Dict[str, Any]:
        """The keyword arguments every fastattr metric function takes from this call."""
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        return dict(baseline=self.perturb_baseline, output="probability" if call.softmax else "logit",
                    seed=self.seed, uniform_low=self.uniform_low, uniform_high=self.uniform_high,
                    memory_budget=self.memory_budget, chunk_rows=self.chunk_rows,
                    model_form="eager")  # Quantus's numbers: the model as it is


class SoftmaxByDefault(QuantusMetric):
    """A metric whose Quantus ``__call__`` defaults to ``softmax=True``."""

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Mapping[str, Any]] = None,
                 model_predict_kwargs: Optional[Mapping[str, Any]] = None, softmax: Optional[bool] = True,
                 device: Optional[Any] = None, batch_size: int = 64, **kwargs: Any) -> Any:
        """As :meth:`QuantusMetric.__call__`, with Quantus's ``softmax=True``."""
        return super().__call__(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                                explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size, **kwargs)


def base_options(abs: bool, normalise: bool, normalise_func: Any, normalise_func_kwargs: Any,
                 return_aggregate: bool, aggregate_func: Any, default_plot_func: Any, disable_warnings: bool,
                 display_progressbar: bool, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Quantus's common ``Metric`` options as keywords of :class:`QuantusMetric`."""
    return dict(abs=abs, normalise=normalise, normalise_func=normalise_func,
                normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)


class FaithfulnessCorrelation(ReplacementMetric):
    """Quantus's ``FaithfulnessCorrelation`` (Bhatt et al. 2020): subset ``n``
    of example ``b`` is :func:`fastattr.metrics.faithfulness.correlation_subsets`
    where Quantus calls ``np.random.choice``. Unsupported, raising
    :class:`NotImplementedError`: a ``similarity_func`` other than Quantus's
    Pearson / Spearman, a ``perturb_func`` other than its
    ``batch_baseline_replacement_by_indices``, ``perturb_baseline="mean"``."""

    name = "Faithfulness Correlation"

    def __init__(self, similarity_func: Optional[Callable[..., Any]] = None, nr_runs: int = 100,
                 subset_size: int = 224, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_baseline: Any = "black",
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = True,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, seed: int = 0, memory_budget: Optional[int] = None,
                 chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(perturb_func, perturb_baseline, perturb_func_kwargs, seed, memory_budget, chunk_rows,
                         **base_options(abs, normalise, normalise_func, normalise_func_kwargs, return_aggregate,
                                         aggregate_func, default_plot_func, disable_warnings,
                                         display_progressbar, kwargs))
        self.similarity = similarity_name(similarity_func, "pearson")
        self.nr_runs = v.check_positive_int(nr_runs, "nr_runs")
        self.subset_size = v.check_positive_int(subset_size, "subset_size")

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[B]``."""
        limit = math.prod(call.x.shape[2:])
        if self.subset_size >= limit:
            raise ValueError(f"subset_size: must be smaller than the input's spatial size "
                             f"({self.subset_size} >= {limit}), as Quantus requires")
        return faithfulness_correlation(call.model, call.x, explanation_like(call), call.y, n_runs=self.nr_runs,
                                        subset_size=self.subset_size, similarity=self.similarity,
                                        **self.options(call)).cpu().numpy()


class FaithfulnessEstimate(ReplacementMetric):
    """Quantus's ``FaithfulnessEstimate`` (Alvarez-Melis & Jaakkola 2018).
    Unsupported options as :class:`FaithfulnessCorrelation`."""

    name = "Faithfulness Estimate"

    def __init__(self, similarity_func: Optional[Callable[..., Any]] = None, features_in_step: int = 1,
                 abs: bool = False, normalise: bool = True, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_baseline: Any = "black",
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, seed: int = 0, memory_budget: Optional[int] = None,
                 chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(perturb_func, perturb_baseline, perturb_func_kwargs, seed, memory_budget, chunk_rows,
                         **base_options(abs, normalise, normalise_func, normalise_func_kwargs, return_aggregate,
                                         aggregate_func, default_plot_func, disable_warnings,
                                         display_progressbar, kwargs))
        self.similarity = similarity_name(similarity_func, "pearson")
        self.features_in_step = v.check_positive_int(features_in_step, "features_in_step")

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[B]``."""
        check_features_in_step(self.features_in_step, call.x)
        a = explanation_like(call)
        return faithfulness_estimate(call.model, call.x, a, call.y, features_in_step=self.features_in_step,
                                     similarity=self.similarity, order=numpy_order(a, descending=True),
                                     **self.options(call)).cpu().numpy()


class SensitivityN(SoftmaxByDefault, ReplacementMetric):
    """Quantus's ``SensitivityN`` (Ancona et al. 2018, as Quantus computes it:
    see :func:`fastattr.metrics.faithfulness.sensitivity_n`). The score is
    one correlation per step **across the examples** of Quantus's first batch
    (the first ``batch_size`` examples: Quantus scores no others), a list
    of ``int(n_max_percentage * H * W // features_in_step)`` values, or
    ``[their mean]`` with ``return_aggregate`` (the default). Unsupported
    options as :class:`FaithfulnessCorrelation`."""

    name = "Sensitivity-N"

    def __init__(self, similarity_func: Optional[Callable[..., Any]] = None, n_max_percentage: float = 0.8,
                 features_in_step: int = 1, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_baseline: Any = "black",
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = True,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, seed: int = 0, memory_budget: Optional[int] = None,
                 chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(perturb_func, perturb_baseline, perturb_func_kwargs, seed, memory_budget, chunk_rows,
                         **base_options(abs, normalise, normalise_func, normalise_func_kwargs, return_aggregate,
                                         aggregate_func, default_plot_func, disable_warnings,
                                         display_progressbar, kwargs))
        # Quantus's normalise_by_max divides every explanation of the batch by
        # one number, which a correlation across the examples does not see.
        self.normalise_func = None
        self.similarity = similarity_name(similarity_func, "pearson")
        self.n_max_percentage = n_max_percentage
        self.features_in_step = v.check_positive_int(features_in_step, "features_in_step")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Quantus's result: an array of per-step correlations, or ``[mean]``."""
        scores = super().__call__(*args, **kwargs)
        if self.return_aggregate:
            return scores
        self.evaluation_scores = np.asarray(scores, dtype=np.float64)
        return self.evaluation_scores

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[K]``: the correlation of each step across the examples."""
        check_features_in_step(self.features_in_step, call.x)
        first = slice(0, call.batch_size)
        call = dataclasses.replace(call, x=call.x[first], y=call.y[first], a=None if call.a is None else call.a[first])
        if call.x.shape[0] < 2:
            raise ValueError("x_batch: Sensitivity-N correlates across the examples of a batch; it needs at least 2 "
                             f"(in its first batch of batch_size={call.batch_size})")
        a = explanation_like(call)
        return sensitivity_n(call.model, call.x, a, call.y, features_in_step=self.features_in_step,
                             n_max_percentage=self.n_max_percentage, similarity=self.similarity,
                             order=numpy_order(a, descending=True), **self.options(call)).correlation.cpu().numpy()


class Monotonicity(SoftmaxByDefault, ReplacementMetric):
    """Quantus's ``Monotonicity`` (Arya et al. 2019): a list of bools.

    Quantus 0.6 fills each step's elements with fresh baseline values instead
    of the input's (its steps replace the baseline image by the baseline), so
    with ``"black"``, ``"white"`` or a number every example scores True, and
    with ``"uniform"`` the input never enters. This class reproduces that by
    default (``inserted="baseline"``); ``inserted="input"`` (an extra keyword)
    scores the metric as Arya et al. define it, putting the input's values in.
    Unsupported options as :class:`FaithfulnessCorrelation`.
    """

    name = "Monotonicity"

    def __init__(self, features_in_step: int = 1, abs: bool = True, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_baseline: Any = "black",
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, inserted: str = "baseline", seed: int = 0,
                 memory_budget: Optional[int] = None, chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(perturb_func, perturb_baseline, perturb_func_kwargs, seed, memory_budget, chunk_rows,
                         **base_options(abs, normalise, normalise_func, normalise_func_kwargs, return_aggregate,
                                         aggregate_func, default_plot_func, disable_warnings,
                                         display_progressbar, kwargs))
        self.features_in_step = v.check_positive_int(features_in_step, "features_in_step")
        self.inserted = v.check_choice(inserted, "inserted", INSERTED)

    def __call__(self, *args: Any, **kwargs: Any) -> List[Any]:
        """A bool per example (Quantus's), or ``[aggregate]``; arguments as
        :meth:`SoftmaxByDefault.__call__`."""
        n_before = len(self.all_evaluation_scores)
        scores = super().__call__(*args, **kwargs)
        if not self.return_aggregate:
            self.evaluation_scores = [bool(s) for s in scores]
            self.all_evaluation_scores[n_before:] = self.evaluation_scores
        return self.evaluation_scores

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """bool ``[B]``."""
        check_features_in_step(self.features_in_step, call.x)
        a = explanation_like(call)
        return monotonicity(call.model, call.x, a, call.y, features_in_step=self.features_in_step,
                            inserted=self.inserted, order=numpy_order(a, descending=False),
                            **self.options(call)).cpu().numpy()


class MonotonicityCorrelation(SoftmaxByDefault, ReplacementMetric):
    """Quantus's ``MonotonicityCorrelation`` (Nguyen & Martinez 2020): the
    ``"uniform"`` value of example ``b``, step ``k``, sample ``n`` is keyed
    where Quantus calls ``np.random.uniform``. When the first or second
    example of a batch has a constant series, SciPy's ``spearmanr`` returns one
    plain NaN for the whole batch and Quantus 0.6 fails on it
    (``AttributeError``); here that example alone is NaN.
    Unsupported options as :class:`FaithfulnessCorrelation`."""

    name = "Monotonicity"

    def __init__(self, similarity_func: Optional[Callable[..., Any]] = None, eps: float = 1e-5,
                 nr_samples: int = 100, features_in_step: int = 1, abs: bool = True, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_baseline: Any = "uniform",
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, seed: int = 0, memory_budget: Optional[int] = None,
                 chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(perturb_func, perturb_baseline, perturb_func_kwargs, seed, memory_budget, chunk_rows,
                         **base_options(abs, normalise, normalise_func, normalise_func_kwargs, return_aggregate,
                                         aggregate_func, default_plot_func, disable_warnings,
                                         display_progressbar, kwargs))
        self.similarity = similarity_name(similarity_func, "spearman")
        self.eps = eps
        self.nr_samples = v.check_positive_int(nr_samples, "nr_samples")
        self.features_in_step = v.check_positive_int(features_in_step, "features_in_step")

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[B]``."""
        check_features_in_step(self.features_in_step, call.x)
        a = explanation_like(call)
        return monotonicity_correlation(call.model, call.x, a, call.y, features_in_step=self.features_in_step,
                                        n_samples=self.nr_samples, similarity=self.similarity, eps=self.eps,
                                        order=numpy_order(a, descending=False), **self.options(call)).cpu().numpy()
