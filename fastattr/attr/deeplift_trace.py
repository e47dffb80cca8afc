"""DeepLIFT's rules on the calls a forward makes, found by tracing it.

fastattr's own :func:`~fastattr.attr.deeplift.deeplift` runs the model on
``cat(rows, references)`` (``2n`` rows: row ``k`` is example ``k``, row
``n + k`` its reference) inside :class:`PairedRules`, a
``torch.overrides.TorchFunctionMode``. The mode sees every torch call of
that forward, whether a module makes it (``nn.ReLU`` calls ``F.relu``) or
the model's own code (``torch.relu``, ``x.sigmoid()``, ``a * b``), so each
call gets its rule with its own (input, reference) pairing: a functional
nonlinearity, or a module called several times, is explained as a module
called once is. Each rule is an autograd Function, so the backward applies
them in the graph's order (no tensor-hook ordering between neighbours).

Every rule is exact on differences, ``J · (x - r) = f(x) - f(r)`` per
example, so the chain of them conserves: the attributions of an example sum
to ``f(x) - f(r)`` (summation-to-delta) wherever every nonlinear call of
the forward is one of these and no ``|x - r| < eps`` fallback is taken:

* elementwise one-input functions (``relu``, ``relu6``/``hardtanh``,
  ``leaky_relu``, ``elu``, ``selu``, ``celu``, ``gelu``, ``silu``,
  ``mish``, ``hardswish``, ``hardsigmoid``, ``sigmoid``, ``tanh``,
  ``softplus``, ``logsigmoid``, ``exp``): the rescale rule, multiplier
  ``(f(x) - f(r)) / (x - r)``; where ``|x - r| < eps`` the ordinary
  derivative ``f'(x)`` of the row itself;
* ``max_pool1d/2d/3d``: Captum's max-pool rule (the output differences
  against the pair's elementwise max unpooled to each row's argmax, summed,
  over ``x - r``), with overlapping windows' contributions *added* at an
  input position (``F.max_unpool`` keeps one of them, losing the rest);
* the product of two paired tensors (``a * b``, gates such as
  squeeze-excitation's ``sigmoid(...) * x``): the Shapley split of the two
  factors, ``Δ(ab) = mean(b) Δa + mean(a) Δb`` with ``mean`` over the pair,
  which is exact (the "linear in one factor" choice, ``b(x) Δa + a(r) Δb``,
  is exact too but favours one factor; Shapley is symmetric); a batched
  ``a @ b`` of two paired tensors (attention's ``q k^T`` and ``w v``): the
  same split, exact because the product is bilinear;
* ``softmax``: ``exp(x - m) * reciprocal(sum)``, ``m`` one constant for
  both rows of a pair, each part by the rules above: exact;
* ``layer_norm``: ``c = x - mean(x)`` (affine), ``c * rsqrt(mean(c * c) +
  eps)`` by the rules above, then the affine weight and bias: exact;
* ``scaled_dot_product_attention`` (no dropout): ``softmax(q k^T * scale
  [+ mask]) v`` by the rules above; ``multi_head_attention_forward``
  (``nn.MultiheadAttention``) runs its body under the mode, so its
  projections, attention and softmax calls get their rules.

A call gets its rule where its operands are paired along their leading
dimension: the model's batch dimension, or one a model folded windows or
heads into (Swin's window partition makes it ``2n * windows``), which
:class:`~fastattr.attr.deeplift_pairs.PairLayout` follows through the
reshapes, permutes and indexing of the forward.

Everything else keeps its ordinary gradient, which is exact for affine
calls (linear, convolution, batch norm in eval mode, sums, average pooling,
reshapes, products with a parameter or a constant) and not for other
nonlinear ones (division by an activation, ``max`` / ``sort`` outside
max-pooling, normalizations other than layer norm computed from the batch,
custom autograd Functions): where a model has those, the completeness gap
is what they leave.

Exact rules do not make the float arithmetic well conditioned: a layer
norm whose reference row is nearly constant (a zero image through a
bias-only path) has ``rsqrt(var_r + eps) ~ 1/sqrt(eps)``; the two Shapley
terms then cancel by many orders of magnitude and float64 rounding shows
(timm ConvNeXt-atto against a zero image: sum |attributions| 4.5e12 for a
gap of 0.25, completeness to 1.9e-4; against a random reference 1e-15).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import types
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .deeplift_pairs import PairLayout, _Divisor, _pair_delta, _pairs, _unpairs

Handler = Callable[["PairedRules", Callable[..., Any], Tuple[Any, ...], Dict[str, Any]], Any]


def _pair_mean(t: Tensor) -> Tensor:
    """``[1, n, *F]``: the mean of each (input, reference) pair of ``t`` ``[2n, *F]``."""
    n = t.shape[0] // 2
    return ((t[:n] + t[n:]) * 0.5).unsqueeze(0)


def _local_derivative(call: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``f'(x)`` of an elementwise ``call`` at every entry of ``x``."""
    with torch.enable_grad():
        at = x.detach().requires_grad_()
        # on a copy: call may write into its input
        return torch.autograd.grad(call(at.clone()), at, torch.ones_like(at))[0]


