"""Running a model with one of its layers observed or replaced.

Layer methods explain a layer's output (or input) instead of the model's
inputs. They need two things, both done with hooks that are removed again
when the call ends, also when the model raises:

* :func:`capture_layers`: one plain forward (up to the layers, unless the
  model's output is needed too) that records what the chosen layers
  produced (the activations to explain);
* :class:`LayerSubstitution`: the model as the engine sees it, a callable
  whose first arguments are rows that replace the layers' outputs (or
  inputs), followed by the model's own inputs and extra arguments, which the
  engine index-selects per row like any per-example argument. What runs
  before the layers runs without autograd: the gradient is taken at the
  rows, so only the part of the model after them needs a graph.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import _validate as v
from ..engine.loop import row_examples
from ..engine.outputs import FlatTarget, target_outputs

LayerType = Union[nn.Module, Sequence[nn.Module]]

# Dtypes a layer method accepts as model inputs: floats, and integers for
# token ids (the gradient is taken at the layer, never at the inputs).


def format_layers(model: Callable[..., Tensor], layer: Any, allow_list: bool) -> Tuple[List[nn.Module], bool]:
    """``(layers, was_list)``: ``layer`` (an ``nn.Module`` of ``model``, or a
    non-empty list of them when ``allow_list``) as a list."""
    expected = "an nn.Module inside model" + (" or a list of them" if allow_list else "")
    was_list = isinstance(layer, list)
    if was_list and not allow_list:
        raise TypeError(f"layer: expected {expected}, got a list")
    layers = list(layer) if was_list else [layer]
    if not layers:
        raise ValueError(f"layer: expected {expected}, got an empty list")
    for i, m in enumerate(layers):
        name = f"layer[{i}]" if was_list else "layer"
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name}: expected {expected}, got {type(m).__name__}")
        # A plain-function model cannot be searched; capture_layers then
        # reports a layer that never ran.
        if isinstance(model, nn.Module) and not any(m is s for s in model.modules()):
            raise ValueError(f"{name}: this {type(m).__name__} is not a submodule of model")
    if len({id(m) for m in layers}) != len(layers):
        raise ValueError("layer: the same module is listed more than once")
    return layers, was_list


def format_model_inputs(inputs: Any) -> Tuple[Tuple[Tensor, ...], bool]:
    """``(tuple_of_tensors, was_tuple)``: the model's inputs ``[B, *F_i]``,
    checked as :func:`fastattr._validate.format_inputs` with integer tensors
    (token ids) accepted too. Returned detached."""
    xs, was_tuple = v.format_inputs(inputs, allow_integer=True)
    return tuple(t.clone() if t.is_inference() else t.detach() for t in xs), was_tuple


def selected_outputs(out: Tensor, target: FlatTarget, batch: int) -> Tensor:
    """float64 ``[B]``: each example's target output, ``out`` ``[B or 1, *O]``
    and ``target`` the flat target :func:`fastattr.engine.outputs.check_model_output`
    returned for it."""
    out = out.expand(batch, *out.shape[1:])
    return target_outputs(out, target, row_examples(0, batch, 1, out.device))


@dataclass
class LayerValues:
    """What the chosen layers produced in one forward."""

    values: List[Tuple[Tensor, ...]]  # per layer: its tensors, each [B, *L]
    containers: List[Optional[type]]  # per layer: tuple/list if it gave several, None for one tensor
    output: Any  # the model's output (None from a capture that stopped at the layers)

    @property
    def flat(self) -> Tuple[Tensor, ...]:
        """Every layer's tensors, layer after layer."""
        return tuple(t for vals in self.values for t in vals)


def _split(produced: Any, container_name: str) -> Tuple[Tuple[Tensor, ...], Optional[type]]:
    """A layer's output (or input tuple) as its tensors and their container."""
    if isinstance(produced, Tensor):
        return (produced,), None
    if isinstance(produced, (tuple, list)) and produced and all(isinstance(t, Tensor) for t in produced):
        return tuple(produced), type(produced)
    got = type(produced).__name__
    if isinstance(produced, (tuple, list)):
        got += " of (" + ", ".join(type(t).__name__ for t in produced) + ")"
    raise TypeError(f"{container_name}: expected a tensor or a tuple of tensors, got {got}")


