"""Backward rules installed on a model's modules for the length of one call.

Guided backprop, deconvnet, DeepLIFT and LRP's pass-through layers replace
the gradient that flows back through some modules (nn.ReLU, other
nonlinearities) by a rule. They do it the way Captum 0.9 does
(``captum._utils.common._register_backward_hook``), so that they give
Captum's numbers: the module's input gets a tensor hook that, once the
gradient of that input is complete, replaces it by
``rule.replace(call, grad_input)``, where ``call`` holds the gradient of the
module's output (caught by a tensor hook on the output) and whatever
``rule.record`` kept from the call's input and output at the forward.

The module's ``forward`` is wrapped for the call (an instance attribute, see
:func:`replaced_forwards`) rather than given forward hooks: a module with
hooks leaves PyTorch's fast call path, and two hook calls cost more than one
wrapper. Captum also gives the module a clone of its input; that only
matters for a module that writes into its input (``inplace=True``, or a
forward defined outside torch), and only those get one. A module whose
output *is* its input (nn.Identity, nn.Dropout in eval mode) returns a view
instead, so that the output hook and the input hook sit on different
tensors, as Captum's clone makes them.

Unlike Captum, every module call keeps its own state (Captum keeps one
output gradient per module and device), so a module called several times
in one forward gets each call's own values.

:func:`backward_rules` is the context manager the engine enters around all
gradient chunks (``Request.rules``): every forward is restored on exit, also
when the model raises.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, ContextManager, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Forward = Callable[..., Any]
# make(module, forward) -> the forward the module runs while the rules are installed
ForwardWrapper = Callable[[nn.Module, Forward], Forward]


class ModuleCall:
    """One call of a hooked module, as its backward rule sees it."""

    __slots__ = ("module", "rule", "values", "grad_output")

    def __init__(self, module: nn.Module, rule: "BackwardRule", values: Any) -> None:
        self.module = module
        self.rule = rule
        self.values = values  # what rule.record kept at the forward
        self.grad_output: Optional[Tensor] = None  # set once the backward reaches the output

    def on_output_grad(self, grad_output: Tensor) -> None:
        self.grad_output = grad_output

    def on_input_grad(self, grad_input: Tensor) -> Optional[Tensor]:
        if self.grad_output is None:  # the output is not on the gradient path
            return None
        return self.rule.replace(self, grad_input)


class BackwardRule:
    """How a module's input gradient is replaced; subclasses implement
    :meth:`replace` and, for rules that need the call's values,
    :meth:`prepare` / :meth:`record`.

    A call whose rule does not need ``grad_input`` (:meth:`needs_grad_input`)
    runs its module without an autograd graph of its own, if its input has
    at least ``_SKIP_MIN_NUMEL`` elements: the backward then skips the
    module's ordinary gradient (a ReLU's masking pass), which the rule would
    replace anyway. It still runs when another rule's output hook sits on the
    module's input and so sees that ordinary gradient (Captum's hook order,
    see :func:`_watch`).
    """

    def replace(self, call: ModuleCall, grad_input: Tensor) -> Tensor:
        """The gradient the module's input gets instead of ``grad_input``."""
        raise NotImplementedError

    def prepare(self, module: nn.Module, inp: Tensor) -> Any:
        """What the rule needs from the call's input alone, before the module
        runs; handed to :meth:`needs_grad_input` and :meth:`record`."""
        return None

    def needs_grad_input(self, prepared: Any) -> bool:
        """Whether :meth:`replace` reads ``grad_input`` for this call."""
        return True

    def record(self, module: nn.Module, inp: Tensor, out: Tensor, prepared: Any) -> Any:
        """``call.values``, from the call's input and output at the forward.
        Computing what the rule needs here, rather than keeping the tensors,
        also keeps it safe from later in-place writes to them."""
        return None


def require_module(model: Any, method: str) -> None:
    """``model`` must be an ``nn.Module``: ``method``'s rules go on its submodules."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model: expected an nn.Module ({method} installs backward rules on its "
            f"submodules), got {type(model).__name__}"
        )


_MISSING = object()


@contextlib.contextmanager
def replaced_forwards(wrappers: Sequence[Tuple[nn.Module, ForwardWrapper]]) -> Iterator[None]:
    """Each module runs ``make(module, its forward)`` instead of its forward
    while the context is open. The wrapper is an instance attribute, so the
    module keeps PyTorch's call path (and its own hooks, which run around
    it); the instance's previous attributes are restored on exit."""
    saved: List[Tuple[nn.Module, Any]] = []
    try:
        for module, make in wrappers:
            attrs = module.__dict__
            saved.append((module, attrs.get("forward", _MISSING)))
            attrs["forward"] = make(module, module.forward)
        yield
    finally:
        for module, own in reversed(saved):
            if own is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = own


def _single_tensor(value: Any, module: nn.Module, what: str) -> Tensor:
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    if not isinstance(value, Tensor):
        raise TypeError(
            f"model: {type(module).__name__} module must take and return one tensor for its "
            f"backward rule, got {what} of type {type(value).__name__}"
        )
    return value


# Set on each hooked call's output: the output hook there runs before the
# input hook of a hooked module that takes this tensor, and sees that
# module's ordinary gradient.
_WATCHED_OUTPUT = "_fastattr_watched_output"


