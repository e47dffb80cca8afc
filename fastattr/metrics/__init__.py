"""Robustness and faithfulness metrics of explanations, one module each, on
the engine: keyed perturbations run in byte-budgeted chunks, the clean
explanation computed once and shared."""
from ._explain import Explainer
from .axiomatic import completeness, input_invariance, mean_shifted_model, non_sensitivity
from .complexity import effective_complexity, entropy_complexity, sparseness
from .consistency import consistency
from .continuity import continuity
from .deletion import Curve, deletion_curve, insertion_curve, pixel_flipping
from .faithfulness import correlation_subsets, faithfulness_correlation, faithfulness_estimate, sensitivity_n
from .faithfulness_monotonicity import monotonicity, monotonicity_correlation
from .faithfulness_regions import random_patch_order, region_perturbation, selectivity
from .faithfulness_sufficiency import sufficiency
from .fragility import FragilityResult, fragility
from .imputation import linear_imputation, noisy_linear_imputation
from .infidelity import infidelity
from .irof import IROFCurve, irof
from .lipschitz import local_lipschitz_estimate
from .localisation import (
    attribution_localisation, focus, localisation_auc, pointing_game, relevance_mass_accuracy,
    relevance_rank_accuracy, top_k_localisation,
)
from .random_logit import random_logit
from .randomization import (
    ComplexityChange, RandomizationResult, discrete_entropy, efficient_model_randomization, keyed_uniform_init,
    model_randomization, parameterized_layers, smooth_model_randomization,
)
from .road import road
from .robustness import AttackAccuracy, fgsm_accuracy, pgd_accuracy
from .sensitivity import avg_sensitivity, max_sensitivity
from .similarity import pearson, spearman, ssim, top_k_intersection
from .stability import relative_input_stability, relative_output_stability, relative_representation_stability
from .superpixels import slic

__all__ = [
    "AttackAccuracy", "Curve", "Explainer", "FragilityResult", "RandomizationResult", "avg_sensitivity",
    "deletion_curve", "fgsm_accuracy", "fragility", "infidelity", "insertion_curve", "keyed_uniform_init",
    "local_lipschitz_estimate", "max_sensitivity", "model_randomization", "parameterized_layers", "pearson",
    "pgd_accuracy", "pixel_flipping", "relative_input_stability", "spearman", "ssim", "top_k_intersection",
    # Quantus's faithfulness, localisation, complexity and axiomatic metrics
    "attribution_localisation", "completeness", "correlation_subsets", "effective_complexity",
    "entropy_complexity", "faithfulness_correlation", "faithfulness_estimate", "focus", "input_invariance",
    "localisation_auc", "mean_shifted_model", "monotonicity", "monotonicity_correlation", "non_sensitivity",
    "pointing_game", "random_patch_order", "region_perturbation", "relevance_mass_accuracy",
    "relevance_rank_accuracy", "selectivity", "sensitivity_n", "sparseness", "sufficiency", "top_k_localisation",
    "IROFCurve", "irof", "linear_imputation", "noisy_linear_imputation", "road", "slic",
    # Quantus's robustness and randomisation metrics
    "ComplexityChange", "consistency", "continuity", "discrete_entropy", "efficient_model_randomization",
    "random_logit", "relative_output_stability", "relative_representation_stability", "smooth_model_randomization",
]
