"""``GradientShap`` as Captum 0.9's: Captum's own draws by default, keyed
draws with a ``seed``."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

from torch import Tensor

from .. import _validate as v
from ..attr.gradient_shap import gradient_shap, gradient_shap_at
from ..attr.smoothgrad import check_seed
from ._base import GradientAttribution
from ._global_draws import explain_on_captum_draws


class GradientShap(GradientAttribution):
    """Captum's ``GradientShap(forward_func, multiply_by_inputs=True)``, and
    ``seed`` (fastattr's addition): None (default) draws the references,
    positions and noise from NumPy's and torch's global RNGs exactly as
    Captum does (Captum's numbers under the same global seed); an int keys
    every draw by (seed, example, sample), so repeated calls, any batch and
    any chunking give the same result (:func:`fastattr.gradient_shap`)."""

    has_delta = True

    def __init__(self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = True,
                 seed: Optional[int] = None) -> None:
        super().__init__(forward_func, multiply_by_inputs)
        if seed is not None:
            check_seed(seed)
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
        if self.seed is not None:
            return gradient_shap(
                self.forward_func, inputs, baselines, target=target,
                n_samples=n_samples, stdev=stdevs, seed=self.seed,
                additional_forward_args=additional_forward_args,
                return_convergence_delta=return_convergence_delta,
                multiply_by_inputs=self._multiply_by_inputs, model_form="eager",
            )
        return explain_on_captum_draws(
            lambda rows, refs, alphas, t, args: gradient_shap_at(
                self.forward_func, rows, refs, alphas, t, args, return_convergence_delta,
                self._multiply_by_inputs),
            inputs, baselines, n_samples, stdevs, target, additional_forward_args, return_convergence_delta)
