"""Print the benchmark table: fastattr vs Captum vs the floor, from one run.

    python benchmarks/run.py                       # the 8 CPU workloads
    python benchmarks/run.py --quick               # smoke run (fewer, shorter repeats)
    python benchmarks/run.py --device cuda --resnet
    python benchmarks/run.py --forms eager,fast,compiled   # + the compiled model form (it compiles)

Each time is the best of at least ``--repeats`` repeats (more for slow
workloads, see ``--min-total-s``); a repeat is the mean of k calls, k chosen so
that a repeat lasts at least ``--min-repeat-ms``. The implementations take
turns within each repeat (fastattr, captum, floor, fastattr, ...) so machine
noise hits all of them alike. See benchmarks/README.md.

The ``bare/floor`` column times ``workloads.bare_call``: fastattr's fused ops
and the floor's forward + backward with nothing else (no checks, no target
handling, no planning). It is the lowest fa/floor any call can reach here: on
the tiny rows, what separates it from 1.00 is per-op dispatch, not
framework overhead.

The line under each workload (``--forms``, default ``eager,fast``) gives the
model forms as ratios of the eager floor, timed in the same repeats: the fast
floor and fastattr with each ``model_form`` (``forms.py``); a compiled form's
first two calls, which pay its compilation, are reported beside them.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forms as F  # noqa: E402
import workloads as W  # noqa: E402
from workloads import paired_ratio  # noqa: E402  (methods.py and metrics.py use it as run.paired_ratio)

# fastattr/floor targets (2-core CPU): floor >= 1 ms -> 1.10, tinier rows -> 1.20;
# and fastattr at least 5x faster than Captum on the MLP rows.
RATIO_BIG, RATIO_TINY, TINY_FLOOR_MS, MLP_SPEEDUP = 1.10, 1.20, 1.0, 5.0


def _time_k(fn: Callable, k: int, device: torch.device) -> float:
    """Mean seconds per call over ``k`` calls."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / k


def measure(bench: W.Bench, repeats: int, warmup: int, min_repeat_s: float,
            min_total_s: float) -> Dict[str, List[float]]:
    """Mean seconds per call of each implementation in each repeat, the
    implementations interleaved within every repeat. At least ``repeats``
    repeats, more where that leaves an implementation under ``min_total_s``
    of timing in all (slow workloads on a noisy machine need more samples)."""
    calls, device = bench.calls, bench.device
    k, one = {}, {}
    for name, fn in calls.items():
        for _ in range(warmup):
            fn()
        one[name] = _time_k(fn, 1, device)
        k[name] = max(1, math.ceil(min_repeat_s / max(one[name], 1e-9)))
    slowest_repeat = max(k[n] * one[n] for n in calls)
    repeats = max(repeats, min(4 * repeats, math.ceil(min_total_s / max(slowest_repeat, 1e-9))))
    times: Dict[str, List[float]] = {name: [] for name in calls}
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            for name, fn in calls.items():
                gc.collect()
                gc.disable()
                times[name].append(_time_k(fn, k[name], device))
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def verdict(spec: W.Spec, floor_ms: float, fa_ms: float, ca_ms: float) -> str:
    limit = RATIO_BIG if floor_ms >= TINY_FLOOR_MS else RATIO_TINY
    misses = []
    if fa_ms / floor_ms > limit:
        misses.append(f"fa/floor>{limit:.2f}")
    if spec.model == "mlp":
        if math.isnan(ca_ms):
            misses.append("no captum")
        elif ca_ms / fa_ms < MLP_SPEEDUP:
            misses.append(f"captum/fa<{MLP_SPEEDUP:g}")
    return "yes" if not misses else "NO (" + ", ".join(misses) + ")"


