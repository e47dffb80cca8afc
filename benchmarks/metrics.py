"""Robustness metrics: fastattr vs Quantus vs Captum vs the floor, from one run.

    python benchmarks/metrics.py                 # every metric x {conv 1x8x8, conv 3x32x32, resnet18@64}
    python benchmarks/metrics.py --only conv1    # a subset (regex on the workload name)
    python benchmarks/metrics.py --quick         # smoke run: 20 samples, one repeat

Each workload explains 8 examples with saliency and scores them at the
anchors' defaults (Quantus 0.6: 200 samples, radius 0.2, patch 4 and a black
baseline for Infidelity):

* **fastattr**: ``fastattr.quantus.X(...)(model=, x_batch=, y_batch=,
  explain_func=fastattr.saliency)`` -- the drop-in class with fastattr's
  explainer, so all perturbed copies run as one engine plan.
* **quantus**: ``quantus.X(...)(..., explain_func=quantus.explain,
  explain_func_kwargs={"method": "Saliency"})``, Quantus's own way.
* **captum** (the ``...-captum`` rows): ``captum.metrics.sensitivity_max``
  and ``captum.metrics.infidelity`` (Gaussian perturbations, 10 samples)
  against fastattr's drop-ins ``fastattr.captum.metrics.sensitivity_max`` /
  ``infidelity`` called the same way with ``fastattr.captum.Saliency``.
* **floor**: the rows fastattr's call evaluates, recorded with their
  values (``workloads.record_rows``), then run bare:
  one forward + backward over the rows that need a gradient and one
  no-grad forward over the rest (a perturbed row needs a gradient for an
  explanation, a forward only for a model output). The rows fastattr runs
  are checked against the fewest the metric needs.

**qu/floor** is Quantus's time over the floor's: the most any implementation
that evaluates the metric's rows can be faster than Quantus; where it is below
the target, the speed-up target cannot be met on this machine.

Targets (2-core CPU): fastattr >= 10x Quantus on MaxSensitivity,
AvgSensitivity and LocalLipschitzEstimate, >= 50x on Infidelity;
fastattr/floor <= 1.15 on every row.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402
import workloads as W  # noqa: E402

import fastattr  # noqa: E402
import fastattr.captum as fc  # noqa: E402
import fastattr.captum.metrics as fcm  # noqa: E402
import fastattr.quantus as fq  # noqa: E402

try:
    import quantus
    import captum.metrics as cm
    from captum.attr import Saliency
except ImportError:  # pragma: no cover
    quantus = None

BATCH = 8
SAMPLES = 200  # Quantus's nr_samples
RADIUS = 0.2  # Quantus's lower_bound
PATCH = 4  # Quantus Infidelity's default patch size
INFIDELITY_SAMPLES = 10
METRICS = ("MaxSensitivity", "AvgSensitivity", "LocalLipschitzEstimate", "Infidelity")
CAPTUM_METRICS = {"MaxSensitivity": "sensitivity_max", "Infidelity": "infidelity"}
SPEEDUP = {"MaxSensitivity": 10.0, "AvgSensitivity": 10.0, "LocalLipschitzEstimate": 10.0, "Infidelity": 50.0}
FLOOR_RATIO = 1.15


def _conv(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, W.N_CLASSES),
    )


# name -> (model constructor, input shape)
MODELS: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...]]] = {
    "conv1x8x8": (lambda: _conv(1), (1, 8, 8)),
    "conv3x32x32": (lambda: _conv(3), (3, 32, 32)),
    "resnet18@64": (lambda: W.ResNet18(W.N_CLASSES), (3, 64, 64)),
}


@dataclass(frozen=True)
class MetricSpec:
    model: str
    metric: str
    api: str = "quantus"  # whose API both sides are called through: "quantus" or "captum"

    @property
    def name(self) -> str:
        return f"{self.model}-{self.metric if self.api == 'quantus' else CAPTUM_METRICS[self.metric] + '-captum'}"


def _kwargs(metric: str, samples: int) -> Dict[str, Any]:
    """The metric's constructor arguments: Quantus's defaults, spelled out."""
    if metric == "Infidelity":
        return dict(n_perturb_samples=INFIDELITY_SAMPLES, perturb_patch_sizes=[PATCH], perturb_baseline="black",
                    disable_warnings=True)
    if metric == "LocalLipschitzEstimate":
        return dict(nr_samples=samples, perturb_std=0.1, disable_warnings=True)
    return dict(nr_samples=samples, lower_bound=RADIUS, disable_warnings=True)


def _expected_rows(spec: MetricSpec, shape: Tuple[int, ...], samples: int) -> Tuple[int, int]:
    """(rows needing a gradient, forward-only rows): the fewest the metric needs."""
    if spec.api == "captum":
        if spec.metric == "Infidelity":  # attributions given; the clean output and each perturbation
            return 0, BATCH * (INFIDELITY_SAMPLES + 1)
        return BATCH * (samples + 1), 0
    if spec.metric == "Infidelity":
        patches = (shape[-1] // PATCH) * (shape[-2] // PATCH)
        # the explanation; the clean output and one output per cumulative patch
        # replacement (a fixed black baseline: the same for every sample)
        return BATCH, BATCH * (patches + 1)
    return BATCH * (samples + 1), 0  # the clean explanation and one per perturbation


@dataclass
class Bench:
    spec: MetricSpec
    device: torch.device
    model: nn.Module
    calls: Dict[str, Callable[[], Any]]
    rows: Tuple[int, int]  # counted (grad, forward-only) rows of fastattr's call
    expected: Tuple[int, int]


def build(spec: MetricSpec, samples: int) -> Bench:
    ctor, shape = MODELS[spec.model]
    torch.manual_seed(W.SEED)
    model = ctor().eval()
    g = torch.Generator().manual_seed(W.SEED + 1)
    x = torch.rand((BATCH, *shape), generator=g)
    y = (torch.arange(BATCH) * 3 + 1) % W.N_CLASSES
    calls = _quantus_calls(spec, model, x, y, samples) if spec.api == "quantus" else _captum_calls(
        spec, model, x, y, samples)
    # The floor runs fastattr's own rows, values included.
    _, g_rows, f_rows = W.record_rows(model, calls["fastattr"])
    grad_rows, fwd_rows = W.row_count(g_rows), W.row_count(f_rows)
    if g_rows is not None:
        g_rows.requires_grad_()
    onehot = torch.nn.functional.one_hot(y.repeat_interleave(-(-grad_rows // BATCH))[:grad_rows], W.N_CLASSES).float()

    def floor() -> Any:
        if grad_rows:
            torch.autograd.grad(model(g_rows), g_rows, grad_outputs=onehot)
        if f_rows is not None:
            with torch.no_grad():
                model(f_rows)

    calls["floor"] = floor
    return Bench(spec, torch.device("cpu"), model, calls, (grad_rows, fwd_rows),
                 _expected_rows(spec, shape, samples))


def _quantus_calls(spec: MetricSpec, model: nn.Module, x: Tensor, y: Tensor,
                   samples: int) -> Dict[str, Callable[[], Any]]:
    """fastattr's drop-in class with fastattr's explainer; Quantus's class with ``quantus.explain``."""
    kwargs = _kwargs(spec.metric, samples)
    ours = getattr(fq, spec.metric)(**kwargs)
    calls: Dict[str, Callable[[], Any]] = {
        "fastattr": lambda: ours(model=model, x_batch=x, y_batch=y, explain_func=fastattr.saliency, device="cpu"),
    }
    if quantus is not None:
        theirs = getattr(quantus, spec.metric)(**kwargs)
        x_np, y_np = x.numpy(), y.numpy()
        calls["quantus"] = lambda: theirs(model=model, x_batch=x_np, y_batch=y_np, explain_func=quantus.explain,
                                          explain_func_kwargs={"method": "Saliency"}, device="cpu")
    return calls


