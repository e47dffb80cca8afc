"""LRP rules for what a model computes with torch functions rather than
layers: residual additions, gates, normalizations and attention.

torchvision's and timm's blocks add their skip connection in ``forward``
(``out += identity``), gate channels by a product (squeeze-excitation),
call ``F.batch_norm`` inside a module with children (timm's
``BatchNormAct2d``) and run attention as ``F.multi_head_attention_forward``.
Those calls are no layers, so no layer rule sees them, and the plain
gradient through them does not carry relevance: an addition hands its full
relevance to *both* terms (a bias-free residual block sums to ``2 f(x)``).

:class:`FunctionRules` is a ``TorchFunctionMode`` active during the model's
forward (only there: the engine's own arithmetic must stay plain) and
outside the layers that have a rule of their own (while one runs,
``FunctionRules.depth`` is above 0 and every call runs plain).
It sees every torch call of the forward at run time, so it needs no
tracing of the model (``torch.fx`` fails on data-dependent control flow)
and finds additions written as ``+``, ``+=``, ``torch.add`` or ``add_``
alike. What it does, per function:

* **add / sub** (z-rule): ``R_i = z_i / stab(sum_j z_j) * R`` for each
  term ``z_i`` (``-b`` for a subtraction); a term that is a number or a
  tensor without gradient (a constant) absorbs its share, as a bias does.
* **mul / div** (gate rule, "signal takes all"): the relevance passes
  unchanged to the *signal* and the *gate* gets none (it is detached).
  The gate is an ``nn.Parameter``, a number, a tensor without gradient,
  or the operand with fewer elements (squeeze-excitation's ``scale *
  input``, a normalizer's ``x / std``); two input-dependent operands of the
  same size share the relevance equally. For a divisor only the dividend
  is a signal. This is the epsilon rule of a scaling by a constant.
* **linear** (``F.linear`` outside an ``nn.Linear``): the composite's
  rule for ``nn.Linear``.
* **layer_norm** (LN-rule, Ali et al. 2022): the standard deviation is
  detached, so the layer is linear in its input, ``(x - mean x) / std * w
  + b``, with the epsilon rule on it; ``b`` absorbs its share.
* **batch_norm** (a ``BatchNorm`` subclass with children, timm's
  ``BatchNormAct2d``): the composite's BatchNorm handling (its rule,
  ``"identity"`` or ``"fold"`` into the producing Linear/Conv).
* **scaled_dot_product_attention / multi_head_attention_forward**
  (AH-rule, Ali et al. 2022): the softmax weights ``A`` are detached, so
  attention is linear in the values; the epsilon rule on
  ``out_proj(A · v_proj(value))`` (one step through the value path; the
  projections' biases absorb their shares). Queries and keys get no
  relevance.
* **softmax and matmul** (attention written out, as timm's ``Attention``
  without fused attention or Hugging Face's eager attention: ``A =
  softmax(q k^T); A @ v``): the same AH-rule. A softmax's weights are
  detached (a softmax is a gate, as in the products above), and a
  ``matmul`` / ``bmm`` with one input-dependent operand gets the epsilon
  rule, as a linear layer would. A model whose *output* is such a softmax
  is refused: LRP explains the logits (:meth:`FunctionRules.check_output`).

* **sum / mean / avg_pool / adaptive_avg_pool** (functional pooling, e.g.
  ``x.mean((2, 3))``): the epsilon rule.

Everything else keeps its gradient, which moves relevance with the elements
for the shape functions (``cat``, ``split``, ``permute``, ``reshape``,
indexing: concatenations pass relevance to their parts, splits gather it).
"""
from __future__ import annotations

import inspect
import math
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .. import ops
from .lrp_backward import PassedThrough, Relevance, input_part
from .lrp_rules import Branch, EpsilonRule, MultiTermRule, PropagationRule

# fold(x, batchnorm-like, value) -> the folded rule's output (lrp.py's fold).
Fold = Callable[[Tensor, Any, Tensor], Tensor]
# A rule on a layer's weights: a z-rule or one of Zennit's multi-term rules.
WeightRule = Union[PropagationRule, MultiTermRule]

