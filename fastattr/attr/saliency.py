"""Saliency (Simonyan et al. 2014): the gradient of the target output."""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor

from .. import _validate as v
from ..engine import run, single_point_plan
from ._call import build_request, shape_output


def saliency(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    abs: bool = True,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    model_form: str = "fast",
) -> v.TensorOrTuple:
    """Gradient of ``model(inputs)[:, target]`` w.r.t. each input, as Captum's ``Saliency``.

    Args:
        model: callable taking the inputs (and ``additional_forward_args``) and
            returning ``[B, C]`` (or ``[B]`` with ``target=None``).
        inputs: ``[B, *F]`` or a tuple of such tensors.
        target: class index (int), one per example (list / int tensor ``[B]``),
            or None for a single-output model.
        abs: return ``|gradient|`` (Captum's default) instead of the signed gradient.
        additional_forward_args: extra model arguments; tensors with a batch
            dimension are given per row.
        memory_budget: bytes one chunk may use (default: see
            :func:`fastattr.engine.budget.default_budget`).
        chunk_rows: optional extra cap on the rows per chunk.
        model_form: the form the rows run the model in: ``"fast"`` (the
            default: a copy with BatchNorm folded and channels-last rows,
            equal to eager up to float rounding), ``"eager"`` (the model as
            it is, bit for bit; what the Captum and Quantus drop-ins use) or
            ``"compiled"`` (the fast copy under ``torch.compile``); see
            :mod:`fastattr.engine.model_form` and ``docs/model_form.md``. A
            model the form does not apply to (train mode, hooks, no rewrite
            to make, ...) runs eagerly.

    Returns:
        Attributions shaped and typed like ``inputs`` (tensor or tuple).
    """
    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args,
        lambda xs: single_point_plan("abs" if abs else "grad"),
        memory_budget, chunk_rows, model_form=model_form,
    )
    return shape_output(run(req).mean, req.inputs, was_tuple)
