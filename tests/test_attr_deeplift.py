"""DeepLIFT with ``captum_hooks=True`` (what the drop-in runs) equals
Captum 0.9 and a plain float64 reference; fastattr's default traced rules
are tested in tests/test_attr_deeplift_modern.py.

* models: tests/test_attr_guided.py's (conv net with BatchNorm in eval, an
  in-place nn.ReLU and MaxPool2d; an MLP with ReLU, Sigmoid, Tanh, ELU,
  LeakyReLU, Softplus; a two-input model with additional_forward_args; a
  ``[B]``-output model; a model calling one nn.ReLU twice), plus MaxPool1d /
  MaxPool3d nets and an MLP ending in nn.Softmax;
* the reference swaps every supported nonlinearity module for an autograd
  Function applying the rule to one (input, reference) pair, one example at
  a time; its max-pool rule unpools by autograd through the pool, and the
  ordinary gradient (``|delta_in| < eps``) is the module's autograd gradient.
  It models one Captum behaviour explicitly (see ``_PairRule``): a hooked
  module feeding another directly (ReLU -> MaxPool) rescales the second's
  *ordinary* output gradient, which is why Captum's (and so fastattr's)
  convergence deltas on such nets are ~1e-3, not ~1e-16;
* every baseline form, every target form, batch 1, ``chunk_rows=2`` on a
  batch of 3, convergence deltas, ``multiply_by_inputs=False``,
  ``custom_attribution_func`` with 1, 2 and 3 parameters, a large ``eps``;
* the drop-in class run by the same script as ``captum.attr.DeepLift``;
* no hook left after any call, also one where the model raises; bad input.

Measured (max |fastattr - other| / max |other|, against Captum and against
the reference; all 0 at batch 1, so the differences come from the batch
size ``chunk_rows`` gives the matmuls): float64 <= 1.1e-15; convergence
deltas <= 1.2e-16 x the largest per-example sum of |attributions|. The MLP,
whose six stacked rescale factors amplify those differences: float64 <=
2.4e-14 (deltas 2.3e-14). float32 is held to Captum's own float32 error
against float64, measured in the same run (it was 1.4e-4 on the MLP on an
AVX-512 CPU, fastattr's 2.0e-4), not to a constant: that error depends on
the CPU's vector width.
"""
from __future__ import annotations

import copy
import functools
from typing import Any, List, Tuple

import pytest
import torch
from torch import Tensor, nn

import captum.attr
from captum_cases import (
    _build, _delta_scale, _randn, assert_as_accurate_as_captum, assert_delta_as_accurate_as_captum,
    assert_same_attr, assert_same_delta, upcast,
)
from fastattr.attr.deeplift import RULES
from fastattr.attr.deeplift import deeplift as _deeplift
from fastattr.captum.deeplift import DeepLift
from test_attr_guided import (
    Case, Counting, RaiseOnSecondChunk, ReluConvNet, assert_unchanged, model_state,
    per_example_gradients, relu_case, swap_modules,
)

# Captum's module hooks and numbers, the mode this file holds to Captum.
deeplift = functools.partial(_deeplift, captum_hooks=True)

# Every rule test also runs the skipped-backward path (conftest.py).
pytestmark = [
    pytest.mark.usefixtures("rules_skip_at_every_size"),
    pytest.mark.filterwarnings(
        "ignore:Input Tensor .* did not already require gradients",
        "ignore:Setting forward, backward hooks",
    ),
]

# Each a few times the measured figure (module docstring). The MLP stacks six
# nonlinearities whose rescale factors (f(x) - f(r)) / (x - r) amplify the
# one-ulp differences a different batch size makes in its matmuls.
TOL_F64 = 6e-15
TOL_F64_DELTA = 8e-16
TOL_F64_MLP = 1.5e-13


def tols(name: str) -> Tuple[float, float]:
    """(attribution tolerance, delta tolerance) for float64 case ``name``
    (float32 is measured against Captum's own float32 error instead)."""
    return (TOL_F64_MLP, TOL_F64_MLP) if name == "mlp" else (TOL_F64, TOL_F64_DELTA)


