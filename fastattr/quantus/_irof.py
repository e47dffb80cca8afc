"""Quantus 0.6's ``IROF``: the same constructor, call and scores, on
:func:`fastattr.metrics.irof.irof` (SLIC in torch, every removal step of
every example in budgeted chunks).

Where the numbers differ from Quantus's, and why:

* Quantus's ``"mean"`` / ``"black"`` / ``"white"`` fill is taken over the
  whole batch's current images, and shorter curves are padded with zeros
  before its trapezoids; here both are per example, so a score does not
  depend on the rest of the batch (one example per call: equal).
* Quantus 0.6 fails on images with more than one channel (its mask has one
  channel, ``baseline_replacement_by_mask`` asserts equal shapes); here a
  removed segment covers every channel.
* Quantus 0.6 calls ``np.trapz``, which NumPy 2.4 removed.
* Ties between segment means keep label order here; NumPy's ``argsort``
  leaves them in no stated order.
* The superpixels are :func:`fastattr.metrics.superpixels.slic`'s, equal to
  scikit-image's except where its module docstring says.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..captum._base import reject
from ..metrics.irof import FILLS, irof
from ._base import QuantusCall, QuantusMetric, require_perturb_func, uniform_range


def _fill_options(perturb_func: Any, perturb_baseline: Any, perturb_func_kwargs: Optional[Mapping[str, Any]]):
    """Quantus's ``baseline_replacement_by_mask`` options: ``(baseline, uniform_low, uniform_high)``."""
    require_perturb_func(perturb_func, "baseline_replacement_by_mask")
    if isinstance(perturb_baseline, str):
        if perturb_baseline.lower() == "random":
            raise ValueError("perturb_baseline='random' was removed from Quantus; use 'uniform'")
        v.check_choice(perturb_baseline.lower(), "perturb_baseline", FILLS)
        perturb_baseline = perturb_baseline.lower()
    elif isinstance(perturb_baseline, bool) or not isinstance(perturb_baseline, (int, float)):
        raise NotImplementedError(
            f"perturb_baseline={perturb_baseline!r}: fastattr supports {list(FILLS)} or a number")
    return (perturb_baseline, *uniform_range(perturb_func_kwargs))


class IROF(QuantusMetric):
    """Quantus's ``IROF`` (Rieger and Hansen 2020): the area over the curve
    of the target output, relative to the clean one, as the superpixels are
    removed in descending order of mean attribution.

    Extra keywords: ``seed`` (key of the ``"uniform"`` fill),
    ``memory_budget`` and ``chunk_rows`` (per forward chunk).
    Unsupported, raising :class:`NotImplementedError`:
    ``segmentation_method="felzenszwalb"``, a ``perturb_func`` other than
    Quantus's ``baseline_replacement_by_mask``, an array
    ``perturb_baseline``, ``model_predict_kwargs``.
    """

    name = "IROF"

    def __init__(self, segmentation_method: str = "slic", abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None,
                 perturb_func: Optional[Callable[..., Any]] = None, perturb_baseline: Any = "mean",
                 perturb_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = True,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, seed: int = 0, memory_budget: Optional[int] = None,
                 chunk_rows: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        if segmentation_method == "felzenszwalb":
            raise NotImplementedError("segmentation_method='felzenszwalb': fastattr segments with SLIC only")
        if segmentation_method != "slic":
            raise ValueError(f"segmentation_method: expected 'slic' or 'felzenszwalb', got {segmentation_method!r}")
        self.segmentation_method = segmentation_method
        self.perturb_baseline, self.uniform_low, self.uniform_high = _fill_options(
            perturb_func, perturb_baseline, perturb_func_kwargs)
        check_seed(seed)
        self.seed = seed
        self.memory_budget = v.check_optional_positive_int(memory_budget, "memory_budget")
        self.chunk_rows = v.check_optional_positive_int(chunk_rows, "chunk_rows")

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Mapping[str, Any]] = None,
                 model_predict_kwargs: Optional[Mapping[str, Any]] = None, softmax: Optional[bool] = True,
                 device: Optional[Any] = None, batch_size: int = 64, **kwargs: Any) -> List[Any]:
        """The area over the curve of every example (a list of floats), or
        ``[aggregate]`` with ``return_aggregate`` (the default). Arguments as
        Quantus's (``softmax`` defaults to True)."""
        return super().__call__(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                                explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size, **kwargs)

    @property
    def get_aoc_score(self) -> float:
        """The mean of the last call's scores (Quantus's property)."""
        return float(np.mean(self.evaluation_scores))

    def requires_explain_func(self) -> bool:
        return False

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[B]``: each example's area over the curve."""
        reject("model_predict_kwargs", call.model_predict_kwargs or None, None)
        if call.x.dim() != 4:
            raise ValueError(f"x_batch: IROF segments images [B, C, H, W], got shape {tuple(call.x.shape)}")
        curve = irof(call.model, call.x, call.clean_attributions(), target=call.y, baseline=self.perturb_baseline,
                     output="probability" if call.softmax else "logit", seed=self.seed,
                     uniform_low=self.uniform_low, uniform_high=self.uniform_high,
                     memory_budget=self.memory_budget, chunk_rows=self.chunk_rows, model_form="eager")
        return curve.aoc.cpu().numpy()
