"""Layer attributions made of the gradient at a layer and the layer's own
values, as Captum 0.9's ``LayerActivation``, ``LayerGradientXActivation``,
``InternalInfluence`` and ``LayerConductance``.

All run on the engine with the layer's activations as the backward's leaves
(:class:`~fastattr.attr._layer.LayerLeaves`): one forward per chunk gives the
activations and, through a backward that stops at the layer, their
gradient. The path methods are path plans over the inputs (the points
``baseline + alpha (x - baseline)``, chunked under the memory budget); what
differs is the fold:

* internal influence: ``sum_s w_s grad_s`` (IG's weighted sum, nothing multiplied);
* conductance: ``sum_s grad_s * (act_{s+1} - act_s)`` over ``S + 1`` points,
  the gradient times the change of the layer to the next point. Each chunk's
  rows are folded with the last row of the chunk before (carried), so
  ``n_steps = 300`` takes no more memory than one chunk.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from ..engine import PointPlan, Request, Result, run, single_point_plan
from ..engine import budget as _budget
from ..engine.loop import row_examples
from ._call import build_request
from ._layer import (
    LayerLeaves, LayerType, LayerValues, capture_layers, format_layers, format_model_inputs, layer_names,
    layers_activation_key, per_layer,
)
from .convergence import completeness_gap
from .integrated_gradients import delta_dtype, path_plan
from .layer_integrated_gradients import _rows_cap
from .quadrature import METHODS, path_rule

LayerResult = Union[Tensor, Tuple[Tensor, ...], List[Union[Tensor, Tuple[Tensor, ...]]]]


def layer_activation(
    model: Callable[..., Any],
    inputs: v.TensorOrTuple,
    layer: LayerType,
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> LayerResult:
    """What ``layer`` (an ``nn.Module`` of ``model``, or a list of them)
    produces for ``inputs``, as Captum's ``LayerActivation.attribute``:
    forward only, in chunks under ``memory_budget``, the forward stopped once
    every layer has run.

    Returns:
        Per layer its output ``[B, *L]`` (its positional inputs with
        ``attribute_to_layer_input``; a tuple for several tensors); a list of
        those when ``layer`` is a list.
    """
    layers, was_list = format_layers(model, layer, allow_list=True)
    names = layer_names(layers, was_list)
    xs, _ = format_model_inputs(inputs)
    batch = xs[0].shape[0]
    afa = v.format_additional_args(additional_forward_args, batch)
    v.check_model_device(model, xs[0].device)
    chunk = _budget.unmeasured_chunk_rows(
        xs, v.check_optional_positive_int(memory_budget, "memory_budget"), max(batch, 1),
        v.check_optional_positive_int(chunk_rows, "chunk_rows"))
    parts: List[LayerValues] = []
    for r0 in range(0, max(batch, 1), chunk):
        r1 = min(batch, r0 + chunk)
        args = tuple(a[r0:r1] if isinstance(a, Tensor) and a.dim() > 0 else a for a in afa)
        parts.append(capture_layers(model, layers, names, attribute_to_layer_input,
                                    (*(x[r0:r1] for x in xs), *args), need_output=False))
    joined = tuple(torch.cat(ts) if len(ts) > 1 else ts[0] for ts in zip(*(p.flat for p in parts)))
    return per_layer(joined, parts[0], was_list)


def run_at_layers(
    model: Callable[..., Any],
    layer: LayerType,
    allow_list: bool,
    attribute_to_layer_input: bool,
    build: Callable[[LayerLeaves, Dict[str, Any]], Request],
    keep_all: bool = True,
    row_transform: Optional[Callable[..., Tuple[Tensor, ...]]] = None,
) -> Tuple[Result, LayerLeaves, bool]:
    """Run the engine with the gradient taken at ``layer`` (one module, or a
    list when ``allow_list``): ``(result, the leaf model, was_list)``; the
    result's tensors are shaped like the layers' values, which the leaf model
    keeps (only the last chunk's without ``keep_all``).

    ``build(leaf_model, options)`` makes the request on the leaf model,
    passing ``options`` (its leaves, the activation key) to
    :func:`~fastattr.attr._call.build_request`; ``row_transform(loop,
    leaf_model, grads, r0, r1)`` may replace each chunk's gradients before
    the fold (:attr:`~fastattr.engine.Request.row_transform`).
    """
    layers, was_list = format_layers(model, layer, allow_list=allow_list)
    leaf_model = LayerLeaves(model, layers, layer_names(layers, was_list), attribute_to_layer_input,
                             keep_all=keep_all)
    req = build(leaf_model, {
        "leaves": leaf_model.leaves,
        "activation_key": layers_activation_key(model, layers, attribute_to_layer_input, "leaves"),
    })
    v.check_model_device(model, req.inputs[0].device)  # build_request saw only the wrapper
    if row_transform is not None:
        req = dataclasses.replace(
            req, row_transform=lambda loop, grads, r0, r1: row_transform(loop, leaf_model, grads, r0, r1))
    with leaf_model.installed():
        result = run(req)
    return result, leaf_model, was_list


def _layer_gradients(
    model: Callable[..., Any],
    inputs: v.TensorOrTuple,
    layer: LayerType,
    allow_list: bool,
    target: v.TargetType,
    additional_forward_args: Any,
    attribute_to_layer_input: bool,
    plan_for: Callable[[Tuple[Tensor, ...]], PointPlan],
    memory_budget: Optional[int],
    chunk_rows: Optional[int],
    baselines: v.BaselineType = None,
    keep_all: bool = True,
    row_transform: Optional[Callable[..., Tuple[Tensor, ...]]] = None,
) -> Tuple[Tuple[Tensor, ...], LayerLeaves, bool]:
    """:func:`run_at_layers` of ``plan_for``'s points on ``inputs``:
    ``(folded per layer tensor [B, *L], the leaf model, was_list)``."""
    def build(leaf_model: LayerLeaves, options: Dict[str, Any]) -> Request:
        return build_request(
            leaf_model, inputs, target, additional_forward_args, plan_for, memory_budget, chunk_rows,
            baselines=baselines, needs_baselines=baselines is not None, **options)[0]

    result, leaf_model, was_list = run_at_layers(model, layer, allow_list, attribute_to_layer_input, build,
                                                 keep_all, row_transform)
    return result.mean, leaf_model, was_list


def layer_gradient_x_activation(
    model: Callable[..., Any],
    inputs: v.TensorOrTuple,
    layer: LayerType,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    multiply_by_inputs: bool = True,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> LayerResult:
    """The target's gradient at ``layer`` times the layer's activation (only
    the gradient with ``multiply_by_inputs=False``), as Captum's
    ``LayerGradientXActivation.attribute``.

    Args:
        model, inputs, target, additional_forward_args, memory_budget,
            chunk_rows: as :func:`fastattr.saliency`; integer inputs (token
            ids) are allowed.
        layer: an ``nn.Module`` inside ``model`` (or a list of them), run once per forward.
        attribute_to_layer_input: the layer's positional inputs instead of its output.

    Returns:
        Shaped like the layer's output ``[B, *L]`` (a tuple for several
        tensors; a list per layer when ``layer`` is a list), in its dtype.
    """
    grads, leaf_model, was_list = _layer_gradients(
        model, inputs, layer, True, target, additional_forward_args, attribute_to_layer_input,
        lambda xs: single_point_plan("grad"), memory_budget, chunk_rows,
    )
    acts = leaf_model.gathered()
    out = tuple((g * a.to(g.dtype) if multiply_by_inputs else g).to(a.dtype) for g, a in zip(grads, acts.flat))
    return per_layer(out, acts, was_list)


def internal_influence(
    model: Callable[..., Any],
    inputs: v.TensorOrTuple,
    layer: LayerType,
    baselines: v.BaselineType = None,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: Optional[int] = None,
    attribute_to_layer_input: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> LayerResult:
    """The target's gradient at ``layer`` integrated along the inputs' path
    from ``baselines`` (``sum_s w_s grad_s``, IG's rule without the final
    product), as Captum's ``InternalInfluence.attribute``.

    Args:
        baselines, n_steps, method: as :func:`fastattr.integrated_gradients`.
        internal_batch_size: Captum's cap on rows per forward (with ``chunk_rows``).
        Others: as :func:`layer_gradient_x_activation` (one layer).

    Returns:
        Shaped like the layer's output ``[B, *L]`` (a tuple for several tensors).
    """
    cap = _rows_cap(v.check_optional_positive_int(chunk_rows, "chunk_rows"),
                    v.check_optional_positive_int(internal_batch_size, "internal_batch_size"))
    grads, leaf_model, _ = _layer_gradients(
        model, inputs, layer, False, target, additional_forward_args, attribute_to_layer_input,
        lambda xs: path_plan(n_steps, method, multiply_by_inputs=False), memory_budget, cap,
        baselines=0.0 if baselines is None else baselines, keep_all=False,
    )
    like = leaf_model.values[-1]
    return per_layer(tuple(g.to(a.dtype) for g, a in zip(grads, like.flat)), like, False)


def _conductance_plan(n_steps: int, method: str) -> PointPlan:
    """``n_steps + 1`` points of ``method`` (Captum's conductance alphas), weights 1."""
    v.check_choice(method, "method", METHODS)
    n_steps = v.check_positive_int(n_steps, "n_steps")
    alphas, _ = path_rule(method, n_steps + 1)
    return PointPlan(alphas=alphas, step_weights=torch.ones_like(alphas), sample_transform="grad")


def _step_differences(points_per_example: int) -> Callable[..., Tuple[Tensor, ...]]:
    """The conductance row transform: row ``s`` of an example becomes
    ``grad_{s-1} * (act_s - act_{s-1})`` (0 for ``s = 0``), so that the sum
    over an example's rows is ``sum_{s<S} grad_s * (act_{s+1} - act_s)`` in
    Captum's order; the previous chunk's last row is carried."""
    carried: List[Tuple[Tensor, Tensor]] = []

    def transform(loop: Any, leaf_model: LayerLeaves, grads: Tuple[Tensor, ...], r0: int, r1: int
                  ) -> Tuple[Tensor, ...]:
        acts = leaf_model.values[-1].flat
        first = row_examples(r0, r1, 1, grads[0].device).remainder(points_per_example) == 0
        out = []
        for j, (g, a) in enumerate(zip(grads, acts)):
            a = a.to(g.dtype)
            g_last, a_last = carried[j] if carried else (torch.zeros_like(g[:1]), torch.zeros_like(a[:1]))
            g_prev = torch.cat((g_last, g[:-1]))
            a_prev = torch.cat((a_last, a[:-1]))
            step = g_prev.mul_(a.sub(a_prev))
            out.append(step.masked_fill_(first.view(-1, *([1] * (step.dim() - 1))), 0))
        carried[:] = [(g[-1:], a.to(g.dtype)[-1:]) for g, a in zip(grads, acts)]
        return tuple(out)

    return transform


def layer_conductance(
    model: Callable[..., Any],
    inputs: v.TensorOrTuple,
    layer: LayerType,
    baselines: v.BaselineType = None,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: Optional[int] = None,
    return_convergence_delta: bool = False,
    attribute_to_layer_input: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
    """Conductance of each unit of ``layer`` (Dhamdhere et al. 2018), as
    Captum's ``LayerConductance.attribute``: along the path from
    ``baselines`` to ``inputs`` at ``n_steps + 1`` points of ``method``, the
    gradient at the layer times the layer's change to the next point, summed.

    Memory: one chunk of path rows (``memory_budget``), whatever ``n_steps``.

    Args:
        As :func:`internal_influence`; ``return_convergence_delta`` also
        returns ``[B]`` deltas ``sum(attributions) - (f(x)[t] - f(baseline)[t])``.

    Returns:
        Shaped like the layer's output ``[B, *L]`` (a tuple for several
        tensors); with ``return_convergence_delta`` a pair ``(attributions, delta)``.
    """
    cap = _rows_cap(v.check_optional_positive_int(chunk_rows, "chunk_rows"),
                    v.check_optional_positive_int(internal_batch_size, "internal_batch_size"))
    plan = _conductance_plan(n_steps, method)
    bases = 0.0 if baselines is None else baselines
    grads, leaf_model, _ = _layer_gradients(
        model, inputs, layer, False, target, additional_forward_args, attribute_to_layer_input,
        lambda xs: plan, memory_budget, cap, baselines=bases, keep_all=False,
        row_transform=_step_differences(plan.points_per_example),
    )
    like = leaf_model.values[-1]
    attributions = per_layer(tuple(g.to(a.dtype) for g, a in zip(grads, like.flat)), like, False)
    if not return_convergence_delta:
        return attributions
    ends, was_tuple = format_model_inputs(inputs)
    gap = completeness_gap(model, bases, ends, was_tuple, target, additional_forward_args, memory_budget)
    total = sum(g.reshape(g.shape[0], -1).sum(1, dtype=torch.float64) for g in grads)
    return attributions, (total - gap).to(delta_dtype(like.flat[0]))
