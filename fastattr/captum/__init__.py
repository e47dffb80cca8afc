"""Captum drop-in: ``from captum.attr import X`` becomes
``from fastattr.captum import X`` with the same constructor, ``attribute``
signature, defaults and return shapes, computed on fastattr's engine."""
from .deeplift import DeepLift, DeepLiftShap
from .gradient import InputXGradient, Saliency
from .gradient_shap import GradientShap
from .guided import Deconvolution, GuidedBackprop
from .integrated_gradients import IntegratedGradients
from .layer import GuidedGradCam, LayerAttribution, LayerGradCam, LayerIntegratedGradients
from .layer_gradients import (
    InternalInfluence, LayerActivation, LayerConductance, LayerGradientShap, LayerGradientXActivation,
)
from .layer_rules import LayerDeepLift, LayerDeepLiftShap, LayerLRP
from .lrp import LRP
from .neuron import (
    NeuronAttribution, NeuronConductance, NeuronDeconvolution, NeuronDeepLift, NeuronDeepLiftShap, NeuronGradient,
    NeuronGradientShap, NeuronGuidedBackprop, NeuronIntegratedGradients,
)
from .noise_tunnel import NoiseTunnel

__all__ = [
    "Deconvolution", "DeepLift", "DeepLiftShap", "GradientShap", "GuidedBackprop", "GuidedGradCam", "InputXGradient",
    "IntegratedGradients", "InternalInfluence", "LRP", "LayerActivation", "LayerAttribution",
    "LayerConductance", "LayerDeepLift", "LayerDeepLiftShap", "LayerGradCam", "LayerGradientShap", "LayerGradientXActivation", "LayerIntegratedGradients", "LayerLRP",
    "NeuronAttribution", "NeuronConductance", "NeuronDeconvolution", "NeuronDeepLift", "NeuronDeepLiftShap", "NeuronGradient",
    "NeuronGradientShap", "NeuronGuidedBackprop", "NeuronIntegratedGradients", "NoiseTunnel", "Saliency",
]
