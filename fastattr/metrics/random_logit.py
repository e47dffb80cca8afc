"""Random logit test (Sixt et al. 2020, "When explanations lie: why many
modified BP attributions fail"), as Quantus's ``RandomLogit``: how similar
an example's explanation of its class is to its explanation of another
class, drawn uniformly at random among the rest (keyed by ``(seed, example)``)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import Tensor

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_RANDOMIZATION
from ..engine.draws import group_uniforms
from ._explain import ExplainerType
from .explained_rows import explain_inputs, formatted_call
from .similarity import pearson, spearman, ssim

# A sub-stream of the randomization purpose that the parameter draws
# (stream PURPOSE_RANDOMIZATION * 65536 exactly) do not use.
OFF_CLASS_STREAM = PURPOSE_RANDOMIZATION * 65536 + 32768
SIMILARITIES = ("ssim", "spearman", "pearson")


def off_classes(classes: Tensor, num_classes: int, seed: int, example_offset: int = 0) -> Tensor:
    """int64 ``[B]``: for each example a class other than ``classes[b]``,
    uniform over the ``num_classes - 1`` others, keyed by ``(seed, example_offset + b)``."""
    u, _ = group_uniforms(seed, OFF_CLASS_STREAM, classes.shape[0], 1, classes.device, example_offset)
    k = (u * (num_classes - 1)).floor().to(torch.int64).clamp_max(num_classes - 2)
    return k + (k >= classes).to(torch.int64)


def similarity_function(similarity: str, ssim_win_size: int = 7) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(a [B, D], b [B, D]) -> float64 [B]`` by name (SSIM over the flat explanation)."""
    v.check_choice(similarity, "similarity", SIMILARITIES)
    if similarity == "ssim":
        return lambda a, b: ssim(a, b, ssim_win_size)
    functions: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {"spearman": spearman, "pearson": pearson}
    return functions[similarity]


def check_classes(target: Any, batch: int, num_classes: int, device: torch.device) -> Tensor:
    """int64 ``[B]``: one class in ``[0, num_classes)`` per example (``target``
    as formatted: an int or ``[B]`` ints)."""
    if isinstance(target, int):
        classes = torch.full((batch,), target, dtype=torch.int64, device=device)
    elif isinstance(target, Tensor) and target.dim() == 1:
        classes = target.to(torch.int64)
    else:
        raise ValueError(f"target: expected one class per example (an int or [B] ints), got {target!r}")
    if classes.numel() and not (0 <= int(classes.min()) and int(classes.max()) < num_classes):
        raise ValueError(f"target: classes must lie in [0, num_classes={num_classes}), got {classes.tolist()}")
    return classes


def random_logit(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType,
    num_classes: int,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    similarity: str = "ssim",
    ssim_win_size: int = 7,
    seed: int = 0,
    additional_forward_args: Any = None,
    attributions: Optional[v.TensorOrTuple] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """Similarity of each example's explanation for ``target`` with its
    explanation for a random other class (lower is better: an explanation
    should depend on the class explained).

    Args:
        model, inputs, additional_forward_args, explainer, explainer_kwargs,
            attributions, memory_budget, chunk_rows: as :func:`fastattr.metrics.max_sensitivity`.
        target: one class per example (an int or ``[B]`` ints), each below ``num_classes``.
        num_classes: classes the other one is drawn from (>= 2).
        similarity: ``"ssim"`` (Quantus's default), ``"spearman"`` or
            ``"pearson"``, of the explanations flattened (every input joined).
        ssim_win_size: SSIM's window (odd, at most the flat explanation's length).
        seed: key of the drawn classes (int >= 0).
        example_offset: example ``b``'s class is drawn as example
            ``example_offset + b`` (a random explainer is keyed likewise).
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in).

    Returns:
        float64 ``[B]``.
    """
    num_classes = v.check_positive_int(num_classes, "num_classes", minimum=2)
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    compare = similarity_function(similarity, ssim_win_size)
    exp, req, was_tuple = formatted_call(model, inputs, target, explainer, explainer_kwargs,
                                         additional_forward_args, memory_budget, chunk_rows, model_form)
    features = sum(x[0].numel() for x in req.inputs)
    if similarity == "ssim" and (isinstance(ssim_win_size, bool) or not isinstance(ssim_win_size, int)
                                 or ssim_win_size % 2 == 0 or not 1 <= ssim_win_size <= features):
        raise ValueError(f"ssim_win_size: expected an odd integer in [1, {features}] (features per example), "
                         f"got {ssim_win_size!r}")
    classes = check_classes(req.target, req.inputs[0].shape[0], num_classes, req.inputs[0].device)
    others = off_classes(classes, num_classes, seed, example_offset)

    def explained(t: Any, given: Optional[v.TensorOrTuple] = None) -> Tensor:
        attrs = explain_inputs(exp, req, was_tuple, t, example_offset, given)
        return torch.cat([a.reshape(a.shape[0], -1) for a in attrs], dim=1)

    return compare(explained(req.target, attributions), explained(others))