def _captum_calls(spec: MetricSpec, model: nn.Module, x: Tensor, y: Tensor,
                  samples: int) -> Dict[str, Callable[[], Any]]:
    """The same captum.metrics call through fastattr's drop-in and through Captum."""
    calls: Dict[str, Callable[[], Any]] = {}
    for who, metrics, saliency in (("fastattr", fcm, fc.Saliency(model)), ("captum", cm, Saliency(model))):
        if spec.metric == "MaxSensitivity":
            calls[who] = (lambda m=metrics, s=saliency: m.sensitivity_max(
                s.attribute, x, target=y, perturb_radius=RADIUS, n_perturb_samples=samples))
        else:
            attributions = saliency.attribute(x, target=y)
            calls[who] = (lambda m=metrics, a=attributions: m.infidelity(
                model, _gaussian_perturbation, x, a, target=y, n_perturb_samples=INFIDELITY_SAMPLES))
    return calls


def _gaussian_perturbation(inputs: Tensor) -> Tuple[Tensor, Tensor]:
    """Captum's documented infidelity perturbation: ``I ~ N(0, 0.1^2)``, rows ``x - I``."""
    noise = torch.randn_like(inputs) * 0.1
    return noise, inputs - noise


def verdict(spec: MetricSpec, floor_ms: float, fa_ms: float, qu_ms: float) -> str:
    misses = []
    if fa_ms / floor_ms > FLOOR_RATIO:
        misses.append(f"fa/floor>{FLOOR_RATIO}")
    if spec.api == "quantus" and not math.isnan(qu_ms) and qu_ms / fa_ms < SPEEDUP[spec.metric]:
        misses.append(f"quantus/fa<{SPEEDUP[spec.metric]:g}")
    return "yes" if not misses else "NO (" + ", ".join(misses) + ")"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help="regex on the workload name")
    p.add_argument("--quick", action="store_true", help=f"smoke run: 20 samples instead of {SAMPLES}, one repeat")
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    samples = 20 if args.quick else SAMPLES
    repeats = args.repeats or (1 if args.quick else 3)
    specs = [MetricSpec(m, k) for m in MODELS for k in METRICS]
    specs += [MetricSpec(m, k, "captum") for m in MODELS for k in CAPTUM_METRICS]
    specs = [s for s in specs if not args.only or re.search(args.only, s.name)]
    print(W.environment(torch.device("cpu")) + f" | quantus {getattr(quantus, '__version__', 'NOT INSTALLED')}")
    print(W.steady_heap())
    print(f"{BATCH} examples, saliency; {samples} samples (Infidelity: {INFIDELITY_SAMPLES}, patch {PATCH}, black); "
          f"best of {repeats} interleaved repeats\n")
    header = (f"{'workload':<36} {'rows grad+fwd':>14} {'floor ms':>10} {'fastattr ms':>12} {'quantus ms':>11} "
              f"{'captum ms':>10} {'fa/floor':>9} {'qu/fa':>7} {'qu/floor':>9} {'ca/fa':>7}  target met")
    print(header)
    print("-" * len(header))
    load = R.OtherLoad()
    failed = missed = 0
    for spec in specs:
        try:
            bench = build(spec, samples)
            times = R.measure(bench, repeats, 0 if args.quick else 1, 0.0, 0.0)
        except Exception as exc:  # one broken workload must not hide the rest
            print(f"{spec.name:<36} ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)
            failed += 1
            continue
        ms = {n: min(times[n]) * 1000 if n in times else math.nan for n in ("floor", "fastattr", "quantus", "captum")}
        met = verdict(spec, ms["floor"], ms["fastattr"], ms["quantus"])
        if bench.rows != bench.expected:
            met = f"CHECK FAILED: fastattr ran {bench.rows} rows, the metric needs {bench.expected}"
            failed += 1
        missed += met.startswith("NO")
        rows = f"{bench.rows[0]}+{bench.rows[1]}"
        print(f"{spec.name:<36} {rows:>14} {ms['floor']:>10.1f} {ms['fastattr']:>12.1f} {ms['quantus']:>11.1f} "
              f"{ms['captum']:>10.1f} {ms['fastattr'] / ms['floor']:>9.3f} {ms['quantus'] / ms['fastattr']:>7.1f} "
              f"{ms['quantus'] / ms['floor']:>9.1f} {ms['captum'] / ms['fastattr']:>7.2f}  {met}", flush=True)
    print(load.report())
    print(f"targets missed: {missed}; checks failed or errors: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
