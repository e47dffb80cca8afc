"""Fragility of explanations (Ghorbani et al. 2019): an iterative L-infinity
attack that keeps the model's predicted label and pushes the explanation
away from the clean one, measured by top-k intersection and Spearman rank
correlation of the clean and attacked saliency maps.

The attack differentiates the explanation (second-order gradients). A ReLU
network's explanation has zero curvature almost everywhere, so during the
attack steps every ReLU call computes ``softplus(x, beta)`` instead
(Dombrowski et al. 2019); the model is not modified (a torch function mode
swaps the calls while the attack step runs, and is gone after it, also on
raise). Everything that is reported (labels, explanations of the attacked
inputs) uses the real model.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .. import _validate as v
from .. import ops
from ..attr.smoothgrad import check_seed
from ..engine import PURPOSE_ATTACK, PointPlan
from ..engine import budget as _budget
from ..engine.model_form import model_in_form
from ..engine.outputs import FlatTarget, flat_target, per_example_flags, rows_args
from ._explain import Explainer, ExplainerType
from .robustness import Clamp, check_attack_inputs, check_clamp, class_count, predicted_classes, project
from .similarity import spearman, top_k_intersection

OBJECTIVES = ("topk", "center_of_mass")
# The explainers whose explanation the attack can differentiate.
DIFFERENTIABLE = ("saliency", "input_x_gradient", "integrated_gradients")
# A double backward keeps about three times a plain backward's activations.
_DOUBLE_BACKWARD_FACTOR = 3
_ACTIVATION_GUESS = 64  # activation bytes per input byte, as the engine's first guess


class FragilityResult(NamedTuple):
    """How much of the clean explanation survives the attack, per example."""

    top_k_intersection: Tensor  # float64 [B]: shared fraction of the k most salient features
    spearman: Tensor  # float64 [B]: rank correlation of the clean and attacked maps
    attacked: Optional[Tensor]  # [B, *F] the attacked inputs, when asked for


class SoftplusForReLU(TorchFunctionMode):
    """While active, ``torch.relu``, ``F.relu``, ``Tensor.relu`` (and
    ``nn.ReLU``, which calls ``F.relu``) compute ``softplus(x, beta)``."""

    _OUT_OF_PLACE = {torch.relu, F.relu, Tensor.relu}
    _IN_PLACE = {torch.relu_, F.relu_, Tensor.relu_}

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        in_place = func in self._IN_PLACE or (
            func is F.relu and (kwargs.get("inplace", False) or (len(args) > 1 and args[1]))
        )
        if in_place:
            # softplus saves its input for backward: give it a copy, not the tensor overwritten here.
            return args[0].copy_(F.softplus(args[0].clone(), beta=self.beta))
        if func in self._OUT_OF_PLACE:
            return F.softplus(args[0], beta=self.beta)
        return func(*args, **kwargs)


def saliency_map(attrs: Tensor, channel_dim: Optional[int]) -> Tensor:
    """``[B, *M]``: ``|attrs|`` ``[B, *F]``, summed over ``channel_dim`` when given."""
    m = attrs.abs()
    return m if channel_dim is None else m.sum(dim=channel_dim)


def differentiable_attributions(
    model: Callable[..., Tensor], x: Tensor, target: Tensor, plan: PointPlan,
    baselines: Optional[Tensor], args: Tuple[Any, ...], examples: Tensor,
) -> Tensor:
    """``[n, *F]``: the explainer's attributions of ``x`` ``[n, *F]`` (requires
    grad), as a differentiable function of ``x`` (gradients taken with
    ``create_graph``), for the engine-native plans (single point or path).

    Args:
        target: int64 ``[n]``; baselines: ``[1 or n, *F]`` for path plans;
        args: extra model arguments (batched ones ``[B, ...]``, gathered by ``examples`` ``[n]``).
    """
    n, per = x.shape[0], plan.n_steps
    if plan.alphas is None:
        rows = x
    else:
        alphas = plan.alphas.to(device=x.device, dtype=x.dtype).view(1, per, *([1] * (x.dim() - 1)))
        rows = (baselines.unsqueeze(1) + alphas * (x - baselines).unsqueeze(1)).reshape(n * per, *x.shape[1:])
    row_examples = examples.repeat_interleave(per)
    out = model(rows, *rows_args(args, per_example_flags(args), row_examples, rows.shape[0]))
    picked = out.gather(1, target.repeat_interleave(per).unsqueeze(1)).sum()
    (grads,) = torch.autograd.grad(picked, rows, create_graph=True)
    if plan.alphas is not None:
        weights = plan.step_weights.to(device=x.device, dtype=x.dtype).view(1, per, *([1] * (x.dim() - 1)))
        grads = (grads.view(n, per, *x.shape[1:]) * weights).sum(1)
    t = plan.sample_transform
    if t == "abs":
        return grads.abs()
    if t == "times_input":
        return grads * x
    if t == "times_input_minus_baseline":
        return grads * (x - baselines)
    return grads


def _coordinates(map_shape: Tuple[int, ...], like: Tensor) -> Tensor:
    """``[prod(M), len(M)]``: the index coordinates of every map position."""
    grids = torch.meshgrid(*[torch.arange(s, device=like.device, dtype=like.dtype) for s in map_shape], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def center_of_mass(maps: Tensor, coords: Tensor) -> Tensor:
    """``[B, len(M)]``: the saliency-weighted mean coordinate of each map ``[B, *M]``."""
    flat = maps.reshape(maps.shape[0], -1)
    return flat @ coords / flat.sum(1, keepdim=True)


def _check_step(value: Any, name: str, allow_none: bool) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def fragility(
    model: Callable[..., Tensor],
    inputs: Tensor,
    target: v.TargetType = None,
    explainer: ExplainerType = "saliency",
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
    epsilon: float = 8 / 255,
    step_size: Optional[float] = None,
    n_steps: int = 10,
    k: Optional[int] = None,
    objective: str = "topk",
    softplus_beta: float = 10.0,
    channel_dim: Optional[int] = -1,
    seed: int = 0,
    random_start: bool = True,
    clamp: Clamp = None,
    additional_forward_args: Any = None,
    return_attacked: bool = False,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    example_offset: int = 0,
    model_form: str = "fast",
) -> FragilityResult:
    """Ghorbani et al.'s iterative feature-importance attack and how much of
    the explanation it leaves.

    Per example: start at ``x`` (or a keyed uniform point of the
    ``epsilon`` ball: ``(seed, PURPOSE_ATTACK, example, element)``), then
    ``n_steps`` sign steps up the attack objective, computed with ReLU ->
    softplus(beta), each projected to the ball and ``clamp``. The
    objective, on the saliency map ``m = |a|`` (summed over
    ``channel_dim``) normalized to sum 1: ``"topk"`` lowers the mass of the
    clean map's ``k`` top features; ``"center_of_mass"`` moves the map's
    center of mass away. Of the iterates that keep the clean predicted
    label (judged with the real model), the one with the least top-k
    intersection (``"topk"``) or the largest center-of-mass shift is
    kept; none keeps it: ``x`` itself.

    Args:
        model: returns class scores ``[B, C]``.
        inputs: ``[B, *F]`` (one tensor).
        target: the class explained (int, list or int tensor ``[B]``);
            None: each example's predicted class.
        explainer, explainer_kwargs: ``"saliency"``, ``"input_x_gradient"``
            or ``"integrated_gradients"`` (function or name) and its options.
        epsilon: L-infinity radius (> 0).
        step_size: the sign step; None: ``2.5 * epsilon / n_steps``.
        n_steps: attack iterations (>= 1).
        k: features in the top-k sets (of the map); None: 10% of them.
        objective: ``"topk"`` or ``"center_of_mass"``.
        softplus_beta: the softplus sharpness replacing ReLU during the attack.
        channel_dim: the dim of ``F`` summed into the map (``-1``: the
            default, channel dim 0 of ``F`` when ``F`` has three dims
            ``[C, H, W]``, none otherwise; None: never).
        seed, random_start: key and use of the random start.
        example_offset: example ``b``'s start is keyed as example
            ``example_offset + b`` (its index in a data set attacked batch by batch).
        clamp: valid input range ``(low, high)`` or None.
        return_attacked: also return the kept attacked inputs ``[B, *F]``.
        memory_budget, chunk_rows: bytes per chunk and an optional row cap.
        model_form: as :func:`fastattr.saliency` (the form the model's rows run in;
            the attack's second-order steps run ``"compiled"`` as ``"fast"``:
            ``torch.compile`` takes no double backward).

    Returns:
        :class:`FragilityResult`: ``top_k_intersection`` and ``spearman``
        float64 ``[B]`` (clean vs attacked map, real model), ``attacked``.
    """
    x = check_attack_inputs(model, inputs)
    batch, device = x.shape[0], x.device
    explain = Explainer(explainer, explainer_kwargs, model_form)
    if explain.engine_name not in DIFFERENTIABLE:
        raise ValueError(
            f"explainer: the attack differentiates the explanation; supported: {list(DIFFERENTIABLE)}, "
            f"got {getattr(explain.fn, '__name__', explain.fn)!r}"
        )
    plan, needs_baselines, given_baselines = explain.plan()
    epsilon = _check_step(epsilon, "epsilon", allow_none=False)
    n_steps = v.check_positive_int(n_steps, "n_steps")
    step = _check_step(step_size, "step_size", allow_none=True) or 2.5 * epsilon / n_steps
    v.check_choice(objective, "objective", OBJECTIVES)
    beta = _check_step(softplus_beta, "softplus_beta", allow_none=False)
    check_seed(seed)
    example_offset = v.check_positive_int(example_offset, "example_offset", minimum=0)
    clamp = check_clamp(clamp)
    if channel_dim == -1:
        channel_dim = 1 if x.dim() == 4 else None
    elif channel_dim is not None:
        channel_dim = v.check_positive_int(channel_dim, "channel_dim")
        if channel_dim >= x.dim():
            raise ValueError(f"channel_dim: expected a dim of the inputs' features (1 .. {x.dim() - 1}), got {channel_dim}")
    map_shape = saliency_map(x[:1], channel_dim).shape[1:]
    features = math.prod(map_shape)
    k = max(1, features // 10) if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= features:
        raise ValueError(f"k: expected an integer in [1, {features}] (saliency-map features), got {k!r}")
    args = v.format_additional_args(additional_forward_args, batch)
    budget = v.check_optional_positive_int(memory_budget, "memory_budget")
    cap = v.check_optional_positive_int(chunk_rows, "chunk_rows")
    baselines = v.format_baselines(given_baselines, (x,), False)[0] if needs_baselines else None
    n_classes = class_count(model, x, args)
    classes = None if target is None else flat_target(v.format_target(target, batch, device), (n_classes,))
    labels = predicted_classes(model, lambda r0, r1: x[r0:r1], batch, args, x[:1], budget, cap, model_form)
    targets = _targets(classes, labels)
    surrogate = model_in_form(model, "eager" if model_form == "eager" else "fast", (x,), args).model

    def real_map(rows: Tensor) -> Tensor:
        (a,) = explain(model, (rows,), False, targets, additional_forward_args, budget)
        return saliency_map(a, channel_dim)

    clean_map = real_map(x)
    flat_clean = clean_map.reshape(batch, -1)
    top_k_mask = torch.zeros_like(flat_clean, dtype=torch.bool).scatter_(1, flat_clean.topk(k, dim=1).indices, True)
    coords = _coordinates(tuple(map_shape), flat_clean)
    clean_center = center_of_mass(clean_map, coords)

    def dissimilarity(maps: Tensor) -> Tensor:
        """float64 [B]: what the attack raises (minus top-k overlap, or center shift)."""
        if objective == "topk":
            return -top_k_intersection(maps, clean_map, k)
        return torch.linalg.vector_norm(center_of_mass(maps, coords) - clean_center, dim=1).to(torch.float64)

    def ascent_direction(adv: Tensor) -> Tensor:
        """sign of the gradient of the surrogate objective at ``adv``, in budgeted example chunks."""
        row_bytes = x[0].numel() * x.element_size()
        rows = _budget.rows_per_chunk(
            budget or _budget.default_budget(device), row_bytes,
            _DOUBLE_BACKWARD_FACTOR * _ACTIVATION_GUESS * row_bytes, batch * plan.n_steps, cap,
        )
        per_chunk = max(1, rows // plan.n_steps)
        out = torch.empty_like(adv)
        for e0 in range(0, batch, per_chunk):
            e1 = min(batch, e0 + per_chunk)
            out[e0:e1] = _surrogate_gradient(e0, e1, adv[e0:e1]).sign()
        return out

    def _surrogate_gradient(e0: int, e1: int, rows: Tensor) -> Tensor:
        base = None if baselines is None else (baselines if baselines.shape[0] == 1 else baselines[e0:e1])
        examples = torch.arange(e0, e1, device=device)
        with torch.enable_grad(), SoftplusForReLU(beta):
            xa = rows.detach().requires_grad_()
            a = differentiable_attributions(surrogate, xa, targets[e0:e1], plan, base, args, examples)
            m = saliency_map(a, channel_dim).reshape(e1 - e0, -1)
            m = m / m.sum(1, keepdim=True)
            if objective == "topk":
                value = -(m * top_k_mask[e0:e1]).sum()
            else:
                shift = m @ coords - clean_center[e0:e1]
                value = torch.linalg.vector_norm(shift, dim=1).sum()
            (g,) = torch.autograd.grad(value, xa)
        return g

    if random_start:
        z = ops.generate_rows(x, None, None, 1, "uniform", epsilon, seed, PURPOSE_ATTACK * 65536, 0, batch, example_offset)
        adv = project(z, x, epsilon, clamp)
    else:
        adv = x if clamp is None else x.clamp(clamp[0], clamp[1])
    best, best_map = x, clean_map
    best_score = dissimilarity(clean_map)
    for _ in range(n_steps):
        adv = project(adv + step * ascent_direction(adv), x, epsilon, clamp)
        maps = real_map(adv)
        score = dissimilarity(maps)
        kept = predicted_classes(model, lambda r0, r1: adv[r0:r1], batch, args, x[:1], budget, cap,
                                 model_form) == labels
        better = kept & (score > best_score)
        best_score = torch.where(better, score, best_score)
        pick = better.view(-1, *([1] * (x.dim() - 1)))
        best = torch.where(pick, adv, best)
        best_map = torch.where(better.view(-1, *([1] * (clean_map.dim() - 1))), maps, best_map)
    return FragilityResult(
        top_k_intersection(clean_map, best_map, k),
        spearman(clean_map, best_map),
        best if return_attacked else None,
    )


def _targets(classes: Optional[FlatTarget], predicted: Tensor) -> Tensor:
    """int64 ``[B]``: the explained class of each example (``classes``: the
    caller's target resolved against the class count, or None for the predicted)."""
    if classes is None:
        return predicted
    return torch.full_like(predicted, classes) if isinstance(classes, int) else classes
