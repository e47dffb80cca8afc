"""Layer-wise relevance propagation (Bach et al. 2015) on the engine.

LRP is one gradient at the input itself (a single-point plan) with the
backward pass rewritten by rules installed on the model's layers for the
length of the call (``Request.rules``). The gradient that flows between
layers *is* the relevance, as in Captum 0.9's ``LRP``:

* a layer with a z-rule returns its original output, but the backward from
  that output goes ``R -> R / d`` (``d`` the stabilized rule output), through
  the rule's branches of the layer (modified parameters, recomputed on the
  branch's input part) and ``-> x_k * grad`` at each branch input;
* relevance passes unchanged through the pass-through layers (ReLU, Dropout,
  Tanh, ...: Captum replaces their gradient by the gradient of their output);
* the model's output scales the seed: the target column's gradient is
  ``f_t(x)`` instead of 1 (Captum multiplies the normalized relevance by
  ``f_t(x)`` at the end; LRP is linear in the seed).

The forward values are the model's own all the way (every layer sees its
original input, as Captum's second forward does through its pre-hooks), so
one forward and one backward per chunk do what Captum does in two forwards.
The caller's parameters are never written: a rule's modified parameters are
swapped into the module's parameter dict for one ``module.forward`` call and
swapped back at once.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .. import _validate as v
from ..engine import run, single_point_plan
from ._call import build_request, shape_output
from .integrated_gradients import delta_dtype
from .lrp_rules import FOLD, Branch, Composite, IdentityRule, PropagationRule, Rule, assign_rules, default_composite
from .relu_rules import ModuleCall, backward_rules, require_module

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# ---------------------------------------------------------------------------
# The backward pieces (each returns a fresh tensor, so in-place ops on a
# layer's output, e.g. nn.ReLU(inplace=True), never touch a custom view)
# ---------------------------------------------------------------------------


class _TimesInput(torch.autograd.Function):
    """Forward: ``part`` (the branch's part of input ``x``); backward: the
    gradient times ``part``, into ``x``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, part: Tensor) -> Tensor:
        ctx.save_for_backward(part)
        return part.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        (part,) = ctx.saved_tensors
        return grad * part, None


class _Relevance(torch.autograd.Function):
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


class _ScaledByOutput(torch.autograd.Function):
    """Forward: the model output ``f``; backward: the gradient times ``f``."""

    @staticmethod
    def forward(ctx: Any, out: Tensor) -> Tensor:
        ctx.save_for_backward(out.detach())
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad * out


