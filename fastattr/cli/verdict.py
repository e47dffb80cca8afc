"""The audit's verdict: which explanation method to trust for this model and
data, following Adebayo et al. 2018 ("Sanity Checks for Saliency Maps") and
keeping faithfulness and robustness apart, as separate axes.

1. Sanity check (model-parameter randomization): an explanation that barely
   changes when the model's weights are replaced by random ones does not
   explain the model. A method that fails it is never recommended, whatever
   its other ranks; one that was not checked is never recommended either.
2. Faithfulness and 3. robustness: per metric, the methods ranked by their
   median over examples (one outlier example cannot flip a median ranking as
   it flips a mean one), the ranks averaged over the axis's metrics computed.

The recommendation is the most faithful method among those that pass the
sanity check, ties broken by robustness. Robustness alone never recommends
a method: a constant explanation is perfectly robust.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

SANITY = "sanity"
FAITHFULNESS = "faithfulness"
ROBUSTNESS = "robustness"

# metric -> the axis it measures. A per-method metric not listed here is
# shown in the report but ranked on no axis.
AXES: Dict[str, str] = {
    "randomization_spearman": SANITY,
    "deletion_auc": FAITHFULNESS,
    "insertion_auc": FAITHFULNESS,
    "infidelity": FAITHFULNESS,
    "max_sensitivity": ROBUSTNESS,
    "avg_sensitivity": ROBUSTNESS,
    "local_lipschitz_estimate": ROBUSTNESS,
    "relative_input_stability": ROBUSTNESS,
    "fragility_topk": ROBUSTNESS,
    "fragility_spearman": ROBUSTNESS,
    # Quantus's, on request
    "faithfulness_correlation": FAITHFULNESS,
    "faithfulness_estimate": FAITHFULNESS,
    "monotonicity": FAITHFULNESS,
    "monotonicity_correlation": FAITHFULNESS,
    "region_perturbation_auc": FAITHFULNESS,
    "selectivity_auc": FAITHFULNESS,
    "irof": FAITHFULNESS,
    "road": FAITHFULNESS,
    "pixel_flipping_auc": FAITHFULNESS,
    "continuity": ROBUSTNESS,
    "relative_output_stability": ROBUSTNESS,
    "relative_representation_stability": ROBUSTNESS,
}

# The sanity check's statistic: per example the Spearman rank correlation of
# |attributions| between the original model and the model after the LAST
# cascading step (every layer randomized: the curve's last column), its
# median over examples. Adebayo et al. judge a method by the fully randomized
# model: the early steps randomize only the top layers, where a partly
# similar explanation is expected, and methods the paper finds insensitive to
# the model (guided backprop, guided Grad-CAM) keep a rank correlation near 1
# there while those it finds sensitive (gradients, SmoothGrad) fall toward 0.
# 0.5 sits between the two. The absolute value is compared: a strongly
# negative correlation would also be an explanation fixed by the input, not
# the weights. Examples whose similarity is undefined (a constant explanation)
# are left out of the median.
SANITY_METRIC = "randomization_spearman"
SANITY_THRESHOLD = 0.5
SANITY_STATISTIC = ("median over examples of the Spearman rank correlation of |attributions| between the "
                    "original model and the model with every layer randomized (the last cascading step)")

PASS, FAIL, NOT_CHECKED, NOT_APPLICABLE = "pass", "fail", "not checked", "not applicable"


def method_medians(table: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """``[methods x metrics]``: each method's median over examples of each
    metric, from ``table`` (one row per example x method, a ``method`` column
    and a column per metric); NaN where a method has no finite value."""
    finite = table[list(metrics)].where(np.isfinite(table[list(metrics)].astype(float)))
    medians = finite.groupby(table["method"]).median()
    return medians.reindex(index=list(methods), columns=list(metrics))


def axis_scores(medians: pd.DataFrame, higher_is_better: Mapping[str, bool]) -> Tuple[pd.Series, pd.Series]:
    """``(score, rank)`` per method (the index of ``medians`` ``[methods x
    metrics]``): ``score`` is the mean over the metrics of the method's rank
    on each (1 = best, ties share the average rank, a method without a median
    is unranked on that metric); ``rank`` orders the scores (ties share the
    best rank). Both NaN for a method ranked on no metric."""
    per_metric = pd.DataFrame(index=medians.index, dtype=float)
    for metric in medians.columns:
        way = -1.0 if higher_is_better[metric] else 1.0
        per_metric[metric] = (way * medians[metric]).rank(method="average")
    score = per_metric.mean(axis=1) if len(per_metric.columns) else pd.Series(np.nan, index=medians.index)
    return score, score.rank(method="min")


def sanity_result(curve: Optional[np.ndarray]) -> Dict[str, Any]:
    """The sanity check of one method from its ``randomization_spearman``
    curve ``[n, K]`` (None when not computed): ``status`` (pass, fail, not
    checked), ``value`` (the statistic, see ``SANITY_STATISTIC``) and
    ``n_examples`` (the examples with a defined similarity)."""
    last = np.asarray(curve, dtype=float)[:, -1] if curve is not None and np.size(curve) else np.array([])
    finite = last[np.isfinite(last)]
    if finite.size == 0:
        return {"status": NOT_CHECKED, "value": None, "n_examples": 0}
    value = float(np.median(finite))
    return {"status": PASS if abs(value) < SANITY_THRESHOLD else FAIL, "value": value,
            "n_examples": int(finite.size)}


def _recommended(methods: Sequence[str], sanity: Mapping[str, Dict[str, Any]], faith: pd.Series,
                 robust: pd.Series) -> List[str]:
    """The passing methods with the best faithfulness score, then the best
    robustness score among them (all of them when that ties too)."""
    eligible = [m for m in methods if sanity[m]["status"] == PASS and np.isfinite(faith[m])]
    if not eligible:
        return []
    best = min(faith[m] for m in eligible)
    chosen = [m for m in eligible if faith[m] == best]
    ranked = [m for m in chosen if np.isfinite(robust[m])]
    if ranked:
        best_robust = min(robust[m] for m in ranked)
        chosen = [m for m in ranked if robust[m] == best_robust]
    return chosen


def _medians_text(medians: pd.DataFrame, method: str) -> str:
    parts = [f"{metric} median {medians.at[method, metric]:.3g}" for metric in medians.columns
             if np.isfinite(medians.at[method, metric])]
    return ", ".join(parts)


def _rank_text(rank: pd.Series, method: str) -> str:
    """``"2 of 5"``: the method's rank among the methods ranked on the axis."""
    return f"{int(rank[method])} of {int(rank.notna().sum())}"


