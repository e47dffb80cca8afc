"""The explanation methods an audit can compare: each a fastattr explainer
with the options the audit runs it with."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor

from .. import attr as _attr


@dataclasses.dataclass(frozen=True)
class Method:
    explainer: str  # a fastattr.attr function name
    options: Callable[[Tensor, int, int], Dict[str, Any]]  # (batch [b, *F], seed, example offset) -> kwargs
    settings: Dict[str, Any]  # what the options are, for summary.json


def _none(_x: Tensor, _seed: int, _offset: int) -> Dict[str, Any]:
    return {}


_IG_STEPS = 16
_NOISE_SAMPLES = 8
_NOISE_STDEV = 0.1

METHODS: Dict[str, Method] = {
    "saliency": Method("saliency", _none, {"abs": True}),
    "input_x_gradient": Method("input_x_gradient", _none, {}),
    "integrated_gradients": Method(
        "integrated_gradients", lambda x, s, o: {"n_steps": _IG_STEPS},
        {"n_steps": _IG_STEPS, "baselines": 0, "method": "gausslegendre"}),
    # Noise keyed by data-set index (example_offset): a batch's result does not depend on where it runs.
    "smoothgrad": Method(
        "smoothgrad", lambda x, s, o: {"n_samples": _NOISE_SAMPLES, "stdev": _NOISE_STDEV, "seed": s,
                                       "example_offset": o},
        {"n_samples": _NOISE_SAMPLES, "stdev": _NOISE_STDEV, "explainer": "saliency"}),
    "gradient_shap": Method(
        "gradient_shap", lambda x, s, o: {"baselines": torch.zeros_like(x[:1]), "n_samples": _NOISE_SAMPLES,
                                          "stdev": _NOISE_STDEV, "seed": s, "example_offset": o},
        {"baselines": "zeros", "n_samples": _NOISE_SAMPLES, "stdev": _NOISE_STDEV}),
    "guided_backprop": Method("guided_backprop", _none, {}),
    "deconvolution": Method("deconvolution", _none, {}),
}
METHODS = {k: m for k, m in METHODS.items() if m.explainer in _attr.__all__}

DEFAULT_METHODS: Tuple[str, ...] = tuple(
    n for n in ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop")
    if n in METHODS
)


def explain(method: str, model: Callable[..., Tensor], x: Tensor, target: Tensor, seed: int, offset: int,
            memory_budget: Any) -> Tensor:
    """Attributions ``[b, *F]`` of ``model(x)[i, target[i]]`` by ``method``
    (``offset``: the data-set index of ``x[0]``)."""
    m = METHODS[method]
    fn = getattr(_attr, m.explainer)
    return fn(model, x, target=target, memory_budget=memory_budget, **m.options(x, seed, offset))
