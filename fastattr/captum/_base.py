"""What every Captum drop-in class shares: Captum's ``forward_func`` attribute,
its ``get_name`` / ``has_convergence_delta`` / ``multiplies_by_inputs``
queries, and the one way an unsupported argument is refused."""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor


class Attribution:
    """Base of the drop-in classes (Captum's ``captum.attr.Attribution``).

    Subclasses implement ``attribute`` with their Captum class's signature.
    """

    # Whether attribute() takes return_convergence_delta=True (Captum's
    # has_convergence_delta()); set by the subclasses that do.
    has_delta = False

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


def reject(name: str, value: Any, supported: Any = None, why: Optional[str] = None) -> None:
    """Raise when the caller set Captum argument ``name`` to a value fastattr
    does not implement (anything but ``supported``), naming it: nothing is
    silently ignored."""
    if value is not supported and value != supported:
        reason = f": {why}" if why else ""
        raise NotImplementedError(
            f"{name}={value!r} is not supported by fastattr (only {supported!r}){reason}"
        )



def captum_target(target: Any) -> Any:
    """Captum's target forms as fastattr's: a 1-tuple ``(c,)`` is class ``c``;
    a longer tuple or a list of tuples indexes an output with more than two
    dims, which fastattr's engine (outputs ``[B, C]`` or ``[B]``) does not take."""
    if isinstance(target, tuple):
        if len(target) == 1:
            return target[0]
        raise NotImplementedError(
            f"target={target!r}: tuple targets index outputs with more than 2 dims; "
            "fastattr explains outputs of shape [B, C] or [B] (pass a class index)"
        )
    if isinstance(target, list) and any(isinstance(t, tuple) for t in target):
        raise NotImplementedError(
            "target: a list of tuples indexes outputs with more than 2 dims; fastattr "
            "explains outputs of shape [B, C] or [B] (pass one class index per example)"
        )
    return target
