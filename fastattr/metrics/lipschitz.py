"""Local Lipschitz estimate of an explanation (Alvarez-Melis & Jaakkola 2018,
"On the robustness of interpretability methods"), as Quantus's
``LocalLipschitzEstimate`` per example, without its normalisation over the
batch axis: each example's value depends on its own perturbations only."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple, Union

from torch import Tensor

from .. import _validate as v
from ..attr.smoothgrad import check_seed
from ._explain import ExplainerType
from .sensitivity import (
    Perturbation, PerturbedExplanations, check_radius, flat_norm, float64_copies, row_differences,
)

# Quantus's lipschitz_constant adds it to the input distance (no division by 0).
LIPSCHITZ_EPS = 1e-10


def lipschitz_values(audit: PerturbedExplanations, perturbation: Perturbation,
                     ord_explanation: float = 2.0, ord_input: float = 2.0) -> Tensor:
    """float64 ``[B, n_samples]``: ``||a(x') - a(x)|| / (||x' - x|| + 1e-10)``,
    norms (default 2-norms) over all inputs' elements together."""
    clean, xs = float64_copies(audit.clean), float64_copies(audit.req.inputs)

    def value(perturbed: Tuple[Tensor, ...], attrs: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        explanation_change = flat_norm(row_differences(attrs, clean, examples), ord_explanation)
        input_change = flat_norm(row_differences(perturbed, xs, examples), ord_input)
        return explanation_change / (input_change + LIPSCHITZ_EPS)

    return audit.sample_values(perturbation, value, needs_inputs=True)


def local_lipschitz_estimate(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    std: Union[float, Tuple[float, ...]] = 0.1,
    n_samples: int = 10,
    seed: int = 0,
    additional_forward_args: Any = None,
    attributions: Optional[v.TensorOrTuple] = None,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> Tensor:
    """``max_n ||a(x) - a(x_n)||_2 / (||x - x_n||_2 + 1e-10)`` per example.

    ``x_n = x + std * z`` with ``z`` keyed standard normal noise (Quantus's
    ``batch_gaussian_noise``, default ``perturb_std=0.1``), keyed by
    ``(seed, example, n, element)``: the same seed gives the same values for
    any batch size, chunk size or batch composition. Unlike Quantus, the
    explanations are not normalised over the batch.

    Args:
        model, inputs, target, additional_forward_args, explainer,
            explainer_kwargs, seed, attributions, memory_budget, chunk_rows, example_offset,
            model_form: as :func:`fastattr.metrics.max_sensitivity`.
        std: standard deviation (> 0) of the Gaussian perturbation, or one per input.
        n_samples: perturbations per example (>= 1).

    Returns:
        float64 ``[B]``.
    """
    n_samples = v.check_positive_int(n_samples, "n_samples")
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    scales = check_radius(std, "std", len(inputs) if isinstance(inputs, tuple) else 1)
    audit = PerturbedExplanations.prepare(
        model, inputs, target, explainer, explainer_kwargs, additional_forward_args,
        attributions, memory_budget, chunk_rows, example_offset, model_form,
    )
    perturbation = Perturbation("gaussian", scales, n_samples, seed, example_offset=example_offset)
    return lipschitz_values(audit, perturbation).amax(dim=1)