_T = torch.Tensor
# (function, in place, coefficient of the first operand, of the second)
_ADDS: Dict[Any, Tuple[bool, float, float]] = {
    torch.add: (False, 1.0, 1.0), _T.add: (False, 1.0, 1.0), _T.__add__: (False, 1.0, 1.0),
    _T.__radd__: (False, 1.0, 1.0), _T.add_: (True, 1.0, 1.0), _T.__iadd__: (True, 1.0, 1.0),
    torch.sub: (False, 1.0, -1.0), torch.subtract: (False, 1.0, -1.0), _T.sub: (False, 1.0, -1.0),
    _T.__sub__: (False, 1.0, -1.0), _T.sub_: (True, 1.0, -1.0), _T.__isub__: (True, 1.0, -1.0),
    torch.rsub: (False, -1.0, 1.0), _T.__rsub__: (False, -1.0, 1.0),
}
_OUT_OF_PLACE_ADD = {True: torch.add, False: torch.sub}
_MULS: Dict[Any, bool] = {
    torch.mul: False, torch.multiply: False, _T.mul: False, _T.__mul__: False, _T.__rmul__: False,
    _T.mul_: True, _T.__imul__: True,
}
_DIVS: Dict[Any, bool] = {
    torch.div: False, torch.divide: False, torch.true_divide: False, _T.div: False, _T.__truediv__: False,
    _T.div_: True, _T.__itruediv__: True,
}
# Functions linear in their first argument (reductions, average pooling):
# the epsilon rule, ``R_i = (contribution of x_i) / stab(z) * R``.
_LINEAR_IN_INPUT = (torch.sum, _T.sum, torch.mean, _T.mean, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_SOFTMAXES = (torch.softmax, _T.softmax, F.softmax)
# Products of two operands (``torch.matmul(a, b)``; ``__rmatmul__`` as ``b @ a``, swapped by Python).
_MATMULS = (torch.matmul, _T.matmul, _T.__matmul__, _T.__rmatmul__, torch.bmm, _T.bmm)
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
_LAYER_NORM_SIGNATURE = inspect.signature(F.layer_norm)
_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)
# F.linear is a builtin: no signature to read
_LINEAR_SIGNATURE = inspect.Signature([
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
    for name, default in (("input", inspect.Parameter.empty), ("weight", inspect.Parameter.empty), ("bias", None))])
# scaled_dot_product_attention's arguments and defaults (a builtin: no signature)
_SDPA_ARGS = (("query", None), ("key", None), ("value", None), ("attn_mask", None), ("dropout_p", 0.0),
              ("is_causal", False), ("scale", None), ("enable_gqa", False))


def _needs_relevance(x: Any) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point() and x.requires_grad and torch.is_grad_enabled()


def _stabilized(z: Tensor, epsilon: float) -> Tensor:
    return ops.stabilize(z.detach(), epsilon)


class _ZSplit(torch.autograd.Function):
    """Forward: ``compute()`` (the sum); backward: ``R / stab(sum)`` times
    each term ``coeff_k * operand_k``, summed to the operand's shape."""

    @staticmethod
    def forward(ctx: Any, compute: Callable[[], Tensor], epsilon: float, coeffs: Tuple[float, ...],
                *operands: Tensor) -> Tensor:
        value = compute()
        ctx.coeffs = coeffs
        ctx.shapes = [o.shape for o in operands]
        # Clones: the sum may be written into one of its operands (``out += x``).
        ctx.save_for_backward(_stabilized(value, epsilon), *(o.detach().clone() for o in operands))
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        denom, *operands = ctx.saved_tensors
        share = grad / denom
        grads = [(share * (c * o)).sum_to_size(shape) if needed else None
                 for c, o, shape, needed in zip(ctx.coeffs, operands, ctx.shapes, ctx.needs_input_grad[3:])]
        return (None, None, None, *grads)