# ---------------------------------------------------------------------------
# Models beyond tests/test_attr_guided.py's
# ---------------------------------------------------------------------------


class PoolNets(nn.Module):
    """(seq [B, 2, 12], vol [B, 1, 4, 4, 4]) -> [B, 3]: MaxPool1d and MaxPool3d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d, self.relu1, self.pool1d = nn.Conv1d(2, 3, 3), nn.ReLU(), nn.MaxPool1d(2)
        self.conv3d, self.relu3, self.pool3d = nn.Conv3d(1, 2, 2), nn.ReLU(), nn.MaxPool3d(2, ceil_mode=True)
        self.head = nn.Linear(3 * 5 + 2 * 8, 3)

    def forward(self, seq: Tensor, vol: Tensor) -> Tensor:
        a = self.pool1d(self.relu1(self.conv1d(seq))).flatten(1)
        b = self.pool3d(self.relu3(self.conv3d(vol))).flatten(1)
        return self.head(torch.cat((a, b), 1))


class SoftmaxMLP(nn.Module):
    """[B, 6] -> [B, 4] probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Softmax(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def dl_case(name: str, dtype: torch.dtype = torch.float64, batch: int = 3) -> Tuple[Case, Any]:
    """A case and a baseline in one of the forms Captum accepts."""
    if name == "pools":
        xs = (_randn((batch, 2, 12), dtype, 5), _randn((batch, 1, 4, 4, 4), dtype, 6))
        case = Case(_build(PoolNets, dtype), xs, [i % 3 for i in range(batch)])
        return case, (_randn((1, 2, 12), dtype, 7) * 0.3, -0.2)
    if name == "softmax":
        return Case(_build(SoftmaxMLP, dtype), _randn((batch, 6), dtype, 8), 1), 0.5
    case = relu_case(name, dtype, batch)
    xs = case.xs
    baselines = {
        "conv": _randn((1, *xs[0].shape[1:]), dtype, 9) * 0.5,
        "mlp": _randn(tuple(xs[0].shape), dtype, 10) * 0.5,
        "two_input": (0.1, _randn((1, 10), dtype, 11)),
        "scalar": 0.3,
        "reused": None,
    }[name]
    return case, baselines


# ---------------------------------------------------------------------------
# Reference: each nonlinearity applied to one (input, reference) pair
# ---------------------------------------------------------------------------


def _pool_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))


def _ordinary(module: nn.Module, pair: Tensor, grad_output: Tensor) -> Tensor:
    """The module's own (autograd) gradient at ``pair`` for ``grad_output``."""
    with torch.enable_grad():
        p = pair.detach().requires_grad_()
        return torch.autograd.grad(module(p.clone()), p, grad_output)[0]


def _rule(module: nn.Module, pair: Tensor, grad_output: Tensor, grad_input: Tensor, eps: float) -> Tensor:
    """DeepLIFT's gradient for ``module`` at an (input, reference) ``pair``
    ``[2, *F]``; ``grad_input`` is what it keeps where ``|delta_in| < eps``."""
    with torch.no_grad():
        y = module(pair.clone())
    dx = pair[0] - pair[1]
    if _pool_like(module):
        cross = torch.max(y[0], y[1])
        # unpooling to each row's argmax = the pool's own gradient
        unpool = _ordinary(module, pair, torch.stack((grad_output[0] * (cross - y[1]),
                                                      grad_output[1] * (y[0] - cross))))
        rescaled = ((unpool[0] + unpool[1]) / dx).expand_as(pair)
    else:
        rescaled = grad_output * (y[0] - y[1]) / dx
    m = torch.where(dx.abs() < eps, grad_input, rescaled)
    if isinstance(module, nn.Softmax):  # Captum's mean over the call (here: the pair)
        m = m - m.sum() / m.numel()
    return m


