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

The ``forms`` tests check the model forms' part of ``run.py`` (``forms.py``):
``run.py --quick`` with its default forms (``eager,fast``, never a compile)
on a conv net and the MLP, the forms' checks passing on sound forms and
catching a changed model or result, and the compiled form's report.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

pytest.importorskip("pytest_benchmark")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forms as F  # noqa: E402
import run  # noqa: E402
import workloads as W  # noqa: E402
from fastattr.engine.model_form import ModelForm  # noqa: E402

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


# ---- the model forms (forms.py, run.py --forms) ---------------------------------------


def _form_bench(spec: W.Spec, forms) -> "tuple[W.Bench, F.FormCalls]":
    bench = W.build(spec, "cpu")
    return bench, run.add_forms(bench, forms, None)


def test_parse_forms() -> None:
    assert F.parse_forms("eager,fast") == ("eager", "fast")
    assert F.parse_forms("") == ()
    for bad in ("eager,slow", "fast,fast"):
        with pytest.raises(ValueError, match="--forms"):
            F.parse_forms(bad)


def test_run_quick_prints_and_writes_the_forms(tmp_path, capsys) -> None:
    """run.py --quick (default forms eager,fast) on a conv net, where the fast
    form applies, and the MLP, where it does not: ratios of the eager floor
    on a line under each workload and in the JSON, the MLP's fast form not
    timed but explained."""
    out = tmp_path / "bench.json"
    rc = run.main(["--quick", "--only", "^(conv|mlp)-b1-ig50$", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    results = {r["workload"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"conv-b1-ig50", "mlp-b1-ig50"}
    conv, mlp = results["conv-b1-ig50"]["forms"], results["mlp-b1-ig50"]["forms"]
    assert set(conv["over_eager_floor"]) == {"fastattr[eager]", "floor[fast]", "fastattr[fast]"}
    assert set(mlp["over_eager_floor"]) == {"fastattr[eager]"}
    for forms in (conv, mlp):
        assert all(0 < r < float("inf") for r in forms["over_eager_floor"].values()), forms
        assert not forms["problems"]
    assert set(conv["first_calls_s"]) == {"eager", "fast"} and set(mlp["first_calls_s"]) == {"eager"}
    assert not conv["notes"]
    assert len(mlp["notes"]) == 1 and mlp["notes"][0].startswith(f"fast: not timed, {F.NO_REWRITE}")
    lines = text.splitlines()
    for name in results:
        row = next(i for i, line in enumerate(lines) if line.startswith(name + " "))
        assert lines[row + 1].startswith("    of the eager floor: fastattr[eager] "), lines[row + 1]
        if name.startswith("mlp"):
            assert lines[row + 1].endswith("eager is the fast form here"), lines[row + 1]


def test_check_forms_passes_and_catches_a_changed_model(monkeypatch) -> None:
    bench, found = _form_bench(W.Spec("conv", 1, "ig"), ("eager", "fast"))
    assert not found.problems and not found.notes
    assert run.check_forms(bench) == []
    # A "fast" model that computes another function (a weight 1% off): both
    # its gradients and fastattr's result against it by hand are caught.
    broken = copy.deepcopy(bench.model)
    with torch.no_grad():
        broken[0].weight.mul_(1.01)
    real = F.model_in_form
    monkeypatch.setattr(F, "model_in_form", lambda model, form, inputs: (
        ModelForm(broken, form, form) if form == "fast" else real(model, form, inputs)))
    problems = run.check_forms(bench)
    assert len(problems) == 2, problems
    assert problems[0].startswith("the fast model's gradients != eager's")
    assert problems[1].startswith("fastattr[fast] != the same by hand")


def test_check_forms_catches_a_result_off_by_more_than_the_tolerance() -> None:
    bench, _ = _form_bench(W.Spec("conv", 1, "smoothgrad"), ("fast",))
    tol = W.tolerance(bench)
    right = bench.calls["fastattr[fast]"]
    bench.calls["fastattr[fast]"] = lambda: right() * (1 + 4 * tol)
    (problem,) = run.check_forms(bench)
    assert problem.startswith("fastattr[fast] != the same by hand")
    bench.calls["fastattr[fast]"] = lambda: right() * (1 + tol / 4)
    assert run.check_forms(bench) == []


def test_check_forms_takes_branch_flips_for_rounding() -> None:
    """ResNet rows where a ReLU input or max-pool tie lies within rounding take
    the other branch in the fast form (as eager float32 does against
    float64): not a changed function."""
    bench, found = _form_bench(W.Spec("resnet18", 8, "smoothgrad", 32), ("eager", "fast"))
    assert not found.problems
    assert run.check_forms(bench) == []


def test_compiled_form_reports_its_first_calls_or_why_not() -> None:
    bench, found = _form_bench(W.Spec("mlp", 1, "ig"), ("compiled",))
    if found.problems:  # torch.compile cannot run here (no C++ compiler...): said, and not timed
        assert found.problems[0].startswith("compiled form did not apply: torch.compile failed"), found.problems
        assert "fastattr[compiled]" not in bench.calls
        return
    assert "fastattr[compiled]" in bench.calls and set(found.first_calls_s) == {"compiled"}
    assert run.check_forms(bench) == []
    line = F.ratios_line({"floor": [1.0], "fastattr[compiled]": [0.5]}, found)
    assert "fastattr[compiled] 500.000 ms = 0.500" in line and "compiled: first two calls" in line


def test_compiled_only_leaves_other_workloads_uncompiled() -> None:
    bench = W.build(W.Spec("mlp", 1, "smoothgrad"), "cpu")
    found = run.add_forms(bench, ("eager", "compiled"), "resnet")
    assert "fastattr[compiled]" not in bench.calls and "fastattr[eager]" in bench.calls
    assert found.notes == ["compiled: not timed on this workload (--compiled-only 'resnet')"]
