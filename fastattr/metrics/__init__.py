"""Robustness and faithfulness metrics of explanations, one module each, on
the engine: keyed perturbations run in byte-budgeted chunks, the clean
explanation computed once and shared."""
from ._explain import Explainer
from .deletion import Curve, deletion_curve, insertion_curve, pixel_flipping
from .fragility import FragilityResult, fragility
from .infidelity import infidelity
from .lipschitz import local_lipschitz_estimate
from .randomization import RandomizationResult, keyed_uniform_init, model_randomization, parameterized_layers
from .robustness import AttackAccuracy, fgsm_accuracy, pgd_accuracy
from .sensitivity import avg_sensitivity, max_sensitivity
from .similarity import pearson, spearman, ssim, top_k_intersection
from .stability import relative_input_stability

__all__ = [
    "AttackAccuracy", "Curve", "Explainer", "FragilityResult", "RandomizationResult", "avg_sensitivity",
    "deletion_curve", "fgsm_accuracy", "fragility", "infidelity", "insertion_curve", "keyed_uniform_init",
    "local_lipschitz_estimate", "max_sensitivity", "model_randomization", "parameterized_layers", "pearson",
    "pgd_accuracy", "pixel_flipping", "relative_input_stability", "spearman", "ssim", "top_k_intersection",
]
