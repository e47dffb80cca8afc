"""Backward rules installed on a model's modules for the length of one call.

Guided backpropagation, deconvnet and DeepLIFT replace the gradient that
flows back through some modules (nn.ReLU, other nonlinearities) by a rule.
They do it the way Captum 0.9 does (``captum._utils.common._register_backward_hook``),
so that they give Captum's numbers: the module's input gets a tensor hook
that, once the gradient of that input is complete, replaces it by
``rule(call, grad_input)``, where ``call`` holds the gradient of the module's
output (caught by a tensor hook on the output) and, for rules that need
them, copies of the call's input and output. The module works on a clone of
its input, so in-place modules (``nn.ReLU(inplace=True)``) are handled.

Unlike Captum, every module call keeps its own state (Captum keeps one
output gradient per module and device), so a module called several times
in one forward gets each call's own values.

:func:`backward_rules` is the context manager the engine enters around all
gradient chunks (``Request.rules``): every hook it registers is removed on
exit, also when the model raises.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


@dataclass
class ModuleCall:
    """One call of a hooked module, as its backward rule sees it."""

    module: nn.Module
    input: Optional[Tensor] = None  # detached copy of the input, when the rule needs values
    output: Optional[Tensor] = None  # detached copy of the output, likewise
    grad_output: Optional[Tensor] = None  # gradient of the output, once the backward reaches it


# rule(call, grad_input) -> the gradient the module's input gets instead of grad_input
BackwardRule = Callable[[ModuleCall, Tensor], Tensor]


def require_module(model: Any, method: str) -> None:
    """``model`` must be an ``nn.Module``: ``method``'s rules go on its submodules."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model: expected an nn.Module ({method} installs backward rules on its "
            f"submodules), got {type(model).__name__}"
        )


def _single_tensor(value: Any, module: nn.Module, what: str) -> Tensor:
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    if not isinstance(value, Tensor):
        raise TypeError(
            f"model: {type(module).__name__} module must take and return one tensor for its "
            f"backward rule, got {what} of type {type(value).__name__}"
        )
    return value


def _hook(module: nn.Module, rule: BackwardRule, keep_values: bool) -> List[RemovableHandle]:
    """Register ``rule`` on ``module``; returns the handles to remove."""
    calls: List[Optional[ModuleCall]] = []  # open calls; forwards of one module nest LIFO

    def pre_hook(mod: nn.Module, args: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
        inp = _single_tensor(args[0] if args else None, mod, "input")
        if not inp.requires_grad:  # a branch the explained inputs do not reach
            calls.append(None)
            return None
        call = ModuleCall(mod, inp.detach().clone() if keep_values else None)

        def on_input_grad(grad_input: Tensor) -> Optional[Tensor]:
            if call.grad_output is None:  # the output is not on the gradient path
                return None
            return rule(call, grad_input)

        inp.register_hook(on_input_grad)
        calls.append(call)
        return (inp.clone(), *args[1:])

    def forward_hook(mod: nn.Module, args: Tuple[Any, ...], out: Any) -> None:
        call = calls.pop()
        if call is None:
            return
        out = _single_tensor(out, mod, "output")
        if keep_values:
            call.output = out.detach().clone()

        def on_output_grad(grad_output: Tensor) -> None:
            call.grad_output = grad_output

        if out.requires_grad:
            out.register_hook(on_output_grad)

    return [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(forward_hook)]


@contextlib.contextmanager
def backward_rules(
    rules: Sequence[Tuple[nn.Module, BackwardRule]], keep_values: bool = False
) -> Iterator[None]:
    """Install ``rule`` on each ``(module, rule)`` while the context is open.

    ``keep_values``: give the rules copies of each call's input and output
    (DeepLIFT needs them; guided backprop does not).
    """
    handles: List[RemovableHandle] = []
    try:
        for module, rule in rules:
            handles.extend(_hook(module, rule, keep_values))
        yield
    finally:
        for handle in handles:
            handle.remove()


def guided_rule(call: ModuleCall, grad_input: Tensor) -> Tensor:
    """Guided backprop through a ReLU: ``relu(grad * (x > 0))``, i.e. only
    positive gradients pass where the ReLU was active."""
    return F.relu(grad_input)


def deconv_rule(call: ModuleCall, grad_input: Tensor) -> Tensor:
    """Deconvnet through a ReLU: ``relu(grad of the output)``, whatever the ReLU's input."""
    return F.relu(call.grad_output)


def relu_rules(model: nn.Module, rule: BackwardRule) -> Callable[[], ContextManager[None]]:
    """A ``Request.rules`` factory: ``rule`` on every ``nn.ReLU`` module of
    ``model`` (subclasses included, as Captum; a functional ``torch.relu``
    keeps its ordinary gradient)."""
    hooked = [(m, rule) for m in model.modules() if isinstance(m, nn.ReLU)]
    return functools.partial(backward_rules, hooked)