class _PairRule(torch.autograd.Function):
    """``second(first(pair))`` on a ``[2, *F]`` (input, reference) pair
    (``first`` may be None); backward: DeepLIFT's rules.

    Captum's hooks catch a module's output gradient with a tensor hook
    registered before the next module's input hook on the same tensor: when
    a hooked module feeds another directly (ReLU -> MaxPool), the first one's
    rescale branch sees the second's *ordinary* gradient, while autograd goes
    on with the rescaled one. The pair rule models exactly that."""

    @staticmethod
    def forward(ctx: Any, pair: Tensor, first: Any, second: nn.Module, eps: float) -> Tensor:
        ctx.save_for_backward(pair)
        ctx.first, ctx.second, ctx.eps = first, second, eps
        h = pair if first is None else first(pair.clone())
        return second(h.clone())

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tuple[Tensor, None, None, None]:
        (pair,) = ctx.saved_tensors
        first, second, eps = ctx.first, ctx.second, ctx.eps
        with torch.no_grad():
            h = pair if first is None else first(pair.clone())
        raw = _ordinary(second, h, g)
        m = _rule(second, h, g, raw, eps)
        if first is not None:
            m = _rule(first, pair, raw, _ordinary(first, pair, m), eps)
        return m, None, None, None


class _PairRuleModule(nn.Module):
    def __init__(self, first: Any, second: nn.Module, eps: float) -> None:
        super().__init__()
        # A tuple, not submodules: the swap below must not reach into them.
        self.rule, self.eps = (first, second), eps

    def forward(self, pair: Tensor) -> Tensor:
        return _PairRule.apply(pair, *self.rule, self.eps)


# Hooked modules that feed the next hooked module directly, per test model.
ADJACENT = {ReluConvNet: {"relu1": "pool"}, PoolNets: {"relu1": "pool1d", "relu3": "pool3d"}}


def rule_model(model: nn.Module, eps: float) -> nn.Module:
    """A copy of ``model`` with DeepLIFT's rules as autograd Functions."""
    fused = copy.deepcopy(model)
    for first, second in ADJACENT.get(type(model), {}).items():
        rule = _PairRuleModule(fused.get_submodule(first), fused.get_submodule(second), eps)
        setattr(fused, first, nn.Identity())
        setattr(fused, second, rule)
    return swap_modules(fused, lambda m: _PairRuleModule(None, m, eps) if type(m) in RULES else None)


def _ref_rows(case: Case, baselines: Any) -> List[Tensor]:
    """Per input, the reference rows ``[B, *F]`` the baselines stand for."""
    items = baselines if isinstance(baselines, tuple) else (baselines,) * len(case.xs)
    return [torch.zeros_like(x) + (0.0 if b is None else b) for x, b in zip(case.xs, items)]


def reference(case: Case, baselines: Any, eps: float = 1e-10, multiply_by_inputs: bool = True
              ) -> Tuple[Any, Tensor]:
    """float64 DeepLIFT of ``case`` and its convergence deltas, per example."""
    model = rule_model(case.model, eps)
    refs = _ref_rows(case, baselines)
    mult = per_example_gradients(model, case,
                                 lambda xs, b: tuple(torch.cat((x, r[b:b + 1])) for x, r in zip(xs, refs)))
    attrs = tuple(m * (x - r) for m, x, r in zip(mult, case.xs, refs)) if multiply_by_inputs else mult
    with torch.no_grad():
        args = case.afa or ()
        f_x, f_r = case.model(*case.xs, *args), case.model(*refs, *args)
        target = torch.tensor(case.target) if isinstance(case.target, list) else case.target
        if target is not None:
            t = (target if isinstance(target, Tensor) else torch.full((len(f_x),), target)).remainder(f_x.shape[1])
            f_x, f_r = f_x.gather(1, t[:, None])[:, 0], f_r.gather(1, t[:, None])[:, 0]
    deltas = sum(a.flatten(1).sum(1) for a in attrs) - (f_x - f_r)
    return (attrs if isinstance(case.inputs, tuple) else attrs[0]), deltas


