"""GradientSHAP of a layer, as Captum 0.9's ``LayerGradientShap``: the
gradient at the layer, at a random point between each (noisy) input and a
reference drawn from a distribution, times the layer's difference between
the input and the reference, averaged over draws.

The draws are :func:`~fastattr.attr.gradient_shap.gradient_shap`'s (the same
seed gives the same references, positions and noise), so on an identity
layer over the inputs the two agree. The points are the engine's, the
gradient is taken at the layer (:func:`~fastattr.attr.layer_gradients.run_at_layers`),
and each chunk's gradients are multiplied by the layer's values at the
chunk's inputs and references, captured by two forwards that stop at the
layer (Captum's ``LayerInputBaselineXGradient`` evaluates the layer at both too).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

from torch import Tensor

from .. import _validate as v
from ..engine import Request
from ..engine.loop import row_examples
from ._layer import LayerLeaves, per_layer
from .gradient_shap import drawn_points_request, gradient_shap_request
from .integrated_gradients import delta_dtype
from .layer_gradients import LayerResult, run_at_layers


def _times_layer_difference(loop: Any, leaf_model: LayerLeaves, grads: Tuple[Tensor, ...], r0: int,
                            r1: int) -> Tuple[Tensor, ...]:
    """Each row's (one per (example, sample)) gradient at the layer times
    ``layer(x_n) - layer(reference)``."""
    n_inputs = len(loop.req.inputs)
    samples = tuple(loop.sample_rows(i, r0, r1) for i in range(n_inputs))
    references = tuple(loop.start_and_difference(i, r0, r1)[0] for i in range(n_inputs))
    examples = row_examples(r0, r1, loop.per_example, grads[0].device)
    args = loop.row_args(examples, r1 - r0)
    at_samples = leaf_model.capture((*samples, *args))
    at_references = leaf_model.capture((*references, *args))
    return tuple(g * (s - r).to(g.dtype) for g, s, r in zip(grads, at_samples.flat, at_references.flat))


def layer_gradient_shap(
    model: Callable[..., Any],
    inputs: v.TensorOrTuple,
    layer: Any,
    baselines: Any,
    n_samples: int = 5,
    stdevs: Union[float, Tuple[float, ...]] = 0.0,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    attribute_to_layer_input: bool = False,
    multiply_by_inputs: bool = True,
    seed: int = 0,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
    """GradientSHAP attributions of ``layer``'s output (or inputs) for
    ``model(inputs)[target]``.

    Args:
        model, inputs, target, additional_forward_args, memory_budget,
            chunk_rows: as :func:`fastattr.saliency`.
        layer: an ``nn.Module`` of ``model`` (run once per forward).
        baselines, n_samples, seed, example_offset: as :func:`fastattr.gradient_shap`.
        stdevs: the inputs' Gaussian noise (``gradient_shap``'s ``stdev``).
        return_convergence_delta: also return ``[B * n_samples]`` deltas, row
            ``b * n_samples + n``: ``sum(layer attribution of the draw) -
            (f(x_n)[t] - f(ref_k)[t])``, as Captum's.
        attribute_to_layer_input: the layer's positional inputs instead of its output.
        multiply_by_inputs: times ``layer(x_n) - layer(ref_k)`` (True) or the
            plain gradient at the layer.

    Returns:
        Shaped like the layer's output ``[B, *L]`` (a tuple for several
        tensors); with ``return_convergence_delta`` a pair ``(attributions, delta)``.
    """
    def build(leaf_model: LayerLeaves, options: Dict[str, Any]) -> Request:
        return gradient_shap_request(
            leaf_model, inputs, baselines, target, n_samples, stdevs, seed, additional_forward_args,
            bool(return_convergence_delta), "grad", memory_budget, chunk_rows, example_offset, **options)[0]

    return _run(model, layer, attribute_to_layer_input, multiply_by_inputs, build, return_convergence_delta)


def layer_gradient_shap_at(
    model: Callable[..., Any],
    rows: v.TensorOrTuple,
    references: Tuple[Tensor, ...],
    alphas: Tensor,
    layer: Any,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    attribute_to_layer_input: bool = False,
    multiply_by_inputs: bool = True,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
    """:func:`layer_gradient_shap`'s term of each row of ``rows`` (noise
    included) at the caller's draws (its ``references`` and ``alphas``, one
    per row, as :func:`~fastattr.attr.gradient_shap.drawn_points_request`):
    ``[n, *L]``, not averaged; deltas ``[n]``."""
    def build(leaf_model: LayerLeaves, options: Dict[str, Any]) -> Request:
        return drawn_points_request(
            leaf_model, rows, references, alphas, target, additional_forward_args,
            bool(return_convergence_delta), "grad", memory_budget, chunk_rows, **options)[0]

    return _run(model, layer, attribute_to_layer_input, multiply_by_inputs, build, return_convergence_delta)


def _run(model: Callable[..., Any], layer: Any, attribute_to_layer_input: bool, multiply_by_inputs: bool,
         build: Callable[[LayerLeaves, Dict[str, Any]], Request], return_convergence_delta: bool
         ) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
    result, leaf_model, _ = run_at_layers(
        model, layer, False, attribute_to_layer_input, build, keep_all=False,
        row_transform=_times_layer_difference if multiply_by_inputs else None,
    )
    like = leaf_model.values[-1]
    attributions = per_layer(tuple(m.to(a.dtype) for m, a in zip(result.mean, like.flat)), like, False)
    if not return_convergence_delta:
        return attributions
    return attributions, result.deltas.to(delta_dtype(like.flat[0]))
