"""ROAD's noisy linear imputation (Rong et al. 2022, as Quantus 0.6's
``noisy_linear_imputation``) in torch, every row and channel at once, on the
input's device.

Each removed pixel takes the weighted mean of its 8 neighbours (weight 1/6
for the 4 sides, 1/12 for the 4 corners, neighbours outside the image left
out), the removed neighbours being unknowns too: per row and channel the
linear system ``L_uu v = W_uk x_k`` (``L`` the weighted graph Laplacian of
the pixel grid, ``u`` the removed pixels, ``k`` the kept ones), which Quantus
builds as a scipy sparse matrix and solves with ``spsolve``. ``L_uu`` is
symmetric positive definite whenever at least one pixel is kept (every
removed region then touches a kept pixel), so here it is solved by
conjugate gradients preconditioned with the diagonal, applying ``L`` as a
3 x 3 stencil on the full grid, in float64, from the mean of the kept
values, until every system's residual ``||W_uk x_k - L_uu v||`` is at most
``tol`` times ``||W_uk x_k||`` (solved systems leave the working set). The
solution's relative error is then at most ``cond(L_uu) * tol`` (plus
float64 rounding); Gaussian noise of the caller's scale is added on the
removed pixels.

Cost: the rounds grow with the removed region's width (on 64 x 64 images,
about 10 rounds at 1% removed, 230 at 99%), each a few passes over the
rows; scipy's sparse LU does not iterate. Measured on this project's 2-core
CPU, ROAD with Quantus's 50 percentages: 16x Quantus's time on 8 x 8 images,
about 3x on 64 x 64; on a GPU every round is one batched pass.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

# (row offset, column offset) -> weight, as ROAD / Quantus.
NEIGHBOUR_WEIGHTS = (((-1, -1), 1 / 12), ((-1, 0), 1 / 6), ((-1, 1), 1 / 12), ((0, -1), 1 / 6),
                     ((0, 1), 1 / 6), ((1, -1), 1 / 12), ((1, 0), 1 / 6), ((1, 1), 1 / 12))
DEFAULT_TOL = 1e-12


def check_tol(tol: Any) -> float:
    """``tol`` as a float: a finite number > 0, else a ValueError naming it."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol: expected a finite number > 0, got {tol!r}")
    return float(tol)


