"""The form of the model the chunk rows run through: the caller's model as it
is (``"eager"``), a rewritten copy that computes the same function faster
(``"fast"``), or that copy compiled with ``torch.compile`` (``"compiled"``).

``"fast"`` copies the model (``copy.deepcopy``; the caller's model, its
parameters, buffers, hooks, ``requires_grad`` flags and mode are never
touched), reads its forward as a graph (``torch.fx.symbolic_trace``) and:

* folds every eval-mode ``BatchNorm{1,2,3}d`` whose input is the output of a
  ``Conv{1,2,3}d`` (or ``Linear``, for 2-D rows) used nowhere else into that
  layer's weight and bias, computed in float64 and rounded once;
* where the model has 2-D convolutions, puts the copy's weights and the 4-D
  rows in ``channels_last`` (oneDNN's and cuDNN's faster layout).

Both are exact rewrites: the result differs from eager by float rounding
only. Before a copy is used for rows of a new input signature, it runs the
inputs' first row next to the caller's model (one forward without autograd)
and a float64 copy, and is used only if its error against float64 is within
:data:`CHECK_FACTOR` times eager's own (so a model the rewrite does not
understand runs as it is). A model the rewrite cannot take
(not an ``nn.Module``, a module in train mode, hooks, a forward ``torch.fx``
cannot trace, nothing to rewrite) runs eagerly, and :class:`ModelForm` says why.

``"compiled"`` compiles that copy (or a plain copy where no rewrite applies)
with ``torch.compile(dynamic=False)``, ``mode="reduce-overhead"`` (CUDA graphs)
on CUDA. One compiled graph serves one chunk size: the loop says which
(:meth:`ModelForm.serve_rows`) once it has measured the model, and every
other call (the measuring chunk, the last, shorter chunk, forwards of the
convergence delta) runs the uncompiled copy. The first call of a served size
pays the compilation (tens of seconds for a ResNet on a CPU).

The rewritten copy is cached per caller's model (weakly), its check and
compiled graphs per input signature (features, dtype, device); all are made
again when the model's modules, parameters or buffers change (identity,
storage or version counter: an optimizer step, ``load_state_dict``,
``model.to``). Changes made through ``.data`` or to plain attributes
(``bn.eps``) are not seen.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import weakref
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree

from .outputs import per_example_flags

FORMS = ("eager", "fast", "compiled")

# A rewritten copy is kept when its error against float64 on the example row
# is at most this many times the eager model's own (or the dtype's epsilon
# times the output's size, when eager happens to be exact). A rewrite that
# changes only rounding stays within a few times eager's error (ResNet-18's
# channels-last kernels: about twice); one that changes the function (a fold
# that does not apply, a layout a view cannot take) is off by the output's
# own size, orders of magnitude beyond. A guard against gross errors, wide
# enough never to turn a correct rewrite away on one row's luck.
CHECK_FACTOR = 16

_CONV_BATCH_NORM = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}

# Why a request's method keeps the caller's model whatever the form: its
# hooks sit on the caller's modules.
RULES_REASON = "the method's backward rules are hooks on the caller's modules"
LEAVES_REASON = "the method takes a layer's values with hooks on the caller's modules"


class CompiledForward:
    """Calls the compiled model on the chunk sizes it serves (with autograd
    on or off, as served) and the uncompiled one on every other call, so that
    one compilation serves a whole call and later calls."""

    def __init__(self, base: nn.Module, device: torch.device):
        self.base = base
        mode = "reduce-overhead" if device.type == "cuda" else None
        self.compiled = torch.compile(base, dynamic=False, mode=mode)
        self.reuses_outputs = mode == "reduce-overhead"
        self.served: Set[Tuple[int, bool]] = set()
        self.failure: Optional[str] = None

    def serve(self, rows: int, grad: bool) -> None:
        self.served.add((rows, grad))

    def __call__(self, *args: Any) -> Any:
        rows = args[0].shape[0] if args and isinstance(args[0], Tensor) else -1
        if self.failure is not None or (rows, torch.is_grad_enabled()) not in self.served:
            return self.base(*args)
        try:
            return self.compiled(*args)
        except Exception as exc:  # a compiler that fails (no C++ toolchain...): the copy, and say why
            self.failure = f"torch.compile failed ({_first_line(exc)})"
            return self.base(*args)


@dataclasses.dataclass(frozen=True)
class ModelForm:
    """What the chunk loop calls, and why it is not the form asked for.

    ``model`` is called like the caller's model (``model(*rows, *args)``).
    ``form`` is the form it is; ``reason`` says why that is not ``requested``
    (None when it is). ``own_storages``: storage pointers of the copy's
    parameters and buffers, which the loop's activation meter leaves out."""

    model: Callable[..., Any]
    requested: str
    form_built: str
    reason_built: Optional[str] = None
    own_storages: FrozenSet[int] = frozenset()
    compiled: Optional[CompiledForward] = None

    @property
    def form(self) -> str:
        if self.compiled is not None and self.compiled.failure is not None:
            return "fast" if isinstance(self.compiled.base, _FastForward) else "eager"
        return self.form_built

    @property
    def reason(self) -> Optional[str]:
        if self.compiled is not None and self.compiled.failure is not None:
            return self.compiled.failure
        return self.reason_built

    @property
    def reuses_outputs(self) -> bool:
        """Whether tensors from one call are overwritten by the next (CUDA
        graphs): the loop copies what it keeps across chunks."""
        return self.compiled is not None and self.compiled.reuses_outputs

    def serve_rows(self, rows: int, grad: bool = True) -> None:
        """Run calls of ``rows`` rows (with autograd on, or off) compiled; no-op unless compiled."""
        if self.compiled is not None:
            self.compiled.serve(rows, grad)


