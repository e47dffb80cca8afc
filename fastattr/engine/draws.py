"""Keyed per-(example, sample) draws: one Philox block per group, turned into
two float64 uniforms exactly as ``csrc/README.md`` section 2 makes them, so a
draw depends on its key alone (never on the batch it came in)."""
from __future__ import annotations

import functools
from typing import Tuple

import torch
from torch import Tensor

from .. import ops

_TWO_POW_21 = 2**21
_TWO_POW_MINUS_53 = 2.0**-53
# Counter tables up to this many groups (2 MiB) are kept between calls.
_CACHED_GROUPS = 1 << 16


def _counters(stream: int, batch: int, n_samples: int, example_offset: int, device: torch.device) -> Tensor:
    """int64 ``[batch * n_samples, 4]``: the Philox counter ``(word 0, sample,
    example, stream)`` of every group ``g = b * n_samples + n``."""
    g = torch.arange(batch * n_samples, dtype=torch.int64, device=device)
    return torch.stack(
        [
            torch.zeros_like(g),
            g % n_samples,
            (g // n_samples + example_offset) % 2**32,
            torch.full_like(g, stream % 2**32),
        ],
        dim=1,
    )


# Read-only, and a workload's calls share one shape: made once per shape.
_cached_counters = functools.lru_cache(maxsize=16)(_counters)


@functools.lru_cache(maxsize=16)
def _key(seed: int, device: torch.device) -> Tensor:
    return torch.tensor([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], dtype=torch.int64, device=device)


def group_uniforms(
    seed: int, stream: int, batch: int, n_samples: int, device: torch.device, example_offset: int = 0
) -> Tuple[Tensor, Tensor]:
    """The uniforms ``(ua, ub)`` of draw ``(seed, stream, example, sample, word 0)``
    for every group ``g = b * n_samples + n``: two float64 ``[batch * n_samples]``
    tensors in ``[0, 1)``; example ``b`` is keyed as ``example_offset + b``."""
    groups = batch * n_samples
    counters = (_cached_counters if groups <= _CACHED_GROUPS else _counters)(
        stream, batch, n_samples, example_offset, device)
    x = ops.philox4x32(counters, _key(seed, device))
    # N1 = x0 * 2^21 + (x1 >> 11) and N2 likewise from (x2, x3), both at once:
    # integers below 2^53, exact in int64 and in their float64 copy.
    n = (x[:, 1::2] >> 11).add_(x[:, 0::2], alpha=_TWO_POW_21)
    u = torch.empty((2, groups), dtype=torch.float64, device=device)
    u.copy_(n.t()).mul_(_TWO_POW_MINUS_53)
    return u[0], u[1]
