"""fastattr.metrics.ordering: the stable order equals torch's stable sort on
every kind of row (the NumPy key path and the torch fallback), and the
check of a caller's order."""
from __future__ import annotations

import pytest
import torch

from fastattr.metrics.ordering import check_order, stable_order


def _rows(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if kind == "signed":
        return torch.randn(6, 1000, generator=g)
    if kind == "ties":  # few values: long runs of equal values, both signs, both zeros
        x = (torch.randint(-3, 4, (5, 777), generator=g) / 2).float()
        x[:, ::5] = -0.0
        return x
    if kind == "float64 held by float32":
        return torch.randn(4, 500, generator=g).double()
    if kind == "float64 beyond float32":  # values a float32 would merge: torch's sort
        return 1 + torch.arange(300, dtype=torch.float64).repeat(3, 1) * 1e-12
    if kind == "half":
        return torch.randn(3, 400, generator=g).half()
    if kind == "bfloat16":
        return torch.randn(3, 400, generator=g).bfloat16()
    if kind == "extremes":
        x = torch.tensor([[3.4e38, -3.4e38, 1e-45, -1e-45, 0.0, -0.0, 1.0, -1.0]])
        return x.repeat(2, 4)
    if kind == "non-contiguous":
        return torch.randn(400, 6, generator=g).t()
    if kind == "nan and inf":
        x = torch.randn(3, 50, generator=g)
        x[0, 3], x[1, 7], x[2, 9] = float("nan"), float("inf"), -float("inf")
        return x
    if kind == "int64":
        return torch.randint(-5, 5, (3, 60), generator=g)
    if kind == "empty":
        return torch.empty(0, 9)
    if kind == "no columns":
        return torch.empty(3, 0)
    raise AssertionError(kind)


KINDS = ["signed", "ties", "float64 held by float32", "float64 beyond float32", "half", "bfloat16", "extremes",
         "non-contiguous", "nan and inf", "int64", "empty", "no columns"]


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_stable_order_is_torch_stable_sort(kind, descending):
    x = _rows(kind)
    expected = torch.sort(x, dim=1, descending=descending, stable=True).indices
    got = stable_order(x, descending)
    assert got.dtype == torch.int64 and torch.equal(got, expected)


def test_stable_order_ties_keep_position_order():
    x = torch.tensor([[1.0, 2.0, 1.0, 2.0, -0.0, 0.0]])
    assert stable_order(x).tolist() == [[4, 5, 0, 2, 1, 3]]
    assert stable_order(x, descending=True).tolist() == [[1, 3, 0, 2, 4, 5]]


def test_check_order_accepts_permutations_and_moves_them():
    order = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    assert torch.equal(check_order(order, 3, 10, torch.device("cpu")), order)
    assert check_order(torch.empty(3, 0, dtype=torch.int64), 3, 0, torch.device("cpu")).shape == (3, 0)


@pytest.mark.parametrize("order,message", [
    (torch.tensor([[0, 1, 1]]), "permutation"),
    (torch.tensor([[0, 1, 3]]), "permutation"),
    (torch.tensor([[0, -1, 2]]), "permutation"),
    (torch.tensor([[0, 1, 2]], dtype=torch.int32), "int64"),
    (torch.tensor([[0, 1]]), r"\[1, 3\]"),
    ([[0, 1, 2]], "int64"),
])
def test_check_order_rejects_what_is_not_a_permutation(order, message):
    with pytest.raises(ValueError, match=f"patch_order: .*{message}"):
        check_order(order, 1, 3, torch.device("cpu"), "patch_order")
