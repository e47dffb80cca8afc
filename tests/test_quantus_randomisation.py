"""SmoothMPRT, EfficientMPRT and RandomLogit: the functions against float64
references written from the definitions, the Quantus 0.6 drop-ins against
Quantus on the same inputs with the same randomness (its layers reset as
Quantus resets them, numpy's draws patched to fastattr's keyed ones),
numpy's histogram reproduced bin for bin, keyed draws independent of the
batch, bad input, and the caller's objects left as they were."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import pytest
import quantus
import scipy.stats
import torch
from torch import Tensor, nn

import fastattr
from fastattr import ops
from fastattr.engine import PURPOSE_SMOOTHGRAD
from fastattr.metrics.random_logit import off_classes, random_logit
from fastattr.metrics.randomization import (
    discrete_entropy, efficient_model_randomization, histogram_counts, keyed_uniform_init, noisy_copies,
    randomized_models, smooth_model_randomization,
)
from fastattr.metrics.similarity import spearman, ssim
from fastattr.quantus._randomization import EfficientMPRT, RandomLogit, SmoothMPRT

from captum_cases import _case

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")

# float64 against float64: the same sums in another order.
RTOL64 = 1e-10


def quantus_reset(seed: int) -> Any:
    """Quantus's randomization: the global RNG seeded with seed + 1, then reset_parameters()."""
    def randomize(name: str, module: nn.Module, index: int) -> None:
        torch.manual_seed(seed + 1)
        module.reset_parameters()
    return randomize


