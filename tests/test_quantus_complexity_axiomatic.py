"""Complexity metrics (Sparseness, Complexity, EffectiveComplexity) and
axiomatic metrics (Completeness, NonSensitivity, InputInvariance): the
fastattr.metrics functions against float64 references written per example
from the definitions, the Quantus 0.6 drop-ins against Quantus on the same
inputs (its ``np.random.uniform`` baselines patched to fastattr's keyed
draws), batch independence, chunking, bad input and the caller's objects.

Tolerances: complexity values are float64 sums of D terms, compared within
4 * D * eps of their scale (the summation-order bound); counts and flags
exactly. Flags that threshold a model output (NonSensitivity's
``|delta| < eps``, Completeness's ``gap == 0``) are compared exactly after
the test has measured that no output difference lies within 4x the model's
batch-size rounding (:func:`batch_size_sensitivity`) of the threshold, so
that chunking cannot flip one."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import quantus
from quantus.helpers.model.pytorch_model import PyTorchModel

from captum_cases import _build, numpy_uniform_returns
from fastattr.attr import input_x_gradient, saliency, smoothgrad
from fastattr.engine.draws import group_uniforms
from fastattr.metrics.axiomatic import (
    COMPLETENESS_FILL_STREAM, NON_SENSITIVITY_FILL_STREAM, all_close, completeness, input_invariance,
    mean_shifted_model, non_sensitivity,
)
from fastattr.metrics.complexity import effective_complexity, entropy_complexity, sparseness
from fastattr.quantus._axiomatic import Completeness, InputInvariance, NonSensitivity
from fastattr.quantus._complexity import Complexity, EffectiveComplexity, Sparseness

# Quantus's own warnings (parameterisation notes, NaN for empty masks, 0 / 0).
pytestmark = [pytest.mark.filterwarnings("ignore:::quantus")]
EPS = np.finfo(np.float64).eps


def t(arr):
    return torch.from_numpy(np.ascontiguousarray(arr))


def explanations(batch=5, seed=0):
    """``[B, 1, 6, 6]`` float64 with edge cases: example 1 all zero, 2 tied
    (rounded), 3 one feature holding everything, 4 constant."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, 1, 6, 6))
    a[1] = 0
    a[2] = np.round(a[2])
    a[3] = 0
    a[3, 0, 2, 3] = 5.0
    a[4] = 0.25
    return a


# ---------------------------------------------------------------------------
# Complexity
# ---------------------------------------------------------------------------


def ref_gini(a):
    out = []
    for row in a.reshape(len(a), -1):
        v = sorted(x + 1e-7 for x in row)
        n = len(v)
        out.append(sum((2 * (i + 1) - n - 1) * v[i] for i in range(n)) / (n * sum(v)))
    return np.array(out)


def ref_entropy(a):
    out = []
    for row in a.reshape(len(a), -1):
        total = sum(abs(x) for x in row)
        out.append(-sum(x / total * np.log(x / total + 1e-12) for x in row) if total else np.nan)
    return np.array(out)


def assert_close(got, expected, tol):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(expected)), (got, expected)
    ok = ~np.isnan(expected)
    assert (np.abs(got[ok] - expected[ok]) <= np.broadcast_to(tol, got.shape)[ok]).all(), (got, expected)


def test_complexity_functions_match_reference():
    a = np.abs(explanations())
    d = a[0].size
    assert_close(sparseness(t(a)), ref_gini(a), 4 * d * EPS)
    assert_close(entropy_complexity(t(a)), ref_entropy(a), 4 * d * EPS * np.log(d))
    counts = effective_complexity(t(a), 0.5)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [int((row > 0.5).sum()) for row in a.reshape(len(a), -1)]
    # The edge cases: an all-zero map is 0 sparse with NaN entropy; one
    # feature is maximally sparse with entropy 0; a constant map is 0 sparse.
    assert abs(sparseness(t(a))[1]) <= d * EPS and abs(sparseness(t(a))[4]) <= d * EPS
    assert torch.isnan(entropy_complexity(t(a))[1]) and entropy_complexity(t(a))[3].abs() < 1e-9
    assert abs(entropy_complexity(t(a))[4] + np.log(1 / d + 1e-12)) <= 4 * d * EPS
    for fn in (sparseness, entropy_complexity, lambda a: effective_complexity(a, 0.5)):
        whole = fn(t(a))
        for b in range(len(a)):
            assert torch.equal(fn(t(a[b:b + 1])).nan_to_num(-7), whole[b:b + 1].nan_to_num(-7))


