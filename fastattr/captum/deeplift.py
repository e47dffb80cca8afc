"""``DeepLift`` and ``DeepLiftShap`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from torch import Tensor, nn

from .. import _validate as v
from ..attr.deeplift import CustomAttributionFunc, deeplift, hooked_modules
from ..attr.deeplift_shap import deeplift_shap
from ..attr.relu_rules import require_module
from ._base import GradientAttribution
from ._reuse import refuse_reused_modules


class DeepLift(GradientAttribution):
    """Captum's ``DeepLift(model, multiply_by_inputs=True, eps=1e-10)`` (rescale rule)."""

    has_delta = True

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True, eps: float = 1e-10) -> None:
        require_module(model, "DeepLift")
        super().__init__(model, multiply_by_inputs)
        self.model = model
        self.eps = eps

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        baselines: v.BaselineType = None,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Optional[CustomAttributionFunc] = None,
    ) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
        """As :func:`fastattr.attr.deeplift.deeplift`: attributions shaped like
        ``inputs``, with ``return_convergence_delta`` also the deltas ``[B]``."""
        refuse_reused_modules(self.model, hooked_modules(self.model), inputs, additional_forward_args,
                              "DeepLift", "deeplift")
        return deeplift(
            self.model, inputs, baselines=baselines, target=target,
            additional_forward_args=additional_forward_args,
            return_convergence_delta=return_convergence_delta,
            custom_attribution_func=custom_attribution_func,
            multiply_by_inputs=self._multiply_by_inputs, eps=self.eps, captum_hooks=True,
        )


class DeepLiftShap(DeepLift):
    """Captum's ``DeepLiftShap(model, multiply_by_inputs=True)``: DeepLift
    against every example of a reference distribution, averaged."""

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, multiply_by_inputs)

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        baselines: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Optional[CustomAttributionFunc] = None,
    ) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
        """As :func:`fastattr.attr.deeplift_shap.deeplift_shap`: attributions
        shaped like ``inputs``; deltas ``[B * M]``."""
        refuse_reused_modules(self.model, hooked_modules(self.model), inputs, additional_forward_args,
                              "DeepLiftShap", "attr.deeplift_shap.deeplift_shap")
        return deeplift_shap(
            self.model, inputs, baselines, target, additional_forward_args, return_convergence_delta,
            custom_attribution_func, self._multiply_by_inputs, self.eps, captum_hooks=True,
        )