def numpy_saliency(model: Any, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
    """A Quantus-style explain_func (numpy in and out)."""
    return fastattr.saliency(model, torch.as_tensor(inputs), target=torch.as_tensor(targets)).numpy()


def ref_saliency(model: nn.Module, x: Tensor, target: Any) -> Tensor:
    """``|d model(x_b)[t_b] / d x_b|`` one example at a time."""
    out = []
    for b in range(x.shape[0]):
        row = x[b:b + 1].detach().requires_grad_()
        t = target if isinstance(target, int) else int(torch.as_tensor(target)[b])
        (g,) = torch.autograd.grad(model(row)[0, t], row)
        out.append(g.abs())
    return torch.cat(out)


# ---------------------------------------------------------------------------
# the functions against references
# ---------------------------------------------------------------------------


def test_noisy_copies_are_keyed_and_scaled_per_example() -> None:
    """Copy n < N-1 of example b is x_b + 0.1 (max - min) z with z SmoothGrad's
    keyed normal draw of (seed, b, n); copy N-1 is x_b; any block gives the same rows."""
    x = _case("conv", torch.float64, batch=4).inputs
    n, seed = 5, 9
    rows = noisy_copies((x,), 0, 4, n, 0.1, seed, 0)[0].view(4, n, *x.shape[1:])
    z = ops.generate_rows(torch.zeros_like(x), None, None, n - 1, "gaussian", 1.0, seed,
                          PURPOSE_SMOOTHGRAD * 65536, 0, 4 * (n - 1), 0).view(4, n - 1, *x.shape[1:])
    for b in range(4):
        spread = 0.1 * float(x[b].max() - x[b].min())
        torch.testing.assert_close(rows[b, :-1], x[b] + spread * z[b], rtol=1e-15, atol=1e-15)
        assert torch.equal(rows[b, -1], x[b])
    block = noisy_copies((x,), 2, 4, n, 0.1, seed, 0)[0].view(2, n, *x.shape[1:])
    assert torch.equal(block, rows[2:])
    assert torch.equal(noisy_copies((x[2:],), 0, 2, n, 0.1, seed, 2)[0].view(2, n, *x.shape[1:]), rows[2:])


def test_bottom_up_order_randomizes_cumulatively_from_the_first_layer() -> None:
    model = _case("conv").model
    layers = ["conv1", "conv2", "fc"]
    seen = []
    for name, twin in randomized_models(model, layers, "bottom_up", keyed_uniform_init(3)):
        changed = [n for n in layers if not torch.equal(getattr(twin, n).weight, getattr(model, n).weight)]
        seen.append((name, changed))
    assert seen == [("conv1", ["conv1"]), ("conv2", ["conv1", "conv2"]), ("fc", ["conv1", "conv2", "fc"])]


def test_smooth_model_randomization_against_reference() -> None:
    """Spearman / SSIM of the mean saliency over each example's noisy copies,
    original vs each model of the bottom-up cascade (explained row by row)."""
    case = _case("conv", torch.float64, batch=3)
    layers = ["conv1", "fc"]
    n = 4
    ours = smooth_model_randomization(case.model, case.inputs, case.target, layers=layers, seed=2, n_samples=n,
                                      ssim_win_size=5)
    rows = noisy_copies((case.inputs,), 0, 3, n, 0.1, 2, 0)[0]
    target = torch.as_tensor(case.target).repeat_interleave(n)

    def smooth(m: nn.Module) -> Tensor:
        return ref_saliency(m, rows, target).view(3, n, -1).mean(1)

    clean = smooth(case.model)
    expected = [(name, smooth(twin)) for name, twin in
                randomized_models(case.model, layers, "bottom_up", keyed_uniform_init(2))]
    assert ours.layers == layers
    torch.testing.assert_close(ours.spearman, torch.stack([spearman(clean, e) for _, e in expected]),
                               rtol=RTOL64, atol=0)
    torch.testing.assert_close(ours.ssim, torch.stack([ssim(clean, e, 5) for _, e in expected]),
                               rtol=RTOL64, atol=1e-12)
    engine_free = smooth_model_randomization(
        case.model, case.inputs, case.target, layers=layers, seed=2, n_samples=n, ssim_win_size=5,
        explainer=lambda m, x, target=None, additional_forward_args=None: fastattr.saliency(m, x, target=target))
    torch.testing.assert_close(engine_free.spearman, ours.spearman, rtol=RTOL64, atol=0)


def test_smooth_model_randomization_is_batch_independent() -> None:
    case = _case("conv", torch.float64, batch=4)
    kw = dict(layers=["conv2", "fc"], n_samples=3, ssim_win_size=5)
    whole = smooth_model_randomization(case.model, case.inputs, case.target, **kw)
    part = smooth_model_randomization(case.model, case.inputs[1:3], case.target[1:3], example_offset=1, **kw)
    torch.testing.assert_close(part.spearman, whole.spearman[:, 1:3], rtol=1e-12, atol=0)
    blocks = smooth_model_randomization(case.model, case.inputs, case.target, memory_budget=1, **kw)
    torch.testing.assert_close(blocks.ssim, whole.ssim, rtol=1e-12, atol=0)


def test_histogram_and_entropy_are_numpys() -> None:
    """Bin for bin np.histogram (values on bin edges, constant rows, float32
    and float64), entropy as scipy.stats.entropy of the counts."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for trial in range(60):
            d, bins = int(rng.integers(1, 50)), int(rng.integers(1, 120))
            a = [rng.standard_normal((4, d)), np.round(rng.standard_normal((4, d)) * 4) / 4,
                 np.full((4, d), rng.standard_normal()), rng.integers(0, 7, (4, d)) * 0.1][trial % 4].astype(dtype)
            counts = histogram_counts(torch.from_numpy(a), bins).numpy()
            expected = np.stack([np.histogram(r, bins=bins)[0] for r in a])
            np.testing.assert_array_equal(counts, expected)
            np.testing.assert_allclose(discrete_entropy(torch.from_numpy(a), bins).numpy(),
                                       [scipy.stats.entropy(pk=c) for c in expected], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="NaN"):
        discrete_entropy(torch.tensor([[1.0, float("nan")]]))


def test_efficient_model_randomization_against_reference() -> None:
    case = _case("conv", torch.float64, batch=3)
    ours = efficient_model_randomization(case.model, case.inputs, case.target, seed=4, n_bins=20)
    twin = None
    for _, twin in randomized_models(case.model, ["conv1", "bn", "conv2", "fc"], "bottom_up", keyed_uniform_init(4)):
        pass
    h0 = [scipy.stats.entropy(np.histogram(a.numpy(), bins=20)[0]) for a in ref_saliency(case.model, case.inputs,
                                                                                          case.target)]
    h1 = [scipy.stats.entropy(np.histogram(a.numpy(), bins=20)[0]) for a in ref_saliency(twin, case.inputs,
                                                                                          case.target)]
    np.testing.assert_allclose(ours.original.numpy(), h0, rtol=RTOL64)
    np.testing.assert_allclose(ours.randomized.numpy(), h1, rtol=RTOL64)
    np.testing.assert_allclose(ours.relative.numpy(), (np.array(h1) - h0) / h0, rtol=RTOL64)
    alone = efficient_model_randomization(case.model, case.inputs[2:], case.target[2:], seed=4, n_bins=20)
    torch.testing.assert_close(alone.relative, ours.relative[2:], rtol=1e-12, atol=0)


def test_off_classes_are_uniform_over_the_others_and_keyed() -> None:
    y = torch.arange(6000) % 7
    other = off_classes(y, 7, seed=1)
    assert not (other == y).any() and other.min() >= 0 and other.max() < 7
    # each of the 6 other classes: 1000 expected per true class, sd ~ 29 (binomial 6000 / 7 draws, p = 1/6)
    counts = torch.bincount((other - y) % 7, minlength=7)[1:]
    assert (counts - 1000).abs().max() < 5 * 29, counts
    assert torch.equal(off_classes(y[10:20], 7, seed=1, example_offset=10), other[10:20])
    assert not torch.equal(off_classes(y, 7, seed=2), other)


def test_random_logit_against_reference() -> None:
    case = _case("mlp", torch.float64, batch=5)
    other = off_classes(case.target, 4, seed=3)
    a, b = ref_saliency(case.model, case.inputs, case.target), ref_saliency(case.model, case.inputs, other)
    for similarity, fn in (("ssim", lambda p, q: ssim(p, q, 7)), ("spearman", spearman)):
        expected = fn(a, b)
        ours = random_logit(case.model, case.inputs, case.target, 4, similarity=similarity, seed=3)
        torch.testing.assert_close(ours, expected, rtol=RTOL64, atol=1e-12)
    given = random_logit(case.model, case.inputs, case.target, 4, seed=3, attributions=a)
    torch.testing.assert_close(given, ssim(a, b, 7), rtol=RTOL64, atol=1e-12)
    alone = random_logit(case.model, case.inputs[3:], case.target[3:], 4, seed=3, example_offset=3)
    torch.testing.assert_close(alone, ssim(a, b, 7)[3:], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Quantus drop-ins against Quantus 0.6
# ---------------------------------------------------------------------------


class randn_as:
    """Patch ``np.random.randn``: call k returns the noise that makes Quantus's
    copy ``x + randn * std`` our keyed copy ``k % (N - 1)`` of every example
    (Quantus draws afresh for each explanation; ours are the same for every model)."""

    def __init__(self, x: Tensor, n: int, noise_magnitude: float, seed: int) -> None:
        xn = x.numpy()
        dims = tuple(range(1, xn.ndim))
        std = noise_magnitude * (xn.max(axis=dims, keepdims=True) - xn.min(axis=dims, keepdims=True))
        rows = noisy_copies((x,), 0, x.shape[0], n, noise_magnitude, seed, 0)[0].view(x.shape[0], n, *x.shape[1:])
        self.noise = (rows[:, :-1].double() - x.double()[:, None]).numpy() / std[:, None].astype(np.float64)
        self.calls = 0

    def __enter__(self) -> "randn_as":
        self.real = np.random.randn

        def fake(*shape: int) -> np.ndarray:
            out = self.noise[:, self.calls % self.noise.shape[1]]
            assert out.shape == shape
            self.calls += 1
            return out

        np.random.randn = fake
        return self

    def __exit__(self, *exc: Any) -> None:
        np.random.randn = self.real


@pytest.mark.parametrize("options", [
    {},
    {"layer_order": "top_down", "skip_layers": True},
    {"return_average_correlation": True},
    {"normalise": False, "abs": False, "similarity_func": quantus.similarity_func.correlation_pearson},
    {"layer_order": "independent", "return_last_correlation": True},
])
def test_smooth_mprt_equals_quantus(options: Dict[str, Any]) -> None:
    """Same noisy copies and the same reset layers: Quantus's scores to
    float rounding (1e-6: the mean over copies is a float32 running sum in
    Quantus, float64 here; measured differences ~1e-16 for these rank and
    Pearson correlations)."""
    case = _case("conv", torch.float32, batch=3)
    x, y = case.inputs.numpy(), np.array(case.target)
    n = 4
    kw = {"method": "Saliency", "reduce_axes": ()}  # Captum's Saliency, not summed over channels
    with randn_as(case.inputs, n, 0.1, 42) as patch, torch.random.fork_rng(devices=[]):
        theirs = quantus.SmoothMPRT(disable_warnings=True, nr_samples=n, **options)(
            case.model, x, y, explain_func=quantus.explain, explain_func_kwargs=kw)
    assert patch.calls % (n - 1) == 0 and patch.calls >= 3 * (n - 1)
    for explain, explain_kw in ((fastattr.saliency, None), (quantus.explain, kw)):
        with torch.random.fork_rng(devices=[]):
            ours = SmoothMPRT(disable_warnings=True, nr_samples=n, randomize=quantus_reset(42), **options)(
                case.model, x, y, explain_func=explain, explain_func_kwargs=explain_kw)
        assert type(ours) is type(theirs)
        pairs = [(ours[k], theirs[k]) for k in theirs] if isinstance(theirs, dict) else [(ours, theirs)]
        if isinstance(theirs, dict):
            assert list(ours) == list(theirs)
        for o, t in pairs:
            np.testing.assert_allclose(o, t, rtol=0, atol=1e-6)


def test_smooth_mprt_normalise_per_example_and_given_a_batch() -> None:
    """With a_batch, "original" compares it (normalised by its second moment)
    with the smoothed explanation, by SSIM: equal to Quantus's for one
    example, where its batch-wide normalisation is per example (1e-6: the
    mean over copies is a float32 running sum in Quantus, float64 here)."""
    case = _case("conv", torch.float32, batch=1)
    x, y = case.inputs.numpy(), np.array(case.target[:1])
    a = numpy_saliency(case.model, x, y) * 3.0 + 0.01
    n = 3
    options = dict(nr_samples=n, disable_warnings=True, skip_layers=True)
    # Quantus 0.6's SmoothMPRT calls .tolist() on what its ssim returns, a
    # list: it cannot run its own ssim. The same ssim, returned as an array:
    array_ssim = lambda a, b, batched: np.array(quantus.similarity_func.ssim(a, b, batched))  # noqa: E731
    with randn_as(case.inputs, n, 0.1, 42), torch.random.fork_rng(devices=[]):
        theirs = quantus.SmoothMPRT(similarity_func=array_ssim, **options)(
            case.model, x, y, a_batch=a, explain_func=quantus.explain,
            explain_func_kwargs={"method": "Saliency", "reduce_axes": ()})
    with torch.random.fork_rng(devices=[]):
        ours = SmoothMPRT(randomize=quantus_reset(42), similarity_func=quantus.similarity_func.ssim, **options)(
            case.model, x, y, a_batch=a, explain_func=fastattr.saliency)
    assert list(ours) == list(theirs) == ["original", "fc"]
    for k in theirs:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("options", [
    {},
    {"layer_order": "top_down", "skip_layers": False},
    {"layer_order": "independent"},
    {"complexity_func_kwargs": {"n_bins": 7}},
    {"normalise": True, "abs": True, "return_aggregate": True},
])
def test_efficient_mprt_equals_quantus(options: Dict[str, Any]) -> None:
    """Same reset layers: Quantus's scores (the histograms are numpy's, bin for bin)."""
    case = _case("conv", torch.float32, batch=3)
    x, y = case.inputs.numpy(), np.array(case.target)
    with torch.random.fork_rng(devices=[]):
        theirs = quantus.EfficientMPRT(disable_warnings=True, **options)(case.model, x, y,
                                                                        explain_func=numpy_saliency)
    for explain in (fastattr.saliency, numpy_saliency):
        with torch.random.fork_rng(devices=[]):
            ours = EfficientMPRT(disable_warnings=True, randomize=quantus_reset(42), **options)(
                case.model, x, y, explain_func=explain)
        assert isinstance(ours, list) and len(ours) == len(theirs)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)


@pytest.mark.parametrize("options", [
    {"normalise": False},
    {"normalise": False, "similarity_func": quantus.similarity_func.correlation_spearman},
    {"abs": True, "normalise": False, "similarity_func": quantus.similarity_func.correlation_pearson},
])
def test_random_logit_equals_quantus(options: Dict[str, Any], monkeypatch: Any) -> None:
    """Quantus's draw of the other class patched to ours: its scores (SSIM:
    scikit-image's filters against our box means, 1e-7 absolute)."""
    case = _case("conv", torch.float32, batch=3)
    x, y = case.inputs.numpy(), np.array(case.target)
    classes = 5
    other = off_classes(torch.as_tensor(y), classes, 42)
    index = (other - (other > torch.as_tensor(y)).long()).numpy()  # its position among the others

    def randint(low: int, high: int, size: int) -> np.ndarray:
        assert (low, high, size) == (0, classes - 1, 3)
        return index

    monkeypatch.setattr(np.random, "randint", randint)
    theirs = quantus.RandomLogit(disable_warnings=True, num_classes=classes, **options)(
        case.model, x, y, explain_func=numpy_saliency)
    monkeypatch.undo()
    for explain in (fastattr.saliency, numpy_saliency):
        ours = RandomLogit(disable_warnings=True, num_classes=classes, **options)(case.model, x, y,
                                                                                explain_func=explain)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)


