"""Infidelity (functional, Captum drop-in, Quantus drop-in) against a float64
reference written from Yeh et al.'s definition, against Captum 0.9 and
Quantus 0.6 given the same perturbations, and statistically on random ones.

Measured: float64 agrees with the reference and with Captum to <= 1e-12
relative (asserted at 1e-10); float32 with Captum to ~3e-7 (asserted 1e-5);
the Quantus drop-in with Quantus to ~3e-7 (asserted 1e-5, Quantus computes
in float32)."""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, List

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import quantus
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import infidelity_perturb_func_decorator as captum_decorator
from captum_cases import ConvNet, _build, _case, _rel_err, numpy_uniform_returns
from fastattr import ops
from fastattr.attr import saliency
from fastattr.captum.metrics._infidelity import infidelity as dropin_infidelity
from fastattr.captum.metrics._infidelity import infidelity_perturb_func_decorator
from fastattr.engine import PURPOSE_INFIDELITY
from fastattr.engine.draws import group_uniforms
from fastattr.metrics.infidelity import infidelity
from fastattr.quantus._infidelity import _UNIFORM_STREAM, Infidelity

warnings.filterwarnings("ignore", module="quantus")


def keyed_noise(x: Tensor, input_index: int, n: int, stdev: float, seed: int) -> Tensor:
    """``I`` of fastattr's infidelity for input ``input_index``: ``[B * n, *F]``, row ``b * n + s``."""
    zeros = torch.zeros((), dtype=x.dtype).expand(x.shape)
    return ops.generate_rows(zeros, None, None, n, "gaussian", stdev, seed,
                             PURPOSE_INFIDELITY * 65536 + input_index, 0, x.shape[0] * n, 0)


def reference_infidelity(model, xs, attrs, target, afa, noises, n, normalize) -> Tensor:
    """float64 ``[B]`` from the definition: E_I[(I . a - (f(x) - f(x - I)))^2], per example, given ``I``."""
    xs = tuple(x.double() for x in xs)
    model = model.double() if isinstance(model, nn.Module) else model
    b = xs[0].shape[0]
    out = []
    for e in range(b):
        args = tuple(a[e:e + 1] if isinstance(a, Tensor) else a for a in afa)
        t = None if target is None else (target if isinstance(target, int) else int(target[e]))
        pick = (lambda o: o[:, t]) if t is not None else (lambda o: o.reshape(-1))
        fx = pick(model(*(x[e:e + 1] for x in xs), *args))[0]
        pred, act = [], []
        for s in range(n):
            rows = tuple(x[e:e + 1] - nz[e * n + s:e * n + s + 1].double() for x, nz in zip(xs, noises))
            pred.append(sum((a[e].double() * nz[e * n + s].double()).sum() for a, nz in zip(attrs, noises)))
            act.append(fx - pick(model(*rows, *args))[0])
        p, q = torch.stack(pred), torch.stack(act)
        if normalize:
            beta = (p * q).sum() / ((p * p).sum() if (p * p).sum() != 0 else 1.0)
            p = beta * p
        out.append(((p - q) ** 2).mean())
    return torch.stack(out)


def random_attrs(case, seed=5):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype) for x in case.xs)


def packed(case, attrs):
    return attrs if isinstance(case.inputs, tuple) else attrs[0]


# ---------------------------------------------------------------------------
# Functional infidelity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["conv", "mlp", "two_input", "scalar"])
@pytest.mark.parametrize("normalize", [False, True])
def test_matches_definition(backend, name, normalize):
    case = _case(name, batch=3)
    attrs = random_attrs(case)
    n, stdev, seed = 5, 0.3, 11
    got = infidelity(case.model, case.inputs, packed(case, attrs), target=case.target, n_samples=n,
                     stdev=stdev, normalize=normalize, seed=seed, additional_forward_args=case.afa)
    assert got.dtype == torch.float64 and got.shape == (3,)
    noises = [keyed_noise(x, i, n, stdev, seed) for i, x in enumerate(case.xs)]
    target = case.target if not isinstance(case.target, list) else torch.tensor(case.target)
    afa = case.afa if isinstance(case.afa, tuple) else (() if case.afa is None else (case.afa,))
    ref = reference_infidelity(case.model, case.xs, attrs, target, afa, noises, n, normalize)
    assert _rel_err(got, ref) <= 1e-10


