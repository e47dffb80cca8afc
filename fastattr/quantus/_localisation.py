"""Quantus 0.6's localisation metrics: ``PointingGame``,
``AttributionLocalisation``, ``TopKIntersection``, ``RelevanceRankAccuracy``,
``RelevanceMassAccuracy``, ``AUC`` and ``Focus``: the same constructors,
calls and scores, on :mod:`fastattr.metrics.localisation` (batched torch on
the call's device).

``s_batch`` is checked as Quantus asserts (``[B, 1, *x_batch.shape[2:]]``, 0 / 1),
then broadcast over the explanation's channels (Quantus needs a one-channel
explanation and fails otherwise). Tied attributions are ranked in NumPy's
``argsort`` order, as Quantus ranks them. Where Quantus 0.6 slips, the drop-in
says so: ``PointingGame`` returns ``True`` for an empty mask (its NaN stored
in a bool array) as Quantus does, and computes ``weighted=True`` (which fails
in Quantus 0.6) as Quantus's earlier per-example version did;
``AttributionLocalisation(weighted=True)`` weighs by the mask's share of its
example, where Quantus 0.6 divides by the size of ``x_batch[2:]`` (all but two
examples of the batch). Quantus normalises over the whole batch and refuses a
batch whose explanations are all 0 or all equal; here each example is
normalised and scored on its own (Quantus's NaN cases give NaN).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from .. import _validate as v
from ..metrics.localisation import (
    attribution_localisation, focus, localisation_auc, pointing_game, relevance_mass_accuracy,
    relevance_rank_accuracy, top_k_localisation,
)
from ._base import QuantusCall, QuantusMetric


def _no_model(*_args: Any) -> Any:
    raise RuntimeError("model: None was passed; this metric's explanations must come as a_batch")


class TypedScores(QuantusMetric):
    """Scores of Quantus's type: ``score_dtype`` (``bool`` / ``int`` for some
    metrics; float64 by default). :meth:`typed` converts an evaluation's
    values, so that ``return_aggregate`` averages what Quantus averages (a
    float NaN is ``True`` as a bool, in NumPy and so in Quantus)."""

    score_dtype: Any = np.float64

    def typed(self, values: Tensor) -> np.ndarray:
        """``values`` ``[B]`` as a NumPy array of ``score_dtype``."""
        return values.detach().cpu().numpy().astype(self.score_dtype)

    def __call__(self, *args: Any, **kwargs: Any) -> List[Any]:
        """As :meth:`QuantusMetric.__call__`; the scores of Quantus's type."""
        n_before = len(self.all_evaluation_scores)
        scores = super().__call__(*args, **kwargs)
        if self.score_dtype is not np.float64 and not self.return_aggregate:
            self.evaluation_scores = list(np.asarray(scores).astype(self.score_dtype))
            self.all_evaluation_scores[n_before:] = self.evaluation_scores
        return self.evaluation_scores


class ExplanationMetric(TypedScores):
    """A metric of explanations alone (no model rows): ``a_batch`` suffices,
    with ``model=None`` too (as Quantus allows); ``explain_func`` makes it otherwise."""

    def requires_explain_func(self) -> bool:
        return False

    def prepare(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any, *args: Any) -> QuantusCall:
        if model is None and a_batch is not None:
            model = _no_model
        return super().prepare(model, x_batch, y_batch, a_batch, *args)


class _MaskMetric(ExplanationMetric):
    """The localisation metrics scored from ``a_batch`` and ``s_batch``
    (constructor: Quantus's common options at its localisation defaults)."""

    def __init__(self, abs: bool = False, normalise: bool = True, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)

    def check_masks(self, call: QuantusCall) -> Tensor:
        """``s_batch`` as Quantus's ``assert_segmentations`` requires it, as a ValueError."""
        s, x = call.s, call.x
        if s is None:
            raise ValueError("s_batch: required (segmentation masks [B, 1, *x_batch.shape[2:]])")
        if s.dim() != x.dim() or s.shape[0] != x.shape[0] or s.shape[2:] != x.shape[2:] or s.shape[1] != 1:
            raise ValueError(f"s_batch: expected shape [{x.shape[0]}, 1, *{tuple(x.shape[2:])}] (one channel, "
                             f"as Quantus asserts), got {tuple(s.shape)}")
        if s.dtype != torch.bool and not ((s == 0) | (s == 1)).all():
            raise ValueError("s_batch: expected only 0 / 1 (or True / False) values, as Quantus asserts")
        return s != 0

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        s = self.check_masks(call)
        a = call.clean_attributions()
        if a.shape[2:] != s.shape[2:]:
            raise ValueError(f"a_batch: explanations of shape {tuple(a.shape)} do not match s_batch's "
                             f"{tuple(s.shape)} beyond the channel axis")
        return self.typed(self.score(a, s))

    def score(self, a: Tensor, s: Tensor) -> Tensor:
        """float64 ``[B]`` from explanations ``[B, *A]`` and bool masks ``[B, 1, *S]``."""
        raise NotImplementedError


def numpy_order(a: Tensor) -> Tensor:
    """int64 ``[B, D]``: ``np.argsort(-a)`` per example, Quantus's ranking
    (NumPy's order among ties), on ``a``'s device."""
    flat = a.reshape(a.shape[0], -1).detach().cpu().numpy()
    return torch.from_numpy(np.argsort(-flat, axis=-1)).to(device=a.device, dtype=torch.int64)