@contextlib.contextmanager
def _hooks(layers: Sequence[nn.Module], to_layer_input: bool, make_hook: Callable[[int], Callable]) -> Iterator[None]:
    """Forward hooks (pre-hooks for layer inputs) ``make_hook(i)`` on every
    layer ``i``, removed on exit, also when the body raises."""
    handles = []
    try:
        for i, layer in enumerate(layers):
            register = layer.register_forward_pre_hook if to_layer_input else layer.register_forward_hook
            handles.append(register(make_hook(i)))
        yield
    finally:
        for h in handles:
            h.remove()


def _copied(produced: Any) -> Any:
    """A copy of a layer's tensor(s); anything else as it is (rejected later)."""
    if isinstance(produced, Tensor):
        return produced.clone()
    if isinstance(produced, (tuple, list)):
        return type(produced)(t.clone() if isinstance(t, Tensor) else t for t in produced)
    return produced


def _check_ran_once(calls: List[int], names: List[str]) -> None:
    for n, name in zip(calls, names):
        if n == 0:
            raise ValueError(f"{name}: did not run during the model's forward (is it used by model?)")
        if n > 1:
            raise ValueError(
                f"{name}: ran {n} times in one forward; layer attribution needs a module that runs once"
            )


def _check_floating(tensors: Tuple[Tensor, ...], name: str, what: str, to_layer_input: bool) -> None:
    for t in tensors:
        if not t.is_floating_point():
            hint = " (attribute_to_layer_input=True on an embedding sees token ids)" if to_layer_input else ""
            raise TypeError(f"{name} {what}: expected floating tensors to take gradients at, got {t.dtype}{hint}")


def layer_names(layers: Sequence[nn.Module], was_list: bool) -> List[str]:
    """How error messages name each layer: ``layer`` or ``layer[i]``."""
    return [f"layer[{i}]" if was_list else "layer" for i in range(len(layers))]


class _LayersCaptured(BaseException):
    """Ends a capture forward once every layer has been seen. A BaseException,
    so that a model's own ``except Exception`` does not swallow it."""


def capture_layers(
    model: Callable[..., Any],
    layers: Sequence[nn.Module],
    names: List[str],
    to_layer_input: bool,
    model_args: Tuple[Any, ...],
    need_output: bool = True,
) -> LayerValues:
    """Run ``model(*model_args)`` without autograd and return what each layer
    produced (its output, or its positional inputs when ``to_layer_input``).

    The values are copies: an in-place op after the layer must not change them.
    Each layer must run (at least once here; exactly once is checked by the
    pass that substitutes it) and produce floating tensors. Without
    ``need_output`` the forward stops as soon as every layer has run (the
    rest of the model is not evaluated) and ``output`` is None.
    """
    produced: List[Any] = [None] * len(layers)
    calls = [0] * len(layers)

    def make_hook(i: int) -> Callable:
        def hook(module: nn.Module, args: Tuple[Any, ...], out: Any = None) -> None:
            calls[i] += 1
            produced[i] = _copied(args if to_layer_input else out)
            if not need_output and all(calls):
                raise _LayersCaptured
        return hook

    output = None
    try:
        with torch.no_grad(), _hooks(layers, to_layer_input, make_hook):
            output = model(*model_args)
    except _LayersCaptured:
        pass
    _check_ran_once(calls, names)
    values, containers = [], []
    what = "input" if to_layer_input else "output"
    for name, p in zip(names, produced):
        tensors, container = _split(p, f"{name} {what}")
        _check_floating(tensors, name, what, to_layer_input)
        values.append(tensors)
        containers.append(container)
    return LayerValues(values, containers, output)


def layers_activation_key(model: Callable[..., Any], layers: Sequence[nn.Module], to_layer_input: bool,
                          kind: str) -> Tuple[object, Hashable]:
    """The engine's ``Request.activation_key`` of a per-call wrapper of
    ``model`` around ``layers``: sizes measured once per model and layer choice."""
    return model, (kind, tuple(id(layer) for layer in layers), to_layer_input)