def test_signed_entropy_is_nan_as_in_quantus():
    a = explanations()
    got = entropy_complexity(t(a))
    expected = quantus.Complexity(disable_warnings=True, abs=False, normalise=False)(
        model=None, x_batch=np.zeros_like(a), y_batch=np.zeros(len(a), int), a_batch=a.copy())
    assert np.array_equal(np.isnan(got.numpy()), np.isnan(expected))


@pytest.mark.parametrize("theirs,ours,kwargs", [
    (quantus.Sparseness, Sparseness, {}),
    (quantus.Sparseness, Sparseness, dict(abs=False)),
    (quantus.Complexity, Complexity, {}),
    (quantus.EffectiveComplexity, EffectiveComplexity, {}),
    (quantus.EffectiveComplexity, EffectiveComplexity, dict(eps=0.3)),
])
def test_complexity_drop_ins_equal_quantus(theirs, ours, kwargs):
    """Unnormalised on the whole batch, normalised one example at a time
    (Quantus normalises by the batch's maximum; it refuses a batch of
    all-zero or constant explanations, examples 1 and 4 alone, which fastattr scores)."""
    a = explanations()
    x, y = np.zeros_like(a), np.zeros(len(a), int)
    d = a[0].size
    for normalise in (False, True):
        calls = [slice(None)] if not normalise else [slice(b, b + 1) for b in range(len(a)) if b not in (1, 4)]
        for sl in calls:
            expected = theirs(disable_warnings=True, normalise=normalise, **kwargs)(
                model=None, x_batch=x[sl], y_batch=y[sl], a_batch=a[sl].copy())
            got = ours(normalise=normalise, **kwargs)(model=None, x_batch=x[sl], y_batch=y[sl], a_batch=a[sl])
            assert [type(v) for v in got] == [type(v) for v in expected]
            assert_close(got, expected, 4 * d * EPS * np.log(d))


def test_effective_complexity_compares_in_the_attributions_dtype():
    """float32 values at and just above float32(eps): counted as NumPy counts them."""
    eps = 1e-5
    at = np.float32(eps)
    a = np.array([[[[at, np.nextafter(at, np.float32(1)), np.nextafter(at, np.float32(0)), 1.0]]]],
                 dtype=np.float32)
    expected = quantus.EffectiveComplexity(disable_warnings=True, normalise=False)(
        model=None, x_batch=np.zeros_like(a), y_batch=np.zeros(1, int), a_batch=a.copy(), channel_first=True)
    assert EffectiveComplexity(normalise=False)(model=None, x_batch=np.zeros_like(a), y_batch=np.zeros(1, int),
                                                a_batch=a, channel_first=True) == expected == [2]


def test_effective_complexity_is_per_example():
    """Quantus divides by the batch's maximum before counting |a| > eps: an
    example's count falls when a larger explanation shares its batch. fastattr
    normalises per example: the count alone and in the batch are the same,
    and equal Quantus's count of it alone."""
    a = explanations()
    a[0] *= 1e5
    x, y = np.zeros_like(a), np.zeros(len(a), int)
    batch = EffectiveComplexity()(model=None, x_batch=x, y_batch=y, a_batch=a)
    theirs = quantus.EffectiveComplexity(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=a.copy())
    alone = EffectiveComplexity()(model=None, x_batch=x[2:3], y_batch=y[2:3], a_batch=a[2:3])
    theirs_alone = quantus.EffectiveComplexity(disable_warnings=True)(model=None, x_batch=x[2:3], y_batch=y[2:3],
                                                                      a_batch=a[2:3].copy())
    assert alone == [batch[2]] == theirs_alone
    assert theirs[2] < theirs_alone[0]


def test_complexity_explain_func_on_the_engine():
    model = _build(HalfNet, torch.float64)
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8))
    y = np.array([0, 1, 3])
    a = saliency(model, t(x), target=t(y)).numpy()
    got = Sparseness()(model=model, x_batch=x, y_batch=y, explain_func=saliency)
    for b in range(3):
        expected = quantus.Sparseness(disable_warnings=True)(model=model, x_batch=x[b:b + 1], y_batch=y[b:b + 1],
                                                             a_batch=a[b:b + 1].copy())
        assert_close(got[b:b + 1], expected, 4 * 64 * EPS)