def captum_deeplift(case: Case, baselines: Any, **kwargs: Any) -> Any:
    init = {k: kwargs.pop(k) for k in ("multiply_by_inputs", "eps") if k in kwargs}
    return captum.attr.DeepLift(case.model, **init).attribute(
        case.inputs, baselines, target=case.target, additional_forward_args=case.afa, **kwargs)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["conv", "mlp", "two_input", "scalar", "pools"])
def test_equals_captum_and_reference(backend: str, name: str) -> None:
    case, baselines = dl_case(name)
    inputs = tuple(x.clone() for x in case.xs)
    ours, d_ours = deeplift(case.model, case.inputs, baselines, case.target, case.afa,
                            return_convergence_delta=True, chunk_rows=2)
    assert all(torch.equal(a, b) for a, b in zip(case.xs, inputs)), "inputs modified"
    theirs, d_theirs = captum_deeplift(case, baselines, return_convergence_delta=True)
    tol, tol_delta = tols(name)
    assert_same_attr(ours, theirs, tol, f"{name} vs Captum")
    assert_same_delta(d_ours, d_theirs, ours, tol_delta, f"{name} delta vs Captum")
    ref, d_ref = reference(case, baselines)
    assert_same_attr(ours, ref, tol, f"{name} vs reference")
    assert_same_delta(d_ours, d_ref, ours, tol_delta, f"{name} delta vs reference")
    if name in ("mlp", "scalar"):  # affine maps and rescaled modules only: summation to delta
        assert d_ours.abs().max() <= tol_delta * _delta_scale(ours), f"{name}: {d_ours}"


@pytest.mark.parametrize("name", ["conv", "two_input"])
def test_local_and_custom_attribution(backend: str, name: str) -> None:
    case, baselines = dl_case(name)
    customs = [
        lambda m: tuple(2 * t for t in m),
        lambda m, x: tuple(t * x_ for t, x_ in zip(m, x)),
        lambda m, x, b: tuple(t * (x_ - b_) ** 2 for t, x_, b_ in zip(m, x, b)),
    ]
    runs: List[Tuple[dict, dict]] = [(dict(multiply_by_inputs=False), dict(multiply_by_inputs=False))]
    runs += [(dict(custom_attribution_func=f), dict(custom_attribution_func=f)) for f in customs]
    for ours_kw, theirs_kw in runs:
        ours, d_ours = deeplift(case.model, case.inputs, baselines, case.target, case.afa,
                                return_convergence_delta=True, chunk_rows=2, **ours_kw)
        theirs, d_theirs = captum_deeplift(case, baselines, return_convergence_delta=True, **theirs_kw)
        assert_same_attr(ours, theirs, TOL_F64, f"{name} {ours_kw}")
        assert_same_delta(d_ours, d_theirs, ours, TOL_F64_DELTA, f"{name} {ours_kw}")
    local = deeplift(case.model, case.inputs, baselines, case.target, case.afa, multiply_by_inputs=False)
    assert_same_attr(local, reference(case, baselines, multiply_by_inputs=False)[0], TOL_F64, "local")


def test_baseline_forms(backend: str) -> None:
    case, _ = dl_case("conv")
    x = case.inputs
    row = _randn((1, *x.shape[1:]), torch.float64, 12)
    for b in (None, 0.25, row, row.expand_as(x).contiguous() + _randn(x.shape, torch.float64, 13)):
        ours = deeplift(case.model, x, b, case.target, chunk_rows=2)
        assert_same_attr(ours, captum_deeplift(case, b), TOL_F64, f"baseline {type(b)}")
    # fastattr also takes a baseline without the batch dimension.
    assert_same_attr(deeplift(case.model, x, row[0], case.target),
                     deeplift(case.model, x, row, case.target), 0.0, "[*F] baseline")


def _float64_twin(case: Case, baselines: Any) -> Tuple[Case, Any]:
    """The same model, inputs and baselines, upcast to float64 (exactly)."""
    return Case(copy.deepcopy(case.model).double(), upcast(case.inputs), case.target, upcast(case.afa)), upcast(baselines)


