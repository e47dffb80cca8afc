"""Attributions of one neuron of a layer (Captum 0.9's ``Neuron*`` methods):
each input method explains the model cut at the layer, whose output is the
selected neuron's value per example.

:class:`NeuronOutput` is that cut model: an ``nn.Module`` holding the
caller's model (so the backward rules of guided backprop, deconvolution
and DeepLIFT find its modules), whose forward runs the model until the
layer has run and returns ``[B]``, the neuron picked by ``neuron_selector``
(Captum's forms: an int or a tuple of ints and slices indexing the layer's
output after the batch dim, a slice summing the neurons it covers, or a
callable of the layer's output). Every method then runs on the engine as it
does for a model's output, with ``target=None``.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .. import _validate as v
from ..engine.outputs import check_model_output, target_outputs
from ._layer import _LayersCaptured, _split, format_layers
from .deeplift import CustomAttributionFunc, deeplift
from .deeplift_shap import deeplift_shap
from .guided import deconvolution, guided_backprop
from .integrated_gradients import integrated_gradients
from .saliency import saliency

NeuronSelector = Union[int, Tuple[Union[int, slice], ...], Callable[..., Tensor]]


def check_neuron_selector(selector: Any) -> NeuronSelector:
    """``selector`` as Captum takes it: an int, a tuple of ints and slices,
    or a callable; a 1-tuple of an int is that int."""
    if callable(selector) or (isinstance(selector, int) and not isinstance(selector, bool)):
        return selector
    if isinstance(selector, tuple) and selector and all(
            isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool)) for i in selector):
        return selector
    raise v.ArgumentTypeError(
        "neuron_selector: expected an int, a non-empty tuple of ints and slices, or a callable of the "
        f"layer's output, got {selector!r}"
    )


def select_neuron(values: Tuple[Tensor, ...], selector: NeuronSelector) -> Tensor:
    """``[n]``: the selected neuron of each row of the layer's ``values``
    (its tensors, each ``[n, *L]``); a slice sums the neurons it covers. A
    callable that returns one number for all rows is applied to each row on
    its own (``torch.func.vmap``), as to a batch of one example."""
    n = values[0].shape[0]
    if callable(selector):
        picked = selector(values if len(values) > 1 else values[0])
        if isinstance(picked, Tensor) and picked.dim() == 0:
            # One number for the batch (e.g. the layer's sum): the selector
            # applied to each example on its own, as to a batch of one.
            picked = picked.reshape(1) if n == 1 else torch.func.vmap(
                lambda *rows: selector(tuple(r.unsqueeze(0) for r in rows) if len(rows) > 1
                                       else rows[0].unsqueeze(0)))(*values)
        if not isinstance(picked, Tensor) or picked.dim() == 0 or picked.shape[0] != n or picked[0].numel() != 1:
            raise v.ArgumentError(
                f"neuron_selector: the callable must return one value per example ([{n}]), got "
                f"{tuple(picked.shape) if isinstance(picked, Tensor) else type(picked).__name__}"
            )
        return picked.reshape(n)
    if len(values) != 1:
        raise v.ArgumentError(
            f"neuron_selector: the layer gives {len(values)} tensors; an index cannot choose among "
            "them, pass a callable of the layer's output"
        )
    index = selector if isinstance(selector, tuple) else (selector,)
    layer_out = values[0]
    if len(index) > layer_out.dim() - 1:
        raise v.ArgumentError(
            f"neuron_selector: {len(index)} indices for a layer output of shape {tuple(layer_out.shape)} "
            f"({layer_out.dim() - 1} dims after the batch)"
        )
    for i, (k, size) in enumerate(zip(index, layer_out.shape[1:])):
        if isinstance(k, int) and not -size <= k < size:
            raise v.ArgumentError(
                f"neuron_selector: index {k} out of range for dim {i + 1} of size {size} of the "
                f"layer output {tuple(layer_out.shape)}"
            )
    picked = layer_out[(slice(None), *index)]
    if any(isinstance(k, slice) for k in index):
        return picked.reshape(n, -1).sum(1)
    if picked[0].numel() != 1:
        raise v.ArgumentError(
            f"neuron_selector: {selector!r} selects {picked[0].numel()} values per example of the layer "
            f"output {tuple(layer_out.shape)}; index every dim, or use slices (summed) or a callable"
        )
    return picked.reshape(n)


class NeuronOutput(nn.Module):
    """The caller's ``model`` cut at ``layer``: ``forward(*args)`` is the
    selected neuron ``[n]`` of ``layer``'s output (or positional inputs with
    ``to_layer_input``) when ``model(*args)`` runs; the rest of the model is
    not evaluated."""

    def __init__(self, model: Callable[..., Any], layer: nn.Module, selector: NeuronSelector,
                 to_layer_input: bool) -> None:
        super().__init__()
        self.model = model  # a submodule when a module: the rules find its layers
        self._layer = [layer]  # not a submodule a second time
        self._selector = selector
        self._to_layer_input = to_layer_input

    def forward(self, *args: Any) -> Tensor:
        _, values = run_to_layer(self.model, self._layer[0], self._to_layer_input, args, stop=True)
        return select_neuron(values, self._selector)


def run_to_layer(model: Callable[..., Any], layer: nn.Module, to_layer_input: bool, args: Tuple[Any, ...],
                 stop: bool) -> Tuple[Any, Tuple[Tensor, ...]]:
    """``(model output, the layer's tensors)`` of ``model(*args)``: the
    layer's output (or positional inputs) as its first call produced them,
    on the graph; with ``stop`` the forward ends there and the output is None."""
    caught: List[Any] = []

    def hook(module: nn.Module, hook_args: Tuple[Any, ...], out: Any = None) -> None:
        caught.append(hook_args if to_layer_input else out)
        if stop:
            raise _LayersCaptured

    handle = (layer.register_forward_pre_hook if to_layer_input else layer.register_forward_hook)(hook)
    out = None
    try:
        out = model(*args)
    except _LayersCaptured:
        pass
    finally:
        handle.remove()
    if not caught:
        raise ValueError("layer: did not run during the model's forward (is it used by model?)")
    values, _ = _split(caught[0], "layer " + ("input" if to_layer_input else "output"))
    return out, values


def neuron_model(model: Callable[..., Any], layer: nn.Module, neuron_selector: Any,
                 attribute_to_neuron_input: bool) -> NeuronOutput:
    """The checked :class:`NeuronOutput` of ``model`` at ``layer``."""
    format_layers(model, layer, allow_list=False)
    return NeuronOutput(model, layer, check_neuron_selector(neuron_selector), attribute_to_neuron_input)


def neuron_gradient(
    model: Callable[..., Any],
    inputs: v.TensorOrTuple,
    layer: nn.Module,
    neuron_selector: NeuronSelector,
    additional_forward_args: Any = None,
    attribute_to_neuron_input: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> v.TensorOrTuple:
    """The gradient of a neuron of ``layer`` w.r.t. the inputs, as Captum's
    ``NeuronGradient.attribute``: shaped like ``inputs``.

    Args:
        neuron_selector: an int, a tuple of ints and slices (a slice sums its
            neurons) indexing the layer's output ``[B, *L]`` after the batch
            dim, or a callable of the layer's output returning ``[B]``.
        attribute_to_neuron_input: select from the layer's positional inputs.
        Others: as :func:`fastattr.saliency`.
    """
    cut = neuron_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return saliency(cut, inputs, None, False, additional_forward_args, memory_budget, chunk_rows)


def neuron_integrated_gradients(
    model: Callable[..., Any],
    inputs: v.TensorOrTuple,
    layer: nn.Module,
    neuron_selector: NeuronSelector,
    baselines: v.BaselineType = None,
    additional_forward_args: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: Optional[int] = None,
    attribute_to_neuron_input: bool = False,
    multiply_by_inputs: bool = True,
    memory_budget: Optional[int] = None,
) -> v.TensorOrTuple:
    """Integrated gradients of a neuron of ``layer``, as Captum's
    ``NeuronIntegratedGradients.attribute`` (arguments as
    :func:`neuron_gradient` and :func:`fastattr.integrated_gradients`;
    ``internal_batch_size`` caps the rows per forward)."""
    cut = neuron_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return integrated_gradients(cut, inputs, baselines, None, additional_forward_args, n_steps, method,
                                multiply_by_inputs=multiply_by_inputs, memory_budget=memory_budget,
                                chunk_rows=internal_batch_size)


def neuron_guided_backprop(model: nn.Module, inputs: v.TensorOrTuple, layer: nn.Module,
                           neuron_selector: NeuronSelector, additional_forward_args: Any = None,
                           attribute_to_neuron_input: bool = False, memory_budget: Optional[int] = None,
                           chunk_rows: Optional[int] = None) -> v.TensorOrTuple:
    """Guided backprop of a neuron of ``layer``, as Captum's ``NeuronGuidedBackprop``."""
    cut = neuron_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return guided_backprop(cut, inputs, None, additional_forward_args, memory_budget, chunk_rows)


def neuron_deconvolution(model: nn.Module, inputs: v.TensorOrTuple, layer: nn.Module,
                         neuron_selector: NeuronSelector, additional_forward_args: Any = None,
                         attribute_to_neuron_input: bool = False, memory_budget: Optional[int] = None,
                         chunk_rows: Optional[int] = None) -> v.TensorOrTuple:
    """Deconvolution of a neuron of ``layer``, as Captum's ``NeuronDeconvolution``."""
    cut = neuron_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return deconvolution(cut, inputs, None, additional_forward_args, memory_budget, chunk_rows)


def neuron_deeplift(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    layer: nn.Module,
    neuron_selector: NeuronSelector,
    baselines: v.BaselineType = None,
    additional_forward_args: Any = None,
    attribute_to_neuron_input: bool = False,
    custom_attribution_func: Optional[CustomAttributionFunc] = None,
    multiply_by_inputs: bool = True,
    eps: float = 1e-10,
    memory_budget: Optional[int] = None,
    *,
    captum_hooks: bool = False,
) -> v.TensorOrTuple:
    """DeepLIFT (rescale) of a neuron of ``layer``, as Captum's ``NeuronDeepLift``
    (``captum_hooks``: as :func:`fastattr.deeplift`)."""
    cut = neuron_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return deeplift(cut, inputs, baselines, None, additional_forward_args,
                    custom_attribution_func=custom_attribution_func, multiply_by_inputs=multiply_by_inputs,
                    eps=eps, memory_budget=memory_budget, captum_hooks=captum_hooks)


def neuron_deeplift_shap(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    layer: nn.Module,
    neuron_selector: NeuronSelector,
    baselines: Any,
    additional_forward_args: Any = None,
    attribute_to_neuron_input: bool = False,
    custom_attribution_func: Optional[CustomAttributionFunc] = None,
    multiply_by_inputs: bool = True,
    eps: float = 1e-10,
    memory_budget: Optional[int] = None,
    *,
    captum_hooks: bool = False,
) -> v.TensorOrTuple:
    """DeepLIFT SHAP of a neuron of ``layer``, as Captum's ``NeuronDeepLiftShap``
    (``baselines``: a distribution ``[M, *F]``, ``M >= 2``; ``captum_hooks``:
    as :func:`fastattr.deeplift`)."""
    cut = neuron_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return deeplift_shap(cut, inputs, baselines, None, additional_forward_args,
                         custom_attribution_func=custom_attribution_func,
                         multiply_by_inputs=multiply_by_inputs, eps=eps, memory_budget=memory_budget,
                         captum_hooks=captum_hooks)


class _ConductanceOutput:
    """``model`` as neuron conductance's engine sees it: for rows ``x`` its
    output is ``m.detach() * y`` (``[n]``), ``y`` the selected neuron and
    ``m`` the selector applied to the target's gradient at the layer
    (Captum's ``mid_grads``), so that the engine's one backward gives
    ``m * dy/dx`` at every path point. A per-example target arrives as the
    last argument, gathered per row by the engine like any batched argument."""

    def __init__(self, model: Callable[..., Any], layer: nn.Module, selector: NeuronSelector,
                 to_layer_input: bool, target: Any, target_is_argument: bool) -> None:
        self.model, self.layer, self.selector = model, layer, selector
        self.to_layer_input = to_layer_input
        self.target, self.target_is_argument = target, target_is_argument

    def __call__(self, *args: Any) -> Tensor:
        target = args[-1] if self.target_is_argument else self.target
        model_args = args[:-1] if self.target_is_argument else args
        out, values = run_to_layer(self.model, self.layer, self.to_layer_input, model_args, stop=False)
        n = values[0].shape[0]
        flat = check_model_output(out, n, target)
        picked = target_outputs(out, flat, torch.arange(n, device=out.device)).to(out.dtype)
        layer_grads = torch.autograd.grad(picked.sum(), values, retain_graph=True, allow_unused=True)
        layer_grads = tuple(torch.zeros_like(t) if g is None else g for g, t in zip(layer_grads, values))
        mid = select_neuron(layer_grads, self.selector)
        return mid.detach() * select_neuron(values, self.selector)


def neuron_conductance(
    model: Callable[..., Any],
    inputs: v.TensorOrTuple,
    layer: nn.Module,
    neuron_selector: NeuronSelector,
    baselines: v.BaselineType = None,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    n_steps: int = 50,
    method: str = "riemann_trapezoid",
    internal_batch_size: Optional[int] = None,
    attribute_to_neuron_input: bool = False,
    multiply_by_inputs: bool = True,
    memory_budget: Optional[int] = None,
) -> v.TensorOrTuple:
    """Conductance of each input feature through a neuron of ``layer``
    (Dhamdhere et al. 2018), as Captum's ``NeuronConductance.attribute``:
    along the path from ``baselines``, the target's gradient at the neuron
    times the neuron's gradient w.r.t. the inputs, integrated with
    ``method``'s step sizes, times ``inputs - baselines``.

    Args:
        neuron_selector, attribute_to_neuron_input: as :func:`neuron_gradient`
            (a slice or callable is applied to the layer's gradient as well).
        target: the model output explained, in any form :func:`fastattr.saliency` takes.
        Others: as :func:`fastattr.integrated_gradients`; ``internal_batch_size``
            caps the rows per forward.

    Returns:
        Attributions shaped like ``inputs``.
    """
    format_layers(model, layer, allow_list=False)
    selector = check_neuron_selector(neuron_selector)
    xs, _ = v.format_inputs(inputs)
    formatted = v.format_target(target, xs[0].shape[0], xs[0].device)
    per_example = isinstance(formatted, Tensor)
    args = v.format_additional_args(additional_forward_args, xs[0].shape[0])
    cut = _ConductanceOutput(model, layer, selector, attribute_to_neuron_input, formatted, per_example)
    v.check_model_device(model, xs[0].device)
    return integrated_gradients(cut, inputs, baselines, None, (*args, formatted) if per_example else args,
                                n_steps, method, multiply_by_inputs=multiply_by_inputs,
                                memory_budget=memory_budget, chunk_rows=internal_batch_size)
