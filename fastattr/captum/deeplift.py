"""``DeepLift`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from torch import Tensor, nn

from .. import _validate as v
from ..attr.deeplift import CustomAttributionFunc, deeplift
from ..attr.relu_rules import require_module
from ._base import Attribution, captum_target


class DeepLift(Attribution):
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
        return deeplift(
            self.model, inputs, baselines=baselines, target=captum_target(target),
            additional_forward_args=additional_forward_args,
            return_convergence_delta=return_convergence_delta,
            custom_attribution_func=custom_attribution_func,
            multiply_by_inputs=self._multiply_by_inputs, eps=self.eps,
        )
