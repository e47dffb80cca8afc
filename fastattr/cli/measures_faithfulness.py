"""Quantus's faithfulness metrics as audit groups, on request only: each
replaces input values in an order or a draw set by the explanation and
compares the model's output change with the attributions
(:mod:`fastattr.metrics.faithfulness`, ``faithfulness_monotonicity``,
``faithfulness_regions``, ``irof``, ``road``, ``deletion``'s pixel flipping).
Every value is the :mod:`fastattr.metrics` function's on the audited batch,
the explained class as target, draws keyed by data-set index.

Left out, with why: Sensitivity-N scores a correlation *across the
examples of a batch*, one per step, so it has no per-example value (its
per-example output-change curve alone is pixel flipping's, offered here);
Sufficiency compares each example with the others of its batch, by
definition, so its value would depend on the batch size and sharding."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .measures import BatchContext, Group, Resolve, Values, samples_setting
from .measures_common import (
    Installed, abs_setting, at_most_features, baseline_setting, built, column, features_in_step_setting, needs_shape,
    output_setting, points_resolve, prepared, similarity_setting,
)
from .options import Setting, choice, integer, number

def _common(ctx: BatchContext) -> Dict[str, Any]:
    return {"seed": ctx.seed, "memory_budget": ctx.memory_budget, "example_offset": ctx.offset,
            "model_form": ctx.model_form}


def _correlation_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("faithfulness_correlation")
        value = m.faithfulness_correlation(
            ctx.model, ctx.x, prepared(attrs, s), ctx.pred, n_runs=s["n_runs"], subset_size=s["subset_size"],
            baseline=s["baseline"], output=s["output"], similarity=s["similarity"], **_common(ctx))
        return Values({"faithfulness_correlation": value})

    def settings(f: int) -> Tuple[Setting, ...]:
        subset = 224 if f == 0 else max(1, min(224, f // 10))
        return (Setting("n_runs", 100, integer(1), "random subsets per example (forward rows)"),
                Setting("subset_size", subset, integer(1),
                        "input values per subset (default: Quantus's 224, at most a tenth of the values)"),
                baseline_setting("black"), output_setting("logit"), similarity_setting("pearson"), abs_setting(False))

    def resolve(s: Dict[str, Any], model: Any, shape: Tuple[int, ...], prefix: str) -> Dict[str, Any]:
        at_most_features("faithfulness_correlation", "subset_size", s["subset_size"], shape)
        return s

    return Group("faithfulness_correlation", ("faithfulness_correlation",), True, compute, settings,
                 lambda s, rows: (0, s["n_runs"] + 1), {"faithfulness_correlation": True},
                 {"subsets": "keyed by (seed, example, run)"}, by_default=False, resolve=resolve)


def _estimate_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("faithfulness_estimate")
        value = m.faithfulness_estimate(
            ctx.model, ctx.x, prepared(attrs, s), ctx.pred, features_in_step=s["features_in_step"],
            baseline=s["baseline"], output=s["output"], similarity=s["similarity"], **_common(ctx))
        return Values({"faithfulness_estimate": value})

    return Group("faithfulness_estimate", ("faithfulness_estimate",), True, compute,
                 lambda f: (features_in_step_setting(f), baseline_setting("black"), output_setting("logit"),
                            similarity_setting("pearson"), abs_setting(False)),
                 lambda s, rows: (0, s["n_points"] + 1), {"faithfulness_estimate": True},
                 {"order": "largest attribution first"}, by_default=False,
                 resolve=points_resolve("faithfulness_estimate"))


def _monotonicity_groups(m: Any) -> List[Group]:
    def monotonic(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("monotonicity")
        value = m.monotonicity(ctx.model, ctx.x, prepared(attrs, s), ctx.pred,
                               features_in_step=s["features_in_step"], baseline=s["baseline"], output=s["output"],
                               inserted=s["inserted"], **_common(ctx))
        return Values({"monotonicity": column(value)})

    def correlated(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("monotonicity_correlation")
        value = m.monotonicity_correlation(
            ctx.model, ctx.x, prepared(attrs, s), ctx.pred, features_in_step=s["features_in_step"],
            n_samples=s["n_samples"], baseline=s["baseline"], output=s["output"], similarity=s["similarity"],
            eps=s["eps"], **_common(ctx))
        return Values({"monotonicity_correlation": value})

    inserted = Setting("inserted", "input", choice(*m.INSERTED),
                       "what a step puts in: input (Arya et al.: the input's values) or baseline (Quantus 0.6, "
                       "whose steps never insert the input: every example is monotonic with black)")

    def correlation_cost(s: Mapping[str, Any], rows: int) -> Tuple[int, int]:
        return 0, 1 + s["n_points"] * (s["n_samples"] if s["baseline"] == "uniform" else 1)

    return [
        Group("monotonicity", ("monotonicity",), True, monotonic,
              lambda f: (features_in_step_setting(f), baseline_setting("black"), output_setting("probability"),
                         inserted, abs_setting(True)),
              lambda s, rows: (0, s["n_points"] + 1), {"monotonicity": True},
              {"order": "smallest attribution first", "value": "1 when the output never decreases, else 0"},
              by_default=False, resolve=points_resolve("monotonicity")),
        Group("monotonicity_correlation", ("monotonicity_correlation",), True, correlated,
              lambda f: (features_in_step_setting(f), samples_setting(f, "replacements of each step"),
                         baseline_setting("uniform"), output_setting("probability"),
                         similarity_setting("spearman"),
                         Setting("eps", 1e-5, number(0), "outputs smaller than this are not divided by"),
                         abs_setting(True)),
              correlation_cost, {"monotonicity_correlation": True},
              {"order": "smallest attribution first"}, by_default=False,
              resolve=points_resolve("monotonicity_correlation")),
    ]


def _region_groups(m: Any) -> List[Group]:
    def resolve_for(metric: str) -> Resolve:
        def resolve(s: Dict[str, Any], model: Any, shape: Tuple[int, ...], prefix: str) -> Dict[str, Any]:
            needs_shape(metric, shape, (2, 3), "images [C, H, W] or series [C, T]")
            n_patches = m.patch_grid(tuple(shape[1:]), s["patch_size"], torch.device("cpu"))[1]
            points = min(s["regions_evaluation"], n_patches) if "regions_evaluation" in s else n_patches
            return {**s, "n_patches": n_patches, "n_points": points}
        return resolve

    def perturbed(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("region_perturbation")
        c = m.region_perturbation(ctx.model, ctx.x, prepared(attrs, s), ctx.pred, patch_size=s["patch_size"],
                                  regions_evaluation=s["regions_evaluation"], baseline=s["baseline"],
                                  output=s["output"], **_common(ctx))
        return Values({"region_perturbation_auc": c.auc}, {"region_perturbation": c.values})

    def selective(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("selectivity")
        c = m.selectivity(ctx.model, ctx.x, prepared(attrs, s), ctx.pred, patch_size=s["patch_size"],
                          baseline=s["baseline"], output=s["output"], **_common(ctx))
        return Values({"selectivity_auc": c.auc}, {"selectivity": c.values})

    def patch(f: int) -> Setting:
        side = math.isqrt(f) // 8 if f else 8
        return Setting("patch_size", max(1, min(8, side)), integer(1),
                       "side of the square patches (default: Quantus's 8, at most an eighth of sqrt(values))")

    return [
        Group("region_perturbation", ("region_perturbation_auc",), True, perturbed,
              lambda f: (patch(f), Setting("regions_evaluation", 100, integer(1), "the most patches replaced"),
                         baseline_setting("black"), output_setting("probability"), abs_setting(False)),
              lambda s, rows: (0, s["n_points"] + 1), {"region_perturbation_auc": True},
              {"order": "morf (largest patch sum first)", "value": "area under the output drop, trapezoids of width 1"},
              {"region_perturbation": "patches replaced (most relevant first)"}, by_default=False,
              resolve=resolve_for("region_perturbation_auc")),
        Group("selectivity", ("selectivity_auc",), True, selective,
              lambda f: (patch(f), baseline_setting("black"), output_setting("probability"), abs_setting(False)),
              lambda s, rows: (0, s["n_points"]), {"selectivity_auc": False},
              {"order": "morf (largest patch sum first)", "value": "area under the output, trapezoids of width 1"},
              {"selectivity": "patches replaced (most relevant first)"}, by_default=False,
              resolve=resolve_for("selectivity_auc")),
    ]


def _irof_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("irof")
        r = m.irof(ctx.model, ctx.x, prepared(attrs, s), ctx.pred, baseline=s["baseline"], output=s["output"],
                   n_segments=s["n_segments"], compactness=s["compactness"], **_common(ctx))
        return Values({"irof": r.aoc})

    # A curve per example has as many points as its image has superpixels: not one table, so no curve.
    return Group("irof", ("irof",), True, compute,
                 lambda f: (baseline_setting("mean", ("mean", "black", "white", "uniform")),
                            output_setting("probability"),
                            Setting("n_segments", 100, integer(2), "SLIC superpixels asked for per image"),
                            Setting("compactness", 10.0, number(0, above=True), "SLIC's compactness"),
                            abs_setting(False)),
                 lambda s, rows: (0, s["n_segments"] + 1),  # SLIC gives about n_segments superpixels
                 {"irof": True},
                 {"segmentation": "SLIC (fastattr.metrics.slic)", "order": "largest mean attribution first",
                  "value": "area over the output curve relative to the clean output"},
                 by_default=False, resolve=images_only("irof"))


def _road_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("road")
        per_pixel = prepared(attrs, s).sum(1, keepdim=True)
        kept = m.road(ctx.model, ctx.x, per_pixel, ctx.pred, percentages=road_percentages(s),
                      noise=s["noise"], output=s["output"], **_common(ctx))
        return Values({"road": kept.mean(1)}, {"road": kept})

    return Group("road", ("road",), True, compute,
                 lambda f: (Setting("percentage_step", 2, integer(1),
                                    "percentages of pixels imputed: 1, 1 + step, ... below 100 (Quantus's 2)"),
                            Setting("noise", 0.01, number(0), "std of the noise added to imputed pixels"),
                            output_setting("probability"), abs_setting(False)),
                 lambda s, rows: (0, len(road_percentages(s))), {"road": False},
                 {"order": "morf (largest attribution summed over channels first)",
                  "imputation": "noisy linear", "value": "fraction of the percentages where the class survives"},
                 {"road": "percentages of the pixels imputed: 1, 1 + step, ... (most relevant first)"},
                 by_default=False, resolve=images_only("road"))


def road_percentages(settings: Mapping[str, Any]) -> Tuple[int, ...]:
    """ROAD's percentages of pixels imputed: ``range(1, 100, percentage_step)``."""
    return tuple(range(1, 100, settings["percentage_step"]))