def neighbour_sum(v: Tensor) -> Tensor:
    """``sum_q w_pq v_q`` over the 8 neighbours ``q`` of every pixel ``p`` of
    ``v`` ``[..., H, W]`` (zero outside the image). The weights are
    ``([1, 2, 1] x [1, 2, 1] - 4 at the centre) / 12``: two 3-tap passes of
    shifted adds (so each image's value does not depend on how many share the call)."""
    across = 2 * v
    across[..., 1:] += v[..., :-1]
    across[..., :-1] += v[..., 1:]
    both = 2 * across
    both[..., 1:, :] += across[..., :-1, :]
    both[..., :-1, :] += across[..., 1:, :]
    return both.sub_(v, alpha=4).div_(12)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-system inner products of ``[M, H, W]`` tensors: ``[M]``."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def linear_imputation(x: Tensor, mask: Tensor, tol: float = DEFAULT_TOL, max_iter: Optional[int] = None) -> Tensor:
    """The removed pixels' values (and the kept ones unchanged), float64.

    Args:
        x: ``[N, C, H, W]``.
        mask: bool ``[N, H, W]``, True where a pixel is removed (all its
            channels); each row must keep at least one pixel.
        tol: relative residual at which a system counts as solved (> 0).
        max_iter: conjugate-gradient rounds at most (default ``10 * H * W``;
            in exact arithmetic ``H * W`` suffice).

    Returns:
        float64 ``[N, C, H, W]``.

    Raises:
        RuntimeError: when a system is not solved to ``tol`` in ``max_iter`` rounds.
    """
    n, c, h, w = x.shape
    if tuple(mask.shape) != (n, h, w) or mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor [{n}, {h}, {w}], got {mask.dtype} {tuple(mask.shape)}")
    tol = check_tol(tol)
    if bool(mask.reshape(n, -1).all(dim=1).any()):
        raise ValueError("mask: a row removes every pixel; the imputation needs at least one kept pixel")
    max_iter = 10 * h * w if max_iter is None else max_iter
    known = x.double() * (~mask).unsqueeze(1)
    free = mask.unsqueeze(1).expand(n, c, h, w).reshape(n * c, h, w).double()
    # Sum of the weights of a pixel's neighbours inside the image: L's diagonal, on the removed pixels.
    diagonal = free * neighbour_sum(torch.ones(1, h, w, dtype=torch.float64, device=x.device))
    inverse_diagonal = torch.where(free > 0, 1 / diagonal, 0.0)
    rhs = free * neighbour_sum(known.reshape(n * c, h, w))
    # Start from the mean of each system's kept values: the harmonic solution's level, so that CG
    # mostly removes local error.
    kept = (1 - free).sum(dim=(-2, -1), keepdim=True)
    solution = free * (known.reshape(n * c, h, w).sum(dim=(-2, -1), keepdim=True) / kept)
    residual = rhs - (diagonal * solution - free * neighbour_sum(solution))
    z = residual * inverse_diagonal
    direction = z.clone()
    rz = _dot(residual, z)
    limit = tol * rhs.norm(dim=(-2, -1))
    solved = torch.zeros_like(rhs)
    live = torch.arange(n * c, device=x.device)  # the systems still iterated
    for _ in range(max_iter + 1):
        active = residual.norm(dim=(-2, -1)) > limit
        n_active = int(active.sum())
        if n_active == 0:
            solved[live] = solution
            return torch.where(mask.unsqueeze(1), solved.view(n, c, h, w), x.double())
        if 4 * n_active <= 3 * live.numel():  # a quarter are solved: iterate the rest alone
            solved[live[~active]] = solution[~active]
            live, solution, residual, direction, free, diagonal, inverse_diagonal, rz, limit, active = (
                t[active] for t in (live, solution, residual, direction, free, diagonal, inverse_diagonal, rz,
                                    limit, active))
        applied = diagonal * direction - free * neighbour_sum(direction)
        # Solved systems stay as they are: each system's iterates depend on itself alone.
        alpha = torch.where(active, rz / _dot(direction, applied), 0.0).view(-1, 1, 1)
        solution.addcmul_(alpha, direction)
        residual.addcmul_(alpha, applied, value=-1)
        z = residual * inverse_diagonal
        rz_next = _dot(residual, z)
        beta = torch.where(active, rz_next / rz, 0.0).view(-1, 1, 1)
        direction.mul_(beta).add_(z)
        rz = torch.where(active, rz_next, rz)
    worst = (residual.norm(dim=(-2, -1)) / limit.clamp_min(torch.finfo(torch.float64).tiny)).max().item() * tol
    raise RuntimeError(f"max_iter: the imputation did not reach tol={tol} in {max_iter} rounds "
                       f"(worst relative residual {worst:.3g}); raise max_iter or tol")


def noisy_linear_imputation(x: Tensor, mask: Tensor, noise: Optional[Tensor] = None, tol: float = DEFAULT_TOL,
                            max_iter: Optional[int] = None) -> Tensor:
    """``x`` with the pixels under ``mask`` replaced by their linear
    imputation plus ``noise`` (ROAD's noisy linear imputation).

    Args:
        x: ``[N, C, H, W]`` floating point.
        mask: bool ``[N, H, W]``: the removed pixels.
        noise: ``[N, C, H, W]`` values added at the removed pixels (e.g.
            ``0.01 * z`` with ``z`` standard normal), or None for none.
        tol, max_iter: as :func:`linear_imputation`.

    Returns:
        ``[N, C, H, W]`` in ``x``'s dtype (imputed and noised in float64,
        then rounded, as Quantus writes its float64 solution into the input's array).
    """
    if noise is not None and tuple(noise.shape) != tuple(x.shape):
        raise ValueError(f"noise: expected shape {tuple(x.shape)} like x, got {tuple(noise.shape)}")
    out = linear_imputation(x, mask, tol, max_iter)
    if noise is not None:
        out = torch.where(mask.unsqueeze(1), out + noise.double(), out)
    return out.to(x.dtype)
