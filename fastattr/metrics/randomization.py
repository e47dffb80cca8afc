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
import dataclasses
import math
from numbers import Real
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import _validate as v
from .. import ops
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_RANDOMIZATION, PURPOSE_SMOOTHGRAD
from ..engine.model_form import copy_tensors
from ..engine.train_mode import warn_no_more
from ._explain import Explainer, ExplainerType
from .explained_rows import ExplainGivenRows, block_examples, explain_in_blocks, explainer_of_rows, formatted_call
from .similarity import average_ranks, pearson, ssim

ORDERS = ("cascading", "independent")
# The smooth and efficient tests also randomize cumulatively from the first layer up (Quantus's default there).
ALL_ORDERS = ORDERS + ("bottom_up",)
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
    from the last one backwards, cumulatively; ``bottom_up`` from the first
    one forwards, cumulatively; ``independent`` randomizes each alone, in
    the given order (the previous layer's parameters and buffers restored
    first). One deep copy serves every step (it is yielded again, changed:
    use it before the next step)."""
    index = {name: i for i, (name, _) in enumerate(model.named_modules())}
    twin = copy.deepcopy(model)
    warn_no_more(twin)  # a train-mode model is warned about once: the original, not each copy
    twin_modules = dict(twin.named_modules())
    originals = dict(model.named_modules())
    steps = list(reversed(layers)) if order == "cascading" else list(layers)
    previous: Optional[str] = None
    for name in steps:
        if order == "independent" and previous is not None:
            copy_tensors(twin_modules[previous], originals[previous], recurse=False)
        randomize(name, twin_modules[name], index[name])
        previous = name
        yield name, twin


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


def _check_ssim_win_size(ssim_win_size: Any, features: int) -> None:
    if isinstance(ssim_win_size, bool) or not isinstance(ssim_win_size, int) or ssim_win_size % 2 == 0 \
            or not 3 <= ssim_win_size <= features:
        raise ValueError(
            f"ssim_win_size: expected an odd integer in [3, {features}] (features per example), got {ssim_win_size!r}"
        )


def _check_randomization(model: Any, order: Any, layers: Optional[Sequence[str]], seed: Any,
                         randomize: Any) -> List[str]:
    """Check what the smooth and efficient tests randomize; return the layers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module (its parameters are randomized), got {type(model).__name__}")
    v.check_choice(order, "order", ALL_ORDERS)
    chosen = _check_layers(model, layers)
    check_seed(seed)
    if randomize is not None and not callable(randomize):
        raise TypeError(f"randomize: expected None or a callable, got {type(randomize).__name__}")
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
    model_form: str = "fast",
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
        model_form: as :func:`fastattr.saliency` (the form the model's rows
            run in), for the original and every randomized model: the fast
            form's copy is made again for each randomized model (its cache
            follows the parameters' version counters, which each
            randomization step moves).

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
    _check_ssim_win_size(ssim_win_size, features)
    if randomize is not None and not callable(randomize):
        raise TypeError(f"randomize: expected None or a callable, got {type(randomize).__name__}")
    explain = Explainer(explainer, explainer_kwargs, model_form)

    def explanation(m: nn.Module) -> Tensor:
        return _flat(explain(m, xs, was_tuple, target, additional_forward_args, budget, offset), absolute)

    clean = explanation(model) if attributions is None else _given(attributions, xs, absolute)
    return _similarities(model, chosen, order, randomize or keyed_uniform_init(seed), explanation, clean,
                         ssim_win_size)


def _given(attributions: v.TensorOrTuple, xs: Tuple[Tensor, ...], absolute: bool) -> Tensor:
    """The caller's explanation of the original model, flat ``[B, D]``."""
    given, _ = v.format_inputs(attributions)
    if len(given) != len(xs) or any(a.shape != x.shape for a, x in zip(given, xs)):
        raise ValueError(f"attributions: expected tensors shaped like the inputs "
                         f"{[list(x.shape) for x in xs]}, got {[list(a.shape) for a in given]}")
    return _flat(tuple(a.detach() for a in given), absolute)


