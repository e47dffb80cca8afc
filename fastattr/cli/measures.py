"""The metrics an audit can compute, from the ``fastattr.metrics`` modules
that are installed: per-method measures of an explanation (one value per
example, maybe a curve per example) and per-example model measures
(correct under attack). Measures that share their expensive part (max and
avg sensitivity share their perturbed explanations) are one group, run once.
Quantus's other metrics are groups too, declared in ``measures_faithfulness``,
``measures_robustness``, ``measures_axiomatic`` and ``measures_explanation``
and registered here; they run on request only.

Each group has settings (``--metric-option <group>.<key>=<value>``). The
sample counts of the perturbation metrics default by input size, because
each sample costs a forward and backward pass of every method's rows and a
row's cost grows with the input: 10 samples for up to 4,096 input values
(e.g. 64x64 grey), 6 up to 65,536 (e.g. 3x128x128), 4 above (3x224x224)."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .options import Setting, choice, choice_or_number, integer, number

# (method name) -> (explainer name or callable, its kwargs without example_offset)
ExplainerOf = Callable[[str], Tuple[Any, Dict[str, Any]]]


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
    settings: Mapping[str, Mapping[str, Any]]  # group name -> its resolved settings
    explainer_of: ExplainerOf  # how a metric re-runs a method on perturbed inputs
    layer_prefix: str = ""  # the user's model's path in the audited model (module names are the user's)
    masks: Optional[Tensor] = None  # bool [b, 1 or C, *S]: the data's ground-truth masks, if it has them
    model_form: str = "fast"  # --model-form: the form the metrics' rows run the model in
    # method -> its own error estimate float64 [b] (IG with rtol, SmoothGrad), filled as each method explains
    errors: Dict[str, Optional[Tensor]] = dataclasses.field(default_factory=dict)

    def of(self, group: str) -> Mapping[str, Any]:
        return self.settings[group]


@dataclasses.dataclass
class Values:
    """What a group computed: per-example columns float64 ``[b]`` and curves ``[b, K]``."""

    columns: Dict[str, Tensor] = dataclasses.field(default_factory=dict)
    curves: Dict[str, Tensor] = dataclasses.field(default_factory=dict)


# (batch, method name or None, attributions [b, *F] or None) -> Values
Compute = Callable[[BatchContext, Optional[str], Optional[Tensor]], Values]
# (the group's settings, one method's rows per example) -> (gradient rows, forward-only rows) per example
Cost = Callable[[Mapping[str, Any], int], Tuple[int, int]]
# (the group's resolved settings, the audited model, one example's shape [*F], the user's model's path in it)
# -> the settings with what follows from the model and the shape (e.g. a curve's points, for the cost);
# an AuditError naming --metrics or --metric-option when the group cannot run on them
Resolve = Callable[[Dict[str, Any], Any, Tuple[int, ...], str], Dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Group:
    name: str  # its --metric-option namespace
    metrics: Tuple[str, ...]  # the --metrics names it provides (each a column)
    per_method: bool  # False: a property of the model on the example, the same for every method
    compute: Compute
    settings: Callable[[int], Tuple[Setting, ...]]  # input values per example -> its declared settings
    cost: Cost
    higher_is_better: Dict[str, bool]  # per metric: which way methods/models rank
    described: Dict[str, Any] = dataclasses.field(default_factory=dict)  # fixed choices, for summary.json
    curves: Dict[str, str] = dataclasses.field(default_factory=dict)  # curve name -> its x-axis label
    needs_module: bool = False  # works on an nn.Module only (not TorchScript)
    by_default: bool = True  # run without --metrics (the fragility attack is costly: on request only)
    needs_masks: bool = False  # compares explanations with the data's ground-truth masks (an .npz's s)
    resolve: Optional[Resolve] = None  # settings that follow from the model and the input shape


def samples_for(features: int) -> int:
    """Default perturbation samples per example for inputs of ``features`` values (module docstring)."""
    return 10 if features <= 4096 else 6 if features <= 65536 else 4


def samples_setting(features: int, what: str) -> Setting:
    """``n_samples``: ``what`` per example, defaulting by input size (:func:`samples_for`)."""
    return Setting("n_samples", samples_for(features), integer(1),
                   f"{what} per example (default by input size: 10 up to 4,096 values, 6 up to 65,536, 4 above)")


_EPS_MIN = 1e-6


def _ball_group(sensitivity: Any, stability: Optional[Any]) -> Group:
    # max/avg sensitivity and relative input stability share their keyed
    # L-inf perturbations: one pass of perturbed explanations for all three
    from .shared_samples import SharedSamples

    names = ("max_sensitivity", "avg_sensitivity") + (("relative_input_stability",) if stability else ())

    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("sensitivity")
        explainer, kwargs = ctx.explainer_of(method)
        shared = SharedSamples(sensitivity.PerturbedExplanations.prepare(
            ctx.model, ctx.x, ctx.pred, explainer, kwargs, None, attrs, ctx.memory_budget, None, ctx.offset,
            model_form=ctx.model_form))
        perturbation = sensitivity.Perturbation("uniform", (s["radius"],), s["n_samples"], ctx.seed,
                                                example_offset=ctx.offset)
        sens = sensitivity.sensitivity_values(shared, perturbation, sensitivity.check_norm("fro"), True)
        stab = stability.stability_values(shared, perturbation, 2.0, _EPS_MIN) if stability else None
        shared.run()
        columns = {"max_sensitivity": sens.amax(1), "avg_sensitivity": sens.mean(1)}
        if stab is not None:
            columns["relative_input_stability"] = stab.amax(1)
        return Values(columns)

    return Group("sensitivity", names, True, compute,
                 lambda f: (Setting("radius", 0.05, number(0, above=True), "L-inf radius, in input units"),
                            samples_setting(f, "perturbed explanations")),
                 lambda s, rows: (s["n_samples"] * rows, 0), {n: False for n in names},
                 {"perturbation": "uniform L-inf ball", "sensitivity_norm": "fro", "sensitivity_normalize": True,
                  "stability_norm": 2.0, "stability_eps_min": _EPS_MIN})


def _infidelity_group(module: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("infidelity")
        value = module.infidelity(ctx.model, ctx.x, attrs, target=ctx.pred, n_samples=s["n_samples"],
                                  stdev=s["stdev"], seed=ctx.seed, memory_budget=ctx.memory_budget,
                                  model_form=ctx.model_form,
                                  example_offset=ctx.offset)
        return Values({"infidelity": value})

    return Group("infidelity", ("infidelity",), True, compute,
                 lambda f: (samples_setting(f, "gaussian perturbations"),
                            Setting("stdev", 0.1, number(0, above=True), "the perturbations' std, in input units")),
                 lambda s, rows: (0, s["n_samples"] + 1), {"infidelity": False},
                 {"perturbation": "gaussian", "normalize": False})


def attack_clamp(setting: str, x: Tensor) -> Optional[Tuple[float, float]]:
    """The attacks' valid input range: ``"0,1"``, ``"none"``, or ``"auto"``
    ([0, 1] when the batch lies in it, as images in pixel units do)."""
    if setting == "none" or (setting == "auto" and not (x.min() >= 0 and x.max() <= 1)):
        return None
    return (0.0, 1.0)


def _epsilon() -> Setting:
    return Setting("epsilon", 0.1, number(0, above=True), "L-inf radius of the attack, in input units")


def _clamp() -> Setting:
    return Setting("clamp", "auto", choice("auto", "0,1", "none"),
                   "valid input range of the attacked inputs: auto is [0, 1] when the data lie in it")


def _attack_groups(module: Any) -> List[Group]:
    def fgsm(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("fgsm")
        r = module.fgsm_accuracy(ctx.model, ctx.x, ctx.y, s["epsilon"], clamp=attack_clamp(s["clamp"], ctx.x),
                                 memory_budget=ctx.memory_budget, model_form=ctx.model_form)
        return Values({"fgsm_accuracy": r.correct[0].to(torch.float64)})

    def pgd(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("pgd")
        r = module.pgd_accuracy(ctx.model, ctx.x, ctx.y, s["epsilon"], n_steps=s["n_steps"], seed=ctx.seed,
                                clamp=attack_clamp(s["clamp"], ctx.x), memory_budget=ctx.memory_budget,
                                model_form=ctx.model_form,
                                example_offset=ctx.offset)
        return Values({"pgd_accuracy": r.correct[0].to(torch.float64)})

    return [
        Group("fgsm", ("fgsm_accuracy",), False, fgsm, lambda f: (_epsilon(), _clamp()),
              lambda s, rows: (1, 1), {"fgsm_accuracy": True}, {"norm": "L-inf"}),
        Group("pgd", ("pgd_accuracy",), False, pgd,
              lambda f: (_epsilon(), Setting("n_steps", 10, integer(1), "attack steps"), _clamp()),
              lambda s, rows: (s["n_steps"], 1), {"pgd_accuracy": True},
              {"norm": "L-inf", "step_size": "2.5 * epsilon / n_steps", "random_start": True}),
    ]


def _lipschitz_group(module: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("lipschitz")
        explainer, kwargs = ctx.explainer_of(method)
        value = module.local_lipschitz_estimate(
            ctx.model, ctx.x, ctx.pred, explainer, kwargs, std=s["std"], n_samples=s["n_samples"], seed=ctx.seed,
            attributions=attrs, memory_budget=ctx.memory_budget, model_form=ctx.model_form, example_offset=ctx.offset)
        return Values({"local_lipschitz_estimate": value})

    return Group("lipschitz", ("local_lipschitz_estimate",), True, compute,
                 lambda f: (Setting("std", 0.1, number(0, above=True), "the perturbations' std, in input units"),
                            samples_setting(f, "perturbed explanations")),
                 lambda s, rows: (s["n_samples"] * rows, 0), {"local_lipschitz_estimate": False},
                 {"perturbation": "gaussian"})


def _curve_settings(baseline: Any) -> Tuple[Setting, ...]:
    return (Setting("n_steps", 16, integer(1), "points of the curve after its start"),
            Setting("baseline", baseline, choice_or_number(("blur",)),
                    "what a removed feature becomes: a number, or blur (the input blurred, gaussian sigma 5)"))


def _deletion_groups(module: Any) -> List[Group]:
    def curve(name: str, fn: Callable[..., Any]) -> Compute:
        def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
            s = ctx.of(name)
            c = fn(ctx.model, ctx.x, attrs, target=ctx.pred, n_steps=s["n_steps"], baseline=s["baseline"],
                   memory_budget=ctx.memory_budget, model_form=ctx.model_form)
            return Values({f"{name}_auc": c.auc}, {name: c.values})
        return compute

    def cost(s: Mapping[str, Any], rows: int) -> Tuple[int, int]:
        return 0, s["n_steps"] + 1

    return [
        Group("deletion", ("deletion_auc",), True, curve("deletion", module.deletion_curve),
              lambda f: _curve_settings(0.0), cost, {"deletion_auc": False},
              {"output": "probability"}, {"deletion": "fraction of features removed"}),
        Group("insertion", ("insertion_auc",), True, curve("insertion", module.insertion_curve),
              lambda f: _curve_settings("blur"), cost, {"insertion_auc": True},
              {"output": "probability"}, {"insertion": "fraction of features inserted"}),
    ]


def _fragility_group(module: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("fragility")
        explainer, kwargs = ctx.explainer_of(method)
        if explainer not in module.DIFFERENTIABLE:  # the attack differentiates the explanation
            nan = torch.full((ctx.x.shape[0],), float("nan"), dtype=torch.float64, device=ctx.x.device)
            return Values({"fragility_topk": nan, "fragility_spearman": nan})
        r = module.fragility(ctx.model, ctx.x, ctx.pred, explainer, kwargs, epsilon=s["epsilon"],
                             n_steps=s["n_steps"], seed=ctx.seed, memory_budget=ctx.memory_budget,
                             model_form=ctx.model_form,
                             example_offset=ctx.offset)
        return Values({"fragility_topk": r.top_k_intersection, "fragility_spearman": r.spearman})

    return Group("fragility", ("fragility_topk", "fragility_spearman"), True, compute,
                 lambda f: (Setting("epsilon", 0.05, number(0, above=True), "L-inf radius of the attack"),
                            Setting("n_steps", 10, integer(1), "attack steps")),
                 lambda s, rows: (3 * s["n_steps"] * rows, 0),  # a double backward per step: ~3 rows
                 {"fragility_topk": True, "fragility_spearman": True},
                 {"k": "10% of the features", "objective": "topk", "explainers": list(module.DIFFERENTIABLE)},
                 by_default=False)


RANDOMIZATION_GRANULARITY = ("blocks", "layers")


def randomization_steps(model: nn.Module, granularity: str) -> List[str]:
    """The modules randomized, bottom to top: ``"layers"``, every module that
    owns parameters; ``"blocks"``, the model's top-level children that hold
    parameters (a ResNet's stem, ``layer1``..``layer4``, ``fc``), so the number
    of steps, and the cost, stays small on deep models. A model that is one
    wrapper around its body (one child holds every parameter: an input
    normalization or output selection around the model) is looked through."""
    from ..metrics.randomization import parameterized_layers

    if granularity == "layers":
        return parameterized_layers(model)
    prefix, root = "", model
    while next(root.parameters(recurse=False), None) is None:
        holding = [(n, m) for n, m in root.named_children() if next(m.parameters(), None) is not None]
        if len(holding) != 1:
            break
        name, root = holding[0]
        prefix += name + "."
    blocks = [prefix + name for name, m in root.named_children() if next(m.parameters(), None) is not None]
    return blocks or parameterized_layers(model)


def block_randomize(model: nn.Module, seed: int) -> Callable[[str, nn.Module, int], None]:
    """Randomize every parameterized module inside a step's module, each with
    :func:`~fastattr.metrics.randomization.keyed_uniform_init`'s draws keyed
    by its own index in ``model.named_modules()`` (the same draws as the
    ``"layers"`` steps give that module)."""
    from ..metrics.randomization import keyed_uniform_init

    index = {name: i for i, (name, _) in enumerate(model.named_modules())}
    layer = keyed_uniform_init(seed)

    def randomize(name: str, module: nn.Module, _index: int) -> None:
        for sub, m in module.named_modules():
            if next(m.parameters(recurse=False), None) is not None:
                full = f"{name}.{sub}" if sub else name
                layer(full, m, index[full])

    return randomize


def _randomization_group(module: Any) -> Group:
    # The per-example value is the mean over cascading steps; the per-step values are the sanity-check curve.
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("randomization")
        explainer, kwargs = ctx.explainer_of(method)
        r = module.model_randomization(ctx.model, ctx.x, ctx.pred, explainer, kwargs,
                                       layers=[ctx.layer_prefix + n for n in reversed(s["steps"])], seed=ctx.seed,
                                       randomize=block_randomize(ctx.model, ctx.seed),
                                       ssim_win_size=ssim_window(ctx.x), memory_budget=ctx.memory_budget,
                                       model_form=ctx.model_form,
                                       attributions=attrs, example_offset=ctx.offset)
        rho = _constant_is_unrelated(r.spearman, attrs)
        return Values({"randomization_spearman": rho.mean(0)}, {"randomization_spearman": rho.T})

    return Group("randomization", ("randomization_spearman",), True, compute, lambda f: (granularity_setting(),),
                 lambda s, rows: (len(s["steps"]) * rows, 0), {"randomization_spearman": False},
                 {"order": "cascading", "similarity": "spearman of |a|", "reduction": "mean over steps"},
                 {"randomization_spearman": "layers randomized (top first)"}, needs_module=True,
                 resolve=with_randomization_steps)


def granularity_setting() -> Setting:
    """What a randomization step re-initialises (``granularity``)."""
    return Setting("granularity", "blocks", choice(*RANDOMIZATION_GRANULARITY),
                   "blocks: the model's top-level parts, top first; layers: every module with parameters")


def with_randomization_steps(settings: Dict[str, Any], model: Any, shape: Tuple[int, ...],
                             layer_prefix: str) -> Dict[str, Any]:
    """``settings`` with ``steps``: the modules randomized by its
    ``granularity``, top first, by the user's names (without ``layer_prefix``)."""
    if not isinstance(model, nn.Module):
        return settings
    names = randomization_steps(model, settings["granularity"])
    return {**settings, "steps": [n[len(layer_prefix):] for n in reversed(names)]}


def _constant_is_unrelated(rho: Tensor, clean: Tensor) -> Tensor:
    """Spearman ``[L, B]`` with 0 where the randomized model's explanation is
    constant (a ReLU'd Grad-CAM of a random model is often all zeros): it
    keeps none of the clean explanation's order, which is what the check asks;
    the rank correlation itself is undefined (NaN) there. Where the clean
    explanation is constant, nothing can be compared and NaN stays."""
    flat = clean.reshape(clean.shape[0], -1).abs()
    informative = (flat != flat[:, :1]).any(1)
    return torch.where(rho.isnan() & informative, torch.zeros_like(rho), rho)


def resolved_for_model(group: Group, settings: Dict[str, Any], model: Any, layer_prefix: str = "",
                       shape: Tuple[int, ...] = ()) -> Dict[str, Any]:
    """A group's settings with what follows from the model and one example's
    ``shape`` ``[*F]`` (its ``resolve``): e.g. the randomization check's
    ``steps`` (the user's module names, without ``layer_prefix``, the path of
    the user's model in ``model``; in step order: top first)."""
    return settings if group.resolve is None else group.resolve(settings, model, tuple(shape), layer_prefix)


def ssim_window(x: Tensor) -> int:
    """SSIM's window for explanations shaped like ``x`` ``[b, *F]``, flattened: 7, or the largest odd size below F."""
    features = x[0].numel()
    return 7 if features >= 7 else max(3, features - (1 - features % 2))


def _explanation_error_group() -> Group:
    # What the method says of its own accuracy: no extra rows, so on by default.
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        error = ctx.errors.get(method)
        if error is None:
            error = torch.full((ctx.x.shape[0],), float("nan"), dtype=torch.float64, device=ctx.x.device)
        return Values({"explanation_error": error})

    return Group("explanation_error", ("explanation_error",), True, compute, lambda f: (),
                 lambda s, rows: (0, 0), {"explanation_error": False},
                 {"explanation_error": "the method's own estimate of its relative error: IG refined to rtol "
                                       "(estimated path error), SmoothGrad (standard error of the noise "
                                       "average); NaN for methods without one"})


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
        ("lipschitz", _lipschitz_group),
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
    groups.append(_explanation_error_group())
    # Quantus's other metrics, on request only (by_default=False)
    from . import measures_axiomatic, measures_explanation, measures_faithfulness, measures_robustness

    for extra in (measures_faithfulness, measures_robustness, measures_axiomatic, measures_explanation):
        groups.extend(extra.groups(_installed))
    return groups


def metric_names(groups: Sequence[Group], defaults_only: bool = False) -> Tuple[str, ...]:
    return tuple(n for g in groups if g.by_default or not defaults_only for n in g.metrics)
