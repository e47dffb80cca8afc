"""Merging committed shards into the audit's outputs: the per-example table
(one row per example x method) as Parquet and CSV, and ``summary.json``
(per-method statistics of every metric, accuracies, configuration, versions)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np
import pandas as pd

from .config import AuditConfig
from .measures import Group
from .shards import Shard, atomic_write, load_shard


@dataclasses.dataclass
class Merged:
    table: pd.DataFrame  # one row per example x method
    curves: Dict[str, Dict[str, np.ndarray]]  # curve name -> method -> [n, K]
    summary: Dict[str, Any]


def _stats(values: np.ndarray) -> Dict[str, Any]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "median": None, "p5": None, "p95": None, "n": 0, "n_missing": int(values.size)}
    p5, median, p95 = np.percentile(finite, [5, 50, 95])
    return {"mean": float(finite.mean()), "median": float(median), "p5": float(p5), "p95": float(p95),
            "n": int(finite.size), "n_missing": int(values.size - finite.size)}


def merge(out: str, shards: Sequence[Shard], config: AuditConfig, run: Dict[str, Any],
          groups: Sequence[Group]) -> Merged:
    """Every shard's results, in data-set order."""
    parts = [load_shard(out, s) for s in shards]
    cat = {k: np.concatenate([p[k] for p in parts], axis=-2 if k.startswith("curve:") else -1)
           for k in parts[0]}
    methods = list(config.methods)
    n, m = len(cat["index"]), len(methods)
    table: Dict[str, Any] = {
        "index": np.repeat(cat["index"], m), "method": np.tile(np.array(methods, dtype=object), n),
        "label": np.repeat(cat["label"], m), "pred": np.repeat(cat["pred"], m),
    }
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
    ranking = {}
    for name in per_method_metrics:
        means = {meth: stats[meth][name]["mean"] for meth in methods}
        ranked = sorted((meth for meth in methods if means[meth] is not None),
                        key=lambda meth: -means[meth] if higher.get(name, False) else means[meth])
        ranking[name] = {"best_first": ranked, "higher_is_better": higher.get(name, False)}
    summary = {
        "n_examples": n, "seed": config.seed, "methods": stats, "ranking": ranking, "accuracy": accuracy,
        "model_metrics": {k[6:]: _stats(a) for k, a in cat.items() if k.startswith("model:")},
        "mean_curves": {name: {meth: np.nanmean(c, axis=0).tolist() for meth, c in per.items()}
                        for name, per in curves.items()},
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