@pytest.mark.parametrize("name", ["conv", "mlp", "two_input", "pools"])
def test_float32_and_batch_one(backend: str, name: str) -> None:
    """float32 against Captum's float32, both measured against float64 (the
    tolerance is Captum's own error in this run); float64 at batch one."""
    for dtype, batch in ((torch.float32, 3), (torch.float64, 1)):
        case, baselines = dl_case(name, dtype, batch)
        if isinstance(case.target, list):
            case.target = case.target[:batch]
        ours, d_ours = deeplift(case.model, case.inputs, baselines, case.target, case.afa,
                                return_convergence_delta=True, chunk_rows=2)
        theirs, d_theirs = captum_deeplift(case, baselines, return_convergence_delta=True)
        what = f"{name} {dtype} batch {batch}"
        if dtype == torch.float32:
            truth, d_truth = captum_deeplift(*_float64_twin(case, baselines), return_convergence_delta=True)
            assert_as_accurate_as_captum(ours, theirs, truth, what)
            assert_delta_as_accurate_as_captum(d_ours, d_theirs, d_truth, theirs, truth, what)
            continue
        tol, tol_delta = tols(name)
        assert_same_attr(ours, theirs, tol, what)
        assert_same_delta(d_ours, d_theirs, ours, tol_delta, what)


@pytest.mark.parametrize("eps", [0.1, 1.5])
def test_large_eps_keeps_ordinary_gradient(backend: str, eps: float) -> None:
    """With eps above some |x - r| at a nonlinearity, those entries keep the
    ordinary gradient (Captum's torch.where branch); fastattr divides by a
    nonzero stand-in there, made differently for eps <= 1 and above."""
    case, baselines = dl_case("mlp")
    small = case.model.net[0](case.inputs) - case.model.net[0](torch.as_tensor(baselines))
    assert (small.abs() < eps).any() and (small.abs() >= eps).any()
    ours = deeplift(case.model, case.inputs, baselines, case.target, eps=eps, chunk_rows=2)
    assert_same_attr(ours, captum_deeplift(case, baselines, eps=eps), TOL_F64_MLP, "eps vs Captum")
    assert_same_attr(ours, reference(case, baselines, eps=eps)[0], TOL_F64_MLP, "eps vs reference")


def test_maxpool_zero_difference_takes_each_rows_gradient(backend: str) -> None:
    """Where an example equals its reference at a max-pool input, Captum takes
    ``grad_input[0]`` (example 0's gradient for every row); fastattr takes the
    row's own, which the reference computes. Multipliers differ there only."""
    case, _ = dl_case("conv")
    baselines = case.inputs.clone()
    baselines[0] = 0.0  # examples 1 and 2 equal their reference
    ours = deeplift(case.model, case.inputs, baselines, case.target, multiply_by_inputs=False)
    ref = reference(case, baselines, multiply_by_inputs=False)[0]
    assert_same_attr(ours, ref, TOL_F64, "zero differences")


def test_softmax_normalizes_over_the_whole_batch(backend: str) -> None:
    case, baselines = dl_case("softmax")
    for kwargs in ({}, {"chunk_rows": 3}):
        ours, d_ours = deeplift(case.model, case.inputs, baselines, case.target,
                                return_convergence_delta=True, **kwargs)
        theirs, d_theirs = captum_deeplift(case, baselines, return_convergence_delta=True)
        assert_same_attr(ours, theirs, TOL_F64, f"softmax {kwargs}")
        assert_same_delta(d_ours, d_theirs, ours, TOL_F64_DELTA, "softmax")
    one, _ = dl_case("softmax", batch=1)  # one example: the pair's mean, as the reference
    assert_same_attr(deeplift(one.model, one.inputs, baselines, one.target), reference(one, baselines)[0],
                     TOL_F64, "softmax batch 1")
    with pytest.raises(ValueError, match="chunk_rows: must be None or >= the batch size 3"):
        deeplift(case.model, case.inputs, baselines, case.target, chunk_rows=2)
    with pytest.raises(ValueError, match="memory_budget: must be None for a model with nn.Softmax"):
        deeplift(case.model, case.inputs, baselines, case.target, memory_budget=1 << 30)


