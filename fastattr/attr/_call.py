"""What every explainer does around the engine: check and format the
caller's arguments into a :class:`~fastattr.engine.Request`, and shape the
result back the way the caller passed the inputs (tensor in, tensor out;
tuple in, tuple out)."""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Hashable, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _validate as v
from ..engine import PointPlan, Request
from ..engine.model_form import check_model_form


def build_request(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType,
    additional_forward_args: Any,
    plan_for: Callable[[Tuple[Tensor, ...]], PointPlan],
    memory_budget: Optional[int],
    chunk_rows: Optional[int],
    baselines: v.BaselineType = None,
    needs_baselines: bool = False,
    want_deltas: bool = False,
    rules: Optional[Callable[[], ContextManager[Any]]] = None,
    whole_examples: bool = False,
    leaves: Optional[Callable[[], Tuple[Tensor, ...]]] = None,
    activation_key: Optional[Tuple[object, Hashable]] = None,
    model_form: str = "eager",
) -> Tuple[Request, bool]:
    """Validate everything and return ``(request, inputs_was_tuple)``.

    ``plan_for(inputs_tuple)`` builds the method's plan once the inputs are
    known; ``rules``, ``whole_examples``, ``leaves``, ``activation_key`` and
    ``model_form`` (``"eager"``, ``"fast"`` or ``"compiled"``, see
    :mod:`fastattr.engine.model_form`) pass through to the
    :class:`~fastattr.engine.Request`. With ``leaves`` (the gradient is taken
    inside the model) integer inputs, such as token ids, are accepted.
    """
    if not callable(model):
        raise TypeError(f"model: expected a callable (an nn.Module or a function), got {type(model).__name__}")
    check_model_form(model_form)
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "fastattr needs autograd: call it outside torch.inference_mode() "
            "(torch.no_grad() is fine)"
        )
    xs, was_tuple = v.format_inputs(inputs, allow_integer=leaves is not None)
    # Explain the values, not the caller's graph: results never carry a grad_fn,
    # and inference tensors become ordinary ones that rows can require grad on.
    xs = tuple(x.clone() if x.is_inference() else x.detach() for x in xs)
    batch, device = xs[0].shape[0], xs[0].device
    v.check_model_device(model, device)
    bases = v.format_baselines(baselines, xs, was_tuple) if needs_baselines else None
    req = Request(
        model=model,
        inputs=xs,
        baselines=bases,
        target=v.format_target(target, batch, device),
        additional_args=v.format_additional_args(additional_forward_args, batch),
        plan=plan_for(xs),
        memory_budget=v.check_optional_positive_int(memory_budget, "memory_budget"),
        chunk_rows=v.check_optional_positive_int(chunk_rows, "chunk_rows"),
        want_deltas=want_deltas,
        rules=rules,
        whole_examples=whole_examples,
        leaves=leaves,
        activation_key=activation_key,
        model_form=model_form,
    )
    return req, was_tuple


def shape_output(values: Tuple[Tensor, ...], like: Tuple[Tensor, ...], was_tuple: bool) -> Union[Tensor, Tuple[Tensor, ...]]:
    """Cast each result to its input's dtype; a tuple only if the inputs were one."""
    out = tuple(a if a.dtype == x.dtype else a.to(x.dtype) for a, x in zip(values, like))
    return out if was_tuple else out[0]


def repeat_examples(target: Any, additional_forward_args: Any, times: int) -> Tuple[Any, Any]:
    """``(target, additional_forward_args)`` for inputs whose examples are each
    repeated ``times`` times (``repeat_interleave``), as Captum expands them:
    per-example targets (a list, a tensor of more than one element) and
    per-example argument tensors repeated, everything else as it is."""
    if isinstance(target, list):
        target = [t for t in target for _ in range(times)]
    elif isinstance(target, Tensor) and target.numel() > 1:
        target = target.repeat_interleave(times, dim=0)
    if additional_forward_args is not None:
        items = additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)
        additional_forward_args = tuple(
            a.repeat_interleave(times, dim=0) if isinstance(a, Tensor) and a.dim() > 0 else a for a in items
        )
    return target, additional_forward_args