# How the reason starts where the model has nothing to rewrite: eager *is* its fast form.
NO_REWRITE = "no rewrite applies"


def check_model_form(form: Any) -> str:
    """``form`` if it is one of :data:`FORMS`, else a ValueError naming ``model_form``."""
    if not isinstance(form, str) or form not in FORMS:
        raise ValueError(f"model_form: expected one of {', '.join(map(repr, FORMS))}, got {form!r}")
    return form


def eager(model: Callable[..., Any], requested: str, reason: Optional[str] = None) -> ModelForm:
    """The caller's model as it is; ``reason``: why not the ``requested`` form."""
    return ModelForm(model, requested, "eager", reason if requested != "eager" else None)


def request_form(req: Any) -> ModelForm:
    """The form of a :class:`~fastattr.engine.loop.Request`'s model: its
    ``model_form``, or eager when its method hooks the caller's modules
    (``rules``, ``leaves``) or it has no rows."""
    form = getattr(req, "model_form", "eager")
    if form == "eager":
        return eager(req.model, form)
    if req.rules is not None:
        return eager(req.model, form, RULES_REASON)
    if req.leaves is not None:
        return eager(req.model, form, LEAVES_REASON)
    return model_in_form(req.model, form, req.inputs, req.additional_args)


def model_in_form(model: Callable[..., Any], form: str, inputs: Sequence[Tensor],
                  additional_args: Sequence[Any] = ()) -> ModelForm:
    """``model`` in ``form`` for rows shaped like ``inputs`` (each ``[B, *F_i]``;
    their features, dtype and device key the cache, and their first row checks
    a rewrite), called with ``additional_args`` (as the engine formats them);
    eager with the reason where the form does not apply."""
    check_model_form(form)
    if form == "eager":
        return eager(model, form)
    if not isinstance(model, nn.Module):
        return eager(model, form, f"the model is a {type(model).__name__}, not an nn.Module to copy")
    if isinstance(model, torch.jit.ScriptModule):
        return eager(model, form, "a TorchScript module: torch.fx cannot trace it")
    fingerprint = _fingerprint(model)
    if fingerprint is None:
        return eager(model, form, _blocker(model))
    if any(x.shape[0] == 0 for x in inputs):
        return eager(model, form, "no rows")
    entry = _entry(model, fingerprint)
    sig = _signature(inputs)
    reason = entry.fast_reason
    if entry.fast is not None:
        if sig not in entry.checked:  # the rewrite, checked on this signature's first row
            entry.checked[sig] = _check(entry.fast, model, inputs, additional_args)
        reason = entry.checked[sig]
    if form == "fast":
        if reason is not None:
            return eager(model, form, reason)
        return ModelForm(entry.fast, form, "fast", None, _storages(entry.fast))
    base = entry.fast if reason is None else entry.plain_copy(model)
    if base is None:
        return eager(model, form, entry.copy_failure)
    compiled = entry.compiled.get(sig)
    if compiled is None or compiled.base is not base:
        compiled = entry.compiled[sig] = CompiledForward(base, inputs[0].device)
    return ModelForm(compiled, form, "compiled", None, _storages(base), compiled)


