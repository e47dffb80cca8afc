"""What every Captum drop-in class shares: Captum's ``forward_func`` attribute,
its ``get_name`` / ``has_convergence_delta`` / ``multiplies_by_inputs``
queries, and the one way an unsupported argument is refused."""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional

from torch import Tensor

from .. import _validate as v
from ..attr.convergence import convergence_delta


class Attribution:
    """Base of the drop-in classes (Captum's ``captum.attr.Attribution``).

    Subclasses implement ``attribute`` with their Captum class's signature.
    """

    # Whether attribute() takes return_convergence_delta=True (Captum's
    # has_convergence_delta()); set by the subclasses that do.
    has_delta = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "attribute" in vars(cls):
            cls.attribute = _wrapped(cls.attribute)

    def __init__(self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = False) -> None:
        if not callable(forward_func):
            raise TypeError(
                f"forward_func: expected a callable (an nn.Module or a function), "
                f"got {type(forward_func).__name__}"
            )
        self.forward_func = forward_func
        self._multiply_by_inputs = bool(multiply_by_inputs)

    @classmethod
    def get_name(cls) -> str:
        """The class name with spaces, as Captum's (``"Integrated Gradients"``)."""
        return "".join(c if c.islower() or i == 0 else " " + c for i, c in enumerate(cls.__name__))

    def has_convergence_delta(self) -> bool:
        """Whether ``attribute`` accepts ``return_convergence_delta=True``."""
        return self.has_delta

    @property
    def multiplies_by_inputs(self) -> bool:
        """Whether attributions are multiplied by ``inputs - baselines`` (global)."""
        return self._multiply_by_inputs

    def attribute_future(self) -> None:
        """Not implemented (as in Captum for every gradient method)."""
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")


class GradientAttribution(Attribution):
    """Captum's ``GradientAttribution``: an attribution with the completeness check."""

    def compute_convergence_delta(
        self,
        attributions: v.TensorOrTuple,
        start_point: v.BaselineType,
        end_point: v.TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """``[B]``: ``sum(attributions) - (f(end_point)[target] - f(start_point)[target])``,
        as :func:`fastattr.attr.convergence.convergence_delta`."""
        return convergence_delta(self.forward_func, attributions, start_point, end_point,
                                 target, additional_forward_args)


def reject(name: str, value: Any, supported: Any = None, why: Optional[str] = None) -> None:
    """Raise when the caller set Captum argument ``name`` to a value fastattr
    does not implement (anything but ``supported``), naming it: nothing is
    silently ignored."""
    if value is not supported and value != supported:
        reason = f": {why}" if why else ""
        raise NotImplementedError(
            f"{name}={value!r} is not supported by fastattr (only {supported!r}){reason}"
        )


def _wrapped(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` behind a wrapper that names it ``__wrapped__``, as Captum's
    ``attribute`` methods sit behind its ``log_usage`` decorator: code that
    reads a drop-in's argument names from ``attribute.__wrapped__`` (Captum's
    own tests do) finds them."""

    @functools.wraps(method)
    def attribute(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return attribute


def check_grad_kwargs(grad_kwargs: Optional[Dict[str, Any]]) -> None:
    """Captum passes ``grad_kwargs`` to ``torch.autograd.grad``; the engine
    takes its gradients itself, always with ``materialize_grads`` (zeros for
    a layer the target does not depend on), so that is the one key accepted."""
    if grad_kwargs is None:
        return
    if not isinstance(grad_kwargs, dict):
        raise TypeError(f"grad_kwargs: expected a dict or None, got {type(grad_kwargs).__name__}")
    others = sorted(set(grad_kwargs) - {"materialize_grads"})
    if others:
        raise NotImplementedError(
            f"grad_kwargs: {others} not supported by fastattr: the engine takes its own gradients "
            "(only materialize_grads, which it always does, is accepted)"
        )
