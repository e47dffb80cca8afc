"""Max/avg sensitivity, local Lipschitz estimate and relative input stability:
against float64 references written from the papers' definitions, against
Captum's ``sensitivity_max`` and Quantus 0.6 on identical perturbations
(their RNG calls patched to return fastattr's keyed draws), statistically on
random ones, and for chunking / batch-composition invariance and bad input."""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import numpy as np
import pytest
import torch
from torch import Tensor

import captum.attr as ca
import captum.metrics as cm
import quantus

import fastattr
import fastattr.captum as fc
from fastattr import ops
from fastattr.captum.metrics._sensitivity import default_perturb_func, sensitivity_max
from fastattr.engine import PURPOSE_PERTURBATION
from fastattr.metrics.lipschitz import local_lipschitz_estimate
from fastattr.metrics.sensitivity import avg_sensitivity, max_sensitivity
from fastattr.metrics.stability import relative_input_stability
from fastattr.quantus._sensitivity import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity

from captum_cases import _case

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")

STREAM = PURPOSE_PERTURBATION * 65536


# ---------------------------------------------------------------------------
# float64 references from the definitions
# ---------------------------------------------------------------------------


def keyed_perturbations(xs: Tuple[Tensor, ...], noise: str, scale: float, n: int, seed: int) -> Tuple[Tensor, ...]:
    """x' of every (example, sample), row b * n + s: the keyed draws of csrc/README.md section 2."""
    return tuple(ops.generate_rows(x, None, None, n, noise, scale, seed, STREAM + i, 0, x.shape[0] * n, 0)
                 for i, x in enumerate(xs))


def reference_saliency(model: Any, xs: Tuple[Tensor, ...], target: Any, afa: Any) -> Tuple[Tensor, ...]:
    """|d model(x)[target] / dx| one example at a time, float64."""
    out: List[List[Tensor]] = [[] for _ in xs]
    for b in range(xs[0].shape[0]):
        rows = tuple(x[b:b + 1].detach().double().requires_grad_() for x in xs)
        args = () if afa is None else tuple(a[b:b + 1] if isinstance(a, Tensor) else a for a in afa)
        y = model.double()(*rows, *args)
        t = target if target is None or isinstance(target, int) else int(torch.as_tensor(target)[b])
        value = y[0] if t is None else y[0, t]
        for i, g in enumerate(torch.autograd.grad(value, rows)):
            out[i].append(g.abs())
    return tuple(torch.cat(o) for o in out)


def _flat(parts: Tuple[Tensor, ...]) -> Tensor:
    return torch.cat([p.reshape(p.shape[0], -1).double() for p in parts], dim=1)


def reference_values(kind: str, case: Any, n: int, seed: int, scale: float) -> Tensor:
    """[B, n] per-sample values of one metric from its definition, float64."""
    xs = tuple(x.double() for x in case.xs)
    noise = "gaussian" if kind == "lipschitz" else "uniform"
    pert = keyed_perturbations(xs, noise, scale, n, seed)
    rep = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731
    afa = case.afa
    afa_rep = None if afa is None else tuple(rep(a) if isinstance(a, Tensor) else a for a in afa)
    tgt = case.target
    tgt_rep = tgt if tgt is None or isinstance(tgt, int) else rep(torch.as_tensor(tgt))
    a = reference_saliency(case.model, xs, tgt, afa)
    a_p = reference_saliency(case.model, pert, tgt_rep, afa_rep)
    a_rep, x_rep = tuple(rep(t) for t in a), tuple(rep(t) for t in xs)
    if kind == "sensitivity":
        v = _flat(tuple(p - c for p, c in zip(a_p, a_rep))).norm(dim=1) / rep(_flat(a).norm(dim=1))
    elif kind == "lipschitz":
        v = _flat(tuple(p - c for p, c in zip(a_p, a_rep))).norm(dim=1) / (
            _flat(tuple(p - c for p, c in zip(pert, x_rep))).norm(dim=1) + 1e-10)
    else:
        rel = lambda new, old: (old - new) / torch.where(old == 0, 1e-6, old)  # noqa: E731
        num = _flat(tuple(rel(p, c) for p, c in zip(a_p, a_rep))).norm(dim=1)
        den = _flat(tuple(rel(p, c) for p, c in zip(pert, x_rep))).norm(dim=1).clamp_min(1e-6)
        v = num / den
    return v.view(-1, n)


