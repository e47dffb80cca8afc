"""Every bad argument fails before any model compute, with a message that
starts with the argument's name (``"<name>: ..."``, the convention of
``fastattr._validate``).

The model is wrapped to count forward calls and, through a hook on its output,
backward passes. Arguments checkable up front must fail with 0 forwards.
What only the output can tell (its type, shape and dtype; a target out of
range for its width; a target for a ``[B]`` output) must fail after the first
forward and before any backward pass.

Each case runs on every explainer it applies to (``METHODS``) and on both
backends (the ``backend`` fixture).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import fastattr
from fastattr.engine.outputs import flat_target

B = 4


def _randn(*shape, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


X = _randn(B, 5)
X2 = _randn(B, 2, 3, seed=1)
_W = torch.tensor([1.0, -2.0, 0.5])


def _good_output(*xs: Tensor) -> Tensor:
    """``[rows, 3]``, differentiable in every input; any feature shape."""
    total = sum(torch.tanh(x.reshape(x.shape[0], -1)).sum(1, keepdim=True) for x in xs)
    return total * _W.to(total.dtype)


class Counting:
    """A model that counts its forward calls and the backward passes through
    its output. ``output`` turns the good output into the one under test."""

    def __init__(self, output: Callable[[Tensor], Any] = lambda out: out, n_extra: int = 0):
        self.output = output
        self.n_extra = n_extra  # trailing additional_forward_args to ignore
        self.forwards = 0
        self.backwards = 0

    def _count_backward(self, grad):
        self.backwards += 1

    def __call__(self, *args):
        self.forwards += 1
        xs = args[: len(args) - self.n_extra] if self.n_extra else args
        out = self.output(_good_output(*xs))
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._count_backward)
        return out


METHODS: Dict[str, Callable[..., Any]] = {
    "saliency": lambda model, **kw: fastattr.saliency(model, **{"inputs": X, "target": 1, **kw}),
    "input_x_gradient": lambda model, **kw: fastattr.input_x_gradient(model, **{"inputs": X, "target": 1, **kw}),
    "integrated_gradients": lambda model, **kw: fastattr.integrated_gradients(
        model, **{"inputs": X, "target": 1, "n_steps": 4, **kw}),
    "smoothgrad": lambda model, **kw: fastattr.smoothgrad(model, **{"inputs": X, "target": 1, **kw}),
    "smoothgrad_ig": lambda model, **kw: fastattr.smoothgrad(
        model, **{"inputs": X, "target": 1, "explainer": "integrated_gradients",
                  "explainer_kwargs": {"n_steps": 3}, **kw}),
}
IG_LIKE = ["integrated_gradients", "smoothgrad_ig"]


def _expect(which: str, exc: type, match: str, model: Counting = None, forwards: int = 0, **kw) -> Counting:
    """Call explainer ``which`` with ``kw`` changed; expect ``exc`` matching ``match``
    after exactly ``forwards`` forward calls and no backward pass."""
    model = model if model is not None else Counting()
    with pytest.raises(exc, match=match):
        METHODS[which](model, **kw)
    assert model.forwards == forwards, f"{model.forwards} forward calls before the error (expected {forwards})"
    assert model.backwards == 0, "a backward pass ran before the error"
    return model


def test_the_good_call_works(backend):
    """The cases below change one argument of a call that is valid as is."""
    for name in METHODS:
        model = Counting()
        METHODS[name](model)
        assert model.forwards >= 1 and model.backwards >= 1
        model = Counting()
        METHODS[name](model, inputs=(X, X2))
        assert model.forwards >= 1


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------

_nan = X.clone()
_nan[1, 2] = math.nan
_inf = X.clone()
_inf[3, 0] = -math.inf

INPUT_CASES = [
    pytest.param([[0.0] * 5] * B, TypeError, r"^inputs: expected a torch\.Tensor", id="list"),
    pytest.param(X.numpy(), TypeError, r"^inputs: expected a torch\.Tensor", id="ndarray"),
    pytest.param((X, 3.0), TypeError, r"^inputs\[1\]: expected a torch\.Tensor", id="tuple-with-number"),
    pytest.param((), ValueError, r"^inputs: .*non-empty", id="empty-tuple"),
    pytest.param(X.long(), TypeError, r"^inputs: expected a floating dtype", id="int64"),
    pytest.param((X, X2.to(torch.int32)), TypeError, r"^inputs\[1\]: expected a floating dtype", id="int32-in-tuple"),
    pytest.param(X > 0, TypeError, r"^inputs: expected a floating dtype", id="bool"),
    pytest.param(X.to(torch.complex64), TypeError, r"^inputs: expected a floating dtype", id="complex"),
    pytest.param(torch.tensor(1.0), ValueError, r"^inputs: .*batch dimension", id="0-d"),
    pytest.param((X, X2[:3]), ValueError, r"^inputs\[1\]: batch size 3 differs", id="batch-mismatch"),
    pytest.param(_nan, ValueError, r"^inputs: contains NaN or Inf", id="nan"),
    pytest.param(_inf, ValueError, r"^inputs: contains NaN or Inf", id="inf"),
    pytest.param((X, X2 * math.inf), ValueError, r"^inputs\[1\]: contains NaN or Inf", id="inf-in-tuple"),
    pytest.param((X, X2.to("meta")), ValueError, r"^inputs\[1\]: on meta, expected cpu", id="cpu-then-meta"),
    # The same mismatch the other way round: inputs[0] on meta must be
    # reported as a device mismatch too, not fail inside the finiteness check.
    pytest.param((X.to("meta"), X2), ValueError, r"^inputs(\[[01]\])?: .*(meta|cpu)", id="meta-then-cpu"),
]


@pytest.mark.parametrize("inputs,exc,match", INPUT_CASES)
@pytest.mark.parametrize("method", list(METHODS))
def test_bad_inputs(backend, method, inputs, exc, match):
    _expect(method, exc, match, inputs=inputs)


# ---------------------------------------------------------------------------
# baselines (integrated gradients, and smoothgrad over it)
# ---------------------------------------------------------------------------

BASELINE_CASES = [
    pytest.param(X, torch.zeros(B, 6), ValueError, r"^baselines: shape \(4, 6\) does not broadcast", id="no-broadcast-features"),
    pytest.param(X, torch.zeros(2, 5), ValueError, r"^baselines: shape \(2, 5\) does not broadcast", id="no-broadcast-batch"),
    pytest.param(X, torch.zeros(1, 1, 5), ValueError, r"^baselines: .*does not broadcast", id="too-many-dims"),
    pytest.param((X, X2), (0.0,), ValueError, r"^baselines: expected 2 baselines", id="tuple-too-short"),
    pytest.param((X, X2), (0.0, 0.0, 0.0), ValueError, r"^baselines: expected 2 baselines", id="tuple-too-long"),
    pytest.param(X, (0.0, 0.0), ValueError, r"^baselines: expected 1 baselines", id="tuple-for-tensor"),
    pytest.param((X, X2), (0.0, torch.zeros(2, 4)), ValueError, r"^baselines\[1\]: .*does not broadcast", id="tuple-item-shape"),
    pytest.param(X, torch.full((5,), math.nan), ValueError, r"^baselines: contains NaN or Inf", id="nan-tensor"),
    pytest.param((X, X2), (0.0, torch.full((2, 3), math.inf)), ValueError, r"^baselines\[1\]: contains NaN or Inf", id="inf-in-tuple"),
    pytest.param(X, math.nan, ValueError, r"^baselines: must be finite", id="nan-number"),
    pytest.param(X, -math.inf, ValueError, r"^baselines: must be finite", id="inf-number"),
    pytest.param(X, "zeros", TypeError, r"^baselines: expected a number or a tensor", id="str"),
    pytest.param(X, [0.0] * 5, TypeError, r"^baselines: expected a number or a tensor", id="list"),
    pytest.param(X, True, TypeError, r"^baselines: expected a number or a tensor", id="bool"),
    pytest.param(X, np.zeros(5), TypeError, r"^baselines: expected a number or a tensor", id="ndarray"),
    pytest.param(X, torch.zeros(5, dtype=torch.bool), TypeError, r"^baselines: expected a numeric dtype", id="bool-tensor"),
    pytest.param(X, torch.zeros(5, device="meta"), ValueError, r"^baselines: on meta, expected cpu", id="meta"),
]


@pytest.mark.parametrize("inputs,baselines,exc,match", BASELINE_CASES)
@pytest.mark.parametrize("method", IG_LIKE)
def test_bad_baselines(backend, method, inputs, baselines, exc, match):
    if method == "integrated_gradients":
        _expect(method, exc, match, inputs=inputs, baselines=baselines)
    else:
        _expect(method, exc, match, inputs=inputs,
                explainer_kwargs={"n_steps": 3, "baselines": baselines},
                stdev=0.1 if not isinstance(inputs, tuple) else (0.1, 0.1))


# ---------------------------------------------------------------------------
# target
# ---------------------------------------------------------------------------

TARGET_CASES_BEFORE = [
    pytest.param([0, 1, 2], ValueError, r"^target: expected 4 entries", id="list-too-short"),
    pytest.param(torch.tensor([0, 1, 2, 0, 1]), ValueError, r"^target: expected an integer tensor of one element .* or of shape \[4\]", id="tensor-too-long"),
    pytest.param(torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError, r"^target: expected an integer tensor", id="float-tensor"),
    pytest.param(torch.zeros(B, 1, dtype=torch.long), ValueError, r"^target: expected an integer tensor of one element .* or of shape \[4\]", id="2-d-tensor"),
    pytest.param(True, TypeError, r"^target: .*bool", id="bool"),
    pytest.param(torch.ones(B, dtype=torch.bool), TypeError, r"^target: expected an integer tensor", id="bool-tensor"),
    pytest.param(1.0, TypeError, r"^target: expected None, an int", id="float"),
    pytest.param("1", TypeError, r"^target: expected None, an int", id="str"),
    pytest.param([0, 1.0, 2, 0], TypeError, r"^target: list entries must be all ints or all tuples", id="list-with-float"),
    pytest.param([0, True, 2, 0], TypeError, r"^target: list entries must be all ints or all tuples", id="list-with-bool"),
    pytest.param(np.array([0, 1, 2, 0]), TypeError, r"^target: expected None, an int", id="ndarray"),
]

# Knowable only from the output's width: after one forward, before backward.
TARGET_CASES_AFTER_FORWARD = [
    pytest.param(3, r"^target: index out of range for output dim 1 of size 3 .*got 3\)", id="int-too-large"),
    pytest.param(-4, r"^target: index out of range for output dim 1 of size 3 .*got -4\)", id="int-too-negative"),
    pytest.param([0, 1, 5, 2], r"^target: index out of range .*got 5\)", id="list-too-large"),
    pytest.param(torch.tensor([0, -4, 1, 2]), r"^target: index out of range .*got -4\)", id="tensor-too-negative"),
    pytest.param(torch.tensor(7), r"^target: index out of range", id="0-d-tensor"),
    pytest.param(None, r"^target: required because the model returns 3 outputs", id="none-multi-output"),
]


@pytest.mark.parametrize("target,exc,match", TARGET_CASES_BEFORE)
@pytest.mark.parametrize("method", list(METHODS))
def test_bad_target_fails_before_forward(backend, method, target, exc, match):
    _expect(method, exc, match, target=target)


@pytest.mark.parametrize("target,match", TARGET_CASES_AFTER_FORWARD)
@pytest.mark.parametrize("method", list(METHODS))
def test_bad_target_fails_before_backward(backend, method, target, match):
    _expect(method, ValueError, match, target=target, forwards=1, chunk_rows=2)


@pytest.mark.parametrize("target", [0, -1, [0, 0, 0, 0], torch.zeros(B, dtype=torch.long)], ids=["int", "neg", "list", "tensor"])
@pytest.mark.parametrize("method", list(METHODS))
def test_target_for_single_output_model(backend, method, target):
    """A ``[B]`` output has no classes: any target is an error (after one forward)."""
    model = Counting(output=lambda out: out[:, 0])
    _expect(method, ValueError, r"^target: indexes 1 output dim\(s\), but the model's output \[n\] has 0 .*use target=None",
            model=model, forwards=1, target=target)


# ---------------------------------------------------------------------------
# additional_forward_args, memory_budget, chunk_rows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("args", [torch.ones(3, 1), (0.5, torch.ones(B + 1, 2)), (torch.ones(1, 2),)],
                         ids=["tensor", "tuple-second", "batch-1"])
@pytest.mark.parametrize("method", list(METHODS))
def test_additional_args_with_wrong_batch(backend, method, args):
    n_extra = len(args) if isinstance(args, tuple) else 1
    index = 1 if isinstance(args, tuple) and len(args) == 2 else 0
    _expect(method, ValueError, rf"^additional_forward_args\[{index}\]: .*have 4 rows",
            model=Counting(n_extra=n_extra), additional_forward_args=args)


@pytest.mark.parametrize("name,value", [
    ("memory_budget", 0), ("memory_budget", -1024), ("memory_budget", 1.5e9), ("memory_budget", True),
    ("memory_budget", "1GB"), ("chunk_rows", 0), ("chunk_rows", -3), ("chunk_rows", 2.0),
])
@pytest.mark.parametrize("method", list(METHODS))
def test_bad_chunking_arguments(backend, method, name, value):
    _expect(method, ValueError, rf"^{name}: expected an integer >= 1", **{name: value})


# ---------------------------------------------------------------------------
# integrated gradients: n_steps, method
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_steps", [0, -5, 2.5, "10", True, None], ids=str)
@pytest.mark.parametrize("method", IG_LIKE)
def test_bad_n_steps(backend, method, n_steps):
    if method == "integrated_gradients":
        _expect(method, ValueError, r"^n_steps: expected an integer >= 1", n_steps=n_steps)
    else:
        _expect(method, ValueError, r"^n_steps: expected an integer >= 1",
                explainer_kwargs={"n_steps": n_steps})


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"])
@pytest.mark.parametrize("method", IG_LIKE)
def test_riemann_needs_two_steps(backend, method, rule):
    kw = dict(n_steps=1, method=rule)
    if method == "integrated_gradients":
        _expect(method, ValueError, rf"^n_steps: the {rule} rule needs n_steps >= 2", **kw)
    else:
        _expect(method, ValueError, rf"^n_steps: the {rule} rule needs n_steps >= 2", explainer_kwargs=kw)


@pytest.mark.parametrize("rule", ["simpson", "Gausslegendre", None, ["riemann_left"]], ids=str)
@pytest.mark.parametrize("method", IG_LIKE)
def test_unknown_integration_method(backend, method, rule):
    if method == "integrated_gradients":
        _expect(method, ValueError, r"^method: expected one of", method=rule)
    else:
        _expect(method, ValueError, r"^method: expected one of", explainer_kwargs={"method": rule})


# ---------------------------------------------------------------------------
# smoothgrad
# ---------------------------------------------------------------------------

SMOOTHGRAD_CASES = [
    pytest.param(dict(n_samples=0), ValueError, r"^n_samples: expected an integer >= 1", id="n_samples-0"),
    pytest.param(dict(n_samples=-2), ValueError, r"^n_samples: expected an integer >= 1", id="n_samples-neg"),
    pytest.param(dict(n_samples=2.0), ValueError, r"^n_samples: expected an integer >= 1", id="n_samples-float"),
    pytest.param(dict(stdev=-0.1), ValueError, r"^stdev: expected finite numbers >= 0", id="stdev-neg"),
    pytest.param(dict(stdev=math.nan), ValueError, r"^stdev: expected finite numbers >= 0", id="stdev-nan"),
    pytest.param(dict(stdev=math.inf), ValueError, r"^stdev: expected finite numbers >= 0", id="stdev-inf"),
    pytest.param(dict(stdev="0.1"), ValueError, r"^stdev: expected finite numbers >= 0", id="stdev-str"),
    pytest.param(dict(stdev=torch.tensor([0.1, 0.2])), ValueError, r"^stdev: expected finite numbers >= 0", id="stdev-tensor"),
    pytest.param(dict(stdev=(0.1, 0.2)), ValueError, r"^stdev: expected 1 values", id="stdev-tuple-too-long"),
    pytest.param(dict(inputs=(X, X2), stdev=(0.1,)), ValueError, r"^stdev: expected 2 values", id="stdev-tuple-too-short"),
    pytest.param(dict(inputs=(X, X2), stdev=(0.1, -1.0)), ValueError, r"^stdev: expected finite numbers >= 0", id="stdev-tuple-neg"),
    pytest.param(dict(kind="mean"), ValueError, r"^kind: expected one of", id="kind"),
    pytest.param(dict(kind=None), ValueError, r"^kind: expected one of", id="kind-none"),
    pytest.param(dict(explainer="gradcam"), ValueError, r"^explainer: expected one of", id="explainer"),
    pytest.param(dict(explainer=fastattr.saliency), ValueError, r"^explainer: expected one of", id="explainer-function"),
    pytest.param(dict(explainer_kwargs={"n_steps": 5}), TypeError, r"^explainer_kwargs: \['n_steps'\] not accepted", id="kwargs-n_steps-for-saliency"),
    pytest.param(dict(explainer="input_x_gradient", explainer_kwargs={"abs": True}), TypeError, r"^explainer_kwargs: \['abs'\] not accepted", id="kwargs-abs-for-ixg"),
    pytest.param(dict(explainer="integrated_gradients", explainer_kwargs={"n_step": 5}), TypeError, r"^explainer_kwargs: \['n_step'\] not accepted", id="kwargs-typo-for-ig"),
    pytest.param(dict(explainer="integrated_gradients", explainer_kwargs={"target": 0}), TypeError, r"^explainer_kwargs: \['target'\] not accepted", id="kwargs-target"),
    # Not a mapping at all: must be reported as explainer_kwargs too.
    pytest.param(dict(explainer_kwargs=5), TypeError, r"^explainer_kwargs: ", id="kwargs-int"),
    pytest.param(dict(explainer_kwargs=["abs"]), TypeError, r"^explainer_kwargs: ", id="kwargs-list"),
    pytest.param(dict(seed=-1), ValueError, r"^seed: expected an integer in \[0, 2\*\*63\)", id="seed-neg"),
    pytest.param(dict(seed=2**63), ValueError, r"^seed: expected an integer in \[0, 2\*\*63\)", id="seed-too-large"),
    pytest.param(dict(seed=1.0), ValueError, r"^seed: expected an integer", id="seed-float"),
    pytest.param(dict(seed=True), ValueError, r"^seed: expected an integer", id="seed-bool"),
    pytest.param(dict(seed=None), ValueError, r"^seed: expected an integer", id="seed-none"),
    pytest.param(dict(return_convergence_delta=True), ValueError, r"^return_convergence_delta: only integrated_gradients", id="delta-with-saliency"),
    pytest.param(dict(explainer="input_x_gradient", return_convergence_delta=True), ValueError, r"^return_convergence_delta: only integrated_gradients", id="delta-with-ixg"),
]


@pytest.mark.parametrize("kwargs,exc,match", SMOOTHGRAD_CASES)
def test_bad_smoothgrad_arguments(backend, kwargs, exc, match):
    _expect("smoothgrad", exc, match, **kwargs)


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", [object(), 5, "model", None], ids=["object", "int", "str", "None"])
@pytest.mark.parametrize("method", list(METHODS))
def test_model_not_callable(backend, method, model):
    with pytest.raises(TypeError, match=r"^model: expected a callable"):
        METHODS[method](model)


class _CountingLinear(nn.Module):
    """A linear model that counts its forwards; by default its parameters live
    on the meta device (no data)."""

    def __init__(self, device: str = "meta"):
        super().__init__()
        self.lin = nn.Linear(5, 3, device=device)
        self.forwards = 0
        self.backwards = 0

    def forward(self, x):
        self.forwards += 1
        return self.lin(x)


@pytest.mark.parametrize("method", list(METHODS))
def test_model_parameters_on_another_device(backend, method):
    """CPU inputs, parameters on the meta device (the only second device a
    CPU-only machine has): rejected before the model runs."""
    model = _CountingLinear()
    _expect(method, ValueError, r"^model: parameter 'lin\.weight' is on meta but inputs are on cpu", model=model)


@pytest.mark.parametrize("method", list(METHODS))
def test_model_moved_after_a_good_call(backend, method):
    """The device check reads the model on every call: one that ran on the
    inputs' device and then moved away is rejected, not remembered as fine."""
    model = _CountingLinear("cpu")
    METHODS[method](model)
    model.to("meta")
    _expect(method, ValueError, r"^model: parameter 'lin\.weight' is on meta but inputs are on cpu", model=model,
            forwards=model.forwards)


