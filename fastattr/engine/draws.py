"""Keyed per-(example, sample) draws: one Philox block per group, turned into
two float64 uniforms exactly as ``csrc/README.md`` section 2 makes them, so a
draw depends on its key alone (never on the batch it came in)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import ops

_TWO_POW_21 = 2**21
_TWO_POW_MINUS_53 = 2.0**-53


def group_uniforms(
    seed: int, stream: int, batch: int, n_samples: int, device: torch.device, example_offset: int = 0
) -> Tuple[Tensor, Tensor]:
    """The uniforms ``(ua, ub)`` of draw ``(seed, stream, example, sample, word 0)``
    for every group ``g = b * n_samples + n``: two float64 ``[batch * n_samples]``
    tensors in ``[0, 1)``; example ``b`` is keyed as ``example_offset + b``."""
    g = torch.arange(batch * n_samples, dtype=torch.int64, device=device)
    counters = torch.stack(
        [
            torch.zeros_like(g),
            g % n_samples,
            (g // n_samples + example_offset) % 2**32,
            torch.full_like(g, stream % 2**32),
        ],
        dim=1,
    )
    key = torch.tensor([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], dtype=torch.int64, device=device)
    x = ops.philox4x32(counters, key)
    n1 = x[:, 0] * _TWO_POW_21 + (x[:, 1] >> 11)
    n2 = x[:, 2] * _TWO_POW_21 + (x[:, 3] >> 11)
    return n1.to(torch.float64) * _TWO_POW_MINUS_53, n2.to(torch.float64) * _TWO_POW_MINUS_53
