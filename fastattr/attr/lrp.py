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
  Tanh, ...: Captum replaces their gradient by the gradient of their output):
  with the function rules, by one autograd node per call (exactly, also
  for two such layers in a row); without them (the Captum way), by
  Captum's tensor hooks, with Captum's numbers;
* the relevances of a seed of 1 are multiplied by the model's output
  ``f_t(x)`` at the end, as Captum does (the outputs are kept from the
  same forward);
* with ``composite.function_rules`` (the default here; not in the Captum
  drop-in), what the forward computes with torch functions outside the
  layers gets rules too (:mod:`fastattr.attr.lrp_functional`): residual
  additions split their relevance among their terms instead of handing all
  of it to each (Captum's double counting), gates pass it to their signal,
  ``F.batch_norm`` in a BatchNorm with children (timm's ``BatchNormAct2d``)
  gets the BatchNorm rule, LayerNorm the LN-rule and attention the AH-rule.

The forward values are the model's own all the way (every layer sees its
original input, as Captum's second forward does through its pre-hooks), so
one forward and one backward per chunk do what Captum does in two forwards.
The caller's parameters are never written: a rule's modified parameters are
swapped into the module's parameter dict for one ``module.forward`` call and
swapped back at once. The rules run as wrappers of the layers' forwards (see
:func:`fastattr.attr.relu_rules.replaced_forwards`).
"""
from __future__ import annotations

import contextlib
import functools
from typing import (
    Any, Callable, ContextManager, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union,
)

import torch
from torch import Tensor, nn

from .. import _validate as v
from .. import ops
from ..engine import run, single_point_plan
from ..engine.loop import row_examples
from ..engine.outputs import check_model_output, target_outputs
from ._call import build_request, shape_output
from ._layer import per_layer
from .integrated_gradients import delta_dtype
from .layer_gradients import run_at_layers
from .lrp_backward import PassedThrough, Relevance, branch_inputs
from .lrp_functional import FunctionRules, check_attention_module
from .lrp_rules import (
    FOLD, FUNCTIONS, Branch, Composite, EpsilonRule, IdentityRule, MultiTermRule, PropagationRule, Rule,
    assign_rules, shared_default_composite,
)
from .relu_rules import (
    BackwardRule, Forward, ForwardWrapper, ModuleCall, replaced_forwards, require_module, watched,
    writes_input,
)

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# ---------------------------------------------------------------------------
# The backward pieces
# ---------------------------------------------------------------------------


_Grads = Tuple[Optional[Tensor], ...]


def _divided_by(denom: Tensor, output_nr: int) -> Callable[[_Grads], _Grads]:
    """A pre-hook for an autograd node: its ``output_nr``-th incoming gradient
    divided by ``denom``."""

    def hook(grads: _Grads) -> _Grads:
        if grads[output_nr] is None:
            return grads
        return (*grads[:output_nr], grads[output_nr] / denom, *grads[output_nr + 1:])

    return hook


def _fresh_output(out: Tensor, args: Tuple[Any, ...]) -> Tensor:
    """``out``, or a copy of it when it shares memory with a floating input
    (an identity-like layer): the inputs are views for the rule, and a later
    in-place write to the output must not reach them. Only an input itself
    or a view can share its memory."""
    if out._base is None and not any(a is out for a in args):
        return out
    ptr = out.untyped_storage().data_ptr()
    shared = any(isinstance(a, Tensor) and a.is_floating_point() and a.untyped_storage().data_ptr() == ptr
                 for a in args)
    return out.clone() if shared else out


def _forward_with(forward: Forward, module: nn.Module, params: Mapping[str, Tensor],
                  args: Tuple[Any, ...]) -> Tensor:
    """``forward(*args)`` (the module's own) with ``params`` in place of its parameters."""
    saved = {name: module._parameters[name] for name in params}
    try:
        module._parameters.update(params)
        return forward(*args)
    finally:
        module._parameters.update(saved)


def _rule_output(forward: Forward, module: nn.Module, branches: Sequence[Branch], args: Tuple[Any, ...],
                 base: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """``z' = sum_k layer_k(x_k)``, each input's gradient times its part;
    a branch's parameters override ``base`` (default: the module's own)."""
    copy = writes_input(module)
    outs = [_forward_with(forward, module, {**(base or {}), **b.params},
                          branch_inputs(args, b.input_part, copy))
            for b in branches]
    return outs[0] if len(outs) == 1 else functools.reduce(torch.add, outs)


def _layer_params(module: nn.Module, where: str) -> Dict[str, Tensor]:
    """The module's ``weight`` / ``bias`` parameters, detached (those it has)."""
    params = {}
    for name in ("weight", "bias"):
        param = module._parameters.get(name)
        if isinstance(param, Tensor):
            params[name] = param.detach()
        elif name not in module._parameters and _other_attribute(module, name) is not None:
            raise NotImplementedError(
                f"{where}: its {name} is not a plain parameter (a parametrization or a "
                "property); LRP rules that modify weights need one"
            )
    return params


def _other_attribute(module: nn.Module, name: str) -> Any:
    """``module.<name>`` when it is not a registered parameter (a property,
    a parametrization, a buffer...), else None; without nn.Module.__getattr__
    raising (and catching) an AttributeError for a layer that has none."""
    if name in module.__dict__ or name in module._buffers or hasattr(type(module), name):
        return getattr(module, name, None)
    return None


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
    """What the wrapped forwards of one call share: the rules' branches per
    layer, the Linear/Conv outputs of the current forward (for folded
    BatchNorms), the folded parameters, and the model's outputs."""

    def __init__(self) -> None:
        self.branches: Dict[nn.Module, Optional[Tuple[Branch, ...]]] = {}
        self.params: Dict[nn.Module, Dict[str, Tensor]] = {}  # the MultiTermRule layers'
        # id(output) -> (output, layer, its forward, rule, its inputs)
        self.producers: Dict[int, Tuple[Tensor, nn.Module, Forward, PropagationRule, Tuple[Any, ...]]] = {}
        self.folded: Dict[Tuple[Any, nn.Module], Dict[str, Tensor]] = {}
        self.outputs: List[Tensor] = []
        self.folding = False  # BatchNorms are folded: the Linear/Conv layers record their outputs
        self.functions: Optional[FunctionRules] = None  # the function rules, if the composite has them


def _rule_layer(rule: PropagationRule, state: _CallState, records_output: bool) -> ForwardWrapper:
    """The forward applying z-rule ``rule``. A rule without branches
    (epsilon) reuses the module's own forward; the others recompute the
    layer per branch."""

    def make(module: nn.Module, inner: Forward) -> Forward:
        branches = state.branches[module]
        if branches is None:
            return _epsilon_forward(module, inner, rule, state, records_output)

        def forward(*args: Any, **kwargs: Any) -> Tensor:
            with torch.no_grad():  # only the values: the relevance flows through the branches
                out = inner(*args, **kwargs)
            through = _rule_output(inner, module, branches, args)
            ret = Relevance.apply(out, through, ops.stabilize(through.detach(), rule.epsilon))
            if records_output:
                state.producers[id(ret)] = (ret, module, inner, rule, args)
            return ret

        return forward

    return make


def _epsilon_forward(module: nn.Module, inner: Forward, rule: PropagationRule, state: _CallState,
                     records_output: bool) -> Forward:
    """The epsilon rule on the module's own forward, its inputs times their
    gradient. The division by the stabilized output is a pre-hook on the
    output's autograd node rather than a new output tensor: no copy of the
    output, and it runs after the tensor hooks on the output (a pass-through
    layer's), as the division of a separate node after them would."""
    copy = writes_input(module)

    def forward(*args: Any, **kwargs: Any) -> Tensor:
        wrapped = branch_inputs(args, "all", copy)
        out = _fresh_output(inner(*wrapped, **kwargs), wrapped)
        if out.grad_fn is not None:
            denom = ops.stabilize(out.detach(), rule.epsilon)
            out.grad_fn.register_prehook(_divided_by(denom, out.output_nr))
        if records_output:
            state.producers[id(out)] = (out, module, inner, rule, args)
        return out

    return forward


def _layer_on(forward: Forward, module: nn.Module, args: Tuple[Any, ...]
              ) -> Callable[[Tensor, Mapping[str, Tensor]], Tensor]:
    """``layer(x, params)``: ``forward`` on ``x`` (in place of ``args[0]``) with ``params`` swapped in."""
    return lambda x, params: _forward_with(forward, module, params, (x, *args[1:]))


def _multi_term_layer(rule: MultiTermRule, state: _CallState, records_output: bool) -> ForwardWrapper:
    """The forward applying ``rule`` (its own backward, :meth:`MultiTermRule.output`)."""

    def make(module: nn.Module, inner: Forward) -> Forward:
        params = state.params[module]

        def forward(*args: Any, **kwargs: Any) -> Tensor:
            with torch.no_grad():
                out = inner(*args, **kwargs)
            ret = rule.output(out, _layer_on(inner, module, args), args[0], params)
            if records_output:
                state.producers[id(ret)] = (ret, module, inner, rule, args)
            return ret

        return forward

    return make


def _folded_batchnorm(where: str, state: _CallState) -> ForwardWrapper:
    """The forward merging a BatchNorm into the Linear/Conv that produced its
    input: the producer's rule on the merged layer, recomputed on the
    producer's inputs."""

    def make(bn: nn.Module, inner: Forward) -> Forward:
        def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            with torch.no_grad():
                out = inner(x, *args, **kwargs)
            return _folded_into_producer(state, x, bn, bn, out, where)

        return forward

    return make


def _folded_into_producer(state: _CallState, x: Tensor, key: Any, bn: Any, out: Tensor, where: str) -> Tensor:
    """``out`` (the BatchNorm ``bn``'s output for input ``x``) with the
    backward of the rule of the Linear/Conv that produced ``x``, on the
    merged layer recomputed on that layer's inputs; ``key`` identifies ``bn``
    across calls (its merged parameters are made once per LRP call)."""
    record = state.producers.get(id(x))
    if record is None or record[0] is not x:
        raise ValueError(
            f"{where}: a BatchNorm folded by composite.batchnorm='fold' must take the "
            "output of a Linear or Conv layer directly (with an LRP rule)"
        )
    _, layer, layer_forward, rule, layer_args = record
    if (layer, key) not in state.folded:
        state.folded[(layer, key)] = _folded_params(layer, bn)
    params = state.folded[(layer, key)]
    if isinstance(rule, MultiTermRule):
        return rule.output(out, _layer_on(layer_forward, layer, layer_args), layer_args[0], params)
    branches = rule.branches(params) or (Branch("all", params),)
    through = _rule_output(layer_forward, layer, branches, layer_args, params)
    return Relevance.apply(out, through, ops.stabilize(through.detach(), rule.epsilon))


def _functional_fold(state: _CallState) -> Callable[[Tensor, Any, Tensor], Tensor]:
    """The function rules' fold of an ``F.batch_norm`` call (a BatchNorm
    with children), keyed by its running mean."""

    def fold(x: Tensor, bn: Any, out: Tensor) -> Tensor:
        return _folded_into_producer(state, x, bn.running_mean, bn, out, "model (a batch_norm call)")

    return fold


def _captured_output(state: _CallState) -> ForwardWrapper:
    """The root's forward, keeping each output (the relevances are scaled by
    it, as Captum does), with the function rules on while it runs; with
    folded BatchNorms, the layer outputs they look up are cleared at each
    forward's start and end."""

    def make(model: nn.Module, inner: Forward) -> Forward:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if state.folding:
                state.producers.clear()
            with state.functions or contextlib.nullcontext():
                out = inner(*args, **kwargs)
            if state.functions is not None:
                state.functions.check_output(out)
            if state.folding:
                state.producers.clear()
            if isinstance(out, Tensor):  # else the engine reports it
                state.outputs.append(out.detach())
            return out

        return forward

    return make


class _Unchanged(BackwardRule):
    """Pass-through: the module's input gets its output's relevance."""

    def needs_grad_input(self, prepared: Any) -> bool:
        return False

    def replace(self, call: ModuleCall, grad_input: Tensor) -> Tensor:
        return call.grad_output.reshape(grad_input.shape)


_RELEVANCE_UNCHANGED = _Unchanged()


def _passed_through(module: nn.Module, inner: Forward) -> Forward:
    """A pass-through layer's forward under the function rules: its output
    made without a graph, and one autograd node handing the output's
    relevance to the input unchanged. (Captum's tensor hooks, which the
    Captum way keeps, lose a pass-through layer's rule where it takes another
    hooked layer's output, e.g. timm's ``BatchNormAct2d``'s ``drop`` then
    ``act``: the first one's output hook sees the second one's ordinary
    gradient, a SiLU's 1/2 near 0.)"""
    copy = writes_input(module)

    def forward(*args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else None
        if not (isinstance(x, Tensor) and x.requires_grad and torch.is_grad_enabled()):
            return inner(*args, **kwargs)

        def output() -> Tensor:
            out = inner(x.clone() if copy else x, *args[1:], **kwargs)
            if not (isinstance(out, Tensor) and out.numel() == x.numel()):
                raise TypeError(
                    f"model: {type(module).__name__} module passes relevance through (IdentityRule): it must "
                    f"return one tensor with as many elements as its input, got {type(out).__name__}"
                )
            # an identity layer's output is its input: a custom Function must return a new tensor
            return out.clone() if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() else out

        return PassedThrough.apply(output, x)

    return forward


def installed_rules(model: nn.Module, layers: Sequence[Tuple[str, nn.Module, Rule]],
                    state: _CallState) -> ContextManager[None]:
    """Install ``layers``' rules and the output capture on ``model`` while
    the context is open; every forward is restored on exit, also on a raise."""
    wrappers: List[Tuple[nn.Module, ForwardWrapper]] = [(model, _captured_output(state))]
    for name, module, rule in layers:
        if isinstance(rule, PropagationRule):
            make = _rule_layer(rule, state, state.folding and isinstance(module, _FOLDABLE))
        elif isinstance(rule, MultiTermRule):
            make = _multi_term_layer(rule, state, state.folding and isinstance(module, _FOLDABLE))
        elif rule is FOLD:
            make = _folded_batchnorm(f"model.{name}", state)
        elif rule == FUNCTIONS:
            continue  # runs as it is, under the function rules
        elif state.functions is not None:
            make = _passed_through
        else:  # the Captum way: Captum's hooks, and their numbers
            make = watched(_RELEVANCE_UNCHANGED)
        wrappers.append((module, make if state.functions is None else _own_rule_only(make, state.functions)))
    return _cleared_after(replaced_forwards(wrappers), state)


def _own_rule_only(make: ForwardWrapper, functions: FunctionRules) -> ForwardWrapper:
    """``make``'s forward with the function rules off while it runs: the
    layer's own rule covers the torch calls inside it."""

    def wrapped(module: nn.Module, inner: Forward) -> Forward:
        forward = make(module, inner)

        def run(*args: Any, **kwargs: Any) -> Any:
            functions.depth += 1
            try:
                return forward(*args, **kwargs)
            finally:
                functions.depth -= 1

        return run

    return wrapped


@contextlib.contextmanager
def _cleared_after(installed: ContextManager[None], state: _CallState) -> Iterator[None]:
    try:
        with installed:
            yield
    finally:
        state.producers.clear()


def _checked_layers(model: nn.Module, composite: Composite, state: _CallState
                    ) -> List[Tuple[str, nn.Module, Rule]]:
    """Every leaf layer's rule, checked (before any compute); fills
    ``state.branches``."""
    layers = assign_rules(model, composite)
    state.folding = any(rule is FOLD for _, _, rule in layers) or \
        (composite.function_rules and composite.batchnorm == "fold")
    for name, module, rule in layers:
        if isinstance(rule, PropagationRule):
            state.branches[module] = _branches(rule, module, f"model.{name}", state.folding)
        elif isinstance(rule, MultiTermRule):
            state.params[module] = _layer_params(module, f"model.{name}")
        elif rule is FOLD and (module.training or module.running_mean is None):
            raise ValueError(
                f"model.{name}: composite.batchnorm='fold' needs the BatchNorm in eval mode with "
                "running statistics (it folds them into the preceding layer)"
            )
        elif rule == FUNCTIONS and composite.function_rules and isinstance(module, nn.MultiheadAttention):
            check_attention_module(module, f"model.{name}")
        elif not isinstance(rule, IdentityRule) and rule is not FOLD and rule != FUNCTIONS:
            raise TypeError(f"model.{name}: unknown LRP rule {rule!r}")
    return layers


def _branches(rule: PropagationRule, module: nn.Module, where: str, folding: bool
              ) -> Optional[Tuple[Branch, ...]]:
    """``rule.branches`` of the layer's parameters. A rule with the base
    class's (epsilon) runs the layer as it is and needs no parameters,
    unless a folded BatchNorm may swap in merged ones."""
    if type(rule).branches is PropagationRule.branches and not (folding and isinstance(module, _FOLDABLE)):
        return None
    return rule.branches(_layer_params(module, where))


def _prepared(model: nn.Module, composite: Optional[Composite]) -> Tuple[_CallState, List[Tuple[str, nn.Module, Rule]]]:
    """A call's state and every leaf layer's rule (``composite``'s, default
    Captum's defaults), checked before any compute."""
    require_module(model, "LRP")
    if composite is None:
        composite = shared_default_composite()
    elif not isinstance(composite, Composite):
        raise TypeError(f"composite: expected a fastattr.attr.lrp_rules.Composite, got {type(composite).__name__}")
    state = _CallState()
    layers = _checked_layers(model, composite, state)
    if composite.function_rules:
        state.functions = _function_rules(composite, state)
    return state, layers


def _function_rules(composite: Composite, state: _CallState) -> FunctionRules:
    """The function rules of ``composite``: ``F.linear`` and ``F.batch_norm``
    get its rules for nn.Linear and nn.BatchNorm2d, the additions, LayerNorms
    and attention the stabilizer of its nn.Linear rule (a z-rule's
    ``epsilon``, a multi-term rule's ``stabilizer``; else the default epsilon)."""
    linear = _weight_rule_or_none(composite.rules_by_type.get(nn.Linear))
    batchnorm = _weight_rule_or_none(composite.rules_by_type.get(nn.BatchNorm2d))
    if isinstance(linear, PropagationRule):
        epsilon = linear.epsilon
    elif isinstance(linear, MultiTermRule):
        # not the default: a residual addition must not absorb more than the rule's own stabilizer
        epsilon = linear.stabilizer
    else:
        epsilon = EpsilonRule.epsilon
    return FunctionRules(linear, composite.batchnorm, batchnorm, _functional_fold(state), epsilon)


def _weight_rule_or_none(rule: Rule) -> Optional[Union[PropagationRule, MultiTermRule]]:
    """``rule`` if it is a z-rule or a multi-term rule (a rule on a layer's weights), else None."""
    return rule if isinstance(rule, (PropagationRule, MultiTermRule)) else None


def _explained_outputs(state: _CallState, target: v.FormattedTarget) -> Tensor:
    """``[B]``: each example's target output ``f_t(x)`` from the outputs the
    call's forwards kept, in their dtype (``target`` as ``format_target`` made it)."""
    outputs = state.outputs[0] if len(state.outputs) == 1 else torch.cat(state.outputs)
    batch = outputs.shape[0]
    flat = check_model_output(outputs, batch, target)
    return target_outputs(outputs, flat, row_examples(0, batch, 1, outputs.device)).to(outputs.dtype)


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
            :func:`~fastattr.attr.lrp_rules.default_composite`: Captum's
            defaults for its layers, more layers, and the function rules for
            residual additions, gates, LayerNorm and attention).
        return_convergence_delta: also return ``[B]``
            ``f_t(x) - sum(relevances)`` (Captum's delta).

    Returns:
        Relevances shaped and typed like ``inputs``; with
        ``return_convergence_delta`` a pair ``(relevances, delta [B])``.
    """
    state, layers = _prepared(model, composite)
    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args,
        lambda xs: single_point_plan("grad"),
        memory_budget, chunk_rows,
        rules=functools.partial(installed_rules, model, layers, state),
    )
    normalized = shape_output(run(req).mean, req.inputs, True)
    if req.inputs[0].shape[0] == 0:  # nothing ran
        no_deltas = normalized[0].new_zeros(0) if return_convergence_delta else None
        return _returned(normalized, was_tuple, no_deltas)
    f_t = _explained_outputs(state, req.target)
    # Captum's order: relevances for a seed of 1, times f_t(x) at the end.
    relevances = tuple(r * f_t.reshape(-1, *([1] * (r.dim() - 1))) for r in normalized)
    if not return_convergence_delta:
        return _returned(relevances, was_tuple, None)
    total = sum(r.reshape(r.shape[0], -1).sum(1, dtype=torch.float64) for r in relevances)
    return _returned(relevances, was_tuple, (f_t.to(torch.float64) - total).to(delta_dtype(req.inputs[0])))


def _returned(relevances: Tuple[Tensor, ...], was_tuple: bool, deltas: Optional[Tensor]
              ) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
    out = relevances if was_tuple else relevances[0]
    return out if deltas is None else (out, deltas)


def layer_lrp(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    layer: Any,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    composite: Optional[Composite] = None,
    return_convergence_delta: bool = False,
    attribute_to_layer_input: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
) -> Any:
    """The relevance arriving at ``layer``'s output (or inputs) in
    :func:`lrp`'s backward, times ``f_t(x)``, as Captum's ``LayerLRP.attribute``:
    the rules' backward carries relevances, so the gradient at the layer is
    its (normalized) relevance.

    Args:
        layer: an ``nn.Module`` of ``model`` (or a list of them), run once per forward.
        attribute_to_layer_input: the relevance at the layer's positional inputs.
        Others: as :func:`lrp`.

    Returns:
        Shaped like the layer's output ``[B, *L]`` (a tuple for several
        tensors, a list per layer for a list); with ``return_convergence_delta``
        also ``[B]`` deltas ``f_t(x) - sum(relevances)`` (a list, one per layer,
        for a list).
    """
    state, layers = _prepared(model, composite)

    def build(leaf_model: Any, options: Dict[str, Any]) -> Any:
        return build_request(
            leaf_model, inputs, target, additional_forward_args, lambda xs: single_point_plan("grad"),
            memory_budget, chunk_rows, rules=functools.partial(installed_rules, model, layers, state),
            **options)[0]

    result, leaf_model, was_list = run_at_layers(model, layer, True, attribute_to_layer_input, build)
    like = leaf_model.gathered()
    xs, _ = v.format_inputs(inputs, allow_integer=True)
    f_t = _explained_outputs(state, v.format_target(target, xs[0].shape[0], xs[0].device))
    relevances = tuple((r * f_t.reshape(-1, *([1] * (r.dim() - 1)))).to(a.dtype) for r, a in zip(result.mean, like.flat))
    attributions = per_layer(relevances, like, was_list)
    if not return_convergence_delta:
        return attributions

    def delta(per_layer_relevance: Any) -> Tensor:
        items = per_layer_relevance if isinstance(per_layer_relevance, tuple) else (per_layer_relevance,)
        total = sum(r.reshape(r.shape[0], -1).sum(1, dtype=torch.float64) for r in items)
        return (f_t.to(torch.float64) - total).to(delta_dtype(items[0]))

    return attributions, [delta(a) for a in attributions] if was_list else delta(attributions)