def _similarities(model: nn.Module, layers: List[str], order: str, randomize: Randomize,
                  explanation: Callable[[nn.Module], Tensor], clean: Tensor, ssim_win_size: int) -> RandomizationResult:
    """Spearman and SSIM of ``clean`` (flat ``[B, D]``) with ``explanation(m)``
    of every randomized model ``m``, in step order."""
    rho, structural = [], []
    rank_correlation = spearman_with(clean)
    for _, twin in randomized_models(model, layers, order, randomize):
        randomized = explanation(twin)
        rho.append(rank_correlation(randomized))
        structural.append(ssim(clean, randomized, ssim_win_size))
    steps = list(reversed(layers)) if order == "cascading" else layers
    return RandomizationResult(steps, torch.stack(rho), torch.stack(structural))


def spearman_with(reference: Tensor) -> Callable[[Tensor], Tensor]:
    """``f(a) = spearman(reference, a)`` (both ``[B, *F]``; float64 ``[B]``),
    the reference ranked once for every ``a`` it is compared with."""
    ranked = average_ranks(reference.reshape(reference.shape[0], -1))

    def correlation(a: Tensor) -> Tensor:
        if a.shape != reference.shape:
            raise ValueError(f"a: expected the reference's shape {tuple(reference.shape)}, got {tuple(a.shape)}")
        return pearson(ranked, average_ranks(a.reshape(a.shape[0], -1)))

    return correlation


# -- smooth MPRT: each model's explanation averaged over noisy copies ---------------


def noisy_copies(xs: Tuple[Tensor, ...], e0: int, e1: int, n_samples: int, noise_magnitude: float, seed: int,
                 example_offset: int) -> Tuple[Tensor, ...]:
    """``[b * n_samples, *F_i]`` per input, examples ``e0 .. e1-1``: per
    example, ``n_samples - 1`` copies ``x + s z`` and then ``x`` itself
    (Quantus's SmoothMPRT: its last sample is noise-free). ``s`` is
    ``noise_magnitude * (max - min)`` of the example's values, ``z`` keyed
    standard normal noise (``(seed, example_offset + b, n, element)``,
    SmoothGrad's stream: the same noise for every model explained)."""
    out = []
    for i, x in enumerate(xs):
        block = x[e0:e1]
        b, features = block.shape[0], block.shape[1:]
        rows = block.unsqueeze(1).repeat(1, n_samples, *([1] * len(features)))  # [b, N, *F]
        if n_samples > 1:
            z = ops.generate_rows(torch.zeros_like(block), None, None, n_samples - 1, "gaussian", 1.0, seed,
                                  PURPOSE_SMOOTHGRAD * 65536 + i, 0, b * (n_samples - 1), example_offset + e0)
            flat = block.reshape(b, -1)
            spread = (flat.amax(1) - flat.amin(1)) * noise_magnitude
            rows[:, :-1] += spread.view(b, 1, *([1] * len(features))) * z.view(b, n_samples - 1, *features)
        out.append(rows.reshape(b * n_samples, *features))
    return tuple(out)


def noisy_rows(xs: Tuple[Tensor, ...], n_samples: int, noise_magnitude: float, seed: int, example_offset: int,
               examples_per_block: int, keep: bool) -> Callable[[int, int], Tuple[Tensor, ...]]:
    """``rows_for(e0, e1)``: the :func:`noisy_copies` of examples ``e0 .. e1-1``.
    With ``keep`` and every example in one block, the rows are made once and
    served again to every model explained (the noise is the same for all of
    them); ``keep`` only for explainers that leave their inputs as they are."""
    kept: Dict[Tuple[int, int], Tuple[Tensor, ...]] = {}
    keep = keep and examples_per_block >= xs[0].shape[0]

    def rows_for(e0: int, e1: int) -> Tuple[Tensor, ...]:
        if (e0, e1) in kept:
            return kept[e0, e1]
        rows = noisy_copies(xs, e0, e1, n_samples, noise_magnitude, seed, example_offset)
        if keep:
            kept[e0, e1] = rows
        return rows

    return rows_for