def test_random_logit_normalise_per_example() -> None:
    """Quantus's normalise_by_max spans the batch, which SSIM sees: ours
    equals Quantus's on each example alone."""
    case = _case("conv", torch.float32, batch=3)
    x, y = case.inputs.numpy(), np.array(case.target)
    ours = RandomLogit(disable_warnings=True, num_classes=5)(case.model, x, y, explain_func=fastattr.saliency)
    alone: List[float] = []
    for b in range(3):
        other = off_classes(torch.as_tensor(y[b:b + 1]), 5, 42, example_offset=b)
        pos = (other - (other > int(y[b])).long()).numpy()
        real = np.random.randint
        np.random.randint = lambda low, high, size: pos
        try:
            alone += quantus.RandomLogit(disable_warnings=True, num_classes=5)(
                case.model, x[b:b + 1], y[b:b + 1], explain_func=numpy_saliency)
        finally:
            np.random.randint = real
    np.testing.assert_allclose(ours[1:], alone[1:], rtol=0, atol=1e-7)
    one = RandomLogit(disable_warnings=True, num_classes=5)(case.model, x[:1], y[:1], explain_func=fastattr.saliency)
    np.testing.assert_allclose(one, alone[:1], rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------
# bad input, unsupported options, the caller's objects
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn,kwargs,match", [
    (smooth_model_randomization, {"order": "sideways"}, "order"),
    (smooth_model_randomization, {"n_samples": 0}, "n_samples"),
    (smooth_model_randomization, {"noise_magnitude": -1.0}, "noise_magnitude"),
    (smooth_model_randomization, {"layers": ["nope"]}, "layers"),
    (efficient_model_randomization, {"n_bins": 0}, "n_bins"),
    (efficient_model_randomization, {"model": lambda x: x}, "model"),
    (random_logit, {"num_classes": 1}, "num_classes"),
    (random_logit, {"target": [0, 7], "num_classes": 5}, "target"),
    (random_logit, {"similarity": "cosine"}, "similarity"),
    (random_logit, {"ssim_win_size": 4}, "ssim_win_size"),
])
def test_bad_input_fails_before_any_compute(fn: Any, kwargs: Dict[str, Any], match: str) -> None:
    case = _case("conv", torch.float64, batch=2)
    calls: List[int] = []
    case.model.register_forward_hook(lambda *a: calls.append(1))
    args = {"model": case.model, "inputs": case.inputs, "target": case.target[:2], **kwargs}
    if fn is random_logit:
        args.setdefault("num_classes", 5)
    with pytest.raises((ValueError, TypeError), match=match):
        fn(**args)
    assert not calls


