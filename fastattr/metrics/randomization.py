"""Model-parameter randomization sanity check (Adebayo et al. 2018): how
similar an explanation stays when a model's layers are re-initialized,
cascading from the top layer down or one layer at a time.

Each step randomizes layers of one deep copy of the model (the caller's
model is never touched) and recomputes the explanation on it; the clean
explanation is computed once. Parameters are redrawn from keyed uniforms,
keyed by (seed, PURPOSE_RANDOMIZATION, the module's index in
``model.named_modules()``, the parameter's index in the module, element),
so a seed gives the same randomized model in any process or device.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import _validate as v
from .. import ops
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_RANDOMIZATION
from ..engine.train_mode import warn_no_more
from ._explain import Explainer, ExplainerType
from .similarity import spearman, ssim

ORDERS = ("cascading", "independent")
# Randomize(name, module, module_index): redraw a module's parameters in place.
Randomize = Callable[[str, nn.Module, int], None]


class RandomizationResult(NamedTuple):
    """Similarity of the clean explanation to each randomized model's."""

    layers: List[str]  # the randomized module of each step, in step order
    spearman: Tensor  # float64 [L, B]
    ssim: Tensor  # float64 [L, B]


def parameterized_layers(model: nn.Module) -> List[str]:
    """Names of the modules that own parameters, in ``named_modules()`` order
    (the default layers of the check)."""
    return [name for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]


def keyed_uniform_init(seed: int) -> Randomize:
    """The default randomization: each parameter of the module uniform in
    ``[-bound, bound)``, ``bound = 1 / sqrt(fan_in)`` of the module's first
    parameter with two or more dims (torch's default ``Linear``/``Conv``
    initialization range), or ``bound = 1`` for modules with only 1-D
    parameters (norm layers); draws keyed by ``seed`` and the module's index."""

    def randomize(name: str, module: nn.Module, module_index: int) -> None:
        params = list(module.parameters(recurse=False))
        weights = [p for p in params if p.dim() >= 2]
        bound = 1.0 / math.sqrt(weights[0][0].numel()) if weights else 1.0
        with torch.no_grad():
            for j, p in enumerate(params):
                flat = p.new_zeros(1, p.numel(), dtype=p.dtype if p.is_floating_point() else torch.float32)
                z = ops.generate_rows(
                    flat, None, None, len(params), "uniform", 1.0, seed,
                    PURPOSE_RANDOMIZATION * 65536, j, 1, module_index,
                )
                p.copy_((bound * z).view_as(p))

    return randomize


def randomized_models(
    model: nn.Module, layers: Sequence[str], order: str, randomize: Randomize
) -> Iterator[Tuple[str, nn.Module]]:
    """``(layer, model copy)`` per step: ``cascading`` randomizes ``layers``
    from the last one backwards, cumulatively; ``independent`` randomizes
    each alone, in the given order (the previous layer's parameters and
    buffers restored first). One deep copy serves every step (it is
    yielded again, changed: use it before the next step)."""
    index = {name: i for i, (name, _) in enumerate(model.named_modules())}
    twin = copy.deepcopy(model)
    warn_no_more(twin)  # a train-mode model is warned about once: the original, not each copy
    twin_modules = dict(twin.named_modules())
    originals = dict(model.named_modules())
    steps = list(reversed(layers)) if order == "cascading" else list(layers)
    previous: Optional[str] = None
    for name in steps:
        if order == "independent" and previous is not None:
            _restore(twin_modules[previous], originals[previous])
        randomize(name, twin_modules[name], index[name])
        previous = name
        yield name, twin


def _restore(twin: nn.Module, original: nn.Module) -> None:
    """Copy a module's own parameters and buffers back from the original."""
    with torch.no_grad():
        for t_twin, t in zip([*twin.parameters(recurse=False), *twin.buffers(recurse=False)],
                             [*original.parameters(recurse=False), *original.buffers(recurse=False)]):
            t_twin.copy_(t)


def _check_layers(model: nn.Module, layers: Optional[Sequence[str]]) -> List[str]:
    available = parameterized_layers(model)
    if layers is None:
        if not available:
            raise ValueError("model: has no module with parameters to randomize")
        return available
    names = dict(model.named_modules())
    chosen = list(layers)
    bad = [n for n in chosen if not isinstance(n, str) or n not in names]
    if not chosen or bad:
        raise ValueError(f"layers: expected a non-empty list of module names of the model, unknown: {bad}")
    return chosen