class _Gated(torch.autograd.Function):
    """Forward: ``compute(*signals)`` (gates detached inside); backward: the
    relevance times each signal's weight, summed to its shape."""

    @staticmethod
    def forward(ctx: Any, compute: Callable[..., Tensor], weights: Tuple[float, ...], *signals: Tensor) -> Tensor:
        ctx.weights = weights
        ctx.shapes = [s.shape for s in signals]
        return compute(*signals)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        grads = [(grad * w).sum_to_size(shape) for w, shape in zip(ctx.weights, ctx.shapes)]
        return (None, None, *grads)


def _written_into(target: Tensor, value: Tensor) -> Tensor:
    """An in-place op's result: ``value`` copied into ``target`` (autograd
    routes the gradient of ``target`` to ``value``)."""
    return target.copy_(value)


def z_rule_output(value: Tensor, function: Callable[[Tensor, Mapping[str, Tensor]], Tensor], x: Tensor,
                  params: Mapping[str, Tensor], rule: PropagationRule) -> Tensor:
    """``value`` with ``rule``'s backward for ``function(x, params)``:
    ``z' = sum_k function(x_k, params_k)`` over the rule's branches, ``R ->
    x_k * J_k^T (R / stab(z'))``."""
    branches = rule.branches(params) or (Branch("all", {}),)
    outs = [function(input_part(x, b.input_part, False), {**params, **b.params}) for b in branches]
    through = outs[0] if len(outs) == 1 else torch.stack(outs).sum(0)
    return Relevance.apply(value, through, _stabilized(through, rule.epsilon))


def weight_rule_output(value: Tensor, function: Callable[[Tensor, Mapping[str, Tensor]], Tensor], x: Tensor,
                       params: Mapping[str, Tensor], rule: WeightRule) -> Tensor:
    """``value`` with ``rule``'s backward for ``function(x, params)``: a
    multi-term rule's own (:meth:`MultiTermRule.output`), else :func:`z_rule_output`'s."""
    if isinstance(rule, MultiTermRule):
        return rule.output(value, function, x, params)
    return z_rule_output(value, function, x, params, rule)


