"""Gradient explainers, one module each, all on the one engine."""
from .input_x_gradient import input_x_gradient
from .integrated_gradients import integrated_gradients
from .saliency import saliency
from .smoothgrad import smoothgrad

__all__ = ["input_x_gradient", "integrated_gradients", "saliency", "smoothgrad"]
