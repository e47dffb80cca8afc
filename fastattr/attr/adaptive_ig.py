"""Integrated gradients to a stated tolerance: each example's path is refined
until an estimate of its attribution's error is below ``rtol``.

On ReLU networks the integrand ``h(alpha) = (x - b) * grad f(b + alpha (x - b))``
is piecewise constant in ``alpha``, so every fixed rule (Gauss-Legendre
included) converges as ``1 / n`` and how many steps an example needs varies
by orders of magnitude between models and examples. Here each example's path
is a composite trapezoid rule on nested panels, refined where the integrand
changes:

* start: panels between ``alpha = 0, 1/4, 1/2, 3/4, 1`` (5 gradient rows);
* a panel ``[a, c]`` of width ``w`` has the error estimate
  ``|h(c) - h(a)| w / sqrt(12)``: the trapezoid's error when ``h`` jumps
  from ``h(a)`` to ``h(c)`` at a uniformly placed point inside the panel
  (for a smooth ``h`` it overstates the error);
* an example's estimate is the root sum of squares of its panels' over the
  L2 norm of its attribution (all inputs' features together), times
  ``safety_factor``;
* every example above ``rtol`` bisects the worst quarter (rounded up) of its
  panels; the new rows of all examples go through the engine together, in
  its chunks. The baseline row (``alpha = 0``) is evaluated once per target
  when every example shares the baseline.

Refinement decisions depend on an example's own gradients only, never on
the chunking or on the other examples of the batch. What ``error`` reports
is an estimate: on trained digit classifiers the true error was 0.89 to
1.05 times it at the median and up to 1.33 times at the 95th percentile
(``docs/accuracy.md``; the prototype this follows saw up to 1.9), hence
``safety_factor``. The completeness delta
returned beside it is no measure of the per-feature error.
"""
from __future__ import annotations

import dataclasses
import math
from numbers import Real
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as v
from .. import ops
from ..engine import Request, accumulator_dtype, run, single_point_plan
from ..engine.model_form import check_model_form, model_in_form
from ..engine.outputs import FlatTarget, check_model_output, per_example_flags, target_outputs
from ._call import build_request, shape_output
from .integrated_gradients import delta_dtype
from .quadrature import nested_trapezoid_start

_SQRT_12 = math.sqrt(12.0)


class IGAccuracy(NamedTuple):
    """Per example, what :func:`adaptive_integrated_gradients` reached."""

    error: Tensor  # float64 [B]: estimated relative L2 error of the attribution (x safety_factor)
    steps: Tensor  # int64 [B]: points on the path where the gradient was taken
    converged: Tensor  # bool [B]: error <= rtol
    delta: Tensor  # [B] sum(attributions) - (f(x)[t] - f(baseline)[t]), the inputs' dtype (>= float32)


class _TargetOutputs:
    """The model, recording the target output of every row it runs (float64,
    in row order): the completeness delta's ``f(x)`` and ``f(baseline)`` come
    from the gradient rows at ``alpha = 1`` and ``alpha = 0``. Keeps the
    model it runs as ``.model``, as the library's wrappers do (the train-mode
    guard reads it; a fast copy is in eval mode, as the caller's model must
    be for the copy to be used)."""

    def __init__(self, model: Callable[..., Tensor], target: Any):
        self.model = model
        self.target = target
        self.flat: Optional[FlatTarget] = None
        self.values: List[Tensor] = []
        self.rows = 0

    def __call__(self, *args: Any) -> Tensor:
        out = self.model(*args)
        n = args[0].shape[0]
        if self.flat is None:
            self.flat = check_model_output(out, n, self.target)
        examples = None
        if isinstance(self.flat, Tensor):
            examples = torch.arange(self.rows, self.rows + n, device=self.flat.device)
        self.values.append(target_outputs(out.detach(), self.flat, examples))
        self.rows += n
        return out


