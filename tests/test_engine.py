"""Engine-level tests: what every explainer gets from the one chunked engine.

* Same seed => bit-identical results for any ``memory_budget`` / ``chunk_rows``
  (chunks that split steps and samples unevenly), for every method, on both
  backends; the extension equals the reference bit for bit.
* An example's result does not depend on the other examples of its call.
  What is and is not invariant: deterministic methods (saliency, input x
  gradient, IG) give an example the same value at any index of any batch;
  the noise of SmoothGrad is keyed by ``(seed, input, example index, sample,
  element)``, so an example keeps its value when the *other* examples (or the
  batch size) change, but moving it to another index changes its noise.
* ``memory_budget`` really bounds a chunk; ``chunk_rows`` caps it.
* The caller's model and tensors come back unchanged, also when the call raises.
* Edge cases: ``no_grad``, inputs requiring grad, non-contiguous inputs, empty
  batch, batch 1, every float dtype, unused inputs, ``[B]`` / ``[B, 1]`` outputs.
* IG convergence deltas: exact for a linear model, shrinking with ``n_steps``.

Bit-identity claims need a model whose rows do not interact: real matmuls
round differently for different batch sizes. :class:`RowWise` computes each
output row from its own input row with elementwise ops and a per-row sum,
and :func:`assert_rowwise` checks that property where it is relied on. Real
models (MLP, conv net) are checked with a tight tolerance instead.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Sequence, Tuple

import pytest
import torch
from torch import Tensor, nn

import fastattr
from fastattr import _backend
from fastattr.testing import DTYPES, assert_bitwise_equal

IG_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
EXPLAINERS = ("saliency", "input_x_gradient", "integrated_gradients")

# Chunkings that split steps (S = 3..7) and samples (N = 3) unevenly, plus
# byte budgets (1 byte: one row per chunk) and both caps together. {} is the
# default budget: one chunk for these small problems.
CHUNKINGS: List[Dict[str, int]] = [
    dict(chunk_rows=1), dict(chunk_rows=2), dict(chunk_rows=3), dict(chunk_rows=7),
    dict(chunk_rows=13), dict(memory_budget=1),
    dict(memory_budget=3000), dict(memory_budget=2000, chunk_rows=5),
]


# ---------------------------------------------------------------------------
# Models and helpers
# ---------------------------------------------------------------------------


def _randn(*shape, seed: int = 0, dtype=torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


class RowWise(nn.Module):
    """``out[b, c] = sum_d tanh(x_i[b, d] * w_i[c, d] + v_i[c, d])`` summed over
    the inputs ``x_i``, times an optional per-example ``scale`` [B, 1].

    Elementwise ops and a sum within the row only: no output row, and no
    gradient row, depends on the other rows of the batch (see assert_rowwise).
    Parameters are cast to the input's dtype, so every float dtype works.
    """

    def __init__(self, *feature_shapes: Sequence[int], n_out: int = 3, seed: int = 0):
        super().__init__()
        self.w = nn.ParameterList()
        self.v = nn.ParameterList()
        for k, shape in enumerate(feature_shapes):
            d = math.prod(shape)
            self.w.append(nn.Parameter(_randn(n_out, d, seed=seed + 2 * k, dtype=torch.float64)))
            self.v.append(nn.Parameter(0.5 * _randn(n_out, d, seed=seed + 2 * k + 1, dtype=torch.float64)))

    def forward(self, *xs_and_scale: Tensor) -> Tensor:
        xs = xs_and_scale[: len(self.w)]
        out = None
        for x, w, v in zip(xs, self.w, self.v):
            flat = x.reshape(x.shape[0], 1, -1)  # [B, 1, D]
            term = torch.tanh(flat * w.to(x.dtype) + v.to(x.dtype)).sum(-1)  # [B, C]
            out = term if out is None else out + term
        if len(xs_and_scale) > len(self.w):
            out = out * xs_and_scale[len(self.w)].to(out.dtype)
        return out


def _plain_grads(model: Callable, xs: Tuple[Tensor, ...], target: Tensor) -> List[Tensor]:
    xs = tuple(x.detach().clone().requires_grad_() for x in xs)
    out = model(*xs)
    picked = out.gather(1, target.unsqueeze(1)).sum()
    return [out.detach()] + list(torch.autograd.grad(picked, xs))


def assert_rowwise(model: Callable, xs: Tuple[Tensor, ...], n_out: int = 3) -> None:
    """Check that the model's outputs and plain autograd gradients are bit-identical
    whether the rows are evaluated all at once or in batches of 1, 2, 3, 7 --
    the premise of every bit-identity claim in this file."""
    b = xs[0].shape[0]
    target = torch.arange(b) % n_out
    whole = _plain_grads(model, xs, target)
    for split in (1, 2, 3, 7):
        parts = [
            _plain_grads(model, tuple(x[i : i + split] for x in xs), target[i : i + split])
            for i in range(0, b, split)
        ]
        for k, w in enumerate(whole):
            assert_bitwise_equal(torch.cat([p[k] for p in parts]), w, f"split {split}, item {k}:")


def _flat(result: Any) -> List[Tensor]:
    """A method's result (tensor, tuple, (attributions, deltas)) as a flat list of tensors."""
    if isinstance(result, Tensor):
        return [result]
    out: List[Tensor] = []
    for r in result:
        out += _flat(r)
    return out


