"""``IntegratedGradients`` as Captum 0.9's."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

from torch import Tensor

from .. import _validate as v
from ..attr.integrated_gradients import integrated_gradients
from ._base import GradientAttribution


class IntegratedGradients(GradientAttribution):
    """Captum's ``IntegratedGradients(forward_func, multiply_by_inputs=True)``."""

    has_delta = True

    def __init__(self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, multiply_by_inputs)

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        baselines: v.BaselineType = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
    ) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
        """As :func:`fastattr.integrated_gradients`; ``internal_batch_size``
        caps the rows per forward (on top of the memory budget)."""
        return integrated_gradients(
            self.forward_func, inputs, baselines=baselines, target=target,
            additional_forward_args=additional_forward_args, n_steps=n_steps, method=method,
            return_convergence_delta=return_convergence_delta,
            multiply_by_inputs=self._multiply_by_inputs, chunk_rows=internal_batch_size,
            model_form="eager",
        )