def _check_rtol(rtol: Any, max_steps: Any, safety_factor: Any) -> Tuple[float, int, float]:
    if isinstance(rtol, bool) or not isinstance(rtol, Real) or not (0 < rtol < math.inf):
        raise ValueError(f"rtol: expected a finite number > 0 (a relative L2 error, e.g. 0.01), got {rtol!r}")
    max_steps = v.check_positive_int(max_steps, "max_steps", minimum=5)
    if (isinstance(safety_factor, bool) or not isinstance(safety_factor, Real)
            or not (0 < safety_factor < math.inf)):
        raise ValueError(f"safety_factor: expected a finite number > 0, got {safety_factor!r}")
    return float(rtol), max_steps, float(safety_factor)


def adaptive_integrated_gradients(
    model: Callable[..., Tensor],
    inputs: v.TensorOrTuple,
    baselines: v.BaselineType = None,
    target: v.TargetType = None,
    additional_forward_args: Any = None,
    rtol: float = 0.01,
    max_steps: int = 256,
    safety_factor: float = 1.0,
    multiply_by_inputs: bool = True,
    memory_budget: Optional[int] = None,
    chunk_rows: Optional[int] = None,
    model_form: str = "fast",
) -> Tuple[v.TensorOrTuple, IGAccuracy]:
    """Integrated gradients, each example's path refined until its estimated
    relative error is at most ``rtol`` (or ``max_steps`` points are used).

    Args:
        model, inputs, baselines, target, additional_forward_args,
            multiply_by_inputs, memory_budget, chunk_rows: as
            :func:`fastattr.integrated_gradients` (inputs ``[B, *F]`` or a tuple).
        model_form: ``"fast"`` or ``"eager"``, as :func:`fastattr.saliency`
            (not ``"compiled"``: each round has its own number of rows, and
            one compilation serves one chunk size).
        rtol: target relative L2 error of each example's attribution
            (all inputs' features together), as estimated (module docstring).
        max_steps: the most path points (gradient rows) per example, >= 5.
        safety_factor: the estimate is multiplied by this before it is
            compared with ``rtol`` and reported (the true / estimated ratio
            reached 1.33 at the 95th percentile in ``docs/accuracy.md``).

    Returns:
        ``(attributions, accuracy)``: attributions shaped and typed like
        ``inputs``; :class:`IGAccuracy` with ``error``, ``steps``,
        ``converged`` and ``delta``, each ``[B]``.

    Memory: besides the engine's chunks, the integrand at every path point
    of every example is kept (``B x steps x prod(F)`` values in the
    accumulation dtype) until the call returns.
    """
    rtol, max_steps, safety_factor = _check_rtol(rtol, max_steps, safety_factor)
    if check_model_form(model_form) == "compiled":
        raise ValueError("model_form: 'eager' or 'fast' with rtol (each refinement round has its own "
                         "number of rows, and one compilation serves one chunk size), got 'compiled'")
    req, was_tuple = build_request(
        model, inputs, target, additional_forward_args, lambda xs: single_point_plan("grad"),
        memory_budget, chunk_rows, baselines=baselines, needs_baselines=True,
    )
    # Every round's rows run the same form of the model, chosen once.
    runner = model_in_form(req.model, model_form, req.inputs, req.additional_args).model
    refine = _Refinement(req, runner, rtol, max_steps, safety_factor, bool(multiply_by_inputs))
    attributions, accuracy = refine.run()
    return shape_output(attributions, req.inputs, was_tuple), accuracy


