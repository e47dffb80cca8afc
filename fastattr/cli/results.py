"""Merging committed shards into the audit's outputs: the per-example table
(one row per example x method) as Parquet and CSV, and ``summary.json``
(the verdict, per-method robust statistics of every metric, rankings by
median, accuracies, configuration, versions)."""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .config import AuditConfig
from .measures import Group
from .shards import Shard, atomic_write, load_shard
from .verdict import build_verdict


@dataclasses.dataclass
class Merged:
    """The merged audit: the per-example table, the curves and ``summary.json``'s content."""

    table: pd.DataFrame  # one row per example x method
    curves: Dict[str, Dict[str, np.ndarray]]  # curve name -> method -> [n, K]
    summary: Dict[str, Any]


_STAT_NAMES = ("median", "p25", "p75", "p5", "p95", "mean")
# log_scale: a metric's finite values span more than this ratio between p5 and p95
LOG_SPAN = 100.0


def _stats(values: np.ndarray) -> Dict[str, Any]:
    """Robust statistics of the finite ``values`` ``[n]``: median, quartiles
    (p25, p75), p5, p95, mean, ``n`` finite and ``n_missing`` (NaN or inf)."""
    finite = values[np.isfinite(values)]
    counts = {"n": int(finite.size), "n_missing": int(values.size - finite.size)}
    if finite.size == 0:
        return {**{k: None for k in _STAT_NAMES}, **counts}
    p5, p25, median, p75, p95 = np.percentile(finite, [5, 25, 50, 75, 95])
    return {"median": float(median), "p25": float(p25), "p75": float(p75), "p5": float(p5), "p95": float(p95),
            "mean": float(finite.mean()), **counts}


def log_scale(values: np.ndarray) -> bool:
    """Whether ``values`` (any shape) are best shown on a log axis: every finite
    value > 0 and p95 / p5 > ``LOG_SPAN``."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.min() <= 0:
        return False
    p5, p95 = np.percentile(finite, [5, 95])
    return bool(p95 / p5 > LOG_SPAN)


def _ranking(stats: Dict[str, Dict[str, Dict[str, Any]]], methods: Sequence[str], metric: str,
             higher_is_better: bool) -> Dict[str, Any]:
    """The methods with a median of ``metric``, best median first (ties in ``methods`` order)."""
    medians = {m: stats[m][metric]["median"] for m in methods}
    ranked = sorted((m for m in methods if medians[m] is not None),
                    key=lambda m: -medians[m] if higher_is_better else medians[m])
    return {"best_first": ranked, "higher_is_better": higher_is_better, "by": "median"}


def _finite_list(a: np.ndarray) -> List[Optional[float]]:
    """JSON has no NaN: a step with no finite value is null."""
    return [float(v) if np.isfinite(v) else None for v in a]


def _curve_summaries(curves: Dict[str, Dict[str, np.ndarray]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(mean_curves, curve_quantiles)``: per curve and method, the mean
    ``[K]`` and the p25 / median / p75 ``[K]`` over examples of each step."""
    means: Dict[str, Any] = {}
    quantiles: Dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every example is NaN: null
        for name, per in curves.items():
            means[name] = {m: _finite_list(np.nanmean(c, axis=0)) for m, c in per.items()}
            quantiles[name] = {}
            for m, c in per.items():
                p25, median, p75 = np.nanpercentile(c, [25, 50, 75], axis=0)
                quantiles[name][m] = {"p25": _finite_list(p25), "median": _finite_list(median),
                                      "p75": _finite_list(p75)}
    return means, quantiles