def _method_reason(method: str, sanity: Dict[str, Any], recommended: Sequence[str], faith_medians: pd.DataFrame,
                   faith: pd.Series, faith_rank: pd.Series, robust_rank: pd.Series) -> str:
    """One sentence: why ``method`` is (not) recommended."""
    status, value = sanity["status"], sanity["value"]
    if status == FAIL:
        return (f"fails the sanity check: similarity {value:.2f} after randomizing every layer "
                f"(threshold {SANITY_THRESHOLD}); never recommended, whatever its other ranks")
    if status == NOT_CHECKED:
        return f"the sanity check ({SANITY_METRIC}) was not computed for it, so it cannot be recommended"
    passes = f"passes the sanity check (similarity {value:.2f} < {SANITY_THRESHOLD})"
    if not np.isfinite(faith[method]):
        return f"{passes}, but no faithfulness metric was computed for it"
    faithful = f"faithfulness rank {_rank_text(faith_rank, method)}: {_medians_text(faith_medians, method)}"
    if method in recommended:
        others = [m for m in recommended if m != method]
        tie = f"; tied with {', '.join(others)}" if others else ""
        robust = f", robustness rank {_rank_text(robust_rank, method)}" if np.isfinite(robust_rank[method]) else ""
        return f"most faithful of the methods that pass the sanity check ({faithful}{robust}){tie}"
    best = recommended[0]
    if faith[method] != faith[best]:
        return f"{passes}, but is less faithful than {best} ({faithful})"
    if not np.isfinite(robust_rank[method]):
        return f"{passes} and ties {best} on faithfulness, but no robustness metric was computed for it"
    return (f"{passes} and ties {best} on faithfulness, but is less robust (robustness rank "
            f"{_rank_text(robust_rank, method)} against {_rank_text(robust_rank, best)})")


def _recommendation_text(recommended: Sequence[str], sanity: Mapping[str, Dict[str, Any]]) -> str:
    statuses = {s["status"] for s in sanity.values()}
    if recommended:
        return (f"Recommended: {', '.join(recommended)}: the most faithful of the methods that pass the sanity "
                f"check{', tied' if len(recommended) > 1 else ''}.")
    if statuses <= {NOT_CHECKED}:
        return (f"No recommendation: the sanity check ({SANITY_METRIC}) was not computed, so no method is "
                f"known to depend on the model's weights.")
    if PASS not in statuses:
        return (f"No recommendation: no method passes the sanity check (similarity after randomizing every "
                f"layer below {SANITY_THRESHOLD}).")
    known = ", ".join(m for m, axis in AXES.items() if axis == FAITHFULNESS)
    return (f"No recommendation: no faithfulness metric ({known}) was computed for the methods that pass "
            f"the sanity check.")