# Inputs smaller than this keep the module's ordinary backward even when the
# rule replaces it: _GradientReplaced costs ~10-13 us of Python per call (a
# ReLU, MLP at batch 1: 2 calls, +21-26 us), about what a ReLU's masking
# pass costs on ~25k float32 elements here (~0.47 ns each).
_SKIP_MIN_NUMEL = 1 << 15


def _watch(module: nn.Module, rule: BackwardRule, inp: Tensor, out: Any, prepared: Any) -> Any:
    """Hook one call's input and output; returns the call's output (a view
    of it when it is the input itself)."""
    out_tensor = _single_tensor(out, module, "output")
    if out_tensor is inp:
        out_tensor = out_tensor.view_as(out_tensor)
        out = out_tensor if isinstance(out, Tensor) else (out_tensor,)
    call = ModuleCall(module, rule, rule.record(module, inp, out_tensor, prepared))
    inp.register_hook(call.on_input_grad)
    if out_tensor.requires_grad:
        out_tensor.register_hook(call.on_output_grad)
        setattr(out_tensor, _WATCHED_OUTPUT, True)
    return out


class _GradientReplaced(torch.autograd.Function):
    """Forward: ``forward(x)`` without a graph; backward: a stand-in for the
    gradient of ``x`` (the gradient itself reshaped, or zeros). The rule's
    hook on the module's input replaces whatever reaches it (the stand-in,
    plus any other use's gradient), so only the stand-in's shape matters,
    and the module's ordinary backward (a ReLU's masking pass) never runs."""

    @staticmethod
    def forward(ctx: Any, forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        ctx.x_shape = x.shape
        out = forward(x)
        # An output sharing x's memory (an identity layer) would make autograd
        # treat it as a view of the input: give a copy instead.
        return out.clone() if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() else out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[None, Tensor]:
        shape = ctx.x_shape
        if grad.numel() == shape.numel():
            return None, grad.reshape(shape)
        return None, grad.new_zeros(()).expand(shape)


def writes_input(module: nn.Module) -> bool:
    """Whether ``module`` may write into its input: torch's own modules do
    only with ``inplace=True``; a forward defined elsewhere might."""
    return bool(getattr(module, "inplace", False)) or not type(module).__module__.startswith("torch.nn.")


def watched(rule: BackwardRule) -> ForwardWrapper:
    """The forward wrapper applying ``rule`` to each call of a module."""

    def make(module: nn.Module, inner: Forward) -> Forward:
        on_copy = writes_input(module)

        def forward(*args: Any, **kwargs: Any) -> Any:
            inp = _single_tensor(args[0] if args else None, module, "input")
            if not inp.requires_grad:  # a branch the explained inputs do not reach
                return inner(*args, **kwargs)
            prepared = rule.prepare(module, inp)
            if on_copy:  # the hooks stay on the untouched original
                args = (inp.clone(), *args[1:])
            if (inp.numel() < _SKIP_MIN_NUMEL or rule.needs_grad_input(prepared)
                    or not isinstance(args[0], Tensor) or getattr(inp, _WATCHED_OUTPUT, False)):
                return _watch(module, rule, inp, inner(*args, **kwargs), prepared)
            rest, as_tuple = args[1:], []

            def run(x: Tensor) -> Tensor:
                value = inner(x, *rest, **kwargs)
                as_tuple.append(isinstance(value, tuple))
                return _single_tensor(value, module, "output")

            out = _GradientReplaced.apply(run, args[0])
            return _watch(module, rule, inp, (out,) if as_tuple[0] else out, prepared)

        return forward

    return make


def backward_rules(rules: Sequence[Tuple[nn.Module, BackwardRule]]) -> ContextManager[None]:
    """Install ``rule`` on each ``(module, rule)`` while the context is open."""
    return replaced_forwards([(module, watched(rule)) for module, rule in rules])


class _Guided(BackwardRule):
    """Guided backprop through a ReLU: ``relu(grad * (x > 0))``, i.e. only
    positive gradients pass where the ReLU was active."""

    def replace(self, call: ModuleCall, grad_input: Tensor) -> Tensor:
        return F.relu(grad_input)


class _Deconv(BackwardRule):
    """Deconvnet through a ReLU: ``relu(grad of the output)``, whatever the ReLU's input."""

    def needs_grad_input(self, prepared: Any) -> bool:
        return False

    def replace(self, call: ModuleCall, grad_input: Tensor) -> Tensor:
        return F.relu(call.grad_output)


guided_rule = _Guided()
deconv_rule = _Deconv()


def submodules(model: nn.Module) -> List[nn.Module]:
    """The modules of ``model.modules()`` (breadth-first), walked over
    ``_modules`` directly: the generator's per-module name and memo work is
    most of the walk, which the rules do on every call."""
    out, seen = [model], {id(model)}
    for module in out:  # grows while walked
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                out.append(child)
    return out


def relu_rules(model: nn.Module, rule: BackwardRule) -> Callable[[], ContextManager[None]]:
    """A ``Request.rules`` factory: ``rule`` on every ``nn.ReLU`` module of
    ``model`` (subclasses included, as Captum; a functional ``torch.relu``
    keeps its ordinary gradient)."""
    hooked = [(m, rule) for m in submodules(model) if isinstance(m, nn.ReLU)]
    return functools.partial(backward_rules, hooked)