OUTPUT_CASES = [
    pytest.param(lambda out: (out, out), TypeError, r"^model output: expected a tensor, got tuple", id="tuple"),
    pytest.param(lambda out: [out], TypeError, r"^model output: expected a tensor, got list", id="list"),
    pytest.param(lambda out: {"logits": out}, TypeError, r"^model output: expected a tensor, got dict", id="dict"),
    pytest.param(lambda out: out.detach().numpy(), TypeError, r"^model output: expected a tensor, got ndarray", id="ndarray"),
    pytest.param(lambda out: out.unsqueeze(2).expand(-1, -1, 2), ValueError,
                 r"^target: selects 2 values per example from the model's output \[n, 3, 2\]", id="3-d"),
    pytest.param(lambda out: out.sum(), ValueError, r"^model output: expected shape .*got \(\)", id="0-d"),
    pytest.param(lambda out: out[1:], ValueError, r"^model output: expected shape \[\d+, \.\.\.\] \(one entry per input row\)", id="one-row-short"),
    pytest.param(lambda out: torch.cat([out, out]), ValueError, r"^model output: expected shape \[\d+, \.\.\.\] \(one entry per input row\)", id="twice-the-rows"),
    pytest.param(lambda out: out.t(), ValueError, r"^model output: expected shape", id="transposed"),
    pytest.param(lambda out: out.long(), TypeError, r"^model output: expected a floating dtype, got torch\.int64", id="int64"),
    pytest.param(lambda out: out > 0, TypeError, r"^model output: expected a floating dtype, got torch\.bool", id="bool"),
]


@pytest.mark.parametrize("output,exc,match", OUTPUT_CASES)
@pytest.mark.parametrize("method", list(METHODS))
def test_bad_model_output_fails_before_backward(backend, method, output, exc, match):
    _expect(method, exc, match, model=Counting(output=output), forwards=1, chunk_rows=2)


@pytest.mark.parametrize("n", [3, 5000], ids=["read-as-list", "reduced"])
def test_target_range_check_on_both_paths(n):
    """Small target tensors are range-checked as a Python list, large ones by
    a reduction: both name the offending index."""
    target = torch.zeros(n, dtype=torch.int64)
    assert flat_target(target, (3,)) is target
    target[n // 2] = -4
    with pytest.raises(ValueError, match=r"^target: index out of range .*got -4\)"):
        flat_target(target, (3,))
    target[n // 2] = 3
    with pytest.raises(ValueError, match=r"^target: index out of range .*got 3\)"):
        flat_target(target, (3,))
    table = torch.zeros(n, 2, dtype=torch.int64)
    table[n // 2, 1] = 5
    with pytest.raises(ValueError, match=r"^target: index out of range for output dim 2 of size 4 .*got 5\)"):
        flat_target(table, (3, 4))