def _flat(attrs: Tuple[Tensor, ...], absolute: bool) -> Tensor:
    """``[B, D]``: an example's attributions of every input, flattened and joined."""
    flat = torch.cat([a.reshape(a.shape[0], -1).to(torch.float64) for a in attrs], dim=1)
    return flat.abs() if absolute else flat


def model_randomization(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    order: str = "cascading",
    layers: Optional[Sequence[str]] = None,
    seed: int = 0,
    absolute: bool = True,
    ssim_win_size: int = 7,
    randomize: Optional[Randomize] = None,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
    attributions: Optional[v.TensorOrTuple] = None,
    example_offset: int = 0,
) -> RandomizationResult:
    """Model-parameter randomization test: per randomization step and example,
    the Spearman rank correlation and SSIM of the explanation of the
    randomized model with that of the original model.

    Similarities compare an example's explanations flattened (all inputs of a
    tuple joined), as Quantus's MPRT does; SSIM runs over that flat vector.

    Args:
        model: an ``nn.Module`` (deep-copied; the original is never changed).
        inputs: ``[B, *F]`` or a tuple of such tensors.
        target: as :func:`fastattr.saliency`.
        explainer, explainer_kwargs: the explanation checked (a fastattr
            explainer or name and its options, or a callable with the
            explainers' signature).
        order: ``"cascading"`` (top layer first, cumulatively) or
            ``"independent"`` (one layer at a time, in ``layers`` order).
        layers: module names to randomize, bottom to top; None: every
            module that owns parameters, in ``named_modules()`` order.
        seed: key of the randomized parameters (int >= 0).
        absolute: compare ``|a|`` (True) or signed ``a`` by Spearman; SSIM
            always compares what Spearman does.
        ssim_win_size: SSIM's window (odd, at most the flat explanation's length).
        randomize: ``randomize(name, module, module_index)`` redraws one
            module's parameters in place; None: :func:`keyed_uniform_init`.
        memory_budget: bytes per chunk for the explainer.
        attributions: the explanation of the original model, shaped like
            ``inputs``, when the caller has it (None: computed here, keyed
            as the randomized models' explanations are).
        example_offset: a random explainer's draws for example ``b`` are
            keyed as example ``example_offset + b``: the same noise for the
            original and every randomized model, and for any batching.

    Returns:
        :class:`RandomizationResult`: ``layers`` (``L`` names, step order),
        ``spearman`` and ``ssim`` float64 ``[L, B]``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module (its parameters are randomized), got {type(model).__name__}")
    xs, was_tuple = v.format_inputs(inputs)
    xs = tuple(x.detach() for x in xs)
    v.check_choice(order, "order", ORDERS)
    chosen = _check_layers(model, layers)
    check_seed(seed)
    budget = v.check_optional_positive_int(memory_budget, "memory_budget")
    offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    features = sum(x[0].numel() for x in xs)
    if isinstance(ssim_win_size, bool) or not isinstance(ssim_win_size, int) or ssim_win_size % 2 == 0 \
            or not 3 <= ssim_win_size <= features:
        raise ValueError(
            f"ssim_win_size: expected an odd integer in [3, {features}] (features per example), got {ssim_win_size!r}"
        )
    if randomize is not None and not callable(randomize):
        raise TypeError(f"randomize: expected None or a callable, got {type(randomize).__name__}")
    explain = Explainer(explainer, explainer_kwargs)

    def explanation(m: nn.Module) -> Tensor:
        return _flat(explain(m, xs, was_tuple, target, additional_forward_args, budget, offset), absolute)

    if attributions is None:
        clean = explanation(model)
    else:
        given, _ = v.format_inputs(attributions)
        if len(given) != len(xs) or any(a.shape != x.shape for a, x in zip(given, xs)):
            raise ValueError(f"attributions: expected tensors shaped like the inputs "
                             f"{[list(x.shape) for x in xs]}, got {[list(a.shape) for a in given]}")
        clean = _flat(tuple(a.detach() for a in given), absolute)
    rho, structural = [], []
    for _, twin in randomized_models(model, chosen, order, randomize or keyed_uniform_init(seed)):
        randomized = explanation(twin)
        rho.append(spearman(clean, randomized))
        structural.append(ssim(clean, randomized, ssim_win_size))
    steps = list(reversed(chosen)) if order == "cascading" else chosen
    return RandomizationResult(steps, torch.stack(rho), torch.stack(structural))
