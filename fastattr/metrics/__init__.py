"""Robustness and faithfulness metrics of explanations, one module each, on
the engine: keyed perturbations run in byte-budgeted chunks, the clean
explanation computed once and shared."""
from ._explain import Explainer
from .deletion import Curve, deletion_curve, insertion_curve, pixel_flipping
from .infidelity import infidelity
from .lipschitz import local_lipschitz_estimate
from .sensitivity import avg_sensitivity, max_sensitivity
from .stability import relative_input_stability

__all__ = [
    "Curve", "Explainer", "avg_sensitivity", "deletion_curve", "infidelity", "insertion_curve",
    "local_lipschitz_estimate", "max_sensitivity", "pixel_flipping", "relative_input_stability",
]