def _stabilized(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (Captum's and Zennit's
    stabilizer), in ``z``'s dtype."""
    return torch.where(z >= 0, z + epsilon, z - epsilon)


def _input_part(x: Tensor, part: str) -> Tensor:
    """``x`` (values only) as a branch sees it, with the gradient times that part."""
    values = x.detach()
    if part == "positive":
        values = values.clamp(min=0)
    elif part == "negative":
        values = values.clamp(max=0)
    return _TimesInput.apply(x, values)


def _branch_inputs(args: Tuple[Any, ...], part: str) -> Tuple[Any, ...]:
    return tuple(_input_part(a, part) if isinstance(a, Tensor) and a.is_floating_point() else a
                 for a in args)


def _forward_with(module: nn.Module, params: Mapping[str, Tensor], args: Tuple[Any, ...]) -> Tensor:
    """``module.forward(*args)`` with ``params`` in place of its own (no hooks run)."""
    saved = {name: module._parameters[name] for name in params}
    try:
        module._parameters.update(params)
        return module.forward(*args)
    finally:
        module._parameters.update(saved)


def _rule_output(module: nn.Module, branches: Sequence[Branch], args: Tuple[Any, ...],
                 base: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """``z' = sum_k layer_k(x_k)``, each input's gradient times its part;
    a branch's parameters override ``base`` (default: the module's own)."""
    outs = [_forward_with(module, {**(base or {}), **b.params}, _branch_inputs(args, b.input_part))
            for b in branches]
    return outs[0] if len(outs) == 1 else functools.reduce(torch.add, outs)


def _layer_params(module: nn.Module, where: str) -> Dict[str, Tensor]:
    """The module's ``weight`` / ``bias`` parameters, detached (those it has)."""
    params = {}
    for name in ("weight", "bias"):
        if getattr(module, name, None) is None:
            continue
        if not isinstance(module._parameters.get(name), Tensor):
            raise NotImplementedError(
                f"{where}: its {name} is not a plain parameter (a parametrization or a "
                "property); LRP rules that modify weights need one"
            )
        params[name] = module._parameters[name].detach()
    return params


def _folded_params(layer: nn.Module, bn: nn.Module) -> Dict[str, Tensor]:
    """``weight`` and ``bias`` of ``bn(layer(x))`` as one layer (eval-mode
    statistics; Zennit's ``MergeBatchNorm`` formula)."""
    scale = torch.sqrt(bn.running_var + bn.eps)
    scale = 1 / scale if bn.weight is None else bn.weight.detach() / scale
    bias = (0 if layer.bias is None else layer.bias.detach()) - bn.running_mean
    bias = bias * scale if bn.bias is None else bias * scale + bn.bias.detach()
    w = layer.weight.detach()
    return {"weight": w * scale.reshape(-1, *([1] * (w.dim() - 1))), "bias": bias}


# ---------------------------------------------------------------------------
# Installing the rules for one call
# ---------------------------------------------------------------------------


class _CallState:
    """What the hooks of one call share: the rules' branches per layer,
    the Linear/Conv outputs of the current forward (for folded BatchNorms),
    the folded parameters, and the model outputs when deltas are wanted."""

    def __init__(self, capture_outputs: bool) -> None:
        self.branches: Dict[nn.Module, Optional[Tuple[Branch, ...]]] = {}
        self.pending_inputs: Dict[nn.Module, Tuple[Any, ...]] = {}
        self.producers: Dict[int, Tuple[Tensor, nn.Module, PropagationRule, Tuple[Any, ...]]] = {}
        self.folded: Dict[Tuple[nn.Module, nn.Module], Dict[str, Tensor]] = {}
        self.outputs: Optional[List[Tensor]] = [] if capture_outputs else None


def _hook_rule_layer(module: nn.Module, rule: PropagationRule, state: _CallState,
                     records_output: bool) -> List[RemovableHandle]:
    """Hooks applying z-rule ``rule`` to ``module``. A rule without branches
    (epsilon) reuses the module's own forward, its inputs wrapped by a
    pre-hook; the others recompute the layer per branch."""
    branches = state.branches[module]
    handles = []

    if branches is None:
        def pre_hook(mod: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
            state.pending_inputs[mod] = args
            return _branch_inputs(args, "all")

        handles.append(module.register_forward_pre_hook(pre_hook))

    def forward_hook(mod: nn.Module, args: Tuple[Any, ...], out: Tensor) -> Tensor:
        if branches is None:
            args = state.pending_inputs.pop(mod)
            through = out
        else:
            through = _rule_output(mod, branches, args)
        ret = _Relevance.apply(out.detach(), through, _stabilized(through.detach(), rule.epsilon))
        if records_output:
            state.producers[id(ret)] = (ret, mod, rule, args)
        return ret

    handles.append(module.register_forward_hook(forward_hook))
    return handles


def _hook_folded_batchnorm(bn: nn.Module, where: str, state: _CallState) -> RemovableHandle:
    """Hook merging ``bn`` into the Linear/Conv that produced its input: the
    producer's rule on the merged layer, recomputed on the producer's inputs."""

    def forward_hook(mod: nn.Module, args: Tuple[Any, ...], out: Tensor) -> Tensor:
        record = state.producers.get(id(args[0]))
        if record is None or record[0] is not args[0]:
            raise ValueError(
                f"{where}: a BatchNorm folded by composite.batchnorm='fold' must take the "
                "output of a Linear or Conv layer directly (with an LRP rule)"
            )
        _, layer, rule, layer_args = record
        key = (layer, mod)
        if key not in state.folded:
            state.folded[key] = _folded_params(layer, mod)
        params = state.folded[key]
        branches = rule.branches(params) or (Branch("all", params),)
        through = _rule_output(layer, branches, layer_args, params)
        return _Relevance.apply(out.detach(), through, _stabilized(through.detach(), rule.epsilon))

    return bn.register_forward_hook(forward_hook)


def _relevance_unchanged(call: ModuleCall, grad_input: Tensor) -> Tensor:
    """Pass-through: the module's input gets its output's relevance."""
    return call.grad_output.reshape(grad_input.shape)


def _hook_model_output(model: nn.Module, state: _CallState) -> List[RemovableHandle]:
    """Seed scaling by the output (and its capture for deltas) on the root;
    per-forward state is cleared at each forward's start and end."""

    def pre_hook(mod: nn.Module, args: Tuple[Any, ...]) -> None:
        state.producers.clear()

    def forward_hook(mod: nn.Module, args: Tuple[Any, ...], out: Any) -> Any:
        state.producers.clear()
        if not isinstance(out, Tensor):  # the engine reports it
            return None
        if state.outputs is not None:
            state.outputs.append(out.detach())
        return _ScaledByOutput.apply(out)

    return [model.register_forward_pre_hook(pre_hook), model.register_forward_hook(forward_hook)]


@contextlib.contextmanager
def installed_rules(model: nn.Module, layers: Sequence[Tuple[str, nn.Module, Rule]],
                    state: _CallState) -> Iterator[None]:
    """Install ``layers``' rules and the output scaling on ``model`` while
    the context is open; every hook is removed on exit, also on a raise."""
    handles: List[RemovableHandle] = []
    folding = any(rule is FOLD for _, _, rule in layers)
    passthrough = [(m, _relevance_unchanged) for _, m, rule in layers if isinstance(rule, IdentityRule)]
    try:
        with backward_rules(passthrough):
            handles.extend(_hook_model_output(model, state))
            for name, module, rule in layers:
                if isinstance(rule, PropagationRule):
                    records = folding and isinstance(module, _FOLDABLE)
                    handles.extend(_hook_rule_layer(module, rule, state, records))
                elif rule is FOLD:
                    handles.append(_hook_folded_batchnorm(module, f"model.{name}", state))
            yield
    finally:
        for handle in handles:
            handle.remove()
        state.pending_inputs.clear()
        state.producers.clear()


def _checked_layers(model: nn.Module, composite: Composite, state: _CallState) -> List[Tuple[str, nn.Module, Rule]]:
    """Every leaf layer's rule, checked (before any compute); fills
    ``state.branches``."""
    layers = assign_rules(model, composite)
    for name, module, rule in layers:
        where = f"model.{name}"
        if isinstance(rule, PropagationRule):
            state.branches[module] = rule.branches(_layer_params(module, where))
        elif rule is FOLD and (module.training or module.running_mean is None):
            raise ValueError(
                f"{where}: composite.batchnorm='fold' needs the BatchNorm in eval mode with "
                "running statistics (it folds them into the preceding layer)"
            )
        elif not isinstance(rule, IdentityRule) and rule is not FOLD:
            raise TypeError(f"{where}: unknown LRP rule {rule!r}")
    return layers


def _target_outputs(outputs: Tensor, target: Union[None, int, Tensor]) -> Tensor:
    """``[B]``: each example's target output from the model outputs ``[B, C]`` or ``[B]``."""
    if target is None:
        return outputs.reshape(outputs.shape[0])
    if isinstance(target, int):
        return outputs[:, target]
    return outputs.gather(1, target.remainder(outputs.shape[1]).unsqueeze(1)).squeeze(1)


def lrp(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    composite: Optional[Composite] = None,
    return_convergence_delta: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
    """Layer-wise relevance propagation of ``model(inputs)[:, target]``, as
    Captum's ``LRP.attribute``: relevances that sum (up to the rules'
    stabilizers) to the target output ``f_t(x)``.

    Args:
        model: an ``nn.Module`` returning ``[B, C]`` (or ``[B]``); its leaf
            modules get rules: their own ``module.rule`` (fastattr's rules from
            :mod:`fastattr.attr.lrp_rules` or Captum's), else ``composite``'s.
        inputs, target, additional_forward_args, memory_budget, chunk_rows:
            as :func:`fastattr.saliency` (inputs ``[B, *F]`` or a tuple).
        composite: rules per layer type (default:
            :func:`~fastattr.attr.lrp_rules.default_composite`, Captum's defaults).
        return_convergence_delta: also return ``[B]``
            ``f_t(x) - sum(relevances)`` (Captum's delta).

    Returns:
        Relevances shaped and typed like ``inputs``; with
        ``return_convergence_delta`` a pair ``(relevances, delta [B])``.
    """
    require_module(model, "LRP")
    if composite is None:
        composite = default_composite()
    elif not isinstance(composite, Composite):
        raise TypeError(f"composite: expected a fastattr.attr.lrp_rules.Composite, got {type(composite).__name__}")
    state = _CallState(capture_outputs=bool(return_convergence_delta))
    layers = _checked_layers(model, composite, state)
    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args,
        lambda xs: single_point_plan("grad"),
        memory_budget, chunk_rows,
        rules=functools.partial(installed_rules, model, layers, state),
    )
    relevances = shape_output(run(req).mean, req.inputs, was_tuple)
    if not return_convergence_delta:
        return relevances
    f_t = _target_outputs(torch.cat(state.outputs), req.target)
    total = sum(r.reshape(r.shape[0], -1).sum(1, dtype=torch.float64)
                for r in (relevances if was_tuple else (relevances,)))
    return relevances, (f_t.to(torch.float64) - total).to(delta_dtype(req.inputs[0]))
