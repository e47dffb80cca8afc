"""Quantus's other robustness and randomisation metrics as audit groups, on
request only: continuity (translations along the width), relative output
and representation stability (keyed L-inf perturbations, as the default
relative input stability), the random-logit test, and the smooth and
efficient model-parameter randomization tests. Each value is the
:mod:`fastattr.metrics` function's on the audited batch (the method re-run
on the changed inputs or models, the explained class as target, draws keyed
by data-set index).

Left out, with why: Consistency compares each example's explanation with
those of the other examples of its batch, by definition, so its value would
depend on the batch size and sharding."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .config import AuditError
from .measures import (
    BatchContext, Group, Values, block_randomize, granularity_setting, samples_setting, ssim_window,
    with_randomization_steps,
)
from .measures_common import Installed, built, column, needs_shape
from .options import Setting, boolean, choice, integer, number

QUANTUS_TRANSLATIONS = 28


def _auto_or_count(value: Any) -> Any:
    """Parser of ``auto`` or an integer >= 1."""
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    try:
        return integer(1)(value)
    except ValueError:
        raise ValueError("expected auto or an integer >= 1") from None


def _continuity_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("continuity")
        explainer, kwargs = ctx.explainer_of(method)
        value = m.continuity(ctx.model, ctx.x, ctx.pred, explainer, kwargs, n_steps=s["translations"],
                             attributions=attrs, memory_budget=ctx.memory_budget, example_offset=ctx.offset,
                             model_form=ctx.model_form,
                             nan_when_prediction_changes=s["nan_when_prediction_changes"])
        return Values({"continuity": value})

    def resolve(s: Dict[str, Any], model: Any, shape: Tuple[int, ...], prefix: str) -> Dict[str, Any]:
        needs_shape("continuity", shape, (2, 3), "images [C, H, W] or series [C, W] (translated along the width)")
        most = 2 * shape[-1] + 1  # more translations than this are all the blank image
        n = min(QUANTUS_TRANSLATIONS, most) if s["n_steps"] == "auto" else s["n_steps"]
        if n > most:
            raise AuditError(f"--metric-option: continuity.n_steps: {n} translations of an input {shape[-1]} wide "
                             f"are all the blank image; at most {most}")
        return {**s, "translations": n}

    return Group("continuity", ("continuity",), True, compute,
                 lambda f: (Setting("n_steps", "auto", _auto_or_count,
                                    f"translations along the width (auto: Quantus's {QUANTUS_TRANSLATIONS}, at most "
                                    f"2 W + 1)"),
                            Setting("nan_when_prediction_changes", False, boolean,
                                    "NaN for an example when a translation changes its predicted class")),
                 lambda s, rows: (s["translations"] * rows, 0), {"continuity": False},
                 {"value": "max over translations of ||a - a_t||_1 / ||x - x_t||_2", "fill": "the example's min"},
                 by_default=False, resolve=resolve)


def _stability_settings(f: int) -> Tuple[Setting, ...]:
    return (Setting("radius", 0.02, number(0, above=True), "L-inf radius, in input units (Quantus's 0.02)"),
            samples_setting(f, "perturbed explanations"),
            Setting("nan_when_prediction_changes", False, boolean,
                    "NaN for an example when a perturbation changes its predicted class (Quantus's default is true; "
                    "the default relative_input_stability does not)"))


def _stability_cost(s: Any, rows: int) -> Tuple[int, int]:
    # the model is read at the clean inputs and, at most, once more at each perturbed row
    return s["n_samples"] * rows, s["n_samples"] + 1


def _layer_names(value: Any) -> str:
    """Parser of ``all`` or comma-separated module names."""
    if isinstance(value, str) and value.strip() and all(n.strip() for n in value.split(",")):
        return ",".join(n.strip() for n in value.split(","))
    raise ValueError("expected all or comma-separated module names of the model")


def _chosen_layers(settings: Dict[str, Any], prefix: str) -> Optional[List[str]]:
    return None if settings["layers"] == "all" else [prefix + n for n in settings["layers"].split(",")]


def _stability_groups(m: Any) -> List[Group]:
    def output(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("output_stability")
        explainer, kwargs = ctx.explainer_of(method)
        value = m.relative_output_stability(
            ctx.model, ctx.x, ctx.pred, explainer, kwargs, radius=s["radius"], n_samples=s["n_samples"],
            seed=ctx.seed, output=s["output"], attributions=attrs, memory_budget=ctx.memory_budget,
            model_form=ctx.model_form,
            example_offset=ctx.offset, nan_when_prediction_changes=s["nan_when_prediction_changes"])
        return Values({"relative_output_stability": value})

    def representation(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("representation_stability")
        explainer, kwargs = ctx.explainer_of(method)
        value = m.relative_representation_stability(
            ctx.model, ctx.x, ctx.pred, explainer, kwargs, layer_names=_chosen_layers(s, ctx.layer_prefix),
            radius=s["radius"], n_samples=s["n_samples"], seed=ctx.seed, attributions=attrs,
            memory_budget=ctx.memory_budget, example_offset=ctx.offset, model_form=ctx.model_form,
            nan_when_prediction_changes=s["nan_when_prediction_changes"])
        return Values({"relative_representation_stability": value})

    def layers_exist(s: Dict[str, Any], model: Any, shape: Tuple[int, ...], prefix: str) -> Dict[str, Any]:
        try:
            m.representation_layers(model, _chosen_layers(s, prefix), None)
        except (TypeError, ValueError) as e:
            raise AuditError(f"--metric-option: representation_stability.layers: {e}") from None
        return s

    perturbation = {"perturbation": "uniform L-inf ball, keyed as sensitivity's", "eps_min": 1e-6}
    return [
        Group("output_stability", ("relative_output_stability",), True, output,
              lambda f: (*_stability_settings(f), Setting("output", "logit", choice("logit", "probability"),
                                                          "the model outputs compared: logits or softmax")),
              _stability_cost, {"relative_output_stability": False}, perturbation, by_default=False),
        Group("representation_stability", ("relative_representation_stability",), True, representation,
              lambda f: (*_stability_settings(f),
                         Setting("layers", "all", _layer_names,
                                 "the layers whose outputs form the representation: all (Quantus's: every module "
                                 "but containers) or comma-separated names of your model's modules")),
              _stability_cost, {"relative_representation_stability": False}, perturbation,
              needs_module=True, by_default=False, resolve=layers_exist),
    ]


def _random_logit_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("random_logit")
        explainer, kwargs = ctx.explainer_of(method)
        with torch.no_grad():
            classes = ctx.model(ctx.x[:1]).shape[1]
        value = m.random_logit(ctx.model, ctx.x, ctx.pred, classes, explainer, kwargs, similarity=s["similarity"],
                               ssim_win_size=ssim_window(ctx.x), seed=ctx.seed, attributions=attrs,
                               memory_budget=ctx.memory_budget, model_form=ctx.model_form, example_offset=ctx.offset)
        return Values({"random_logit": value})

    return Group("random_logit", ("random_logit",), True, compute,
                 lambda f: (Setting("similarity", "ssim", choice(*m.SIMILARITIES),
                                    "similarity of the explanations of the class and of another one"),),
                 lambda s, rows: (rows, 0), {"random_logit": False},
                 {"other class": "uniform among the rest, keyed by (seed, example)"}, by_default=False)


def _randomization_groups(m: Any) -> List[Group]:
    def layers(ctx: BatchContext, s: Dict[str, Any]) -> List[str]:
        return [ctx.layer_prefix + n for n in reversed(s["steps"])]  # bottom first

    def smooth(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("smooth_mprt")
        explainer, kwargs = ctx.explainer_of(method)
        r = m.smooth_model_randomization(
            ctx.model, ctx.x, ctx.pred, explainer, kwargs, order="bottom_up", layers=layers(ctx, s), seed=ctx.seed,
            n_samples=s["n_samples"], noise_magnitude=s["noise_magnitude"],
            randomize=block_randomize(ctx.model, ctx.seed), ssim_win_size=ssim_window(ctx.x),
            memory_budget=ctx.memory_budget, example_offset=ctx.offset, model_form=ctx.model_form)
        return Values({"smooth_mprt": r.spearman[-1]}, {"smooth_mprt": r.spearman.T})

    def efficient(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("efficient_mprt")
        explainer, kwargs = ctx.explainer_of(method)
        r = m.efficient_model_randomization(
            ctx.model, ctx.x, ctx.pred, explainer, kwargs, order="bottom_up", layers=layers(ctx, s), seed=ctx.seed,
            n_bins=s["n_bins"], randomize=block_randomize(ctx.model, ctx.seed), memory_budget=ctx.memory_budget,
            model_form=ctx.model_form,
            example_offset=ctx.offset)
        return Values({"efficient_mprt": column(r.relative)})

    return [
        Group("smooth_mprt", ("smooth_mprt",), True, smooth,
              lambda f: (granularity_setting(), samples_setting(f, "noisy copies averaged"),
                         Setting("noise_magnitude", 0.1, number(0), "the noise's std over the example's range")),
              lambda s, rows: ((len(s["steps"]) + 1) * s["n_samples"] * rows, 0), {"smooth_mprt": False},
              {"order": "bottom_up", "similarity": "spearman of |a|",
               "value": "after the last step (every block randomized)"},
              {"smooth_mprt": "layers randomized (bottom first)"}, needs_module=True, by_default=False,
              resolve=with_randomization_steps),
        Group("efficient_mprt", ("efficient_mprt",), True, efficient,
              lambda f: (granularity_setting(), Setting("n_bins", 100, integer(1), "histogram bins of the entropy")),
              lambda s, rows: (2 * rows, 0), {"efficient_mprt": True},
              {"order": "bottom_up", "value": "relative change of the explanation's discrete entropy, original to "
                                              "every block randomized"},
              needs_module=True, by_default=False, resolve=with_randomization_steps),
    ]


def groups(installed: Installed) -> List[Group]:
    """The groups whose :mod:`fastattr.metrics` modules are installed."""
    return built(installed, (("continuity", _continuity_group), ("stability", _stability_groups),
                             ("random_logit", _random_logit_group), ("randomization", _randomization_groups)))
