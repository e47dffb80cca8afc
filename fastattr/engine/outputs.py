"""What every model call of the engine shares: the rows' extra arguments,
the check of the model's output, and the pick of each row's target output."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._validate import check_target_range

Target = Union[None, int, Tensor]  # None, a class, or int64 [B]


def per_example_flags(additional_args: Sequence[Any]) -> Tuple[bool, ...]:
    """Which extra arguments have a batch dimension (gathered per row)."""
    return tuple(isinstance(a, Tensor) and a.dim() > 0 for a in additional_args)


def rows_args(additional_args: Sequence[Any], per_example: Sequence[bool],
              examples: Optional[Tensor], n: int) -> Tuple[Any, ...]:
    """The extra model arguments of ``n`` rows whose examples are ``examples``
    (int64 ``[n]``; None: a single example, every row sees its row 0)."""
    out = []
    for a, batched in zip(additional_args, per_example):
        if not batched:
            out.append(a)
        elif examples is None:
            out.append(a.expand(n, *a.shape[1:]))
        else:
            out.append(a.index_select(0, examples))
    return tuple(out)


def check_model_output(out: Any, n: int, target: Target) -> Tuple[Optional[int], Target]:
    """Check the model's output for ``n`` rows against ``target``; return
    ``(n_outputs or None for [n] outputs, target with a negative class made positive)``."""
    if not isinstance(out, Tensor):
        raise TypeError(f"model output: expected a tensor, got {type(out).__name__}")
    if out.dim() not in (1, 2) or out.shape[0] != n:
        raise ValueError(
            f"model output: expected shape [{n}, C] or [{n}] for {n} input rows, "
            f"got {tuple(out.shape)}"
        )
    if not out.is_floating_point():
        raise TypeError(f"model output: expected a floating dtype, got {out.dtype}")
    n_outputs = None if out.dim() == 1 else out.shape[1]
    check_target_range(target, n_outputs)
    if isinstance(target, int) and target < 0:
        target += n_outputs
    return n_outputs, target


def target_outputs(out: Tensor, target: Target, examples: Optional[Tensor], n_outputs: Optional[int]) -> Tensor:
    """float64 ``[n]``: each row's target output (the output itself for ``[n]`` outputs)."""
    n = out.shape[0]
    if target is None:
        picked = out.reshape(n)
    elif isinstance(target, int):
        picked = out[:, target]
    else:
        t = target.index_select(0, examples).remainder(n_outputs)
        picked = out.gather(1, t.unsqueeze(1)).squeeze(1)
    return picked.to(torch.float64)
