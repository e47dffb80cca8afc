"""Every Quantus metric class: fastattr's drop-in vs Quantus 0.6 vs the floor, from one run.

    python benchmarks/metrics.py                        # every class x {conv1x8x8, conv3x32x32, resnet18@64}
    python benchmarks/metrics.py --huge                 # ... and the two ResNet rows too big for a CPU run
    python benchmarks/metrics.py --only 'conv1.*IROF'   # a subset (regex on "<workload>-<class>")
    python benchmarks/metrics.py --quick                # smoke run: every class once, on the small conv nets
    python benchmarks/metrics.py --threads 1 ...        # on a shared machine (2-thread OpenMP stalls)

The classes are those of ``fastattr.quantus`` that this file lists itself
(the sensitivities, Infidelity, PixelFlipping, MPRT) and every class of the
``quantus_cases_<group>.py`` files beside it (``cases()``: one dict per class,
``name``, constructor kwargs ``init``, call kwargs ``call``, and whether the
call needs masks ``s_batch`` / a precomputed ``a_batch``); a group file that
does not import is named in the output and left out. Each class explains 8
examples (smooth random images: blurred noise, so SLIC finds superpixels)
with saliency:

* **fastattr**: ``fastattr.quantus.X(**init)(model=, x_batch=, y_batch=,
  explain_func=fastattr.saliency, **call)``: the drop-in with fastattr's
  explainer, so the rows run as engine plans.
* **quantus**: ``quantus.X(**init)(..., explain_func=quantus.explain,
  explain_func_kwargs={"method": "Saliency"}, **call)`` on numpy arrays.
  Where Quantus cannot run a class on a workload (IROF and ROAD on 3-channel
  images), the row says why (Quantus's own exception) in place of its time.
  ROAD ranks pixels: on 3 channels both sides get saliency summed over them.
* **floor**: the rows fastattr's call evaluated, recorded with their values
  and the weights they ran on (``workloads.record_rows_by_model``: the randomization
  tests' randomized copies, frozen as they ran), then run bare: forward +
  backward over the rows that needed a gradient and a no-grad forward over
  the rest, each on its weights, in chunks of the largest call fastattr made
  (so the floor holds no more memory than fastattr did). It leaves out
  everything that is not the model: SLIC, ROAD's imputation, the
  reductions, weight randomisation itself.
* the ``-captum`` rows (a second table): ``captum.metrics.sensitivity_max``
  and ``infidelity`` against ``fastattr.captum.metrics``, called the same way.

Columns: **calls** = forward calls of the model by fastattr / by Quantus
(counted by a hook on the model, so copies the metric makes count too);
**rows** = the rows those calls ran (fastattr, Quantus); the best time of
several interleaved repeats of each; **fa/floor** = the ratio of the best
times; **qu/fa** = the median over repeats of Quantus/fastattr within a
repeat (adjacent calls: a paired ratio that slow drifts do not skew);
**qu/floor** = the most any implementation of the same rows can gain over
Quantus.

Targets (issue 19, the 2-core CPU): fastattr/floor <= 1.15 where the floor
takes >= 10 ms, never slower than Quantus (qu/fa >= 1), ROAD >= 5x Quantus on
the small conv nets. A miss reads ``NO (...)``; fastattr running more rows
than Quantus is flagged too. fastattr raising (but where ``NOT_APPLICABLE``
says why both sides refuse), a result of another form than Quantus's, or
rows that differ from the fewest the metric needs (the sensitivities and
Infidelity) read ``ERROR`` / ``CHECK FAILED`` and make the script exit 1.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
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

if not hasattr(np, "trapz"):  # Quantus 0.6 (IROF, AUC) calls np.trapz, which NumPy 2.4 removed
    np.trapz = np.trapezoid

BATCH = 8
SAMPLES = 200  # Quantus's nr_samples (sensitivities, Lipschitz)
QUICK_SAMPLES = 20
RADIUS = 0.2  # Quantus's lower_bound
PATCH = 4  # Quantus Infidelity's default patch size
INFIDELITY_SAMPLES = 10
FEATURES_IN_STEP = 32  # PixelFlipping (Quantus's 1 is one row per input element: 12288 per example at 3x64x64)
CASE_GROUPS = ("faithfulness", "localisation", "irof_road", "robustness")  # quantus_cases_<group>.py
CAPTUM_METRICS = {"MaxSensitivity": "sensitivity_max", "Infidelity": "infidelity"}
FLOOR_RATIO, FLOOR_MIN_MS = 1.15, 10.0  # fastattr/floor target, where the floor takes >= 10 ms
ROAD_SPEEDUP = 5.0  # over Quantus, on the small conv nets
QUICK_MODELS = ("conv1x8x8", "conv3x32x32")
# Left out unless --huge: (workload, class) -> why.
HUGE = {("resnet18@64", "NonSensitivity"): "features_in_step=1 (the only value Quantus runs on 3 channels): "
        "1 + 3*64*64 = 12289 forward rows per example, 98 k per call: minutes per call on a CPU",
        ("resnet18@64", "SmoothMPRT"): "50 noisy copies x 8 examples x 41 layers with parameters = 16 k "
        "forward+backward rows per call: minutes per call on a CPU"}
# Classes that neither Quantus nor fastattr can run on a workload: (workload, class) -> why.
NOT_APPLICABLE = {("resnet18@64", "InputInvariance"): "it shifts the first layer's bias, and ResNet-18's "
                  "first convolution has none"}


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


# ---------------------------------------------------------------------------
# the classes
# ---------------------------------------------------------------------------


def _case(name: str, **init: Any) -> Dict[str, Any]:
    return dict(name=name, init={**init, "disable_warnings": True}, call={}, needs_s=False, needs_a=False)


def own_cases(samples: int) -> List[Dict[str, Any]]:
    """The classes no ``quantus_cases_<group>.py`` lists, at Quantus's
    defaults (200 samples, radius 0.2; Infidelity patch 4, black baseline)
    but ``samples`` and PixelFlipping's ``features_in_step``."""
    return [
        _case("MaxSensitivity", nr_samples=samples, lower_bound=RADIUS),
        _case("AvgSensitivity", nr_samples=samples, lower_bound=RADIUS),
        _case("LocalLipschitzEstimate", nr_samples=samples, perturb_std=0.1),
        _case("Infidelity", n_perturb_samples=INFIDELITY_SAMPLES, perturb_patch_sizes=[PATCH],
              perturb_baseline="black"),
        _case("PixelFlipping", features_in_step=FEATURES_IN_STEP),
        _case("MPRT"),
    ]


