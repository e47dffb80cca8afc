"""Quantus 0.6's ``PixelFlipping``: the same constructor, call and curves
(or per-example AUCs), on :func:`fastattr.metrics.deletion.pixel_flipping`.

Quantus orders the features with NumPy's (unstable) ``argsort``; the drop-in
takes that very order, so tied attributions (an explanation per pixel
broadcast over channels) flip in the same order as in Quantus.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..captum._base import reject
from ..metrics.deletion import pixel_flipping
from ._base import QuantusCall, QuantusMetric, baseline_replacement
from ._infidelity import explanation_like



class PixelFlipping(QuantusMetric):
    """Quantus's ``PixelFlipping`` (Bach et al. 2015).

    Extra keywords: ``seed`` (key of the ``"uniform"`` baseline draws),
    ``memory_budget`` and ``chunk_rows`` (per forward chunk).
    Unsupported, raising :class:`NotImplementedError`: a ``perturb_func``
    other than Quantus's ``batch_baseline_replacement_by_indices``,
    ``perturb_baseline="mean"``, ``model_predict_kwargs``.
    """

    name = "Pixel-Flipping"

    def __init__(self, features_in_step: int = 1, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_baseline: Any = "black",
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None, return_auc_per_sample: bool = False,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, seed: int = 0, memory_budget: Optional[int] = None,
                 chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        self.perturb_baseline, self.uniform_low, self.uniform_high = baseline_replacement(
            perturb_func, perturb_baseline, perturb_func_kwargs)
        self.features_in_step = v.check_positive_int(features_in_step, "features_in_step")
        self.return_auc_per_sample = bool(return_auc_per_sample)
        check_seed(seed)
        self.seed = seed
        self.memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
        self.chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Mapping[str, Any]] = None,
                 model_predict_kwargs: Optional[Mapping[str, Any]] = None, softmax: Optional[bool] = True,
                 device: Optional[Any] = None, batch_size: int = 64, **kwargs: Any) -> List[Any]:
        """A curve per example (a list of ``ceil(F / features_in_step)`` floats),
        or its AUC with ``return_auc_per_sample``; ``[aggregate]`` with
        ``return_aggregate``. Arguments as Quantus's (``softmax`` defaults to True)."""
        n_before = len(self.all_evaluation_scores)
        scores = super().__call__(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                                  explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size, **kwargs)
        if not self.return_auc_per_sample and not self.return_aggregate:
            # Quantus returns each curve as a list of floats.
            self.evaluation_scores = [row.tolist() for row in scores]
            self.all_evaluation_scores[n_before:] = self.evaluation_scores
        return self.evaluation_scores

    def requires_explain_func(self) -> bool:
        return False

    def custom_checks(self, call: QuantusCall) -> None:
        """Quantus's ``assert_features_in_step``, as a ValueError."""
        spatial = int(np.prod(call.x.shape[2:]))
        if spatial % self.features_in_step:
            raise ValueError(
                f"features_in_step: {self.features_in_step} must divide the product of the input's "
                f"spatial shape ({spatial}), as Quantus asserts"
            )

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[B, K]`` curves, or ``[B]`` AUCs."""
        self.custom_checks(call)
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        x = call.x
        attrs = explanation_like(call)
        flat = attrs.reshape(x.shape[0], -1).detach().cpu().numpy()
        order = torch.from_numpy(np.argsort(-flat, axis=1)).to(device=x.device, dtype=torch.int64)
        curve = pixel_flipping(
            call.model, x, attrs, target=call.y, features_in_step=self.features_in_step,
            baseline=self.perturb_baseline, output="probability" if call.softmax else "logit", seed=self.seed,
            uniform_low=self.uniform_low, uniform_high=self.uniform_high, order=order,
            memory_budget=self.memory_budget, chunk_rows=self.chunk_rows, model_form="eager",
        )
        values = curve.auc if self.return_auc_per_sample else curve.values
        return values.cpu().numpy()