class _Secant(torch.autograd.Function):
    """An elementwise ``call`` whose backward is the rescale multiplier
    ``Δy / Δx`` of its pair (the same for both rows), or the row's own
    ``f'(x)`` where ``|Δx| < eps``. ``call`` may write into its input (then
    the output is that input, marked dirty, as the call itself would be)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, call: Callable[[Tensor], Tensor], eps: float) -> Tensor:
        div = _Divisor.of(_pair_delta(x), eps)
        derivative = None if div.small is None else _pairs(_local_derivative(call, x))
        y = call(x)  # may write into x: its difference is taken above
        if y is x:
            ctx.mark_dirty(x)
        quotient = _pair_delta(y).div_(div.safe)
        ctx.multiplier = quotient if derivative is None else div.select(quotient, derivative)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None]:
        return _unpairs(_pairs(grad) * ctx.multiplier), None, None


class _ShapleyProduct(torch.autograd.Function):
    """``a * b`` of two paired tensors (same rank, broadcastable); backward
    ``grad * mean(b)`` to ``a`` and ``grad * mean(a)`` to ``b``, each summed
    back to its operand's shape. ``in_place``: ``a.mul_(b)``."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, in_place: bool) -> Tensor:
        ctx.mean_a, ctx.mean_b = _pair_mean(a), _pair_mean(b)
        ctx.shape_a, ctx.shape_b = a.shape, b.shape
        if in_place:
            ctx.mark_dirty(a)
            return a.mul_(b)
        return a * b

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, Tensor, None]:
        pairs = _pairs(grad)
        grad_a = _unpairs(pairs * ctx.mean_b).sum_to_size(ctx.shape_a)
        grad_b = _unpairs(pairs * ctx.mean_a).sum_to_size(ctx.shape_b)
        return grad_a, grad_b, None


class _ShapleyMatmul(torch.autograd.Function):
    """``a @ b`` of two paired batched matrices (``[2n, ..., i, k]`` and
    ``[2n, ..., k, j]``): the bilinear Shapley split, ``Δ(ab) = Δa mean(b) +
    mean(a) Δb``, exact; backward ``grad @ mean(b)^T`` and ``mean(a)^T @ grad``."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.mean_a, ctx.mean_b = _pair_mean(a), _pair_mean(b)
        ctx.shape_a, ctx.shape_b = a.shape, b.shape
        return a @ b

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, Tensor]:
        pairs = _pairs(grad)
        grad_a = _unpairs(pairs @ ctx.mean_b.transpose(-1, -2)).sum_to_size(ctx.shape_a)
        grad_b = _unpairs(ctx.mean_a.transpose(-1, -2) @ pairs).sum_to_size(ctx.shape_b)
        return grad_a, grad_b


class _PairedMaxPool(torch.autograd.Function):
    """A max pool (``pool(x) -> (values, flat spatial argmax)``) with the
    max-pool rule; overlapping windows add at an input position."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pool: Callable[[Tensor], Tuple[Tensor, Tensor]], eps: float) -> Tensor:
        out, indices = pool(x)
        pairs = _pairs(out)
        cross_max = torch.max(pairs[0], pairs[1])
        ctx.delta_out = torch.cat((cross_max - pairs[1], pairs[0] - cross_max))
        ctx.divisor = _Divisor.of(_pair_delta(x), eps)
        ctx.indices, ctx.x_shape = indices, x.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None]:
        unpooled = _pairs(_scatter_add_unpool(grad * ctx.delta_out, ctx.indices, ctx.x_shape))
        quotient = unpooled[:1].add_(unpooled[1:]).div_(ctx.divisor.safe)
        if ctx.divisor.small is not None:
            ordinary = _pairs(_scatter_add_unpool(grad, ctx.indices, ctx.x_shape))
            return _unpairs(ctx.divisor.select(quotient, ordinary)), None, None
        return _unpairs(quotient.expand(2, *quotient.shape[1:])), None, None