# ---------------------------------------------------------------- what blocks a copy


_HOOK_KINDS = (("_forward_pre_hooks", "forward pre-hook"), ("_forward_hooks", "forward hook"),
               ("_backward_pre_hooks", "backward pre-hook"), ("_backward_hooks", "backward hook"))


def _global_hooks() -> bool:
    glob = nn.modules.module
    return bool(glob._global_forward_pre_hooks or glob._global_forward_hooks or glob._global_backward_hooks
                or getattr(glob, "_global_backward_pre_hooks", None))


def _blocker(model: nn.Module) -> Optional[str]:
    """Why a copy of ``model`` would not compute what ``model`` does, or None."""
    if _global_hooks():
        return "global module hooks are registered (torch.nn.modules.module.register_module_*_hook)"
    for name, m in model.named_modules():
        if m.training:
            return f"module {name or type(m).__name__!r} is in train mode (call model.eval())"
        kinds = [kind for attr, kind in _HOOK_KINDS if getattr(m, attr, None)]
        if kinds:
            return f"module {name or type(m).__name__!r} has hooks ({', '.join(kinds)}) that a copy would not run"
    return None


Fingerprint = Tuple[Tuple[Any, ...], Tuple[Any, ...]]


def _fingerprint(model: nn.Module) -> Optional[Fingerprint]:
    """What a copy goes stale with, as ``(structure, values)``: every
    module's identity and every parameter's and buffer's identity, dtype,
    device and shape (a change rebuilds the copy); their storages and
    version counters (a change refreshes the copy's weights in place, see
    :func:`_refresh`). None when a module is in train mode or has hooks
    (:func:`_blocker` says which). One walk over the modules' own dicts, on
    every call (a hook or ``model.train()`` may come and go between calls):
    ``named_modules`` and ``parameters`` take several times longer."""
    if _global_hooks():
        return None
    structure: List[Any] = []
    values: List[Any] = []
    stack = [model]
    while stack:
        m = stack.pop()
        if (m.training or m._forward_pre_hooks or m._forward_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None)):
            return None
        structure.append(id(m))
        for tensors in (m._parameters, m._buffers):
            for t in tensors.values():
                if t is not None:
                    structure.append((id(t), t.dtype, t.device, t.shape))
                    values.append((t.data_ptr(), t._version))
        stack.extend(c for c in m._modules.values() if c is not None)
    return tuple(structure), tuple(values)


def _architecture(model: nn.Module) -> Tuple[Any, ...]:
    """``model``'s structure without identities: every module's type and
    child names, every parameter's and buffer's name, dtype, device and
    shape, in tree order. A deep copy of a model has its original's (see
    :func:`_entry`). Read only when a copy is (re)made, not on every call."""
    key: List[Any] = []
    stack = [model]
    while stack:
        m = stack.pop()
        key.append((type(m), tuple(m._modules.keys())))
        for tensors in (m._parameters, m._buffers):
            key.extend((name, t.dtype, t.device, t.shape) for name, t in tensors.items() if t is not None)
        stack.extend(c for c in m._modules.values() if c is not None)
    return tuple(key)


def _state(model: nn.Module) -> Iterator[Tensor]:
    yield from model.parameters()
    yield from model.buffers()


# ---------------------------------------------------------------- the cache


@dataclasses.dataclass
class _Entry:
    """One state of one caller's model: its rewritten copy (made once), the
    check of that copy per input signature, and compiled forms per signature."""

    structure: Tuple[Any, ...]  # what the copies were made for (_fingerprint)
    values: Tuple[Any, ...]  # the weights' storages and versions they hold
    fast: Optional["_FastForward"]  # the rewritten copy; None: fast_reason says why not
    fast_reason: Optional[str]
    checked: Dict[Tuple[Any, ...], Optional[str]] = dataclasses.field(default_factory=dict)  # None: fine
    compiled: Dict[Tuple[Any, ...], CompiledForward] = dataclasses.field(default_factory=dict)
    plain: Optional[nn.Module] = None  # an unrewritten copy, made when "compiled" needs one
    copy_failure: Optional[str] = None

    def plain_copy(self, model: nn.Module) -> Optional[nn.Module]:
        """An unrewritten copy of ``model`` (parameters not requiring grad),
        made once; None (``copy_failure`` says why) where it cannot be copied."""
        if self.plain is None and self.copy_failure is None:
            self.plain, self.copy_failure = _copy(model)
        return self.plain


