"""Forward-only evaluation of generated rows, chunk by chunk: what metrics
that only read the model's outputs (infidelity, deletion / insertion curves,
accuracy under attack) run on, under the same byte budget as the gradient
loop."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import budget as _budget
from .loop import row_examples
from .model_form import model_in_form
from .._validate import FormattedTarget
from .outputs import check_model_output, per_example_flags, rows_args, target_outputs
from .train_mode import train_mode_guarded


def forward_rows(
    model: Callable[..., Tensor],
    rows_for: Callable[[int, int], Tuple[Tensor, ...]],
    total: int,
    per_example: int,
    like: Tuple[Tensor, ...],
    target: FormattedTarget,
    additional_args: Sequence[Any] = (),
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    model_form: str = "eager",
) -> Tensor:
    """float64 ``[total]``: the target output of ``model`` at every row.

    Args:
        rows_for: ``rows_for(r0, r1)`` returns the model inputs of rows
            ``r0 .. r1-1``, one ``[r1 - r0, *F_i]`` tensor per input. Row ``r``
            belongs to example ``r // per_example``.
        like: the unperturbed inputs ``[B, *F_i]`` (row size, device).
        target: as formatted by ``_validate.format_target``.
        additional_args: extra model arguments; tensors with a batch
            dimension are gathered per row.
        memory_budget, chunk_rows: bytes per chunk (default
            :func:`budget.default_budget`) and an optional row cap.
        model_form: ``"eager"``, ``"fast"`` or ``"compiled"``: the form the
            rows run ``model`` in (:mod:`fastattr.engine.model_form`).
    """
    device = like[0].device
    out = torch.empty(total, dtype=torch.float64, device=device)
    if total == 0:
        return out
    chunk = _budget.unmeasured_chunk_rows(like, memory_budget, total, chunk_rows)
    form = model_in_form(model, model_form, like, additional_args)
    form.serve_rows(chunk, grad=False)
    batched = per_example_flags(additional_args)
    single = like[0].shape[0] == 1
    checked = False
    with torch.no_grad(), train_mode_guarded(model):
        r0 = 0
        while r0 < total:
            r1 = min(total, r0 + chunk)
            examples = row_examples(r0, r1, per_example, device)
            try:
                values = form.model(*rows_for(r0, r1),
                                    *rows_args(additional_args, batched, None if single else examples, r1 - r0))
            except torch.OutOfMemoryError:
                # the same rows again in halves, and the rest of the call at that size
                halved = _budget.rows_after_out_of_memory(r1 - r0, 1, device)
                if halved is None:
                    raise
                chunk = halved
                form.serve_rows(chunk, grad=False)
                continue
            if not checked:
                target = check_model_output(values, r1 - r0, target)
                checked = True
            out[r0:r1] = target_outputs(values, target, examples)
            r0 = r1
    return out
