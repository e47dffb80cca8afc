"""Layer integrated gradients: integrated gradients in a layer's activation
space, as Captum's ``LayerIntegratedGradients``.

The path runs from the layer's activations at the baselines to its
activations at the inputs; at every point the model runs on the inputs with
the layer's output replaced by the point. On the engine that is an ordinary
IG plan whose inputs are the activations, run on a
:class:`~fastattr.attr._layer.LayerSubstitution` of the model, with the
model's own inputs travelling as per-example arguments.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from ..engine import run
from ..engine.outputs import check_model_output
from ._call import build_request, shape_output
from ._layer import (
    LayerSubstitution, LayerType, capture_layers, layers_activation_key,
    format_layers, format_model_inputs, layer_names, per_layer, selected_outputs,
)
from .integrated_gradients import delta_dtype, path_plan

LayerAttributions = Union[Tensor, Tuple[Tensor, ...], List[Union[Tensor, Tuple[Tensor, ...]]]]


def _rows_cap(chunk_rows: Optional[int], internal_batch_size: Optional[int]) -> Optional[int]:
    """The tighter of the two row caps (Captum's ``internal_batch_size`` counts rows too)."""
    caps = [c for c in (chunk_rows, internal_batch_size) if c is not None]
    return min(caps) if caps else None


def _baseline_rows(bases: Tuple[Tensor, ...], afa: Tuple[Any, ...], batch: int) -> Tuple[Tensor, ...]:
    """Baselines to run the model on: one row when they are shared and no
    extra argument is per example (the activations then broadcast), else ``B``."""
    shared = all(b.shape[0] == 1 for b in bases) and not any(
        isinstance(a, Tensor) and a.dim() > 0 for a in afa
    )
    return bases if shared else tuple(b.expand(batch, *b.shape[1:]) for b in bases)


def layer_integrated_gradients(
    model: Callable[..., Tensor],
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
    multiply_by_inputs: bool = True,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> Union[LayerAttributions, Tuple[LayerAttributions, Tensor]]:
    """Integrated gradients of ``model(inputs)[:, target]`` w.r.t. the output
    (or input) of ``layer``, as Captum's ``LayerIntegratedGradients.attribute``.

    Args:
        model: callable taking the inputs (and ``additional_forward_args``)
            and returning ``[B, C]`` (or ``[B]`` with ``target=None``).
        inputs: ``[B, *F]`` or a tuple of such tensors; integer tensors
            (token ids for an ``nn.Embedding`` layer) are allowed.
        layer: an ``nn.Module`` inside ``model``, or a list of them (none
            feeding another); each must run once per forward.
        baselines: in the inputs' space, as :func:`fastattr.integrated_gradients`
            (None: zeros); the path starts at the layer's activations there.
        target, additional_forward_args, memory_budget, chunk_rows: as
            :func:`fastattr.saliency`.
        n_steps, method, multiply_by_inputs: as :func:`fastattr.integrated_gradients`;
            ``multiply_by_inputs`` multiplies by the activations at the inputs
            minus those at the baselines.
        internal_batch_size: Captum's cap on rows per forward (a cap like
            ``chunk_rows``; the smaller one applies).
        return_convergence_delta: also return ``[B]`` deltas
            ``sum(attributions of every layer) - (f(inputs)[t] - f(baselines)[t])``.
        attribute_to_layer_input: explain the layers' positional inputs.

    Returns:
        Per layer, attributions shaped like its output ``[B, *L]`` (a tuple if
        it has several tensors), in its dtype; a list of those when ``layer``
        is a list; with ``return_convergence_delta`` a pair ``(attributions, delta [B])``.
    """
    layers, was_list = format_layers(model, layer, allow_list=True)
    names = layer_names(layers, was_list)
    xs, was_tuple = format_model_inputs(inputs)
    batch, device = xs[0].shape[0], xs[0].device
    target_ = v.format_target(target, batch, device)
    afa = v.format_additional_args(additional_forward_args, batch)
    bases = v.format_baselines(baselines, xs, was_tuple)
    plan = path_plan(n_steps, method, multiply_by_inputs)
    v.check_optional_positive_int(memory_budget, "memory_budget")
    rows_cap = _rows_cap(
        v.check_optional_positive_int(chunk_rows, "chunk_rows"),
        v.check_optional_positive_int(internal_batch_size, "internal_batch_size"),
    )
    v.check_model_device(model, device)

    # The model's outputs are needed only for the convergence delta; without
    # it the captures stop at the layers, and the engine checks the output
    # against the target on its first chunk, before any backward.
    with_outputs = bool(return_convergence_delta)
    at_inputs = capture_layers(model, layers, names, attribute_to_layer_input, (*xs, *afa), with_outputs)
    if with_outputs:
        flat_target = check_model_output(at_inputs.output, batch, target_)
    base_rows = _baseline_rows(bases, afa, batch)
    at_bases = capture_layers(model, layers, names, attribute_to_layer_input, (*base_rows, *afa), with_outputs)
    for name, a, b in zip(names, at_inputs.values, at_bases.values):
        if [t.shape[1:] for t in a] != [t.shape[1:] for t in b]:
            raise ValueError(
                f"{name}: its {'input' if attribute_to_layer_input else 'output'} at the baselines "
                f"has shapes {[tuple(t.shape) for t in b]}, at the inputs {[tuple(t.shape) for t in a]}"
            )

    substitution = LayerSubstitution(model, layers, names, at_inputs, attribute_to_layer_input)
    req, _ = build_request(
        substitution, at_inputs.flat, target, (*xs, *afa), lambda acts: plan,
        memory_budget, rows_cap, baselines=at_bases.flat, needs_baselines=True,
        activation_key=layers_activation_key(model, layers, attribute_to_layer_input, "substitution"),
    )
    with substitution.installed():
        result = run(req)
    flat = shape_output(result.mean, req.inputs, was_tuple=True)
    attributions = per_layer(flat, at_inputs, was_list)
    if not return_convergence_delta:
        return attributions
    # Captum's delta: the model at the inputs and at the baselines themselves
    # (not with only the layer replaced: other paths from the inputs count too).
    attr_sums = sum(a.reshape(batch, -1).sum(1, dtype=torch.float64) for a in result.mean)
    gap = selected_outputs(at_inputs.output, flat_target, batch) - selected_outputs(
        at_bases.output, flat_target, batch
    )
    return attributions, (attr_sums - gap).to(delta_dtype(req.inputs[0]))