def _scatter_add_unpool(values: Tensor, indices: Tensor, shape: torch.Size) -> Tensor:
    """``values`` ``[N, C, *S_out]`` added at their flat spatial ``indices``
    into zeros ``shape`` ``[N, C, *S_in]`` (the max pool's own backward)."""
    flat = values.new_zeros(*shape[:2], math.prod(shape[2:]))
    flat.scatter_add_(2, indices.flatten(2), values.flatten(2))
    return flat.view(shape)


# ---------------------------------------------------------------------------
# The mode: which call gets which rule
# ---------------------------------------------------------------------------


class PairedRules(TorchFunctionMode):
    """DeepLIFT's rules on the calls of a forward over ``rows = 2n`` paired
    rows; a call on tensors not laid out that way (not paired along their
    leading dimension, see :class:`PairLayout`; no gradient) runs as it is."""

    def __init__(self, rows: int, eps: float) -> None:
        super().__init__()
        self.rows = rows
        self.eps = eps
        self.layout = PairLayout(rows)
        # Inside F.multi_head_attention_forward the heads are folded into
        # the leading dimension, example-major ([2n * heads, ...]: the first
        # half still holds the inputs' rows, the second the references').
        self.heads_folded = False

    def paired(self, t: Any) -> bool:
        """Whether ``t`` is one of this forward's paired activations."""
        if not (isinstance(t, Tensor) and t.requires_grad and t.dim() > 0 and not isinstance(t, torch.nn.Parameter)):
            return False
        lead = t.shape[0]
        return (lead == self.rows or (self.heads_folded and lead > 0 and lead % self.rows == 0)
                or self.layout.dim(t) == 0)

    def __torch_function__(self, func: Callable[..., Any], arg_types: Any, args: Tuple[Any, ...] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            return func(*args, **kwargs)
        handler = _HANDLERS.get(func)
        out = func(*args, **kwargs) if handler is None else handler(self, func, args, kwargs)
        # windows or heads folded into the batch dimension stay paired (Swin)
        self.layout.follow(func, args, kwargs, out)
        return out


def _elementwise(mode: PairedRules, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    if not args or not mode.paired(args[0]):
        return func(*args, **kwargs)
    x, rest = args[0], args[1:]
    return _Secant.apply(x, lambda t: func(t, *rest, **kwargs), mode.eps)


def _product(mode: PairedRules, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    if len(args) != 2 or kwargs:
        return func(*args, **kwargs)
    a, b = args
    if not (mode.paired(a) and mode.paired(b) and a.dim() == b.dim()):
        return func(*args, **kwargs)
    return _ShapleyProduct.apply(a, b, func in _IN_PLACE_PRODUCTS)


def _max_pool(mode: PairedRules, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    x = args[0] if args else None
    spatial = _POOL_DIMS[func]
    returns_indices = kwargs.get("return_indices", False) or (len(args) > 6 and bool(args[6]))
    if returns_indices or not mode.paired(x) or x.dim() != spatial + 2:
        return func(*args, **kwargs)
    with_indices = _WITH_INDICES[func]
    rest, options = args[1:6], {k: v for k, v in kwargs.items() if k != "return_indices"}
    return _PairedMaxPool.apply(x, lambda t: with_indices(t, *rest, **options), mode.eps)


def _matmul(mode: PairedRules, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    if len(args) != 2 or kwargs:
        return func(*args, **kwargs)
    a, b = args
    # batched on both sides: a 2-d operand's rows are not examples
    if not (mode.paired(a) and mode.paired(b) and a.dim() == b.dim() >= 3):
        return func(*args, **kwargs)
    return paired_matmul(a, b)


def _baddbmm(mode: PairedRules, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    """``torch.baddbmm(m, a, b)`` = ``m + a @ b`` (the masked scores of
    ``F.multi_head_attention_forward`` with ``need_weights``)."""
    if len(args) != 3 or kwargs or mode.paired(args[0]):
        return func(*args, **kwargs)
    m, a, b = args
    if not (mode.paired(a) and mode.paired(b)):
        return func(*args, **kwargs)
    return m + paired_matmul(a, b)


def paired_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` with the bilinear Shapley rule (both operands paired)."""
    return _ShapleyMatmul.apply(a, b)


def paired_softmax(x: Tensor, dim: int, eps: float) -> Tensor:
    """``softmax(x, dim)`` of a paired ``x`` from ruled parts: ``exp(x - m)``
    with ``m`` the larger of the pair's two maxima (one constant for both
    rows, so ``Δ(x - m) = Δx``), times the rescaled reciprocal of its sum
    (Shapley product): exact on differences."""
    peaks = _pairs(x.detach().amax(dim, keepdim=True))
    shared = torch.max(peaks[0], peaks[1])
    shift = torch.cat((shared, shared))
    # masked scores (-inf in both rows of a pair) would make the secant's
    # difference inf - inf; at the lowest finite value exp is 0 all the same
    e = _Secant.apply((x - shift).clamp(min=torch.finfo(x.dtype).min), torch.exp, eps)
    inverse = _Secant.apply(e.sum(dim, keepdim=True), torch.reciprocal, eps)
    return _ShapleyProduct.apply(e, inverse, False)


def _softmax(mode: PairedRules, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    x = args[0] if args else kwargs.get("input")
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    # F.softmax hands dim, _stacklevel and dtype on as keywords
    unknown = set(kwargs) - {"input", "dim", "_stacklevel", "dtype"} or len(args) > 2
    if (unknown or kwargs.get("dtype") is not None or not isinstance(dim, int) or not mode.paired(x)
            or x.dim() < 2):
        return func(*args, **kwargs)
    return paired_softmax(x, dim, mode.eps)


def _layer_norm(mode: PairedRules, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    bound = _LAYER_NORM_SIGNATURE.bind(*args, **kwargs).arguments
    x = bound["input"]
    if not mode.paired(x):
        return func(*args, **kwargs)
    dims = tuple(range(-len(bound["normalized_shape"]), 0))
    if x.dim() <= len(dims):  # the batch dimension normalized with the rest
        return func(*args, **kwargs)
    centred = x - x.mean(dims, keepdim=True)
    variance = _ShapleyProduct.apply(centred, centred, False).mean(dims, keepdim=True)
    ln_eps = bound.get("eps", 1e-5)
    inverse_std = _Secant.apply(variance, lambda t: torch.rsqrt(t + ln_eps), mode.eps)
    out = _ShapleyProduct.apply(centred, inverse_std, False)
    if bound.get("weight") is not None:
        out = out * bound["weight"]
    if bound.get("bias") is not None:
        out = out + bound["bias"]
    return out


def _attention(mode: PairedRules, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    """``F.scaled_dot_product_attention`` from ruled parts (no dropout, no
    grouped heads; else as it is)."""
    bound = _ATTENTION_SIGNATURE.bind(*args, **kwargs).arguments
    q, k, v = bound["query"], bound["key"], bound["value"]
    mask = bound.get("attn_mask")
    if (bound.get("dropout_p", 0.0) != 0.0 or bound.get("enable_gqa", False)
            or not all(mode.paired(t) for t in (q, k, v)) or not q.dim() == k.dim() == v.dim() >= 3
            or (mask is not None and bound.get("is_causal", False))):
        return func(*args, **kwargs)
    scale = bound.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    scores = paired_matmul(q, k.transpose(-2, -1)) * scale
    if bound.get("is_causal", False):
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None and mask.dtype == torch.bool:
        # finite: both rows of a pair masked alike give a difference of exactly 0
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min / 4)
    elif mask is not None:
        scores = scores + mask
    return paired_matmul(paired_softmax(scores, -1, mode.eps), v)


def _without_dispatch_check(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` whose own ``has_torch_function`` check answers False, so that
    its body runs under the mode (the calls it makes seen one by one)."""
    if func not in _UNDISPATCHED:
        names = {**func.__globals__, "has_torch_function": lambda *_: False}
        _UNDISPATCHED[func] = types.FunctionType(func.__code__, names, func.__name__, func.__defaults__,
                                                 func.__closure__)
        _UNDISPATCHED[func].__kwdefaults__ = func.__kwdefaults__
    return _UNDISPATCHED[func]


_UNDISPATCHED: Dict[Callable[..., Any], Callable[..., Any]] = {}


def _decomposed(mode: PairedRules, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    """A composite torch function (``F.multi_head_attention_forward``) run
    with the mode on, so that its inner calls get their rules."""
    folded, mode.heads_folded = mode.heads_folded, True
    try:
        with mode:
            return _without_dispatch_check(func)(*args, **kwargs)
    finally:
        mode.heads_folded = folded


_ELEMENTWISE = (
    torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu, F.relu_, F.relu6,
    F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_, F.selu, F.celu, F.gelu,
    F.silu, F.mish, F.hardswish, F.hardsigmoid, torch.sigmoid, torch.sigmoid_, torch.Tensor.sigmoid,
    torch.Tensor.sigmoid_, F.sigmoid, torch.tanh, torch.tanh_, torch.Tensor.tanh, torch.Tensor.tanh_,
    F.tanh, F.softplus, F.logsigmoid, torch.exp, torch.Tensor.exp, torch.rsqrt, torch.Tensor.rsqrt,
    torch.reciprocal, torch.Tensor.reciprocal,
)
_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm)
_SOFTMAXES = (F.softmax, torch.softmax, torch.Tensor.softmax)
_LAYER_NORM_SIGNATURE = inspect.signature(F.layer_norm)
_ATTENTION_SIGNATURE = inspect.Signature([
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
    for name, default in (("query", inspect.Parameter.empty), ("key", inspect.Parameter.empty),
                          ("value", inspect.Parameter.empty), ("attn_mask", None), ("dropout_p", 0.0),
                          ("is_causal", False), ("scale", None), ("enable_gqa", False))
])
_PRODUCTS = (torch.mul, torch.multiply, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.mul_,
             torch.Tensor.__imul__)
_IN_PLACE_PRODUCTS = frozenset((torch.Tensor.mul_, torch.Tensor.__imul__))
_POOL_DIMS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3}
_WITH_INDICES = {F.max_pool1d: F.max_pool1d_with_indices, F.max_pool2d: F.max_pool2d_with_indices,
                 F.max_pool3d: F.max_pool3d_with_indices}

_HANDLERS: Dict[Callable[..., Any], Handler] = {
    **{f: _elementwise for f in _ELEMENTWISE},
    **{f: _product for f in _PRODUCTS},
    **{f: _max_pool for f in _POOL_DIMS},
    **{f: _matmul for f in _MATMULS},
    **{f: _softmax for f in _SOFTMAXES},
    F.layer_norm: _layer_norm,
    F.scaled_dot_product_attention: _attention,
    F.multi_head_attention_forward: _decomposed,
    torch.baddbmm: _baddbmm,
}

# eps of the traced rules while a deeplift call runs them (None: not traced)
_TRACED_EPS: "contextvars.ContextVar[Optional[float]]" = contextvars.ContextVar("fastattr_deeplift_traced_eps",
                                                                                 default=None)


@contextlib.contextmanager
def traced_rules(eps: float) -> Iterator[None]:
    """The engine's ``Request.rules`` for fastattr's DeepLIFT: while open,
    each paired forward (:func:`paired_forward`) runs in :class:`PairedRules`."""
    token = _TRACED_EPS.set(eps)
    try:
        yield
    finally:
        _TRACED_EPS.reset(token)


def paired_forward(rows: int) -> contextlib.AbstractContextManager:
    """The context a paired forward over ``rows`` rows runs in: the traced
    rules inside :func:`traced_rules`, else nothing."""
    eps = _TRACED_EPS.get()
    return contextlib.nullcontext() if eps is None else PairedRules(rows, eps)


def traced_rules_factory(eps: float) -> Callable[[], contextlib.AbstractContextManager]:
    """A ``Request.rules`` factory for :func:`traced_rules`."""
    return functools.partial(traced_rules, eps)
