"""Localisation of explanations against ground-truth masks, as Quantus 0.6's
localisation metrics: pointing game, attribution localisation, top-k
intersection, relevance rank and mass accuracy, ROC AUC, and Focus on 2 x 2
mosaics. Each is a batched float64 reduction over ``[B, ...]`` tensors on
their device (no model call), and returns one value per example.

A mask ``[B, *S]`` (bool, or 0 / 1 numbers) is broadcast to the attributions'
shape ``[B, *A]``: a per-pixel mask ``[B, 1, H, W]`` covers every channel of
an explanation ``[B, C, H, W]`` (Quantus multiplies the two flattened, which
needs equal sizes, one channel, and fails otherwise). An empty mask gives NaN,
as in Quantus. Features are ranked in descending order, ties by position
(a stable sort) unless ``order`` gives another (the drop-ins pass NumPy's
``argsort``, Quantus's tie order).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from .deletion import descending_order, ranks_of
from .ordering import check_order
from .similarity import average_ranks, top_k_intersection

# Quantus's guards against a zero denominator (AttributionLocalisation, Focus).
_RATIO_EPS = 1e-9


def _flat_pair(attributions: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(a, s, own)``: float64 ``a`` ``[B, D]``, the mask broadcast to it, bool
    ``s`` ``[B, D]``, and the mask as given, bool ``own`` ``[B, Ds]``."""
    if not isinstance(attributions, Tensor) or not (attributions.is_floating_point()
                                                    or attributions.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"attributions: expected a numeric tensor, got "
                        f"{getattr(attributions, 'dtype', type(attributions).__name__)}")
    if attributions.dim() < 2:
        raise ValueError(f"attributions: expected shape [B, *A], got {tuple(attributions.shape)}")
    if not v._all_finite(attributions):
        raise ValueError("attributions: contains NaN or Inf")
    own = check_masks(masks, attributions)
    batch = attributions.shape[0]
    s = own.expand(attributions.shape).reshape(batch, -1)
    return attributions.detach().reshape(batch, -1).to(torch.float64), s, own.reshape(batch, -1)


def check_masks(masks: Tensor, attributions: Tensor) -> Tensor:
    """``masks`` as bool ``[B, *S]``, checked: on the attributions' device, of
    0 / 1 values, with as many axes and a shape that broadcasts to theirs."""
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks: expected a tensor, got {type(masks).__name__}")
    if masks.device != attributions.device:
        raise ValueError(f"masks: on {masks.device}, expected {attributions.device} like the attributions")
    shape, target = tuple(masks.shape), tuple(attributions.shape)
    if len(shape) != len(target) or shape[0] != target[0] or any(s not in (1, t) for s, t in zip(shape, target)):
        raise ValueError(f"masks: expected shape [{target[0]}, ...] broadcastable to the attributions' "
                         f"{target}, got {shape}")
    if masks.dtype == torch.bool:
        return masks
    if not ((masks == 0) | (masks == 1)).all():
        raise ValueError("masks: expected only 0 / 1 (or True / False) values")
    return masks != 0


def _check_order(order: Optional[Tensor], a: Tensor) -> Tensor:
    """int64 ``[B, D]``: ``order`` checked to be a permutation per row, or the
    stable descending order of ``a`` ``[B, D]``."""
    if order is None:
        return descending_order(a)
    return check_order(order, a.shape[0], a.shape[1], a.device)


def _nan_where_empty(values: Tensor, own: Tensor) -> Tensor:
    return values.masked_fill(own.sum(1) == 0, float("nan"))


