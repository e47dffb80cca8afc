"""How a metric calls the explanation method it audits: a fastattr explainer
(by function or name) with its options, or any user callable."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor

from .. import _validate as v
from .. import attr as _attr
from ..engine import PointPlan
from ..engine.model_form import check_model_form
from ..attr.smoothgrad import _explainer_plan

ExplainerType = Union[str, Callable[..., v.TensorOrTuple]]

# The explainers whose plan a metric can extend with its perturbations (one
# engine run for all perturbed copies), by function and by name.
_ENGINE_NATIVE: Dict[Callable[..., Any], str] = {
    _attr.saliency: "saliency",
    _attr.input_x_gradient: "input_x_gradient",
    _attr.integrated_gradients: "integrated_gradients",
}


def _takes(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn``'s signature has a parameter ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some callables have no signature
        return False


def explainer_names() -> Tuple[str, ...]:
    """The names of fastattr's explainer functions (``fastattr.attr``'s
    functions but its helpers, such as ``vit_reshape_transform``)."""
    return tuple(n for n in _attr.__all__ if n[0].islower() and n not in _attr.HELPERS)


@functools.lru_cache(maxsize=None)
def _own_explainers() -> Dict[Callable[..., Any], Tuple[bool, bool]]:
    """fastattr's explainer functions, each with whether it takes
    ``(example_offset, model_form)``: read once, as ``inspect.signature``
    costs tens of microseconds, which a metric on a small model pays on every call."""
    fns = (getattr(_attr, n) for n in explainer_names())
    return {fn: (_takes(fn, "example_offset"), _takes(fn, "model_form")) for fn in fns}


class Explainer:
    """An explanation method and its options, called as
    ``fn(model, inputs, target=..., additional_forward_args=..., **options)``
    (every fastattr explainer's signature; a user callable must accept it too).

    ``model_form`` (``"eager"``, ``"fast"`` or ``"compiled"``, see
    :mod:`fastattr.engine.model_form`) is the form the explainer's rows run
    the model in: passed to a fastattr explainer that takes ``model_form``
    unless ``explainer_kwargs`` sets it (the caller's choice wins; a user
    callable gets neither). ``"eager"`` by default: the drop-ins' contract
    is the anchors' numbers; the metric functions pass their own ``model_form``."""

    def __init__(self, explainer: ExplainerType = "saliency",
                 explainer_kwargs: Optional[Mapping[str, Any]] = None, model_form: str = "eager") -> None:
        if isinstance(explainer, str):
            if explainer not in explainer_names():
                names = sorted(explainer_names())
                raise ValueError(f"explainer: expected one of {names} or a callable, got {explainer!r}")
            explainer = getattr(_attr, explainer)
        if not callable(explainer):
            raise TypeError(f"explainer: expected a name or a callable, got {type(explainer).__name__}")
        if explainer_kwargs is not None and not isinstance(explainer_kwargs, Mapping):
            raise TypeError(
                f"explainer_kwargs: expected a dict of the explainer's options, got {type(explainer_kwargs).__name__}"
            )
        self.fn = explainer
        self.kwargs: Dict[str, Any] = dict(explainer_kwargs or {})
        if "example_offset" in self.kwargs:
            raise ValueError(
                "explainer_kwargs: example_offset is set by the metric for every explained row "
                "(pass the metric's own example_offset instead)"
            )
        check_model_form(model_form)
        own = _own_explainers()
        self.is_fastattr = explainer in own
        self.takes_example_offset, takes_form = own[explainer] if self.is_fastattr else (
            _takes(explainer, "example_offset"), False)
        # What the explainer is given, and the form its rows run in (an engine-native
        # plan that a metric extends runs in it too).
        self.passes_model_form = takes_form and "model_form" not in self.kwargs
        self.model_form = check_model_form(self.kwargs["model_form"]) if takes_form and not self.passes_model_form \
            else model_form

    @property
    def engine_name(self) -> Optional[str]:
        """The :func:`fastattr.smoothgrad` explainer name when a metric can fold
        its perturbations into this explainer's own plan (None: call it per batch)."""
        return _ENGINE_NATIVE.get(self.fn)

    def plan(self) -> Tuple[PointPlan, bool, Any]:
        """``(plan, needs_baselines, baselines)`` of an engine-native explainer
        (its ``model_form`` option is :attr:`model_form`, not part of the plan)."""
        return _explainer_plan(self.engine_name, {k: a for k, a in self.kwargs.items() if k != "model_form"})

    def __call__(self, model: Callable[..., Tensor], inputs: Tuple[Tensor, ...], was_tuple: bool,
                 target: Any = None, additional_forward_args: Any = None,
                 memory_budget: Optional[int] = None, example_offset: int = 0) -> Tuple[Tensor, ...]:
        """Attributions of ``inputs`` (each ``[n, *F_i]``), checked to have the
        inputs' shapes. ``example_offset`` keys a random explainer's draws for
        row ``r`` as example ``example_offset + r`` (passed when it takes one),
        so they do not depend on how the rows were chunked."""
        extra: Dict[str, Any] = {}
        if self.is_fastattr and memory_budget is not None:
            extra["memory_budget"] = memory_budget
        if self.takes_example_offset:
            extra["example_offset"] = example_offset
        if self.passes_model_form:
            extra["model_form"] = self.model_form
        out = self.fn(model, inputs if was_tuple else inputs[0], target=target,
                      additional_forward_args=additional_forward_args, **self.kwargs, **extra)
        attrs = out if isinstance(out, tuple) else (out,)
        if len(attrs) != len(inputs) or any(
            not isinstance(a, Tensor) or a.shape != x.shape for a, x in zip(attrs, inputs)
        ):
            got = [tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__ for a in attrs]
            raise ValueError(
                f"explainer: expected attributions shaped like the inputs "
                f"{[tuple(x.shape) for x in inputs]}, got {got}"
            )
        return attrs