def smoothed_explanation(explain_rows: ExplainGivenRows, rows_for: Callable[[int, int], Tuple[Tensor, ...]],
                         batch: int, n_samples: int, examples_per_block: int,
                         device: torch.device) -> Tuple[Tensor, ...]:
    """float64 ``[B, *A_i]``: the mean of ``explain_rows`` over each example's
    ``n_samples`` rows ``rows_for(e0, e1)`` (:func:`noisy_rows`), made and
    explained a block of examples at a time."""
    means: List[Tensor] = []  # one per input, made at the first block

    def consume(_rows: Tuple[Tensor, ...], attrs: Tuple[Tensor, ...], e0: int, e1: int) -> None:
        for i, a in enumerate(attrs):
            if i == len(means):
                means.append(torch.empty((batch, *a.shape[1:]), dtype=torch.float64, device=a.device))
            means[i][e0:e1] = a.to(torch.float64).view(e1 - e0, n_samples, *a.shape[1:]).mean(1)

    explain_in_blocks(explain_rows, batch, n_samples, rows_for, consume, examples_per_block, device)
    return tuple(means)


def _check_noise_magnitude(noise_magnitude: Any) -> float:
    if isinstance(noise_magnitude, bool) or not isinstance(noise_magnitude, Real) \
            or not math.isfinite(noise_magnitude) or noise_magnitude < 0:
        raise ValueError(f"noise_magnitude: expected a finite number >= 0, got {noise_magnitude!r}")
    return float(noise_magnitude)


def smooth_model_randomization(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    order: str = "bottom_up",
    layers: Optional[Sequence[str]] = None,
    seed: int = 0,
    n_samples: int = 50,
    noise_magnitude: float = 0.1,
    absolute: bool = True,
    ssim_win_size: int = 7,
    randomize: Optional[Randomize] = None,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
    attributions: Optional[v.TensorOrTuple] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> RandomizationResult:
    """Smooth model-parameter randomization test (Hedström et al. 2023,
    "Sanity checks revisited"): :func:`model_randomization` where every
    model's explanation is the mean over ``n_samples`` noisy copies of each
    example (:func:`noisy_copies`: ``n_samples - 1`` with Gaussian noise of
    standard deviation ``noise_magnitude * (max - min)`` of the example, and
    the example itself), which denoises the comparison.

    The noisy copies of a block of examples are explained in one call (one
    engine plan for saliency, input x gradient and integrated gradients);
    their noise is keyed by ``(seed, example, sample)``, the same for every
    model (a fastattr explainer's copies are made once when the examples fit
    in one block, and explained by every model).

    Args:
        model, inputs, target, explainer, explainer_kwargs, layers, absolute,
            ssim_win_size, randomize, additional_forward_args, memory_budget,
            attributions, example_offset, model_form: as :func:`model_randomization`.
        order: ``"bottom_up"`` (default, as Quantus's SmoothMPRT),
            ``"cascading"`` or ``"independent"``.
        seed: key of the randomized parameters and of the noise (int >= 0).
        n_samples: copies averaged per example (>= 1; 1: no noise).
        noise_magnitude: the noise's standard deviation over the example's range (>= 0).

    Returns:
        :class:`RandomizationResult`.
    """
    chosen = _check_randomization(model, order, layers, seed, randomize)
    n_samples = v.check_positive_int(n_samples, "n_samples")
    magnitude = _check_noise_magnitude(noise_magnitude)
    offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    exp, req, was_tuple = formatted_call(model, inputs, target, explainer, explainer_kwargs,
                                         additional_forward_args, memory_budget, None, model_form)
    xs = req.inputs
    features = sum(x[0].numel() for x in xs)
    _check_ssim_win_size(ssim_win_size, features)
    blocks = block_examples(xs, n_samples, memory_budget)
    rows_for = noisy_rows(xs, n_samples, magnitude, seed, offset, blocks, keep=exp.is_fastattr)

    def explanation(m: nn.Module) -> Tensor:
        rows = explainer_of_rows(exp, dataclasses.replace(req, model=m), was_tuple, memory_budget, offset, n_samples)
        return _flat(smoothed_explanation(rows, rows_for, xs[0].shape[0], n_samples, blocks, xs[0].device), absolute)

    clean = explanation(model) if attributions is None else _given(attributions, xs, absolute)
    return _similarities(model, chosen, order, randomize or keyed_uniform_init(seed), explanation, clean,
                         ssim_win_size)


# -- efficient MPRT: the explanation's complexity before and after ------------------


class ComplexityChange(NamedTuple):
    """Discrete entropy of the explanation of the original and of the randomized model."""

    original: Tensor  # float64 [B]
    randomized: Tensor  # float64 [B]
    relative: Tensor  # float64 [B]: (randomized - original) / original


def histogram_counts(a: Tensor, n_bins: int) -> Tensor:
    """int64 ``[B, n_bins]``: ``np.histogram(a[b], bins=n_bins)`` of each row of
    ``a`` ``[B, D]``: equal bins over ``[min, max]`` (``[v - 0.5, v + 0.5]``
    for a constant row), edges and bin indices computed in ``a``'s dtype
    exactly as numpy does, so values on an edge land in numpy's bin."""
    lo, hi = a.amin(1, keepdim=True), a.amax(1, keepdim=True)
    same = lo == hi
    lo, hi = torch.where(same, lo - 0.5, lo), torch.where(same, hi + 0.5, hi)
    delta = hi - lo
    # np.linspace(lo, hi, n_bins + 1) in a's dtype (a zero step: numpy's denormal path)
    k = torch.arange(n_bins + 1, dtype=a.dtype, device=a.device)
    step = delta / n_bins
    edges = torch.where(step == 0, k / n_bins * delta, k * step) + lo
    edges[:, -1:] = hi
    index = ((a - lo) / delta * n_bins).to(torch.int64)
    index = torch.where(index == n_bins, n_bins - 1, index)
    index = index - (a < edges.gather(1, index)).to(torch.int64)
    index = index + ((a >= edges.gather(1, index + 1)) & (index != n_bins - 1)).to(torch.int64)
    counts = torch.zeros(a.shape[0], n_bins, dtype=torch.int64, device=a.device)
    return counts.scatter_add_(1, index, torch.ones_like(index))


def discrete_entropy(a: Tensor, n_bins: int = 100) -> Tensor:
    """float64 ``[B]``: the Shannon entropy (nats) of the histogram of each
    example's values (``a`` ``[B, *F]``, flattened) in ``n_bins`` equal bins
    (:func:`histogram_counts`), as Quantus's ``discrete_entropy``
    (``scipy.stats.entropy`` of ``np.histogram``'s counts)."""
    flat = a.reshape(a.shape[0], -1)
    if not v._all_finite(flat):
        raise ValueError("explanation: contains NaN or Inf (a histogram needs a finite range)")
    p = histogram_counts(flat, n_bins).to(torch.float64)
    p = p / p.sum(1, keepdim=True)
    return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1)