def _none_if_nan(x: float) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


def _rank_or_none(x: float) -> Optional[int]:
    return int(x) if np.isfinite(x) else None


def build_verdict(table: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str],
                  curves: Mapping[str, Mapping[str, np.ndarray]], higher_is_better: Mapping[str, bool],
                  not_applicable: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The verdict, JSON-ready.

    Args:
        table: one row per example x method: a ``method`` column and a float
            column per name in ``metrics`` (NaN: not computed).
        methods: the methods that ran, in report order (each in ``table``).
        metrics: the per-method metric columns of ``table``.
        curves: curve name -> method -> ``[n, K]``; the sanity check reads
            ``curves["randomization_spearman"]`` (K cascading steps, top layer first).
        higher_is_better: per metric, which way methods rank; needed for
            every metric of ``metrics`` on the faithfulness or robustness axis.
        not_applicable: method -> why it could not run on this model (not in ``methods``).

    Returns:
        ``sanity_check`` (metric, statistic, threshold, passes_when, computed),
        ``axes`` (axis -> the metrics of ``metrics`` ranked on it),
        ``unranked_metrics``, ``recommended`` (list of methods),
        ``recommendation`` (a sentence), ``methods`` (per method, the ones
        that ran then the not-applicable ones: ``applicable``, ``sanity``,
        ``sanity_value``, ``faithfulness_rank``/``_score``,
        ``robustness_rank``/``_score``, ``recommended``, ``reason``) and
        ``not_applicable`` (method -> reason).
    """
    not_applicable = dict(not_applicable or {})
    overlap = sorted(set(not_applicable) & set(methods))
    if overlap:
        raise ValueError(f"methods both ran and are not applicable: {', '.join(overlap)}")
    axes = {axis: [m for m in metrics if AXES.get(m) == axis] for axis in (FAITHFULNESS, ROBUSTNESS)}
    undirected = [m for ranked in axes.values() for m in ranked if m not in higher_is_better]
    if undirected:
        raise ValueError(f"no higher_is_better for the ranked metrics {', '.join(undirected)}")
    sanity_curves = curves.get(SANITY_METRIC, {})
    sanity = {m: sanity_result(sanity_curves.get(m)) for m in methods}
    faith_medians = method_medians(table, methods, axes[FAITHFULNESS])
    faith, faith_rank = axis_scores(faith_medians, higher_is_better)
    robust, robust_rank = axis_scores(method_medians(table, methods, axes[ROBUSTNESS]), higher_is_better)
    recommended = _recommended(methods, sanity, faith, robust)
    rows: Dict[str, Dict[str, Any]] = {}
    for m in methods:
        rows[m] = {
            "applicable": True, "sanity": sanity[m]["status"], "sanity_value": sanity[m]["value"],
            "sanity_n_examples": sanity[m]["n_examples"],
            "faithfulness_rank": _rank_or_none(faith_rank[m]), "faithfulness_score": _none_if_nan(faith[m]),
            "robustness_rank": _rank_or_none(robust_rank[m]), "robustness_score": _none_if_nan(robust[m]),
            "recommended": m in recommended,
            "reason": _method_reason(m, sanity[m], recommended, faith_medians, faith, faith_rank, robust_rank),
        }
    for m, why in not_applicable.items():
        rows[m] = {"applicable": False, "sanity": NOT_APPLICABLE, "sanity_value": None, "sanity_n_examples": 0,
                   "faithfulness_rank": None, "faithfulness_score": None, "robustness_rank": None,
                   "robustness_score": None, "recommended": False,
                   "reason": f"could not run on this model: {why}"}
    return {
        "sanity_check": {"metric": SANITY_METRIC, "statistic": SANITY_STATISTIC, "threshold": SANITY_THRESHOLD,
                         "passes_when": "|statistic| < threshold",
                         "computed": any(s["status"] != NOT_CHECKED for s in sanity.values())},
        "axes": axes,
        "unranked_metrics": [m for m in metrics if m not in AXES],
        "recommended": recommended,
        "recommendation": _recommendation_text(recommended, sanity),
        "methods": rows,
        "not_applicable": not_applicable,
    }