# ---------------------------------------------------------------------------
# Models and the float64 references of the axiomatic metrics
# ---------------------------------------------------------------------------


class HalfNet(nn.Module):
    """[B, 1, 8, 8] -> [B, 4], reading the left half (columns 0-3) only: the
    right half's features change nothing and their saliency is exactly 0."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 6 * 2, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x[..., :4])).flatten(1))


def unpadded_net():
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def padded_net():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 4))


def case32(batch=4, seed=3):
    model = _build(HalfNet, torch.float32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
    y = np.arange(batch) % 4
    a = saliency(model, t(x), target=t(y)).numpy()
    a[-1] = rng.standard_normal((1, 8, 8))  # an explanation that breaks the axiom
    return model, x, y, a


def fill_of(x, baseline):
    flat = x.reshape(len(x), -1)
    if baseline == "black":
        return flat.min(1)
    if baseline == "white":
        return flat.max(1)
    if baseline == "mean":
        return flat.mean(1)
    return np.full(len(x), baseline)


def outputs(model, rows, softmax):
    with torch.no_grad():
        out = model(rows)
    return torch.softmax(out, 1) if softmax else out


def ref_replaced_outputs(model, x, y, fills, step, softmax):
    """float64 [B, 1 + K]: per example the clean output, then one model call
    per group of ``step`` flat features replaced by ``fills[b, k]``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    model = copy.deepcopy(model).double()
    d = x[0].numel()
    groups = -(-d // step)
    out = np.zeros((len(x), groups + 1))
    for b in range(len(x)):
        out[b, 0] = outputs(model, x[b:b + 1], softmax)[0, y[b]].item()
        for k in range(groups):
            row = x[b].clone().reshape(-1)
            row[k * step:(k + 1) * step] = float(fills[b, k])
            out[b, k + 1] = outputs(model, row.view(1, *x.shape[1:]), softmax)[0, y[b]].item()
    return out


def ref_non_sensitivity(model, x, y, a, fills, step, eps, softmax):
    out = ref_replaced_outputs(model, x, y, fills, step, softmax)
    counts = []
    for b in range(len(x)):
        flat = np.broadcast_to(a[b], x[b].shape).reshape(-1)
        counts.append(sum(int((abs(out[b, 1 + j // step] - out[b, 0]) < eps) != (flat[j] < eps))
                          for j in range(len(flat))))
    return counts, out


def batch_size_sensitivity(model, x, softmax, sizes=range(1, 70, 7)):
    """The largest change of an output when its row runs in a batch of
    another size (0 where this CPU's kernels round alike at every size)."""
    worst = 0.0
    ref = outputs(model, x, softmax)
    for size in sizes:
        rows = x.repeat(-(-size // len(x)), 1, 1, 1)[:size]
        k = min(size, len(x))
        worst = max(worst, (outputs(model, rows, softmax)[:k] - ref[:k]).abs().max().item())
    return worst


def assert_clear_of_threshold(deltas, eps, model, x, softmax):
    """No output change within 4x the batch-size rounding (plus one float32
    ulp of the outputs) of ``eps``: a flag can then not depend on chunking."""
    margin = 4 * batch_size_sensitivity(model, x, softmax) + 2 * np.finfo(np.float32).eps
    assert np.min(np.abs(np.abs(deltas) - eps)) > margin


# ---------------------------------------------------------------------------
# NonSensitivity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 4, 5, 64])  # 5: a short last group
@pytest.mark.parametrize("baseline", ["black", 0.3])
def test_non_sensitivity_matches_reference(step, baseline):
    model, x, y, a = case32()
    x64, a64 = x.astype(np.float64), np.abs(a).astype(np.float64)
    groups = -(-64 // step)
    fills = np.repeat(fill_of(x64, baseline)[:, None], groups, 1)
    expected, out = ref_non_sensitivity(model, x64, y, a64, fills, step, 1e-5, True)
    model64 = _build(HalfNet, torch.float64)
    got = non_sensitivity(model64, t(x64), t(a64), target=t(y), baseline=baseline, features_in_step=step,
                          chunk_rows=11)
    assert_clear_of_threshold(out[:, 1:] - out[:, :1], 1e-5, model64, t(x64), True)
    assert got.dtype == torch.int64 and got.tolist() == expected
    if step == 1:
        assert got[0] < got[-1]  # the saliency map mostly keeps the axiom, the random one does not


def test_non_sensitivity_uniform_on_the_keyed_draws():
    model, x, y, a = case32(batch=3)
    seed, low, high = 4, -0.5, 0.5
    u, _ = group_uniforms(seed, NON_SENSITIVITY_FILL_STREAM, 3, 64, torch.device("cpu"))
    table = (low + (high - low) * u).view(3, 64).to(torch.float32).numpy()
    expected, out = ref_non_sensitivity(model, x.astype(np.float64), y, np.abs(a), table.astype(np.float64), 1,
                                        1e-5, True)
    got = non_sensitivity(_build(HalfNet, torch.float64), t(x.astype(np.float64)), t(np.abs(a).astype(np.float64)),
                          target=t(y), baseline="uniform", seed=seed, uniform_low=low, uniform_high=high)
    assert got.tolist() == expected
    kwargs = dict(perturb_baseline="uniform", perturb_func_kwargs={"uniform_low": low, "uniform_high": high},
                  normalise=False)
    with numpy_uniform_returns([table[:, k] for k in range(64)], low, high):
        theirs = quantus.NonSensitivity(disable_warnings=True, **kwargs)(
            model=model, x_batch=x, y_batch=y, a_batch=a.copy(), device="cpu")
    ours = NonSensitivity(seed=seed, **kwargs)(model=model, x_batch=x, y_batch=y, a_batch=a)
    assert_clear_of_threshold(out[:, 1:] - out[:, :1], 1e-5, model, t(x), True)
    assert ours == theirs


@pytest.mark.parametrize("kwargs", [
    dict(normalise=False),
    dict(normalise=False, perturb_baseline="white"),
    dict(normalise=False, perturb_baseline="mean"),
    dict(normalise=False, perturb_baseline=0.3, eps=1e-3),
    dict(normalise=False, features_in_step=64),
])
@pytest.mark.parametrize("softmax", [True, False])
def test_non_sensitivity_equals_quantus(kwargs, softmax):
    model, x, y, a = case32()
    theirs = quantus.NonSensitivity(disable_warnings=True, **kwargs)(
        model=model, x_batch=x, y_batch=y, a_batch=a.copy(), device="cpu", softmax=softmax)
    ours = NonSensitivity(chunk_rows=13, **kwargs)(model=model, x_batch=x, y_batch=y, a_batch=a, softmax=softmax)
    step = kwargs.get("features_in_step", 1)
    baseline = kwargs.get("perturb_baseline", "black")
    fills = np.repeat(fill_of(x.astype(np.float64), baseline)[:, None], 64 // step, 1).astype(np.float32)
    out = ref_replaced_outputs(model, x, y, fills, step, softmax)
    assert_clear_of_threshold(out[:, 1:] - out[:, :1], kwargs.get("eps", 1e-5), model, t(x), softmax)
    assert [type(v) for v in ours] == [type(v) for v in theirs]
    assert ours == theirs


def test_non_sensitivity_features_in_step_where_quantus_fails():
    """Quantus 0.6 compares [B, groups] with [B, features]: it fails for 1 <
    features_in_step < D; fastattr gives each feature its group's change
    (test_non_sensitivity_matches_reference checks the values)."""
    model, x, y, a = case32()
    with pytest.raises(ValueError):
        quantus.NonSensitivity(disable_warnings=True, features_in_step=4, normalise=False)(
            model=model, x_batch=x, y_batch=y, a_batch=a.copy(), device="cpu")
    got = NonSensitivity(features_in_step=4, normalise=False)(model=model, x_batch=x, y_batch=y, a_batch=a)
    assert len(got) == len(x) and all(isinstance(v, np.int64) for v in got)


def test_non_sensitivity_per_example_and_chunking():
    model, x, y, a = case32()
    xt, at, yt = t(x), t(np.abs(a)), t(y)
    whole = non_sensitivity(model, xt, at, target=yt)
    for chunk in (1, 5, 64):
        assert torch.equal(non_sensitivity(model, xt, at, target=yt, chunk_rows=chunk), whole)
    for b in range(len(x)):
        assert torch.equal(non_sensitivity(model, xt[b:b + 1], at[b:b + 1], target=yt[b:b + 1]), whole[b:b + 1])
    # Quantus's default normalise spans the batch: an example's count changes
    # with its batch there; here it equals Quantus's count of it alone.
    theirs = quantus.NonSensitivity(disable_warnings=True, eps=1e-3)(
        model=model, x_batch=x, y_batch=y, a_batch=a.copy(), device="cpu")
    ours = NonSensitivity(eps=1e-3)(model=model, x_batch=x, y_batch=y, a_batch=a)
    for b in range(len(x)):
        alone = quantus.NonSensitivity(disable_warnings=True, eps=1e-3)(
            model=model, x_batch=x[b:b + 1], y_batch=y[b:b + 1], a_batch=a[b:b + 1].copy(), device="cpu")
        assert [ours[b]] == alone
    assert theirs != ours


# ---------------------------------------------------------------------------
# Completeness
# ---------------------------------------------------------------------------


class DyadicLinear(nn.Module):
    """f(x) = W x, W in multiples of 1/8: every sum below is exact in float32."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randint(-8, 9, (3, 16), generator=g).float() / 8)

    def forward(self, x):
        return x.flatten(1) @ self.weight.t()


def test_completeness_matches_reference():
    model = _build(HalfNet, torch.float64)
    rng = np.random.default_rng(2)
    x, a = rng.standard_normal((4, 1, 8, 8)), rng.standard_normal((4, 1, 8, 8))
    y = np.array([0, 1, 2, 3])
    for baseline, output in (("black", "logit"), ("white", "probability"), ("mean", "logit"), (0.25, "logit")):
        fill = fill_of(x, baseline)
        expected = []
        for b in range(4):
            base = np.full((1, 1, 8, 8), fill[b])
            f = [outputs(model, t(r), output == "probability")[0, y[b]].item() for r in (x[b:b + 1], base)]
            expected.append(a[b].sum() - (f[0] - f[1]))
        got = completeness(model, t(x), t(a), target=t(y), baseline=baseline, output=output, chunk_rows=3)
        assert_close(got, expected, 1e-10 * (np.abs(a).sum((1, 2, 3)) + 1))
    halved = completeness(model, t(x), t(a), target=t(y), output_func=lambda d: d / 2)
    full = completeness(model, t(x), t(a), target=t(y))
    assert_close(halved - full, (a.sum((1, 2, 3)) - full.numpy()) / 2, 1e-10 * (np.abs(a).sum((1, 2, 3)) + 1))


def test_completeness_uniform_on_the_keyed_draws():
    model = _build(HalfNet, torch.float64)
    rng = np.random.default_rng(2)
    x, a = rng.standard_normal((3, 1, 8, 8)), rng.standard_normal((3, 1, 8, 8))
    u, _ = group_uniforms(9, COMPLETENESS_FILL_STREAM, 3, 1, torch.device("cpu"))
    got = completeness(model, t(x), t(a), target=1, baseline="uniform", seed=9)
    for b in range(3):
        base = torch.full((1, 1, 8, 8), u[b].item(), dtype=torch.float64)
        change = outputs(model, t(x[b:b + 1]), False)[0, 1] - outputs(model, base, False)[0, 1]
        assert abs(got[b].item() - (a[b].sum() - change.item())) <= 1e-10 * (np.abs(a[b]).sum() + 1)
    assert torch.equal(completeness(model, t(x[1:2]), t(a[1:2]), target=1, baseline="uniform", seed=9,
                                    example_offset=1), got[1:2])


def test_completeness_equals_quantus():
    """Exact arithmetic (dyadic weights and inputs, min 0 so the black
    baseline is 0): input x gradient is complete in both; with Quantus's
    default normalise, or a random explanation, it is not in either."""
    model = DyadicLinear().eval()
    g = torch.Generator().manual_seed(1)
    x = (torch.randint(0, 9, (4, 1, 4, 4), generator=g).float() / 4)
    x.view(4, -1)[:, 0] = 0
    y = np.array([0, 1, 2, 0])
    a = input_x_gradient(model, x, target=t(y)).numpy()
    x = x.numpy()
    for kwargs, a_batch, expected in ((dict(normalise=False), a, [True] * 4),
                                      (dict(normalise=False, output_func=np.negative), a, [False] * 4),
                                      ({}, a, [False] * 4),
                                      (dict(normalise=False), a + 0.5, [False] * 4)):
        theirs = quantus.Completeness(disable_warnings=True, **kwargs)(
            model=model, x_batch=x, y_batch=y, a_batch=a_batch.copy(), device="cpu")
        ours = Completeness(**kwargs)(model=model, x_batch=x, y_batch=y, a_batch=a_batch)
        assert [type(v) for v in ours] == [type(v) for v in theirs]
        assert ours == theirs == expected
    engine = Completeness(normalise=False)(model=model, x_batch=x, y_batch=y, explain_func=input_x_gradient)
    assert engine == [True] * 4


# ---------------------------------------------------------------------------
# InputInvariance
# ---------------------------------------------------------------------------


def torch_saliency(model, inputs, targets, **kwargs):
    """A Quantus-style explain_func: d f_y / dx, NumPy in and out (float32)."""
    x = torch.tensor(np.asarray(inputs), dtype=torch.float32, requires_grad=True)
    out = model(x)[torch.arange(len(targets)), torch.as_tensor(np.asarray(targets))].sum()
    (g,) = torch.autograd.grad(out, x)
    return g.numpy()


def torch_input_x_gradient(model, inputs, targets, **kwargs):
    return torch_saliency(model, inputs, targets) * np.asarray(inputs, dtype=np.float32)


@pytest.mark.parametrize("make", [unpadded_net, padded_net, HalfNet])
def test_mean_shifted_model_equals_quantus(make):
    model = _build(make, torch.float32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    theirs = PyTorchModel(model, channel_first=True).add_mean_shift_to_first_layer(-1, (1, 1, 8, 8))
    ours = mean_shifted_model(model, -1, (1, 1, 8, 8))
    assert all(torch.equal(p, q) for p, q in zip(theirs.state_dict().values(), ours.state_dict().values()))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # Unpadded, the copy computes the model's function of the unshifted input.
    if make is unpadded_net:
        x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(ours(x - 1), model(x), rtol=0, atol=1e-5)


def test_input_invariance_equals_quantus():
    """Quantus-style explain functions, the same in both: saliency is
    invariant on an unpadded conv net, input x gradient is not. Quantus 0.6
    leaves each example's first feature unshifted, and so does the drop-in;
    the function shifts every feature (and finds saliency invariant where the
    unshifted corner pixel made Quantus's explanation differ)."""
    model = _build(unpadded_net, torch.float32, seed=3)
    x = np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32)
    y = np.arange(6) % 4
    for explain in (torch_saliency, torch_input_x_gradient):
        theirs = quantus.InputInvariance(disable_warnings=True)(
            model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=explain, device="cpu")
        ours = InputInvariance()(model=model, x_batch=x, y_batch=y, explain_func=explain)
        assert [type(v) for v in ours] == [type(v) for v in theirs]
        assert ours == theirs
    sal = InputInvariance()(model=model, x_batch=x, y_batch=y, explain_func=torch_saliency)
    ixg = InputInvariance()(model=model, x_batch=x, y_batch=y, explain_func=torch_input_x_gradient)
    assert not any(ixg)
    whole = input_invariance(model, t(x), saliency, target=t(y))
    assert whole.all() and not all(sal)
    engine = InputInvariance()(model=model, x_batch=x, y_batch=y, explain_func=saliency)
    assert engine == sal


def test_input_invariance_function():
    model = _build(unpadded_net, torch.float64)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    assert input_invariance(model, x, "saliency", target=y).all()
    assert not input_invariance(model, x, input_x_gradient, target=y).any()
    # A random explainer draws the same keyed noise for both explanations.
    assert input_invariance(model, x, smoothgrad, target=y, explainer_kwargs=dict(n_samples=4, seed=2)).all()
    given = saliency(model, x, target=y)
    assert torch.equal(input_invariance(model, x, "saliency", target=y, attributions=given),
                       input_invariance(model, x, "saliency", target=y))
    for b in range(4):
        assert input_invariance(model, x[b:b + 1], input_x_gradient, target=y[b:b + 1]).item() is False
    a = torch.tensor([[1.0, 2.0]])
    assert all_close(a, a + 1e-4 * 0.99).item() and not all_close(a, a + 2e-4).item()


# ---------------------------------------------------------------------------
# Bad input, before any compute; the caller's objects
# ---------------------------------------------------------------------------


class CountingHalfNet(HalfNet):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


@pytest.mark.parametrize("fn", [completeness, non_sensitivity])
@pytest.mark.parametrize("kwargs,name", [
    (dict(attributions=torch.zeros(2, 2, 8, 8)), "attributions"),
    (dict(baseline="grey"), "baseline"),
    (dict(output="prob"), "output"),
    (dict(chunk_rows=0), "chunk_rows"),
    (dict(inputs=torch.full((2, 1, 8, 8), float("nan"))), "inputs"),
    (dict(example_offset=-1), "example_offset"),
    (dict(attributions="saliency", baseline="grey"), "baseline"),
    (dict(attributions="saliency", baseline="uniform", seed=-1), "seed"),
    (dict(attributions="saliency", baseline="uniform", uniform_low=float("nan")), "uniform_low"),
])
def test_axiomatic_bad_input_fails_before_compute(fn, kwargs, name):
    model = CountingHalfNet()
    args = dict(inputs=torch.zeros(2, 1, 8, 8), attributions=torch.zeros(2, 1, 8, 8), target=1)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        fn(model, **args)
    assert model.calls == 0


def test_axiomatic_option_errors():
    model = CountingHalfNet()
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="features_in_step"):
        non_sensitivity(model, x, x, target=1, features_in_step=0)
    with pytest.raises(ValueError, match="eps"):
        non_sensitivity(model, x, x, target=1, eps=float("nan"))
    with pytest.raises(TypeError, match="output_func"):
        completeness(model, x, x, target=1, output_func=3)
    with pytest.raises(ValueError, match="bias"):
        input_invariance(nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten()), x, target=1)
    with pytest.raises(ValueError, match="input_shift"):
        input_invariance(model, x, target=1, input_shift=float("inf"))
    with pytest.raises(ValueError, match="attributions"):
        input_invariance(model, x, target=1, attributions=torch.zeros(2, 2, 8, 8))
    assert model.calls == 0
    with pytest.raises(ValueError, match="features_in_step"):
        NonSensitivity(features_in_step=3)(model=model, x_batch=x.numpy(), y_batch=np.zeros(2, int),
                                           a_batch=x.numpy())
    with pytest.raises(ValueError, match="explain_func"):
        InputInvariance()(model=model, x_batch=x.numpy(), y_batch=np.zeros(2, int), a_batch=x.numpy())
    assert model.calls == 0
    with pytest.raises(NotImplementedError, match="perturb_func"):
        InputInvariance(perturb_func=quantus.functions.perturb_func.baseline_replacement_by_indices)
    with pytest.raises(NotImplementedError, match="perturb_func_kwargs"):
        InputInvariance(perturb_func_kwargs={"foo": 1})
    with pytest.raises(NotImplementedError, match="perturb_baseline"):
        Completeness(perturb_func_kwargs={"perturb_baseline": "white"})
    with pytest.raises(NotImplementedError, match="perturb_func"):
        Completeness(perturb_func=quantus.functions.perturb_func.baseline_replacement_by_shift)
    with pytest.raises(ValueError, match="eps"):
        EffectiveComplexity(eps="x")
    with pytest.raises(ValueError, match="eps"):
        effective_complexity(torch.zeros(2, 3), eps=None)
    with pytest.raises(ValueError, match="attributions"):
        sparseness(torch.full((2, 3), float("inf")))


def test_caller_objects_unchanged():
    model, x, y, a = case32()
    model.conv.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copies = [arr.copy() for arr in (x, y, a)]
    NonSensitivity()(model=model, x_batch=x, y_batch=y, a_batch=a)
    Completeness()(model=model, x_batch=x, y_batch=y, a_batch=a)
    InputInvariance()(model=model, x_batch=x, y_batch=y, explain_func=saliency)
    Sparseness()(model=model, x_batch=x, y_batch=y, a_batch=a)
    xt, at = t(x), t(a)
    input_invariance(model, xt, target=t(y))
    non_sensitivity(model, xt, at, target=t(y))
    completeness(model, xt, at, target=t(y))
    for arr, kept in zip((x, y, a), copies):
        assert np.array_equal(arr, kept)
    assert torch.equal(xt, t(x)) and torch.equal(at, t(a))
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
