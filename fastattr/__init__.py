"""fastattr: fast, reproducible gradient attributions for PyTorch.

Every method is a weighted sum of gradients at generated points, run by one
chunked engine on fused C++/CUDA kernels (or their pure-PyTorch reference
when the compiled library is missing; see :func:`backend`).
"""
from ._backend import backend
from ._backend import report as backend_report
from .heap import keep_freed_memory
from .attr import (
    IGAccuracy, adaptive_integrated_gradients,
    ablation_cam, eigen_cam, grad_cam_plus_plus, hires_cam, layer_cam, score_cam, swin_reshape_transform,
    vit_reshape_transform, xgrad_cam,
    deconvolution, deeplift, deeplift_shap, expected_gradients, grad_cam, gradient_shap, guided_backprop,
    guided_grad_cam, input_x_gradient, integrated_gradients, internal_influence, layer_activation,
    layer_conductance, layer_deeplift, layer_deeplift_shap, layer_gradient_shap, layer_gradient_x_activation, layer_integrated_gradients, layer_lrp, lrp,
    neuron_conductance, neuron_deconvolution, neuron_deeplift, neuron_deeplift_shap, neuron_gradient, neuron_guided_backprop,
    neuron_integrated_gradients, saliency, smoothgrad,
)

__version__ = "0.1.0"

__all__ = [
    "IGAccuracy", "adaptive_integrated_gradients",
    "ablation_cam", "eigen_cam", "grad_cam_plus_plus", "hires_cam", "layer_cam", "score_cam",
    "swin_reshape_transform", "vit_reshape_transform", "xgrad_cam",
    "backend", "backend_report", "deconvolution", "deeplift", "deeplift_shap", "expected_gradients", "grad_cam", "gradient_shap",
    "guided_backprop", "guided_grad_cam", "input_x_gradient", "integrated_gradients", "internal_influence",
    "keep_freed_memory", "layer_activation", "layer_conductance", "layer_deeplift", "layer_deeplift_shap", "layer_gradient_shap",
    "layer_gradient_x_activation", "layer_integrated_gradients", "layer_lrp", "lrp", "neuron_conductance", "neuron_deconvolution",
    "neuron_deeplift", "neuron_deeplift_shap", "neuron_gradient", "neuron_guided_backprop",
    "neuron_integrated_gradients", "saliency", "smoothgrad",
]