class ScaledInPlace(nn.Module):
    """[B, 6] -> [B, 3]; the nonlinearities' outputs are written in place
    after the modules return them (LeakyReLU's backward does not need them)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(6, 8), nn.LeakyReLU(0.2)
        self.fc2, self.act2 = nn.Linear(8, 8), nn.LeakyReLU(0.1)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.fc1(x))
        h.mul_(2.0)
        h = self.act2(self.fc2(h))
        h.add_(0.5)
        return self.fc3(h)


def test_outputs_written_in_place_after_the_module(backend: str) -> None:
    """The rules keep what they need of a call's input and output when the
    module returns (Captum keeps copies), so a later in-place write to the
    output changes nothing."""
    case = Case(_build(ScaledInPlace, torch.float64), _randn((3, 6), torch.float64, 14), [0, 2, 1])
    baselines = _randn((1, 6), torch.float64, 15)
    ours, d_ours = deeplift(case.model, case.inputs, baselines, case.target, return_convergence_delta=True,
                            chunk_rows=2)
    theirs, d_theirs = captum_deeplift(case, baselines, return_convergence_delta=True)
    assert_same_attr(ours, theirs, TOL_F64, "in-place writes vs Captum")
    assert_same_delta(d_ours, d_theirs, ours, TOL_F64_DELTA, "in-place writes delta vs Captum")


def test_module_called_twice_gets_each_calls_rule(backend: str) -> None:
    """Captum refuses a nonlinearity module used twice in one forward (its
    per-module state); fastattr keeps each call's state and gives the
    per-call rescale rule."""
    case, baselines = dl_case("reused")
    with pytest.raises(RuntimeError, match="used more than once"):
        captum_deeplift(case, baselines)
    ours = deeplift(case.model, case.inputs, baselines, case.target, chunk_rows=2)
    assert_same_attr(ours, reference(case, baselines)[0], TOL_F64, "reused ReLU")


def test_drop_in_script(backend: str) -> None:
    """The same script with ``captum.attr.DeepLift`` and ``fastattr.captum.DeepLift``."""
    conv, conv_base = dl_case("conv")
    two, two_base = dl_case("two_input")

    def script(cls: type) -> List[Any]:
        out: List[Any] = []
        dl = cls(conv.model)
        assert dl.has_convergence_delta() and dl.multiplies_by_inputs
        assert not cls(conv.model, multiply_by_inputs=False).multiplies_by_inputs
        for target in (3, -2, (1,), [0, 4, 2], torch.tensor([1, 1, 3]), torch.tensor(2)):
            out.append(dl.attribute(conv.inputs, conv_base, target=target))
        out.extend(dl.attribute(conv.inputs, 0.1, 1, None, True))
        out.append(cls(conv.model, False, 1e-3).attribute(conv.inputs, target=0))
        out.extend(cls(two.model).attribute(two.inputs, two_base, [2, 0, 1], two.afa,
                                            return_convergence_delta=True))
        out.append(cls(two.model).attribute(two.inputs, two_base, 1, two.afa,
                                            custom_attribution_func=lambda m: m))
        return out

    ours, theirs = script(DeepLift), script(captum.attr.DeepLift)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_same_attr(a, b, TOL_F64, f"call {i}")
    assert DeepLift.get_name() == captum.attr.DeepLift.get_name()


def test_model_left_unchanged_also_when_it_raises(backend: str) -> None:
    case, baselines = dl_case("conv")
    before = model_state(case.model)
    deeplift(case.model, case.inputs, baselines, case.target, chunk_rows=2, return_convergence_delta=True)
    DeepLift(case.model).attribute(case.inputs, baselines, target=case.target)
    assert_unchanged(before, case.model)

    raising = RaiseOnSecondChunk(case.model)
    before = model_state(raising)
    with pytest.raises(RuntimeError, match="failed mid-call"):
        deeplift(raising, case.inputs, baselines, case.target, chunk_rows=2)
    assert raising.calls == 2
    assert_unchanged(before, raising)

    case.model.conv1.weight.requires_grad_(False)
    case.model.train()
    before = model_state(case.model)
    deeplift(case.model, case.inputs, baselines, case.target)
    assert_unchanged(before, case.model)


def test_bad_input(backend: str) -> None:
    case, _ = dl_case("conv")
    model = Counting(case.model)
    x = case.inputs
    up_front = [
        (dict(model=lambda t: t.sum(1)), TypeError, "model: expected an nn.Module"),
        (dict(inputs=x.long()), TypeError, "inputs: expected a floating dtype"),
        (dict(baselines=torch.zeros(2, 3, 8, 8)), ValueError, "baselines: shape"),
        (dict(baselines=(0.0, 0.0)), ValueError, "baselines: expected 1 baselines"),
        (dict(target=[1, 2]), ValueError, "target: expected 3 entries"),
        (dict(eps=-1.0), ValueError, "eps: expected a finite number >= 0"),
        (dict(eps=float("nan")), ValueError, "eps: expected a finite number >= 0"),
        (dict(custom_attribution_func=3), TypeError, "custom_attribution_func: expected a callable"),
        (dict(custom_attribution_func=lambda a, b, c, d: a), ValueError,
         "custom_attribution_func: must take 1 to 3 arguments"),
        (dict(chunk_rows=0), ValueError, "chunk_rows: expected an integer >= 1"),
        (dict(model=Counting(nn.Sequential(nn.Flatten(), nn.Unflatten(1, (1, 192)),
                                           nn.MaxPool1d(2, return_indices=True)))),
         ValueError, r"model: module 'inner.2' \(MaxPool1d\) has return_indices=True"),
    ]
    for kwargs, err, msg in up_front:
        args = dict(model=model, inputs=x, target=1) | kwargs
        with pytest.raises(err, match=msg):
            deeplift(**args)
        assert model.forwards == 0, msg
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        DeepLift(lambda t: t)
    # What only the output (or the custom function's result) tells.
    with pytest.raises(ValueError, match="target: index out of range"):
        deeplift(model, x, target=5)
    with pytest.raises(ValueError, match=r"model output: expected shape \[6, \.\.\.\] \(one entry per row\)"):
        deeplift(nn.Sequential(case.model, nn.Flatten(0)), x, target=1)
    with pytest.raises(ValueError, match=r"target: selects 5 values per example"):
        deeplift(nn.Sequential(case.model, nn.Unflatten(1, (1, 5))), x, target=0)
    # An output [B, 5, 1] takes a class index, as Captum's selection does.
    torch.testing.assert_close(deeplift(nn.Sequential(case.model, nn.Unflatten(1, (5, 1))), x, target=1),
                               deeplift(model, x, target=1), rtol=0, atol=0)
    with pytest.raises(TypeError, match="custom_attribution_func: expected it to return a tuple of 1"):
        deeplift(model, x, target=1, custom_attribution_func=lambda m: m[0])


def _threshold_backward_calls(fn: Any) -> int:
    """How many times ``fn()`` runs a ReLU's ordinary backward."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == "aten::threshold_backward")


def test_relu_ordinary_backward_runs_only_where_kept(backend: str) -> None:
    """The rescale rule replaces a ReLU's gradient everywhere unless some
    ``|x - r| < eps`` keeps the ordinary one: only then does the ReLU's own
    backward run. Both give Captum's numbers."""
    model = _build(lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                         nn.Linear(8, 3)), torch.float64)
    x, target = _randn((4, 6), torch.float64, 7), torch.tensor([0, 1, 2, 0])
    base = torch.zeros_like(x)
    for eps, runs in ((1e-10, 0), (10.0, 2)):
        ours = deeplift(model, x, base, target, eps=eps)
        assert _threshold_backward_calls(lambda: deeplift(model, x, base, target, eps=eps)) == runs
        theirs = captum.attr.DeepLift(model, eps=eps).attribute(x, base, target=target)
        assert_same_attr(ours, theirs, TOL_F64_MLP, f"eps={eps}")