@contextlib.contextmanager
def captum_normal_returns(noises: List[Tensor], stdev: float):
    """The k-th ``torch.normal(0, stdev, size)`` returns ``noises[k]`` (shape checked)."""
    calls = []
    real = torch.normal

    def fake(mean: Any, std: Any, size: Any = None, **kwargs: Any) -> Tensor:
        k = len(calls)
        assert k < len(noises) and mean == 0 and std == stdev, (k, mean, std)
        assert tuple(size) == tuple(noises[k].shape), f"asked {tuple(size)}, expected {tuple(noises[k].shape)}"
        calls.append(tuple(size))
        return noises[k].clone()

    torch.normal = fake
    try:
        yield calls
    finally:
        torch.normal = real
    assert len(calls) == len(noises)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("name", ["conv", "two_input"])
@pytest.mark.parametrize("normalize", [False, True])
def test_matches_captum_on_the_same_noise(name, dtype, tol, normalize):
    case = _case(name, dtype=dtype, batch=3)
    attrs = packed(case, random_attrs(case))
    n, stdev, seed = 6, 0.2, 3
    noises = [keyed_noise(x, i, n, stdev, seed) for i, x in enumerate(case.xs)]

    def perturb(inputs):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        noise = tuple(torch.normal(0, stdev, x.shape) for x in xs)
        perturbed = tuple(x - z for x, z in zip(xs, noise))
        return (noise, perturbed) if isinstance(inputs, tuple) else (noise[0], perturbed[0])

    with captum_normal_returns(noises, stdev):
        expected = captum_infidelity(case.model, perturb, case.inputs, attrs, target=case.target,
                                     additional_forward_args=case.afa, n_perturb_samples=n, normalize=normalize)
    got = infidelity(case.model, case.inputs, attrs, target=case.target, n_samples=n, stdev=stdev, seed=seed,
                     additional_forward_args=case.afa, normalize=normalize)
    assert _rel_err(got, expected) <= tol
    # The drop-in given the same perturb_func (torch.normal patched the same way) returns Captum's dtype too.
    with captum_normal_returns(noises, stdev):
        dropin = dropin_infidelity(case.model, perturb, case.inputs, attrs, target=case.target,
                                   additional_forward_args=case.afa, n_perturb_samples=n, normalize=normalize)
    assert dropin.dtype == expected.dtype
    assert _rel_err(dropin, expected) <= tol


def test_statistics_match_captum_on_random_noise():
    """A linear model: with a = w + d, infidelity = E[(I . d)^2] = stdev^2 |d|^2 exactly in expectation;
    (I . d)^2 / (stdev^2 |d|^2) is chi-square(1), so the relative standard error is sqrt(2 / N).
    Both fastattr (keyed) and Captum (torch's RNG) must land within 4 standard errors."""
    torch.manual_seed(0)
    model = nn.Linear(16, 3).double()
    x = torch.randn(2, 16, dtype=torch.float64)
    d = torch.randn(2, 16, dtype=torch.float64) * 0.5
    attrs = model.weight[1].detach().expand(2, 16) + d
    n, stdev = 4000, 0.1
    expected = stdev ** 2 * (d ** 2).sum(1)
    tol = 4 * (2 / n) ** 0.5

    def perturb(inputs):
        noise = torch.randn_like(inputs) * stdev
        return noise, inputs - noise

    ours = infidelity(model, x, attrs, target=1, n_samples=n, stdev=stdev, seed=1)
    theirs = captum_infidelity(model, perturb, x, attrs, target=1, n_perturb_samples=n)
    assert ((ours - expected).abs() / expected).max() <= tol
    assert ((theirs - expected).abs() / expected).max() <= tol


class RowwiseNet(nn.Module):
    """[B, 3, 8, 8] -> [B, 5], each output row computed from its input row alone with
    the same operations whatever the batch (no BLAS blocking): bitwise row-independent."""

    def forward(self, x):
        return torch.stack([torch.tanh(x * s).flatten(1).sum(1) for s in (0.5, 1.0, 1.5, 2.0, 2.5)], dim=1)