class _LayerHooked:
    """What :class:`LayerSubstitution` and :class:`LayerLeaves` share: the
    model run without autograd until the first hooked layer (whose hook
    restores the caller's grad mode), each layer checked to run once, and the
    hooks installed only inside :meth:`installed`.

    A plain callable, made per explainer call, not an ``nn.Module``: a
    module's constructor alone costs ~28 us, a tenth of a small model's
    whole Grad-CAM call. The engine checks the device of, and measures
    activations against, the caller's model (``Request.activation_key``)."""

    def __init__(self, model: Callable[..., Any], layers: Sequence[nn.Module], names: List[str],
                 to_layer_input: bool) -> None:
        self.model = model
        self._layers = list(layers)  # a plain list: not registered twice as submodules
        self._names = names
        self._to_layer_input = to_layer_input
        self._calls = [0] * len(layers)
        self._grad_mode = True
        self._passive = False  # while capture() runs: the hooks leave the layers alone

    def _hook(self, i: int, produced: Any) -> Any:
        """What layer ``i``'s hook returns, given what the layer produced (its
        output, or its positional inputs)."""
        raise NotImplementedError

    def _enter_layer(self, i: int) -> None:
        self._calls[i] += 1
        torch.set_grad_enabled(self._grad_mode)  # the graph starts here

    def _pass_on(self, tensors: Tuple[Tensor, ...], container: Optional[type]) -> Any:
        """``tensors`` in the form the hook returns them in place of the layer's own."""
        if self._to_layer_input:
            return tensors  # a pre-hook's tuple replaces the positional inputs
        return tensors[0] if container is None else container(tensors)

    def _run(self, model_args: Tuple[Any, ...]) -> Any:
        """``model(*model_args)``; what precedes the layers needs no graph (the
        gradient is taken at or after them), so it runs without autograd,
        saving time and memory, until a hook restores the caller's mode."""
        self._calls = [0] * len(self._layers)
        self._grad_mode = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            out = self.model(*model_args)
        finally:
            torch.set_grad_enabled(self._grad_mode)
        _check_ran_once(self._calls, self._names)
        return out

    @contextlib.contextmanager
    def installed(self) -> Iterator["_LayerHooked"]:
        """Hooks on the layers for the duration of the block (removed on exit,
        also when the model raises)."""

        def make_hook(i: int) -> Callable:
            def hook(module: nn.Module, args: Tuple[Any, ...], out: Any = None) -> Any:
                if self._passive:
                    return None
                return self._hook(i, args if self._to_layer_input else out)
            return hook

        with _hooks(self._layers, self._to_layer_input, make_hook):
            yield self

    def capture(self, model_args: Tuple[Any, ...]) -> LayerValues:
        """What the layers produce for ``model(*model_args)``, as
        :func:`capture_layers` (no autograd, the forward stopped once every
        layer ran), with this object's own hooks, if installed, standing by."""
        self._passive = True
        try:
            return capture_layers(self.model, self._layers, self._names, self._to_layer_input, model_args,
                                  need_output=False)
        finally:
            self._passive = False