def _assert_same(a: Any, b: Any, msg: str = "") -> None:
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb), msg
    for k, (x, y) in enumerate(zip(fa, fb)):
        assert_bitwise_equal(x, y, f"{msg} [result {k}]")


def _assert_close(a: Any, b: Any, rtol: float, atol: float, msg: str = "") -> None:
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb), msg
    for x, y in zip(fa, fb):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"{msg}: {m}")


# A "case" is a function (model, inputs, **chunking) -> result, on the
# RowWise / MLP models above: inputs are a tensor [B, 5] or a tuple
# ([B, 5], [B, 2, 3]); targets are per example.


def _target(inputs) -> Tensor:
    b = (inputs[0] if isinstance(inputs, tuple) else inputs).shape[0]
    return torch.arange(b) % 3


def _case_saliency(abs_: bool):
    return lambda m, x, target=None, **kw: fastattr.saliency(
        m, x, target=_target(x) if target is None else target, abs=abs_, **kw)


def _case_ixg():
    return lambda m, x, target=None, **kw: fastattr.input_x_gradient(
        m, x, target=_target(x) if target is None else target, **kw)


def _baseline_like(x):
    """Per-example baselines, a function of each row alone (so they move with it)."""
    if isinstance(x, tuple):
        return tuple(_baseline_like(t) for t in x)
    return 0.25 * torch.sin(3 * x) - 0.1


def _case_ig(method: str, per_example_baseline: bool = False, n_steps: int = 7):
    def call(m, x, target=None, **kw):
        base = _baseline_like(x) if per_example_baseline else 0.5
        return fastattr.integrated_gradients(
            m, x, baselines=base, target=_target(x) if target is None else target, n_steps=n_steps, method=method,
            return_convergence_delta=True, **kw,
        )
    return call


def _case_sg(kind: str, explainer: str, seed: int = 7, n_samples: int = 3):
    def call(m, x, target=None, **kw):
        ekw: Dict[str, Any] = {}
        if explainer == "integrated_gradients":
            ekw = dict(n_steps=4, method="riemann_trapezoid", baselines=_baseline_like(x))
        elif explainer == "saliency":
            ekw = dict(abs=False)
        stdev = (0.3, 0.2) if isinstance(x, tuple) else 0.3
        return fastattr.smoothgrad(
            m, x, target=_target(x) if target is None else target, n_samples=n_samples, stdev=stdev, kind=kind,
            explainer=explainer, explainer_kwargs=ekw, seed=seed,
            return_convergence_delta=explainer == "integrated_gradients", **kw,
        )
    return call


CASES: Dict[str, Callable] = {
    "saliency_abs": _case_saliency(True),
    "saliency_signed": _case_saliency(False),
    "input_x_gradient": _case_ixg(),
    **{f"ig_{m}": _case_ig(m, per_example_baseline=(m == "riemann_middle")) for m in IG_METHODS},
    **{f"sg_{k}_{e}": _case_sg(k, e) for k in KINDS for e in EXPLAINERS},
}
RANDOM_CASES = [c for c in CASES if c.startswith("sg_")]
TUPLE_CASES = ["saliency_signed", "input_x_gradient", "ig_gausslegendre", "ig_riemann_middle",
               "sg_vargrad_integrated_gradients", "sg_smoothgrad_sq_input_x_gradient"]


def _inputs(tuple_inputs: bool, b: int = 4, seed: int = 1):
    x = _randn(b, 5, seed=seed)
    if not tuple_inputs:
        return x
    return x, _randn(b, 2, 3, seed=seed + 100)


def _rowwise_model(tuple_inputs: bool) -> RowWise:
    return RowWise((5,), (2, 3)) if tuple_inputs else RowWise((5,))


def _mlp(seed: int = 0, d_in: int = 5, hidden: int = 16, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 3)).to(dtype)


class Recorder(nn.Module):
    """Wraps a model; records each forward's batch size and, when ``measure``
    is on, the bytes autograd saves for backward during that forward (each
    storage once, the model's own parameters and buffers left out -- the
    way the engine's budget counts them)."""

    def __init__(self, inner: Callable, measure: bool = False, fail_on_call: int = 0):
        super().__init__()
        self.inner = inner
        self.measure = measure
        self.fail_on_call = fail_on_call
        self.sizes: List[int] = []
        self.saved: List[int] = []

    def forward(self, *args):
        self.sizes.append(args[0].shape[0])
        if self.fail_on_call and len(self.sizes) == self.fail_on_call:
            raise RuntimeError("model failed on purpose")
        if not self.measure:
            return self.inner(*args)
        seen = {t.untyped_storage().data_ptr() for t in list(self.parameters()) + list(self.buffers())}
        total = [0]

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total[0] += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = self.inner(*args)
        self.saved.append(total[0])
        return out


# ---------------------------------------------------------------------------
# The premise: RowWise really is row-independent
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rowwise_model_is_batch_independent(dtype):
    m = RowWise((5,), (2, 3))
    assert_rowwise(m, (_randn(13, 5, dtype=dtype), _randn(13, 2, 3, seed=3, dtype=dtype)))


# ---------------------------------------------------------------------------
# Same seed => bit-identical for any chunking
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_chunking_is_bit_identical(backend, case):
    model = _rowwise_model(False)
    x = _inputs(False)
    assert_rowwise(model, (x,))
    call = CASES[case]
    expected = call(model, x)
    for chunking in CHUNKINGS:
        _assert_same(call(model, x, **chunking), expected, f"{case} {chunking}")


