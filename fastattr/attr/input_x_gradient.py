"""Input x gradient (Shrikumar et al. 2016)."""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor

from .. import _validate as v
from ..engine import run, single_point_plan
from ._call import build_request, shape_output


def input_x_gradient(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    model_form: str = "fast",
) -> v.TensorOrTuple:
    """``inputs * d model(inputs)[:, target] / d inputs``, as Captum's ``InputXGradient``.

    Args (``model_form`` too) and shapes as :func:`fastattr.saliency` (``[B, *F]`` or a tuple);
    returns attributions shaped and typed like ``inputs``.
    """
    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args,
        lambda xs: single_point_plan("times_input"),
        memory_budget, chunk_rows, model_form=model_form,
    )
    return shape_output(run(req).mean, req.inputs, was_tuple)
