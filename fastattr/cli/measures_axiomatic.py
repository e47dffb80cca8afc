"""Quantus's axiomatic metrics as audit groups, on request only
(:mod:`fastattr.metrics.axiomatic`): completeness (its gap, absolute),
non-sensitivity (how many values break the axiom) and input invariance
(whether the explanation survives a constant input shift absorbed by the
first layer). Each value is the :mod:`fastattr.metrics` function's on the
audited batch, the explained class as target."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor

from .config import AuditError
from .measures import BatchContext, Group, Values
from .measures_common import (
    Installed, abs_setting, baseline_setting, column, features_in_step_setting, normalise_setting, output_setting,
    points_resolve, prepared,
)
from .options import Setting, number

_WITH_MEAN = ("black", "white", "mean", "uniform")


def _completeness_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("completeness")
        gap = m.completeness(ctx.model, ctx.x, attrs, ctx.pred, baseline=s["baseline"], output=s["output"],
                             seed=ctx.seed, memory_budget=ctx.memory_budget, example_offset=ctx.offset,
                                  model_form=ctx.model_form)
        return Values({"completeness_gap": gap.abs()})

    # No abs / normalise: the gap compares the attributions' sum with an output difference, in output units.
    return Group("completeness", ("completeness_gap",), True, compute,
                 lambda f: (baseline_setting("black", _WITH_MEAN), output_setting("logit")),
                 lambda s, rows: (0, 2), {"completeness_gap": False},
                 {"value": "|sum(a) - (f(x) - f(baseline))| for the explained class; 0: complete"},
                 by_default=False)


def _non_sensitivity_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("non_sensitivity")
        count = m.non_sensitivity(ctx.model, ctx.x, prepared(attrs, s), ctx.pred, eps=s["eps"],
                                  features_in_step=s["features_in_step"], baseline=s["baseline"], output=s["output"],
                                  seed=ctx.seed, memory_budget=ctx.memory_budget, example_offset=ctx.offset,
                                  model_form=ctx.model_form)
        return Values({"non_sensitivity": column(count)})

    return Group("non_sensitivity", ("non_sensitivity",), True, compute,
                 lambda f: (Setting("eps", 1e-5, number(), "threshold of both tests (output change, attribution)"),
                            features_in_step_setting(f), baseline_setting("black", _WITH_MEAN),
                            output_setting("probability"), abs_setting(True), normalise_setting(True)),
                 lambda s, rows: (0, s["n_points"] + 1), {"non_sensitivity": False},
                 {"value": "values whose replacement changes the output by < eps XOR whose attribution is < eps"},
                 by_default=False, resolve=points_resolve("non_sensitivity"))


def _input_invariance_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("input_invariance")
        explainer, kwargs = ctx.explainer_of(method)
        same = m.input_invariance(ctx.model, ctx.x, explainer, ctx.pred, input_shift=s["input_shift"],
                                  attributions=attrs, explainer_kwargs=kwargs, atol=s["atol"], rtol=s["rtol"],
                                  memory_budget=ctx.memory_budget, example_offset=ctx.offset,
                                  model_form=ctx.model_form)
        return Values({"input_invariance": column(same)})

    def resolve(s: Dict[str, Any], model: Any, shape: Tuple[int, ...], prefix: str) -> Dict[str, Any]:
        try:  # a copy of the model, one forward of its first layer: before any work
            m.mean_shifted_model(model, s["input_shift"], (1, *shape))
        except (TypeError, ValueError) as e:
            raise AuditError(f"--metrics: input_invariance shifts the model's first layer's bias: {e}") from None
        return s

    return Group("input_invariance", ("input_invariance",), True, compute,
                 lambda f: (Setting("input_shift", -1.0, number(), "the constant added to every input value"),
                            Setting("atol", 1e-4, number(0), "absolute tolerance of the comparison"),
                            Setting("rtol", 1e-5, number(0), "relative tolerance of the comparison")),
                 lambda s, rows: (rows, 0), {"input_invariance": True},
                 {"value": "1 when the shifted explanation equals the original within atol + rtol |shifted|"},
                 needs_module=True, by_default=False, resolve=resolve)


def groups(installed: Installed) -> List[Group]:
    """The axiomatic groups, when :mod:`fastattr.metrics.axiomatic` is installed."""
    m = installed("axiomatic")
    return [] if m is None else [_completeness_group(m), _non_sensitivity_group(m), _input_invariance_group(m)]
