"""Per-example similarity of two batches of explanations, batched in torch:
Spearman rank correlation (scipy's, average ranks for ties), top-k
intersection (Ghorbani et al. 2019; or with a mask, Quantus's) and SSIM (scikit-image's uniform-window
SSIM with sample covariance). Every function compares row ``b`` of ``a``
with row ``b`` of ``b`` and returns float64 ``[B]``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ordering import stable_order

_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _check_pair(a: Tensor, b: Tensor) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"a, b: expected tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"a, b: expected two tensors of one shape [B, *F], got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def average_ranks(x: Tensor) -> Tensor:
    """float64 ``[B, D]``: the 1-based rank of each value in its row, ties
    given the mean of their ranks (``scipy.stats.rankdata``'s "average").

    Args:
        x: ``[B, D]``.
    """
    d = x.shape[1]
    order = stable_order(x)
    sorted_x = x.to(torch.float64).gather(1, order)
    pos = torch.arange(d, device=x.device).expand_as(order)
    new_value = sorted_x[:, 1:] != sorted_x[:, :-1]
    edge = torch.ones_like(new_value[:, :1])
    is_start = torch.cat([edge, new_value], dim=1)
    is_end = torch.cat([new_value, edge], dim=1)
    # A tie group spans [start, end]: the last start at or before each
    # position, and the first end at or after it.
    start = torch.where(is_start, pos, 0).cummax(dim=1).values
    end = torch.where(is_end, pos, d).flip(1).cummin(dim=1).values.flip(1)
    ranks_sorted = (start + end).to(torch.float64) / 2 + 1
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """float64 ``[B]``: Pearson correlation of each row pair of ``[B, *F]``
    tensors (NaN where a row is constant)."""
    _check_pair(a, b)
    x = a.reshape(a.shape[0], -1).to(torch.float64)
    y = b.reshape(b.shape[0], -1).to(torch.float64)
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    return (x * y).sum(1) / ((x * x).sum(1) * (y * y).sum(1)).sqrt()


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """float64 ``[B]``: Spearman rank correlation of each row pair of
    ``[B, *F]`` tensors over their ``prod(F)`` values, as
    ``scipy.stats.spearmanr`` (NaN where a row is constant)."""
    _check_pair(a, b)
    return pearson(average_ranks(a.reshape(a.shape[0], -1)), average_ranks(b.reshape(b.shape[0], -1)))


def top_k_intersection(a: Tensor, b: Tensor, k: int, order: Optional[Tensor] = None) -> Tensor:
    """float64 ``[B]``: the fraction of the ``k`` largest values of row ``a[i]``
    whose positions are also among the ``k`` largest of ``b[i]`` (Ghorbani et
    al. 2019 compare saliency maps by this, on ``|a|``: pass maps, not signed
    attributions, when that is meant), or, when ``b`` is a boolean mask, whose
    positions are in the mask (Quantus's ``TopKIntersection``).

    Args:
        a: ``[B, *F]``.
        b: ``[B, *F]`` values, or a bool mask ``[B, *F]``.
        k: ``1 <= k <= prod(F)``.
        order: optional int64 ``[B, prod(F)]``, each row ``a[i]``'s positions
            from the largest down: the first ``k`` are taken instead of
            ``torch.topk``'s (whose choice among ties is unspecified).
    """
    _check_pair(a, b)
    x = a.reshape(a.shape[0], -1)
    y = b.reshape(b.shape[0], -1)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= x.shape[1]:
        raise ValueError(f"k: expected an integer in [1, {x.shape[1]}] (features per example), got {k!r}")
    if order is not None and (not isinstance(order, Tensor) or order.dtype != torch.int64
                              or order.shape != x.shape or order.device != x.device):
        raise ValueError(f"order: expected an int64 tensor {tuple(x.shape)} on {x.device}, got "
                         f"{getattr(order, 'dtype', type(order).__name__)} {tuple(getattr(order, 'shape', ()))}")
    top = x.topk(k, dim=1).indices if order is None else order[:, :k]
    in_a = torch.zeros_like(x, dtype=torch.bool).scatter_(1, top, True)
    in_b = y if y.dtype == torch.bool else torch.zeros_like(y, dtype=torch.bool).scatter_(1, y.topk(k, dim=1).indices,
                                                                                          True)
    return (in_a & in_b).sum(1).to(torch.float64) / k


def _box_mean(x: Tensor, win_size: int) -> Tensor:
    """The mean over every full ``win_size``-wide window of the non-batch
    dims of ``x`` ``[B, *S]``: ``[B, *(S - win_size + 1)]`` (the windows that
    scikit-image keeps after cropping its filtered image)."""
    for dim in range(1, x.dim()):
        x = x.unfold(dim, win_size, 1).mean(dim=-1)
    return x


def ssim(a: Tensor, b: Tensor, win_size: int = 7, data_range: Optional[float] = None) -> Tensor:
    """float64 ``[B]``: structural similarity of each row pair, as
    ``skimage.metrics.structural_similarity(a[i], b[i], win_size=win_size,
    data_range=...)`` (uniform window over every non-batch dim, sample
    covariance, K1 = 0.01, K2 = 0.03), computed in float64.

    Args:
        a, b: ``[B, *S]``; every ``S`` dim must be ``>= win_size``.
        win_size: odd window width.
        data_range: the value range; None: per example, ``max - min`` over
            both ``a[i]`` and ``b[i]`` (as Quantus's ``ssim``).
    """
    _check_pair(a, b)
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size: expected an odd integer >= 1, got {win_size!r}")
    if min(a.shape[1:]) < win_size:
        raise ValueError(
            f"win_size: {win_size} exceeds the explanation's extent {tuple(a.shape[1:])}; "
            "pass a smaller odd win_size or flatten the explanations"
        )
    x, y = a.to(torch.float64), b.to(torch.float64)
    batch = x.shape[0]
    if data_range is None:
        both = torch.cat([x.reshape(batch, -1), y.reshape(batch, -1)], dim=1)
        r = both.amax(1) - both.amin(1)
    else:
        r = torch.full((batch,), float(data_range), dtype=torch.float64, device=x.device)
    r = r.view(batch, *([1] * (x.dim() - 1)))
    n = win_size ** (x.dim() - 1)
    cov_norm = n / (n - 1) if n > 1 else 1.0
    ux, uy = _box_mean(x, win_size), _box_mean(y, win_size)
    vx = cov_norm * (_box_mean(x * x, win_size) - ux * ux)
    vy = cov_norm * (_box_mean(y * y, win_size) - uy * uy)
    vxy = cov_norm * (_box_mean(x * y, win_size) - ux * uy)
    c1, c2 = (_SSIM_K1 * r) ** 2, (_SSIM_K2 * r) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(batch, -1).mean(1)
