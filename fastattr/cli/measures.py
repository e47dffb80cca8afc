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


_RADIUS = 0.05
_SAMPLES = 10
_INFIDELITY_STDEV = 0.1
_ATTACK_EPS = 0.1
_PGD_STEPS = 10


def _explainer_kwargs(ctx: BatchContext, method: str) -> Tuple[str, Dict[str, Any]]:
    m = METHODS[method]
    return m.explainer, m.options(ctx.x, ctx.seed, ctx.offset)


def _sensitivity_group(module: Any) -> Group:
    # max and avg over the same per-sample values: one perturbed-explanation run for both
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        explainer, kwargs = _explainer_kwargs(ctx, method)
        samples = module._sensitivity(
            ctx.model, ctx.x, ctx.pred, explainer, kwargs, _RADIUS, _SAMPLES, "fro", True, ctx.seed,
            None, attrs, ctx.memory_budget, None,
        )
        return Values({"max_sensitivity": samples.amax(1), "avg_sensitivity": samples.mean(1)})

    return Group(("max_sensitivity", "avg_sensitivity"), True, compute,
                 {"radius": _RADIUS, "n_samples": _SAMPLES, "norm": "fro", "normalize": True,
                  "perturbation": "uniform L-inf ball"},
                 {"max_sensitivity": False, "avg_sensitivity": False})


def _infidelity_group(module: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        value = module.infidelity(ctx.model, ctx.x, attrs, target=ctx.pred, n_samples=_SAMPLES,
                                  stdev=_INFIDELITY_STDEV, seed=ctx.seed, memory_budget=ctx.memory_budget)
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
                                memory_budget=ctx.memory_budget)
        return Values({"pgd_accuracy": r.correct[0].to(torch.float64)})

    return [
        Group(("fgsm_accuracy",), False, fgsm, {"epsilon": _ATTACK_EPS, "norm": "L-inf"},
              {"fgsm_accuracy": True}),
        Group(("pgd_accuracy",), False, pgd,
              {"epsilon": _ATTACK_EPS, "n_steps": _PGD_STEPS, "step_size": "2.5 * eps / n_steps",
               "random_start": True}, {"pgd_accuracy": True}),
    ]


def _installed(module: str) -> Optional[Any]:
    try:
        return importlib.import_module(f"fastattr.metrics.{module}")
    except ImportError:
        return None


def available_groups() -> List[Group]:
    """The groups whose ``fastattr.metrics`` module is installed, in report order."""
    groups: List[Group] = []
    builders: Sequence[Tuple[str, Callable[[Any], Any]]] = (
        ("sensitivity", _sensitivity_group),
        ("infidelity", _infidelity_group),
        ("robustness", _attack_groups),
    )
    for module_name, build in builders:
        module = _installed(module_name)
        if module is not None:
            made = build(module)
            groups.extend(made if isinstance(made, list) else [made])
    return groups


def metric_names(groups: Sequence[Group]) -> Tuple[str, ...]:
    return tuple(n for g in groups for n in g.metrics)