class LayerSubstitution(_LayerHooked):
    """``model`` with the chosen layers' outputs (or inputs) replaced.

    Called as ``substitution(*rows, *model_args)``: ``rows`` are the layers'
    replacement tensors, layer after layer (each ``[n, *L]``), and
    ``model_args`` the model's inputs and extra arguments for the same ``n``
    rows. The hooks that do the replacing are active only inside
    :meth:`installed`. The model runs without autograd until the first
    replacement (so a model that runs the layer inside its own
    ``torch.no_grad()`` block cannot be explained).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        layers: Sequence[nn.Module],
        names: List[str],
        like: LayerValues,
        to_layer_input: bool,
    ) -> None:
        super().__init__(model, layers, names, to_layer_input)
        self._containers = like.containers
        counts = [len(vals) for vals in like.values]
        self._offsets = [sum(counts[:i]) for i in range(len(counts) + 1)]
        self._rows: Optional[Tuple[Tensor, ...]] = None

    def _hook(self, i: int, produced: Any) -> Any:
        self._enter_layer(i)
        # A copy, so that an in-place op after the layer (ReLU(inplace=True))
        # writes into it rather than into the engine's leaf rows.
        rows = tuple(r.clone() for r in self._rows[self._offsets[i] : self._offsets[i + 1]])
        return self._pass_on(rows, self._containers[i])

    def __call__(self, *args: Any) -> Any:
        k = self._offsets[-1]
        self._rows = args[:k]
        # With one example the engine expands per-example arguments to the
        # chunk's rows (stride 0); the model's own inputs must take any view.
        model_args = tuple(a.contiguous() if isinstance(a, Tensor) else a for a in args[k:])
        try:
            return self._run(model_args)
        finally:
            self._rows = None


class LayerLeaves(_LayerHooked):
    """``model`` with the gradient taken at the chosen layers' outputs (or
    inputs): the engine's model in a :class:`~fastattr.engine.Request` whose
    ``leaves`` is :meth:`leaves`.

    In each forward the hooks turn what the layers produce into the tensors
    the engine differentiates at (what :meth:`leaves` returns: autograd
    leaves, except where a chosen layer runs after another one and its
    values are already on the graph) and pass copies on, so that the rest of
    the model builds its graph from them; what runs before the layers runs
    without autograd. One forward gives both the activations
    (:attr:`values`, per forward) and, through the engine's backward, the
    gradient at them: no separate capture pass. Hooks are active only inside
    :meth:`installed`.
    """

    def __init__(self, model: Callable[..., Any], layers: Sequence[nn.Module], names: List[str],
                 to_layer_input: bool, check: Callable[[LayerValues], None] = lambda values: None,
                 keep_all: bool = True) -> None:
        super().__init__(model, layers, names, to_layer_input)
        self._check = check  # called on the first forward's layer values, before any backward
        self._keep_all = keep_all
        self._produced: List[Any] = [None] * len(layers)
        self._leaves: List[Tensor] = []
        # Per forward, the layers' values as leaves saw them (only the last
        # forward's without keep_all: a method that uses each chunk's values
        # once need not hold every chunk's).
        self.values: List[LayerValues] = []

    def _hook(self, i: int, produced: Any) -> Any:
        self._enter_layer(i)
        what = "input" if self._to_layer_input else "output"
        tensors, container = _split(produced, f"{self._names[i]} {what}")
        _check_floating(tensors, self._names[i], what, self._to_layer_input)
        # A layer's inputs are the model's tensors, which it may still
        # change in place after the layer: the leaves copy them. A tensor
        # already on the graph (a layer after another chosen one) is
        # differentiated at as it is, so that the earlier layer's gradient
        # still flows through it, as in Captum.
        leaves = tuple(t if t.requires_grad else
                       (t.detach().clone() if self._to_layer_input else t.detach()).requires_grad_()
                       for t in tensors)
        self._produced[i] = (leaves, container)
        # Copies go on: an in-place op after the layer (ReLU(inplace=True))
        # must not write into a leaf.
        return self._pass_on(tuple(leaf.clone() for leaf in leaves), container)

    def __call__(self, *args: Any) -> Any:
        self._produced = [None] * len(self._layers)
        out = self._run(args)
        values = LayerValues(
            [tuple(leaf.detach() for leaf in leaves) for leaves, _ in self._produced],
            [container for _, container in self._produced],
            out,
        )
        if not self.values:
            self._check(values)
        if not self._keep_all:
            self.values.clear()
        self.values.append(values)
        self._leaves = [t for leaves, _ in self._produced for t in leaves]
        return out

    def leaves(self) -> Tuple[Tensor, ...]:
        """The leaves of the last forward, layer after layer."""
        return tuple(self._leaves)

    def gathered(self) -> LayerValues:
        """Every forward's layer values joined along the batch dim, with the
        first forward's containers and output."""
        first = self.values[0]
        joined = [
            tuple(torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*per_forward))
            for per_forward in zip(*(v.values for v in self.values))
        ]
        return LayerValues(joined, first.containers, first.output)


def per_layer(flat: Tuple[Tensor, ...], like: LayerValues, was_list: bool) -> Any:
    """Split per-tensor results back by layer, as Captum returns them: per
    layer a tensor (one tensor) or a tuple; a list of those when ``layer``
    was a list."""
    out, i = [], 0
    for vals in like.values:
        part = flat[i : i + len(vals)]
        i += len(vals)
        out.append(part[0] if len(part) == 1 else tuple(part))
    return out if was_list else out[0]