def pointing_game(attributions: Tensor, masks: Tensor, weighted: bool = False) -> Tensor:
    """Pointing game (Zhang et al. 2018): float64 ``[B]``, 1 where a largest
    attribution (any of them, when tied) lies in the mask, else 0.

    Args:
        attributions: ``[B, *A]``.
        masks: ``[B, *S]`` broadcastable to ``A`` (see the module).
        weighted: a hit scores ``1 - |mask| / mask size`` instead of 1 (a hit
            is worth less when the mask covers more; Quantus 0.6 fails on this
            option, its earlier per-example version scored so).

    Returns:
        float64 ``[B]``; NaN where a mask is empty.
    """
    a, s, own = _flat_pair(attributions, masks)
    hit = ((a == a.amax(1, keepdim=True)) & s).any(1).to(torch.float64)
    if weighted:
        hit = hit * (1 - own.sum(1).to(torch.float64) / own.shape[1])
    return _nan_where_empty(hit, own)


def attribution_localisation(attributions: Tensor, masks: Tensor, weighted: bool = False,
                             positive_attributions: bool = False) -> Tensor:
    """Attribution localisation (Kohlbrenner et al. 2020): float64 ``[B]``,
    the share of the attributions inside the mask,
    ``sum(a * s) / (sum(a) + 1e-9)``.

    Args:
        attributions: ``[B, *A]`` (Quantus takes ``|a|`` by default).
        masks: ``[B, *S]`` broadcastable to ``A``.
        weighted: multiply by the mask's share of its example,
            ``|mask| / mask size`` (Quantus 0.6 divides by the size of all but
            the first two examples of its batch, ``x_batch[2:].size``: a slip
            for ``x_batch.shape[2:]`` that makes its weights depend on the batch).
        positive_attributions: clip negative attributions to 0 first.

    Returns:
        float64 ``[B]``; NaN where a mask is empty or the share exceeds 1
        (negative attributions outside the mask), as Quantus.
    """
    a, s, own = _flat_pair(attributions, masks)
    if positive_attributions:
        a = a.clamp(min=0)
    share = (a * s).sum(1) / (a.sum(1) + _RATIO_EPS)
    share = _nan_where_empty(share.masked_fill(share > 1, float("nan")), own)
    if weighted:
        share = share * own.sum(1).to(torch.float64) / own.shape[1]
    return share


def top_k_localisation(attributions: Tensor, masks: Tensor, k: int = 1000, concept_influence: bool = False,
                       order: Optional[Tensor] = None) -> Tensor:
    """Top-k intersection (Theiner et al. 2021): float64 ``[B]``, the share of
    the ``k`` largest attributions that lie in the mask
    (:func:`~fastattr.metrics.similarity.top_k_intersection` with a mask).

    Args:
        attributions: ``[B, *A]``.
        masks: ``[B, *S]`` broadcastable to ``A``.
        k: ``1 <= k <= prod(A)``.
        concept_influence: divide by the mask's share of the features
            (``|mask| / prod(A)``).
        order: optional int64 ``[B, prod(A)]``, the attributions' positions
            from the largest down (default: stable descending order).

    Returns:
        float64 ``[B]``; NaN where a mask is empty.
    """
    a, s, own = _flat_pair(attributions, masks)
    values = top_k_intersection(a, s, k, order=_check_order(order, a))
    if concept_influence:
        values = values * a.shape[1] / s.sum(1)
    return _nan_where_empty(values, own)


def relevance_rank_accuracy(attributions: Tensor, masks: Tensor, order: Optional[Tensor] = None) -> Tensor:
    """Relevance rank accuracy (Arras et al. 2022): float64 ``[B]``, the share
    of the ``K = |mask|`` largest attributions that lie in the mask.

    Args:
        attributions: ``[B, *A]``.
        masks: ``[B, *S]`` broadcastable to ``A`` (``K`` counts the broadcast mask).
        order: optional int64 ``[B, prod(A)]``, as :func:`top_k_localisation`.

    Returns:
        float64 ``[B]``; NaN where a mask is empty.
    """
    a, s, own = _flat_pair(attributions, masks)
    size = s.sum(1, keepdim=True)
    top = ranks_of(_check_order(order, a)) < size
    return _nan_where_empty((top & s).sum(1).to(torch.float64) / size.squeeze(1), own)


