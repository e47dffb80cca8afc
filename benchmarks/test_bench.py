"""pytest-benchmark view of the workloads in ``workloads.py``: one test per
(workload, implementation), grouped per workload, so each group's table shows
fastattr, Captum and the floor side by side (the "(x.xx)" multiples in the
table are relative to the fastest of the group, normally the floor).

    .venv/bin/python -m pytest benchmarks/test_bench.py --benchmark-only -q
    FASTATTR_BENCH_DEVICE=cuda FASTATTR_BENCH_RESNET=1 .venv/bin/python -m pytest benchmarks/test_bench.py --benchmark-only -q

Not part of the test suite (``pytest tests/``). ``benchmarks/run.py`` prints the
same comparison as one table with the ratios and targets.

``test_metrics_quick`` runs ``benchmarks/metrics.py --quick`` (every Quantus
class of ``metrics.py`` and the ``quantus_cases_<group>.py`` files on the small
conv nets, one repeat: a smoke run of a few minutes on 2 CPU cores) and checks
that every class printed a row with no error and no failed check.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

pytest.importorskip("pytest_benchmark")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as W  # noqa: E402

DEVICE = torch.device(os.environ.get("FASTATTR_BENCH_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("FASTATTR_BENCH_DEVICE=cuda but no GPU is visible", allow_module_level=True)

SPECS = W.standard_specs()
if os.environ.get("FASTATTR_BENCH_RESNET"):
    SPECS += W.resnet_specs(int(os.environ.get("FASTATTR_BENCH_RESNET_SIZE", 224 if DEVICE.type == "cuda" else 32)))

_benches: Dict[W.Spec, W.Bench] = {}
_checked: Dict[W.Spec, list] = {}


def _bench(spec: W.Spec) -> W.Bench:
    if spec not in _benches:
        _benches[spec] = W.build(spec, DEVICE)
    return _benches[spec]


@pytest.mark.parametrize("impl", W.IMPLEMENTATIONS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_bench(benchmark, spec: W.Spec, impl: str) -> None:
    bench = _bench(spec)
    if impl not in bench.calls:
        pytest.skip(f"{impl} is not installed")
    if spec not in _checked:  # once per workload, before any of its timings
        _checked[spec] = W.check(bench)
    assert not _checked[spec], f"{spec.name}: " + "; ".join(_checked[spec])
    benchmark.group = spec.name
    benchmark.extra_info.update(rows=spec.rows, backend=W.fastattr.backend(), device=str(DEVICE))
    fn = W.synced(bench.calls[impl], DEVICE)
    for _ in range(3):  # warm-up (fastattr's first call also measures the chunk size)
        fn()
    benchmark(fn)


def test_metrics_quick(benchmark, capsys) -> None:
    if DEVICE.type != "cpu":
        pytest.skip("benchmarks/metrics.py measures on the CPU")
    import metrics

    rc = benchmark.pedantic(metrics.main, args=(["--quick"],), rounds=1, iterations=1)
    out = capsys.readouterr().out
    cases, notes = metrics.load_cases(metrics.QUICK_SAMPLES)
    assert not notes, notes  # every group file imported
    assert len({c["name"] for c in cases}) == len(cases) == 37, sorted(c["name"] for c in cases)
    lines = out.splitlines()
    for model in metrics.QUICK_MODELS:
        for case in cases:
            row = [line for line in lines if line.startswith(f"{model}-{case['name']} ")]
            assert len(row) == 1, f"{model}-{case['name']}: {len(row)} rows\n{out}"
            assert "ERROR" not in row[0] and "CHECK FAILED" not in row[0], row[0]
            # a Quantus time, or the reason Quantus has none
            assert ("Quantus cannot run it" in row[0]) == (" n/a " in row[0]), row[0]
    assert rc == 0, out
