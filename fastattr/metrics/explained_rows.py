"""Explanations of rows a metric makes itself (translated copies, noisy
copies scaled per example, other examples' inputs) rather than rows the
engine's plan can generate: the call checked and formatted once, the
explainer run on a block of examples' rows at a time (as many as fit in a
quarter of the memory budget), each row explained for its example's target
and keyed by its index among all the call's rows, so that a random
explainer's draws do not depend on the blocking."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from ..attr._call import build_request
from ..engine import Request, row_examples, single_point_plan
from ..engine import budget as _budget
from ..engine.outputs import per_example_flags, rows_args
from ._explain import Explainer, ExplainerType
from .sensitivity import check_attributions, rows_target

# (rows [n, *F_i], each row's example int64 [n], index of the first row among
# all the call's rows) -> attributions [n, *A_i]. A random explainer keys row
# r's draws by the index of its first row + r: the same for any blocking.
ExplainGivenRows = Callable[[Tuple[Tensor, ...], Tensor, int], Tuple[Tensor, ...]]
# A block's rows may take this share of the memory budget (the explainer's
# own chunks take the budget itself).
_BLOCK_SHARE = 4


def block_examples(like: Tuple[Tensor, ...], per_example: int, memory_budget: Optional[int]) -> int:
    """Examples per block of ``per_example`` made rows each (>= 1): the
    block's rows, their attributions and float64 temporaries within a quarter
    of ``memory_budget`` (None: the device's default budget)."""
    budget = memory_budget or _budget.default_budget(like[0].device)
    row_bytes = max(1, _budget.input_row_bytes(like))
    return max(1, budget // (_BLOCK_SHARE * 4 * row_bytes * per_example))


def explain_in_blocks(explain_rows: ExplainGivenRows, batch: int, per_example: int,
                      rows_for: Callable[[int, int], Tuple[Tensor, ...]],
                      consume: Callable[[Tuple[Tensor, ...], Tuple[Tensor, ...], int, int], None],
                      examples_per_block: int, device: torch.device) -> None:
    """Make the rows of examples ``e0 .. e1-1`` (``rows_for(e0, e1)``, example
    major, ``per_example`` rows each), explain them in one call, and hand
    ``consume(rows, attrs, e0, e1)`` the block, block after block."""
    for e0 in range(0, batch, examples_per_block):
        e1 = min(batch, e0 + examples_per_block)
        rows = rows_for(e0, e1)
        examples = row_examples(e0 * per_example, e1 * per_example, per_example, device)
        consume(rows, explain_rows(rows, examples, e0 * per_example), e0, e1)


def formatted_call(model: Callable[..., Tensor], inputs: v.TensorOrTuple, target: v.TargetType,
                   explainer: ExplainerType, explainer_kwargs: Optional[Mapping[str, Any]],
                   additional_forward_args: Any, memory_budget: Optional[int],
                   chunk_rows: Optional[int], model_form: str = "eager") -> Tuple[Explainer, Request, bool]:
    """``(explainer, request, inputs_was_tuple)``: the call checked and
    formatted (the request's plan is unused: the explainer makes its own).
    ``model_form`` (checked here, before any compute) is the explainer's
    (:class:`~fastattr.metrics._explain.Explainer`) and the request's."""
    exp = Explainer(explainer, explainer_kwargs, model_form)
    req, was_tuple = build_request(model, inputs, target, additional_forward_args,
                                   lambda xs: single_point_plan("grad"), memory_budget, chunk_rows,
                                   model_form=model_form)
    return exp, req, was_tuple


def explain_inputs(exp: Explainer, req: Request, was_tuple: bool, target: Any, example_offset: int,
                   attributions: Optional[v.TensorOrTuple] = None) -> Tuple[Tensor, ...]:
    """The explanation of the call's inputs for ``target``: ``attributions``
    (checked) when given, else ``exp``'s, a random explainer keyed from
    example ``example_offset``."""
    if attributions is not None:
        return check_attributions(attributions, req.inputs, was_tuple)
    return exp(req.model, req.inputs, was_tuple, target=target, additional_forward_args=req.additional_args or None,
               memory_budget=req.memory_budget, example_offset=example_offset)


def explainer_of_rows(exp: Explainer, req: Request, was_tuple: bool, memory_budget: Optional[int],
                      example_offset: int, per_example: int) -> ExplainGivenRows:
    """Rows explained by ``exp`` with their examples' targets and extra
    arguments; a random explainer's draws for the call's row ``r`` are keyed
    as example ``example_offset * per_example + r``."""
    batched = per_example_flags(req.additional_args)

    def explain(rows: Tuple[Tensor, ...], examples: Tensor, first_row: int) -> Tuple[Tensor, ...]:
        args = rows_args(req.additional_args, batched, examples, rows[0].shape[0])
        return exp(req.model, rows, was_tuple, target=rows_target(req.target, examples),
                   additional_forward_args=args or None, memory_budget=memory_budget,
                   example_offset=example_offset * per_example + first_row)

    return explain
