"""The autograd pieces LRP's rules are made of (layer rules in
:mod:`fastattr.attr.lrp`, function rules in :mod:`fastattr.attr.lrp_functional`).

The gradient that flows between layers is the relevance. A z-rule returns
the layer's original output; the backward from it goes ``R -> R / d``
(:class:`Relevance`, ``d`` the stabilized rule output), through the rule's
branches of the layer, and ``-> x_k * grad`` at each branch input
(:func:`input_part`).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor


class TimesInput(torch.autograd.Function):
    """Forward: ``part`` (the branch's part of input ``x``; None: ``x``
    itself); backward: the gradient times ``part``, into ``x``. The forward
    gives a view, not a copy, unless asked for one (a layer that writes into
    its input: a view made by a custom Function must not be written)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, part: Optional[Tensor], copy: bool) -> Tensor:
        part = x if part is None else part
        ctx.save_for_backward(part)
        return part.clone() if copy else part.view_as(part)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None]:
        (part,) = ctx.saved_tensors
        return grad * part, None, None


class Relevance(torch.autograd.Function):
    """Forward: the layer's original output ``value``; backward: the
    gradient divided by ``denom``, into the rule's output ``through``."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, through: Tensor, denom: Tensor) -> Tensor:
        ctx.save_for_backward(denom)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[None, Tensor, None]:
        (denom,) = ctx.saved_tensors
        return None, grad / denom, None


class PassedThrough(torch.autograd.Function):
    """Forward: ``compute()`` (a layer's output, made without a graph);
    backward: the gradient into ``x`` unchanged, reshaped to it (the
    relevance of a pass-through layer's output is its input's)."""

    @staticmethod
    def forward(ctx: Any, compute: Callable[[], Tensor], x: Tensor) -> Tensor:
        ctx.shape = x.shape
        return compute()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[None, Tensor]:
        return None, grad.reshape(ctx.shape)


def input_part(x: Tensor, part: str, copy: bool) -> Tensor:
    """``x`` (values only) as a branch sees it, with the gradient times that part
    (``part``: ``"all"``, ``"positive"`` or ``"negative"``)."""
    if part == "positive":
        return TimesInput.apply(x, x.detach().clamp(min=0), copy)
    if part == "negative":
        return TimesInput.apply(x, x.detach().clamp(max=0), copy)
    return TimesInput.apply(x, None, copy)


def branch_inputs(args: Tuple[Any, ...], part: str, copy: bool) -> Tuple[Any, ...]:
    """``args`` with every floating tensor replaced by its ``part`` (:func:`input_part`)."""
    return tuple(input_part(a, part, copy) if isinstance(a, Tensor) and a.is_floating_point() else a
                 for a in args)