class PointingGame(_MaskMetric):
    """Quantus's ``PointingGame`` (Zhang et al. 2018): bools (floats with
    ``weighted=True``); see the module for its two slips."""

    name = "Pointing-Game"

    def __init__(self, weighted: bool = False, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        self.weighted = bool(weighted)
        self.score_dtype = np.float64 if self.weighted else np.bool_

    def score(self, a: Tensor, s: Tensor) -> Tensor:
        return pointing_game(a, s, weighted=self.weighted)


class AttributionLocalisation(_MaskMetric):
    """Quantus's ``AttributionLocalisation`` (Kohlbrenner et al. 2020).
    ``max_size`` only warns in Quantus; here it is checked and kept."""

    name = "Attribution Localisation"

    def __init__(self, weighted: bool = False, max_size: float = 1.0, positive_attributions: bool = False,
                 abs: bool = True, normalise: bool = True, normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, display_progressbar: bool = False,
                 disable_warnings: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        if isinstance(max_size, bool) or not isinstance(max_size, (int, float)) or not 0 < max_size <= 1:
            raise ValueError(f"max_size: expected a number in (0, 1], got {max_size!r}")
        self.weighted, self.max_size = bool(weighted), float(max_size)
        self.positive_attributions = bool(positive_attributions)

    def score(self, a: Tensor, s: Tensor) -> Tensor:
        return attribution_localisation(a, s, weighted=self.weighted,
                                        positive_attributions=self.positive_attributions)


class TopKIntersection(_MaskMetric):
    """Quantus's ``TopKIntersection`` (Theiner et al. 2021); ``k`` must be
    smaller than the input's spatial size, as Quantus asserts."""

    name = "Top-K Intersection"

    def __init__(self, k: int = 1000, concept_influence: bool = False, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        self.k = v.check_positive_int(k, "k")
        self.concept_influence = bool(concept_influence)

    def check_masks(self, call: QuantusCall) -> Tensor:
        spatial = int(np.prod(call.x.shape[2:]))
        if self.k >= spatial:
            raise ValueError(f"k: must be smaller than the input's spatial size ({self.k} >= {spatial}), "
                             "as Quantus asserts")
        return super().check_masks(call)

    def score(self, a: Tensor, s: Tensor) -> Tensor:
        return top_k_localisation(a, s, self.k, self.concept_influence, order=numpy_order(a))


class RelevanceRankAccuracy(_MaskMetric):
    """Quantus's ``RelevanceRankAccuracy`` (Arras et al. 2022)."""

    name = "Relevance Rank Accuracy"

    def score(self, a: Tensor, s: Tensor) -> Tensor:
        return relevance_rank_accuracy(a, s, order=numpy_order(a))


class RelevanceMassAccuracy(_MaskMetric):
    """Quantus's ``RelevanceMassAccuracy`` (Arras et al. 2022)."""

    name = "Relevance Mass Accuracy"

    def score(self, a: Tensor, s: Tensor) -> Tensor:
        return relevance_mass_accuracy(a, s)


class AUC(_MaskMetric):
    """Quantus's ``AUC`` (ROC AUC per example, Fawcett 2006), from average
    ranks instead of scikit-learn's curve (equal to float rounding)."""

    name = "AUC"

    def score(self, a: Tensor, s: Tensor) -> Tensor:
        return localisation_auc(a, s)


class Focus(ExplanationMetric):
    """Quantus's ``Focus`` (Arias-Duart et al. 2022) on 2 x 2 mosaics (as
    Quantus's ``mosaic_creation`` builds them): ``custom_batch`` gives, per
    mosaic, which quadrants (top-left, top-right, bottom-left, bottom-right)
    hold the target class, e.g. ``[(1, 1, 0, 0), ...]``."""

    name = "Focus"

    def __init__(self, mosaic_shape: Optional[Any] = None, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
                 normalise_func_kwargs: Optional[Dict[str, Any]] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable[..., Any]] = None,
                 default_plot_func: Optional[Callable[..., Any]] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs: Any) -> None:
        super().__init__(abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, default_plot_func=default_plot_func,
                         disable_warnings=disable_warnings, display_progressbar=display_progressbar, **kwargs)
        self.mosaic_shape = mosaic_shape  # unused by Quantus's scores too
        self._positions: Any = None

    def __call__(self, model: Any, x_batch: Any, y_batch: Any, a_batch: Any = None, s_batch: Any = None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable[..., Any]] = None,
                 explain_func_kwargs: Optional[Mapping[str, Any]] = None,
                 model_predict_kwargs: Optional[Mapping[str, Any]] = None, softmax: Optional[bool] = False,
                 device: Optional[Any] = None, batch_size: int = 64, custom_batch: Any = None,
                 **kwargs: Any) -> List[Any]:
        """As :meth:`QuantusMetric.__call__`, with ``custom_batch`` the
        quadrants of the target class per mosaic (``[B, 4]`` of 0 / 1)."""
        self._positions = custom_batch
        try:
            return super().__call__(model, x_batch, y_batch, a_batch, s_batch, channel_first, explain_func,
                                    explain_func_kwargs, model_predict_kwargs, softmax, device, batch_size,
                                    **kwargs)
        finally:
            self._positions = None

    def evaluate(self, call: QuantusCall) -> Tensor:
        batch = call.x.shape[0]
        if self._positions is None:
            raise ValueError("custom_batch: required, the quadrants of the target class per mosaic "
                             "(e.g. the p_batch of quantus.functions.mosaic_func.mosaic_creation)")
        positions = np.asarray(self._positions)
        if positions.shape != (batch, 4) or not np.isin(positions, (0, 1)).all():
            raise ValueError(f"custom_batch: expected {batch} tuples of 4 flags (0 / 1), one per mosaic, got "
                             f"{positions.tolist() if positions.size <= 16 else positions.shape}")
        if call.x.dim() != 4:
            raise ValueError(f"x_batch: Focus needs images [B, C, H, W], got {tuple(call.x.shape)}")
        a = call.clean_attributions()
        return self.typed(focus(a, torch.as_tensor(positions.astype(bool), device=a.device)))
