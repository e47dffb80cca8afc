"""DeepLIFT's paired layout: a forward over ``2n`` rows, row ``k`` example
``k``'s input and row ``n + k`` its reference, and the division by the
pair's input difference that every rescale-type rule makes."""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
from torch import Tensor


def _pairs(t: Tensor) -> Tensor:
    """``[2n, *F]`` -> ``[2, n, *F]`` (the inputs, then their references): a
    view, so that results in this layout go back with :func:`_unpairs` as
    views too."""
    return t.view(2, -1, *t.shape[1:])


def _unpairs(p: Tensor) -> Tensor:
    """``[2, n, *F]`` -> ``[2n, *F]``: the inverse of :func:`_pairs`."""
    return p.reshape(-1, *p.shape[2:])


def _pair_delta(t: Tensor) -> Tensor:
    """``[1, n, *F]``: input minus reference, broadcast over the pair."""
    n = t.shape[0] // 2
    return (t[:n] - t[n:]).unsqueeze(0)


@functools.lru_cache(maxsize=64)
def _threshold(eps: float, dtype: torch.dtype) -> float:
    """``eps`` rounded to ``dtype``, as a tensor comparison with it rounds it."""
    return torch.tensor(eps, dtype=dtype).item()


def _maybe_small(magnitude: Tensor, eps: float) -> bool:
    """Whether some entry of ``magnitude`` may be below ``eps``. Checked on
    the CPU, where it is one cheap reduction; assumed elsewhere, where the
    check would wait for the device."""
    if magnitude.numel() == 0:
        return False
    if magnitude.device.type != "cpu":
        return True
    return magnitude.amin().item() < _threshold(eps, magnitude.dtype)


@dataclasses.dataclass(frozen=True)
class _Divisor:
    """``delta_in`` ``[1, n, *F]`` of one call, ready for the rule's division.

    Where ``|delta_in| < eps`` the rule keeps the ordinary gradient. That
    selection is done with arithmetic, not ``torch.where``: a bool tensor
    costs several times a float pass on the CPU. ``small`` is 1.0 there and
    0.0 elsewhere (None: no such entry); ``safe`` is ``delta_in`` with those
    entries made nonzero, so that the quotients there are finite and
    ``lerp(quotient, grad_input, small)`` selects exactly.
    """

    safe: Tensor
    small: Optional[Tensor]

    @staticmethod
    def of(delta_in: Tensor, eps: float) -> "_Divisor":
        magnitude = delta_in.abs()
        if not _maybe_small(magnitude, eps):
            return _Divisor(delta_in, None)
        # sign(eps - |d|) is +1 exactly where |d| < eps: a float mask without a bool tensor.
        small = (eps - magnitude).sign_().clamp_(min=0)
        if eps <= 1:  # |d| < eps <= 1: d + 1 is not 0 where small; elsewhere d + 0 is d
            return _Divisor(delta_in + small, small)
        return _Divisor(torch.maximum(magnitude, small).copysign_(delta_in), small)

    def select(self, quotient: Tensor, grad_input: Tensor) -> Tensor:
        """``grad_input`` where small, else ``quotient`` (broadcast to it; a
        tensor of this call's own, written in place when shaped like
        ``grad_input``). lerp with a weight of exactly 0 or 1 returns
        ``start`` or ``end`` exactly (for finite values), and reads the
        weight as a float."""
        if self.small is None:
            return quotient.expand_as(grad_input)
        if quotient.shape == grad_input.shape:
            return quotient.lerp_(grad_input, self.small)
        return torch.lerp(quotient, grad_input, self.small)
