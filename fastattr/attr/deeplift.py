"""DeepLIFT with the rescale rule (Shrikumar et al. 2017), with Captum 0.9's
``DeepLift`` arguments.

Each example ``x`` is compared with its reference (baseline) ``r``: both go
through one forward (layout below), and the backward of each nonlinear
call is replaced by its DeepLIFT multiplier. Two ways to find the calls:

* by default, by tracing the forward (:mod:`fastattr.attr.deeplift_trace`):
  every call of the forward gets its rule, functional or not, a module
  called several times once per call, and products, softmax, layer norm
  and attention get exact rules, so that the attributions sum to
  ``f(x) - f(r)`` per example on ResNets, MobileNets, EfficientNets, ViTs;
* with ``captum_hooks=True``, Captum's way and numbers (what
  ``fastattr.captum.DeepLift`` runs): tensor hooks on the modules of
  Captum's ``SUPPORTED_NON_LINEAR`` types (exact type), via
  :mod:`fastattr.attr.relu_rules`:

  - ``nn.ReLU``, ``nn.ELU``, ``nn.LeakyReLU``, ``nn.Sigmoid``, ``nn.Tanh``,
    ``nn.Softplus``: ``grad_out * (f(x) - f(r)) / (x - r)``, the ordinary
    gradient where ``|x - r| < eps``;
  - ``nn.MaxPool1d/2d/3d``: the output differences (against the
    elementwise max of the two pooled outputs) unpooled to the argmax
    positions of input and reference, summed, divided by ``x - r``;
  - ``nn.Softmax``: the rescale multiplier minus its mean over the whole
    batch (Captum normalizes over every row of the call, so a model with
    an ``nn.Softmax`` is explained in one chunk).

  Functional nonlinearities (``torch.relu``...) and other modules keep
  their ordinary gradient. A rescaled module call with no ``|x - r| < eps``
  replaces its whole gradient, so its own backward is skipped
  (:class:`fastattr.attr.relu_rules.BackwardRule`). When a hooked module
  feeds another directly (ReLU -> MaxPool, the ResNet stem), the first
  one's output hook runs before the second's input hook on the same
  tensor, so its rescale branch sees the second's *ordinary* gradient
  while autograd goes on with the rescaled one: Captum's numbers keep that
  (their convergence deltas on such nets are not ~0), and so do these.

Layout: the engine's rows are the examples (a single-point plan); the model
handed to the engine (one object per model, so that what the engine
measures per model object is reused) puts the rows' references after them,
``[x_0, ..., x_{n-1}, r_0, ..., r_{n-1}]``, runs the real model on the ``2n``
rows and seeds the target output of both: Captum's forward over
``cat(inputs, baselines)``, the same batch, so that a chunk holding the
whole batch rounds as Captum's forward does (a float32 model with large
activations amplifies a different row order's rounding visibly). The references reach the closure
through ``additional_args``, which the engine index-selects per row. A
``[input, reference]`` two-point path plan would need ``whole_examples`` and
would generate the input row as ``r + 1 * (x - r)``, which is not ``x`` in
floating point: DeepLIFT divides by ``x - r``, so that rounding would show.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
import weakref
from numbers import Real
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _validate as v
from ..engine import Request, run, single_point_plan
from ._call import build_request, shape_output
from .integrated_gradients import delta_dtype
from .deeplift_pairs import _Divisor, _pair_delta, _pairs, _unpairs
from .deeplift_trace import paired_forward, traced_rules_factory
from .relu_rules import BackwardRule, ModuleCall, backward_rules, require_module, submodules

CustomAttributionFunc = Callable[..., Tuple[Tensor, ...]]


# ---------------------------------------------------------------------------
# Rules on paired rows: row k is example k's input, row n + k its reference
# ---------------------------------------------------------------------------


class _PairRule(BackwardRule):
    """A DeepLIFT rule: the ordinary gradient where ``|x - r| < eps``."""

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def prepare(self, module: nn.Module, inp: Tensor) -> _Divisor:
        return _Divisor.of(_pair_delta(inp.detach()), self.eps)


class _Rescale(_PairRule):
    """Captum's ``nonlinear`` rule on pairs, tensors ``[2n, *F]``: ``grad_out
    * delta_out / delta_in``, the same for both rows of a pair, or the
    ordinary gradient where ``|delta_in| < eps``."""

    def needs_grad_input(self, prepared: _Divisor) -> bool:
        return prepared.small is not None  # the ordinary gradient is kept there

    def record(self, module: nn.Module, inp: Tensor, out: Tensor, prepared: _Divisor
               ) -> Tuple[_Divisor, Tensor]:
        return prepared, _pair_delta(out.detach())

    def rescaled(self, call: ModuleCall, grad_input: Tensor) -> Tensor:
        """``[2, n, *F]``."""
        div, delta_out = call.values
        # In place on the product, this call's own: one new tensor, not two.
        quotient = (_pairs(call.grad_output) * delta_out).div_(div.safe)
        return div.select(quotient, _pairs(grad_input))

    def replace(self, call: ModuleCall, grad_input: Tensor) -> Tensor:
        return _unpairs(self.rescaled(call, grad_input))


class _SoftmaxRescale(_Rescale):
    """The rescale gradient minus its mean over all ``2n`` rows (Captum's
    ``softmax``: the mean is over the whole call, not per example)."""

    def replace(self, call: ModuleCall, grad_input: Tensor) -> Tensor:
        unnorm = _unpairs(self.rescaled(call, grad_input))
        return unnorm - unnorm.sum() * 1 / grad_input.numel()


_POOLS: Dict[Type[nn.Module], Tuple[Callable[..., Any], Callable[..., Tensor]]] = {
    nn.MaxPool1d: (F.max_pool1d, F.max_unpool1d),
    nn.MaxPool2d: (F.max_pool2d, F.max_unpool2d),
    nn.MaxPool3d: (F.max_pool3d, F.max_unpool3d),
}


def _pool_indices(mod: nn.Module, inp: Tensor, out: Tensor) -> Tensor:
    """The argmax indices of the pooling that made ``out``: the pool's
    autograd node holds them (2-d and 3-d pools); else pooled again."""
    saved = getattr(out.grad_fn, "_saved_result1", None)
    if isinstance(saved, Tensor) and saved.shape == out.shape and saved.dtype == torch.int64:
        return saved
    with torch.no_grad():
        return _POOLS[type(mod)][0](inp, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                                    mod.ceil_mode, True)[1]


def _unpool(mod: nn.Module, values: Tensor, indices: Tensor, shape: List[int]) -> Tensor:
    """``values`` scattered to ``indices`` in zeros shaped like the pool's
    input (``shape``). For 2-d pools the op itself: ``F.max_unpool2d`` only
    derives and checks that size, which costs about a third of the op on a
    small input."""
    if type(mod) is nn.MaxPool2d:
        return torch._C._nn.max_unpool2d(values, indices, shape[-2:])
    return _POOLS[type(mod)][1](values, indices, mod.kernel_size, mod.stride, mod.padding, shape)


class _MaxPool(_PairRule):
    """Captum's ``maxpool`` rule on pairs, tensors ``[2n, C, *S]``: the output
    differences (against the elementwise max of the pair's pooled outputs)
    unpooled to each row's argmax, summed over the pair, over ``delta_in``.

    Where ``|delta_in| < eps`` Captum takes ``grad_input[0]`` (example 0's
    ordinary gradient, broadcast to every row); here each row takes its own.
    The pool keeps its own backward (the default ``needs_grad_input``): its
    autograd node holds the argmax indices the rule unpools to.
    """

    def record(self, module: nn.Module, inp: Tensor, out: Tensor, prepared: _Divisor
               ) -> Tuple[_Divisor, Tensor, Tensor, List[int]]:
        pairs = _pairs(out.detach())
        cross_max = torch.max(pairs[0], pairs[1])
        delta_out = torch.cat((cross_max - pairs[1], pairs[0] - cross_max))
        return prepared, delta_out, _pool_indices(module, inp.detach(), out), list(inp.shape)

    def replace(self, call: ModuleCall, grad_input: Tensor) -> Tensor:
        div, delta_out, indices, shape = call.values
        unpooled = _pairs(_unpool(call.module, call.grad_output * delta_out, indices, shape))
        # In place on the unpooled tensor, this call's own: no new tensors.
        quotient = unpooled[:1].add_(unpooled[1:]).div_(div.safe)
        return _unpairs(div.select(quotient, _pairs(grad_input)))


# exact module type -> its rule given eps (Captum's SUPPORTED_NON_LINEAR)
RULES: Dict[Type[nn.Module], Callable[[float], _PairRule]] = {
    nn.ReLU: _Rescale,
    nn.ELU: _Rescale,
    nn.LeakyReLU: _Rescale,
    nn.Sigmoid: _Rescale,
    nn.Tanh: _Rescale,
    nn.Softplus: _Rescale,
    nn.MaxPool1d: _MaxPool,
    nn.MaxPool2d: _MaxPool,
    nn.MaxPool3d: _MaxPool,
    nn.Softmax: _SoftmaxRescale,
}


def hooked_modules(model: nn.Module) -> List[nn.Module]:
    """The modules DeepLIFT replaces the backward of: those whose exact type
    has a rule and that carry no backward hook already (Captum skips those)."""
    found = []
    for mod in submodules(model):
        if type(mod) not in RULES or len(mod._backward_hooks) > 0:
            continue
        if getattr(mod, "return_indices", False):
            name = next(n for n, m in model.named_modules() if m is mod)
            raise ValueError(
                f"model: module {name or '<root>'!r} ({type(mod).__name__}) has "
                "return_indices=True; DeepLIFT's max-pool rule needs it to return one tensor"
            )
        found.append(mod)
    return found


def deeplift_rules(modules: Sequence[nn.Module], eps: float) -> Callable[[], ContextManager[None]]:
    """A ``Request.rules`` factory installing the rescale rules on ``modules``."""
    return functools.partial(backward_rules, [(m, RULES[type(m)](eps)) for m in modules])


# ---------------------------------------------------------------------------
# The model the engine sees: each row explained beside its reference
# ---------------------------------------------------------------------------


class _InputRowsOutput(torch.autograd.Function):
    """``[2, n, *O]`` paired outputs -> ``[n, *O]`` the input rows' outputs.
    The backward gives both rows of a pair the same gradient: Captum selects
    the target on input and reference rows alike, and the max-pool rule mixes
    the two."""

    @staticmethod
    def forward(ctx: Any, paired: Tensor) -> Tensor:
        return paired[0].clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.unsqueeze(0).expand(2, *grad.shape)


class _BesideReferences:
    """``f(*rows, *reference_rows, *args)`` for the engine: the model's output
    at ``rows`` (``[n, *O]``). With autograd on (or ``always_paired``), the
    model runs on the ``2n`` rows ``cat(rows, references)``, so the rules
    pair them; without (the convergence-delta endpoints), on ``rows`` alone.
    ``always_paired`` is for a caller that runs it without autograd up to a
    layer where the gradient is taken (layer DeepLIFT)."""

    def __init__(self, model: nn.Module, n_inputs: int, always_paired: bool = False) -> None:
        self._model = weakref.ref(model)  # cached per model: must not keep it alive
        self.n_inputs = n_inputs
        self.always_paired = always_paired

    @property
    def model(self) -> Optional[nn.Module]:
        """The model it runs (what the engine's train-mode guard looks behind wrappers for)."""
        return self._model()

    def __call__(self, *args: Any) -> Tensor:
        model, k = self._model(), self.n_inputs
        rows, refs, rest = args[:k], args[k:2 * k], args[2 * k:]
        if not (self.always_paired or torch.is_grad_enabled()):
            return model(*rows, *rest)
        n = rows[0].shape[0]
        paired = tuple(torch.cat((x, r)) for x, r in zip(rows, refs))
        paired_args = tuple(
            torch.cat((a, a)) if isinstance(a, Tensor) and a.dim() > 0 else a for a in rest
        )
        with paired_forward(2 * n):
            out = model(*paired, *paired_args)
        if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != 2 * n:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"model output: expected shape [{2 * n}, ...] (one entry per row) for {2 * n} rows "
                f"({n} inputs and their baselines), got {got}"
            )
        return _InputRowsOutput.apply(_pairs(out))


_BESIDE: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple[int, bool], _BesideReferences]]" = weakref.WeakKeyDictionary()


