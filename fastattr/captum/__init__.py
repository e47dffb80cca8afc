"""Captum drop-in: ``from captum.attr import X`` becomes
``from fastattr.captum import X`` with the same constructor, ``attribute``
signature, defaults and return shapes, computed on fastattr's engine."""
from .gradient import InputXGradient, Saliency
from .gradient_shap import GradientShap
from .integrated_gradients import IntegratedGradients
from .lrp import LRP
from .noise_tunnel import NoiseTunnel

__all__ = ["GradientShap", "InputXGradient", "IntegratedGradients", "LRP", "NoiseTunnel", "Saliency"]
