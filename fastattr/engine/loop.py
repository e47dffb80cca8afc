"""The one forward/backward loop every gradient method runs on.

    plan (rows = examples x samples x steps) -> chunks sized to a byte budget
    for each chunk: generate rows (fused op) -> model fwd + one bwd
                    -> fold gradients into accumulators (fused op)
    finalize per (example, sample) -> mean (and mean of squares) over samples

Peak memory is one chunk. Rows are example-major and every fold is a serial
sum in row order, so the result does not depend on the chunk size (beyond the
model's own batch-size sensitivity).
"""
from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Hashable, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import ops
from . import budget as _budget
from .backward import input_gradients
from .._validate import FormattedTarget
from .outputs import FlatTarget, check_model_output, per_example_flags, rows_args, target_outputs
from .model_form import ModelForm, request_form
from .plan import PointPlan
from .train_mode import train_mode_guarded


@dataclass
class Request:
    """One explainer call, validated and formatted."""

    model: Callable[..., Tensor]
    inputs: Tuple[Tensor, ...]  # each [B, *F_i]
    baselines: Optional[Tuple[Tensor, ...]]  # each [1 or B, *F_i]; needed by path plans
    target: FormattedTarget  # as _validate.format_target; flat once the output is seen
    additional_args: Tuple[Any, ...]
    plan: PointPlan
    memory_budget: Optional[int] = None  # bytes per chunk; None: budget.default_budget
    chunk_rows: Optional[int] = None  # extra cap on rows per chunk
    want_deltas: bool = False  # convergence delta per (example, sample)
    # Backward rules (guided backprop, LRP, DeepLIFT...): a factory of a
    # context that installs them on the model; entered once around all
    # gradient chunks and exited (hooks removed) even when a chunk raises.
    # The convergence-delta endpoints are plain forwards, outside it.
    rules: Optional[Callable[[], ContextManager[Any]]] = None
    # Drawn references (GradientSHAP / expected gradients): group g (example
    # g // N, sample g % N) starts its path at row reference_rows[g] of the
    # baselines (then a distribution [M, *F]) and takes its one point at
    # group_alphas[g]; None: the example's own baseline and the plan's alphas.
    reference_rows: Optional[Tensor] = None  # int64 [B * N]
    group_alphas: Optional[Tensor] = None  # [B * N], the inputs' dtype
    # Per-sample attributions go to this sink instead of the mean over
    # samples: sink(attrs, g0, g1, inputs) gets groups g0 .. g1-1 (example
    # g // N, sample g % N), one [g1 - g0, *F_i] tensor per input, in order,
    # and a function returning the groups' sample inputs x_n (a tuple like
    # attrs; the chunk's own rows where they are the x_n, else remade from
    # their keys); metrics reduce them (e.g. to a norm per sample) without
    # keeping them all.
    sample_sink: Optional[Callable[[Tuple[Tensor, ...], int, int, Callable[[], Tuple[Tensor, ...]]], None]] = None
    # Chunks hold whole examples (a multiple of plan.points_per_example rows),
    # for rules that pair an example's rows inside one forward.
    whole_examples: bool = False
    # Where the gradient is taken, when not at the rows: called after each
    # chunk's forward, it returns the leaves that forward made (a layer's
    # activations, for layer methods), one [n, *L_j] tensor each; the
    # gradients, and the results, are then shaped like them. The rows are
    # passed to the model as they are (integer token ids too).
    leaves: Optional[Callable[[], Tuple[Tensor, ...]]] = None
    # Per-row products the plan's weighted sum cannot express (layer
    # conductance multiplies each step's gradient by the change of the layer
    # to the next step): row_transform(loop, grads, r0, r1) gets the chunk's
    # gradients at rows r0 .. r1-1 (shaped like the rows, or the leaves) and
    # returns what is folded instead, same shapes; ``loop`` gives the rows'
    # sample inputs and baselines (:meth:`_Loop.start_and_difference`). Called
    # in row order, so it may carry state from one chunk to the next.
    row_transform: Optional[Callable[["_Loop", Tuple[Tensor, ...], int, int], Tuple[Tensor, ...]]] = None
    # (owner, tag): measured activation sizes are cached under the owner
    # (weakly) and tag instead of under the model, for a model that is a
    # per-call wrapper of the caller's (layer methods), which would otherwise
    # be measured afresh on every call; the owner's parameters are what the
    # measure leaves out.
    activation_key: Optional[Tuple[object, Hashable]] = None
    # The form the chunk rows run the model in ("eager" | "fast" | "compiled",
    # see model_form.py); eager, with the reason, where it does not apply.
    model_form: str = "eager"


