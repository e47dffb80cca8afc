"""How complex an explanation is, as Quantus 0.6's complexity metrics:
sparseness (Gini index), complexity (entropy of the attribution shares) and
effective complexity (attributions above a threshold). Batched float64
reductions over ``[B, *A]`` attributions on their device, one value per
example; pass ``|a|`` where the measure is meant on magnitudes (Quantus takes
``abs`` and normalises by the maximum by default; neither changes sparseness
or complexity beyond their small additive constants)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .. import _validate as v

# Quantus's additive constants: the Gini index's shift (so an all-zero map
# scores 0) and the entropy's guard inside the log.
_GINI_SHIFT = 1e-7
_LOG_GUARD = 1e-12


def _flat(attributions: Tensor) -> Tensor:
    """``[B, D]`` in the attributions' dtype, checked: a numeric tensor ``[B, *A]``, finite."""
    if not isinstance(attributions, Tensor) or not (attributions.is_floating_point()
                                                    or attributions.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"attributions: expected a numeric tensor, got "
                        f"{getattr(attributions, 'dtype', type(attributions).__name__)}")
    if attributions.dim() < 2 or attributions[0].numel() == 0:
        raise ValueError(f"attributions: expected shape [B, *A] with features, got {tuple(attributions.shape)}")
    if not v._all_finite(attributions):
        raise ValueError("attributions: contains NaN or Inf")
    return attributions.detach().reshape(attributions.shape[0], -1)


def _sorted_rows(a: Tensor) -> Tensor:
    """``a`` ``[B, D]`` sorted ascending along each row. On the CPU by NumPy:
    torch's CPU sort, which also makes indices, measured 35x slower on
    8 x 3072 float32 values (sorting is exact: the same values either way)."""
    if a.device.type == "cpu":
        return torch.from_numpy(np.sort(a.numpy(), axis=1))
    return a.sort(dim=1).values


def sparseness(attributions: Tensor) -> Tensor:
    """Sparseness (Chalasani et al. 2020): float64 ``[B]``, the Gini index of
    each example's attributions shifted by ``1e-7``, ``sum_i (2i - D - 1)
    a_(i) / (D sum_i a_(i))`` over the ascending ``a_(i)``: 0 for a uniform
    map, towards 1 for one feature holding everything.

    Args:
        attributions: ``[B, *A]`` (non-negative: pass ``|a|``).
    """
    ascending = _sorted_rows(_flat(attributions).to(torch.float64)) + _GINI_SHIFT
    d = ascending.shape[1]
    weights = 2 * torch.arange(1, d + 1, dtype=torch.float64, device=ascending.device) - d - 1
    return (ascending * weights).sum(1) / (d * ascending.sum(1))


def entropy_complexity(attributions: Tensor) -> Tensor:
    """Complexity (Bhatt et al. 2020): float64 ``[B]``, the entropy of the
    attribution shares ``p = a / sum|a|``, ``-sum p log(p + 1e-12)``: from 0
    (one feature) to ``log D`` (uniform).

    Args:
        attributions: ``[B, *A]`` (non-negative: pass ``|a|``; a negative
            share has no logarithm and gives NaN, as in Quantus).

    Returns:
        float64 ``[B]``; NaN where an example's attributions are all 0.
    """
    a = _flat(attributions).to(torch.float64)
    p = a / a.abs().sum(1, keepdim=True)
    return -(p * torch.log(p + _LOG_GUARD)).sum(1)


def effective_complexity(attributions: Tensor, eps: float = 1e-5) -> Tensor:
    """Effective complexity (Nguyen and Martinez 2020): int64 ``[B]``, how
    many attributions exceed ``eps``, compared in the attributions' dtype
    (``eps`` rounded to it, as NumPy compares in Quantus).

    Args:
        attributions: ``[B, *A]`` (pass ``|a|`` to count magnitudes).
        eps: the threshold (a finite number).
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise ValueError(f"eps: expected a finite number, got {eps!r}")
    return (_flat(attributions) > eps).sum(1)
