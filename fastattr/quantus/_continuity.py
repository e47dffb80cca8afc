"""Quantus 0.6's ``Continuity`` (Montavon et al. 2018): the same
constructor, call and scores, on :mod:`fastattr.metrics.continuity`.

As Quantus 0.6, the clean explanation is made anew from ``explain_func``
(``a_batch`` is not used) and every translation pads with the example's
minimum ("black") whatever ``perturb_func`` / ``perturb_baseline`` say:
fastattr refuses other values of those instead of ignoring them. The
explanations are normalised per example (Quantus's ``normalise_by_max``
spans the batch array).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from torch import Tensor

from .. import _validate as v
from ..attr._call import build_request
from ..captum._base import reject
from ..engine import single_point_plan
from ..metrics.continuity import check_image, continuity_values, prediction_differs_from
from ..metrics.explained_rows import ExplainGivenRows, block_examples
from ..metrics.stability import ModelReads
from ._base import QuantusCall, QuantusMetric, quantus_function_name


def rows_explainer(call: QuantusCall, finish: bool = True) -> ExplainGivenRows:
    """Rows explained for their examples' classes ``y`` as Quantus's
    ``explain_batch`` does (normalise and abs, unless ``finish`` is False): a
    fastattr explainer on the engine, keyed by the call's row index; any
    other ``explain_func`` called as Quantus calls it."""

    def explain(rows: Tuple[Tensor, ...], examples: Tensor, first_row: int) -> Tuple[Tensor, ...]:
        y = call.y.index_select(0, examples)
        if call.explainer is not None:
            (a,) = call.explainer(call.model, rows, False, target=y, example_offset=first_row)
        else:
            a = call.explain_raw(rows[0], y)
        return (call.finish(a) if finish else a,)

    return explain


class Continuity(QuantusMetric):
    """Quantus's ``Continuity``: per example, the max over ``nr_steps``
    translations ``x_t`` along the width of ``||a(x) - a(x_t)||_1 / (||x - x_t||_2 + 1e-9)``
    (explanations normalised by their max and made absolute by default);
    NaN where ``return_nan_when_prediction_changes`` and the prediction at
    ``x_t`` is not ``y``."""

    name = "Continuity"

    def __init__(self, nr_steps: int = 28, abs: bool = True, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_baseline: str = "black",
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = np.mean,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, return_nan_when_prediction_changes: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        self.nr_steps = v.check_positive_int(nr_steps, "nr_steps")
        if perturb_func is not None and quantus_function_name(
                perturb_func, "quantus.functions.perturb_func") != "batched_translation":
            raise NotImplementedError(
                f"perturb_func={perturb_func!r}: Quantus 0.6's Continuity always translates with "
                "batched_translation (it ignores perturb_func); fastattr supports that one only"
            )
        reject("perturb_baseline", perturb_baseline, "black",
               "Quantus 0.6's Continuity always pads its translations with 'black' (it ignores perturb_baseline)")
        reject("perturb_func_kwargs", perturb_func_kwargs, None, "Quantus 0.6's Continuity ignores them")
        self.return_nan_when_prediction_changes = bool(return_nan_when_prediction_changes)

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        check_image(call.x, "x_batch")
        changed = None
        if self.return_nan_when_prediction_changes:
            req, _ = build_request(call.model, call.x, call.y, None, lambda xs: single_point_plan("grad"),
                                   None, None, model_form="eager")
            changed = prediction_differs_from(ModelReads(req, "probability" if call.softmax else "logit"), call.y)
        clean = call.explain(call.x, call.y)
        blocks = block_examples((call.x,), self.nr_steps, None)
        values = continuity_values(rows_explainer(call), call.x, clean, self.nr_steps, blocks, changed)
        return values.amax(dim=1).cpu().numpy()