def load_cases(samples: int) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Every class to run (this file's, then each group file's), and a note
    per group file that did not import."""
    cases, notes = own_cases(samples), []
    for group in CASE_GROUPS:
        try:
            cases += importlib.import_module(f"quantus_cases_{group}").cases()
        except Exception as exc:  # a group still being written must not stop the others
            notes.append(f"quantus_cases_{group}.py left out: {type(exc).__name__}: {_first_line(exc)}")
    return cases, notes


def quick_case(case: Dict[str, Any]) -> Dict[str, Any]:
    """``case`` with ``nr_samples=QUICK_SAMPLES`` where its class takes
    ``nr_samples`` and the case leaves it at Quantus's default (200 for the
    relative stabilities, 50 for SmoothMPRT): the smoke run's size."""
    takes = "nr_samples" in inspect.signature(fastattr_class(case["name"]).__init__).parameters
    if not takes or "nr_samples" in case["init"]:
        return case
    return dict(case, init=dict(case["init"], nr_samples=QUICK_SAMPLES))


def fastattr_class(name: str) -> type:
    """``fastattr.quantus.<name>``."""
    return getattr(fq, name)


def _expected_rows(name: str, shape: Tuple[int, ...], samples: int) -> Optional[Tuple[int, int]]:
    """(rows needing a gradient, forward-only rows): the fewest the metric
    needs, for the classes whose count is written down here (else None)."""
    if name == "Infidelity":
        patches = (shape[-1] // PATCH) * (shape[-2] // PATCH)
        # the explanation; the clean output and one output per cumulative patch
        # replacement (a fixed black baseline: the same for every sample)
        return BATCH, BATCH * (patches + 1)
    if name in ("MaxSensitivity", "AvgSensitivity", "LocalLipschitzEstimate"):
        return BATCH * (samples + 1), 0  # the clean explanation and one per perturbation
    return None


# ---------------------------------------------------------------------------
# inputs, counting, the floor
# ---------------------------------------------------------------------------


def smooth_images(shape: Tuple[int, ...], seed: int) -> Tensor:
    """``[BATCH, *shape]`` in [0, 1]: uniform noise blurred twice (3x3 mean),
    so SLIC finds superpixels (it makes one segment of raw noise)."""
    x = torch.rand((BATCH, *shape), generator=torch.Generator().manual_seed(seed))
    for _ in range(2):
        x = nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return x


def quadrant_masks(shape: Tuple[int, ...]) -> Tensor:
    """``[BATCH, 1, H, W]`` float masks: one quadrant per example, in turn."""
    h, w = shape[-2:]
    s = torch.zeros(BATCH, 1, h, w)
    for b in range(BATCH):  # 8 masks made once, outside the timing
        top, left = (b // 2) % 2 * (h // 2), b % 2 * (w // 2)
        s[b, :, top:top + h // 2, left:left + w // 2] = 1.0
    return s


def pixel_saliency(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
    """Quantus-style explain function: fastattr's saliency summed over the
    channels, ``[n, 1, H, W]`` (ROAD ranks pixels, so one value per pixel)."""
    device = next(model.parameters()).device
    a = fastattr.saliency(model, torch.as_tensor(inputs, device=device),
                          target=torch.as_tensor(targets, device=device))
    return a.sum(1, keepdim=True).cpu().numpy()


@dataclass
class ModelCalls:
    """Forward calls of a model and their rows, with autograd on / off,
    counted by a pre-hook (copies of the model made inside a call keep it)."""

    calls: List[int] = field(default_factory=lambda: [0, 0])  # [grad, no-grad]
    rows: List[int] = field(default_factory=lambda: [0, 0])
    largest: List[int] = field(default_factory=lambda: [0, 0])  # rows of the largest call

    def run(self, model: nn.Module, fn: Callable[[], Any]) -> Any:
        def count(module: nn.Module, args: Tuple[Any, ...]) -> None:
            if isinstance(args[0], Tensor):
                i = 0 if torch.is_grad_enabled() else 1
                self.calls[i] += 1
                self.rows[i] += args[0].shape[0]
                self.largest[i] = max(self.largest[i], args[0].shape[0])

        handle = model.register_forward_pre_hook(count)
        try:
            return fn()
        finally:
            handle.remove()

    def __str__(self) -> str:
        return f"{self.rows[0]}+{self.rows[1]}"


def floor_call(grad_rows: W.Segments, fwd_rows: W.Segments, y: Tensor, counted: ModelCalls) -> Callable[[], None]:
    """The bare forward + backward of ``grad_rows`` and no-grad forward of
    ``fwd_rows``, each segment on its module, in chunks of the largest call
    of each kind fastattr made."""
    n_grad = sum(rows.shape[0] for _, rows in grad_rows)
    classes = y.repeat(-(-n_grad // BATCH))[:n_grad] if n_grad else y[:0]
    onehot = nn.functional.one_hot(classes, W.N_CLASSES)
    leaves = [(m, rows.detach().requires_grad_()) for m, rows in grad_rows]
    g_chunk, f_chunk = max(counted.largest[0], 1), max(counted.largest[1], 1)

    def floor() -> None:
        r0 = 0
        for model, rows in leaves:
            for i in range(0, rows.shape[0], g_chunk):
                part = rows[i:i + g_chunk]
                seed = onehot[r0 + i:r0 + i + part.shape[0]].to(part.dtype)
                torch.autograd.grad(model(part), part, grad_outputs=seed)
            r0 += rows.shape[0]
        with torch.no_grad():
            for model, rows in fwd_rows:
                for i in range(0, rows.shape[0], f_chunk):
                    model(rows[i:i + f_chunk])

    return floor


# ---------------------------------------------------------------------------
# one row of the table
# ---------------------------------------------------------------------------


@dataclass
class Bench:
    """One (workload, class): the timed calls, and what building them counted."""

    name: str
    device: torch.device
    calls: Dict[str, Callable[[], Any]]
    fa_count: ModelCalls
    qu_count: Optional[ModelCalls] = None
    quantus_note: str = ""  # why Quantus has no time, where it has none
    expected: Optional[Tuple[int, int]] = None
    problems: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class Workload:
    """A model and its inputs, made once and shared by every class."""

    name: str
    model: nn.Module
    x: Tensor  # [BATCH, C, H, W]
    y: Tensor  # int64 [BATCH]
    s: Tensor  # [BATCH, 1, H, W] masks

    @staticmethod
    def make(name: str, device: torch.device) -> "Workload":
        ctor, shape = MODELS[name]
        torch.manual_seed(W.SEED)
        model = ctor().eval().to(device)
        y = (torch.arange(BATCH) * 3 + 1) % W.N_CLASSES
        return Workload(name, model, smooth_images(shape, W.SEED + 1).to(device), y.to(device),
                        quadrant_masks(shape).to(device))

    @property
    def device(self) -> torch.device:
        return self.x.device


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:150] if text else ""


def _same_form(ours: Any, theirs: Any) -> bool:
    """Whether two metric results have the same form (type, length, dict keys)."""
    if isinstance(theirs, dict):
        return isinstance(ours, dict) and list(ours) == list(theirs)
    if isinstance(theirs, (list, tuple, np.ndarray)):
        return isinstance(ours, (list, tuple, np.ndarray)) and len(ours) == len(theirs)
    return np.isscalar(ours) == np.isscalar(theirs)


class Refused(Exception):
    """fastattr raised on a class: the message says how, and what Quantus did."""


def build_quantus_case(w: Workload, case: Dict[str, Any], samples: int) -> Bench:
    """fastattr's drop-in (recorded: its rows make the floor) and Quantus's
    class (run once to count its calls, or to learn why it cannot run)."""
    name = case["name"]
    args: Dict[str, Any] = dict(case["call"])
    explain, qu_kwargs = fastattr.saliency, {"method": "Saliency"}
    if name == "ROAD" and w.x.shape[1] > 1:  # ROAD ranks pixels: one value per pixel on RGB
        explain, qu_kwargs = pixel_saliency, {"method": "Saliency", "reduce_axes": (1,), "keepdims": True}
    fa_args = dict(args, explain_func=explain)
    qu_args = dict(args, explain_func=quantus.explain if quantus else None, explain_func_kwargs=qu_kwargs)
    if case["needs_s"]:
        fa_args["s_batch"], qu_args["s_batch"] = w.s, w.s.cpu().numpy()
    fa_args["a_batch"] = qu_args["a_batch"] = None  # Quantus's InputInvariance takes no default
    if case["needs_a"]:
        a = fastattr.saliency(w.model, w.x, target=w.y)
        fa_args["a_batch"], qu_args["a_batch"] = a, a.cpu().numpy()
    calls: Dict[str, Callable[[], Any]] = {}
    qu_count, theirs_out, quantus_note = ModelCalls(), None, "Quantus is not installed"
    if quantus is not None:  # first: a row fastattr refuses still says what Quantus does
        theirs = getattr(quantus, name)(**case["init"])
        x_np, y_np = w.x.cpu().numpy(), w.y.cpu().numpy()
        call = (lambda: theirs(model=w.model, x_batch=x_np, y_batch=y_np, device=str(w.device), **qu_args))
        try:
            theirs_out = qu_count.run(w.model, call)
        except Exception as exc:  # Quantus's own limits (e.g. one channel only): said in the row
            quantus_note = f"Quantus cannot run it: {type(exc).__name__}: {_first_line(exc)}"
        else:
            calls["quantus"], quantus_note = call, ""
    ours = fastattr_class(name)(**case["init"])
    calls["fastattr"] = lambda: ours(model=w.model, x_batch=w.x, y_batch=w.y, device=w.device, **fa_args)
    fa_count = ModelCalls()
    try:
        ours_out, g_rows, f_rows = fa_count.run(w.model, lambda: W.record_rows_by_model(w.model, calls["fastattr"]))
    except Exception as exc:
        raise Refused(f"fastattr: {type(exc).__name__}: {_first_line(exc)}; "
                      + (quantus_note or "Quantus ran it")) from exc
    bench = Bench(f"{w.name}-{name}", w.device, calls, fa_count, quantus_note=quantus_note,
                  expected=_expected_rows(name, tuple(w.x.shape[1:]), samples))
    if "quantus" in calls:
        bench.qu_count = qu_count
        if not _same_form(ours_out, theirs_out):
            bench.problems.append(f"fastattr returned {_form(ours_out)}, Quantus {_form(theirs_out)}")
    calls["floor"] = floor_call(g_rows, f_rows, w.y, fa_count)
    return bench


def _form(result: Any) -> str:
    if isinstance(result, dict):
        return f"a dict with keys {list(result)[:4]}"
    if isinstance(result, (list, tuple, np.ndarray)):
        return f"a {type(result).__name__} of {len(result)}"
    return type(result).__name__


def build_captum_case(w: Workload, metric: str, samples: int) -> Bench:
    """The same ``captum.metrics`` call through fastattr's drop-in and through Captum."""
    calls: Dict[str, Callable[[], Any]] = {}
    x, y = w.x, w.y
    for who, metrics, saliency in (("fastattr", fcm, fc.Saliency(w.model)), ("captum", cm, Saliency(w.model))):
        if metric == "MaxSensitivity":
            calls[who] = (lambda m=metrics, s=saliency: m.sensitivity_max(
                s.attribute, x, target=y, perturb_radius=RADIUS, n_perturb_samples=samples))
        else:
            attributions = saliency.attribute(x, target=y)
            calls[who] = (lambda m=metrics, a=attributions: m.infidelity(
                w.model, _gaussian_perturbation, x, a, target=y, n_perturb_samples=INFIDELITY_SAMPLES))
    fa_count = ModelCalls()
    _, g_rows, f_rows = fa_count.run(w.model, lambda: W.record_rows_by_model(w.model, calls["fastattr"]))
    calls["floor"] = floor_call(g_rows, f_rows, y, fa_count)
    expected = ((0, BATCH * (INFIDELITY_SAMPLES + 1)) if metric == "Infidelity"  # attributions given
                else (BATCH * (samples + 1), 0))
    return Bench(f"{w.name}-{CAPTUM_METRICS[metric]}-captum", w.device, calls, fa_count,
                 expected=expected)


def _gaussian_perturbation(inputs: Tensor) -> Tuple[Tensor, Tensor]:
    """Captum's documented infidelity perturbation: ``I ~ N(0, 0.1^2)``, rows ``x - I``."""
    noise = torch.randn_like(inputs) * 0.1
    return noise, inputs - noise


def verdict(bench: Bench, floor_ms: float, fa_ms: float, ref_over_fa: float) -> str:
    """``yes``, or ``NO (<the targets missed>)``; ``ref_over_fa`` is Quantus's
    (or Captum's) paired ratio, nan where it did not run."""
    misses = []
    if floor_ms >= FLOOR_MIN_MS and fa_ms / floor_ms > FLOOR_RATIO:
        misses.append(f"fa/floor>{FLOOR_RATIO}")
    if not math.isnan(ref_over_fa):
        if ref_over_fa < 1.0:
            misses.append("slower than " + ("Captum" if "captum" in bench.calls else "Quantus"))
        if bench.name.startswith("conv") and bench.name.endswith("-ROAD") and ref_over_fa < ROAD_SPEEDUP:
            misses.append(f"quantus/fa<{ROAD_SPEEDUP:g}")
    if bench.qu_count is not None and sum(bench.fa_count.rows) > sum(bench.qu_count.rows):
        misses.append("more rows than Quantus")
    return "yes" if not misses else "NO (" + ", ".join(misses) + ")"


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

QUANTUS_HEADER = (f"{'workload-class':<44} {'calls fa/qu':>13} {'rows fa':>12} {'rows qu':>12} {'fastattr ms':>11} "
                  f"{'quantus ms':>10} {'floor ms':>9} {'fa/floor':>8} {'qu/fa':>6} {'qu/floor':>8}  target met")
CAPTUM_HEADER = (f"{'workload-captum.metrics':<44} {'calls fa':>9} {'rows fa':>12} {'fastattr ms':>11} "
                 f"{'captum ms':>10} {'floor ms':>9} {'fa/floor':>8} {'ca/fa':>6}  target met")


@dataclass(frozen=True)
class Timing:
    """``run.measure``'s settings; ``once``: time one call of each instead (--quick)."""

    repeats: int
    min_repeat_s: float
    min_total_s: float
    once: bool = False


def time_once(bench: Bench) -> Dict[str, List[float]]:
    """Seconds of one call of each implementation, after one floor call
    (fastattr and Quantus ran once already, to record and count their rows)."""
    bench.calls["floor"]()
    return {name: [R._time_k(fn, 1, bench.device)] for name, fn in bench.calls.items()}


def _ratio(a: float, b: float, width: int, digits: int) -> str:
    return f"{'n/a':>{width}}" if math.isnan(a) or math.isnan(b) else f"{a / b:>{width}.{digits}f}"


def run_row(name: str, build: Callable[[], Bench], ref: str, timing: Timing,
            not_applicable: Optional[str] = None) -> Tuple[str, str]:
    """Build and time one row: ``(its line, its status)``, the status
    ``"met"``, ``"missed"``, ``"failed"`` (an error or a failed check) or
    ``"n/a"`` (``not_applicable`` says why fastattr refused it)."""
    try:
        bench = build()
    except Exception as exc:  # one broken class must not hide the rest
        why = str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {_first_line(exc)}"
        if not_applicable is not None and isinstance(exc, Refused):
            return f"{name:<44} not applicable: {not_applicable} [{why}]", "n/a"
        return f"{name:<44} ERROR {why}", "failed"
    try:
        times = (time_once(bench) if timing.once else
                 R.measure(bench, timing.repeats, 0, timing.min_repeat_s, timing.min_total_s))
    except Exception as exc:
        return f"{name:<44} ERROR while timing: {type(exc).__name__}: {_first_line(exc)}", "failed"
    ms = {n: min(times[n]) * 1000 if n in times else math.nan for n in ("floor", "fastattr", ref)}
    ref_fa = R.paired_ratio(times, ref, "fastattr")
    met = verdict(bench, ms["floor"], ms["fastattr"], ref_fa)
    fa_rows = tuple(bench.fa_count.rows)
    if bench.expected is not None and fa_rows != bench.expected:
        bench.problems.append(f"fastattr ran {fa_rows} rows, the metric needs {bench.expected}")
    status = "failed" if bench.problems else "missed" if met.startswith("NO") else "met"
    if bench.problems:
        met = "CHECK FAILED: " + "; ".join(bench.problems)
    fa_ms, ref_ms, floor_ms = ms["fastattr"], ms[ref], ms["floor"]
    common = f"{str(bench.fa_count):>12}"
    if ref == "quantus":
        qc = bench.qu_count
        calls = f"{sum(bench.fa_count.calls)}/{sum(qc.calls) if qc else '-'}"
        common = f"{calls:>13} {common} {str(qc) if qc else '-':>12}"
    else:
        common = f"{sum(bench.fa_count.calls):>9} {common}"
    ref_col = f"{'n/a':>10}" if math.isnan(ref_ms) else f"{ref_ms:>10.1f}"
    line = (f"{name:<44} {common} {fa_ms:>11.1f} {ref_col} {floor_ms:>9.1f} {fa_ms / floor_ms:>8.3f} "
            + (f"{'n/a':>6}" if math.isnan(ref_fa) else f"{ref_fa:>6.2f}")
            + (f" {_ratio(ref_ms, floor_ms, 8, 2)}" if ref == "quantus" else "") + f"  {met}"
            + (f"  [{bench.quantus_note}]" if bench.quantus_note else ""))
    return line, status


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help='regex on "<workload>-<class>" (e.g. "conv1.*ROAD", "-captum")')
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: every class on {', '.join(QUICK_MODELS)} (any workload with --only), "
                        f"{QUICK_SAMPLES} samples (nr_samples) instead of Quantus's defaults, one call of each")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved repeats (default 3; --quick: one call of each unless given)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--huge", action="store_true", help="also run " + "; ".join(f"{m}-{c}" for m, c in HUGE))
    p.add_argument("--device", default="cpu", help="where the models and inputs live (cpu, cuda, cuda:N)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    samples = QUICK_SAMPLES if args.quick else SAMPLES
    timing = (Timing(args.repeats or 3, 0.05, 2.0) if not args.quick
              else Timing(args.repeats, 0.0, 0.0) if args.repeats else Timing(1, 0.0, 0.0, once=True))
    cases, notes = load_cases(samples)
    if args.quick:
        cases = [quick_case(c) for c in cases]
    models = [m for m in MODELS if not args.quick or args.only or m in QUICK_MODELS]
    rows = [(m, c) for m in models for c in cases if not args.only or re.search(args.only, f"{m}-{c['name']}")]
    captum_rows = [(m, k) for m in models for k in CAPTUM_METRICS
                   if not args.only or re.search(args.only, f"{m}-{CAPTUM_METRICS[k]}-captum")]

    print(W.environment(device) + f" | quantus {getattr(quantus, '__version__', 'NOT INSTALLED')}")
    print(W.steady_heap())
    print(f"{BATCH} examples, saliency; {samples} samples (sensitivities, Lipschitz"
          + (", and nr_samples where a class has one" if args.quick else "") + f"); {len(cases)} classes; "
          + ("one call of each (a smoke run)" if timing.once else f"best of >= {timing.repeats} interleaved repeats"))
    for note in notes:
        print(note)
    load = R.OtherLoad()
    workloads: Dict[str, Workload] = {}

    def workload(model_name: str) -> Workload:
        if model_name not in workloads:
            workloads[model_name] = Workload.make(model_name, device)
        return workloads[model_name]

    statuses: List[str] = []
    if rows:
        print(f"\n{QUANTUS_HEADER}\n" + "-" * len(QUANTUS_HEADER))
    for model_name, case in rows:
        name = f"{model_name}-{case['name']}"
        if (model_name, case["name"]) in HUGE and not args.huge:
            print(f"{name:<44} skipped (--huge runs it): {HUGE[model_name, case['name']]}", flush=True)
            continue
        line, status = run_row(name, lambda: build_quantus_case(workload(model_name), case, samples), "quantus",
                               timing, NOT_APPLICABLE.get((model_name, case["name"])))
        print(line, flush=True)
        statuses.append(status)
    if captum_rows:
        print(f"\n{CAPTUM_HEADER}\n" + "-" * len(CAPTUM_HEADER))
    for model_name, metric in captum_rows:
        line, status = run_row(f"{model_name}-{CAPTUM_METRICS[metric]}-captum",
                               lambda: build_captum_case(workload(model_name), metric, samples), "captum", timing)
        print(line, flush=True)
        statuses.append(status)
    print(load.report())
    print(f"rows: {len(statuses)}; targets met {statuses.count('met')}, missed {statuses.count('missed')}; "
          f"not applicable {statuses.count('n/a')}; checks failed or errors: {statuses.count('failed')}")
    return 1 if "failed" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
