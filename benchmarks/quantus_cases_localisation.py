"""Benchmark cases of the localisation, complexity and axiomatic drop-ins
(issue 19): PointingGame, AttributionLocalisation, TopKIntersection,
RelevanceRankAccuracy, RelevanceMassAccuracy, AUC, Focus, Sparseness,
Complexity, EffectiveComplexity, Completeness, NonSensitivity and
InputInvariance, each constructed the same way for ``quantus.X`` and
``fastattr.quantus.X``.

Quantus 0.6's defaults but the warnings, except TopKIntersection's ``k``
(Quantus asserts ``k`` < the spatial size; its 1000 exceeds 8x8) and Focus's
``custom_batch`` (the target quadrants of each of the benchmark's 8 inputs,
read as 2x2 mosaics). Notes for the runner: NonSensitivity's
``features_in_step=1`` (the only value Quantus 0.6 runs on multi-channel
inputs) evaluates ``1 + C*H*W`` rows per example (12289 on 3x64x64);
InputInvariance shifts the first layer's bias, which ResNet-18's first
convolution lacks (both Quantus and fastattr refuse it).

Read by ``benchmarks/metrics.py``: ``cases()`` lists one dict per class.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

BATCH = 8
# Target quadrants (top-left, top-right, bottom-left, bottom-right) of each input.
_POSITIONS = [(1, 1, 0, 0), (0, 0, 1, 1), (1, 0, 1, 0), (0, 1, 0, 1),
              (1, 0, 0, 1), (0, 1, 1, 0), (1, 1, 0, 0), (0, 0, 1, 1)][:BATCH]


def cases() -> List[Dict[str, Any]]:
    """One case per class: ``name``, constructor kwargs ``init`` (both
    sides), extra call kwargs ``call``, whether the call needs ``s_batch`` /
    a precomputed ``a_batch``."""
    quiet = {"disable_warnings": True}

    def case(name: str, needs_s: bool, init: Optional[Dict[str, Any]] = None,
             call: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {"name": name, "init": {**quiet, **(init or {})}, "call": dict(call or {}), "needs_s": needs_s,
                "needs_a": False}

    return [
        case("PointingGame", True),
        case("AttributionLocalisation", True),
        case("TopKIntersection", True, dict(k=32)),
        case("RelevanceRankAccuracy", True),
        case("RelevanceMassAccuracy", True),
        case("AUC", True),
        case("Focus", False, call=dict(custom_batch=list(_POSITIONS))),
        case("Sparseness", False),
        case("Complexity", False),
        case("EffectiveComplexity", False),
        case("Completeness", False),
        case("NonSensitivity", False),
        case("InputInvariance", False),
    ]
