"""``LayerDeepLift``, ``LayerDeepLiftShap`` and ``LayerLRP`` as Captum 0.9's:
the rule-based methods at a layer. Like the input-level drop-ins they refuse
a model that calls a hooked module twice, and ``LayerLRP`` uses Captum's
default rules only, as Captum does."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

from torch import Tensor, nn

from .. import _validate as v
from ..attr._layer import LayerType
from ..attr.deeplift import CustomAttributionFunc, hooked_modules
from ..attr.layer_deeplift import layer_deeplift, layer_deeplift_shap
from ..attr.layer_gradients import LayerResult
from ..attr.lrp import layer_lrp
from ..attr.lrp_rules import captum_composite
from ..attr.relu_rules import require_module
from ._base import GradientAttribution, check_grad_kwargs
from ._reuse import refuse_reused_modules
from .layer import LayerAttribution
from .lrp import check_rules_set, prepare_captum_rules


class LayerDeepLift(LayerAttribution, GradientAttribution):
    """Captum's ``LayerDeepLift(model, layer, multiply_by_inputs=True)`` (rescale rule)."""

    has_delta = True

    def __init__(self, model: nn.Module, layer: nn.Module, multiply_by_inputs: bool = True) -> None:
        require_module(model, type(self).__name__)
        super().__init__(model, layer)
        self.model = model
        self._multiply_by_inputs = multiply_by_inputs

    def _refuse_reuse(self, inputs: v.TensorOrTuple, additional_forward_args: Any) -> None:
        refuse_reused_modules(self.model, hooked_modules(self.model), inputs, additional_forward_args,
                              type(self).__name__, "attr.layer_deeplift.layer_deeplift")

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        baselines: v.BaselineType = None,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Optional[CustomAttributionFunc] = None,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
        """As :func:`fastattr.attr.layer_deeplift.layer_deeplift`."""
        check_grad_kwargs(grad_kwargs)
        self._refuse_reuse(inputs, additional_forward_args)
        return layer_deeplift(self.model, inputs, self.layer, baselines, target, additional_forward_args,
                              return_convergence_delta, attribute_to_layer_input, custom_attribution_func,
                              self._multiply_by_inputs)


class LayerDeepLiftShap(LayerDeepLift):
    """Captum's ``LayerDeepLiftShap(model, layer, multiply_by_inputs=True)``."""

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        baselines: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Optional[CustomAttributionFunc] = None,
    ) -> Union[LayerResult, Tuple[LayerResult, Tensor]]:
        """As :func:`fastattr.attr.layer_deeplift.layer_deeplift_shap`; deltas ``[B * M]``."""
        self._refuse_reuse(inputs, additional_forward_args)
        return layer_deeplift_shap(self.model, inputs, self.layer, baselines, target, additional_forward_args,
                                   return_convergence_delta, attribute_to_layer_input, custom_attribution_func,
                                   self._multiply_by_inputs)


class LayerLRP(LayerAttribution, GradientAttribution):
    """Captum's ``LayerLRP(model, layer)``; ``layer`` may be a list. Rules as
    :class:`~fastattr.captum.LRP`'s (``module.rule``, else Captum's defaults)."""

    has_delta = True

    def __init__(self, model: nn.Module, layer: LayerType) -> None:
        require_module(model, "LayerLRP")
        super().__init__(model, layer)
        self.model = model
        self._multiply_by_inputs = True
        check_rules_set(model)

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        verbose: bool = False,
    ) -> Any:
        """As :func:`fastattr.attr.lrp.layer_lrp`; ``verbose`` prints each layer's rule."""
        prepare_captum_rules(self.model, inputs, additional_forward_args, verbose, "LayerLRP", "attr.lrp.layer_lrp")
        return layer_lrp(self.model, inputs, self.layer, target, additional_forward_args, captum_composite(),
                         return_convergence_delta, attribute_to_layer_input)