_cache: "weakref.WeakKeyDictionary[nn.Module, _Entry]" = weakref.WeakKeyDictionary()
# An entry of each architecture (_architecture), for models that are copies
# of a cached one: the randomization metrics explain a deep copy of the
# model per call. The first model's (usually the caller's, long-lived; the
# copies come and go); weak: an entry lives while its model does.
_by_architecture: "weakref.WeakValueDictionary[Tuple[Any, ...], _Entry]" = weakref.WeakValueDictionary()


def _built_like(architecture: Tuple[Any, ...], model: nn.Module) -> Optional[_Entry]:
    """A new entry for ``model`` made from a cached model of the same
    architecture (the same module types in the same tree, the same tensor
    names, dtypes, devices and shapes), without tracing, folding or checking
    again: its copies copied and refreshed with ``model``'s values, its
    checks and reasons kept (the rewrite depends on the architecture only).
    None when no such entry is cached."""
    known = _by_architecture.get(architecture)
    if known is None:
        return None
    entry = _Entry(known.structure, known.values, None, known.fast_reason,
                   checked=dict(known.checked), copy_failure=known.copy_failure)
    for name in ("fast", "plain"):
        copied = getattr(known, name)
        if copied is not None:
            twin = copy.deepcopy(copied)
            _refresh(twin, model)
            setattr(entry, name, twin)
    return entry


def _signature(inputs: Sequence[Tensor]) -> Tuple[Any, ...]:
    return tuple((tuple(x.shape[1:]), x.dtype, x.device) for x in inputs)


def _storages(module: nn.Module) -> FrozenSet[int]:
    return frozenset(t.untyped_storage().data_ptr() for t in _state(module))


def _entry(model: nn.Module, fingerprint: Fingerprint) -> _Entry:
    """The cache entry of ``model`` in its current state: made afresh when
    its structure changed, its copies' weights refreshed in place when only
    their values did (an optimizer step, a randomization step: a rebuild
    would trace, fold and check the copy again, seconds on a ResNet, for
    every step)."""
    structure, values = fingerprint
    entry = _cache.get(model)
    if entry is None or entry.structure != structure:
        architecture = _architecture(model)
        entry = _cache[model] = _built_like(architecture, model) or _Entry(structure, values, *_rewritten(model))
        entry.structure, entry.values = structure, values
        _by_architecture.setdefault(architecture, entry)
    elif entry.values != values:
        for copied in (entry.fast, entry.plain):
            if copied is not None:
                _refresh(copied, model)
        entry.values = values
    return entry


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _copy(model: nn.Module) -> Tuple[Optional[nn.Module], Optional[str]]:
    """``(copy, None)`` or ``(None, why not)``. The copy's parameters do not
    require grad: only the rows' gradients are taken, and compiled graphs then
    leave the weights' out."""
    try:
        return copy.deepcopy(model).requires_grad_(False), None
    except Exception as exc:
        return None, f"the model cannot be copied ({_first_line(exc)})"


# ---------------------------------------------------------------- the rewrite


class _FastForward(nn.Module):
    """The rewritten graph, fed its 4-D floating-point arguments in
    ``channels_last`` when it runs in that layout."""

    def __init__(self, graph: fx.GraphModule, channels_last: bool, folded: Sequence[Tuple[str, str]] = ()):
        super().__init__()
        self.graph_module = graph
        self.channels_last = channels_last
        self.folded = tuple(folded)  # (producer, batchnorm) names, in the caller's model too

    def forward(self, *args: Any) -> Any:
        if self.channels_last:
            args = tuple(a.contiguous(memory_format=torch.channels_last)
                         if isinstance(a, Tensor) and a.dim() == 4 and a.is_floating_point() else a
                         for a in args)
        return self.graph_module(*args)


class _LinearBatchNorm(nn.Module):
    """``bn(linear(x))`` with ``bn`` an eval-mode BatchNorm1d: folded for 2-D
    ``x``, where ``bn`` normalises the linear layer's features; as it is for
    other ranks (``bn`` then normalises dim 1, not the features)."""

    def __init__(self, linear: nn.Linear, bn: nn.BatchNorm1d):
        super().__init__()
        self.linear, self.bn = linear, bn
        weight, bias = _folded_weights(linear, bn)
        self.folded = nn.Linear(linear.in_features, linear.out_features, device=linear.weight.device,
                                dtype=linear.weight.dtype)
        self.folded.weight = nn.Parameter(weight, requires_grad=False)
        self.folded.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.folded(x) if x.dim() == 2 else self.bn(self.linear(x))