def merge(out: str, shards: Sequence[Shard], config: AuditConfig, run: Dict[str, Any],
          groups: Sequence[Group], not_applicable: Optional[Mapping[str, str]] = None) -> Merged:
    """Every shard's results, in data-set order, with the statistics and the verdict.

    ``not_applicable``: method -> why it could not run on this model. The
    shards hold ``[M, ...]`` rows for the methods of the run record
    (``run["fingerprinted"]["methods"]``) less the not-applicable ones, in
    that order. Only ``config.seed`` is read from ``config``."""
    not_applicable = dict(not_applicable or {})
    parts = [load_shard(out, s) for s in shards]
    cat = {k: np.concatenate([p[k] for p in parts], axis=-2 if k.startswith("curve:") else -1)
           for k in parts[0]}
    methods = [m for m in run["fingerprinted"]["methods"] if m not in not_applicable]
    n, m = len(cat["index"]), len(methods)
    for k, a in cat.items():
        if k.startswith(("method:", "curve:")) and a.shape[0] != m:
            raise ValueError(f"{k} has rows for {a.shape[0]} methods, expected {m} ({', '.join(methods)}: "
                             f"the run's methods less the not-applicable ones)")
    table: Dict[str, Any] = {"index": np.repeat(cat["index"], m),
                             "method": np.tile(np.array(methods, dtype=object), n)}
    for k, a in cat.items():  # the example's own columns (label, pred, source_index, ...): one per method row
        if ":" not in k and k != "index":
            table[k] = np.repeat(a, m)
    table["correct"] = table["label"] == table["pred"]
    for k, a in cat.items():
        if k.startswith("model:"):
            table[k[6:]] = np.repeat(a, m)
        elif k.startswith("method:"):
            table[k[7:]] = a.T.reshape(-1)  # [M, n] -> example-major rows
    frame = pd.DataFrame(table)
    curves: Dict[str, Dict[str, np.ndarray]] = {}
    for k, a in cat.items():
        if k.startswith("curve:"):
            curves[k[6:]] = {meth: a[i] for i, meth in enumerate(methods)}

    higher = {name: h for g in groups for name, h in g.higher_is_better.items()}
    per_method_metrics = [k[7:] for k in cat if k.startswith("method:")]
    accuracy = {"clean": float((cat["label"] == cat["pred"]).mean())}
    for k, a in cat.items():
        if k.startswith("model:") and k.endswith("_accuracy"):
            accuracy[k[6:-len("_accuracy")]] = float(a.mean())
    stats = {meth: {name: _stats(cat["method:" + name][i]) for name in per_method_metrics}
             for i, meth in enumerate(methods)}
    mean_curves, curve_quantiles = _curve_summaries(curves)
    summary = {
        "n_examples": n, "seed": config.seed, "methods": stats, "accuracy": accuracy,
        "ranking": {name: _ranking(stats, methods, name, higher.get(name, False)) for name in per_method_metrics},
        "log_scale": {name: log_scale(cat["method:" + name]) for name in per_method_metrics},
        "verdict": build_verdict(frame, methods, per_method_metrics, curves, higher, not_applicable),
        "model_metrics": {k[6:]: _stats(a) for k, a in cat.items() if k.startswith("model:")},
        "mean_curves": mean_curves, "curve_quantiles": curve_quantiles,
        "fingerprint": run["fingerprint"], "configuration": run["fingerprinted"],
        "command": run["command"], "versions": run["versions"],
    }
    return Merged(frame, curves, summary)


def write_tables(out: str, merged: Merged) -> None:
    """``results.parquet``, ``results.csv`` and ``summary.json``, each written atomically."""
    atomic_write(os.path.join(out, "results.parquet"), lambda f: merged.table.to_parquet(f, index=False))
    atomic_write(os.path.join(out, "results.csv"), lambda f: merged.table.to_csv(f, index=False))
    atomic_write(os.path.join(out, "summary.json"),
                 lambda f: f.write(json.dumps(merged.summary, indent=2, sort_keys=True).encode()))


def selected_examples(merged: Merged, method: str, metric: str, higher_is_better: bool) -> List[Dict[str, Any]]:
    """The best, typical (nearest the median) and worst example of ``method`` by ``metric``."""
    rows = merged.table[(merged.table["method"] == method) & np.isfinite(merged.table[metric])]
    if rows.empty:
        return []
    order = rows.sort_values(metric, ascending=not higher_is_better, kind="stable")
    median = rows[metric].median()
    typical = rows.iloc[int(np.argmin(np.abs(rows[metric].to_numpy() - median)))]
    picks = [("best", order.iloc[0]), ("typical", typical), ("worst", order.iloc[-1])]
    return [{"kind": kind, "index": int(r["index"]), "value": float(r[metric]), "label": int(r["label"]),
             "pred": int(r["pred"])} for kind, r in picks]
