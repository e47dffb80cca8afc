"""Captum's DeepLift and LRP keep one state per module and refuse a model
that calls a hooked module twice in one forward (a RuntimeError). fastattr's
own functions keep each call's state and explain such models; the drop-in
classes refuse them as Captum does, so that code written against Captum's
contract meets it here."""
from __future__ import annotations

import weakref
from typing import Any, Dict, Sequence, Set, Tuple

import torch
from torch import Tensor, nn

from .. import _validate as v


_VERIFIED: "weakref.WeakKeyDictionary[nn.Module, Set[Tuple[Any, ...]]]" = weakref.WeakKeyDictionary()


def refuse_reused_modules(model: nn.Module, modules: Sequence[nn.Module], inputs: v.TensorOrTuple,
                          additional_forward_args: Any, method: str, native: str) -> None:
    """Run ``model`` once on the first example (no gradient) and raise a
    RuntimeError naming the first of ``modules`` that ran more than once;
    once a model passed for these modules and this input layout, later calls
    skip the probe. Nothing is checked for an empty batch or bad inputs (the
    method's own checks report those)."""
    try:
        xs, _ = v.format_inputs(inputs)
        args = v.format_additional_args(additional_forward_args, xs[0].shape[0])
    except (TypeError, ValueError):
        return
    if xs[0].shape[0] == 0 or not modules:
        return
    # Which modules run is the model's structure: probed once per model,
    # modules and input layout (a drop-in called in a loop pays it once).
    key = (tuple(id(m) for m in modules), tuple((tuple(x.shape[1:]), x.dtype, x.device) for x in xs))
    verified = _VERIFIED.setdefault(model, set())
    if key in verified:
        return
    calls: Dict[int, int] = {}

    def count(module: nn.Module, _inputs: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1

    handles = [m.register_forward_pre_hook(count) for m in modules]
    try:
        with torch.no_grad():
            model(*(x[:1] for x in xs), *(a[:1] if isinstance(a, Tensor) and a.dim() > 0 else a for a in args))
    finally:
        for h in handles:
            h.remove()
    names = {id(m): n for n, m in model.named_modules()}
    for m in modules:
        if calls.get(id(m), 0) > 1:
            raise RuntimeError(
                f"model.{names.get(id(m), '?')} ({type(m).__name__}) is used more than once in the "
                f"network, which Captum's {method} does not support and so neither does this drop-in; "
                f"fastattr.{native}() explains such models (each call keeps its own state)"
            )
    verified.add(key)