@dataclass
class Result:
    mean: Tuple[Tensor, ...]  # [B, *F_i]: mean over samples of the per-sample attributions (() with a sample_sink)
    mean_sq: Optional[Tuple[Tensor, ...]]  # [B, *F_i] mean of squares (plan.keep_square)
    # [B * n_samples], row b * n_samples + n: sum of sample n's attribution
    # minus f(x_n)[target] - f(baseline)[target] (path methods' completeness gap)
    deltas: Optional[Tensor]
    # The form the model ran in, and why it is not the one requested (None: it is).
    model_form: str = "eager"
    form_reason: Optional[str] = None


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32 and the half types accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=64)
def row_examples(r0: int, r1: int, per_example: int, device: torch.device) -> Tensor:
    """int64 ``[r1 - r0]``: the example of each row ``r0 .. r1-1``. Cached:
    read-only, and repeated calls of one workload chunk the same way."""
    return torch.arange(r0, r1, device=device) // per_example


@functools.lru_cache(maxsize=64)
def _constant(value: float, shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A read-only constant tensor (sample weights, the sample count), made once."""
    return torch.full(shape, value, dtype=dtype, device=device)


def sample_inputs(req: Request, i: int, g0: int, g1: int) -> Tensor:
    """``x_n`` of input ``i`` for (example, sample) groups ``g0 .. g1-1``: ``[g1-g0, *F]``."""
    plan, x = req.plan, req.inputs[i]
    if plan.noise == "none":
        if plan.n_samples == 1:
            return x if g1 - g0 == x.shape[0] else x[g0:g1]
        return x.index_select(0, row_examples(g0, g1, plan.n_samples, x.device))
    return ops.generate_rows(
        x, None, None, plan.n_samples, plan.noise, plan.noise_scales[i], plan.seed,
        plan.stream(i), g0, g1 - g0, plan.example_offset,
    )


def _group_baselines(req: Request, i: int, g0: int, g1: int) -> Tensor:
    """The baseline each of groups ``g0 .. g1-1`` starts from: ``[g1-g0 or 1, *F]``."""
    base = req.baselines[i]
    if req.reference_rows is not None:
        return base.index_select(0, req.reference_rows[g0:g1])
    if base.shape[0] == 1:
        return base
    n = req.plan.n_samples
    if n == 1:
        return base[g0:g1]
    examples = row_examples(g0, g1, n, base.device)
    return base.index_select(0, examples)


# Device copies of the plans' tensors (cached plans: the same alphas and step
# weights every call), so that a call copies nothing to the device: a copy
# from pageable host memory waits for the device's queue.
_DEVICE_COPIES: Dict[Tuple[int, torch.device], Tuple["weakref.ref[Tensor]", Tensor]] = {}
_DEVICE_COPIES_MAX = 256


def _plan_tensor_on(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``: a plan's tensor (never written), its copy cached per device."""
    if t.device == device:
        return t
    key = (id(t), device)
    hit = _DEVICE_COPIES.get(key)
    if hit is not None and hit[0]() is t:
        return hit[1]
    if len(_DEVICE_COPIES) >= _DEVICE_COPIES_MAX:
        _DEVICE_COPIES.clear()
    copy = t.to(device)
    _DEVICE_COPIES[key] = (weakref.ref(t), copy)
    return copy


@functools.lru_cache(maxsize=16)
def _one_hot_columns(shape: torch.Size, column: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Zeros shaped like the output (``[n, *O]``) with a one at flat column
    ``column`` of every row: the backward seed that selects the same output
    for every row. Cached: autograd only reads it, and every chunk of a call
    (and repeated calls) has the same one."""
    seed = torch.zeros(shape, dtype=dtype, device=device)
    seed.view(shape[0], math.prod(shape[1:]))[:, column] = 1
    return seed


class _Loop:
    """State of one run: the carried partial inner sum and the outer accumulators."""

    def __init__(self, req: Request):
        self.req = req
        plan = req.plan
        if req.leaves is not None and plan.sample_transform not in ("grad", "abs"):
            raise ValueError("Request.leaves: only the gradient transforms (the rows are not the leaves); "
                             "a Request.row_transform may multiply by the layer's values")
        self.form: ModelForm = request_form(req)
        self.model = self.form.model
        self.batch = req.inputs[0].shape[0]
        self.n_samples = plan.n_samples
        self.n_steps = plan.n_steps
        self.per_example = plan.points_per_example
        self.acc_dtypes = [accumulator_dtype(x.dtype) for x in req.inputs]
        device = req.inputs[0].device
        self.alphas = None if plan.alphas is None else _plan_tensor_on(plan.alphas, device)
        self.step_weights = _plan_tensor_on(plan.step_weights, device)
        self.target: Union[FormattedTarget, FlatTarget] = req.target  # flat once checked
        self.example_seeds: Optional[Tensor] = None  # [B, *O] one-hot of each example's target
        self.batch_args = per_example_flags(req.additional_args)
        self.needs_rows_examples = isinstance(self.target, Tensor) or (
            self.batch > 1 and any(self.batch_args)
        )
        # Per gradient tensor (an input's, or a leaf's: their number and
        # shapes are known once the first chunk ran): the partial inner sum
        # carried to the next chunk, the per-chunk results, the outer sums.
        self.carry: List[Optional[Tensor]] = []
        self.pieces: List[List[Tensor]] = []
        self.group_sums: List[Tensor] = []
        self.outer: Optional[List[Tensor]] = None
        self.outer_sq: Optional[List[Tensor]] = None
        self.averages = (self.n_samples > 1 or plan.keep_square) and req.sample_sink is None
        self.checked = False
        self.pairs: Dict[Tuple[int, int, int], Tuple[Tensor, Tensor]] = {}
        # Single-point plans: a chunk's rows are its groups' sample inputs x_n,
        # kept (rows r0, r1, the leaves) until the chunk is folded, so that
        # the fold need not remake them; detached only where they are used.
        self.rows_are_samples = plan.alphas is None and req.group_alphas is None and req.leaves is None
        self.chunk_rows_made: Optional[Tuple[int, int, Tuple[Tensor, ...]]] = None
        self.rows_after_oom: Optional[int] = None  # rows per chunk since a chunk ran out of memory

    # -- one chunk ---------------------------------------------------------
    def points(self, i: int, r0: int, n: int) -> Tensor:
        req = self.req
        plan, x = req.plan, req.inputs[i]
        if req.group_alphas is not None:
            # One point per group (S = 1): Captum's GradientShap point alpha x_n
            # + (1 - alpha) reference, as reference + alpha (x_n - reference): one
            # pass over the difference the attribution multiplies by anyway.
            alpha = req.group_alphas[r0 : r0 + n].view(-1, *([1] * (x.dim() - 1)))
            base, diff = self.start_and_difference(i, r0, r0 + n)
            return torch.addcmul(base, alpha, diff).requires_grad_()
        if plan.alphas is None and plan.noise == "none":
            # One row per example: the input itself, no copy needed.
            rows = (x if n == x.shape[0] else x[r0 : r0 + n]).detach()
            return rows if req.leaves is not None else rows.requires_grad_()
        base = self.req.baselines[i] if plan.alphas is not None else None
        rows = ops.generate_rows(
            x, base, self.alphas, plan.n_samples, plan.noise,
            plan.noise_scales[i] if plan.noise != "none" else 0.0,
            plan.seed, plan.stream(i), r0, n, plan.example_offset,
        )
        return rows.requires_grad_()

    def row_args(self, examples: Optional[Tensor], n: int) -> Tuple[Any, ...]:
        return rows_args(self.req.additional_args, self.batch_args, examples, n)

    def check_output(self, out: Any, n: int) -> None:
        req = self.req
        whole_call = n == self.batch * self.per_example and not req.want_deltas and req.sample_sink is None
        self.target = check_model_output(out, n, self.target, rows_may_differ=whole_call)
        if isinstance(self.target, Tensor) and self.batch == 1:
            self.target = int(self.target.item())
        self.checked = True

    def grad_outputs(self, out: Tensor, examples: Optional[Tensor]) -> Tensor:
        if isinstance(self.target, int):
            if out.dim() == 1:
                return torch.ones_like(out)
            return _one_hot_columns(out.shape, self.target, out.dtype, out.device)
        if self.example_seeds is None:
            flat = out.new_zeros(self.batch, out[0].numel()).scatter_(1, self.target.unsqueeze(1), 1)
            self.example_seeds = flat.view(self.batch, *out.shape[1:])
        if self.per_example == 1 and examples.shape[0] == self.batch:
            return self.example_seeds  # the rows are the examples, in order
        return self.example_seeds.index_select(0, examples)

    def gradients(self, r0: int, r1: int) -> Tuple[Tensor, ...]:
        n = r1 - r0
        pts = tuple(self.points(i, r0, n) for i in range(len(self.req.inputs)))
        if self.rows_are_samples:
            self.chunk_rows_made = (r0, r1, pts)
        examples = None
        if self.needs_rows_examples:
            examples = row_examples(r0, r1, self.per_example, pts[0].device)
        # enable_grad only when needed: entering it costs microseconds per
        # chunk, noticeable on a small model.
        if torch.is_grad_enabled():
            return self.forward_backward(pts, examples)
        with torch.enable_grad():
            return self.forward_backward(pts, examples)

    def forward_backward(self, pts: Tuple[Tensor, ...], examples: Optional[Tensor]) -> Tuple[Tensor, ...]:
        n = pts[0].shape[0]
        out = self.model(*pts, *self.row_args(examples, n))
        if not self.checked:
            self.check_output(out, n)
        wrt = pts if self.req.leaves is None else self.req.leaves()
        grads = input_gradients(out, wrt, self.grad_outputs(out, examples))
        if self.form.reuses_outputs:  # CUDA graphs overwrite them on the next chunk
            grads = tuple(g.clone() for g in grads)
        return grads

    # -- folding -----------------------------------------------------------
    def fold(self, grads: Tuple[Tensor, ...], r0: int, r1: int) -> None:
        s = self.n_steps
        if s == 1:
            self.finish_groups(list(grads), r0, r1)
            return
        g_first, g_last, g_done = r0 // s, (r1 - 1) // s, r1 // s
        inner = []
        weights = self.step_weights
        if not self.carry:
            self.carry = [None] * len(grads)
        for i, g in enumerate(grads):
            acc = torch.zeros(
                (g_last - g_first + 1, *g.shape[1:]), dtype=accumulator_dtype(g.dtype), device=g.device
            )
            if self.carry[i] is not None:
                acc[0] = self.carry[i]
            ops.accumulate_(acc, None, g, weights, r0, s, g_first)
            self.carry[i] = acc[g_done - g_first] if g_done <= g_last else None
            inner.append(acc if g_done - g_first == acc.shape[0] else acc[: g_done - g_first])
        if g_done > g_first:
            self.finish_groups(inner, g_first, g_done)

    def sample_rows(self, i: int, g0: int, g1: int) -> Tensor:
        """``x_n`` of input ``i`` for groups ``g0 .. g1-1``: the chunk's own
        rows when they are exactly those, else remade (:func:`sample_inputs`)."""
        made = self.chunk_rows_made
        if made is not None and made[0] == g0 and made[1] == g1:
            return made[2][i].detach()
        return sample_inputs(self.req, i, g0, g1)

    def start_and_difference(self, i: int, g0: int, g1: int) -> Tuple[Tensor, Tensor]:
        """``(baseline, x_n - baseline)`` of input ``i`` for groups ``g0 ..
        g1-1``. With drawn references a chunk's rows are its groups: the pair
        its points were made from is kept for its attributions instead of remade."""
        key = (i, g0, g1)
        if key not in self.pairs:
            base = _group_baselines(self.req, i, g0, g1)
            pair = (base, self.sample_rows(i, g0, g1) - base)
            if self.req.group_alphas is None:
                return pair
            self.pairs = {k: v for k, v in self.pairs.items() if k[1] >= g0}  # earlier chunks are done
            self.pairs[key] = pair
        return self.pairs[key]

    def finish_groups(self, inner: List[Tensor], g0: int, g1: int) -> None:
        """Per-sample attributions of groups ``g0 .. g1-1``, folded over samples."""
        req, plan = self.req, self.req.plan
        attrs = []
        for i, g in enumerate(inner):
            t = plan.sample_transform
            if t == "grad":
                a = g
            elif t == "abs":
                a = g.abs()
            elif t == "times_input":
                a = g * self.sample_rows(i, g0, g1)
            else:  # times_input_minus_baseline
                a = g * self.start_and_difference(i, g0, g1)[1]
            attrs.append(a)
        if req.sample_sink is not None:
            n_inputs = len(req.inputs)
            req.sample_sink(tuple(attrs), g0, g1,
                            lambda: tuple(self.sample_rows(i, g0, g1) for i in range(n_inputs)))
        if req.want_deltas:
            self.group_sums.append(
                sum(a.reshape(a.shape[0], -1).sum(1, dtype=torch.float64) for a in attrs)
            )
        if req.sample_sink is not None:
            return
        if not self.averages:
            if not self.pieces:
                self.pieces = [[] for _ in attrs]
            for i, a in enumerate(attrs):
                self.pieces[i].append(a)
            return
        if self.outer is None:
            self.outer = [a.new_zeros((self.batch, *a.shape[1:]), dtype=accumulator_dtype(a.dtype))
                          for a in attrs]
            if req.plan.keep_square:
                self.outer_sq = [torch.zeros_like(a) for a in self.outer]
        ones = _constant(1.0, (self.n_samples,), torch.float64, attrs[0].device)
        for i, a in enumerate(attrs):
            sq = self.outer_sq[i] if self.outer_sq is not None else None
            ops.accumulate_(self.outer[i], sq, a, ones, g0, self.n_samples, 0)

    # -- the whole run -----------------------------------------------------
    def run(self) -> Result:
        req = self.req
        total = self.batch * self.per_example
        if total == 0 and req.leaves is not None:
            # One forward over no rows tells the leaves' shapes.
            grads = self.gradients(0, 0)
            return Result(grads, None, None)
        if total == 0:
            empty = tuple(torch.zeros(x.shape, dtype=d, device=x.device)
                          for x, d in zip(req.inputs, self.acc_dtypes))
            deltas = torch.zeros(0, dtype=torch.float64, device=req.inputs[0].device)
            return Result(empty, empty if req.plan.keep_square else None,
                          deltas if req.want_deltas else None)
        with train_mode_guarded(req.model):
            if req.rules is None:
                chunk = self.chunks(total)
            else:
                with req.rules():  # removed again when a chunk raises
                    chunk = self.chunks(total)
            # Convergence-delta endpoints are plain forwards, outside the rules.
            return self.result(chunk)

    def chunks(self, total: int) -> int:
        """Evaluate and fold rows ``0 .. total-1`` chunk by chunk; return the
        rows per chunk."""
        req = self.req
        budget = req.memory_budget or _budget.default_budget(req.inputs[0].device)
        # Backward rules change what autograd saves per row: measured per rule set.
        rules = getattr(req.rules, "func", req.rules)
        owner, tag = req.activation_key or (req.model, None)
        inputs_sig, row_bytes = _budget.signature_and_row_bytes(req.inputs)
        sig = (inputs_sig, getattr(rules, "__qualname__", None), tag, self.form.form)
        measured = _budget.cached_activation_bytes(owner, sig)
        chunk = self.chunk_rows(budget, row_bytes, measured, total)
        if measured is not None:  # a compiled form serves this chunk size (never the measuring chunk)
            self.form.serve_rows(chunk)
        r0 = 0
        while r0 < total:
            r1 = min(total, r0 + chunk)
            try:
                if measured is None:
                    meter = _budget.SavedBytesMeter(_budget.model_storage_ptrs(owner) | self.form.own_storages)
                    with meter.measuring():
                        grads = self.gradients(r0, r1)
                    measured = -(-meter.total // (r1 - r0))
                    _budget.store_activation_bytes(owner, sig, measured)
                    chunk = self.chunk_rows(budget, row_bytes, measured, total)
                    self.form.serve_rows(chunk)
                else:
                    grads = self.gradients(r0, r1)
            except torch.OutOfMemoryError:
                # Nothing is folded before the backward ends: the same rows
                # again, in halves (the result changes only by the model's
                # batch-size rounding), down to one row (one example).
                unit = self.per_example if req.whole_examples else 1
                halved = _budget.rows_after_out_of_memory(r1 - r0, unit, req.inputs[0].device)
                if halved is None:
                    raise
                chunk = self.rows_after_oom = halved
                self.chunk_rows_made = None
                self.form.serve_rows(chunk)
                continue
            if req.row_transform is not None:
                grads = req.row_transform(self, grads, r0, r1)
            self.fold(grads, r0, r1)
            del grads
            self.chunk_rows_made = None
            r0 = r1
        return chunk

    def chunk_rows(self, budget: int, row_bytes: int, measured: Optional[int], total: int) -> int:
        """Rows per chunk within ``budget``; whole examples when the request asks."""
        rows = _budget.rows_per_chunk(budget, row_bytes, measured, total, self.req.chunk_rows)
        if self.rows_after_oom is not None:  # the rest of the call at the size that fit
            rows = min(rows, self.rows_after_oom)
        if self.req.whole_examples:
            rows = max(self.per_example, rows - rows % self.per_example)
        return rows

    def result(self, chunk: int) -> Result:
        """The folded sums as a :class:`Result`; ``chunk``: rows per forward
        for the convergence-delta endpoints."""
        req = self.req
        deltas = torch.cat(self.group_sums) - self.endpoint_gap(chunk) if req.want_deltas else None
        if req.sample_sink is not None:
            return Result((), None, deltas)
        if not self.averages:
            mean = tuple(p[0] if len(p) == 1 else torch.cat(p) for p in self.pieces)
            return Result(mean, None, deltas)
        # A 0-d tensor on the accumulators' device, not a Python number: CUDA
        # divides by a CPU scalar as a multiply by its reciprocal, which is
        # not the CPU's correctly rounded division.
        n = _constant(float(self.n_samples), (), self.outer[0].dtype, self.outer[0].device)
        mean = tuple(a / n for a in self.outer)
        mean_sq = tuple(a / n for a in self.outer_sq) if self.outer_sq is not None else None
        return Result(mean, mean_sq, deltas)

    # -- convergence delta ---------------------------------------------------
    def selected_outputs(self, rows: Tuple[Tensor, ...], examples: Tensor) -> Tensor:
        """float64 ``[n]``: the target output of the model at ``rows``."""
        n = rows[0].shape[0]
        out = self.model(*rows, *self.row_args(examples if self.batch > 1 else None, n))
        return target_outputs(out, self.target, examples)

    def reference_outputs(self, step: int) -> Tensor:
        """float64 ``[B * N]``: ``f(baseline)[t]`` of every (example, sample) group."""
        req, b, n = self.req, self.batch, self.n_samples
        device = req.inputs[0].device
        if req.reference_rows is not None:
            per_group = []
            for g0 in range(0, b * n, step):
                g1 = min(b * n, g0 + step)
                rows = tuple(_group_baselines(req, i, g0, g1) for i in range(len(req.inputs)))
                per_group.append(self.selected_outputs(rows, row_examples(g0, g1, n, device)))
            return torch.cat(per_group)
        per_example = []
        for e0 in range(0, b, step):
            e1 = min(b, e0 + step)
            rows = tuple(base.expand(b, *base.shape[1:])[e0:e1] for base in req.baselines)
            per_example.append(self.selected_outputs(rows, row_examples(e0, e1, 1, device)))
        return torch.cat(per_example).repeat_interleave(n)

    def endpoint_gap(self, step: int) -> Tensor:
        """float64 ``[B * N]``: ``f(x_n)[t] - f(baseline)[t]`` per (example,
        sample), evaluated ``step`` rows per forward."""
        req, b, n = self.req, self.batch, self.n_samples
        device = req.inputs[0].device
        with torch.no_grad():
            f_start = self.reference_outputs(step)
            end = []
            for g0 in range(0, b * n, step):
                g1 = min(b * n, g0 + step)
                ex = row_examples(g0, g1, n, device)
                rows = tuple(sample_inputs(req, i, g0, g1) for i in range(len(req.inputs)))
                end.append(self.selected_outputs(rows, ex))
            return torch.cat(end) - f_start


def run(req: Request) -> Result:
    """Evaluate ``req.plan`` on ``req.model`` chunk by chunk; see :class:`Result`."""
    loop = _Loop(req)
    result = loop.run()
    result.model_form, result.form_reason = loop.form.form, loop.form.reason
    return result
