"""Captum 0.9's neuron attributions (``NeuronGradient``,
``NeuronIntegratedGradients``, ``NeuronConductance``, ``NeuronGradientShap``, ``NeuronGuidedBackprop``,
``NeuronDeconvolution``, ``NeuronDeepLift``, ``NeuronDeepLiftShap``): each
runs fastattr's input method on the model cut at the layer
(:class:`~fastattr.attr.neuron.NeuronOutput`)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from torch import Tensor, nn

from .. import _validate as v
from ..attr.deeplift import CustomAttributionFunc, hooked_modules
from ..attr.neuron import (
    NeuronSelector, neuron_conductance, neuron_deconvolution, neuron_deeplift, neuron_deeplift_shap, neuron_gradient,
    neuron_guided_backprop, neuron_integrated_gradients, neuron_model,
)
from ..attr.relu_rules import require_module
from ._base import GradientAttribution, check_grad_kwargs, reject
from ._reuse import refuse_reused_modules
from .gradient_shap import GradientShap
from .layer import _NO_DATA_PARALLEL


class NeuronAttribution(GradientAttribution):
    """Captum's ``NeuronAttribution``: an attribution of one neuron of ``layer``."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: nn.Module,
                 device_ids: Union[None, List[int]] = None, multiply_by_inputs: bool = False) -> None:
        super().__init__(forward_func, multiply_by_inputs)
        reject("device_ids", device_ids, why=_NO_DATA_PARALLEL)
        self.layer = layer
        self.device_ids = device_ids


class NeuronGradient(NeuronAttribution):
    """Captum's ``NeuronGradient(forward_func, layer, device_ids=None)``."""

    def attribute(self, inputs: v.TensorOrTuple, neuron_selector: NeuronSelector,
                  additional_forward_args: Any = None, attribute_to_neuron_input: bool = False
                  ) -> v.TensorOrTuple:
        """As :func:`fastattr.attr.neuron.neuron_gradient`."""
        return neuron_gradient(self.forward_func, inputs, self.layer, neuron_selector, additional_forward_args,
                               attribute_to_neuron_input)


class NeuronIntegratedGradients(NeuronAttribution):
    """Captum's ``NeuronIntegratedGradients(forward_func, layer, device_ids=None,
    multiply_by_inputs=True)``."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: nn.Module,
                 device_ids: Union[None, List[int]] = None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids, multiply_by_inputs)

    def attribute(self, inputs: v.TensorOrTuple, neuron_selector: NeuronSelector,
                  baselines: v.BaselineType = None, additional_forward_args: Any = None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  attribute_to_neuron_input: bool = False) -> v.TensorOrTuple:
        """As :func:`fastattr.attr.neuron.neuron_integrated_gradients`."""
        return neuron_integrated_gradients(
            self.forward_func, inputs, self.layer, neuron_selector, baselines, additional_forward_args,
            n_steps, method, internal_batch_size, attribute_to_neuron_input, self._multiply_by_inputs)


class NeuronGradientShap(NeuronAttribution):
    """Captum's ``NeuronGradientShap(forward_func, layer, device_ids=None,
    multiply_by_inputs=True)``; ``seed`` as :class:`~fastattr.captum.GradientShap`'s
    (None: Captum's draws from the global RNGs)."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: nn.Module,
                 device_ids: Union[None, List[int]] = None, multiply_by_inputs: bool = True,
                 seed: Optional[int] = None) -> None:
        super().__init__(forward_func, layer, device_ids, multiply_by_inputs)
        self.seed = seed

    def attribute(self, inputs: v.TensorOrTuple, neuron_selector: NeuronSelector, baselines: Any,
                  n_samples: int = 5, stdevs: Union[float, Tuple[float, ...]] = 0.0,
                  additional_forward_args: Any = None, attribute_to_neuron_input: bool = False
                  ) -> v.TensorOrTuple:
        """GradientShap of the neuron: attributions shaped like ``inputs``."""
        cut = neuron_model(self.forward_func, self.layer, neuron_selector, attribute_to_neuron_input)
        return GradientShap(cut, self._multiply_by_inputs, self.seed).attribute(
            inputs, baselines, n_samples, stdevs, None, additional_forward_args)


class _NeuronRuleMethod(NeuronAttribution):
    """The neuron methods whose backward rules need the model to be an ``nn.Module``."""

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Union[None, List[int]] = None,
                 multiply_by_inputs: bool = False) -> None:
        require_module(model, type(self).__name__)
        super().__init__(model, layer, device_ids, multiply_by_inputs)
        self.model = model