def efficient_model_randomization(
    model: nn.Module,
    inputs: v.TensorOrTuple,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    order: str = "bottom_up",
    layers: Optional[Sequence[str]] = None,
    seed: int = 0,
    n_bins: int = 100,
    randomize: Optional[Randomize] = None,
    additional_forward_args: Any = None,
    memory_budget: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> ComplexityChange:
    """Efficient model-parameter randomization test (Hedström et al. 2023):
    the relative change of the explanation's discrete entropy
    (:func:`discrete_entropy`, every input joined) from the original model
    to the model after the last randomization step (every layer, for the
    cumulative orders); higher is better.

    Only those two models are explained: the intermediate steps randomize
    the one model copy and are not explained.

    Args:
        model, inputs, target, explainer, explainer_kwargs, layers, seed,
            randomize, additional_forward_args, memory_budget, example_offset,
            model_form: as :func:`model_randomization`.
        order: as :func:`smooth_model_randomization` (default ``"bottom_up"``).
        n_bins: bins of the histograms (>= 1).

    Returns:
        :class:`ComplexityChange`.
    """
    chosen = _check_randomization(model, order, layers, seed, randomize)
    xs, was_tuple = v.format_inputs(inputs)
    xs = tuple(x.detach() for x in xs)
    n_bins = v.check_positive_int(n_bins, "n_bins")
    budget = v.check_optional_positive_int(memory_budget, "memory_budget")
    offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    explain = Explainer(explainer, explainer_kwargs, model_form)

    def entropy(m: nn.Module) -> Tensor:
        attrs = explain(m, xs, was_tuple, target, additional_forward_args, budget, offset)
        return discrete_entropy(_flat(attrs, absolute=False), n_bins)

    original = entropy(model)
    twin = model
    for _, twin in randomized_models(model, chosen, order, randomize or keyed_uniform_init(seed)):
        pass  # each step randomizes the copy further; only the last is explained
    randomized = entropy(twin)
    return ComplexityChange(original, randomized, (randomized - original) / original)