def images_only(metric: str) -> Resolve:
    """A group's ``resolve`` that refuses inputs other than images ``[C, H, W]``."""
    def resolve(s: Dict[str, Any], model: Any, shape: Tuple[int, ...], prefix: str) -> Dict[str, Any]:
        needs_shape(metric, shape, (3,), "images [C, H, W]")
        return s
    return resolve


def _pixel_flipping_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("pixel_flipping")
        c = m.pixel_flipping(ctx.model, ctx.x, prepared(attrs, s), ctx.pred, features_in_step=s["features_in_step"],
                             baseline=s["baseline"], output=s["output"], **_common(ctx))
        return Values({"pixel_flipping_auc": c.auc}, {"pixel_flipping": c.values})

    return Group("pixel_flipping", ("pixel_flipping_auc",), True, compute,
                 lambda f: (features_in_step_setting(f), baseline_setting("black"), output_setting("probability"),
                            abs_setting(False)),
                 lambda s, rows: (0, s["n_points"]), {"pixel_flipping_auc": False},
                 {"order": "largest attribution first", "value": "area under the output, trapezoids of width 1"},
                 {"pixel_flipping": "steps of features_in_step values replaced (most relevant first)"},
                 by_default=False, resolve=points_resolve("pixel_flipping"))


def groups(installed: Installed) -> List[Group]:
    """The faithfulness groups whose :mod:`fastattr.metrics` modules are installed."""
    return built(installed, (("faithfulness", lambda m: [_correlation_group(m), _estimate_group(m)]),
                             ("faithfulness_monotonicity", _monotonicity_groups),
                             ("faithfulness_regions", _region_groups), ("irof", _irof_group),
                             ("road", _road_group), ("deletion", _pixel_flipping_group)))
