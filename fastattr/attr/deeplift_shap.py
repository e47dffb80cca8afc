"""DeepLIFT SHAP (Lundberg & Lee 2017), as Captum 0.9's ``DeepLiftShap``:
DeepLIFT of each example against every example of a reference
distribution, averaged over the references.

Each input row is repeated once per reference (``B * M`` rows, what Captum
builds too) and explained by :func:`~fastattr.attr.deeplift.deeplift`
against its reference, in the engine's chunks.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

from torch import Tensor, nn

from .. import _validate as v
from ._call import repeat_examples
from .deeplift import CustomAttributionFunc, deeplift


def deeplift_shap(
    model: Union[nn.Module, Callable[..., Tensor]],
    inputs: v.TensorOrTuple,
    baselines: Any,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    return_convergence_delta: bool = False,
    custom_attribution_func: Optional[CustomAttributionFunc] = None,
    multiply_by_inputs: bool = True,
    eps: float = 1e-10,
    memory_budget: Optional[int] = None,
    *,
    captum_hooks: bool = False,
) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
    """DeepLIFT SHAP attributions of ``model(inputs)[target]``.

    Args:
        model, inputs, target, additional_forward_args, custom_attribution_func,
            multiply_by_inputs, eps, memory_budget, captum_hooks: as :func:`fastattr.deeplift`.
        baselines: the reference distribution, ``[M, *F]`` per input with
            ``M >= 2`` (the same ``M`` for all), or a callable returning it.

    Returns:
        Attributions shaped like ``inputs``, the mean over the references; with
        ``return_convergence_delta`` also ``[B * M]`` deltas, row ``b * M + m``
        the one of example ``b`` against reference ``m``.
    """
    def explain(rows: v.TensorOrTuple, bases: v.TensorOrTuple, row_target: Any, row_args: Any) -> Any:
        return deeplift(model, rows, bases, row_target, row_args, return_convergence_delta,
                        custom_attribution_func, multiply_by_inputs, eps, memory_budget,
                        captum_hooks=captum_hooks)

    return against_each_reference(explain, inputs, baselines, target, additional_forward_args,
                                  return_convergence_delta, "DeepLiftShap", "deeplift")


def against_each_reference(
    explain: Callable[[v.TensorOrTuple, v.TensorOrTuple, Any, Any], Any],
    inputs: v.TensorOrTuple,
    baselines: Any,
    target: v.TargetType,
    additional_forward_args: Any,
    return_convergence_delta: bool,
    method: str,
    single: str,
) -> Any:
    """DeepLIFT SHAP's frame, Captum's ``_expand_inputs_baselines_targets``
    and mean: ``explain(rows, baselines, target, args)`` on every example
    repeated once per reference (rows ``b * M + m``, against reference
    ``m``), its attributions (a tensor, a tuple, or the layer's) averaged
    over the references; deltas, when it returns them, as they are
    (``[B * M]``). ``method`` / ``single`` name the caller and its one-reference twin."""
    xs, was_tuple = v.format_inputs(inputs)
    references = v.format_baseline_distribution(baselines, xs, was_tuple)
    m = references[0].shape[0]
    if m < 2:
        raise v.ArgumentError(
            f"baselines: {method} needs a distribution of at least 2 reference examples [M, *F]; "
            f"with one, use {single}"
        )
    batch = xs[0].shape[0]
    rows = tuple(x.repeat_interleave(m, dim=0) for x in xs)
    bases = tuple(r.repeat(batch, *([1] * (r.dim() - 1))) for r in references)
    row_target, row_args = repeat_examples(target, additional_forward_args, m)
    out = explain(rows if was_tuple else rows[0], bases if was_tuple else bases[0], row_target, row_args)
    attributions, deltas = out if return_convergence_delta else (out, None)
    items = attributions if isinstance(attributions, tuple) else (attributions,)
    means = tuple(a.view(batch, m, *a.shape[1:]).mean(1) for a in items)
    mean_out = means if isinstance(attributions, tuple) else means[0]
    return (mean_out, deltas) if return_convergence_delta else mean_out