@pytest.mark.parametrize("case", TUPLE_CASES)
def test_chunking_is_bit_identical_tuple_inputs(backend, case):
    model = _rowwise_model(True)
    xs = _inputs(True)
    assert_rowwise(model, xs)
    call = CASES[case]
    expected = call(model, xs)
    assert isinstance(expected, tuple)
    for chunking in (dict(chunk_rows=1), dict(chunk_rows=3), dict(chunk_rows=7), dict(memory_budget=2500)):
        _assert_same(call(model, xs, **chunking), expected, f"{case} {chunking}")


@pytest.mark.parametrize("case", ["saliency_signed", "ig_gausslegendre", "sg_vargrad_integrated_gradients",
                                  "sg_smoothgrad_input_x_gradient"])
def test_chunking_real_models_within_tolerance(backend, case):
    """A real MLP and conv net round differently per batch size: the chunked
    results agree with one chunk to float32 rounding (float64 to 1e-12)."""
    call = CASES[case]
    mlp64 = _mlp(dtype=torch.float64)
    x64 = _inputs(False, b=3).double()
    expected = call(mlp64, x64)
    for chunking in (dict(chunk_rows=7), dict(memory_budget=3000)):
        _assert_close(call(mlp64, x64, **chunking), expected, 1e-12, 1e-12, f"mlp64 {case} {chunking}")

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3))

    def conv_model(x):  # each [5] row repeated into a 5x5 image: [B, 1, 5, 5]
        return conv(x.unsqueeze(1).unsqueeze(1).expand(-1, 1, 5, 5))

    x = _inputs(False, b=3)
    expected = call(conv_model, x)
    for chunking in (dict(chunk_rows=2),):
        _assert_close(call(conv_model, x, **chunking), expected, 1e-5, 1e-5, f"conv {case} {chunking}")


# ---------------------------------------------------------------------------
# Batch composition, seeds, backends
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["saliency_abs", "input_x_gradient", "ig_riemann_left"] + RANDOM_CASES)
def test_example_result_independent_of_other_examples(backend, case):
    """Example 2 keeps its result (bit for bit) when the other examples, the
    batch size or the chunking change. Moved to another index, it keeps it
    only for deterministic methods: SmoothGrad's noise is keyed by the index."""
    model = _rowwise_model(False)
    call = CASES[case]
    x = _inputs(False, b=6)
    full = _flat(call(model, x))

    others = _inputs(False, b=6, seed=77)
    others[2] = x[2]
    changed = _flat(call(model, others, chunk_rows=5))
    shorter = _flat(call(model, x[:3], chunk_rows=2))
    for k, (f, c, s) in enumerate(zip(full, changed, shorter)):
        rows = slice(2, 3) if f.shape[0] == 6 else slice(2 * 3, 3 * 3)  # SG deltas: row b * N + n
        assert not torch.equal(f, c), "the other examples did change"
        assert_bitwise_equal(c[rows], f[rows], f"{case} other examples changed, result {k}:")
        assert_bitwise_equal(s[rows], f[rows], f"{case} batch of 3, result {k}:")

    order = [2, 0, 1, 3, 4, 5]
    at_zero = _flat(call(model, x[order], target=_target(x)[order]))[0][0]
    if case in RANDOM_CASES:
        assert not torch.equal(at_zero, full[0][2]), "noise is keyed by the example's index"
    else:
        assert_bitwise_equal(at_zero, full[0][2], f"{case} moved to index 0:")


@pytest.mark.parametrize("explainer", EXPLAINERS)
def test_seeds(backend, explainer):
    """Same seed: same bits, whatever the global RNG does (it is neither used
    nor advanced). Different seeds, including seeds that differ only in the
    high 32 bits: different results."""
    model = _rowwise_model(False)
    x = _inputs(False)
    kw = dict(target=1, n_samples=2, stdev=0.5, explainer=explainer,
              explainer_kwargs=dict(n_steps=3) if explainer == "integrated_gradients" else None)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = fastattr.smoothgrad(model, x, seed=5, **kw)
    assert torch.equal(torch.get_rng_state(), state), "smoothgrad must not draw from the global RNG"
    torch.manual_seed(2)
    _assert_same(fastattr.smoothgrad(model, x, seed=5, **kw), a, "same seed, other global RNG")
    results = [fastattr.smoothgrad(model, x, seed=s, **kw) for s in (0, 1, 2**32 + 1, 2**63 - 1)]
    for i in range(len(results)):
        for j in range(i):
            assert not torch.equal(results[i], results[j]), f"seeds #{i} and #{j} gave the same result"


def test_each_input_of_a_tuple_gets_its_own_noise(backend):
    shared = RowWise((5,))
    model = lambda a, b: shared(a) + shared(b)  # noqa: E731  symmetric in its inputs
    x = _inputs(False)
    a, b = fastattr.smoothgrad(model, (x, x.clone()), target=0, n_samples=2, stdev=0.5, explainer_kwargs=dict(abs=False))
    assert not torch.equal(a, b), "inputs 0 and 1 got the same noise"


