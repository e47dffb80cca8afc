"""Gradient explainers, one module each, all on the one engine."""
from .gradient_shap import expected_gradients, gradient_shap
from .input_x_gradient import input_x_gradient
from .integrated_gradients import integrated_gradients
from .lrp import lrp
from .lrp_rules import (
    Alpha1_Beta0_Rule, Composite, EpsilonRule, GammaRule, IdentityRule, PropagationRule, ZPlusRule,
    default_composite,
)
from .saliency import saliency
from .smoothgrad import smoothgrad

__all__ = [
    "expected_gradients", "gradient_shap", "input_x_gradient", "integrated_gradients", "saliency",
    "smoothgrad", "lrp", "Alpha1_Beta0_Rule", "Composite", "EpsilonRule", "GammaRule", "IdentityRule",
    "PropagationRule", "ZPlusRule", "default_composite",
]
