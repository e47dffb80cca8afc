"""Quantus's complexity and localisation metrics as audit groups, on request
only: functions of the explanation alone (:mod:`fastattr.metrics.complexity`)
or of the explanation and the data's ground-truth masks
(:mod:`fastattr.metrics.localisation`, an ``.npz`` with ``s``). No model
rows: they cost nothing beyond the explanation.

Left out, with why: Focus scores explanations of 2 x 2 mosaics of
examples of different classes, which an audited data set does not hold."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import Tensor

from .measures import BatchContext, Group, Values
from .measures_common import Installed, abs_setting, at_most_features, column, normalise_setting, prepared
from .options import Setting, boolean, integer, number

COMPLEXITY = ("sparseness", "entropy_complexity", "effective_complexity")


def _no_rows(settings: Any, rows: int) -> Tuple[int, int]:
    return 0, 0


def _complexity_group(m: Any) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of("complexity")
        a = prepared(attrs, s)
        return Values({"sparseness": m.sparseness(a), "entropy_complexity": m.entropy_complexity(a),
                       "effective_complexity": column(m.effective_complexity(a, s["eps"]))})

    return Group("complexity", COMPLEXITY, True, compute,
                 lambda f: (abs_setting(True), normalise_setting(True),
                            Setting("eps", 1e-5, number(), "effective_complexity counts attributions above it")),
                 _no_rows, {"sparseness": True, "entropy_complexity": False, "effective_complexity": False},
                 {"sparseness": "Gini index", "entropy_complexity": "entropy of the attribution shares"},
                 by_default=False)


def _mask_group(name: str, compute_of: Callable[[Tensor, Tensor, Dict[str, Any]], Tensor],
                settings: Callable[[int], Tuple[Setting, ...]], described: Dict[str, Any],
                resolve: Any = None) -> Group:
    def compute(ctx: BatchContext, method: Optional[str], attrs: Optional[Tensor]) -> Values:
        s = ctx.of(name)
        return Values({name: compute_of(prepared(attrs, s), ctx.masks, s)})

    return Group(name, (name,), True, compute, settings, _no_rows, {name: True}, described,
                 by_default=False, needs_masks=True, resolve=resolve)


def _localisation_groups(m: Any) -> List[Group]:
    def top_k(f: int) -> Setting:
        k = 1000 if f == 0 else max(1, min(1000, f // 10))
        return Setting("k", k, integer(1), "the largest attributions counted (default: Quantus's 1000, at most a "
                                            "tenth of the values)")

    def k_fits(s: Dict[str, Any], model: Any, shape: Tuple[int, ...], prefix: str) -> Dict[str, Any]:
        at_most_features("top_k_localisation", "k", s["k"], shape)
        return s

    weighted = Setting("weighted", False, boolean, "weigh by the mask's share of the example")
    return [
        _mask_group("pointing_game", lambda a, s, o: m.pointing_game(a, s, o["weighted"]),
                    lambda f: (Setting("weighted", False, boolean, "a hit scores 1 - the mask's share"),
                               abs_setting(False)),
                    {"value": "1 when a largest attribution lies in the mask"}),
        _mask_group("attribution_localisation",
                    lambda a, s, o: m.attribution_localisation(a, s, o["weighted"], o["positive_attributions"]),
                    lambda f: (weighted, Setting("positive_attributions", False, boolean,
                                                 "clip negative attributions to 0 first"), abs_setting(True)),
                    {"value": "share of the attributions inside the mask"}),
        _mask_group("top_k_localisation",
                    lambda a, s, o: m.top_k_localisation(a, s, o["k"], o["concept_influence"]),
                    lambda f: (top_k(f), Setting("concept_influence", False, boolean,
                                                 "divide by the mask's share of the values"), abs_setting(False)),
                    {"value": "share of the k largest attributions inside the mask"}, k_fits),
        _mask_group("relevance_rank_accuracy", lambda a, s, o: m.relevance_rank_accuracy(a, s),
                    lambda f: (abs_setting(False),),
                    {"value": "share of the |mask| largest attributions inside the mask"}),
        _mask_group("relevance_mass_accuracy", lambda a, s, o: m.relevance_mass_accuracy(a, s),
                    lambda f: (abs_setting(False),), {"value": "sum(a in the mask) / sum(a)"}),
        _mask_group("localisation_auc", lambda a, s, o: m.localisation_auc(a, s),
                    lambda f: (abs_setting(False),),
                    {"value": "ROC AUC of the attributions as scores of mask membership"}),
    ]


def groups(installed: Installed) -> List[Group]:
    """The complexity and localisation groups whose :mod:`fastattr.metrics` modules are installed."""
    out: List[Group] = []
    complexity, localisation = installed("complexity"), installed("localisation")
    if complexity is not None:
        out.append(_complexity_group(complexity))
    if localisation is not None:
        out.extend(_localisation_groups(localisation))
    return out
