"""Quantus 0.6's complexity metrics: ``Sparseness``, ``Complexity`` and
``EffectiveComplexity``: the same constructors, calls and scores (floats;
ints for ``EffectiveComplexity``), on :mod:`fastattr.metrics.complexity`.

By default Quantus takes ``abs`` and normalises by the maximum over the whole
batch; here per example, which changes no score beyond Quantus's additive
constants (``1e-7`` of the Gini index, ``1e-12`` in the entropy's log), but
does change ``EffectiveComplexity``'s count above ``eps`` where the batch's
maximum differs from the example's. Quantus refuses a batch whose
explanations are all 0 or all equal; fastattr scores each example (an
all-zero one: sparseness 0, complexity NaN, effective complexity 0).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import numpy as np
from torch import Tensor

from ..metrics.complexity import effective_complexity, entropy_complexity, sparseness
from ._base import QuantusCall
from ._localisation import ExplanationMetric


class _ComplexityMetric(ExplanationMetric):
    """Scored from the explanations alone (constructor: Quantus's common
    options at its complexity defaults, ``abs=True, normalise=True``)."""

    def __init__(self, abs: bool = True, normalise: bool = True, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        return self.typed(self.score(call.clean_attributions()))

    def score(self, a: Tensor) -> Tensor:
        """``[B]`` from explanations ``[B, *A]``."""
        raise NotImplementedError


class Sparseness(_ComplexityMetric):
    """Quantus's ``Sparseness`` (Chalasani et al. 2020): the Gini index."""

    name = "Sparseness"

    def score(self, a: Tensor) -> Tensor:
        return sparseness(a)


class Complexity(_ComplexityMetric):
    """Quantus's ``Complexity`` (Bhatt et al. 2020): the entropy of the shares."""

    name = "Complexity"

    def score(self, a: Tensor) -> Tensor:
        return entropy_complexity(a)


class EffectiveComplexity(_ComplexityMetric):
    """Quantus's ``EffectiveComplexity`` (Nguyen and Martinez 2020): ints."""

    name = "Effective Complexity"
    score_dtype = np.int64

    def __init__(self, eps: float = 1e-5, abs: bool = True, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
            raise ValueError(f"eps: expected a finite number, got {eps!r}")
        self.eps = eps

    def score(self, a: Tensor) -> Tensor:
        return effective_complexity(a, self.eps)
