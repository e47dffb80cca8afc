"""What every model call of the engine shares: the rows' extra arguments,
the check of the model's output against the target, and the pick of each
row's target output.

A target is resolved once, on the first output, to a *flat* target: the
column of each example's output flattened to ``[n, prod(out.shape[1:])]``.
Every target form Captum accepts (an int, a tuple for ``[B, C, L, ...]``
outputs, one int or tuple per example, one tensor element for all) becomes
an int (the same column for every row) or int64 ``[B]`` (one per example),
so the backward seeds and the picks below never depend on the output's rank.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._validate import FormattedTarget, TargetError

FlatTarget = Union[int, Tensor]  # a column of out.reshape(n, -1), or int64 [B] of them

# Up to this many target indices are range-checked in Python on the CPU.
_TARGETS_READ_AS_LIST = 4096


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


def _index_length(target: FormattedTarget) -> int:
    if target is None:
        return 0
    if isinstance(target, tuple):
        return len(target)
    if isinstance(target, Tensor) and target.dim() == 2:
        return target.shape[1]
    return 1


def _output_shape(shape: Tuple[int, ...]) -> str:
    return "[" + ", ".join(("n", *map(str, shape))) + "]"


def _column_ranges(target: Tensor) -> List[Tuple[int, int]]:
    """``(min, max)`` of each index column of int64 ``[B]`` / ``[B, k]``."""
    table = target.reshape(target.shape[0], -1)
    if not table.is_cuda and table.numel() <= _TARGETS_READ_AS_LIST:
        # A batch's worth of indices: one copy to Python beats reductions and scalar reads.
        columns = list(zip(*table.tolist()))
        return [(min(c), max(c)) for c in columns]
    lo, hi = torch.aminmax(table, dim=0)
    return list(zip(*torch.stack((lo, hi)).tolist()))  # one device sync


def flat_target(target: FormattedTarget, shape: Sequence[int]) -> FlatTarget:
    """The flat column of ``target`` in outputs whose per-example shape is
    ``shape`` (``out.shape[1:]``); raises :class:`TargetError` naming the
    target when it does not pick exactly one value per example.

    As Captum's selection: an index of length ``k`` indexes dims ``1..k`` and
    the dims after it must be of size 1 (an output ``[B, C, 1]`` takes a class
    index); None needs one value per example; negative indices count from
    the end.
    """
    if type(target) is int and len(shape) == 1 and -shape[0] <= target < shape[0]:
        return target % shape[0]  # the common case, [B, C] with one class: no more to check
    shape = tuple(shape)
    k = _index_length(target)
    if k > len(shape):
        raise TargetError(
            f"target: indexes {k} output dim(s), but the model's output {_output_shape(shape)} "
            f"has {len(shape)} after the batch dim"
            + (" (use target=None for one value per example)" if not shape else "")
        )
    rest = math.prod(shape[k:])
    if rest != 1:
        if target is None:
            raise TargetError(
                f"target: required because the model returns {rest} outputs per example "
                f"(output {_output_shape(shape)}); pass the index to explain"
            )
        raise TargetError(
            f"target: selects {rest} values per example from the model's output "
            f"{_output_shape(shape)}; a target must select one value per example"
        )
    if k == 0:
        return 0
    dims = shape[:k]
    if isinstance(target, Tensor):
        if target.numel() == 0:
            return target.reshape(-1)
        ranges = _column_ranges(target)
    else:
        index = target if isinstance(target, tuple) else (target,)
        ranges = [(i, i) for i in index]
    for j, ((lo, hi), d) in enumerate(zip(ranges, dims)):
        if lo < -d or hi >= d:
            raise TargetError(
                f"target: index out of range for output dim {j + 1} of size {d} "
                f"(model output {_output_shape(shape)}; got {lo if lo < -d else hi})"
            )
    strides = [math.prod(dims[j + 1:]) for j in range(k)]
    if not isinstance(target, Tensor):
        index = target if isinstance(target, tuple) else (target,)
        return sum((i % d) * s for i, d, s in zip(index, dims, strides))
    if k == 1:
        return target if ranges[0][0] >= 0 else target.remainder(dims[0])
    table = target.remainder(torch.tensor(dims, device=target.device))
    return table.mul(torch.tensor(strides, device=target.device)).sum(1)


def check_model_output(out: Any, n: int, target: FormattedTarget, rows_may_differ: bool = False) -> FlatTarget:
    """Check the model's output for ``n`` rows against ``target`` (formatted
    by :func:`fastattr._validate.format_target`); return the flat target.

    ``rows_may_differ``: the ``n`` rows are the whole call, in one forward, so
    an output with another number of rows (a batch-level value, ``[1, C]``)
    is explained as Captum does, by the gradient of its selected entries'
    sum, when the target is the same for every row."""
    if not isinstance(out, Tensor):
        raise TypeError(f"model output: expected a tensor, got {type(out).__name__}")
    batch_level = rows_may_differ and not isinstance(target, Tensor)
    if out.dim() == 0 or (out.shape[0] != n and not batch_level):
        raise ValueError(
            f"model output: expected shape [{n}, ...] (one entry per input row) for {n} input "
            f"rows, got {tuple(out.shape)} (an output with other rows, a batch-level value, is "
            "explained only with one target for all rows, every row in one chunk, no delta)"
        )
    if not out.is_floating_point():
        raise TypeError(f"model output: expected a floating dtype, got {out.dtype}")
    return flat_target(target, out.shape[1:])


def target_outputs(out: Tensor, target: FlatTarget, examples: Optional[Tensor]) -> Tensor:
    """float64 ``[n]``: each row's target output; ``target`` flat, ``examples``
    int64 ``[n]`` (each row's example; needed for per-example targets)."""
    flat = out.reshape(out.shape[0], math.prod(out.shape[1:]))
    if isinstance(target, int):
        picked = flat[:, target]
    else:
        picked = flat.gather(1, target.index_select(0, examples).unsqueeze(1)).squeeze(1)
    return picked.to(torch.float64)