@pytest.mark.parametrize("chunk", [dict(chunk_rows=1), dict(chunk_rows=4), dict(chunk_rows=7), dict(memory_budget=1)])
@pytest.mark.parametrize("model", ["rowwise", "conv"])
def test_same_values_for_any_chunking_and_batch(chunk, model):
    """Bit-identical on a row-independent model; the conv net's BLAS sums
    depend on the batch size, so there within 1e-12 (measured ~1e-15)."""
    case = _case("conv", batch=3)
    net = RowwiseNet() if model == "rowwise" else case.model

    def same(a, b):
        return torch.equal(a, b) if model == "rowwise" else _rel_err(a, b) <= 1e-12

    attrs = random_attrs(case)[0]
    whole = infidelity(net, case.inputs, attrs, target=case.target, n_samples=5, seed=2)
    assert same(infidelity(net, case.inputs, attrs, target=case.target, n_samples=5, seed=2, **chunk), whole)
    # The first two examples alone, and the first example alone (batch 1), get the same values.
    two = infidelity(net, case.inputs[:2], attrs[:2], target=case.target[:2], n_samples=5, seed=2, **chunk)
    one = infidelity(net, case.inputs[:1], attrs[:1], target=case.target[0], n_samples=5, seed=2)
    assert same(two, whole[:2]) and same(one, whole[:1])
    assert not torch.equal(infidelity(net, case.inputs, attrs, target=case.target, n_samples=5, seed=3), whole)


def test_explainer_is_run_once_on_the_clean_input():
    case = _case("conv", batch=2)
    calls = []

    def explain(model, inputs, target=None, additional_forward_args=None):
        calls.append(inputs.shape[0])
        return saliency(model, inputs, target=target)

    via_name = infidelity(case.model, case.inputs, "saliency", target=case.target, n_samples=4,
                          explainer_kwargs={"abs": False})
    via_callable = infidelity(case.model, case.inputs, explain, target=case.target, n_samples=4)
    given = infidelity(case.model, case.inputs, saliency(case.model, case.inputs, target=case.target, abs=False),
                       target=case.target, n_samples=4)
    assert calls == [2]
    assert torch.equal(via_name, given)
    assert torch.equal(via_callable, infidelity(case.model, case.inputs, saliency(case.model, case.inputs, target=case.target),
                                                target=case.target, n_samples=4))


# ---------------------------------------------------------------------------
# Captum drop-in with explicit perturb functions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_examples", [None, 2, 5, 100])
@pytest.mark.parametrize("normalize", [False, True])
def test_dropin_deterministic_perturb_func(max_examples, normalize):
    case = _case("two_input", batch=3)
    attrs = packed(case, random_attrs(case))

    def perturb(inputs, baselines):
        noise = tuple(0.1 * torch.sin(3.0 * x + 1.0) + 0.05 * b for x, b in zip(inputs, baselines))
        return noise, tuple(x - z for x, z in zip(inputs, noise))

    base = (torch.full((3, 2, 6, 6), 0.5, dtype=torch.float64), 0.25)
    kwargs = dict(baselines=base, target=case.target, additional_forward_args=case.afa, n_perturb_samples=4,
                  max_examples_per_batch=max_examples, normalize=normalize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = captum_infidelity(case.model, perturb, case.inputs, attrs, **kwargs)
    got = dropin_infidelity(case.model, perturb, case.inputs, attrs, **kwargs)
    if normalize:
        # The 4 samples are the same perturbation: the rescaled prediction
        # fits exactly and both sides return rounding residues (~1e-20),
        # which depend on which rows share a forward. Zero at float64 precision.
        assert expected.abs().max() < 1e-15 and got.abs().max() < 1e-15
    else:
        assert _rel_err(got, expected) <= 1e-10


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
@pytest.mark.parametrize("with_baselines", [True, False])
def test_decorator_matches_captum(multiply_by_inputs, with_baselines):
    case = _case("conv", batch=2)
    attrs = random_attrs(case)[0]

    def perturbed_only(inputs, baselines=None):
        shift = 0.0 if baselines is None else 0.3 * baselines
        return inputs * 0.9 + 0.1 * torch.cos(inputs) + shift

    base = torch.linspace(-1, 1, 3 * 8 * 8, dtype=torch.float64).view(1, 3, 8, 8).expand(2, 3, 8, 8).contiguous()
    base[:, 0, 0, 0] = case.inputs[:, 0, 0, 0]  # a zero denominator: divided by 1
    kwargs = dict(baselines=base if with_baselines else None, target=case.target, n_perturb_samples=3)
    expected = captum_infidelity(case.model, captum_decorator(multiply_by_inputs)(perturbed_only), case.inputs,
                                 attrs, **kwargs)
    got = dropin_infidelity(case.model, infidelity_perturb_func_decorator(multiply_by_inputs)(perturbed_only),
                            case.inputs, attrs, **kwargs)
    assert _rel_err(got, expected) <= 1e-10


# ---------------------------------------------------------------------------
# Bad input and the caller's objects
# ---------------------------------------------------------------------------


class CountingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _build(ConvNet, torch.float64)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("kwargs,name", [
    (dict(attributions=torch.zeros(2, 3, 8, 7, dtype=torch.float64)), "attributions"),
    (dict(attributions=torch.full((2, 3, 8, 8), float("nan"), dtype=torch.float64)), "attributions"),
    (dict(attributions=(torch.zeros(2, 3, 8, 8, dtype=torch.float64),) * 2), "attributions"),
    (dict(n_samples=0), "n_samples"),
    (dict(stdev=0.0), "stdev"),
    (dict(stdev=-1.0), "stdev"),
    (dict(stdev=float("inf")), "stdev"),
    (dict(seed=-1), "seed"),
    (dict(baselines=0.0), "baselines"),
    (dict(target=7), "target"),
    (dict(chunk_rows=0), "chunk_rows"),
    (dict(memory_budget=0), "memory_budget"),
    (dict(perturb_func=lambda x: (x[:1], x)), "perturb_func"),
    (dict(perturb_func=lambda x: x), "perturb_func"),
    (dict(attributions="no_such_explainer"), "explainer"),
])
def test_bad_input_fails_before_compute(kwargs, name):
    model = CountingModel()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    args = dict(attributions=torch.zeros(2, 3, 8, 8, dtype=torch.float64), target=1)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        infidelity(model, x, **args)
    # perturb_func's output and the target's range (the model's class count)
    # are known only after f(x): one forward, never the perturbed ones.
    assert model.calls <= (1 if name in ("perturb_func", "target") else 0)


def test_nonfinite_inputs_fail():
    with pytest.raises(ValueError, match="inputs"):
        infidelity(CountingModel(), torch.full((1, 3, 8, 8), float("inf"), dtype=torch.float64),
                   torch.zeros(1, 3, 8, 8, dtype=torch.float64), target=0)


def test_caller_objects_unchanged():
    model = _build(ConvNet, torch.float64).train()
    for p in list(model.parameters())[:2]:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: t.clone() for k, t in model.state_dict().items()}
    hook = model.register_forward_hook(lambda *a: None)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    a = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    x0, a0 = x.clone(), a.clone()
    model.eval()
    infidelity(model, x, a, target=1, n_samples=3)
    assert torch.equal(x, x0) and torch.equal(a, a0)
    assert not model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    assert len(model._forward_hooks) == 1
    hook.remove()


