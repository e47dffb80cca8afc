"""Consistency of explanations (Dasgupta et al. 2022, "Framework for
evaluating faithfulness of local explanations"), as Quantus's
``Consistency``: of the other examples whose explanation falls in the same
discrete class as this one's (the signs of its first ``n`` values), the
share that the model predicts the same class for.

The value of an example is relative to the set it is compared with (its
call here, its ``batch_size`` chunk in Quantus): unlike the perturbation
metrics it cannot be independent of the other examples, by definition.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import Tensor

from .. import _validate as v
from ._explain import ExplainerType
from .explained_rows import explain_inputs, formatted_call
from .stability import ModelReads

# Quantus divides by the number of same-class explanations + 1e-9.
CONSISTENCY_EPS = 1e-9


def sign_codes(attributions: Tensor, n: Optional[int]) -> Tensor:
    """int64 ``[B, k]``: the sign of each example's first ``n`` flattened values
    (all with ``n=None``) as Quantus's ``top_n_sign`` / ``sign`` hash them:
    the bytes of ``np.sign``, so ``-0.0`` and NaN are classes of their own."""
    flat = attributions.reshape(attributions.shape[0], -1)
    if n is not None:
        flat = flat[:, :n]
    s = torch.sign(flat)
    negative_zero = (s == 0) & torch.signbit(s)
    return torch.where(torch.isnan(s), 4, (s + 1).to(torch.int64) + 2 * negative_zero.to(torch.int64))


def agreement(codes: Tensor, predictions: Tensor, groups: Optional[Tensor] = None) -> Tensor:
    """float64 ``[B]``: for each example ``i``, over the other examples ``j``
    of its group with the same explanation class (``codes[j] == codes[i]``),
    the share predicted as ``i`` is, ``/ (their number + 1e-9)`` (0 when
    there is none).

    Args:
        codes: int64 ``[B, k]``: explanation classes (:func:`sign_codes`).
        predictions: int64 ``[B]``: predicted classes.
        groups: int64 ``[B]``: which examples are compared with each other
            (None: all of them).
    """
    keys = torch.cat([codes, predictions.view(-1, 1)], dim=1)
    if groups is not None:
        keys = torch.cat([groups.view(-1, 1), keys], dim=1)
    # Examples sharing a key count the pairs; those sharing the key but the
    # prediction count the same-class explanations.
    _, same_all, count_all = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    _, same_class, count_class = torch.unique(keys[:, :-1], dim=0, return_inverse=True, return_counts=True)
    both = (count_all.index_select(0, same_all) - 1).to(torch.float64)
    classes = (count_class.index_select(0, same_class) - 1).to(torch.float64)
    return both / (classes + CONSISTENCY_EPS)


def consistency(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    n_signs: Union[int, None] = 5,
    additional_forward_args: Any = None,
    attributions: Optional[v.TensorOrTuple] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Consistency per example, over the examples of this call: among the
    other examples whose explanation has the same signs in its first
    ``n_signs`` values (flattened, every input joined), the share whose
    predicted class (argmax of the model's ``[B, C]`` outputs) equals this
    example's, ``/ (their number + 1e-9)``.

    Args:
        model, inputs, target, additional_forward_args, explainer,
            explainer_kwargs, attributions, memory_budget, chunk_rows,
            example_offset, model_form: as :func:`fastattr.metrics.max_sensitivity`
            (the predictions are read of the model as it is).
        n_signs: values whose signs class an explanation (Quantus's
            ``top_n_sign``, 5); None: all of them (Quantus's ``sign``).

    Returns:
        float64 ``[B]``: each value depends on the other examples of the call.
    """
    if n_signs is not None:
        n_signs = v.check_positive_int(n_signs, "n_signs")
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    exp, req, was_tuple = formatted_call(model, inputs, target, explainer, explainer_kwargs,
                                         additional_forward_args, memory_budget, chunk_rows, model_form)
    attrs = explain_inputs(exp, req, was_tuple, req.target, example_offset, attributions)
    flat = torch.cat([a.reshape(a.shape[0], -1) for a in attrs], dim=1)
    return agreement(sign_codes(flat, n_signs), ModelReads(req).predictions)