@pytest.mark.skipif(not _backend.extension_available, reason="compiled extension fastattr._C is not built")
@pytest.mark.parametrize("case", list(CASES))
def test_extension_equals_reference_bitwise(case):
    call = CASES[case]
    for model, x in ((_mlp(), _inputs(False, b=5)), (_rowwise_model(True), _inputs(True, b=5))):
        if isinstance(x, tuple) and case not in TUPLE_CASES:
            continue
        for chunking in ({}, dict(chunk_rows=3)):
            with _backend.use("reference"):
                ref = call(model, x, **chunking)
            with _backend.use("extension"):
                ext = call(model, x, **chunking)
            _assert_same(ext, ref, f"{case} {chunking}")


# ---------------------------------------------------------------------------
# memory_budget and chunk_rows
# ---------------------------------------------------------------------------


def _wide_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 3))


def test_default_budget_gives_one_chunk_for_small_problems(backend):
    rec = Recorder(_mlp())
    x = _inputs(False)
    fastattr.saliency(rec, x, target=0)
    assert rec.sizes == [4]
    rec.sizes.clear()
    fastattr.integrated_gradients(rec, x, target=0, n_steps=50)
    assert rec.sizes == [200]
    rec.sizes.clear()
    fastattr.smoothgrad(rec, x, target=0, n_samples=5, explainer="integrated_gradients",
                        explainer_kwargs=dict(n_steps=10))
    assert rec.sizes == [200]


def test_gpu_default_budget_reads_total_not_free_memory(monkeypatch):
    """The default GPU chunk budget depends on the device alone: free memory
    (which changes between calls) is never read."""
    from fastattr.engine import budget

    class Properties:
        total_memory = 80 << 30

    def free_memory(*_):
        raise AssertionError("default_budget read the free memory")

    monkeypatch.setattr(torch.cuda, "mem_get_info", free_memory)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    assert budget.default_budget(torch.device("cuda", 0)) == 10 << 30
    assert budget.default_budget(torch.device("cpu")) == budget.DEFAULT_CPU_BUDGET


def test_chunk_rows_caps_every_chunk(backend):
    rec = Recorder(_mlp())
    x = _inputs(False)
    fastattr.integrated_gradients(rec, x, target=0, n_steps=50, chunk_rows=7)
    assert rec.sizes == [7] * 28 + [4]
    rec.sizes.clear()
    fastattr.smoothgrad(rec, x, target=0, n_samples=3, chunk_rows=5, memory_budget=10**9)
    assert rec.sizes == [5, 5, 2]


def test_memory_budget_bounds_saved_activations(backend):
    """After the first call has measured the model, every forward of a call
    with a small budget saves at most ``budget`` bytes for backward, the
    chunks are many and equal, and they are not needlessly small (each uses
    more than half the budget). (The first chunk of the first call is sized
    by a guess, before anything is measured: it is not bounded.)"""
    budget = 24_000  # about 10 rows of this model (~2 KB saved per row)
    rec = Recorder(_wide_mlp())
    x = _randn(5, 8)
    kw = dict(target=0, n_steps=30)
    fastattr.integrated_gradients(rec, x, memory_budget=budget, **kw)  # measures
    first_call = list(rec.sizes)
    rec.sizes.clear()
    rec.measure = True
    fastattr.integrated_gradients(rec, x, memory_budget=budget, **kw)
    assert sum(rec.sizes) == 150 and len(rec.sizes) >= 10, rec.sizes
    assert rec.sizes[:-1] == [rec.sizes[0]] * (len(rec.sizes) - 1), rec.sizes
    assert set(first_call[1:-1]) == {rec.sizes[0]}, ("the measured size is reused", first_call)
    assert max(rec.saved) <= budget, (rec.saved, budget)
    assert rec.saved[0] > budget / 2, (rec.saved, budget)

    # A smaller budget gives smaller chunks, a larger one larger chunks.
    rec.sizes.clear()
    rec.saved.clear()
    fastattr.integrated_gradients(rec, x, memory_budget=budget // 3, **kw)
    assert max(rec.saved) <= budget // 3, (rec.saved, budget // 3)
    small = rec.sizes[0]
    rec.sizes.clear()
    fastattr.integrated_gradients(rec, x, memory_budget=budget * 3, **kw)
    assert small < first_call[1] < rec.sizes[0]


def test_chunk_size_does_not_depend_on_batch_size(backend):
    """The rows a budget allows per chunk are a property of the model and the
    row shape, not of how many examples the call has. Saliency feeds the model
    views of the caller's input; measuring the whole storage of that input as
    if the chunk had saved it makes chunks shrink as the batch grows (and the
    inflated figure is cached for later calls of the same model)."""
    base = _mlp(d_in=8, hidden=64)
    sizes = {}
    for b in (400, 4000):
        rec = Recorder(copy.deepcopy(base), fail_on_call=3)  # the first two chunks suffice
        with pytest.raises(RuntimeError, match="on purpose"):
            fastattr.saliency(rec, _randn(b, 8), target=0, memory_budget=64 * 1024)
        sizes[b] = rec.sizes[1]
    assert sizes[400] == sizes[4000], f"rows per chunk after measuring, by batch size: {sizes}"


# ---------------------------------------------------------------------------
# The caller's things come back unchanged
# ---------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(5, 8)
        self.b = nn.Linear(8, 3)
        self.calls = 0

    def forward(self, x, fail_at: int = 0):
        self.calls += 1
        if fail_at and self.calls == fail_at:
            raise RuntimeError("model failed on purpose")
        return self.b(torch.tanh(self.a(x)))


def _snapshot(model: nn.Module, xs: Sequence[Tensor]) -> Dict[str, Any]:
    return dict(
        requires_grad=[p.requires_grad for p in model.parameters()],
        grads=[None if p.grad is None else (p.grad, p.grad.clone()) for p in model.parameters()],
        values=[p.detach().clone() for p in model.parameters()],
        hooks=[
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             len(m._backward_pre_hooks), len(m._state_dict_hooks))
            for m in model.modules()
        ],
        global_hooks=(len(torch.nn.modules.module._global_forward_hooks),
                      len(torch.nn.modules.module._global_forward_pre_hooks),
                      len(torch.nn.modules.module._global_backward_hooks)),
        training=[m.training for m in model.modules()],
        inputs=[(x.clone(), x.requires_grad, x.grad, x._version) for x in xs],
        grad_enabled=torch.is_grad_enabled(),
    )


