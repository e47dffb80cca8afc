"""Quantus 0.6's ``Sufficiency``: the same constructor, call and scores, on
:mod:`fastattr.metrics.faithfulness_sufficiency`.

Sufficiency compares the examples of a batch with each other, so, as in
Quantus, a score depends on the other examples of its Quantus batch (the
``batch_size`` examples it is scored with). The explanations are not
normalised: Quantus's ``normalise_by_max`` divides every explanation of the
batch by one number, which the standardised distance, itself divided by the
batch's largest distance, does not see; a per-example normalisation would
change the distances. The model runs once over all examples, in budgeted chunks.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from .. import _validate as v
from ..captum._base import reject
from ..metrics.deletion import softmax_outputs
from ..metrics.faithfulness_sufficiency import DISTANCES, check_threshold, sufficiency_scores
from ..metrics.robustness import predicted_classes
from ._base import QuantusCall, per_example_normaliser
from ._faithfulness import SoftmaxByDefault


class Sufficiency(SoftmaxByDefault):
    """Quantus's ``Sufficiency`` (Dasgupta et al. 2022). Extra keywords
    ``memory_budget`` and ``chunk_rows`` (per forward chunk). Unsupported,
    raising :class:`NotImplementedError`: a ``distance_func`` other than
    ``"seuclidean"`` (the only one Quantus 0.6 runs), a ``normalise_func``
    other than Quantus's ``normalise_by_max``."""

    name = "Sufficiency"

    def __init__(self, threshold: float = 0.6, distance_func: str = "seuclidean", abs: bool = True,
                 normalise: bool = True, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, memory_budget: Optional[int] = None,
                 chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        # Quantus normalises the distance matrix with normalise_func even when
        # normalise is False.
        if normalise_func is not None:
            per_example_normaliser(normalise_func, None)  # supported, or NotImplementedError naming it
        self.normalise_func = None  # a common scale of the batch: see the module note
        self.threshold = check_threshold(threshold)
        if distance_func not in DISTANCES:
            raise NotImplementedError(
                f"distance_func={distance_func!r}: Quantus 0.6 passes V=None to scipy's cdist, which only "
                f"{list(DISTANCES)} accepts; fastattr supports that one"
            )
        self.distance_func = distance_func
        self.memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
        self.chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")

    def requires_explain_func(self) -> bool:
        return False

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[B]``, each Quantus batch of ``batch_size`` examples scored on its own."""
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        a = call.clean_attributions()
        model = softmax_outputs(call.model) if call.softmax else call.model
        x = call.x
        predicted = predicted_classes(model, lambda r0, r1: x[r0:r1], x.shape[0], (), x[:1], self.memory_budget,
                                      self.chunk_rows, model_form="eager")
        size = call.batch_size
        return torch.cat([sufficiency_scores(a[i:i + size], predicted[i:i + size], self.threshold)
                          for i in range(0, x.shape[0], size)]).cpu().numpy()
