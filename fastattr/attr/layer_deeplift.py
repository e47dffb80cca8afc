"""DeepLIFT of a layer, as Captum 0.9's ``LayerDeepLift`` and
``LayerDeepLiftShap``: the rescale rules' multipliers at the layer times the
layer's difference between each input and its reference.

The engine runs DeepLIFT's paired model (each chunk's rows beside their
references, :func:`~fastattr.attr.deeplift.beside_references`, the rules
installed) with the gradient taken at the layer
(:func:`~fastattr.attr.layer_gradients.run_at_layers`): the layer's values
and multipliers come for the ``2n`` paired rows of a chunk, and a per-chunk
transform keeps the input rows' multipliers times the pair's difference.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .. import _validate as v
from ..engine import Request, single_point_plan
from ._call import build_request
from ._layer import LayerLeaves, format_layers, per_layer
from .convergence import completeness_gap
from .deeplift_shap import against_each_reference
from .deeplift import (
    CustomAttributionFunc, _check_custom_func, _check_custom_output, _check_eps, _one_chunk, beside_references,
    deeplift_rules, hooked_modules,
)
from .integrated_gradients import delta_dtype
from .layer_gradients import LayerResult, run_at_layers
from .relu_rules import require_module


def layer_deeplift(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    layer: nn.Module,
    baselines: v.BaselineType = None,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    attribute_to_layer_input: bool = False,
    custom_attribution_func: Optional[CustomAttributionFunc] = None,
    multiply_by_inputs: bool = True,
    eps: float = 1e-10,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
    """DeepLIFT (rescale rule) attributions of ``layer``'s output (or
    inputs) for ``model(inputs)[target]`` against ``baselines``.

    Args:
        model, inputs, baselines, target, additional_forward_args, eps,
            memory_budget, chunk_rows: as :func:`fastattr.deeplift`.
        layer: an ``nn.Module`` of ``model``, run once per forward.
        attribute_to_layer_input: the layer's positional inputs instead of its output.
        custom_attribution_func: Captum's hook, called with the layer's
            ``(multipliers, values at the inputs, values at the baselines)``
            (or its first one or two of them) for the whole batch.
        multiply_by_inputs: times the layer's difference (True) or the multipliers.
        return_convergence_delta: also return ``[B]`` deltas
            ``sum(attributions) - (f(x)[t] - f(baseline)[t])``.

    Returns:
        Shaped like the layer's output ``[B, *L]`` (a tuple for several
        tensors); with ``return_convergence_delta`` a pair ``(attributions, delta)``.
    """
    require_module(model, "layer_deeplift")
    format_layers(model, layer, allow_list=False)
    eps = _check_eps(eps)
    custom = _check_custom_func(custom_attribution_func)
    modules = hooked_modules(model)
    xs, was_tuple = v.format_inputs(inputs)
    collected: List[Tuple[Tuple[Tensor, ...], ...]] = []  # per chunk (multipliers, at inputs, at baselines)

    def build(leaf_model: LayerLeaves, options: Dict[str, Any]) -> Request:
        req, _ = build_request(
            leaf_model, inputs, target, additional_forward_args, lambda xs: single_point_plan("grad"),
            memory_budget, chunk_rows, baselines=baselines, needs_baselines=True,
            rules=deeplift_rules(modules, eps), **options)
        if any(type(m) is nn.Softmax for m in modules):
            req = _one_chunk(req, memory_budget)
        batch = req.inputs[0].shape[0]
        references = tuple(b.expand(batch, *b.shape[1:]) for b in req.baselines)
        return dataclasses.replace(req, additional_args=(*references, *req.additional_args))

    def pair_transform(loop: Any, leaf_model: LayerLeaves, grads: Tuple[Tensor, ...], r0: int, r1: int
                       ) -> Tuple[Tensor, ...]:
        n = r1 - r0
        values = leaf_model.values[-1].flat
        multipliers = tuple(g[:n] for g in grads)
        at_inputs = tuple(a[:n].to(g.dtype) for a, g in zip(values, grads))
        at_baselines = tuple(a[n:].to(g.dtype) for a, g in zip(values, grads))
        if custom is not None:
            collected.append((multipliers, at_inputs, at_baselines))
            return multipliers
        if not multiply_by_inputs:
            return multipliers
        return tuple(m * (x - r) for m, x, r in zip(multipliers, at_inputs, at_baselines))

    v.check_model_device(model, xs[0].device)  # the engine sees only the paired wrapper
    result, leaf_model, _ = run_at_layers(
        beside_references(model, len(xs), always_paired=True), layer, False, attribute_to_layer_input,
        build, keep_all=False, row_transform=pair_transform,
    )
    like = leaf_model.values[-1]
    folded = result.mean
    if custom is not None:
        joined = [tuple(torch.cat(parts) for parts in zip(*kind)) for kind in zip(*collected)]
        folded = _check_custom_output(custom(*joined), folded, True)
    attributions = per_layer(tuple(a.to(t.dtype) for a, t in zip(folded, like.flat)), like, False)
    if not return_convergence_delta:
        return attributions
    gap = completeness_gap(model, baselines, xs, was_tuple, target, additional_forward_args, memory_budget)
    total = sum(a.reshape(a.shape[0], -1).sum(1, dtype=torch.float64) for a in folded)
    return attributions, (total - gap).to(delta_dtype(like.flat[0]))


def layer_deeplift_shap(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    layer: nn.Module,
    baselines: Any,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    attribute_to_layer_input: bool = False,
    custom_attribution_func: Optional[CustomAttributionFunc] = None,
    multiply_by_inputs: bool = True,
    eps: float = 1e-10,
    memory_budget: Optional[int] = None,
) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
    """:func:`layer_deeplift` of each example against every example of a
    reference distribution (``baselines``: ``[M, *F]`` per input, ``M >= 2``,
    or a callable), averaged over the references, as Captum's
    ``LayerDeepLiftShap``; deltas ``[B * M]``."""
    def explain(rows: v.TensorOrTuple, bases: v.TensorOrTuple, row_target: Any, row_args: Any) -> Any:
        return layer_deeplift(model, rows, layer, bases, row_target, row_args, return_convergence_delta,
                              attribute_to_layer_input, custom_attribution_func, multiply_by_inputs, eps,
                              memory_budget)

    return against_each_reference(explain, inputs, baselines, target, additional_forward_args,
                                  return_convergence_delta, "LayerDeepLiftShap", "layer_deeplift")
