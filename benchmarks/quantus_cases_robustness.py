"""Benchmark cases of the robustness and randomisation drop-ins (issue 19):
Continuity, Consistency, the three relative stabilities, SmoothMPRT,
EfficientMPRT and RandomLogit, each constructed the same way for
``quantus.X`` and ``fastattr.quantus.X`` (Quantus 0.6's defaults but the
warnings, and RandomLogit's ``num_classes``, which must be the model's).

Read by ``benchmarks/metrics.py``: ``cases()`` lists one dict per class.
"""
from __future__ import annotations

from typing import Any, Dict, List

from workloads import N_CLASSES


def cases() -> List[Dict[str, Any]]:
    """One case per class: ``name``, constructor kwargs ``init`` (both
    sides), extra call kwargs ``call``, whether the call needs ``s_batch`` /
    a precomputed ``a_batch``."""
    quiet = {"disable_warnings": True}
    return [
        {"name": "Continuity", "init": dict(quiet), "call": {}, "needs_s": False, "needs_a": False},
        {"name": "Consistency", "init": dict(quiet), "call": {}, "needs_s": False, "needs_a": False},
        {"name": "RelativeInputStability", "init": dict(quiet), "call": {}, "needs_s": False, "needs_a": False},
        {"name": "RelativeOutputStability", "init": dict(quiet), "call": {}, "needs_s": False, "needs_a": False},
        {"name": "RelativeRepresentationStability", "init": dict(quiet), "call": {}, "needs_s": False,
         "needs_a": False},
        {"name": "SmoothMPRT", "init": dict(quiet), "call": {}, "needs_s": False, "needs_a": False},
        {"name": "EfficientMPRT", "init": dict(quiet), "call": {}, "needs_s": False, "needs_a": False},
        {"name": "RandomLogit", "init": dict(quiet, num_classes=N_CLASSES), "call": {}, "needs_s": False,
         "needs_a": False},
    ]
