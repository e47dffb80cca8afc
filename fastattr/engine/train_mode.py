"""A model left in train mode: what the engine does about it.

In train mode a BatchNorm normalises each forward by that forward's batch
statistics and overwrites its running statistics: the explanation of one
example would depend on which other rows share its chunk (so on
``memory_budget`` / ``chunk_rows``), and the caller's model would come back
changed (a ResNet-18's 60 buffers). The engine explains the model as it is
given (train-mode batch statistics per chunk), warns once per model that the
result depends on the chunking, and restores the buffers of every
train-mode normalisation layer after the call, so the caller's model is
never changed. ``model.eval()`` first is what explaining a deployed model
needs."""
from __future__ import annotations

import contextlib
import itertools
import warnings
import weakref
from typing import Any, Iterator, List, Tuple

import torch
from torch import Tensor, nn

_warned: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _wrapped(model: Any) -> Iterator[Any]:
    """``model``, then what it wraps: the library's wrappers (functions and
    modules) keep the caller's model as ``.model``."""
    yield model
    for _ in range(8):
        if not hasattr(model, "model"):
            return
        model = model.model
        yield model


def underlying_module(model: Any) -> Any:
    """The outermost ``nn.Module`` of ``model`` or behind the library's
    wrappers: None for a plain function."""
    return next((m for m in _wrapped(model) if isinstance(m, nn.Module)), None)


def _warning_key(module: nn.Module) -> nn.Module:
    # A wrapper module made per call (an attack's loss, a layer hook) keeps
    # the caller's model as .model: the warning is about that one.
    return list(itertools.takewhile(lambda m: isinstance(m, nn.Module), _wrapped(module)))[-1]


def warn_no_more(module: nn.Module) -> None:
    """Never warn about ``module`` (a copy made from a model already warned about)."""
    _warned.add(_warning_key(module))


def _stateful_in_training(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Train-mode modules whose forward overwrites buffers (normalisation layers tracking running stats)."""
    return [(name, m) for name, m in module.named_modules()
            if m.training and isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


@contextlib.contextmanager
def train_mode_guarded(model: Any) -> Iterator[None]:
    """Run the body with ``model``'s train-mode normalisation buffers saved
    and restored afterwards (even on error), warning once per model."""
    module = underlying_module(model)
    stateful = _stateful_in_training(module) if module is not None else []
    if not stateful:
        yield
        return
    key = _warning_key(module)
    if key not in _warned:
        _warned.add(key)
        names = ", ".join(n or type(m).__name__ for n, m in stateful[:3]) + (", ..." if len(stateful) > 3 else "")
        warnings.warn(
            f"model: {len(stateful)} normalisation layer(s) in train mode ({names}): each chunk is normalised "
            f"by its own batch statistics, so the attributions depend on memory_budget / chunk_rows; their "
            f"running statistics are restored after the call. Call model.eval() to explain the model as deployed.",
            stacklevel=4,
        )
    saved: List[Tuple[Tensor, Tensor]] = [(b, b.detach().clone()) for _, m in stateful
                                          for b in m.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
