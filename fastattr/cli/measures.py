"""The metrics an audit can compute, from the ``fastattr.metrics`` modules
that are installed: per-method measures of an explanation (one value per
example, maybe a curve per example) and per-example model measures
(correct under attack). Measures that share their expensive part (max and
avg sensitivity share their perturbed explanations) are one group, run once."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .methods import METHODS


@dataclasses.dataclass(frozen=True)
class BatchContext:
    """One batch of the audit, on the device."""

    model: Callable[..., Tensor]
    x: Tensor  # [b, *F]
    y: Tensor  # int64 [b]: true labels
    pred: Tensor  # int64 [b]: the model's labels, the explained target
    offset: int  # data-set index of x[0]
    seed: int
    memory_budget: Optional[int]


@dataclasses.dataclass
class Values:
    """What a group computed: per-example columns float64 ``[b]`` and curves ``[b, K]``."""

    columns: Dict[str, Tensor] = dataclasses.field(default_factory=dict)
    curves: Dict[str, Tensor] = dataclasses.field(default_factory=dict)


# (batch, method name or None, attributions [b, *F] or None) -> Values
Compute = Callable[[BatchContext, Optional[str], Optional[Tensor]], Values]


@dataclasses.dataclass(frozen=True)
class Group:
    metrics: Tuple[str, ...]  # the --metrics names it provides (each a column)
    per_method: bool  # False: a property of the model on the example, the same for every method
    compute: Compute
    settings: Dict[str, Any]
    higher_is_better: Dict[str, bool]  # per metric: which way methods/models rank
    curves: Dict[str, str] = dataclasses.field(default_factory=dict)  # curve name -> its x-axis label
    needs_module: bool = False  # works on an nn.Module only (not TorchScript)
    by_default: bool = True  # run without --metrics (the fragility attack is costly: on request only)


_RADIUS = 0.05
_SAMPLES = 10
_INFIDELITY_STDEV = 0.1
_ATTACK_EPS = 0.1
_PGD_STEPS = 10


def _explainer_kwargs(ctx: BatchContext, method: str) -> Tuple[str, Dict[str, Any]]:
    # The metric keys its explainer's draws itself (per perturbed copy), from
    # the example_offset it is given: not from the method's own options.
    m = METHODS[method]
    options = m.options(ctx.x, ctx.seed, ctx.offset)
    options.pop("example_offset", None)
    return m.explainer, options


_EPS_MIN = 1e-6


def _ball_group(sensitivity: Any, stability: Optional[Any]) -> Group:
    # max/avg sensitivity and relative input stability share their keyed
    # L-inf perturbations: one pass of perturbed explanations for all three
    from .shared_samples import SharedSamples

    names = ("max_sensitivity", "avg_sensitivity") + (("relative_input_stability",) if stability else ())

    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        explainer, kwargs = _explainer_kwargs(ctx, method)
        shared = SharedSamples(sensitivity.PerturbedExplanations.prepare(
            ctx.model, ctx.x, ctx.pred, explainer, kwargs, None, attrs, ctx.memory_budget, None, ctx.offset))
        perturbation = sensitivity.Perturbation("uniform", (_RADIUS,), _SAMPLES, ctx.seed,
                                                example_offset=ctx.offset)
        sens = sensitivity.sensitivity_values(shared, perturbation, sensitivity.check_norm("fro"), True)
        stab = stability.stability_values(shared, perturbation, 2.0, _EPS_MIN) if stability else None
        shared.run()
        columns = {"max_sensitivity": sens.amax(1), "avg_sensitivity": sens.mean(1)}
        if stab is not None:
            columns["relative_input_stability"] = stab.amax(1)
        return Values(columns)

    settings = {"radius": _RADIUS, "n_samples": _SAMPLES, "perturbation": "uniform L-inf ball",
                "sensitivity_norm": "fro", "sensitivity_normalize": True, "stability_norm": 2.0,
                "stability_eps_min": _EPS_MIN}
    return Group(names, True, compute, settings, {n: False for n in names})


def _infidelity_group(module: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        value = module.infidelity(ctx.model, ctx.x, attrs, target=ctx.pred, n_samples=_SAMPLES,
                                  stdev=_INFIDELITY_STDEV, seed=ctx.seed, memory_budget=ctx.memory_budget,
                                  example_offset=ctx.offset)
        return Values({"infidelity": value})

    return Group(("infidelity",), True, compute,
                 {"n_samples": _SAMPLES, "stdev": _INFIDELITY_STDEV, "normalize": False},
                 {"infidelity": False})


def _attack_groups(module: Any) -> List[Group]:
    def fgsm(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        r = module.fgsm_accuracy(ctx.model, ctx.x, ctx.y, _ATTACK_EPS, memory_budget=ctx.memory_budget)
        return Values({"fgsm_accuracy": r.correct[0].to(torch.float64)})

    def pgd(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        r = module.pgd_accuracy(ctx.model, ctx.x, ctx.y, _ATTACK_EPS, n_steps=_PGD_STEPS, seed=ctx.seed,
                                memory_budget=ctx.memory_budget, example_offset=ctx.offset)
        return Values({"pgd_accuracy": r.correct[0].to(torch.float64)})

    return [
        Group(("fgsm_accuracy",), False, fgsm, {"epsilon": _ATTACK_EPS, "norm": "L-inf"},
              {"fgsm_accuracy": True}),
        Group(("pgd_accuracy",), False, pgd,
              {"epsilon": _ATTACK_EPS, "n_steps": _PGD_STEPS, "step_size": "2.5 * eps / n_steps",
               "random_start": True}, {"pgd_accuracy": True}),
    ]


def _perturbation_group(module: Any, function: str, settings: Dict[str, Any]) -> Group:
    # Lipschitz and relative input stability: a max over keyed perturbed explanations, like sensitivity
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        explainer, kwargs = _explainer_kwargs(ctx, method)
        value = getattr(module, function)(ctx.model, ctx.x, ctx.pred, explainer, kwargs, seed=ctx.seed,
                                          attributions=attrs, memory_budget=ctx.memory_budget,
                                          example_offset=ctx.offset, **settings)
        return Values({function: value})

    return Group((function,), True, compute, dict(settings), {function: False})


_CURVE_STEPS = 16


def _deletion_groups(module: Any) -> List[Group]:
    def curve(name: str, fn: Callable[..., Any], baseline: Any) -> Compute:
        def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
            c = fn(ctx.model, ctx.x, attrs, target=ctx.pred, n_steps=_CURVE_STEPS, baseline=baseline,
                   memory_budget=ctx.memory_budget)
            return Values({f"{name}_auc": c.auc}, {name: c.values})
        return compute

    return [
        Group(("deletion_auc",), True, curve("deletion", module.deletion_curve, 0.0),
              {"n_steps": _CURVE_STEPS, "baseline": 0.0, "output": "probability"}, {"deletion_auc": False},
              {"deletion": "fraction of features removed"}),
        Group(("insertion_auc",), True, curve("insertion", module.insertion_curve, "blur"),
              {"n_steps": _CURVE_STEPS, "baseline": "blur", "output": "probability"}, {"insertion_auc": True},
              {"insertion": "fraction of features inserted"}),
    ]


_FRAGILITY_EPS = 0.05


def _fragility_group(module: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        explainer, kwargs = _explainer_kwargs(ctx, method)
        if explainer not in module.DIFFERENTIABLE:  # the attack differentiates the explanation
            nan = torch.full((ctx.x.shape[0],), float("nan"), dtype=torch.float64, device=ctx.x.device)
            return Values({"fragility_topk": nan, "fragility_spearman": nan})
        r = module.fragility(ctx.model, ctx.x, ctx.pred, explainer, kwargs, epsilon=_FRAGILITY_EPS,
                             seed=ctx.seed, memory_budget=ctx.memory_budget, example_offset=ctx.offset)
        return Values({"fragility_topk": r.top_k_intersection, "fragility_spearman": r.spearman})

    return Group(("fragility_topk", "fragility_spearman"), True, compute,
                 {"epsilon": _FRAGILITY_EPS, "n_steps": 10, "k": "10% of the features", "objective": "topk",
                  "explainers": list(module.DIFFERENTIABLE)},
                 {"fragility_topk": True, "fragility_spearman": True}, by_default=False)


def _randomization_group(module: Any) -> Group:
    # The per-example value is the mean over cascading steps; the per-step values are the sanity-check curve.
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        explainer, kwargs = _explainer_kwargs(ctx, method)
        r = module.model_randomization(ctx.model, ctx.x, ctx.pred, explainer, kwargs, seed=ctx.seed,
                                       ssim_win_size=_ssim_window(ctx.x), memory_budget=ctx.memory_budget)
        return Values({"randomization_spearman": r.spearman.mean(0)}, {"randomization_spearman": r.spearman.T})

    return Group(("randomization_spearman",), True, compute,
                 {"order": "cascading", "similarity": "spearman of |a|", "reduction": "mean over steps"},
                 {"randomization_spearman": False}, {"randomization_spearman": "layers randomized (top first)"},
                 needs_module=True)


def _ssim_window(x: Tensor) -> int:
    features = x[0].numel()
    return 7 if features >= 7 else max(3, features - (1 - features % 2))


def _installed(module: str) -> Optional[Any]:
    try:
        return importlib.import_module(f"fastattr.metrics.{module}")
    except ImportError:
        return None


def available_groups() -> List[Group]:
    """The groups whose ``fastattr.metrics`` module is installed, in report order."""
    groups: List[Group] = []
    builders: Sequence[Tuple[str, Callable[[Any], Any]]] = (
        ("sensitivity", lambda m: _ball_group(m, _installed("stability"))),
        ("infidelity", _infidelity_group),
        ("lipschitz", lambda m: _perturbation_group(m, "local_lipschitz_estimate",
                                                    {"std": _INFIDELITY_STDEV, "n_samples": _SAMPLES})),
        ("deletion", _deletion_groups),
        ("fragility", _fragility_group),
        ("randomization", _randomization_group),
        ("robustness", _attack_groups),
    )
    for module_name, build in builders:
        module = _installed(module_name)
        if module is not None:
            made = build(module)
            groups.extend(made if isinstance(made, list) else [made])
    return groups


def metric_names(groups: Sequence[Group], defaults_only: bool = False) -> Tuple[str, ...]:
    return tuple(n for g in groups if g.by_default or not defaults_only for n in g.metrics)