class _Refinement:
    """The nested-panel state of a batch, padded over examples: per example
    ``n_nodes`` path points (their ``alpha`` and integrand ``h``, in the order
    they were added) and ``n_nodes - 1`` panels (left node, right node,
    width, error estimate)."""

    def __init__(self, req: Request, runner: Callable[..., Tensor], rtol: float, max_steps: int,
                 safety: float, times_difference: bool):
        self.req, self.rtol, self.max_steps, self.safety = req, rtol, max_steps, safety
        self.runner = runner  # the model in the form the rows run it in
        self.times_difference = times_difference
        xs = req.inputs
        self.batch, self.device = xs[0].shape[0], xs[0].device
        self.acc_dtypes = [accumulator_dtype(x.dtype) for x in xs]
        # x - baseline per example, for h = (x - b) * grad and for the path points.
        self.differences = tuple(x - b for x, b in zip(xs, req.baselines))
        self.batched_args = per_example_flags(req.additional_args)
        # Panels narrower than this have midpoints the inputs' dtype cannot
        # place on the path (alpha's grid): they are not bisected.
        self.min_width = max(torch.finfo(x.dtype).eps for x in xs)

    # -- gradients at path points ---------------------------------------------
    def gradients(self, examples: Tensor, alphas: Tensor, model: Callable[..., Tensor]) -> Tuple[Tensor, ...]:
        """The gradient of each row's target output at ``b + alpha (x - b)``:
        one ``[R, *F_i]`` per input for rows of example ``examples`` (int64
        ``[R]``) at ``alphas`` (float64 ``[R]``); ``alpha`` 0 and 1 are the
        baseline and the input themselves."""
        req = self.req
        points = []
        for x, base, diff in zip(req.inputs, req.baselines, self.differences):
            x_rows = x.index_select(0, examples)
            base_rows = base if base.shape[0] == 1 else base.index_select(0, examples)
            a = alphas.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
            inner = torch.addcmul(base_rows, a, diff.index_select(0, examples))
            points.append(torch.where(a == 1, x_rows, torch.where(a == 0, base_rows, inner)))
        target = req.target
        if isinstance(target, Tensor):
            target = target.index_select(0, examples)
        args = tuple(a.index_select(0, examples) if batched else a
                     for a, batched in zip(req.additional_args, self.batched_args))
        rows = dataclasses.replace(
            req, model=model, inputs=tuple(points), baselines=None, target=target,
            additional_args=args, activation_key=(req.model, None),
        )
        return run(rows).mean

    def integrand(self, grads: Tuple[Tensor, ...], examples: Tensor) -> Tuple[Tensor, ...]:
        """``h`` of each row: ``(x - b) * grad`` (or the gradient), in the accumulation dtype."""
        out = []
        for g, diff, dtype in zip(grads, self.differences, self.acc_dtypes):
            g = g.to(dtype)
            out.append(g * diff.index_select(0, examples).to(dtype) if self.times_difference else g)
        return tuple(out)

    # -- the first five points -------------------------------------------------
    def start(self) -> Tensor:
        """Evaluate ``alpha = 0, 1/4, 1/2, 3/4, 1`` for every example, fill
        nodes 0..4 and panels 0..3; return the float64 ``[B]`` gap
        ``f(x)[t] - f(baseline)[t]``."""
        req, batch, device = self.req, self.batch, self.device
        alphas, width = nested_trapezoid_start()
        every = torch.arange(batch, device=device)
        base_examples, owner = self.baseline_rows()
        interior = alphas[1:-1].to(device)
        # Rows: x (alpha = 1) of each example, the interior points, the baseline rows.
        examples = torch.cat([every, every.repeat_interleave(interior.shape[0]), base_examples])
        row_alphas = torch.cat([
            torch.ones(batch, dtype=torch.float64, device=device),
            interior.repeat(batch),
            torch.zeros(base_examples.shape[0], dtype=torch.float64, device=device),
        ])
        recorder = _TargetOutputs(self.runner, req.target if not isinstance(req.target, Tensor)
                                  else req.target.index_select(0, examples))
        grads = self.gradients(examples, row_alphas, recorder)
        f = torch.cat(recorder.values)
        n_interior = batch * interior.shape[0]
        # The baseline rows' gradients, spread to the examples that share them.
        base_grads = tuple(g[batch + n_interior:].index_select(0, owner) for g in grads)
        h_base = self.integrand(base_grads, every)
        h_rows = self.integrand(tuple(g[: batch + n_interior] for g in grads), examples[: batch + n_interior])
        self.allocate(5)
        for i, (h0, h) in enumerate(zip(h_base, h_rows)):
            self.h[i][:, 0] = h0
            self.h[i][:, 1:4] = h[batch:].view(batch, interior.shape[0], *h.shape[1:])
            self.h[i][:, 4] = h[:batch]
        self.alpha[:, :5] = alphas.to(device)
        self.n_nodes.fill_(5)
        self.left[:, :4] = torch.arange(4, device=device)
        self.right[:, :4] = torch.arange(1, 5, device=device)
        self.width[:, :4] = width
        self.panel_errors(every.repeat_interleave(4), torch.arange(4, device=device).repeat(batch))
        return f[:batch] - f[batch + n_interior:].index_select(0, owner)

    def baseline_rows(self) -> Tuple[Tensor, Tensor]:
        """``(examples, owner)``: the example of each baseline row to evaluate,
        and for each example the baseline row it takes. One row per distinct
        target when every input's baseline is shared and no extra argument
        differs per example; else one per example."""
        req, device = self.req, self.device
        every = torch.arange(self.batch, device=device)
        shared = all(b.shape[0] == 1 for b in req.baselines) and not any(self.batched_args)
        if not shared:
            return every, every
        if not isinstance(req.target, Tensor):
            return every[:1], torch.zeros_like(every)
        if req.target.dim() == 1:  # one index per example: unique's fast path
            distinct, owner = torch.unique(req.target, return_inverse=True)
        else:
            distinct, owner = torch.unique(req.target, dim=0, return_inverse=True)
        # The first example with each target stands for it (same rows, args, baseline).
        first = torch.full((distinct.shape[0],), self.batch, dtype=torch.int64, device=device)
        first.scatter_reduce_(0, owner, every, reduce="amin")
        return first, owner

    # -- panel bookkeeping -----------------------------------------------------
    def allocate(self, needed: int) -> None:
        """Room for ``needed`` nodes per example (zeros past the used ones),
        grown by doubling, up to ``max_steps``."""
        batch, device = self.batch, self.device
        if not hasattr(self, "h"):
            capacity = needed
            self.h = [torch.zeros((batch, capacity, *x.shape[1:]), dtype=d, device=device)
                      for x, d in zip(self.req.inputs, self.acc_dtypes)]
            self.alpha = torch.zeros((batch, capacity), dtype=torch.float64, device=device)
            self.n_nodes = torch.zeros(batch, dtype=torch.int64, device=device)
            self.left = torch.zeros((batch, capacity - 1), dtype=torch.int64, device=device)
            self.right = torch.zeros_like(self.left)
            self.width = torch.zeros((batch, capacity - 1), dtype=torch.float64, device=device)
            self.error = torch.zeros_like(self.width)
            return
        if needed <= self.alpha.shape[1]:
            return
        grow = max(needed, min(2 * self.alpha.shape[1], self.max_steps)) - self.alpha.shape[1]

        def pad(t: Tensor) -> Tensor:
            return torch.cat([t, t.new_zeros((batch, grow, *t.shape[2:]))], dim=1)

        self.h = [pad(h) for h in self.h]
        self.alpha, self.left, self.right = pad(self.alpha), pad(self.left), pad(self.right)
        self.width, self.error = pad(self.width), pad(self.error)

    def panel_errors(self, examples: Tensor, panels: Tensor) -> None:
        """Error estimates of panels ``panels`` of examples ``examples`` (int64 ``[P]`` each)."""
        left = self.left[examples, panels]
        right = self.right[examples, panels]
        sq = sum((h[examples, right] - h[examples, left]).reshape(examples.shape[0], -1)
                 .to(torch.float64).square().sum(1) for h in self.h)
        self.error[examples, panels] = sq.sqrt() * self.width[examples, panels] / _SQRT_12

    def attributions(self) -> Tuple[Tensor, ...]:
        """Each example's trapezoid sum ``sum_nodes weight * h``, ``[B, *F_i]``:
        a node's weight is half the width of each panel beside it; the sum
        runs serially in node order (ops.accumulate_), so it does not depend
        on the padding, that is on the other examples of the batch."""
        batch, capacity = self.alpha.shape
        weights = torch.zeros((batch, capacity), dtype=torch.float64, device=self.device)
        valid = torch.arange(capacity - 1, device=self.device) < (self.n_nodes - 1).unsqueeze(1)
        half = torch.where(valid, self.width / 2, torch.zeros_like(self.width))
        weights.scatter_add_(1, self.left, half).scatter_add_(1, self.right, half)
        ones = torch.ones(capacity, dtype=torch.float64, device=self.device)
        out = []
        for h in self.h:
            terms = h * weights.to(h.dtype).view(batch, capacity, *([1] * (h.dim() - 2)))
            acc = torch.zeros((batch, *h.shape[2:]), dtype=h.dtype, device=self.device)
            ops.accumulate_(acc, None, terms.reshape(batch * capacity, *h.shape[2:]), ones, 0, capacity, 0)
            out.append(acc)
        return tuple(out)

    def estimate(self, attributions: Tuple[Tensor, ...]) -> Tensor:
        """float64 ``[B]``: ``safety * sqrt(sum_panels error^2) / |IG|`` (0 where
        both are 0, inf where only the attribution is)."""
        panels = torch.arange(self.error.shape[1], device=self.device) < (self.n_nodes - 1).unsqueeze(1)
        spread = torch.where(panels, self.error, torch.zeros_like(self.error)).square().sum(1).sqrt()
        size = sum(a.reshape(self.batch, -1).to(torch.float64).square().sum(1) for a in attributions).sqrt()
        est = torch.where(spread == 0, torch.zeros_like(spread), self.safety * spread / size)
        return est

    def bisect(self, est: Tensor) -> bool:
        """Bisect the worst quarter of the panels of each example above
        ``rtol``; False when no example has a panel left to bisect."""
        device = self.device
        n_panels = self.n_nodes - 1
        capacity = self.error.shape[1]
        slots = torch.arange(capacity, device=device)
        selectable = (slots < n_panels.unsqueeze(1)) & (self.width >= 2 * self.min_width)
        wanted = torch.minimum((n_panels + 3) // 4, self.max_steps - self.n_nodes)
        count = torch.where(est > self.rtol, torch.minimum(wanted, selectable.sum(1)),
                            torch.zeros_like(wanted))
        total = int(count.sum())
        if total == 0:
            return False
        # Worst first; ties in index order (stable), the same on every device.
        key = torch.where(selectable, self.error, torch.full_like(self.error, -1.0))
        order = torch.sort(key, dim=1, descending=True, stable=True).indices
        chosen = slots < count.unsqueeze(1)  # [B, capacity]: rank < count
        examples, rank = chosen.nonzero(as_tuple=True)
        panels = order[examples, rank]
        new_node = self.n_nodes[examples] + rank
        new_panel = n_panels[examples] + rank
        self.allocate(int((self.n_nodes + count).max()))
        left, right = self.left[examples, panels], self.right[examples, panels]
        mid = (self.alpha[examples, left] + self.alpha[examples, right]) / 2
        grads = self.gradients(examples, mid, self.runner)
        for store, h in zip(self.h, self.integrand(grads, examples)):
            store[examples, new_node] = h
        self.alpha[examples, new_node] = mid
        half = self.width[examples, panels] / 2
        # Panel [l, r] becomes [l, m]; the new panel is [m, r].
        self.right[examples, panels] = new_node
        self.width[examples, panels] = half
        self.left[examples, new_panel] = new_node
        self.right[examples, new_panel] = right
        self.width[examples, new_panel] = half
        self.n_nodes += count
        self.panel_errors(torch.cat([examples, examples]), torch.cat([panels, new_panel]))
        return True

    def run(self) -> Tuple[Tuple[Tensor, ...], IGAccuracy]:
        req, batch, device = self.req, self.batch, self.device
        if batch == 0:
            empty = tuple(torch.zeros(x.shape, dtype=d, device=device) for x, d in zip(req.inputs, self.acc_dtypes))
            nothing = torch.zeros(0, dtype=torch.float64, device=device)
            return empty, IGAccuracy(nothing, nothing.long(), nothing.bool(),
                                     nothing.to(delta_dtype(req.inputs[0])))
        gap = self.start()
        while True:
            attributions = self.attributions()
            est = self.estimate(attributions)
            if not self.bisect(est):
                break
        total = sum(a.reshape(batch, -1).sum(1, dtype=torch.float64) for a in attributions)
        accuracy = IGAccuracy(
            error=est, steps=self.n_nodes.clone(), converged=est <= self.rtol,
            delta=(total - gap).to(delta_dtype(req.inputs[0])),
        )
        return attributions, accuracy
