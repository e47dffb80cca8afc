"""Quantus 0.6's ``Consistency`` (Dasgupta et al. 2022): the same
constructor, call and scores, on :mod:`fastattr.metrics.consistency`.

As in Quantus, examples are compared with the others of their
``batch_size`` chunk of the call: the score is relative to that set by
definition. Explanations are normalised per example, which does not change
their signs, so the scores are Quantus's.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..attr._call import build_request
from ..captum._base import reject
from ..engine import single_point_plan
from ..metrics.consistency import agreement, sign_codes
from ..metrics.stability import ModelReads
from ._base import QuantusCall, QuantusMetric, quantus_function_name

_DISCRETISE = "quantus.functions.discretise_func"


def signs_compared(discretise_func: Optional[Callable[..., Any]]) -> Optional[int]:
    """How many leading values' signs Quantus's discretise function compares:
    ``top_n_sign`` (5, or its ``n`` in a ``functools.partial``), ``sign``
    (all: None)."""
    if discretise_func is None:
        return 5
    fn, keywords = discretise_func, {}
    if isinstance(fn, functools.partial) and not fn.args:
        fn, keywords = fn.func, dict(fn.keywords)
    name = quantus_function_name(fn, _DISCRETISE)
    if name == "top_n_sign" and set(keywords) <= {"n"}:
        n = keywords.get("n", 5)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"discretise_func: top_n_sign's n must be an integer >= 1, got {n!r}")
        return n
    if name == "sign" and not keywords:
        return None
    raise NotImplementedError(
        f"discretise_func={discretise_func!r}: fastattr supports Quantus's top_n_sign and sign only"
    )


class Consistency(QuantusMetric):
    """Quantus's ``Consistency``: per example, of the other examples of its
    ``batch_size`` chunk whose explanation has the same signs in its first 5
    values, the share with the same predicted class (``/ (count + 1e-9)``)."""

    name = "Consistency"

    def __init__(self, discretise_func: Optional[Callable[..., Any]] = None, abs: bool = True,
                 normalise: bool = True, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        self.n_signs = signs_compared(discretise_func)

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Dict[str, Any]] = None,
                 model_predict_kwargs: Optional[Dict[str, Any]] = None, softmax: Optional[bool] = True,
                 device: Optional[Any] = None, batch_size: int = 64, **kwargs: Any) -> List[Any]:
        """Scores of every example (a list), as Quantus's (``softmax`` defaults to True)."""
        return super().__call__(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                                explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size, **kwargs)

    def requires_explain_func(self) -> bool:
        return False

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        req, _ = build_request(call.model, call.x, call.y, None, lambda xs: single_point_plan("grad"), None, None,
                               model_form="eager")
        predictions = ModelReads(req).predictions
        attrs = call.clean_attributions()
        groups = torch.arange(call.x.shape[0], device=call.x.device) // call.batch_size
        return agreement(sign_codes(attrs, self.n_signs), predictions, groups).cpu().numpy()