# ---------------------------------------------------------------------------
# Quantus drop-in
# ---------------------------------------------------------------------------


def quantus_case(batch=3):
    case = _case("conv", dtype=torch.float32, batch=batch)
    g = np.random.default_rng(4)
    a = g.standard_normal((batch, 1, 8, 8)).astype(np.float32)
    return case, case.inputs.numpy(), np.array(case.target), a


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(perturb_patch_sizes=[4, 2], n_perturb_samples=3),
    dict(perturb_patch_sizes=[2], perturb_baseline="white"),
    dict(perturb_baseline=0.3, n_perturb_samples=1, abs=True),
])
@pytest.mark.parametrize("softmax", [False, True])
def test_quantus_infidelity_matches(kwargs, softmax):
    case, x, y, a = quantus_case()
    expected = quantus.Infidelity(disable_warnings=True, **kwargs)(
        model=case.model, x_batch=x, y_batch=y, a_batch=a, device="cpu", softmax=softmax)
    got = Infidelity(**kwargs)(model=case.model, x_batch=x, y_batch=y, a_batch=a, softmax=softmax)
    assert isinstance(got, list) and len(got) == 3
    assert _rel_err(torch.tensor(got), torch.tensor(np.array(expected, dtype=np.float64))) <= 1e-5
    chunked = Infidelity(chunk_rows=3, **kwargs)(model=case.model, x_batch=x, y_batch=y, a_batch=a, softmax=softmax)
    assert chunked == got


