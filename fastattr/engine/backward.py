"""One backward pass: the gradient of a chunk's seeded outputs with respect
to its rows.

``torch.autograd.grad`` spends tens of microseconds per call in Python
(argument normalisation, a shape check of every seed that imports modules on
each call, materializing unused gradients) before it reaches the C++ engine:
on a small model that is a fifth of a whole forward + backward. The engine
builds its seeds itself, with the output's shape, dtype and device, so it
calls autograd's engine entry point directly, and falls back to the public
``torch.autograd.grad`` wherever that shortcut does not apply (tensor
subclasses with ``__torch_function__``, a torch without the entry point).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.overrides import has_torch_function

# Private since torch 2.1 and called by torch.autograd.grad itself; looked up
# softly so that a torch that renames it still works, on the public path.
_run_backward = getattr(torch.autograd.graph, "_engine_run_backward", None)


def input_gradients(out: Tensor, rows: Tuple[Tensor, ...], seed: Tensor) -> Tuple[Tensor, ...]:
    """``d(sum(seed * out)) / d rows``: one gradient per row tensor, zeros for
    rows the output does not depend on.

    Args:
        out: the model's output ``[n, C]`` or ``[n]``.
        rows: the leaves the output was computed from, each ``[n, *F_i]``.
        seed: ``[n, C]`` / ``[n]``, shaped and typed like ``out``.
    """
    if _run_backward is not None and not has_torch_function((out, *rows)):
        grads: Tuple[Optional[Tensor], ...] = _run_backward(
            (out,), (seed,), False, False, rows, True, accumulate_grad=False,
        )
    else:
        grads = torch.autograd.grad(out, rows, seed, allow_unused=True)
    if all(g is not None for g in grads):
        return grads
    return tuple(torch.zeros_like(r) if g is None else g for g, r in zip(grads, rows))
