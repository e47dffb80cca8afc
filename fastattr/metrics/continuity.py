"""Continuity of an explanation (Montavon et al. 2018, "Methods for
interpreting and understanding deep neural networks"), as Quantus's
``Continuity``: the strongest variation of the explanation when the image is
translated along its width, ``max_t ||a(x) - a(x_t)||_1 / (||x - x_t||_2 + 1e-9)``.

Translated copies are deterministic rows, not keyed noise, so they cannot be
generated inside the engine's plan: they are made for a block of examples at
a time (as many as fit in a quarter of the memory budget, every example of
a small call) and the explainer runs on the whole block, one engine plan
for fastattr's explainers, chunked by the engine.
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from ..engine import row_examples
from ..engine.train_mode import train_mode_guarded
from ._explain import ExplainerType
from .explained_rows import (
    ExplainGivenRows, block_examples, explain_in_blocks, explain_inputs, explainer_of_rows, formatted_call,
)
from .stability import ModelReads

# (rows [n, *F_i], each row's example int64 [n]) -> bool [n]
RowsFlag = Callable[[Tuple[Tensor, ...], Tensor], Tensor]

# Quantus adds it to the input distance (no division by 0).
CONTINUITY_EPS = 1e-9


def translations(width: int, n_steps: int) -> List[int]:
    """Quantus's translations along the width: ``-W + k * dx`` for
    ``k = 1 .. n_steps``, ``dx = (2W + 1) // n_steps`` (all ``-W``, a blank
    image, when ``n_steps > 2W + 1``; the last is ``W + 1``, also blank here,
    where ``n_steps`` divides ``2W + 1``, a case Quantus 0.6 raises on)."""
    dx = (2 * width + 1) // n_steps
    return [-width + (k + 1) * dx for k in range(n_steps)]


def translated(x: Tensor, shifts: List[int]) -> Tensor:
    """``[b * S, *F]``: each example of ``x`` (``[b, C, W]`` or ``[b, C, H, W]``)
    moved by ``shifts[s]`` pixels along its last axis (right for positive),
    the uncovered pixels filled with the example's minimum (Quantus's
    ``batched_translation`` with the ``"black"`` baseline)."""
    b, width = x.shape[0], x.shape[-1]
    fill = x.reshape(b, -1).amin(1).view(b, *([1] * (x.dim() - 1))).expand(*x.shape)
    padded = torch.cat([fill, x, fill], dim=-1)  # [b, *F[:-1], 3W]
    windows = padded.unfold(-1, width, 1)  # [b, *F[:-1], 2W + 1, W]: window s is shift W - s
    # a shift of W or more uncovers every pixel: window 0 is all fill
    starts = torch.tensor([min(2 * width, max(0, width - t)) for t in shifts], device=x.device)
    picked = windows.index_select(-2, starts).movedim(-2, 1)  # [b, S, *F]
    return picked.reshape(b * len(shifts), *x.shape[1:])


def check_image(x: Tensor, name: str = "inputs") -> None:
    """One tensor ``[B, C, W]`` or ``[B, C, H, W]``: what is translated along its width."""
    if x.dim() not in (3, 4):
        raise ValueError(f"{name}: expected images [B, C, H, W] or [B, C, W] (translated along the last axis), "
                         f"got shape {tuple(x.shape)}")


def continuity_values(explain_rows: ExplainGivenRows, x: Tensor, clean: Tensor, n_steps: int,
                      examples_per_block: int, changed: Optional[RowsFlag] = None) -> Tensor:
    """float64 ``[B, n_steps]``: ``||a(x) - a(x_t)||_1 / (||x - x_t||_2 + 1e-9)``
    per (example, translation); NaN where ``changed(rows, examples)`` is True.

    Args:
        explain_rows: explains the translated rows (as compared: the clean
            explanation ``clean`` ``[B, *A]`` is shaped and finished like them).
        x: ``[B, C, W]`` or ``[B, C, H, W]``.
        n_steps: translations (:func:`translations`).
        examples_per_block: examples whose translated rows are made and explained at once.
    """
    batch = x.shape[0]
    shifts = translations(x.shape[-1], n_steps)
    values = torch.empty(batch, n_steps, dtype=torch.float64, device=x.device)
    flat_clean = clean.reshape(batch, -1).to(torch.float64)
    flat_x = x.reshape(batch, -1).to(torch.float64)

    def rows_for(e0: int, e1: int) -> Tuple[Tensor, ...]:
        return (translated(x[e0:e1], shifts),)

    def consume(rows: Tuple[Tensor, ...], attrs: Tuple[Tensor, ...], e0: int, e1: int) -> None:
        n = rows[0].shape[0]
        examples = row_examples(e0 * n_steps, e1 * n_steps, n_steps, x.device)
        a = attrs[0].reshape(n, -1)
        if a.shape[1] != flat_clean.shape[1]:
            raise ValueError(f"explainer: explanations of {a.shape[1]} values per example differ from the "
                             f"clean explanation's {flat_clean.shape[1]}")
        change = (flat_clean.index_select(0, examples) - a).abs().sum(1)
        distance = torch.linalg.vector_norm(flat_x.index_select(0, examples) - rows[0].reshape(n, -1), dim=1)
        v_rows = change / (distance + CONTINUITY_EPS)
        if changed is not None:
            v_rows = torch.where(changed(rows, examples), torch.nan, v_rows)
        values[e0:e1] = v_rows.view(e1 - e0, n_steps)

    explain_in_blocks(explain_rows, batch, n_steps, rows_for, consume, examples_per_block, x.device)
    return values


def prediction_differs_from(reads: ModelReads, classes: Tensor) -> RowsFlag:
    """Rows whose predicted class (argmax of the model's ``[n, C]`` outputs)
    is not their example's ``classes`` (int64 ``[B]``)."""
    return lambda rows, examples: reads.read(rows, examples)[0].argmax(-1) != classes.index_select(0, examples)


def continuity(
    model: Callable[..., Tensor],
    inputs: Tensor,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    n_steps: int = 28,
    additional_forward_args: Any = None,
    attributions: Optional[Tensor] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    nan_when_prediction_changes: bool = False,
    model_form: str = "fast",
) -> Tensor:
    """Continuity: ``max_t ||a(x) - a(x_t)||_1 / (||x - x_t||_2 + 1e-9)`` per example.

    ``x_t`` is ``x`` translated by ``t`` pixels along its last axis, the
    uncovered pixels set to the example's minimum, for Quantus's ``n_steps``
    translations ``t = -W + k * ((2W + 1) // n_steps)``, ``k = 1 .. n_steps``.
    Deterministic: no seed. Every example's translated copies are explained
    in blocks (one engine plan per block for saliency, input x gradient and
    integrated gradients); a small call is one block.

    Args:
        model, target, additional_forward_args, explainer, explainer_kwargs,
            attributions, memory_budget, chunk_rows: as :func:`fastattr.metrics.max_sensitivity`.
        inputs: images ``[B, C, H, W]`` or ``[B, C, W]`` (one tensor).
        n_steps: translations per example (>= 1).
        example_offset: a random explainer's draws for translation ``s`` of
            example ``b`` are keyed as row ``(example_offset + b) * n_steps + s``.
        nan_when_prediction_changes: a translation whose predicted class
            (argmax of the model's ``[B, C]`` outputs) is not ``target``
            (one class per example) is NaN, and so is the example's value
            (Quantus's option, which compares with ``y_batch``; the predictions
            are read of the model as it is).
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        float64 ``[B]``.
    """
    n_steps = v.check_positive_int(n_steps, "n_steps")
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    if isinstance(inputs, tuple):
        raise NotImplementedError("inputs: continuity translates one image tensor; tuples of inputs are not supported")
    exp, req, was_tuple = formatted_call(model, inputs, target, explainer, explainer_kwargs,
                                         additional_forward_args, memory_budget, chunk_rows, model_form)
    x = req.inputs[0]
    check_image(x)
    classes = None
    if nan_when_prediction_changes:
        t = req.target
        if not (isinstance(t, int) or (isinstance(t, Tensor) and t.dim() == 1)):
            raise ValueError(f"target: nan_when_prediction_changes compares the predicted class with target, "
                             f"which must be one class per example (an int or [B] ints), got {target!r}")
        classes = t.to(torch.int64) if isinstance(t, Tensor) else torch.full((x.shape[0],), t, device=x.device)
    (clean,) = explain_inputs(exp, req, was_tuple, req.target, example_offset, attributions)
    explain = explainer_of_rows(exp, req, was_tuple, memory_budget, example_offset, n_steps)
    changed = None if classes is None else prediction_differs_from(ModelReads(req), classes)
    blocks = block_examples(req.inputs, n_steps, memory_budget)
    with train_mode_guarded(req.model):  # the prediction reads run between the explainer's calls
        return continuity_values(explain, x, clean, n_steps, blocks, changed).amax(dim=1)