def test_quantus_infidelity_normalise_per_example():
    """Quantus normalises over the whole batch; fastattr per example: equal on batch 1."""
    case, x, y, a = quantus_case(batch=1)
    expected = quantus.Infidelity(normalise=True, disable_warnings=True)(
        model=case.model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    got = Infidelity(normalise=True)(model=case.model, x_batch=x, y_batch=y, a_batch=a)
    assert _rel_err(torch.tensor(got), torch.tensor(np.array(expected, dtype=np.float64))) <= 1e-5


def keyed_uniform_fills(batch, n_samples, sizes, hw, seed, low, high):
    """The values fastattr fills patch step k of sample s, patch size i with, in Quantus's call order."""
    tables = []
    for i, p in enumerate(sizes):
        k = (hw // p) ** 2
        u, _ = group_uniforms(seed, _UNIFORM_STREAM + i, batch, n_samples * k, torch.device("cpu"))
        tables.append((low + (high - low) * u).view(batch, n_samples, k))
    return [tables[i][:, s, j].numpy() for s in range(n_samples) for i, p in enumerate(sizes)
            for j in range((hw // p) ** 2)]


def test_quantus_infidelity_uniform_baseline_on_the_same_draws():
    case, x, y, a = quantus_case()
    sizes, n, seed, low, high = [4, 2], 2, 9, -0.5, 1.5
    fills = keyed_uniform_fills(3, n, sizes, 8, seed, low, high)
    kwargs = dict(perturb_patch_sizes=sizes, n_perturb_samples=n, perturb_baseline="uniform",
                  perturb_func_kwargs={"uniform_low": low, "uniform_high": high})
    with numpy_uniform_returns(fills, low, high):
        expected = quantus.Infidelity(disable_warnings=True, **kwargs)(
            model=case.model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    got = Infidelity(seed=seed, **kwargs)(model=case.model, x_batch=x, y_batch=y, a_batch=a)
    assert _rel_err(torch.tensor(got), torch.tensor(np.array(expected, dtype=np.float64))) <= 1e-5


def test_quantus_infidelity_uniform_statistics():
    """One example repeated 48 times: the mean score over the copies (64 random
    samples each) of fastattr (keyed) and Quantus (NumPy's RNG) agree within
    4 standard errors of the difference of the two means."""
    case, x, y, a = quantus_case(batch=1)
    reps = 48
    xb, yb, ab = np.repeat(x, reps, 0), np.repeat(y, reps, 0), np.repeat(a, reps, 0)
    kwargs = dict(perturb_patch_sizes=[4], n_perturb_samples=64, perturb_baseline="uniform")
    np.random.seed(0)
    theirs = np.array(quantus.Infidelity(disable_warnings=True, **kwargs)(
        model=case.model, x_batch=xb, y_batch=yb, a_batch=ab, device="cpu"), dtype=np.float64)
    ours = np.array(Infidelity(seed=1, **kwargs)(model=case.model, x_batch=xb, y_batch=yb, a_batch=ab))
    stderr = (ours.var(ddof=1) / reps + theirs.var(ddof=1) / reps) ** 0.5
    assert abs(ours.mean() - theirs.mean()) <= 4 * stderr


def test_quantus_infidelity_explain_func():
    case, x, y, _ = quantus_case()
    a = saliency(case.model, case.inputs, target=torch.tensor(y)).numpy()
    expected = quantus.Infidelity(disable_warnings=True)(model=case.model, x_batch=x, y_batch=y, a_batch=a,
                                                         device="cpu")
    got = Infidelity()(model=case.model, x_batch=x, y_batch=y, explain_func=saliency)
    assert _rel_err(torch.tensor(got), torch.tensor(np.array(expected, dtype=np.float64))) <= 1e-5


@pytest.mark.parametrize("ctor,call,error,name", [
    (dict(perturb_patch_sizes=[3]), {}, ValueError, "perturb_patch_sizes"),
    (dict(perturb_patch_sizes=[0]), {}, ValueError, "perturb_patch_sizes"),
    (dict(perturb_baseline="mean"), {}, NotImplementedError, "perturb_baseline"),
    (dict(perturb_baseline="grey"), {}, ValueError, "perturb_baseline"),
    (dict(loss_func="mae"), {}, NotImplementedError, "loss_func"),
    (dict(n_perturb_samples=0), {}, ValueError, "n_perturb_samples"),
    (dict(perturb_func_kwargs={"foo": 1}), {}, NotImplementedError, "perturb_func_kwargs"),
    ({}, dict(a_batch=np.zeros((3, 1, 8, 7), np.float32)), ValueError, "a_batch"),
])
def test_quantus_infidelity_bad_input(ctor, call, error, name):
    case, x, y, a = quantus_case()
    args = dict(model=case.model, x_batch=x, y_batch=y, a_batch=a)
    args.update(call)
    with pytest.raises(error, match=name):
        Infidelity(**ctor)(**args)
