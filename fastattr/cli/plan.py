"""The audit's plan, printed before any work: what runs, how many model rows
each example needs, and the time that takes, from a measured chunk of the
model's own forward and backward passes on the audited data; and the
settings that fit a time budget (``--budget-minutes``)."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import torch
from torch import Tensor

from .config import AuditError
from .measures import Group

Settings = Dict[str, Dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class RowCost:
    """Measured seconds per row: a forward and backward pass, a forward pass alone."""

    gradient: float
    forward: float


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_row_cost(model: Callable[..., Tensor], x: Tensor, repeats: int = 2) -> RowCost:
    """Seconds per row of ``model`` on ``x`` ``[b, *F]`` (a chunk of the audited
    examples): the best of ``repeats`` timed passes after one warm-up pass."""
    device = x.device

    def timed(backward: bool) -> float:
        best = math.inf
        for i in range(repeats + 1):
            _synchronize(device)
            t0 = time.perf_counter()
            if backward:
                rows = x.detach().requires_grad_(True)
                out = model(rows)
                torch.autograd.grad(out.gather(1, out.detach().argmax(1, keepdim=True)).sum(), rows)
            else:
                with torch.no_grad():
                    model(x)
            _synchronize(device)
            if i:
                best = min(best, time.perf_counter() - t0)
        return best / x.shape[0]

    return RowCost(timed(True), timed(False))


@dataclasses.dataclass(frozen=True)
class Plan:
    """The work of one audit: rows per example, summed over methods and metrics."""

    n_examples: int
    methods: Tuple[str, ...]
    metrics: Tuple[str, ...]
    gradient_rows: int  # forward+backward rows per example
    forward_rows: int  # forward-only rows per example
    cost: RowCost

    @property
    def seconds(self) -> float:
        """Estimated seconds for every example."""
        per_example = self.gradient_rows * self.cost.gradient + self.forward_rows * self.cost.forward
        return self.n_examples * per_example

    def describe(self, settings: Settings) -> str:
        """The plan as the lines printed before the work starts."""
        chosen = ", ".join(f"{g}({', '.join(f'{k}={v}' for k, v in s.items() if k != 'steps')})"
                           for g, s in settings.items())
        return "\n".join([
            f"fastattr audit: plan: {self.n_examples} examples x {len(self.methods)} methods "
            f"({', '.join(self.methods)})",
            f"  metrics: {', '.join(self.metrics)}",
            f"  settings: {chosen}",
            f"  per example: {self.gradient_rows} forward+backward rows and {self.forward_rows} forward rows; "
            f"measured {self.cost.gradient * 1e3:.3g} ms and {self.cost.forward * 1e3:.3g} ms per row",
            f"  estimated time: {format_duration(self.seconds)} (the model's own passes; "
            f"the audit adds its bookkeeping on top)",
        ])


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 20 s`` or ``12 s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{max(seconds, 0):.0f} s" if seconds >= 1 else f"{seconds:.2g} s"


def rows_per_example(method_rows: Mapping[str, int], groups: Sequence[Group], settings: Settings
                     ) -> Tuple[int, int]:
    """``(gradient rows, forward rows)`` per example: each method's own rows,
    each per-method group's rows for each method, each model group's once."""
    gradient = sum(method_rows.values())
    forward = 0
    for g in groups:
        for rows in (method_rows.values() if g.per_method else (1,)):
            grad_rows, fwd_rows = g.cost(settings[g.name], rows)
            gradient += grad_rows
            forward += fwd_rows
    return gradient, forward


# The sample-count settings --budget-minutes may lower, and the least it lowers them to.
_BUDGET_KNOBS = (("sensitivity", "n_samples"), ("infidelity", "n_samples"), ("lipschitz", "n_samples"))
_FEWEST_SAMPLES = 2


def fit_budget(plan_of: Callable[[Settings], Plan], settings: Settings, explicit: Sequence[Tuple[str, str]],
               minutes: float) -> Tuple[Settings, Plan]:
    """The settings with the most perturbation samples (at most each default,
    at least 2; settings given explicitly are never changed) whose plan fits
    ``minutes``; an AuditError naming ``--budget-minutes`` when even the fewest
    samples do not fit, with the ``--limit`` that would."""
    knobs = [(g, k) for g, k in _BUDGET_KNOBS if g in settings and (g, k) not in explicit]
    top = max([settings[g][k] for g, k in knobs], default=_FEWEST_SAMPLES)
    for n in range(top, _FEWEST_SAMPLES - 1, -1):
        trial = {g: dict(s) for g, s in settings.items()}
        for g, k in knobs:
            trial[g][k] = min(settings[g][k], n)
        plan = plan_of(trial)
        if plan.seconds <= minutes * 60:
            return trial, plan
        if not knobs:
            break
    per_example = plan.seconds / max(plan.n_examples, 1)
    fits = int(minutes * 60 // per_example) if per_example > 0 else plan.n_examples
    raise AuditError(
        f"--budget-minutes: {minutes:g} min is not enough: with the fewest samples the audit takes about "
        f"{format_duration(plan.seconds)} ({format_duration(per_example)} per example); "
        + (f"--limit {fits} would fit" if fits >= 1 else "not even one example fits")
        + ", or give fewer --methods or --metrics"
    )