class NeuronGuidedBackprop(_NeuronRuleMethod):
    """Captum's ``NeuronGuidedBackprop(model, layer, device_ids=None)``."""

    def attribute(self, inputs: v.TensorOrTuple, neuron_selector: NeuronSelector,
                  additional_forward_args: Any = None, attribute_to_neuron_input: bool = False
                  ) -> v.TensorOrTuple:
        """As :func:`fastattr.attr.neuron.neuron_guided_backprop`."""
        return neuron_guided_backprop(self.model, inputs, self.layer, neuron_selector, additional_forward_args,
                                      attribute_to_neuron_input)


class NeuronDeconvolution(_NeuronRuleMethod):
    """Captum's ``NeuronDeconvolution(model, layer, device_ids=None)``."""

    def attribute(self, inputs: v.TensorOrTuple, neuron_selector: NeuronSelector,
                  additional_forward_args: Any = None, attribute_to_neuron_input: bool = False
                  ) -> v.TensorOrTuple:
        """As :func:`fastattr.attr.neuron.neuron_deconvolution`."""
        return neuron_deconvolution(self.model, inputs, self.layer, neuron_selector, additional_forward_args,
                                    attribute_to_neuron_input)


class NeuronDeepLift(_NeuronRuleMethod):
    """Captum's ``NeuronDeepLift(model, layer, multiply_by_inputs=True)``; like
    Captum's, it refuses a model that calls a nonlinearity module twice."""

    def __init__(self, model: nn.Module, layer: nn.Module, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, layer, None, multiply_by_inputs)

    def attribute(self, inputs: v.TensorOrTuple, neuron_selector: NeuronSelector,
                  baselines: v.BaselineType = None, additional_forward_args: Any = None,
                  attribute_to_neuron_input: bool = False,
                  custom_attribution_func: Optional[CustomAttributionFunc] = None) -> v.TensorOrTuple:
        """As :func:`fastattr.attr.neuron.neuron_deeplift`."""
        refuse_reused_modules(self.model, hooked_modules(self.model), inputs, additional_forward_args,
                              "NeuronDeepLift", "attr.neuron.neuron_deeplift")
        return neuron_deeplift(self.model, inputs, self.layer, neuron_selector, baselines,
                               additional_forward_args, attribute_to_neuron_input, custom_attribution_func,
                               self._multiply_by_inputs, captum_hooks=True)


class NeuronDeepLiftShap(_NeuronRuleMethod):
    """Captum's ``NeuronDeepLiftShap(model, layer, multiply_by_inputs=True)``."""

    def __init__(self, model: nn.Module, layer: nn.Module, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, layer, None, multiply_by_inputs)

    def attribute(self, inputs: v.TensorOrTuple, neuron_selector: NeuronSelector, baselines: Any,
                  additional_forward_args: Any = None, attribute_to_neuron_input: bool = False,
                  custom_attribution_func: Optional[CustomAttributionFunc] = None) -> v.TensorOrTuple:
        """As :func:`fastattr.attr.neuron.neuron_deeplift_shap`."""
        refuse_reused_modules(self.model, hooked_modules(self.model), inputs, additional_forward_args,
                              "NeuronDeepLiftShap", "attr.neuron.neuron_deeplift_shap")
        return neuron_deeplift_shap(self.model, inputs, self.layer, neuron_selector, baselines,
                                    additional_forward_args, attribute_to_neuron_input,
                                    custom_attribution_func, self._multiply_by_inputs, captum_hooks=True)


class NeuronConductance(NeuronAttribution):
    """Captum's ``NeuronConductance(forward_func, layer, device_ids=None,
    multiply_by_inputs=True)``."""

    def __init__(self, forward_func: Callable[..., Tensor], layer: nn.Module,
                 device_ids: Union[None, List[int]] = None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids, multiply_by_inputs)

    def attribute(self, inputs: v.TensorOrTuple, neuron_selector: NeuronSelector,
                  baselines: v.BaselineType = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "riemann_trapezoid", internal_batch_size: Optional[int] = None,
                  attribute_to_neuron_input: bool = False, grad_kwargs: Optional[Dict[str, Any]] = None
                  ) -> v.TensorOrTuple:
        """As :func:`fastattr.attr.neuron.neuron_conductance`."""
        check_grad_kwargs(grad_kwargs)
        return neuron_conductance(
            self.forward_func, inputs, self.layer, neuron_selector, baselines, target, additional_forward_args,
            n_steps, method, internal_batch_size, attribute_to_neuron_input, self._multiply_by_inputs)