def _batch_norm_affine(bn: nn.modules.batchnorm._BatchNorm) -> Tuple[Tensor, Tensor]:
    """float64 ``(scale, shift)`` ``[C]`` with ``bn(y) = y * scale + shift`` in eval mode."""
    var, mean = bn.running_var.detach().double(), bn.running_mean.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _folded_weights(producer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> Tuple[Tensor, Tensor]:
    """``(weight, bias)`` of ``bn(producer(x))`` as one conv / linear layer:
    folded in float64, rounded once to the producer's dtype."""
    scale, shift = _batch_norm_affine(bn)
    w = producer.weight.detach()
    weight = w.double() * scale.view(-1, *([1] * (w.dim() - 1)))
    bias = shift if producer.bias is None else producer.bias.detach().double() * scale + shift
    return weight.to(w.dtype), bias.to(w.dtype)


def _folded_conv(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``conv`` computing ``bn(conv(x))`` (:func:`_folded_weights`)."""
    weight, bias = _folded_weights(conv, bn)
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def _foldable(producer: nn.Module, bn: nn.Module) -> bool:
    """Whether eval-mode ``bn`` right after ``producer`` folds into it: exact
    types (a subclass may transform its weight or do more), BN with running
    statistics (else eval mode normalises by the batch), and weights of at
    least float32: a folded weight rounded to float16 / bfloat16 is off by up
    to 2^-11 / 2^-8 of itself, a systematic change of the function larger
    than eager's own rounding of the gradients (measured on the tests' conv
    net: IG in float16 57x plain PyTorch's error against float64)."""
    if not (type(bn) in _CONV_BATCH_NORM.values() and not bn.training and bn.running_mean is not None):
        return False
    if producer.weight.dtype not in (torch.float32, torch.float64):
        return False
    if type(producer) in _CONV_BATCH_NORM:
        return _CONV_BATCH_NORM[type(producer)] is type(bn) and producer.out_channels == bn.num_features
    return type(producer) is nn.Linear and type(bn) is nn.BatchNorm1d and producer.out_features == bn.num_features


def fold_batch_norms(graph: fx.GraphModule) -> List[Tuple[str, str]]:
    """Fold, in ``graph`` (in place), every BatchNorm module called once on the
    output of a Conv / Linear module that is called once and feeds nothing
    else; return the ``(producer, batchnorm)`` module names folded (the
    producer's name holds the folded layer)."""
    modules = dict(graph.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded: List[Tuple[str, str]] = []
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1 or len(node.args) != 1 or node.kwargs:
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and calls[prev.target] == 1
                and len(prev.users) == 1):
            continue
        producer, bn = modules[prev.target], modules[node.target]
        if not _foldable(producer, bn):
            continue
        replacement = _LinearBatchNorm(producer, bn) if isinstance(producer, nn.Linear) else _folded_conv(producer, bn)
        graph.add_submodule(prev.target, replacement)
        node.replace_all_uses_with(prev)
        graph.graph.erase_node(node)
        folded.append((prev.target, node.target))
    if folded:
        graph.graph.lint()
        graph.delete_all_unused_submodules()
        graph.recompile()
    return folded


def _refresh(copied: nn.Module, model: nn.Module) -> None:
    """Bring a copy of ``model`` (a :class:`_FastForward` or a plain copy) to
    ``model``'s current weights, in place, where only their values changed
    (same modules and tensors, dtypes, devices and shapes): each folded pair
    folded again, every other parameter and buffer copied under its name
    (into the copy's own layout: a channels-last weight stays one). In place,
    so that compiled graphs and CUDA graphs, which hold the copy's tensors,
    stay valid."""
    fast = copied if isinstance(copied, _FastForward) else None
    target = fast.graph_module if fast is not None else copied
    pairs = fast.folded if fast is not None else ()
    folded_modules = {name for pair in pairs for name in pair}
    with torch.no_grad():
        for producer_name, bn_name in pairs:
            producer, bn = model.get_submodule(producer_name), model.get_submodule(bn_name)
            layer = target.get_submodule(producer_name)
            if isinstance(layer, _LinearBatchNorm):  # it also keeps the pair as it is, for other ranks
                copy_tensors(layer.linear, producer)
                copy_tensors(layer.bn, bn)
                layer = layer.folded
            weight, bias = _folded_weights(producer, bn)
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        for module_name, module in model.named_modules():
            if module_name in folded_modules:
                continue
            try:
                twin = target.get_submodule(module_name)
            except AttributeError:  # not called in the traced forward: not in the graph
                continue
            copy_tensors(twin, module, recurse=False)


def copy_tensors(dest: nn.Module, source: nn.Module, recurse: bool = True) -> None:
    """``source``'s parameters and buffers copied, in place and without
    autograd, into ``dest``'s of the same names (``recurse=False``: the
    modules' own only); names ``dest`` lacks are skipped."""
    theirs = dict(_named_tensors(dest, recurse))
    with torch.no_grad():
        for name, t in _named_tensors(source, recurse):
            if name in theirs:
                theirs[name].copy_(t)


def _named_tensors(module: nn.Module, recurse: bool) -> Iterator[Tuple[str, Tensor]]:
    return itertools.chain(module.named_parameters(recurse=recurse), module.named_buffers(recurse=recurse))


def _float_leaves(out: Any) -> List[Tensor]:
    return [t for t in _pytree.tree_leaves(out) if isinstance(t, Tensor) and t.is_floating_point()]


def _example_args(inputs: Sequence[Tensor], additional_args: Sequence[Any]) -> Tuple[Any, ...]:
    """The model arguments of the inputs' first row (``[1, *F_i]`` each)."""
    rows = tuple(x[:1].detach() for x in inputs)
    batched = per_example_flags(additional_args)
    return (*rows, *(a[:1] if b else a for a, b in zip(additional_args, batched)))


def _to_float64(args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    return tuple(a.double() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def rewrite_error(fast: Callable[..., Any], model: nn.Module, args: Tuple[Any, ...]) -> Optional[str]:
    """None if ``fast`` computes ``model``'s outputs at ``args`` within
    :data:`CHECK_FACTOR` times ``model``'s own error against a float64 copy
    of ``model``; else what differs. ``model`` runs one forward without
    autograd (in eval mode and without hooks, which the caller checked: it
    changes nothing)."""
    with torch.no_grad():
        want = _float_leaves(model(*args))
        reference = _float_leaves(copy.deepcopy(model).double()(*_to_float64(args)))
        got = _float_leaves(fast(*args))
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return "the rewritten model's outputs have other shapes"
    for g, w, r in zip(got, want, reference):
        size = r.abs().max().item() if r.numel() else 0.0
        allowed = CHECK_FACTOR * max((w.double() - r).abs().max().item() if r.numel() else 0.0,
                                     torch.finfo(w.dtype).eps * size)
        error = (g.double() - r).abs().max().item() if r.numel() else 0.0
        if not error <= allowed or not math.isfinite(error):
            return f"the rewritten model is off by {error:.3g} on the first row (eager: within {allowed:.3g})"
    return None


def _check(fast: nn.Module, model: nn.Module, inputs: Sequence[Tensor],
           additional_args: Sequence[Any]) -> Optional[str]:
    """:func:`rewrite_error` on the inputs' first row; a failure to run is a reason too."""
    try:
        return rewrite_error(fast, model, _example_args(inputs, additional_args))
    except Exception as exc:
        return f"the rewritten model fails on the first row ({_first_line(exc)})"


def _rewritten(model: nn.Module) -> Tuple[Optional[nn.Module], Optional[str]]:
    """``(rewritten copy of model, None)``, or ``(None, why not)``. The model
    is traced as it is (the graph shares its modules) and copied only where
    a rewrite can apply: a model with nothing to rewrite (an MLP, a
    transformer without 2-D convolutions or BatchNorm) or that fx cannot
    trace is never copied, so the default form costs such a model no memory."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception as exc:
        return None, f"torch.fx cannot trace the model ({_first_line(exc)})"
    used = list(traced.modules())
    if not any(isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)) for m in used):
        return None, NO_REWRITE + " (no BatchNorm after a convolution or linear layer, no 2-D convolution)"
    graph, reason = _copy(traced)  # the modules the graph calls, not the rest of the model
    if graph is None:
        return None, reason
    folded = fold_batch_norms(graph)
    channels_last = any(isinstance(m, nn.Conv2d) for m in graph.modules())
    if not folded and not channels_last:
        return None, NO_REWRITE + " (no BatchNorm after a convolution or linear layer, no 2-D convolution)"
    if channels_last:
        graph.to(memory_format=torch.channels_last)
    return _FastForward(graph, channels_last, folded).eval(), None