@pytest.mark.parametrize("make,match", [
    (lambda: SmoothMPRT(layer_order="sideways"), "layer_order"),
    (lambda: SmoothMPRT(nr_samples=0), "nr_samples"),
    (lambda: SmoothMPRT(noise_magnitude=-0.1), "noise_magnitude"),
    (lambda: SmoothMPRT(normalise_func=quantus.normalise_func.normalise_by_negative), "normalise_func"),
    (lambda: EfficientMPRT(compute_extra_scores=True), "compute_extra_scores"),
    (lambda: EfficientMPRT(complexity_func=quantus.functions.complexity_func.entropy), "complexity_func"),
    (lambda: EfficientMPRT(complexity_func_kwargs={"rule": "Scotts"}), "rule"),
    (lambda: RandomLogit(num_classes=1), "num_classes"),
    (lambda: RandomLogit(similarity_func=quantus.similarity_func.cosine), "similarity_func"),
])
def test_quantus_unsupported_or_bad_options(make: Any, match: str) -> None:
    with pytest.raises((ValueError, NotImplementedError), match=match):
        make()


def test_quantus_bad_calls() -> None:
    case = _case("conv", torch.float32, batch=2)
    x, y = case.inputs.numpy(), np.array(case.target[:2])
    with pytest.raises(ValueError, match="y_batch"):
        RandomLogit(num_classes=3)(case.model, x, np.array([0, 4]), explain_func=fastattr.saliency)
    with pytest.raises(ValueError, match="explain_func"):
        EfficientMPRT()(case.model, x, y)
    with pytest.raises(TypeError, match="model"):
        EfficientMPRT()(lambda t: t, x, y, explain_func=fastattr.saliency)


def test_caller_objects_unchanged() -> None:
    case = _case("mlp", torch.float32)
    model = case.model.train()
    model.net[4].weight.requires_grad_(False)
    params = {k: p.clone() for k, p in model.state_dict().items()}
    x = case.inputs.clone()
    smooth_model_randomization(model, case.inputs, case.target, n_samples=2)
    efficient_model_randomization(model, case.inputs, case.target)
    random_logit(model, case.inputs, case.target, 4, similarity="spearman")
    SmoothMPRT(nr_samples=2, disable_warnings=True)(model, case.inputs, case.target, explain_func=fastattr.saliency)
    EfficientMPRT(disable_warnings=True)(model, case.inputs, case.target, explain_func=fastattr.saliency)
    assert model.training and not model.net[4].weight.requires_grad and model.net[0].weight.requires_grad
    assert all(torch.equal(p, params[k]) for k, p in model.state_dict().items())
    assert torch.equal(case.inputs, x) and not case.inputs.requires_grad
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
