"""Deletion / insertion curves and pixel flipping against a float64 reference
written from the definitions (one model call per example and point), against
Quantus 0.6's PixelFlipping (deterministic: bit-equal; uniform baseline on the
same draws; statistically on random ones), chunking, bad input.

Measured: float64 curves equal the reference to ~1e-16 (asserted 1e-12);
the PixelFlipping drop-in equals Quantus exactly (float32, same order, asserted
equal)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import quantus
from captum_cases import ConvNet, _build, _case, _rel_err, numpy_uniform_returns
from fastattr.attr import saliency
from fastattr.engine.draws import group_uniforms
from fastattr.metrics.deletion import (
    PIXEL_FLIPPING_STREAM, deletion_curve, gaussian_blur, insertion_curve, pixel_flipping,
)
from fastattr.quantus._pixel_flipping import PixelFlipping

warnings.filterwarnings("ignore", module="quantus")


def reference_curve(model, x, a, target, counts, fill, remove, probability):
    """float64 ``[B, K]``: per example and point, the features with the
    ``counts[k]`` largest attributions (ties by index) replaced, one model call each."""
    model = model.double() if isinstance(model, nn.Module) else model
    x, fill = x.double(), fill.double().expand(x.shape)
    out = torch.zeros(x.shape[0], len(counts), dtype=torch.float64)
    for b in range(x.shape[0]):
        flat_a = a[b].reshape(-1).tolist()
        order = sorted(range(len(flat_a)), key=lambda i: (-flat_a[i], i))
        for k, c in enumerate(counts):
            chosen = torch.zeros(len(flat_a), dtype=torch.bool)
            chosen[order[:c]] = True
            mask = chosen.view(a.shape[1:]).expand(x.shape[1:])
            src, dst = (x[b], fill[b]) if remove else (fill[b], x[b])
            row = torch.where(mask, dst, src).unsqueeze(0)
            y = model(row)
            if probability:
                y = torch.softmax(y, dim=1)
            out[b, k] = y[0, target[b]] if target is not None else y.reshape(-1)[0]
    return out


def reference_blur(x, sigma, size):
    """Zero-padded Gaussian blur of the last two dims, as a plain sum over offsets."""
    r = size // 2
    offsets = torch.arange(size, dtype=torch.float64) - r
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    k = torch.outer(g, g) / torch.outer(g, g).sum()
    padded = torch.nn.functional.pad(x.double(), (r, r, r, r))
    h, w = x.shape[-2:]
    out = torch.zeros_like(x, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            out += k[i, j] * padded[..., i:i + h, j:j + w]
    return out


def conv_inputs(batch=3, pixel=True, seed=7):
    case = _case("conv", batch=batch)
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 1, 8, 8) if pixel else (batch, 3, 8, 8)
    return case, torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("remove", [True, False])
@pytest.mark.parametrize("pixel", [True, False])
@pytest.mark.parametrize("baseline", [0.0, -0.5, "tensor", "blur"])
def test_curves_match_definition(remove, pixel, baseline):
    case, a = conv_inputs(pixel=pixel)
    x = case.inputs
    if baseline == "tensor":
        baseline = torch.linspace(-1, 1, 3 * 8 * 8, dtype=torch.float64).view(1, 3, 8, 8)
    fn = deletion_curve if remove else insertion_curve
    n_steps = 7
    got = fn(case.model, x, a, target=case.target, n_steps=n_steps, baseline=baseline)
    fa = a[0].numel()
    counts = [k * fa // n_steps for k in range(n_steps + 1)]
    if isinstance(baseline, str):
        fill = reference_blur(x, 5.0, 11)
    else:
        fill = baseline if isinstance(baseline, Tensor) else torch.full((1, 3, 8, 8), baseline, dtype=torch.float64)
    ref = reference_curve(case.model, x, a, case.target, counts, fill, remove, True)
    assert got.values.shape == (3, n_steps + 1) and got.values.dtype == torch.float64
    assert _rel_err(got.values, ref) <= 1e-12
    fractions = torch.tensor(counts, dtype=torch.float64) / fa
    assert _rel_err(got.auc, torch.trapezoid(ref, fractions, dim=1)) <= 1e-12


def test_blur_matches_plain_sum():
    x = torch.randn(2, 3, 9, 12, dtype=torch.float64)
    assert _rel_err(gaussian_blur(x, 2.0, 5), reference_blur(x, 2.0, 5)) <= 1e-13


@pytest.mark.parametrize("name", ["mlp", "scalar"])
def test_curves_of_vector_inputs_with_logits(name):
    case = _case(name, batch=2)
    x = case.inputs
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = deletion_curve(case.model, x, a, target=case.target, n_steps=5, baseline=0.1, output="logit")
    counts = [k * x.shape[1] // 5 for k in range(6)]
    target = None if case.target is None else case.target.tolist()
    ref = reference_curve(case.model, x, a, target, counts, torch.full((1, x.shape[1]), 0.1, dtype=torch.float64),
                          True, False)
    assert _rel_err(got.values, ref) <= 1e-12


def test_explainer_as_attributions():
    case, _ = conv_inputs()
    a = saliency(case.model, case.inputs, target=case.target)
    by_name = deletion_curve(case.model, case.inputs, "saliency", target=case.target, n_steps=4)
    given = deletion_curve(case.model, case.inputs, a, target=case.target, n_steps=4)
    assert torch.equal(by_name.values, given.values)


class RowwiseNet(nn.Module):
    """[B, 3, 8, 8] -> [B, 5], bitwise row-independent (no BLAS blocking)."""

    def forward(self, x):
        return torch.stack([torch.tanh(x * s).flatten(1).sum(1) for s in (0.5, 1.0, 1.5, 2.0, 2.5)], dim=1)


@pytest.mark.parametrize("chunk", [dict(chunk_rows=1), dict(chunk_rows=3), dict(chunk_rows=10), dict(memory_budget=1)])
@pytest.mark.parametrize("fn", ["deletion", "insertion", "pixel_flipping"])
def test_same_values_for_any_chunking_and_batch(chunk, fn):
    """Bit-identical on a row-independent model (the conv net's BLAS sums vary with the batch)."""
    case, a = conv_inputs()
    net, x = RowwiseNet(), case.inputs
    run = {
        "deletion": lambda xb, ab, t, **kw: deletion_curve(net, xb, ab, target=t, n_steps=6, **kw),
        "insertion": lambda xb, ab, t, **kw: insertion_curve(net, xb, ab, target=t, n_steps=6, **kw),
        "pixel_flipping": lambda xb, ab, t, **kw: pixel_flipping(net, xb, ab, target=t, features_in_step=20,
                                                                 baseline="uniform", seed=4, **kw),
    }[fn]
    whole = run(x, a, case.target)
    assert torch.equal(run(x, a, case.target, **chunk).values, whole.values)
    assert torch.equal(run(x[:2], a[:2], case.target[:2], **chunk).values, whole.values[:2])
    assert torch.equal(run(x[:1], a[:1], case.target[0]).values, whole.values[:1])


def test_pixel_flipping_partial_last_step_matches_definition():
    case, a = conv_inputs(pixel=False)
    got = pixel_flipping(case.model, case.inputs, a, target=case.target, features_in_step=50, baseline=0.2,
                         output="logit")
    counts = [min(50 * (k + 1), 192) for k in range(4)]
    ref = reference_curve(case.model, case.inputs, a, case.target, counts,
                          torch.full((1, 3, 8, 8), 0.2, dtype=torch.float64), True, False)
    assert got.values.shape == (3, 4) and _rel_err(got.values, ref) <= 1e-12
    assert _rel_err(got.auc, torch.trapezoid(ref, dim=1)) <= 1e-12


# ---------------------------------------------------------------------------
# Quantus PixelFlipping
# ---------------------------------------------------------------------------


def quantus_case(batch=3):
    case = _case("conv", dtype=torch.float32, batch=batch)
    a = np.random.default_rng(4).standard_normal((batch, 1, 8, 8)).astype(np.float32)
    return case, case.inputs.numpy(), np.array(case.target), a


def batch_size_sensitivity(model, x: Tensor, softmax: bool, sizes=range(1, 65)) -> float:
    """The largest change of an output (as the curves read it) when its row
    is evaluated in a batch of ``s`` rows instead of with the ``B`` examples,
    over ``sizes``: 0 where this CPU's kernels round the same at every batch
    size, a few ulps where they do not (AVX-512 GEMMs pick kernels by size)."""
    def outputs(rows):
        out = model(rows)
        return torch.softmax(out, 1) if softmax else out

    worst = 0.0
    with torch.no_grad():
        ref = outputs(x)
        for s in sizes:
            rows = x.repeat(-(-s // x.shape[0]), *([1] * (x.dim() - 1)))[:s]
            k = min(s, x.shape[0])
            worst = max(worst, (outputs(rows)[:k] - ref[:k]).abs().max().item())
    return worst


def assert_curves_match_quantus(got, expected, model, x: Tensor, softmax: bool = True) -> None:
    """fastattr evaluates the perturbed rows in chunks of its own size,
    Quantus one batch of B per step: bit-identical curves where the model is
    batch-size invariant on this CPU (measured first), else within 4x the
    measured batch-size sensitivity of its outputs."""
    assert isinstance(got, list) and all(isinstance(r, list) for r in got)
    sensitivity = batch_size_sensitivity(model, x, softmax)
    if sensitivity == 0:
        assert got == expected
    else:
        assert np.allclose(np.array(got), np.array(expected), rtol=0, atol=4 * sensitivity), sensitivity


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(features_in_step=16),
    dict(features_in_step=8, perturb_baseline="white", normalise=False, abs=True),
    dict(features_in_step=32, perturb_baseline=0.25),
])
@pytest.mark.parametrize("softmax", [True, False])
def test_quantus_pixel_flipping_equal(kwargs, softmax):
    case, x, y, a = quantus_case()
    expected = quantus.PixelFlipping(disable_warnings=True, **kwargs)(
        model=case.model, x_batch=x, y_batch=y, a_batch=a, device="cpu", softmax=softmax)
    got = PixelFlipping(chunk_rows=17, **kwargs)(model=case.model, x_batch=x, y_batch=y, a_batch=a, softmax=softmax)
    assert_curves_match_quantus(got, expected, case.model, case.inputs, softmax)


def test_quantus_pixel_flipping_auc_and_aggregate():
    """Quantus 0.6's return_auc_per_sample calls np.trapz, gone in NumPy 2: compare with np.trapezoid of its curves."""
    case, x, y, a = quantus_case()
    curves = quantus.PixelFlipping(features_in_step=16, disable_warnings=True)(
        model=case.model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    aucs = PixelFlipping(features_in_step=16, return_auc_per_sample=True)(model=case.model, x_batch=x, y_batch=y,
                                                                          a_batch=a)
    assert np.allclose(aucs, np.trapezoid(np.array(curves, dtype=np.float64), dx=1, axis=1), rtol=1e-12, atol=0)
    agg = PixelFlipping(features_in_step=16, return_aggregate=True)(model=case.model, x_batch=x, y_batch=y, a_batch=a)
    assert len(agg) == 1 and np.isclose(agg[0], np.mean(curves))


def test_quantus_pixel_flipping_explain_func():
    case, x, y, _ = quantus_case()
    a = saliency(case.model, case.inputs, target=torch.tensor(y)).numpy()
    expected = quantus.PixelFlipping(features_in_step=16, disable_warnings=True)(
        model=case.model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    got = PixelFlipping(features_in_step=16)(model=case.model, x_batch=x, y_batch=y, explain_func=saliency)
    assert_curves_match_quantus(got, expected, case.model, case.inputs)


def test_quantus_pixel_flipping_uniform_on_the_same_draws():
    case, x, y, a = quantus_case()
    step, seed, low, high = 16, 5, -1.0, 2.0
    points = 192 // step
    u, _ = group_uniforms(seed, PIXEL_FLIPPING_STREAM, 3, points, torch.device("cpu"))
    table = (low + (high - low) * u).view(3, points).numpy()
    kwargs = dict(features_in_step=step, perturb_baseline="uniform",
                  perturb_func_kwargs={"uniform_low": low, "uniform_high": high})
    with numpy_uniform_returns([table[:, k] for k in range(points)], low, high):
        expected = quantus.PixelFlipping(disable_warnings=True, **kwargs)(
            model=case.model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    got = PixelFlipping(seed=seed, **kwargs)(model=case.model, x_batch=x, y_batch=y, a_batch=a)
    assert_curves_match_quantus(got, expected, case.model, case.inputs)


def test_quantus_pixel_flipping_uniform_statistics():
    """One example repeated 64 times: the mean AUC over the copies of fastattr
    (keyed) and Quantus (NumPy's RNG) agree within 4 standard errors of the difference."""
    case, x, y, a = quantus_case(batch=1)
    reps = 64
    xb, yb, ab = np.repeat(x, reps, 0), np.repeat(y, reps, 0), np.repeat(a, reps, 0)
    kwargs = dict(features_in_step=16, perturb_baseline="uniform")
    np.random.seed(0)
    theirs = np.trapezoid(np.array(quantus.PixelFlipping(disable_warnings=True, **kwargs)(
        model=case.model, x_batch=xb, y_batch=yb, a_batch=ab, device="cpu")), dx=1, axis=1)
    ours = np.array(PixelFlipping(return_auc_per_sample=True, seed=2, **kwargs)(
        model=case.model, x_batch=xb, y_batch=yb, a_batch=ab))
    stderr = (ours.var(ddof=1) / reps + theirs.var(ddof=1) / reps) ** 0.5
    assert abs(ours.mean() - theirs.mean()) <= 4 * stderr


@pytest.mark.parametrize("ctor,call,error,name", [
    (dict(features_in_step=5), {}, ValueError, "features_in_step"),
    (dict(features_in_step=0), {}, ValueError, "features_in_step"),
    (dict(perturb_baseline="mean"), {}, NotImplementedError, "perturb_baseline"),
    (dict(perturb_baseline="grey"), {}, ValueError, "perturb_baseline"),
    (dict(perturb_func_kwargs={"foo": 1}), {}, NotImplementedError, "perturb_func_kwargs"),
    ({}, dict(a_batch=np.zeros((3, 1, 8, 7), np.float32)), ValueError, "a_batch"),
])
def test_quantus_pixel_flipping_bad_input(ctor, call, error, name):
    case, x, y, a = quantus_case()
    args = dict(model=case.model, x_batch=x, y_batch=y, a_batch=a)
    args.update(call)
    with pytest.raises(error, match=name):
        PixelFlipping(**ctor)(**args)


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


@pytest.mark.parametrize("fn", [deletion_curve, insertion_curve, pixel_flipping])
@pytest.mark.parametrize("kwargs,name", [
    (dict(attributions=torch.zeros(2, 2, 8, 8, dtype=torch.float64)), "attributions"),
    (dict(attributions=torch.zeros(2, 3, 8, dtype=torch.float64)), "attributions"),
    (dict(attributions=torch.full((2, 1, 8, 8), float("nan"), dtype=torch.float64)), "attributions"),
    (dict(output="prob"), "output"),
    (dict(inputs=(torch.zeros(2, 3, 8, 8, dtype=torch.float64),)), "inputs"),
    (dict(inputs=torch.full((2, 3, 8, 8), float("nan"), dtype=torch.float64)), "inputs"),
    (dict(baseline="grey"), "baseline"),
    (dict(chunk_rows=0), "chunk_rows"),
])
def test_bad_input_fails_before_compute(fn, kwargs, name):
    model = CountingModel()
    args = dict(inputs=torch.randn(2, 3, 8, 8, dtype=torch.float64),
                attributions=torch.randn(2, 1, 8, 8, dtype=torch.float64), target=1)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        fn(model, **args)
    assert model.calls == 0


@pytest.mark.parametrize("fn,kwargs,name", [
    (deletion_curve, dict(n_steps=0), "n_steps"),
    (insertion_curve, dict(blur_sigma=0.0), "blur_sigma"),
    (insertion_curve, dict(blur_kernel_size=4), "blur_kernel_size"),
    (pixel_flipping, dict(features_in_step=0), "features_in_step"),
    (pixel_flipping, dict(order=torch.zeros(2, 192, dtype=torch.int64)), "order"),
    (pixel_flipping, dict(baseline="uniform", seed=-1), "seed"),
])
def test_bad_options_fail_before_compute(fn, kwargs, name):
    model = CountingModel()
    with pytest.raises((ValueError, TypeError), match=name):
        fn(model, torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64),
           target=1, **kwargs)
    assert model.calls == 0


def test_probability_needs_class_outputs():
    case = _case("scalar", batch=2)
    with pytest.raises(ValueError, match="output"):
        deletion_curve(case.model, case.inputs, torch.ones(case.inputs.shape, dtype=torch.float64), n_steps=2)


def test_caller_objects_unchanged():
    model = _build(ConvNet, torch.float64)
    list(model.parameters())[0].requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: t.clone() for k, t in model.state_dict().items()}
    x, a = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    x0, a0 = x.clone(), a.clone()
    for fn in (deletion_curve, insertion_curve, pixel_flipping):
        fn(model, x, a, target=1)
    assert torch.equal(x, x0) and torch.equal(a, a0) and not model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
