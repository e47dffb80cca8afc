"""Integration rules for path methods: where on the straight path from the
baseline to the input the gradient is taken (``alphas``) and with what weight
(``step_sizes``). The same five rules as Captum 0.9, as data, so that a chunk
of steps is just a slice of them.
"""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


@functools.lru_cache(maxsize=64)
def path_rule(method: str, n_steps: int) -> Tuple[Tensor, Tensor]:
    """Alphas and step sizes of an ``n_steps`` rule, both float64 ``[n_steps]`` (CPU).

    Cached (the Gauss–Legendre nodes cost about a millisecond); callers must
    not modify the returned tensors.

    ``sum(step_sizes * f(alphas))`` approximates the integral of ``f`` over
    ``[0, 1]``. Riemann rules need ``n_steps >= 2`` (as in Captum); the
    Gauss–Legendre rule takes any ``n_steps >= 1``.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if method == "gausslegendre":
        if n_steps < 1:
            raise ValueError(f"n_steps: expected an integer >= 1, got {n_steps!r}")
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * weights)
    if n_steps < 2:
        raise ValueError(f"n_steps: the {method} rule needs n_steps >= 2, got {n_steps!r}")
    n = n_steps
    sizes = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if method == "riemann_trapezoid":
        sizes[0] /= 2
        sizes[-1] /= 2
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
    elif method == "riemann_left":
        alphas = torch.linspace(0, 1 - 1 / n, n, dtype=torch.float64)
    elif method == "riemann_middle":
        alphas = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n, dtype=torch.float64)
    else:  # riemann_right
        alphas = torch.linspace(1 / n, 1, n, dtype=torch.float64)
    return alphas, sizes


def nested_trapezoid_start() -> Tuple[Tensor, float]:
    """The first panels of the adaptive trapezoid rule
    (:mod:`fastattr.attr.adaptive_ig`): alphas ``0, 1/4, 1/2, 3/4, 1``
    (float64 ``[5]``, CPU) and the panels' width ``1/4``. Bisecting a panel
    adds its midpoint, so every alpha stays a dyadic fraction (exact in any
    float dtype down to the panel widths the refinement allows)."""
    return torch.linspace(0, 1, 5, dtype=torch.float64), 0.25
