"""The test grid shared by the op tests and the engine/method tests.

One place for the dtypes, devices and backends every test runs over, and for
the few helpers that judge low-precision results.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch
from torch import Tensor

from . import _backend
from ._reference import acc_dtype

__all__ = [
    "DTYPES",
    "DEVICES",
    "BACKENDS",
    "acc_dtype",
    "unit_roundoff",
    "assert_error_within",
    "assert_bitwise_equal",
    "intra_op_threads",
]

#: Value dtypes the fused ops accept.
DTYPES: List[torch.dtype] = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

#: Devices to test on: CPU always, CUDA when a GPU is visible.
DEVICES: List[torch.device] = [torch.device("cpu")] + (
    [torch.device("cuda")] if torch.cuda.is_available() else []
)

#: Backends available in this process ("extension" only when fastattr._C loaded).
BACKENDS: List[str] = ["reference"] + (["extension"] if _backend.extension_available else [])


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff ``u = eps / 2`` of a float dtype (the relative error bound
    of one correctly rounded operation)."""
    return torch.finfo(dtype).eps / 2


def assert_error_within(
    actual: Tensor, exact: Tensor, plain: Tensor, factor: float = 2.0, msg: str = ""
) -> None:
    """Assert that ``actual`` is at most ``factor`` times as far from ``exact``
    as ``plain`` is (flash-attention's rule for low precision: the tolerance is
    measured, not guessed).

    Args:
        actual: the result under test, any float dtype.
        exact: the same quantity computed in float64 from the same (rounded)
            inputs.
        plain: the same quantity computed with plain PyTorch ops in the dtype
            of ``actual``.
        factor: allowed ratio of maximum absolute errors.

    ``plain``'s error is floored at one unit roundoff of ``actual``'s dtype
    relative to ``max|exact|``, so a lucky error-free ``plain`` does not demand
    an exact ``actual``.
    """
    exact = exact.to(torch.float64)
    err = (actual.to(torch.float64) - exact).abs().max().item() if exact.numel() else 0.0
    plain_err = (plain.to(torch.float64) - exact).abs().max().item() if exact.numel() else 0.0
    scale = exact.abs().max().item() if exact.numel() else 0.0
    floor = unit_roundoff(actual.dtype) * scale
    bound = factor * max(plain_err, floor)
    assert err <= bound, (
        f"{msg} max error {err:.3g} exceeds {factor} x plain PyTorch's {plain_err:.3g} "
        f"(floor {floor:.3g}) in {actual.dtype}"
    )


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def assert_bitwise_equal(actual: Tensor, expected: Tensor, msg: str = "") -> None:
    """Assert same dtype, shape and bits (stricter than ``torch.equal``, which
    calls ``-0.0 == 0.0``); reports where the first difference is."""
    assert actual.dtype == expected.dtype, f"{msg} dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, (
        f"{msg} shape {list(actual.shape)} != {list(expected.shape)}"
    )
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if a.is_floating_point():
        as_int = _SAME_SIZE_INT[a.element_size()]
        a, e = a.contiguous().view(as_int), e.contiguous().view(as_int)
    diff = a != e
    if bool(diff.any()):
        idx = tuple(int(i) for i in diff.nonzero()[0])
        n = int(diff.sum())
        raise AssertionError(
            f"{msg} {n} of {diff.numel()} elements differ; first at {list(idx)}: "
            f"{actual.detach().cpu()[idx].item()!r} vs {expected.detach().cpu()[idx].item()!r}"
        )


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` while the context is open; the previous
    count is restored on exit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