METRICS = {
    "max_sensitivity": (max_sensitivity, "sensitivity", "radius", 0.05, lambda v: v.amax(1)),
    "avg_sensitivity": (avg_sensitivity, "sensitivity", "radius", 0.05, lambda v: v.mean(1)),
    "local_lipschitz_estimate": (local_lipschitz_estimate, "lipschitz", "std", 0.1, lambda v: v.amax(1)),
    "relative_input_stability": (relative_input_stability, "stability", "radius", 0.05, lambda v: v.amax(1)),
}


def _saliency_callable(model: Any, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
    """A user explainer (no engine folding): saliency through the public API."""
    return fastattr.saliency(model, inputs, target=target, additional_forward_args=additional_forward_args)


@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize("model", ["conv", "mlp", "two_input", "scalar"])
def test_against_reference(name: str, model: str) -> None:
    """Engine route and callable route both equal the float64 definition (rel. 1e-9)."""
    fn, kind, scale_name, scale, reduce = METRICS[name]
    case = _case(model, torch.float64, batch=3)
    expected = reduce(reference_values(kind, case, 6, 3, scale))
    for explainer in ("saliency", _saliency_callable):
        got = fn(case.model, case.inputs, case.target, explainer=explainer, n_samples=6, seed=3,
                 additional_forward_args=case.afa, **{scale_name: scale})
        assert got.dtype == torch.float64 and got.shape == (3,)
        err = ((got - expected).abs() / expected.abs().clamp_min(1e-12)).max().item()
        assert err < 1e-9, f"{name} {model} {explainer}: relative error {err:.3g}"


@pytest.mark.parametrize("name", sorted(METRICS))
def test_float32_against_reference(name: str) -> None:
    """float32 inputs: within 1e-4 relative of the float64 definition
    (measured <= 5e-6 on the conv net; perturbations rounded to float32 differ
    from the float64 ones by an ulp)."""
    fn, kind, scale_name, scale, reduce = METRICS[name]
    case32, case64 = _case("conv", torch.float32), _case("conv", torch.float64)
    got = fn(case32.model, case32.inputs, case32.target, n_samples=5, **{scale_name: scale})
    expected = reduce(reference_values(kind, case64, 5, 0, scale))
    assert ((got - expected).abs() / expected.abs()).max().item() < 1e-4


@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize("explainer", ["saliency", "input_x_gradient", "integrated_gradients", "guided_backprop"])
def test_chunking_and_batch_composition(name: str, explainer: str) -> None:
    """Bit-identical for any chunk_rows / memory_budget; an example's value
    does not depend on the examples after it (keys are its index)."""
    fn, _, scale_name, scale, _ = METRICS[name]
    case = _case("conv", torch.float64, batch=4)
    kwargs = {"explainer": explainer, "n_samples": 5, scale_name: scale}
    if explainer == "integrated_gradients":
        kwargs["explainer_kwargs"] = {"n_steps": 4}
    full = fn(case.model, case.inputs, case.target, **kwargs)
    for chunking in ({"chunk_rows": 1}, {"chunk_rows": 7}, {"memory_budget": 50_000}):
        assert torch.equal(fn(case.model, case.inputs, case.target, **kwargs, **chunking), full), chunking
    other = case.inputs.clone()
    other[2:] = torch.randn_like(other[2:])
    mixed = fn(case.model, other, case.target, **kwargs)
    assert torch.allclose(mixed[:2], full[:2], rtol=1e-12, atol=0)
    head = fn(case.model, case.inputs[:2], case.target[:2], **kwargs)
    assert torch.allclose(head, full[:2], rtol=1e-12, atol=0)


def test_batch_one_and_shared_clean_explanation() -> None:
    case = _case("mlp", torch.float64, batch=1)
    clean = fastattr.saliency(case.model, case.inputs, case.target)
    a = max_sensitivity(case.model, case.inputs, case.target, n_samples=3)
    b = max_sensitivity(case.model, case.inputs, case.target, n_samples=3, attributions=clean)
    assert a.shape == (1,) and torch.equal(a, b)


def test_options() -> None:
    """norm orders, normalize=False, per-input radius, IG baselines through explainer_kwargs."""
    case = _case("two_input", torch.float64)
    xs = case.xs
    pert = keyed_perturbations(xs, "uniform", 0.1, 4, 0)
    clean = reference_saliency(case.model, xs, 1, case.afa)
    afa_rep = (case.afa[0].repeat_interleave(4, 0), case.afa[1])
    a_p = reference_saliency(case.model, pert, 1, afa_rep)
    diff = _flat(tuple(p - c.repeat_interleave(4, 0) for p, c in zip(a_p, clean)))
    for norm in (1, float("inf")):
        got = max_sensitivity(case.model, xs, 1, radius=0.1, n_samples=4, norm=norm, normalize=False,
                              additional_forward_args=case.afa)
        expected = diff.norm(p=norm, dim=1).view(3, 4).amax(1)
        assert torch.allclose(got, expected, rtol=1e-10, atol=0)
    per_input = max_sensitivity(case.model, xs, 1, radius=(0.1, 0.2), n_samples=2, additional_forward_args=case.afa)
    assert not torch.equal(per_input, max_sensitivity(case.model, xs, 1, radius=0.1, n_samples=2,
                                                      additional_forward_args=case.afa))
    base = tuple(torch.full_like(x[:1], 0.1) for x in xs)
    ig = avg_sensitivity(case.model, xs, 1, explainer="integrated_gradients", n_samples=2,
                         explainer_kwargs={"baselines": base, "n_steps": 5}, additional_forward_args=case.afa)
    ig_callable = avg_sensitivity(
        case.model, xs, 1, n_samples=2, additional_forward_args=case.afa,
        explainer=lambda m, x, target=None, additional_forward_args=None: fastattr.integrated_gradients(
            m, x, baselines=base, target=target, additional_forward_args=additional_forward_args, n_steps=5))
    assert torch.allclose(ig, ig_callable, rtol=1e-9, atol=0)


# ---------------------------------------------------------------------------
# Captum sensitivity_max
# ---------------------------------------------------------------------------


def _captum_layout(xs: Tuple[Tensor, ...], radius: float, n: int, seed: int) -> Callable[..., Any]:
    """A perturb_func handing Captum fastattr's keyed perturbations in Captum's
    layout (chunk of k samples: row b * k + j is sample s0 + j of example b),
    checking each call's shape."""
    pert = keyed_perturbations(xs, "uniform", radius, n, seed)
    state = {"s0": 0}

    def perturb(inputs: Any, perturb_radius: float) -> Any:
        given = inputs if isinstance(inputs, tuple) else (inputs,)
        b = xs[0].shape[0]
        k = given[0].shape[0] // b
        assert perturb_radius == radius and all(g.shape[0] == b * k for g in given)
        s0 = state["s0"]
        state["s0"] += k
        out = tuple(p.view(b, n, *p.shape[1:])[:, s0:s0 + k].reshape(b * k, *p.shape[1:]) for p in pert)
        return out if isinstance(inputs, tuple) else out[0]

    return perturb


@pytest.mark.parametrize("model", ["conv", "two_input"])
@pytest.mark.parametrize("method", ["Saliency", "InputXGradient", "IntegratedGradients"])
def test_captum_sensitivity_max(model: str, method: str) -> None:
    """Fused drop-in route == keyed route with Captum's attribute == Captum
    given the same perturbations (float64, rel. 1e-9; IG 1e-6: fastattr's and
    Captum's quadrature sums differ in the last bits, measured <= 2e-8
    relative, and a sensitivity is a difference of them); a caller's
    perturb_func gives Captum's exact numbers."""
    case = _case(model, torch.float64)
    kwargs = {"target": case.target, "additional_forward_args": case.afa}
    if method == "IntegratedGradients":
        kwargs["n_steps"] = 6
    ours = getattr(fc, method)(case.model).attribute
    theirs = getattr(ca, method)(case.model).attribute
    fused = sensitivity_max(ours, case.inputs, n_perturb_samples=5, perturb_radius=0.05, **kwargs)
    keyed = sensitivity_max(theirs, case.inputs, n_perturb_samples=5, perturb_radius=0.05,
                            max_examples_per_batch=7, **kwargs)
    captum = cm.sensitivity_max(theirs, case.inputs, _captum_layout(case.xs, 0.05, 5, 0), perturb_radius=0.05,
                                n_perturb_samples=5, max_examples_per_batch=7, **kwargs)
    assert fused.shape == captum.shape == (3,) and fused.dtype == captum.dtype
    tol = 1e-6 if method == "IntegratedGradients" else 1e-9
    assert torch.allclose(fused, captum, rtol=tol, atol=0)
    assert torch.allclose(keyed, captum, rtol=tol, atol=0)
    own = lambda x, r: tuple(t + r * torch.cos(t) for t in x) if isinstance(x, tuple) else x + r * torch.cos(x)  # noqa
    for mepb in (None, 4):
        exact = sensitivity_max(theirs, case.inputs, own, 0.05, 3, max_examples_per_batch=mepb, **kwargs)
        assert torch.equal(exact, cm.sensitivity_max(theirs, case.inputs, own, 0.05, 3,
                                                     max_examples_per_batch=mepb, **kwargs))


def test_captum_statistics_and_default_perturb_func() -> None:
    """Random perturbations: the mean sensitivity over 400 of Captum's draws
    (its default_perturb_func, examples repeated, one sample each) and over
    400 keyed ones agree within 5% (measured 0.6%); default_perturb_func is sample 0 of the keyed draws."""
    case = _case("mlp", torch.float64)
    expl = ca.Saliency(case.model).attribute
    n = 400
    ours = avg_sensitivity(case.model, case.inputs, case.target, radius=0.2, n_samples=n, explainer_kwargs={"abs": True})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = cm.sensitivity_max(expl, case.inputs.repeat(n, 1), n_perturb_samples=1, perturb_radius=0.2,
                                    target=case.target.repeat(n))
    theirs = theirs.view(n, -1).mean(0)
    assert ((ours - theirs).abs() / theirs).max().item() < 0.05
    (p,) = default_perturb_func(case.inputs, 0.2, seed=4)
    assert torch.equal(p, keyed_perturbations(case.xs, "uniform", 0.2, 1, 4)[0])


# ---------------------------------------------------------------------------
# Quantus drop-ins
# ---------------------------------------------------------------------------


class numpy_draws:
    """Patch ``np.random.<name>``: call k returns sample k of fastattr's keyed
    perturbation of ``x`` as noise (``x' - x`` in float64, so Quantus's
    ``x + noise`` rounds to the same x'), asserting Quantus's arguments."""

    def __init__(self, name: str, x: Tensor, noise: str, scale: float, n: int, expect: dict) -> None:
        self.name, self.expect, self.calls = name, expect, 0
        pert = keyed_perturbations((x,), noise, scale, n, 0)[0]
        b = x.shape[0]
        self.noise = (pert.double() - x.double().repeat_interleave(n, 0)).view(b, n, -1)

    def __enter__(self) -> "numpy_draws":
        self.real = getattr(np.random, self.name)

        def fake(**kwargs: Any) -> np.ndarray:
            size = kwargs.pop("size")
            assert kwargs == self.expect, kwargs
            assert tuple(size) == (self.noise.shape[0], self.noise.shape[2]), size
            out = self.noise[:, self.calls].numpy()
            self.calls += 1
            return out

        setattr(np.random, self.name, fake)
        return self

    def __exit__(self, *exc: Any) -> None:
        setattr(np.random, self.name, self.real)


def _quantus_saliency(model: Any, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
    return quantus.explain(model, inputs, targets, method="Saliency", **kwargs)


@pytest.mark.parametrize("cls", ["MaxSensitivity", "AvgSensitivity", "LocalLipschitzEstimate"])
@pytest.mark.parametrize("batch", [1, 3])
def test_quantus_identical_perturbations(cls: str, batch: int) -> None:
    """Equal to Quantus given the same perturbations (rel. 1e-5, float32:
    Quantus's numpy explanations and norms are float32); batch 1 with
    Quantus's batch-wide normalise, any batch without it."""
    case = _case("mlp", torch.float32, batch=batch)
    x, y = case.inputs.numpy(), case.target.numpy()
    n = 4
    if cls == "LocalLipschitzEstimate":
        draws = ("normal", "gaussian", 0.1, {"loc": 0.0, "scale": 0.1})
        options = {"normalise": batch == 1}
    else:
        draws = ("uniform", "uniform", 0.2, {"low": -0.2, "high": 0.2})
        options = {}
    reference = getattr(quantus, cls)(nr_samples=n, disable_warnings=True, **options)
    with numpy_draws(draws[0], case.inputs, draws[1], draws[2], n, draws[3]) as patch:
        theirs = reference(case.model, x, y, explain_func=_quantus_saliency)
    assert patch.calls == n
    drop_in = getattr(fastattr.quantus._sensitivity, cls)(nr_samples=n, disable_warnings=True, **options)
    for explain in (fastattr.saliency, _quantus_saliency):
        ours = drop_in(case.model, x, y, explain_func=explain)
        assert isinstance(ours, list) and len(ours) == batch
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_quantus_statistics_and_options() -> None:
    """Random perturbations: AvgSensitivity over 200 samples within 10% of
    Quantus's (measured 5.2%: Quantus's
    mean over 200 of its own draws has a standard error of a few percent); a_batch, tensors, return_aggregate, channel-last input."""
    case = _case("conv", torch.float32)
    x, y = case.inputs.numpy(), np.array(case.target)
    np.random.seed(0)
    theirs = quantus.AvgSensitivity(nr_samples=200, disable_warnings=True)(
        case.model, x, y, explain_func=_quantus_saliency, explain_func_kwargs={"reduce_axes": ()})
    ours = AvgSensitivity(nr_samples=200)(case.model, x, y, explain_func=fastattr.saliency)
    np.testing.assert_allclose(ours, theirs, rtol=0.1)
    metric = MaxSensitivity(nr_samples=3, return_aggregate=True)
    a = fastattr.saliency(case.model, case.inputs, case.target)
    agg = metric(case.model, case.inputs, torch.tensor(case.target), a_batch=a, explain_func=fastattr.saliency)
    per = MaxSensitivity(nr_samples=3)(case.model, x, y, explain_func=fastattr.saliency)
    assert agg == [pytest.approx(np.mean(per), rel=1e-6)]
    last = MaxSensitivity(nr_samples=3)(case.model, np.moveaxis(x, 1, -1), y, explain_func=fastattr.saliency)
    np.testing.assert_allclose(last, per, rtol=1e-6)
    lle = LocalLipschitzEstimate(nr_samples=3)(case.model, x, y, explain_func=fastattr.saliency)
    lle_head = LocalLipschitzEstimate(nr_samples=3)(case.model, x[:1], y[:1], explain_func=fastattr.saliency)
    assert lle[0] == pytest.approx(lle_head[0], rel=1e-6)  # per-example normalise: no batch dependence


# ---------------------------------------------------------------------------
# Bad input and the caller's objects
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"radius": 0.0}, "radius"), ({"radius": -1.0}, "radius"), ({"radius": float("nan")}, "radius"),
    ({"n_samples": 0}, "n_samples"), ({"seed": -1}, "seed"), ({"norm": "nuc"}, "norm"),
    ({"attributions": torch.zeros(3, 5)}, "attributions"), ({"explainer": "nope"}, "explainer"),
    ({"explainer": lambda m, x, target=None, additional_forward_args=None: x[:, :3]}, "explainer"),
    ({"explainer_kwargs": {"n_steps": 3}}, "explainer_kwargs"),
])
def test_bad_input(kwargs: dict, match: str) -> None:
    case = _case("mlp", torch.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        max_sensitivity(case.model, case.inputs, case.target, **kwargs)


def test_bad_input_other_metrics() -> None:
    case = _case("mlp", torch.float64)
    bad = case.inputs.clone()
    bad[0, 0] = float("nan")
    for fn in (max_sensitivity, local_lipschitz_estimate, relative_input_stability):
        with pytest.raises(ValueError, match="inputs"):
            fn(case.model, bad, case.target)
    with pytest.raises(ValueError, match="std"):
        local_lipschitz_estimate(case.model, case.inputs, case.target, std=0)
    with pytest.raises(ValueError, match="eps_min"):
        relative_input_stability(case.model, case.inputs, case.target, eps_min=0)
    with pytest.raises(ValueError, match="perturb_radius"):
        sensitivity_max(ca.Saliency(case.model).attribute, case.inputs, perturb_radius=0, target=0)
    with pytest.raises(ValueError, match="n_perturb_samples"):
        sensitivity_max(ca.Saliency(case.model).attribute, case.inputs, n_perturb_samples=0, target=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"return_nan_when_prediction_changes": True}, "return_nan_when_prediction_changes"),
    ({"perturb_func": quantus.functions.perturb_func.gaussian_noise}, "perturb_func"),
    ({"norm_numerator": quantus.functions.norm_func.linf_norm, "norm_denominator": lambda a: a}, "norm_denominator"),
    ({"normalise": True, "normalise_func": quantus.functions.normalise_func.normalise_by_negative}, "normalise_func"),
    ({"nr_samples": 0}, "nr_samples"), ({"lower_bound": 0.0}, "lower_bound"), ({"bogus": 1}, "bogus"),
])
def test_quantus_unsupported(kwargs: dict, match: str) -> None:
    with pytest.raises((NotImplementedError, ValueError, TypeError), match=match):
        MaxSensitivity(**kwargs)


