"""``GradientShap`` as Captum 0.9's, with keyed draws."""
from __future__ import annotations

from typing import Any, Callable, Tuple, Union

from torch import Tensor

from .. import _validate as v
from ..attr.gradient_shap import gradient_shap
from ._base import GradientAttribution


class GradientShap(GradientAttribution):
    """Captum's ``GradientShap(forward_func, multiply_by_inputs=True)``; ``seed``
    (fastattr's addition) keys the reference draws, positions and noise, so
    repeated calls give the same result (Captum draws from the global RNGs)."""

    has_delta = True

    def __init__(self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = True,
                 seed: int = 0) -> None:
        super().__init__(forward_func, multiply_by_inputs)
        self.seed = seed

    def attribute(
        self,
        inputs: v.TensorOrTuple,
        baselines: Any,
        n_samples: int = 5,
        stdevs: Union[float, Tuple[float, ...]] = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ) -> Union[v.TensorOrTuple, Tuple[v.TensorOrTuple, Tensor]]:
        """As :func:`fastattr.gradient_shap`; deltas ``[B * n_samples]``."""
        return gradient_shap(
            self.forward_func, inputs, baselines, target=target,
            n_samples=n_samples, stdev=stdevs, seed=self.seed,
            additional_forward_args=additional_forward_args,
            return_convergence_delta=return_convergence_delta,
            multiply_by_inputs=self._multiply_by_inputs,
        )