def add_forms(bench: W.Bench, forms: Tuple[str, ...], compiled_only: Optional[str]) -> F.FormCalls:
    """Add the fast floor and fastattr in each of ``forms`` to ``bench.calls``
    (``forms.add_form_calls``); ``"compiled"`` only where the workload's name
    matches ``compiled_only`` (None: everywhere), a note elsewhere."""
    skip_compiled = compiled_only is not None and not re.search(compiled_only, bench.name)
    found = F.add_form_calls(
        bench.calls, bench.model, bench.x, bench.floor_rows, bench.floor_onehot,
        tuple(f for f in forms if not (f == "compiled" and skip_compiled)),
        lambda form: W.fastattr_call(bench.spec, bench.model, bench.x, bench.target, form), bench.device)
    if skip_compiled and "compiled" in forms:
        found.notes.append(f"compiled: not timed on this workload (--compiled-only {compiled_only!r})")
    return found


def check_forms(bench: W.Bench) -> List[str]:
    """``forms.check_forms`` of the model forms' calls in ``bench.calls``,
    within ``workloads.tolerance`` measured here, where the forms run: on
    CUDA with TF32 as the caller left it (the compiled form's CUDA graphs
    captured it); ``workloads.check`` turns it off for its own checks."""
    if not F.form_names(bench.calls):
        return []
    return F.check_forms(bench.calls, bench.model, bench.x, bench.floor_rows, bench.floor_onehot,
                         lambda model: W.bare_call(bench.spec, model, bench.x, bench.floor_onehot), W.tolerance(bench))