def test_quantus_bad_call() -> None:
    case = _case("mlp", torch.float32)
    x, y = case.inputs.numpy(), case.target.numpy()
    metric = MaxSensitivity(nr_samples=2)
    with pytest.raises(ValueError, match="explain_func"):
        metric(case.model, x, y)
    with pytest.raises(ValueError, match="y_batch"):
        metric(case.model, x, y[:2], explain_func=fastattr.saliency)
    with pytest.raises(ValueError, match="a_batch"):
        metric(case.model, x, y, a_batch=np.ones((3, 5), np.float32), explain_func=fastattr.saliency)


def test_caller_objects_unchanged() -> None:
    """Train mode (no BatchNorm here: its running statistics are the model's
    own forward effect), requires_grad, parameters, hooks and inputs come back as they were."""
    case = _case("mlp", torch.float32)
    model = case.model.train()
    model.net[4].weight.requires_grad_(False)
    params = {k: p.clone() for k, p in model.state_dict().items()}
    x = case.inputs.clone()
    for fn in (max_sensitivity, local_lipschitz_estimate, relative_input_stability):
        fn(model, case.inputs, case.target, n_samples=2)
    MaxSensitivity(nr_samples=2)(model, case.inputs, case.target, explain_func=fastattr.saliency)
    sensitivity_max(fc.Saliency(model).attribute, case.inputs, n_perturb_samples=2, target=case.target)
    assert model.training and not model.net[4].weight.requires_grad and model.net[0].weight.requires_grad
    assert all(torch.equal(p, params[k]) for k, p in model.state_dict().items())
    assert torch.equal(case.inputs, x) and not case.inputs.requires_grad
    assert not model._forward_hooks and not model._backward_hooks
