"""Guided backpropagation (Springenberg et al. 2015) and deconvnet (Zeiler &
Fergus 2014): the gradient at the input with the backward of every
``nn.ReLU`` module replaced, as Captum 0.9's ``GuidedBackprop`` /
``Deconvolution``.

Only ``nn.ReLU`` modules get the rule (subclasses included); a functional
``torch.relu`` / ``F.relu`` keeps its ordinary gradient, as in Captum.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .. import _validate as v
from ..engine import run, single_point_plan
from ._call import build_request, shape_output
from .relu_rules import BackwardRule, deconv_rule, guided_rule, relu_rules, require_module


def _relu_rule_gradient(
    method: str,
    rule: BackwardRule,
    model: nn.Module,
    inputs: v.TensorOrTuple,
    target: v.TargetType,
    additional_forward_args: Any,
    memory_budget: Optional[int],
    chunk_rows: Optional[int],
) -> v.TensorOrTuple:
    require_module(model, method)
    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args,
        lambda xs: single_point_plan("grad"),
        memory_budget, chunk_rows,
        rules=relu_rules(model, rule),
    )
    return shape_output(run(req).mean, req.inputs, was_tuple)


def guided_backprop(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> v.TensorOrTuple:
    """Guided backprop of ``model(inputs)[:, target]``, as Captum's ``GuidedBackprop``.

    The gradient w.r.t. each input where every ``nn.ReLU`` module passes
    back ``relu(grad_input)``: the ordinary ReLU gradient (zero where the
    ReLU's input was <= 0) with its negative entries zeroed too.

    Args:
        model: an ``nn.Module`` taking the inputs (and
            ``additional_forward_args``) and returning ``[B, C]`` (or ``[B]``
            with ``target=None``).
        inputs: ``[B, *F]`` or a tuple of such tensors.
        target: class index (int), one per example (list / int tensor ``[B]``),
            or None for a single-output model.
        additional_forward_args: extra model arguments; tensors with a batch
            dimension are given per row.
        memory_budget: bytes one chunk may use (default: see
            :func:`fastattr.engine.budget.default_budget`).
        chunk_rows: optional extra cap on the rows (examples) per chunk.

    Returns:
        Attributions shaped and typed like ``inputs`` (tensor or tuple).
    """
    return _relu_rule_gradient("guided_backprop", guided_rule, model, inputs, target,
                               additional_forward_args, memory_budget, chunk_rows)


def deconvolution(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> v.TensorOrTuple:
    """Deconvnet attributions of ``model(inputs)[:, target]``, as Captum's ``Deconvolution``.

    The gradient w.r.t. each input where every ``nn.ReLU`` module passes
    back ``relu(grad_output)``, whatever the sign of its input.

    Args and returns as :func:`guided_backprop`.
    """
    return _relu_rule_gradient("deconvolution", deconv_rule, model, inputs, target,
                               additional_forward_args, memory_budget, chunk_rows)