class OtherLoad:
    """CPU seconds that other processes used while the benchmark ran (Linux:
    all busy time in /proc/stat minus this process's own), the honest measure
    of a quiet machine. On a 2-core box even one busy neighbour makes torch's
    2-thread OpenMP regions stall, inflating small workloads up to 100x."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
        except (OSError, ValueError):  # pragma: no cover - not Linux
            return None
        busy = sum(v) - v[3] - v[4]
        own = resource.getrusage(resource.RUSAGE_SELF)
        return busy / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime, time.monotonic()

    def report(self) -> str:
        end = self._sample()
        if self.start is None or end is None:
            return "CPU used by other processes: unknown"
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        wall = end[2] - self.start[2]
        share = others / (wall * (os.cpu_count() or 1))
        note = "quiet" if share < 0.02 else "BUSY: times are inflated, rerun on a quiet machine"
        return (f"CPU used by other processes during the run: {max(others, 0):.1f} s "
                f"in {wall:.0f} s wall ({100 * max(share, 0):.1f}% of the machine; {note})")


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--resnet", action="store_true", help="add the ResNet-18-shaped workloads")
    p.add_argument("--resnet-size", type=int, default=None,
                   help="ResNet input side (default 224 on cuda, 32 on cpu, where it is only a dry run)")
    p.add_argument("--only", default=None, help="regex: run only the workloads whose name matches")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 short repeats, 1 warm-up call")
    p.add_argument("--repeats", type=int, default=None, help="repeats per implementation (default 15)")
    p.add_argument("--min-repeat-ms", type=float, default=None, help="least duration of one repeat (default 50)")
    p.add_argument("--min-total-s", type=float, default=None,
                   help="more repeats (up to 4x) until each implementation is timed this long (default 1.5)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file, rewritten after every "
                   "workload (\"complete\": false until the run ends, so a timeout keeps what finished)")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--forms", default="eager,fast",
                   help="model forms timed beside the eager floor, comma-separated among eager, fast, compiled "
                        "(default eager,fast; '' for none; compiled pays a torch.compile per chunk size)")
    p.add_argument("--compiled-only", default=None, metavar="REGEX",
                   help="time the compiled form only on the workloads whose name matches (each compiles)")
    args = p.parse_args(argv)
    try:
        forms = F.parse_forms(args.forms)
    except ValueError as exc:
        p.error(str(exc))

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    repeats = args.repeats or (2 if args.quick else 15)
    min_repeat_s = (args.min_repeat_ms or (10.0 if args.quick else 50.0)) / 1000
    warmup = 1 if args.quick else 3
    min_total_s = args.min_total_s if args.min_total_s is not None else (0.0 if args.quick else 1.5)

    specs = W.standard_specs()
    if args.resnet:
        specs += W.resnet_specs(args.resnet_size or (224 if device.type == "cuda" else 32))
    if args.only:
        specs = [s for s in specs if re.search(args.only, s.name)]

    print(W.environment(device))
    print(W.steady_heap())
    other_load = OtherLoad()
    print(f"best of >= {repeats} repeats, each >= {min_repeat_s * 1000:g} ms; "
          f"IG n_steps={W.N_STEPS} (gausslegendre, zero baseline), "
          f"SmoothGrad n_samples={W.N_SAMPLES} stdev={W.STDEV} (saliency, abs)")
    if forms:
        print(f"model forms {', '.join(forms)}: the line under each workload gives the fast floor and fastattr "
              f"with each model_form as ratios of the eager floor (paired in brackets)")
    targets_apply = device.type == "cpu"
    if not targets_apply:
        print("(the targets are defined for the 2-core CPU; on this device the column is informational)")
    print()
    header = (f"{'workload':<22} {'rows':>5} {'floor ms':>10} {'fastattr ms':>12} {'captum ms':>10} "
              f"{'fa/floor':>9} {'(paired)':>8} {'bare/floor':>10} {'captum/fa':>10}  target met")
    print(header)
    print("-" * len(header))

    results, failed_checks, missed = [], [], []
    environment = W.environment(device)

    def write_json(load: Optional[str]) -> None:
        # Rewritten after every workload: a run stopped by a timeout keeps what finished.
        if args.json:
            Path(args.json).write_text(json.dumps(
                dict(environment=environment, load=load, complete=load is not None, repeats=repeats,
                     min_repeat_ms=min_repeat_s * 1000, results=results), indent=2))

    for spec in specs:
        try:
            bench = W.build(spec, device)
            problems = W.check(bench)
            found = add_forms(bench, forms, args.compiled_only)
            problems += found.problems + check_forms(bench)
            times = measure(bench, repeats, warmup, min_repeat_s, min_total_s)
        except Exception as exc:  # one broken workload (e.g. out of memory) must not hide the rest
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"{spec.name:<22} {spec.rows:>5}  ERROR {msg}", flush=True)
            failed_checks.append((spec.name, [msg]))
            results.append(dict(workload=spec.name, rows=spec.rows, error=msg))
            write_json(None)
            bench = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        floor_ms, fa_ms, ca_ms, bare_ms = (min(times[n]) * 1000 if n in times else math.nan
                                           for n in ("floor", "fastattr", "captum", "bare"))
        paired = paired_ratio(times, "fastattr", "floor")
        met = verdict(spec, floor_ms, fa_ms, ca_ms)
        if problems:
            met = "CHECK FAILED"
            failed_checks.append((spec.name, problems))
        elif met != "yes":
            missed.append(spec.name)
        print(f"{spec.name:<22} {spec.rows:>5} {floor_ms:>10.3f} {fa_ms:>12.3f} {ca_ms:>10.3f} "
              f"{fa_ms / floor_ms:>9.3f} {paired:>8.3f} {bare_ms / floor_ms:>10.3f} {ca_ms / fa_ms:>10.2f}  {met}",
              flush=True)
        if forms:
            print(F.ratios_line(times, found), flush=True)
        results.append(dict(workload=spec.name, rows=spec.rows, floor_ms=floor_ms, fastattr_ms=fa_ms,
                            captum_ms=ca_ms, bare_ms=bare_ms, fastattr_over_floor=fa_ms / floor_ms,
                            bare_over_floor=bare_ms / floor_ms,
                            fastattr_over_floor_paired_median=paired,
                            captum_over_fastattr=ca_ms / fa_ms, target_met=met, check=problems,
                            repeats=len(times["floor"]), forms=F.ratios(times, found),
                            times_ms={n: [t * 1000 for t in v] for n, v in times.items()}))
        write_json(None)
        del bench
        if device.type == "cuda":
            torch.cuda.empty_cache()

    load_line = other_load.report()
    print(load_line)
    print()
    for name, problems in failed_checks:
        for msg in problems:
            print(f"CHECK FAILED {name}: {msg}")
    print(f"checks: {'all passed' if not failed_checks else f'{len(failed_checks)} workload(s) FAILED or ERRORED'}; "
          f"targets: {len(specs) - len(missed) - len(failed_checks)}/{len(specs)} met"
          + ("" if targets_apply else " (informational off the CPU)"))
    write_json(load_line)
    if failed_checks:
        return 1
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
