"""The faithfulness group's Quantus classes for ``benchmarks/metrics.py``:
constructor and call arguments used for both ``quantus.X`` and
``fastattr.quantus.X``.

Quantus's defaults, except what must shrink for the benchmark's inputs
(1x8x8, 3x32x32, 3x64x64: every step size divides the spatial size 64, and
the subset size is below it) or to keep the rows a CPU can run in a
benchmark: ``features_in_step`` (Quantus's 1 means one row per input element
per example, 12288 on ResNet-18 at 64x64) and MonotonicityCorrelation's
``nr_samples`` (100 rows per step).
"""
from __future__ import annotations

from typing import Any, Dict, List

_QUIET = dict(disable_warnings=True)


def cases() -> List[Dict[str, Any]]:
    """One dict per class: ``name``, ``init``, ``call``, ``needs_s``, ``needs_a``."""
    rows = [
        ("FaithfulnessCorrelation", dict(nr_runs=100, subset_size=32)),
        ("FaithfulnessEstimate", dict(features_in_step=32)),
        ("Monotonicity", dict(features_in_step=32)),
        ("MonotonicityCorrelation", dict(features_in_step=32, nr_samples=5)),
        ("SensitivityN", dict(features_in_step=32)),
        ("RegionPerturbation", dict(patch_size=8, regions_evaluation=100)),
        ("Selectivity", dict(patch_size=8)),
        ("Sufficiency", dict()),
    ]
    return [dict(name=name, init={**init, **_QUIET}, call={}, needs_s=False, needs_a=False) for name, init in rows]
