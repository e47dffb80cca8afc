"""Quantus 0.6's ``ROAD``: the same constructor, call and result (a dict
from each percentage to the fraction of examples whose top class survives),
on :func:`fastattr.metrics.road.road` (the imputation solved in torch for a
chunk of rows at once, on the input's device).

Where the numbers differ from Quantus's, and why:

* The imputation noise is keyed (``seed``) where Quantus draws
  ``np.random.randn``; the linear solves are conjugate gradients to a
  relative residual ``tol`` where Quantus calls ``spsolve`` (see
  :mod:`fastattr.metrics.imputation`).
* Quantus 0.6 fails on images with more than one channel (it indexes the
  flattened pixels with indices over channels and pixels); here an
  explanation with one value per pixel (or the same value in every channel)
  imputes every channel of the chosen pixels.
* Quantus averages only its first batch of ``batch_size`` examples and keeps
  the image size of its first call in later calls; here every example of the
  call counts, at the call's own size.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np
import torch

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..captum._base import reject
from ..metrics.imputation import DEFAULT_TOL, check_tol
from ..metrics.road import DEFAULT_PERCENTAGES, removed_counts, road
from ._base import QuantusCall, QuantusMetric, require_perturb_func


class ROAD(QuantusMetric):
    """Quantus's ``ROAD`` (Rong et al. 2022): the fraction of examples whose
    top class is still the label after the most relevant pixels are replaced
    by noisy linear imputation, per percentage of pixels.

    Extra keywords: ``seed`` (key of the imputation noise), ``tol`` (of the
    imputation's solves), ``memory_budget`` and ``chunk_rows`` (per chunk).
    Unsupported, raising :class:`NotImplementedError`: a ``perturb_func``
    other than Quantus's ``noisy_linear_imputation``, ``perturb_func_kwargs``
    other than ``noise``, ``model_predict_kwargs``.
    """

    name = "ROAD"

    def __init__(self, percentages: Optional[List[float]] = None, noise: float = 0.01, abs: bool = False,
                 normalise: bool = True, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None,
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, seed: int = 0, tol: float = DEFAULT_TOL,
                 memory_budget: Optional[int] = None, chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        require_perturb_func(perturb_func, "noisy_linear_imputation")
        extra = dict(perturb_func_kwargs or {})
        noise = extra.pop("noise", noise)  # Quantus's perturb_func_kwargs override noise
        reject("perturb_func_kwargs", extra or None, None, "only noise is used")
        percentages = DEFAULT_PERCENTAGES if percentages is None else percentages
        removed_counts(percentages, 1)  # checked now, before any call
        self.percentages = list(percentages)
        (self.noise,) = v.check_scales(noise, "noise", 1)
        check_seed(seed)
        self.seed, self.tol = seed, check_tol(tol)
        self.memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
        self.chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Mapping[str, Any]] = None,
                 model_predict_kwargs: Optional[Mapping[str, Any]] = None, softmax: Optional[bool] = True,
                 device: Optional[Any] = None, batch_size: int = 64, **kwargs: Any) -> Union[Dict[Any, float], List[Any]]:
        """``{percentage: fraction of examples still predicted as their label}``
        as Quantus returns it; with ``return_aggregate``, ``[aggregate_func(that
        dict)]`` where the function takes it, else the dict (Quantus logs the
        error and keeps it). Arguments as Quantus's (``softmax`` defaults to True)."""
        if kwargs:
            raise TypeError(f"ROAD(): unexpected keyword arguments {sorted(kwargs)}")
        call = self.prepare(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                            explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size)
        correct = self.evaluate(call)
        scores: Any = {p: float(s) for p, s in zip(self.percentages, correct.mean(axis=0))}
        if self.return_aggregate:
            try:
                scores = [self.aggregate_func(scores)]
            except Exception as error:  # noqa: BLE001 -- Quantus logs the failure and keeps the dict
                warnings.warn(f"ROAD: aggregate_func failed on the scores ({error}); returning them unaggregated")
        self.evaluation_scores = scores
        self.all_evaluation_scores.extend(scores)
        return scores

    def requires_explain_func(self) -> bool:
        return False

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[B, P]``: 1.0 where the example's label is still the top class."""
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        x = call.x
        if x.dim() != 4:
            raise ValueError(f"x_batch: ROAD imputes pixels of images [B, C, H, W], got shape {tuple(x.shape)}")
        a = call.clean_attributions()
        if a.shape[1] != 1:
            if not torch.equal(a, a[:, :1].expand(a.shape)):
                raise ValueError(
                    f"a_batch: ROAD ranks pixels and needs one value per pixel, got explanations of shape "
                    f"{tuple(a.shape)} that differ between channels (Quantus 0.6 fails on them too)")
            a = a[:, :1]
        # Quantus's order: NumPy's argsort, whose order of tied pixels the drop-in keeps.
        flat = a.reshape(a.shape[0], -1).detach().cpu().numpy()
        order = torch.from_numpy(np.argsort(-flat, axis=1)).to(device=x.device, dtype=torch.int64)
        correct = road(call.model, x, a, target=call.y, percentages=self.percentages, noise=self.noise,
                       output="probability" if call.softmax else "logit", seed=self.seed, order=order,
                       tol=self.tol, memory_budget=self.memory_budget, chunk_rows=self.chunk_rows,
                       model_form="eager")
        return correct.cpu().numpy()
