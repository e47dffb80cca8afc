"""The model forms in the benchmarks (``docs/model_form.md``), shared by
``run.py`` and ``methods.py``.

Beside a workload's eager floor and fastattr call, each form of ``--forms``
adds timed calls: the **fast floor** (``floor[fast]``: the floor's rows,
values included, through ``model_form="fast"``'s copy of the model) and
fastattr with ``model_form=<form>`` (``fastattr[<form>]``), timed in the same
interleaved repeats and reported as ratios of the eager floor. A form that
does not apply is not timed (it would time eager under another name):
where the model has nothing to rewrite (an MLP: eager *is* the fast form)
the form's reason is printed as a note; any other reason (a rewrite turned
away by its check, a failed ``torch.compile``) is a problem. A compiled
form's first two calls are timed apart and reported: they pay the
compilation, which is never hidden in the best-of-repeats time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Tuple

import torch
from torch import Tensor, nn

import workloads as W
from fastattr.engine.model_form import FORMS, NO_REWRITE, model_in_form

FLOOR_FAST = "floor[fast]"


def parse_forms(text: str) -> Tuple[str, ...]:
    """``"eager,fast"`` -> ``("eager", "fast")``; ``""`` -> ``()``. ValueError
    naming ``--forms`` for a name not in ``FORMS``."""
    forms = tuple(f for f in text.split(",") if f)
    if any(f not in FORMS for f in forms) or len(set(forms)) != len(forms):
        raise ValueError(f"--forms: expected distinct names among {', '.join(FORMS)}, got {text!r}")
    return forms


def form_call_name(form: str) -> str:
    """The timed name of fastattr's call with ``model_form=form``."""
    return f"fastattr[{form}]"


@dataclass
class FormCalls:
    """What :func:`add_form_calls` found besides the calls it added."""

    # form -> seconds of its first two calls (a compiled form compiles in the
    # first call that runs a chunk of the size it serves: the second when
    # the first call's measuring chunk is all the rows)
    first_calls_s: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)  # forms not timed because eager is that form here
    problems: List[str] = field(default_factory=list)  # forms that did not apply for another reason


def add_form_calls(calls: Dict[str, Callable[[], object]], model: nn.Module, x: Tensor, rows: Tensor,
                   onehot: Tensor, forms: Tuple[str, ...], form_call: Callable[[str], Callable[[], object]],
                   device: torch.device) -> FormCalls:
    """Add to ``calls`` the fast floor (where ``"fast"`` is in ``forms`` and
    applies) and ``fastattr[<form>]`` for each form of ``forms`` that applies
    to ``model`` on inputs shaped like ``x`` (``[B, *F]``), and call each of
    those twice (timed: the compilation). ``rows`` ``[R, *F]`` (requires
    grad) and ``onehot`` ``[R, C]`` are the eager floor's; ``form_call(form)``
    makes fastattr's call of the workload with ``model_form=form``."""
    found = FormCalls()
    for form in forms:
        used = model_in_form(model, form, (x,))
        if used.form != form:
            _not_applied(found, form, used.reason)
            continue
        if form == "fast":
            calls[FLOOR_FAST] = W.floor_call(used.model, rows, onehot)
        call = form_call(form)
        timed = W.synced(call, device)
        seconds = []
        for _ in range(2):
            t0 = time.perf_counter()
            timed()
            seconds.append(time.perf_counter() - t0)
        found.first_calls_s[form] = (seconds[0], seconds[1])
        after = model_in_form(model, form, (x,))  # a torch.compile that failed in those calls shows here
        if after.form != form:
            _not_applied(found, form, after.reason)
        elif after.compiled is not None and not after.compiled.served:
            found.problems.append(f"{form}: no chunk of its first two calls ran compiled")
        else:
            calls[form_call_name(form)] = call
    return found


def _not_applied(found: FormCalls, form: str, reason: str) -> None:
    if reason.startswith(NO_REWRITE):
        found.notes.append(f"{form}: not timed, {reason}: eager is the {form} form here")
    else:
        found.problems.append(f"{form} form did not apply: {reason}")


