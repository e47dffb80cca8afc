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
) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
    """DeepLIFT SHAP attributions of ``model(inputs)[target]``.

    Args:
        model, inputs, target, additional_forward_args, custom_attribution_func,
            multiply_by_inputs, eps, memory_budget: as :func:`fastattr.deeplift`.
        baselines: the reference distribution, ``[M, *F]`` per input with
            ``M >= 2`` (the same ``M`` for all), or a callable returning it.

    Returns:
        Attributions shaped like ``inputs``, the mean over the references; with
        ``return_convergence_delta`` also ``[B * M]`` deltas, row ``b * M + m``
        the one of example ``b`` against reference ``m``.
    """
    xs, was_tuple = v.format_inputs(inputs)
    references = v.format_baseline_distribution(baselines, xs, was_tuple)
    m = references[0].shape[0]
    if m < 2:
        raise v.ArgumentError(
            "baselines: DeepLiftShap needs a distribution of at least 2 reference examples [M, *F]; "
            "with one, use deeplift"
        )
    batch = xs[0].shape[0]
    rows = tuple(x.repeat_interleave(m, dim=0) for x in xs)
    bases = tuple(r.repeat(batch, *([1] * (r.dim() - 1))) for r in references)
    row_target, row_args = repeat_examples(target, additional_forward_args, m)
    out = deeplift(model, rows if was_tuple else rows[0], bases if was_tuple else bases[0], row_target, row_args,
                   return_convergence_delta, custom_attribution_func, multiply_by_inputs, eps, memory_budget)
    attributions, deltas = out if return_convergence_delta else (out, None)
    items = attributions if was_tuple else (attributions,)
    means = tuple(a.view(batch, m, *a.shape[1:]).mean(1) for a in items)
    means_out = means if was_tuple else means[0]
    return (means_out, deltas) if return_convergence_delta else means_out