def relevance_mass_accuracy(attributions: Tensor, masks: Tensor) -> Tensor:
    """Relevance mass accuracy (Arras et al. 2022): float64 ``[B]``,
    ``sum(a * s) / sum(a)``.

    Returns:
        float64 ``[B]``; NaN where a mask is empty, or where the attributions
        sum to 0 (0 / 0, as Quantus).
    """
    a, s, own = _flat_pair(attributions, masks)
    return _nan_where_empty((a * s).sum(1) / a.sum(1), own)


def localisation_auc(attributions: Tensor, masks: Tensor) -> Tensor:
    """ROC AUC of the attributions as scores of mask membership (Fawcett
    2006; Quantus's ``AUC``, ``sklearn.metrics.roc_curve`` + ``auc`` per
    example): float64 ``[B]``, the probability that a feature in the mask
    outranks one outside it, ties counting one half. Computed from average
    ranks (the Mann-Whitney statistic), exact in float64 up to the last division.

    Returns:
        float64 ``[B]``; NaN where a mask is empty or covers every feature.
    """
    a, s, own = _flat_pair(attributions, masks)
    inside = s.sum(1).to(torch.float64)
    outside = a.shape[1] - inside
    rank_sum = (average_ranks(a) * s).sum(1)
    auc = (rank_sum - inside * (inside + 1) / 2) / (inside * outside)
    return _nan_where_empty(auc, own)


def quadrant_masks(positions: Tensor, height: int, width: int) -> Tensor:
    """bool ``[B, H, W]``: the quadrants of a 2 x 2 mosaic flagged in
    ``positions`` ``[B, 4]`` (top-left, top-right, bottom-left, bottom-right,
    as Quantus's ``mosaic_creation`` returns them); the split is at
    ``H // 2`` and ``W // 2``."""
    rows = (torch.arange(height, device=positions.device) >= height // 2).long()
    cols = (torch.arange(width, device=positions.device) >= width // 2).long()
    quadrant = 2 * rows.unsqueeze(1) + cols.unsqueeze(0)  # [H, W]: 0 .. 3
    return positions[:, quadrant]


def focus(attributions: Tensor, positions: Tensor) -> Tensor:
    """Focus (Arias-Duart et al. 2022) on 2 x 2 mosaics: float64 ``[B]``, the
    share of the positive attributions that falls in the quadrants holding the
    target class, ``sum(a+ * in_target) / (sum(a+) + 1e-9)``.

    Args:
        attributions: ``[B, ..., H, W]`` explanations of mosaics (every axis
            between the batch and the last two, e.g. channels, is summed over).
        positions: ``[B, 4]`` of 0 / 1 (or bool): which quadrants (top-left,
            top-right, bottom-left, bottom-right) hold the target class.

    Returns:
        float64 ``[B]`` (0 where no attribution is positive).
    """
    if not isinstance(attributions, Tensor) or not attributions.is_floating_point() or attributions.dim() < 3:
        raise ValueError(f"attributions: expected a floating-point tensor [B, ..., H, W], got "
                         f"{getattr(attributions, 'dtype', type(attributions).__name__)} "
                         f"{tuple(getattr(attributions, 'shape', ()))}")
    if not v._all_finite(attributions):
        raise ValueError("attributions: contains NaN or Inf")
    batch = attributions.shape[0]
    if not isinstance(positions, Tensor) or positions.shape != (batch, 4) or positions.device != attributions.device:
        raise ValueError(f"positions: expected a tensor [{batch}, 4] on {attributions.device} (quadrants per "
                         f"mosaic), got {tuple(getattr(positions, 'shape', ())) or type(positions).__name__}")
    if positions.dtype != torch.bool and not ((positions == 0) | (positions == 1)).all():
        raise ValueError("positions: expected only 0 / 1 (or True / False) values")
    h, w = attributions.shape[-2:]
    inside = quadrant_masks(positions != 0, h, w).view(batch, *([1] * (attributions.dim() - 3)), h, w)
    a = attributions.detach().to(torch.float64).clamp(min=0)
    target = (a * inside).reshape(batch, -1).sum(1)
    return target / (a.reshape(batch, -1).sum(1) + _RATIO_EPS)
