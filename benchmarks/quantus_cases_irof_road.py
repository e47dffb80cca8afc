"""Benchmark cases of the IROF and ROAD drop-ins (issue 19), each constructed
the same way for ``quantus.X`` and ``fastattr.quantus.X``: Quantus 0.6's
defaults but the warnings (IROF: SLIC with 100 segments, the ``"mean"``
fill, ``softmax=True``; ROAD: percentages ``1, 3, .., 99``, noise 0.01).

Notes for the runner:

* Quantus 0.6's IROF calls ``np.trapz``, which NumPy 2.4 removed: set
  ``np.trapz = np.trapezoid`` before calling it.
* Quantus 0.6 runs both only on one-channel images (IROF asserts on its
  one-channel mask, ROAD indexes pixels with indices over channels: an
  ``IndexError``); fastattr runs them on any channel count, ROAD with one
  attribution per pixel (an explanation that differs between channels is
  refused: reduce it over the channels first).
* Rows evaluated: IROF ``B * (K + 1)`` (``K`` the most SLIC segments of an
  example, the clean row included), ROAD ``B * 50`` plus a conjugate-gradient
  imputation per row.

Read by ``benchmarks/metrics.py``: ``cases()`` lists one dict per class.
"""
from __future__ import annotations

from typing import Any, Dict, List


def cases() -> List[Dict[str, Any]]:
    """One dict per class: ``name``, ``init``, ``call``, ``needs_s``, ``needs_a``."""
    return [dict(name=name, init=dict(disable_warnings=True), call={}, needs_s=False, needs_a=False)
            for name in ("IROF", "ROAD")]
