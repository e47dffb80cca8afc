"""Gradient explainers, one module each, all on the one engine."""
from .adaptive_ig import IGAccuracy, adaptive_integrated_gradients
from .cam_family import (
    ablation_cam, eigen_cam, grad_cam_plus_plus, hires_cam, layer_cam, score_cam, swin_reshape_transform,
    vit_reshape_transform, xgrad_cam,
)
from .deeplift import deeplift
from .deeplift_shap import deeplift_shap
from .grad_cam import grad_cam, guided_grad_cam
from .gradient_shap import expected_gradients, gradient_shap
from .guided import deconvolution, guided_backprop
from .input_x_gradient import input_x_gradient
from .integrated_gradients import integrated_gradients
from .layer_deeplift import layer_deeplift, layer_deeplift_shap
from .layer_gradient_shap import layer_gradient_shap
from .layer_gradients import internal_influence, layer_activation, layer_conductance, layer_gradient_x_activation
from .layer_integrated_gradients import layer_integrated_gradients
from .lrp import layer_lrp, lrp
from .neuron import (
    neuron_conductance, neuron_deconvolution, neuron_deeplift, neuron_deeplift_shap, neuron_gradient, neuron_guided_backprop,
    neuron_integrated_gradients,
)
from .lrp_zennit import ZENNIT_COMPOSITES, zennit_composite
from .lrp_rules import (
    AlphaBetaRule, FlatRule, GeneralizedGammaRule, MultiTermRule, WSquareRule, ZBoxRule,
    Alpha1_Beta0_Rule, Composite, EpsilonRule, GammaRule, IdentityRule, PropagationRule, ZPlusRule,
    default_composite,
)
from .saliency import saliency
from .smoothgrad import smoothgrad

# Public helpers that are not explainers (a metric's explainer name must be one of the others).
HELPERS = ("adaptive_integrated_gradients", "default_composite", "swin_reshape_transform", "vit_reshape_transform", "zennit_composite")

__all__ = [
    "IGAccuracy", "adaptive_integrated_gradients",
    "ablation_cam", "eigen_cam", "grad_cam_plus_plus", "hires_cam", "layer_cam", "score_cam",
    "swin_reshape_transform", "vit_reshape_transform", "xgrad_cam",
    "deconvolution", "deeplift", "deeplift_shap", "expected_gradients", "grad_cam", "gradient_shap", "guided_backprop",
    "guided_grad_cam", "input_x_gradient", "integrated_gradients", "internal_influence", "layer_activation",
    "layer_conductance", "layer_deeplift", "layer_deeplift_shap", "layer_gradient_shap", "layer_gradient_x_activation", "layer_integrated_gradients", "layer_lrp", "lrp",
    "neuron_conductance", "neuron_deconvolution", "neuron_deeplift", "neuron_deeplift_shap", "neuron_gradient", "neuron_guided_backprop",
    "neuron_integrated_gradients",
    "saliency", "smoothgrad",
    "Alpha1_Beta0_Rule", "Composite", "EpsilonRule", "GammaRule", "IdentityRule", "PropagationRule",
    "ZPlusRule", "default_composite",
    "AlphaBetaRule", "FlatRule", "GeneralizedGammaRule", "MultiTermRule", "WSquareRule", "ZBoxRule",
    "ZENNIT_COMPOSITES", "zennit_composite",
]