class FunctionRules(TorchFunctionMode):
    """The rules above, for one LRP call.

    Args:
        linear_rule: the rule of ``F.linear`` calls (the composite's for ``nn.Linear``).
        batchnorm: ``"rule"``, ``"identity"`` or ``"fold"`` (the composite's mode).
        batchnorm_rule: the rule of ``F.batch_norm`` calls in ``"rule"`` mode (None: identity).
        fold: merges a BatchNorm into the layer producing its input (``"fold"``).
        epsilon: the stabilizer of the additions, LayerNorms and attention.
    """

    def __init__(self, linear_rule: Optional[WeightRule], batchnorm: str,
                 batchnorm_rule: Optional[WeightRule], fold: Fold, epsilon: float) -> None:
        super().__init__()
        self.linear_rule = linear_rule
        self.batchnorm = batchnorm
        self.batchnorm_rule = batchnorm_rule
        self.fold = fold
        self.epsilon = epsilon
        self.depth = 0  # > 0 while a layer with a rule of its own runs: its rule covers its calls
        # The detached softmax outputs of the current forward, by id (a
        # weak reference each, so a freed tensor's reused id never matches).
        self.softmax_outputs: Dict[int, "weakref.ref[Tensor]"] = {}
        self.handlers: Dict[Any, Callable[..., Any]] = {
            **{f: self._add for f in _ADDS}, **{f: self._mul for f in _MULS}, **{f: self._div for f in _DIVS},
            F.linear: self._linear, F.layer_norm: self._layer_norm, F.batch_norm: self._batch_norm,
            F.scaled_dot_product_attention: self._sdpa, F.multi_head_attention_forward: self._mha,
            **{f: self._linear_in_input for f in _LINEAR_IN_INPUT},
            **{f: self._softmax for f in _SOFTMAXES}, **{f: self._matmul for f in _MATMULS},
        }

    def check_output(self, out: Any) -> None:
        """Refuse a model output that is a detached softmax (it carries no
        relevance: explain the logits before it); forget this forward's softmaxes."""
        outputs, self.softmax_outputs = self.softmax_outputs, {}
        if isinstance(out, Tensor) and id(out) in outputs and outputs[id(out)]() is out:
            raise ValueError(
                "model: its output is a softmax, which LRP treats as attention weights (detached); "
                "explain the logits: remove the final softmax"
            )

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        handler = None if self.depth or "out" in kwargs else self.handlers.get(func)
        if handler is None:  # (an ``out=`` tensor: left to the plain gradient)
            return func(*args, **kwargs)
        return handler(func, tuple(args), kwargs)

    # --- additions -----------------------------------------------------------

    def _add(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        inplace, ca, cb = _ADDS[func]
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        # alpha scales ``other``, except in rsub (``other - alpha * input``)
        operands = [(a, ca * alpha), (b, cb)] if ca < 0 else [(a, ca), (b, cb * alpha)]
        tensors = [(t, c) for t, c in operands if isinstance(t, Tensor)]
        if not any(_needs_relevance(t) for t, _ in tensors) or not all(t.is_floating_point() for t, _ in tensors):
            return func(*args, **kwargs)
        plain = func if not inplace else _OUT_OF_PLACE_ADD[cb > 0]
        value = _ZSplit.apply(lambda: plain(*args, **kwargs), self.epsilon, tuple(c for _, c in tensors),
                              *(t for t, _ in tensors))
        return _written_into(a, value) if inplace else value

    # --- products ------------------------------------------------------------

    def _mul(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        signals = _signals([a, b])
        return self._gated(func, args, kwargs, signals, _MULS[func], torch.mul)

    def _div(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        a = args[0]
        signals = [0] if _is_signal(a) and a.is_floating_point() else []
        return self._gated(func, args, kwargs, signals, _DIVS[func], torch.div)

    def _gated(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], signals: List[int],
               inplace: bool, out_of_place: Any) -> Any:
        """``func`` with the operands not in ``signals`` detached; the
        relevance shared equally by the signals."""
        if not signals:
            return func(*args, **kwargs)
        operands = list(args[:2]) if len(args) > 1 else [args[0], kwargs.get("other")]
        fixed = [o.detach() if isinstance(o, Tensor) else o for o in operands]
        rest = {k: v for k, v in kwargs.items() if k != "other"}
        plain = out_of_place if inplace else func

        def compute(*sig: Tensor) -> Tensor:
            values = list(fixed)
            for i, s in zip(signals, sig):
                values[i] = s
            return plain(*values, *args[2:], **rest)

        value = _Gated.apply(compute, tuple(1.0 / len(signals) for _ in signals), *(operands[i] for i in signals))
        return _written_into(args[0], value) if inplace else value

    # --- layers as functions -------------------------------------------------

    def _linear_in_input(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        x = args[0] if args else kwargs.get("input")
        if not args or not _needs_relevance(x):
            return func(*args, **kwargs)
        with torch.no_grad():
            value = func(*args, **kwargs)
        return z_rule_output(value, lambda xi, p: func(xi, *args[1:], **kwargs), x, {}, EpsilonRule(self.epsilon))

    def _linear(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        call = _LINEAR_SIGNATURE.bind(*args, **kwargs).arguments
        x, weight, bias = call["input"], call["weight"], call.get("bias")
        if not _needs_relevance(x) or self.linear_rule is None:
            return func(*args, **kwargs)
        with torch.no_grad():
            value = func(*args, **kwargs)
        params = _detached({"weight": weight, "bias": bias})
        return weight_rule_output(value, lambda xi, p: F.linear(xi, p["weight"], p.get("bias")), x, params,
                                  self.linear_rule)

    def _layer_norm(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        call = _LAYER_NORM_SIGNATURE.bind(*args, **kwargs).arguments
        x = call["input"]
        if not _needs_relevance(x):
            return func(*args, **kwargs)
        with torch.no_grad():
            value = func(*args, **kwargs)
        dims = tuple(range(-len(call["normalized_shape"]), 0))
        std = torch.sqrt(x.detach().var(dims, unbiased=False, keepdim=True) + call.get("eps", 1e-5))
        params = _detached({"weight": call.get("weight"), "bias": call.get("bias")})

        def normalized(xi: Tensor, p: Mapping[str, Tensor]) -> Tensor:
            out = (xi - xi.mean(dims, keepdim=True)) / std
            out = out * p["weight"] if "weight" in p else out
            return out + p["bias"] if "bias" in p else out

        return z_rule_output(value, normalized, x, params, EpsilonRule(self.epsilon))

    def _batch_norm(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        call = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs).arguments
        x = call["input"]
        if not _needs_relevance(x):
            return func(*args, **kwargs)
        value = func(*args, **kwargs)  # updates running statistics as the model would
        value = value.detach()
        if self.batchnorm == "fold":
            return self.fold(x, _BatchNormValues(call), value)
        if self.batchnorm == "identity" or self.batchnorm_rule is None:
            return PassedThrough.apply(lambda: value.clone(), x)
        training = call.get("training", False)
        stats = (None, None) if training else (call["running_mean"], call["running_var"])
        params = _detached({"weight": call.get("weight"), "bias": call.get("bias")})

        def normalized(xi: Tensor, p: Mapping[str, Tensor]) -> Tensor:
            return F.batch_norm(xi, *stats, p.get("weight"), p.get("bias"), training, 0.0, call.get("eps", 1e-5))

        return weight_rule_output(value, normalized, x, params, self.batchnorm_rule)

    # --- attention -------------------------------------------------------------

    def _softmax(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        x = args[0] if args else kwargs.get("input")
        if not _needs_relevance(x):
            return func(*args, **kwargs)
        with torch.no_grad():
            value = func(*args, **kwargs)
        self.softmax_outputs[id(value)] = weakref.ref(value)
        return value

    def _matmul(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        operands = [args[0], args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))]
        signals = [i for i, o in enumerate(operands) if _is_signal(o)]
        if len(signals) != 1 or not all(isinstance(o, Tensor) and o.is_floating_point() for o in operands):
            return func(*args, **kwargs)  # both input-dependent (q k^T): its softmax detaches the result
        i = signals[0]
        fixed = operands[1 - i].detach()
        with torch.no_grad():
            value = func(*args, **kwargs)

        def product(xi: Tensor, p: Mapping[str, Tensor]) -> Tensor:
            return func(xi, fixed) if i == 0 else func(fixed, xi)

        return z_rule_output(value, product, operands[i], {}, EpsilonRule(self.epsilon))

    def _sdpa(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        c = {name: args[i] if i < len(args) else kwargs.get(name, default)
             for i, (name, default) in enumerate(_SDPA_ARGS)}
        if not _needs_relevance(c["value"]):
            return func(*args, **kwargs)
        if c["dropout_p"] or c.get("enable_gqa"):
            raise NotImplementedError(
                "model: LRP's AH-rule for scaled_dot_product_attention needs dropout_p=0 and "
                "enable_gqa=False (put the model in eval mode)"
            )
        with torch.no_grad():
            value = func(*args, **kwargs)
            weights = _attention_weights(c["query"], c["key"], c["attn_mask"], c["is_causal"], c["scale"])
        through = weights @ input_part(c["value"], "all", False)
        return Relevance.apply(value, through, _stabilized(through, self.epsilon))

    def _mha(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        call = _MHA_SIGNATURE.bind(*args, **kwargs)
        call.apply_defaults()
        c = call.arguments
        if not _needs_relevance(c["value"]):
            return func(*args, **kwargs)
        _check_plain_attention(c)
        with torch.no_grad():
            out, returned_weights = func(*args, **kwargs)
            _, weights = func(**{**c, "need_weights": True, "average_attn_weights": False})
        through = _value_path(c, weights)
        return Relevance.apply(out, through, _stabilized(through, self.epsilon)), returned_weights


class _BatchNormValues:
    """An ``F.batch_norm`` call's statistics and affine parameters under a
    BatchNorm module's attribute names (what folding reads)."""

    def __init__(self, call: Mapping[str, Any]) -> None:
        if call.get("training", False) or call.get("running_mean") is None:
            raise ValueError(
                "model: a batch_norm folded by composite.batchnorm='fold' must run in eval mode "
                "with running statistics"
            )
        self.running_mean = call["running_mean"]
        self.running_var = call["running_var"]
        self.weight = call.get("weight")
        self.bias = call.get("bias")
        self.eps = call.get("eps", 1e-5)


def _is_signal(x: Any) -> bool:
    return _needs_relevance(x) and not isinstance(x, nn.Parameter)


def _signals(operands: Sequence[Any]) -> List[int]:
    """Indices of the operands that get a product's relevance: those that
    depend on the input (not parameters), the largest ones among them."""
    candidates = [i for i, o in enumerate(operands) if _is_signal(o)]
    if not all(isinstance(o, Tensor) and o.is_floating_point() or not isinstance(o, Tensor) for o in operands):
        return []
    if len(candidates) < 2:
        return candidates
    largest = max(operands[i].numel() for i in candidates)
    return [i for i in candidates if operands[i].numel() == largest]


def _detached(params: Mapping[str, Optional[Tensor]]) -> Dict[str, Tensor]:
    return {name: p.detach() for name, p in params.items() if isinstance(p, Tensor)}


def _attention_weights(query: Tensor, key: Tensor, mask: Optional[Tensor], is_causal: bool,
                       scale: Optional[float]) -> Tensor:
    """``softmax(q k^T * scale + mask)`` ``[..., L, S]``, as ``scaled_dot_product_attention``."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = query @ key.transpose(-2, -1) * scale
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1)


def check_attention_module(module: nn.MultiheadAttention, where: str) -> None:
    """Refuse, before any compute, an ``nn.MultiheadAttention`` whose
    settings the AH-rule does not support (``where`` names it)."""
    missing = [name for name, unsupported in (
        ("bias_k / bias_v", module.bias_k is not None),
        ("add_zero_attn", module.add_zero_attn),
        ("separate q/k/v projection weights (kdim/vdim)", not module._qkv_same_embed_dim),
    ) if unsupported]
    if missing:
        raise NotImplementedError(f"{where}: LRP's AH-rule for nn.MultiheadAttention does not support "
                                  + ", ".join(missing))


def _check_plain_attention(c: Mapping[str, Any]) -> None:
    """What the AH-rule of ``multi_head_attention_forward`` supports."""
    missing = [name for name, unsupported in (
        ("bias_k / bias_v", c["bias_k"] is not None or c["bias_v"] is not None),
        ("add_zero_attn", c["add_zero_attn"]),
        ("separate q/k/v projection weights", c["use_separate_proj_weight"]),
        ("static_k / static_v", c["static_k"] is not None or c["static_v"] is not None),
        ("dropout in training mode", c["training"] and c["dropout_p"] > 0),
        ("unbatched inputs", c["value"].dim() != 3),
    ) if unsupported]
    if missing:
        raise NotImplementedError(
            "model: LRP's AH-rule for nn.MultiheadAttention does not support " + ", ".join(missing)
        )


def _value_path(c: Mapping[str, Any], weights: Tensor) -> Tensor:
    """``out_proj(A · v_proj(value))`` ``[L, N, E]`` with the attention
    weights ``A`` ``[N, H, L, S]`` fixed, the relevance times the value."""
    value = input_part(c["value"], "all", False)
    embed, heads = c["embed_dim_to_check"], c["num_heads"]
    w_v = c["in_proj_weight"].detach()[2 * embed:]
    b_v = None if c["in_proj_bias"] is None else c["in_proj_bias"].detach()[2 * embed:]
    source, batch = value.shape[0], value.shape[1]
    v = F.linear(value, w_v, b_v).reshape(source, batch * heads, embed // heads).transpose(0, 1)
    mixed = torch.bmm(weights.reshape(batch * heads, weights.shape[-2], source), v)
    mixed = mixed.transpose(0, 1).reshape(weights.shape[-2], batch, embed)
    bias = None if c["out_proj_bias"] is None else c["out_proj_bias"].detach()
    return F.linear(mixed, c["out_proj_weight"].detach(), bias)
