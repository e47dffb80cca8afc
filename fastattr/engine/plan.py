"""What an explainer asks the engine to evaluate.

Every gradient method here is a weighted sum of gradients at generated points:
for each example ``b``, ``n_samples`` noisy copies ``x_n`` (or just ``x``) and,
for path methods, ``S`` points ``base + alpha_s (x_n - base)`` on the path to
each copy. Rows are example-major: row ``r`` is example ``r // (N*S)``, sample
``(r // S) % N``, step ``r % S``.

Per (example, sample) the step gradients are summed with ``step_weights``
(the *inner* sum), turned into a per-sample attribution by
``sample_transform``, and the samples are averaged (the *outer* sum, with the
mean of squares when ``keep_square``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

# What a per-sample attribution is, given the inner gradient sum g:
SAMPLE_TRANSFORMS = (
    "grad",  # g
    "abs",  # |g|                       (Saliency's default)
    "times_input",  # g * x_n           (input x gradient)
    "times_input_minus_baseline",  # g * (x_n - base)   (integrated gradients)
)

# Purpose tags keep the random streams of different uses apart (csrc/README.md §2).
PURPOSE_SMOOTHGRAD = 1
PURPOSE_GRADIENT_SHAP = 2  # GradientSHAP's input noise
PURPOSE_REFERENCE_DRAW = 3  # GradientSHAP's reference index and path position
PURPOSE_PERTURBATION = 4  # metrics' perturbations of the input (sensitivity, Lipschitz, stability)
PURPOSE_INFIDELITY = 5  # infidelity's perturbations
PURPOSE_ATTACK = 6  # random starts of attacks (PGD, fragility)
PURPOSE_RANDOMIZATION = 7  # model-parameter randomization (sanity checks)


@dataclass(frozen=True)
class PointPlan:
    """The points, weights and per-sample finalize of one explainer call."""

    alphas: Optional[Tensor]  # float64 [S] path positions, or None (S = 1, no path)
    step_weights: Tensor  # float64 [S]
    n_samples: int = 1
    # "none" | "gaussian" | "uniform", or "gaussian_antithetic" | "uniform_antithetic"
    # (sample n takes pair n // 2's draws times (-1)^n; csrc/README.md section 3)
    noise: str = "none"
    noise_scales: Tuple[float, ...] = ()  # one stdev / radius per input
    seed: int = 0
    # Random draws key example b as example_offset + b: its index in a data
    # set when the caller explains one batch of it (csrc/README.md section 2).
    example_offset: int = 0
    purpose: int = 0
    sample_transform: str = "grad"
    keep_square: bool = False

    @property
    def n_steps(self) -> int:
        return 1 if self.alphas is None else int(self.alphas.shape[0])

    @property
    def points_per_example(self) -> int:
        return self.n_samples * self.n_steps

    def stream(self, input_index: int) -> int:
        """Philox stream of input ``input_index`` for this plan's purpose."""
        return self.purpose * 65536 + input_index


def noise_kind(kind: str, antithetic: bool) -> str:
    """The row generator's name of noise ``kind`` (``"gaussian"`` or
    ``"uniform"``), drawn in antithetic pairs ``(z, -z)`` when ``antithetic``."""
    return f"{kind}_antithetic" if antithetic else kind


@functools.lru_cache(maxsize=None)
def single_point_plan(sample_transform: str) -> PointPlan:
    """The plan of a method that takes the gradient at the input itself
    (cached: plans are immutable)."""
    return PointPlan(
        alphas=None,
        step_weights=torch.ones(1, dtype=torch.float64),
        sample_transform=sample_transform,
    )