def _assert_unchanged(before: Dict[str, Any], after: Dict[str, Any]) -> None:
    assert after["requires_grad"] == before["requires_grad"]
    for b, a in zip(before["grads"], after["grads"]):
        if b is None:
            assert a is None, "a parameter's .grad went from None to a tensor"
        else:
            assert a is not None and a[0] is b[0], "a parameter's .grad was replaced"
            assert torch.equal(a[1], b[1]), "gradients were accumulated into a parameter"
    for b, a in zip(before["values"], after["values"]):
        assert torch.equal(a, b)
    assert after["hooks"] == before["hooks"]
    assert after["global_hooks"] == before["global_hooks"]
    assert after["training"] == before["training"]
    for (xb, rgb, gb, vb), (xa, rga, ga, va) in zip(before["inputs"], after["inputs"]):
        assert_bitwise_equal(xa, xb, "input values")
        assert rga == rgb, "input requires_grad flag changed"
        assert ga is None and gb is None, "a gradient was written into an input's .grad"
        assert va == vb, "an input was modified in place"
    assert after["grad_enabled"] == before["grad_enabled"]


METHOD_CALLS = {
    "saliency": lambda m, x, **kw: fastattr.saliency(m, x, target=1, **kw),
    "input_x_gradient": lambda m, x, **kw: fastattr.input_x_gradient(m, x, target=1, **kw),
    "integrated_gradients": lambda m, x, **kw: fastattr.integrated_gradients(
        m, x, target=1, n_steps=4, return_convergence_delta=True, **kw),
    "smoothgrad": lambda m, x, **kw: fastattr.smoothgrad(
        m, x, target=1, n_samples=2, explainer="integrated_gradients",
        explainer_kwargs=dict(n_steps=3), **kw),
}


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("method", list(METHOD_CALLS))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_caller_state_comes_back_unchanged(backend, method, train, fails):
    net = _Net().train(train)
    net.a.weight.requires_grad_(False)  # a frozen parameter
    net.b.weight.grad = torch.full_like(net.b.weight, 0.5)  # a parameter with a gradient
    fired = []
    net.a.register_forward_hook(lambda *a: fired.append("fwd"))
    net.b.register_forward_pre_hook(lambda *a: None)
    net.b.register_full_backward_hook(lambda *a: None)
    x = _inputs(False, b=5)
    before = _snapshot(net, [x])
    model = (lambda inp: net(inp, fail_at=2)) if fails else net
    if fails:
        with pytest.raises(RuntimeError, match="on purpose"):
            METHOD_CALLS[method](model, x, chunk_rows=2)
    else:
        METHOD_CALLS[method](model, x, chunk_rows=2)
    assert fired, "the model ran with the caller's hooks in place"
    _assert_unchanged(before, _snapshot(net, [x]))


