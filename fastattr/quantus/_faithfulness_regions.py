"""Quantus 0.6's ``RegionPerturbation`` and ``Selectivity``: the same
constructors, calls and curves, on :mod:`fastattr.metrics.faithfulness_regions`.

The patch order is Quantus's: NumPy sums each padded patch's attributions
and ``argsort``s them (ties included), here on the same values; the
``"random"`` order (:func:`~fastattr.metrics.faithfulness_regions.random_patch_order`)
and ``"uniform"`` fill values are keyed by ``(seed, example)`` where Quantus calls ``np.random.permutation`` /
``np.random.uniform``. Explanations are normalised per example (Quantus: over
the batch), which leaves every order unchanged. Curves are float64 (Quantus's
``RegionPerturbation`` subtracts its model's float32 outputs in float32).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from .. import _validate as v
from ..metrics.faithfulness_regions import ORDERS, region_perturbation, selectivity
from ._base import QuantusCall
from ._faithfulness import ReplacementMetric, SoftmaxByDefault, base_options
from ._infidelity import explanation_like


def quantus_patch_order(attrs: Tensor, patch_size: int, descending: bool) -> Tensor:
    """int64 ``[B, n_patches]``: Quantus's patch order of ``attrs``
    ``[B, C, *S]`` (shaped like the input): zero-padded as Quantus pads, each
    patch's ``C x p x p`` values summed by NumPy in Quantus's element order,
    then ``np.argsort`` (of the negated sums when ``descending``)."""
    a = attrs.detach().cpu().numpy()
    if a.ndim == 3:
        a = a[:, :, None]
    batch, channels, height, width = a.shape
    pads = [(total // 2, total - total // 2) for total in ((-height) % patch_size, (-width) % patch_size)]
    a = np.pad(a, ((0, 0), (0, 0), *pads), mode="constant")
    rows, cols = a.shape[2] // patch_size, a.shape[3] // patch_size
    blocks = a.reshape(batch, channels, rows, patch_size, cols, patch_size).transpose(0, 2, 4, 1, 3, 5)
    sums = np.ascontiguousarray(blocks).reshape(batch, rows * cols, -1).sum(-1)
    order = np.argsort(-sums if descending else sums, axis=-1)
    return torch.from_numpy(order).to(device=attrs.device, dtype=torch.int64)


def _check_images(call: QuantusCall) -> None:
    if call.x.dim() not in (3, 4):
        raise ValueError(f"x_batch: expected images [B, C, H, W] or series [B, C, T], got {tuple(call.x.shape)}")


def _auc_score(curves: Any) -> float:
    """Quantus's ``get_auc_score``: the mean trapezoidal area (width 1) of the curves."""
    return float(np.mean([np.trapezoid(np.asarray(c, dtype=np.float64), dx=1) for c in curves]))


class RegionPerturbation(SoftmaxByDefault, ReplacementMetric):
    """Quantus's ``RegionPerturbation`` (Samek et al. 2015): a curve (an array
    of ``min(regions_evaluation, n_patches)`` output drops) per example.
    Extra keywords ``seed``, ``memory_budget``, ``chunk_rows``. Unsupported,
    raising :class:`NotImplementedError`: a ``perturb_func`` other than
    Quantus's ``batch_baseline_replacement_by_indices``, ``perturb_baseline="mean"``."""

    name = "Region-Perturbation"

    def __init__(self, patch_size: int = 8, order: str = "morf", regions_evaluation: int = 100,
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
        self.patch_size = v.check_positive_int(patch_size, "patch_size")
        if not isinstance(order, str):
            raise ValueError(f"order: expected one of {list(ORDERS)}, got {order!r}")
        self.order = v.check_choice(order.lower(), "order", ORDERS)
        self.regions_evaluation = v.check_positive_int(regions_evaluation, "regions_evaluation")

    @property
    def get_auc_score(self) -> float:
        """The mean area under the last call's curves."""
        return _auc_score(self.evaluation_scores)

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[B, K]``."""
        _check_images(call)
        a = explanation_like(call)
        # "random": the function's keyed permutations (Quantus: np.random.permutation).
        order = None if self.order == "random" else quantus_patch_order(a, self.patch_size, self.order == "morf")
        curve = region_perturbation(call.model, call.x, a, call.y, patch_size=self.patch_size, order=self.order,
                                    regions_evaluation=self.regions_evaluation, patch_order=order,
                                    **self.options(call))
        return curve.values.cpu().numpy()


class Selectivity(SoftmaxByDefault, ReplacementMetric):
    """Quantus's ``Selectivity`` (Montavon et al. 2018): a curve (an array of
    one output per patch) per example. Extra keywords and unsupported options
    as :class:`RegionPerturbation`."""

    name = "Selectivity"

    def __init__(self, patch_size: int = 8, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable[..., Any]] = None,
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
        self.patch_size = v.check_positive_int(patch_size, "patch_size")

    @property
    def get_auc_score(self) -> float:
        """The mean area under the last call's curves."""
        return _auc_score(self.evaluation_scores)

    def evaluate(self, call: QuantusCall) -> np.ndarray:
        """float64 ``[B, n_patches]``."""
        _check_images(call)
        a = explanation_like(call)
        curve = selectivity(call.model, call.x, a, call.y, patch_size=self.patch_size,
                            patch_order=quantus_patch_order(a, self.patch_size, descending=True),
                            **self.options(call))
        return curve.values.cpu().numpy()