def beside_references(model: nn.Module, n_inputs: int, always_paired: bool = False) -> Callable[..., Tensor]:
    """The engine's model for ``model`` with ``n_inputs`` inputs (see
    :class:`_BesideReferences`). The same object on every call: the engine
    caches the activation bytes it measures per model object, and measuring
    again costs a saved-tensor hook per saved tensor."""
    per_model = _BESIDE.setdefault(model, {})
    key = (n_inputs, always_paired)
    if key not in per_model:
        per_model[key] = _BesideReferences(model, n_inputs, always_paired)
    return per_model[key]


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_eps(eps: Any) -> float:
    if type(eps) is float and math.isfinite(eps) and eps >= 0:  # the usual case, before the ABC check
        return eps
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_custom_func(func: Any) -> Optional[Callable[..., Any]]:
    """None, or ``call(multipliers, inputs, baselines)`` passing ``func`` the
    first 1-3 of those, as many as it takes (Captum's
    ``_call_custom_attribution_func``)."""
    if func is None:
        return None
    if not callable(func):
        raise TypeError(f"custom_attribution_func: expected a callable, got {type(func).__name__}")
    n = len(inspect.signature(func).parameters)
    if not 1 <= n <= 3:
        raise ValueError(
            "custom_attribution_func: must take 1 to 3 arguments (multipliers, inputs, "
            f"baselines), takes {n}"
        )
    return lambda *args: func(*args[:n])