def check_forms(calls: Dict[str, Callable[[], Tensor]], model: nn.Module, x: Tensor, rows: Tensor, onehot: Tensor,
                by_hand: Callable[[Callable[..., Tensor]], Callable[[], Tensor]], tol: float) -> List[str]:
    """Problems (empty: fine) of the ``fastattr[<form>]`` calls in ``calls``, in two parts:

    * the form's model computes eager's gradients: on the floor's ``rows``
      ``[R, *F]`` (seeds ``onehot`` ``[R, C]``), the median over rows of each
      row's error against the eager model's (max |a - b| / max |b| of the
      row) is within ``tol``. The median, not every row: a row with a ReLU
      input or a max-pool tie within rounding takes the other branch in
      another summation order, as eager float32 does against float64 (on
      the ResNet at 3x32x32 up to 6 of 400 rows, one 7e-2 off); a rewrite
      that changed the function is off on every row.
    * fastattr in the form computes the method from those gradients: its
      result is within ``tol`` (max |a - b| / max |b|) of ``by_hand(form's
      model)()``, the same result made bare from that model's gradients
      (``workloads.bare_call``: the same rows, noise keys and weights).

    Comparing fastattr's results in two forms directly would take each
    branch flip of the forms' rows for an error (measured: fast against
    eager off by 6e-5 and 3e-4 on one of 8 ResNet examples each, eager
    float32 against float64 by 6e-4 on another)."""
    problems = []
    eager_grads = None
    for name in form_names(calls):
        if name == FLOOR_FAST:
            continue
        form = name[len("fastattr["):-1]
        used = model_in_form(model, form, (x,))
        if form != "eager":
            if eager_grads is None:
                eager_grads = W.floor_call(model, rows, onehot)().double()
            err = _row_errors(W.floor_call(used.model, rows, onehot)().double(), eager_grads).median().item()
            if not err <= tol:
                problems.append(f"the {form} model's gradients != eager's (median over {rows.shape[0]} rows of "
                                f"the rel err {err:.2e} > {tol:.1e})")
        result = calls[name]().double()
        err = W.rel_err(result, by_hand(used.model)().double())
        if not err <= tol:
            problems.append(f"{name} != the same by hand from its model's gradients (rel err {err:.2e} > {tol:.1e})")
    return problems


def _row_errors(a: Tensor, b: Tensor) -> Tensor:
    """``[R]``: max |a - b| / max |b| of each row of ``[R, *F]`` (a row of b all zero: max |a - b|)."""
    scale = b.flatten(1).abs().amax(1)
    return (a - b).flatten(1).abs().amax(1) / torch.where(scale > 0, scale, torch.ones_like(scale))


def form_names(names: Iterable[str]) -> List[str]:
    """The model forms' calls among ``names`` (of timed calls), in order."""
    return [n for n in names if n == FLOOR_FAST or n.startswith("fastattr[")]


def ratios(times: Dict[str, List[float]], found: FormCalls) -> Dict[str, object]:
    """The forms of one workload for the JSON output: each form call's best
    time as a ratio of the eager floor's (and paired within repeats), the
    first two calls' seconds and the notes."""
    floor = min(times["floor"])
    names = form_names(times)
    return dict(over_eager_floor={n: min(times[n]) / floor for n in names},
                over_eager_floor_paired_median={n: W.paired_ratio(times, n, "floor") for n in names},
                first_calls_s={f: list(s) for f, s in found.first_calls_s.items()},
                notes=found.notes, problems=found.problems)


def ratios_line(times: Dict[str, List[float]], found: FormCalls) -> str:
    """The forms of one workload on one line: each form call's best time and
    its ratio of the eager floor's (paired within repeats in brackets), the
    compiled form's first two calls, the notes."""
    floor = min(times["floor"])
    parts = []
    for name in form_names(times):
        best = min(times[name])
        parts.append(f"{name} {best * 1000:.3f} ms = {best / floor:.3f} ({W.paired_ratio(times, name, 'floor'):.3f})")
    if "compiled" in found.first_calls_s:
        first, second = found.first_calls_s["compiled"]
        parts.append(f"compiled: first two calls {first:.1f} s, {second:.1f} s (a new chunk size compiles in them)")
    return "    of the eager floor: " + "; ".join(parts + found.notes + found.problems)