def test_batchnorm_in_train_mode_keeps_its_mode(backend):
    """fastattr does not switch the model to eval: a BatchNorm model in
    training mode is explained in training mode (batch statistics, so the
    values differ from eval) and comes back in training mode."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x = _inputs(False, b=6)
    net.eval()
    eval_result = fastattr.integrated_gradients(net, x, target=0, n_steps=4)
    net.train()
    before = _snapshot(net, [x])
    train_result = fastattr.integrated_gradients(net, x, target=0, n_steps=4)
    after = _snapshot(net, [x])
    assert all(after["training"])
    assert after["hooks"] == before["hooks"] and after["requires_grad"] == before["requires_grad"]
    assert not torch.allclose(train_result, eval_result), "ran in training mode"


# ---------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["saliency_abs", "input_x_gradient", "ig_gausslegendre",
                                  "sg_vargrad_integrated_gradients", "sg_smoothgrad_input_x_gradient"])
def test_outer_no_grad(backend, case):
    model = _rowwise_model(True)
    xs = _inputs(True)
    expected = CASES[case](model, xs)
    with torch.no_grad():
        got = CASES[case](model, xs, chunk_rows=3)
        assert not torch.is_grad_enabled()
    _assert_same(got, expected, case)


@pytest.mark.parametrize("case", ["saliency_abs", "input_x_gradient", "ig_gausslegendre",
                                  "sg_vargrad_integrated_gradients"])
def test_inputs_that_require_grad(backend, case):
    """Same bits as for plain inputs; the inputs keep requires_grad and get no
    .grad; the attributions are plain tensors (no graph back to the inputs),
    as they already are for saliency and smoothgrad."""
    model = _rowwise_model(True)
    xs = _inputs(True)
    expected = CASES[case](model, xs)
    leaves = tuple(x.clone().requires_grad_() for x in xs)
    got = CASES[case](model, leaves)
    _assert_same(tuple(t.detach() for t in _flat(got)), tuple(_flat(expected)), case)
    for x in leaves:
        assert x.requires_grad and x.grad is None
    for t in _flat(got):
        assert not t.requires_grad and t.grad_fn is None, f"{case}: a result carries a graph ({t.grad_fn})"


@pytest.mark.parametrize("case", ["saliency_signed", "input_x_gradient", "ig_riemann_middle",
                                  "sg_smoothgrad_sq_integrated_gradients", "sg_vargrad_input_x_gradient"])
def test_non_contiguous_inputs_equal_contiguous(backend, case):
    model = _rowwise_model(True)
    x0, x1 = _inputs(True, b=5)
    transposed = x0.t().contiguous().t()  # [5, 5] with strides (1, 5)
    sliced = _randn(5, 2, 6, seed=4)[:, :, ::2]  # [5, 2, 3] with a step of 2
    assert not transposed.is_contiguous() and not sliced.is_contiguous()
    expected = CASES[case](model, (transposed.contiguous(), sliced.contiguous()))
    got = CASES[case](model, (transposed, sliced), chunk_rows=4)
    _assert_same(got, expected, case)


def test_non_contiguous_baselines_and_args_equal_contiguous(backend):
    model = RowWise((5,))
    x = _inputs(False, b=5)
    base = _randn(5, 10, seed=3)[:, ::2]
    scale = _randn(5, 3, seed=5)[:, 1:2]  # [5, 1] with strides (3, 1)
    assert not base.is_contiguous() and not scale.is_contiguous()
    for fn in (
        lambda b, s, **kw: fastattr.integrated_gradients(model, x, baselines=b, target=1, n_steps=5,
                                                         additional_forward_args=(s,),
                                                         return_convergence_delta=True, **kw),
        lambda b, s, **kw: fastattr.smoothgrad(model, x, target=1, additional_forward_args=s,
                                               explainer="integrated_gradients",
                                               explainer_kwargs=dict(baselines=b, n_steps=3), **kw),
    ):
        _assert_same(fn(base, scale, chunk_rows=4), fn(base.contiguous(), scale.contiguous()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", list(METHOD_CALLS))
def test_empty_batch(backend, method, dtype):
    rec = Recorder(_rowwise_model(True))
    xs = (torch.empty(0, 5, dtype=dtype), torch.empty(0, 2, 3, dtype=dtype))
    for inputs in (xs[0], xs):
        out = METHOD_CALLS[method](rec, inputs)
        attrs = out[0] if method == "integrated_gradients" else out
        for a, x in zip(_flat(attrs), _flat(inputs)):
            assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
        assert isinstance(attrs, tuple) == isinstance(inputs, tuple)
        if method == "integrated_gradients":
            assert out[1].shape == (0,) and out[1].dtype == torch.promote_types(dtype, torch.float32)
    assert rec.sizes == [], "the model was called for an empty batch"


def test_empty_batch_smoothgrad_deltas(backend):
    rec = Recorder(_rowwise_model(False))
    attrs, deltas = fastattr.smoothgrad(rec, torch.empty(0, 5), target=torch.empty(0, dtype=torch.long),
                                        explainer="integrated_gradients", return_convergence_delta=True)
    assert attrs.shape == (0, 5) and deltas.shape == (0,) and rec.sizes == []


@pytest.mark.parametrize("case", ["saliency_abs", "input_x_gradient", "ig_riemann_trapezoid",
                                  "sg_vargrad_integrated_gradients"])
def test_batch_of_one_equals_row_of_batch(backend, case):
    model = _rowwise_model(True)
    xs = _inputs(True, b=4)
    full = _flat(CASES[case](model, xs))
    one = _flat(CASES[case](model, tuple(x[:1] for x in xs)))
    for f, o in zip(full, one):
        n = o.shape[0]  # 1 row, or n_samples delta rows
        assert_bitwise_equal(o, f[:n], case)


def test_batch_of_one_with_per_example_args(backend):
    model = RowWise((5,))
    x = _inputs(False, b=3)
    scale = _randn(3, 1, seed=8)
    full = fastattr.integrated_gradients(model, x, target=[2, 0, 1], additional_forward_args=scale,
                                         return_convergence_delta=True, n_steps=6)
    for i in range(3):
        one = fastattr.integrated_gradients(model, x[i:i + 1], target=torch.tensor([[2, 0, 1][i]]),
                                            additional_forward_args=scale[i:i + 1],
                                            return_convergence_delta=True, n_steps=6, chunk_rows=4)
        assert_bitwise_equal(one[0][0], full[0][i])
        assert_bitwise_equal(one[1][0], full[1][i])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", list(METHOD_CALLS))
def test_dtypes(backend, method, dtype):
    """Results come back in the input's dtype, close to the float64 result
    (the model itself runs in ``dtype``, so the error is the model's)."""
    model = _rowwise_model(False)
    x64 = _inputs(False).double()
    exact = _flat(METHOD_CALLS[method](model, x64))
    got = _flat(METHOD_CALLS[method](model, x64.to(dtype), chunk_rows=3))
    for g, e in zip(got, exact):
        want = dtype if g.shape == x64.shape else torch.promote_types(dtype, torch.float32)
        assert g.dtype == want and g.shape == e.shape
        tol = 30 * torch.finfo(dtype).eps * max(1.0, e.abs().max().item())
        torch.testing.assert_close(g.double(), e, rtol=0, atol=tol)


@pytest.mark.parametrize("case", list(CASES))
def test_unused_input_gets_zero_attributions(backend, case):
    used = RowWise((5,))
    model = lambda a, b: used(a)  # noqa: E731  b is never used
    xs = _inputs(True)
    attrs = _flat(CASES[case](model, xs))[1]
    assert attrs.shape == xs[1].shape and torch.count_nonzero(attrs) == 0


@pytest.mark.parametrize("method", list(METHOD_CALLS))
def test_single_output_models(backend, method):
    """``[B]`` output with target=None equals ``[B, 1]`` with target None or 0."""
    inner = RowWise((5,), n_out=1)
    x = _inputs(False)
    flat_out = lambda t: inner(t)[:, 0]  # noqa: E731  [B]
    col_out = inner  # [B, 1]
    results = []
    for m, target in ((flat_out, None), (col_out, None), (col_out, 0)):
        kw = dict(target=target)
        if method == "saliency":
            r = fastattr.saliency(m, x, **kw)
        elif method == "input_x_gradient":
            r = fastattr.input_x_gradient(m, x, **kw)
        elif method == "integrated_gradients":
            r = fastattr.integrated_gradients(m, x, n_steps=4, return_convergence_delta=True, **kw)
        else:
            r = fastattr.smoothgrad(m, x, n_samples=2, **kw)
        results.append(r)
    for r in results[1:]:
        _assert_same(r, results[0], method)


# ---------------------------------------------------------------------------
# IG convergence delta
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", IG_METHODS)
def test_convergence_delta_is_zero_for_a_linear_model(backend, method):
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    x = _inputs(False, b=6).double()
    base = _randn(6, 5, seed=5, dtype=torch.float64)
    attrs, delta = fastattr.integrated_gradients(lin, x, baselines=base, target=[0, 1, 2, 0, 1, 2],
                                                 n_steps=3, method=method, return_convergence_delta=True,
                                                 chunk_rows=4)
    assert delta.shape == (6,) and delta.dtype == torch.float64
    # Exact: the gradient is constant, so attributions are (x - base) * w times
    # the sum of the rule's step sizes: 1, except for Captum's trapezoid rule,
    # whose end steps are halved without widening the others, (n - 1) / n.
    # Delta = (that sum - 1) * (f(x) - f(base)): 0 except for the trapezoid.
    weight_sum = 2 / 3 if method == "riemann_trapezoid" else 1.0
    w = lin.weight[[0, 1, 2, 0, 1, 2]].detach()
    torch.testing.assert_close(attrs, (x - base) * w * weight_sum, rtol=1e-13, atol=1e-13)
    gap = ((x - base) * w).sum(1)
    torch.testing.assert_close(delta, (weight_sum - 1) * gap, rtol=1e-12, atol=1e-13)
    _, sg_delta = fastattr.smoothgrad(lin, x, target=1, n_samples=3, explainer="integrated_gradients",
                                      explainer_kwargs=dict(method=method, n_steps=2, baselines=base),
                                      return_convergence_delta=True)
    assert sg_delta.shape == (18,)
    if method != "riemann_trapezoid":
        assert sg_delta.abs().max().item() < 1e-13


@pytest.mark.parametrize("method,steps", [("riemann_trapezoid", (4, 16, 64)), ("riemann_middle", (4, 16, 64)),
                                          ("riemann_left", (4, 16, 64)), ("gausslegendre", (1, 2, 4))])
def test_convergence_delta_shrinks_with_n_steps(backend, method, steps):
    model = _mlp(dtype=torch.float64)
    x = 2 * _inputs(False, b=4).double()
    errors = []
    for n in steps:
        _, delta = fastattr.integrated_gradients(model, x, target=2, n_steps=n, method=method,
                                                 return_convergence_delta=True)
        errors.append(delta.abs().max().item())
    assert errors[0] > 1e-6, f"the model is curved enough to have a gap at {steps[0]} steps: {errors}"
    for a, b in zip(errors, errors[1:]):
        assert b < a / 2, f"{method}: |delta| at n_steps {steps} = {errors}"


# ---------------------------------------------------------------------------
# Backward rules and whole-example chunks (the hooks of issue 3's methods)
# ---------------------------------------------------------------------------


def _engine_request(model, x, **kw):
    from fastattr.attr._call import build_request
    from fastattr.attr.integrated_gradients import path_plan

    req, _ = build_request(
        model, x, 0, None, lambda xs: path_plan(5, "riemann_left", True), None,
        kw.pop("chunk_rows", None), baselines=None, needs_baselines=True, **kw,
    )
    return req


def test_rules_are_installed_for_every_chunk_and_removed_after(backend):
    from fastattr.engine import run

    rec = Recorder(_mlp())
    events: List[str] = []

    class Rules:
        def __enter__(self):
            events.append("enter")

        def __exit__(self, *exc):
            events.append("exit")

    def forward_hook(module, inp, out):
        events.append(f"forward {out.shape[0]}")

    rec.register_forward_hook(forward_hook)
    run(_engine_request(rec, _inputs(False), rules=Rules, chunk_rows=7, want_deltas=True))
    # Gradient chunks run inside the rules; the delta endpoints (plain forwards) after them.
    assert events[:6] == ["enter", "forward 7", "forward 7", "forward 6", "exit", "forward 4"]


def test_rules_are_removed_when_the_model_raises(backend):
    from fastattr.engine import run

    events: List[str] = []

    class Rules:
        def __enter__(self):
            events.append("enter")

        def __exit__(self, *exc):
            events.append("exit")

    def failing(x):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        run(_engine_request(failing, _inputs(False), rules=Rules))
    assert events == ["enter", "exit"]


@pytest.mark.parametrize("chunk_rows", [1, 3, 5, 7, 11])
def test_whole_example_chunks(backend, chunk_rows):
    from fastattr.engine import run

    rec = Recorder(_mlp())
    x = _inputs(False)
    whole = run(_engine_request(rec, x, chunk_rows=chunk_rows, whole_examples=True))
    # 5 points per example: chunks are the largest multiple of 5 within the cap, at least one example.
    per_chunk = max(5, chunk_rows - chunk_rows % 5)
    assert all(n % 5 == 0 and n <= max(5, chunk_rows) for n in rec.sizes)
    assert rec.sizes[0] == per_chunk
    split = run(_engine_request(_mlp(), x, chunk_rows=chunk_rows))
    for a, b in zip(whole.mean, split.mean):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("explainer", ["smoothgrad", "gradient_shap"])
def test_example_offset_keys_a_batch_as_part_of_a_data_set(backend, explainer):
    """A data set explained batch by batch, each batch passing the index of
    its first example, gives exactly the one-call result: the draws are keyed
    by the data-set index, not the position in the batch."""
    model = _rowwise_model(True)
    x = _inputs(True, b=7)

    def explain(inputs, offset):
        if explainer == "smoothgrad":
            return fastattr.smoothgrad(model, inputs, target=1, n_samples=3, stdev=0.4,
                                       explainer="integrated_gradients", explainer_kwargs=dict(n_steps=4),
                                       example_offset=offset)
        refs = (_randn(5, 5, seed=8), _randn(5, 2, 3, seed=9))
        return fastattr.gradient_shap(model, inputs, refs, target=1, n_samples=3, stdev=0.4,
                                      example_offset=offset)

    whole = explain(x, 0)
    for start, stop in [(0, 3), (3, 4), (4, 7)]:
        part = explain(tuple(t[start:stop] for t in x), start)
        for a, b in zip(part, whole):
            assert_bitwise_equal(a, b[start:stop])
    shifted = explain(tuple(t[3:] for t in x), 0)  # keyed as examples 0.. instead of 3..
    assert not torch.equal(shifted[0], whole[0][3:])
    with pytest.raises(ValueError, match="example_offset"):
        explain(x, -1)


class _RunsOutOfMemoryAbove(nn.Module):
    """The wrapped model, raising torch.OutOfMemoryError (as CUDA's allocator
    does) on a forward of more than ``limit`` rows; counts the row sizes."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.sizes = model, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"{x.shape[0]} rows do not fit")
        return self.model(x)


@pytest.mark.parametrize("name", ["integrated_gradients", "smoothgrad"])
def test_out_of_memory_chunk_is_retried_in_halves(backend, name):
    """A chunk that runs out of memory runs again in halves, the rest of the
    call at that size: the result equals a call made at that chunk size."""
    torch.manual_seed(0)
    model = _mlp().double()
    x = torch.randn(5, 5, dtype=torch.float64)
    call = {
        "integrated_gradients": lambda m, **kw: fastattr.integrated_gradients(m, x, target=1, n_steps=20, **kw),
        "smoothgrad": lambda m, **kw: fastattr.smoothgrad(m, x, target=1, n_samples=20, stdev=0.1, seed=3, **kw),
    }[name]
    flaky = _RunsOutOfMemoryAbove(model, limit=30)
    got = call(flaky, chunk_rows=100)
    assert flaky.sizes[:3] == [100, 50, 25] and max(flaky.sizes[2:]) == 25
    assert torch.equal(got, call(model, chunk_rows=25))


def test_out_of_memory_at_one_row_is_raised(backend):
    model = _RunsOutOfMemoryAbove(_mlp(), limit=0)
    with pytest.raises(torch.OutOfMemoryError):
        fastattr.saliency(model, torch.randn(3, 5), target=0)


def test_plan_tensors_are_copied_to_a_device_once():
    """The cached plans' alphas and weights: one device copy, reused by every call."""
    from fastattr.attr.integrated_gradients import path_plan
    from fastattr.engine import loop

    plan = path_plan(7, "gausslegendre", True)
    meta = torch.device("meta")
    first = loop._plan_tensor_on(plan.alphas, meta)
    assert first.device == meta and loop._plan_tensor_on(plan.alphas, meta) is first
    assert loop._plan_tensor_on(plan.alphas, torch.device("cpu")) is plan.alphas


def test_forward_rows_retry_out_of_memory_in_halves():
    from fastattr._validate import format_target
    from fastattr.engine import forward_rows

    model = _mlp().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    scales = torch.linspace(0.5, 1.5, 10, dtype=torch.float64)

    def rows_for(r0, r1):
        r = torch.arange(r0, r1)
        return (x[r // 10] * scales[r % 10].view(-1, 1),)

    flaky = _RunsOutOfMemoryAbove(model, limit=12)
    got = forward_rows(flaky, rows_for, 40, 10, (x,), format_target(2, 4, x.device), chunk_rows=40)
    assert flaky.sizes[:3] == [40, 20, 10] and max(flaky.sizes[2:]) == 10
    assert torch.equal(got, forward_rows(model, rows_for, 40, 10, (x,), format_target(2, 4, x.device), chunk_rows=10))
