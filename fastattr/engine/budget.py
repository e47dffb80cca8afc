"""Chunk sizing: how many rows fit in a memory budget.

A chunk's peak memory is dominated by what autograd saves for the backward
pass. That is measured, not guessed: the first chunk of a call runs under
``saved_tensors_hooks`` that add up the bytes saved per row, and the figure is
cached per (model, input signature) so later calls size every chunk right away.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Dict, Hashable, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

DEFAULT_CPU_BUDGET = 1 << 30  # bytes
# A GPU chunk may use this fraction of the device's total memory: the rest
# holds the model, the caller's tensors and the allocator's slack.
GPU_BUDGET_FRACTION = 1 / 8
# Before anything is measured, assume activations of this many times the
# input row: generous for MLPs and small conv nets, so the first chunk of an
# unknown model stays well inside the budget.
_FIRST_GUESS_ACTIVATION_FACTOR = 64
# Rows, accumulators and gradients of the inputs live beside the activations.
_INPUT_COPIES_PER_ROW = 4

_measured: "weakref.WeakKeyDictionary[object, Dict[Hashable, int]]" = weakref.WeakKeyDictionary()


def default_budget(device: torch.device) -> int:
    """Bytes one chunk may use when the caller gives no ``memory_budget``:
    an eighth of a GPU's *total* memory (:data:`GPU_BUDGET_FRACTION`), 1 GiB
    on the CPU.

    Never the memory free at the moment: the budget sets the chunk size, so
    the batch size the model runs at, and cuDNN / BLAS round per batch size;
    a budget read from free memory would change results from call to call.
    The same device model gives the same chunks every time."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return max(int(total * GPU_BUDGET_FRACTION), 1 << 20)
    return DEFAULT_CPU_BUDGET


def signature_and_row_bytes(inputs: Tuple[Tensor, ...]) -> Tuple[Hashable, int]:
    """What the activation size per row depends on, besides the model, and
    :func:`input_row_bytes`, in one pass (the engine asks on every call)."""
    sig = []
    row_bytes = 0
    for x in inputs:
        features = x.shape[1:]
        sig.append((features, x.dtype, x.device))
        row_bytes += features.numel() * x.element_size()
    return tuple(sig), row_bytes


def cached_activation_bytes(model: object, sig: Hashable) -> Optional[int]:
    """Measured saved-activation bytes per row, if this model/signature ran before."""
    try:
        return _measured.get(model, {}).get(sig)
    except TypeError:  # models that cannot be weakly referenced are not cached
        return None


def store_activation_bytes(model: object, sig: Hashable, per_row: int) -> None:
    try:
        _measured.setdefault(model, {})[sig] = per_row
    except TypeError:
        pass


def rows_per_chunk(
    budget: int,
    input_row_bytes: int,
    activation_row_bytes: Optional[int],
    total_rows: int,
    cap: Optional[int],
) -> int:
    """Rows per chunk (>= 1) so that one chunk's memory stays within ``budget``."""
    if activation_row_bytes is None:
        activation_row_bytes = _FIRST_GUESS_ACTIVATION_FACTOR * input_row_bytes
    per_row = max(1, activation_row_bytes + _INPUT_COPIES_PER_ROW * input_row_bytes)
    rows = max(1, min(total_rows, budget // per_row))
    return rows if cap is None else max(1, min(rows, cap))


def rows_after_out_of_memory(rows: int, unit: int, device: torch.device) -> Optional[int]:
    """Rows per chunk after a chunk of ``rows`` ran out of memory: half, in
    multiples of ``unit`` (1, or one example's rows); None when ``rows`` is
    already ``unit`` (nothing smaller to try). Frees the CUDA allocator's
    cached blocks for the retry."""
    if rows <= unit:
        return None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    half = max(unit, rows // 2)
    return half - half % unit


def input_row_bytes(inputs: Sequence[Tensor]) -> int:
    """Bytes of one row of every input together (each ``[B, *F_i]``)."""
    return signature_and_row_bytes(inputs)[1]


def unmeasured_chunk_rows(inputs: Sequence[Tensor], memory_budget: Optional[int], total_rows: int,
                          cap: Optional[int]) -> int:
    """Rows per chunk of rows shaped like ``inputs`` whose activations are not
    measured (forward-only rows, an explainer called per chunk): the first
    guess of :func:`rows_per_chunk` within ``memory_budget`` (None: the
    device's :func:`default_budget`)."""
    budget = memory_budget or default_budget(inputs[0].device)
    return rows_per_chunk(budget, input_row_bytes(inputs), None, total_rows, cap)


class SavedBytesMeter:
    """Adds up the bytes autograd saves for backward, once per saved view,
    leaving out storages that belong to the model's parameters and buffers."""

    def __init__(self, exclude_ptrs: set):
        self.total = 0
        self._excluded = exclude_ptrs
        self._seen: set = set()

    def _pack(self, t: Tensor) -> Tensor:
        # Count the saved view, not its whole storage: a chunk's rows may be a
        # view of the caller's full input, which the chunk does not add.
        storage_ptr = t.untyped_storage().data_ptr()
        key = (t.data_ptr(), t.numel(), t.dtype)
        if storage_ptr not in self._excluded and key not in self._seen:
            self._seen.add(key)
            self.total += t.numel() * t.element_size()
        return t

    @contextlib.contextmanager
    def measuring(self) -> Iterator["SavedBytesMeter"]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self


def model_storage_ptrs(model: object) -> set:
    """Storage pointers of a module's parameters and buffers (empty for plain callables)."""
    if not isinstance(model, torch.nn.Module):
        return set()
    tensors = list(model.parameters()) + list(model.buffers())
    return {t.untyped_storage().data_ptr() for t in tensors}