def _one_chunk(req: Request, memory_budget: Optional[int]) -> Request:
    """``req`` evaluated in one chunk (a model with ``nn.Softmax``, whose rule
    normalizes over the whole batch); refuses chunking the caller asked for."""
    batch = req.inputs[0].shape[0]
    if req.chunk_rows is not None and req.chunk_rows < batch:
        raise ValueError(
            f"chunk_rows: must be None or >= the batch size {batch} for a model with "
            "nn.Softmax (DeepLIFT's Softmax rule normalizes over the whole batch), "
            f"got {req.chunk_rows}"
        )
    if memory_budget is not None:
        raise ValueError(
            "memory_budget: must be None for a model with nn.Softmax (DeepLIFT's Softmax "
            "rule normalizes over the whole batch, so the batch is one chunk)"
        )
    return dataclasses.replace(req, memory_budget=sys.maxsize, chunk_rows=None)


def _row_sums(tensors: Sequence[Tensor]) -> Tensor:
    """float64 ``[B]``: per-example sum over every element of every tensor."""
    return sum(t.reshape(t.shape[0], -1).sum(1, dtype=torch.float64) for t in tensors)


# ---------------------------------------------------------------------------
# The explainer
# ---------------------------------------------------------------------------


def deeplift(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    baselines: v.BaselineType = None,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    custom_attribution_func: Optional[CustomAttributionFunc] = None,
    multiply_by_inputs: bool = True,
    eps: float = 1e-10,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    *,
    captum_hooks: bool = False,
) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
    """DeepLIFT (rescale rule) of ``model(inputs)[:, target]`` against
    ``baselines``, with Captum's ``DeepLift.attribute`` arguments.

    By default the rules go on every call the forward makes
    (:mod:`fastattr.attr.deeplift_trace`): functional nonlinearities, modules
    called several times, products of two activations; the attributions sum
    to ``f(x) - f(baseline)`` where the model's nonlinear calls all have a
    rule. ``captum_hooks=True`` gives Captum 0.9's numbers instead (module
    hooks on its nonlinearity types, in its hook order; what
    ``fastattr.captum.DeepLift`` runs).

    Args:
        model: an ``nn.Module`` taking the inputs (and
            ``additional_forward_args``) and returning ``[N, C]`` (or ``[N]``
            with ``target=None``) for ``N`` rows; with ``captum_hooks`` each
            supported nonlinearity module may be called once per forward.
        inputs: ``[B, *F]`` or a tuple of such tensors.
        baselines: None (zeros), a number, a tensor broadcastable to the input
            (``[*F]``, ``[1, *F]``, ``[B, *F]``), or a tuple of those per input.
        target: class index (int), one per example (list / int tensor ``[B]``),
            or None for a single-output model.
        additional_forward_args: extra model arguments; tensors with a batch
            dimension are given per row.
        return_convergence_delta: also return ``[B]`` deltas
            ``sum(attributions) - (f(x)[t] - f(baseline)[t])``.
        custom_attribution_func: ``f(multipliers)``, ``f(multipliers, inputs)``
            or ``f(multipliers, inputs, baselines)`` (tuples of ``[B, *F]``
            tensors) returning the attributions as a tuple; replaces
            ``multipliers * (inputs - baselines)``.
        multiply_by_inputs: multiply the multipliers by ``inputs - baselines``
            (global attribution) or return them as they are (local); ignored
            with ``custom_attribution_func``, as in Captum.
        eps: below this ``|x - r|`` a nonlinearity keeps its ordinary gradient.
        memory_budget: bytes one chunk may use (must be None for a model with
            ``nn.Softmax`` under ``captum_hooks``).
        chunk_rows: optional cap on the examples per chunk (one chunk holds
            each example and its reference: ``2 * chunk_rows`` model rows).
        captum_hooks: Captum's module hooks and numbers (see above).

    Returns:
        Attributions shaped and typed like ``inputs``; with
        ``return_convergence_delta`` a pair ``(attributions, delta [B])``.
    """
    require_module(model, "deeplift")
    eps = _check_eps(eps)
    custom = _check_custom_func(custom_attribution_func)
    if not isinstance(captum_hooks, bool):
        raise TypeError(f"captum_hooks: expected a bool, got {type(captum_hooks).__name__}")
    modules = hooked_modules(model) if captum_hooks else []
    transform = "times_input_minus_baseline" if multiply_by_inputs and custom is None else "grad"
    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args,
        lambda xs: single_point_plan(transform),
        memory_budget, chunk_rows,
        baselines=baselines, needs_baselines=True,
        want_deltas=bool(return_convergence_delta),
        rules=deeplift_rules(modules, eps) if captum_hooks else traced_rules_factory(eps),
    )
    if any(type(m) is nn.Softmax for m in modules):
        req = _one_chunk(req, memory_budget)
    batch = req.inputs[0].shape[0]
    references = tuple(b.expand(batch, *b.shape[1:]) for b in req.baselines)
    # The request is this call's own: set its fields rather than copy it.
    req.model = beside_references(model, len(req.inputs))
    req.additional_args = (*references, *req.additional_args)
    result = run(req)
    if custom is None:
        attributions = shape_output(result.mean, req.inputs, was_tuple)
        deltas = result.deltas
    else:
        multipliers = tuple(m.to(x.dtype) for m, x in zip(result.mean, req.inputs))
        # Fresh tensors: the caller's function may write into them, and
        # constant baselines are cached.
        full_baselines = tuple(r.clone(memory_format=torch.contiguous_format) for r in references)
        custom_attrs = custom(multipliers, req.inputs, full_baselines)
        attributions = _check_custom_output(custom_attrs, req.inputs, was_tuple)
        deltas = None
        if return_convergence_delta:
            # The engine's deltas are sum(multipliers) - (f(x) - f(r)); swap the sums.
            deltas = result.deltas - _row_sums(result.mean) + _row_sums(
                attributions if was_tuple else (attributions,))
    if return_convergence_delta:
        return attributions, deltas.to(delta_dtype(req.inputs[0]))
    return attributions


def _check_custom_output(out: Any, inputs: Tuple[Tensor, ...], was_tuple: bool) -> v.TensorOrTuple:
    """The custom function's tuple of ``[B, ...]`` tensors, one per input;
    unwrapped when the inputs were a single tensor."""
    if not isinstance(out, tuple) or len(out) != len(inputs) or not all(
        isinstance(a, Tensor) and a.dim() >= 1 and a.shape[0] == x.shape[0]
        for a, x in zip(out, inputs)
    ):
        raise TypeError(
            f"custom_attribution_func: expected it to return a tuple of {len(inputs)} tensors "
            f"with {inputs[0].shape[0]} rows (one per input), got {type(out).__name__}"
        )
    return out if was_tuple else out[0]
