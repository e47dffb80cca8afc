"""The model-parameter randomization check against a float64 reference
written from Adebayo et al.'s definition (fresh copies, scipy Spearman,
scikit-image SSIM), its keyed parameter draws, and the Quantus ``MPRT``
drop-in against Quantus 0.6 given the same randomized layers."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.stats
import torch
from skimage.metrics import structural_similarity
from torch import nn

import quantus
import fastattr
from fastattr.metrics.randomization import (
    keyed_uniform_init, model_randomization, parameterized_layers, randomized_models,
)
from fastattr.quantus._randomization import MPRT

from captum_cases import _case


def _saliency(model, x, target):
    """|d model(x)[b, t_b] / dx|, the definition (one example at a time)."""
    rows = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1].clone().requires_grad_()
        rows.append(torch.autograd.grad(model(xb)[0, target[b]], xb)[0][0].abs())
    return torch.stack(rows)


def _reference(model, x, target, layers, order, randomize):
    """Per step a fresh copy of the model with the step's layers randomized."""
    index = {n: i for i, (n, _) in enumerate(model.named_modules())}
    clean = _saliency(model, x, target).reshape(x.shape[0], -1).numpy()
    steps = list(reversed(layers)) if order == "cascading" else list(layers)
    rho, sim = [], []
    for i, name in enumerate(steps):
        twin = copy.deepcopy(model)
        modules = dict(twin.named_modules())
        for done in (steps[: i + 1] if order == "cascading" else [name]):
            randomize(done, modules[done], index[done])
        a = _saliency(twin, x, target).reshape(x.shape[0], -1).numpy()
        rho.append([scipy.stats.spearmanr(c, r)[0] for c, r in zip(clean, a)])
        sim.append([structural_similarity(c, r, win_size=7, data_range=float(max(c.max(), r.max()) - min(c.min(), r.min())))
                    for c, r in zip(clean, a)])
    return steps, torch.tensor(rho, dtype=torch.float64), torch.tensor(sim, dtype=torch.float64)


def _snapshot(model):
    return (copy.deepcopy(model.state_dict()), [p.requires_grad for p in model.parameters()], model.training,
            len(model._forward_hooks))


@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_matches_reference(order):
    case = _case("conv", batch=3)
    snap, x_before = _snapshot(case.model), case.inputs.clone()
    res = model_randomization(case.model, case.inputs, case.target, order=order, seed=3)
    layers = parameterized_layers(case.model)
    steps, rho, sim = _reference(case.model, case.inputs, case.target, layers, order, keyed_uniform_init(3))
    assert res.layers == steps
    assert res.spearman.shape == res.ssim.shape == (len(layers), 3)
    assert torch.allclose(res.spearman, rho, atol=1e-12, rtol=0)
    assert torch.allclose(res.ssim, sim, atol=1e-12, rtol=0)
    state, grads, training, hooks = snap
    assert all(torch.equal(t, state[k]) for k, t in case.model.state_dict().items())
    assert [p.requires_grad for p in case.model.parameters()] == grads and case.model.training == training
    assert len(case.model._forward_hooks) == hooks and torch.equal(case.inputs, x_before)


def test_same_for_any_batch_composition_and_layers_subset():
    case = _case("conv", batch=4)
    kw = dict(explainer="integrated_gradients", explainer_kwargs={"n_steps": 6}, seed=1, absolute=False)
    full = model_randomization(case.model, case.inputs, case.target, **kw)
    part = model_randomization(case.model, case.inputs[1:2], case.target[1:2], **kw, memory_budget=1)
    assert torch.equal(full.spearman[:, 1:2], part.spearman) and torch.equal(full.ssim[:, 1:2], part.ssim)
    sub = model_randomization(case.model, case.inputs, case.target, layers=["conv2", "fc"], **kw)
    assert sub.layers == ["fc", "conv2"]
    assert torch.equal(sub.spearman, full.spearman[:2])  # the same keyed draws per module


def test_given_attributions_are_the_clean_explanation():
    case = _case("conv", batch=3)
    res = model_randomization(case.model, case.inputs, case.target, seed=2)
    given = _saliency(case.model, case.inputs, case.target)
    counted = []

    def explainer(model, inputs, target=None, additional_forward_args=None, **kw):
        counted.append(model is case.model)
        return _saliency(model, inputs, target)

    with_given = model_randomization(case.model, case.inputs, case.target, explainer, seed=2, attributions=given)
    assert not any(counted) and len(counted) == len(res.layers)  # the original model is never explained again
    assert torch.allclose(with_given.spearman, res.spearman, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="attributions: expected tensors shaped like the inputs"):
        model_randomization(case.model, case.inputs, case.target, attributions=given[:2])


def test_keyed_explainer_uses_the_same_draws_for_every_model_and_batching():
    case = _case("conv", batch=4)
    kw = dict(explainer="smoothgrad", explainer_kwargs={"n_samples": 3, "stdev": 0.2, "seed": 5}, seed=1)
    full = model_randomization(case.model, case.inputs, case.target, **kw)
    part = model_randomization(case.model, case.inputs[2:], case.target[2:], **kw, example_offset=2)
    assert torch.allclose(full.spearman[:, 2:], part.spearman, atol=1e-12, rtol=0)
    clean = fastattr.smoothgrad(case.model, case.inputs[2:], target=case.target[2:], n_samples=3, stdev=0.2,
                                seed=5, example_offset=2)
    given = model_randomization(case.model, case.inputs[2:], case.target[2:], **kw, example_offset=2,
                                attributions=clean)
    assert torch.allclose(given.spearman, part.spearman, atol=1e-12, rtol=0)
    shifted = model_randomization(case.model, case.inputs[2:], case.target[2:], **kw)
    assert not torch.allclose(shifted.spearman, part.spearman)


def test_tuple_inputs_and_additional_args():
    case = _case("two_input", batch=3)
    res = model_randomization(case.model, case.inputs, case.target, additional_forward_args=case.afa,
                              explainer="input_x_gradient", order="independent")
    assert res.layers == ["conv", "fc_img", "fc_vec", "head"]
    assert torch.isfinite(res.spearman).all() and res.spearman.shape == (4, 3)


def test_independent_randomizes_one_layer_at_a_time():
    case = _case("conv", batch=2)
    original = dict(case.model.named_parameters())
    seen = []
    for name, twin in randomized_models(case.model, parameterized_layers(case.model), "independent",
                                        keyed_uniform_init(0)):
        changed = {n.rsplit(".", 1)[0] for n, p in twin.named_parameters() if not torch.equal(p, original[n])}
        seen.append((name, changed))
    assert all(changed == {name} for name, changed in seen)


def test_keyed_draws_range_statistics_and_reproducibility():
    """Each Linear/Conv parameter is U[-1/sqrt(fan_in), 1/sqrt(fan_in)): a 2048x512
    weight's mean is within 4 standard errors of 0 and its std within 1% of
    bound/sqrt(3); the same seed gives the same bits, another seed others."""
    lin = nn.Linear(512, 2048).double()
    a, b, c = copy.deepcopy(lin), copy.deepcopy(lin), copy.deepcopy(lin)
    keyed_uniform_init(5)("lin", a, 0)
    keyed_uniform_init(5)("lin", b, 0)
    keyed_uniform_init(6)("lin", c, 0)
    bound = 1 / math.sqrt(512)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert a.weight.abs().max() <= bound and a.bias.abs().max() <= bound
    std = bound / math.sqrt(3)
    assert abs(a.weight.mean().item()) < 4 * std / math.sqrt(a.weight.numel())
    assert abs(a.weight.std().item() / std - 1) < 0.01
    other_module = copy.deepcopy(lin)
    keyed_uniform_init(5)("lin", other_module, 1)
    assert not torch.equal(other_module.weight, a.weight)  # keyed by the module's index


@pytest.mark.parametrize("kwargs,match", [
    ({"order": "bottom_up"}, "order"),
    ({"layers": ["nope"]}, "layers"),
    ({"layers": []}, "layers"),
    ({"seed": -2}, "seed"),
    ({"ssim_win_size": 4}, "ssim_win_size"),
    ({"randomize": 3}, "randomize"),
    ({"explainer": "no_such"}, "explainer"),
    ({"memory_budget": 0}, "memory_budget"),
    ({"model": lambda x: x}, "model"),
    ({"inputs": torch.full((2, 3, 8, 8), float("nan"), dtype=torch.float64)}, "inputs"),
])
def test_bad_input(kwargs, match):
    case = _case("conv", batch=2)
    calls = []
    case.model.register_forward_hook(lambda *a: calls.append(1))
    args = {"model": case.model, "inputs": case.inputs, "target": case.target[:2], **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        model_randomization(**args)
    assert not calls


def test_explanation_of_the_wrong_shape_names_the_explainer():
    case = _case("conv", batch=2)
    with pytest.raises(ValueError, match="explainer"):
        model_randomization(case.model, case.inputs, case.target, explainer=lambda m, x, **kw: x.sum(1))


# ---------------------------------------------------------------------------
# Quantus MPRT drop-in
# ---------------------------------------------------------------------------


def quantus_reset(seed):
    """Quantus's randomization: the global RNG seeded with seed + 1, then reset_parameters()."""
    def randomize(name, module, index):
        torch.manual_seed(seed + 1)
        module.reset_parameters()
    return randomize


def numpy_saliency(model, inputs, targets, **kwargs):
    """A Quantus-style explain_func (numpy in and out)."""
    return fastattr.saliency(model, torch.as_tensor(inputs), target=torch.as_tensor(targets)).numpy()


@pytest.mark.parametrize("options", [
    {},
    {"layer_order": "independent"},
    # Quantus normalises by the batch's max, fastattr per example: SSIM sees
    # that (Spearman does not), so SSIM is compared unnormalised.
    {"similarity_func": quantus.similarity_func.ssim, "normalise": False},
    {"similarity_func": quantus.similarity_func.correlation_pearson, "abs": False},
    {"return_average_correlation": True},
    {"return_last_correlation": True},
    {"skip_layers": True},
    {"return_last_correlation": True, "return_aggregate": True},
])
@pytest.mark.parametrize("given_a_batch", [False, True])
def test_mprt_equals_quantus_on_the_same_randomized_layers(options, given_a_batch):
    case = _case("conv", batch=4)
    x, y = case.inputs.numpy(), np.array(case.target)
    a = numpy_saliency(case.model, x, y) * 2.0 + 0.01 if given_a_batch else None
    theirs_options = dict(options)
    if options.get("similarity_func") is quantus.similarity_func.ssim:
        # Quantus 0.6's MPRT calls .tolist() on what ssim returns, a list: it
        # cannot run its own ssim. The same ssim, returned as an array:
        theirs_options["similarity_func"] = lambda a, b, batched: np.array(quantus.similarity_func.ssim(a, b, batched))
    with torch.random.fork_rng(devices=[]):
        theirs = quantus.MPRT(disable_warnings=True, **theirs_options)(
            case.model, x, y, a_batch=a, explain_func=numpy_saliency)
    with torch.random.fork_rng(devices=[]):
        ours = MPRT(disable_warnings=True, randomize=quantus_reset(42), **options)(
            case.model, x, y, a_batch=a, explain_func=fastattr.saliency)
    assert type(ours) is type(theirs)
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        pairs = [(ours[k], theirs[k]) for k in theirs]
    else:
        pairs = [(ours, theirs)]
    for o, t in pairs:
        assert np.allclose(o, t, atol=1e-10, rtol=0), (o, t)


def test_mprt_keyed_default_is_reproducible_and_batch_independent():
    case = _case("conv", batch=4)
    x, y = case.inputs.numpy(), np.array(case.target)
    metric = MPRT(disable_warnings=True, seed=7)
    full = metric(case.model, x, y, explain_func=fastattr.saliency)
    again = MPRT(disable_warnings=True, seed=7)(case.model, x, y, explain_func=fastattr.saliency, batch_size=1)
    part = MPRT(disable_warnings=True, seed=7)(case.model, x[2:], y[2:], explain_func=fastattr.saliency)
    assert full == again
    assert all(full[k][2:] == part[k] for k in full)
    other = MPRT(disable_warnings=True, seed=8)(case.model, x, y, explain_func=fastattr.saliency)
    assert other["fc"] != full["fc"]
    assert len(metric.all_evaluation_scores) == 1


@pytest.mark.parametrize("kwargs,match", [
    ({"layer_order": "sideways"}, "layer_order"),
    ({"return_average_correlation": True, "return_last_correlation": True}, "return_average_correlation"),
    ({"return_average_correlation": True, "skip_layers": True}, "skip_layers"),
    ({"seed": -1}, "seed"),
    ({"randomize": "yes"}, "randomize"),
])
def test_mprt_bad_constructor(kwargs, match):
    with pytest.raises(ValueError, match=match) if "randomize" not in kwargs else pytest.raises(TypeError, match=match):
        MPRT(**kwargs)
    with pytest.raises(NotImplementedError, match="similarity_func"):
        MPRT(similarity_func=lambda a, b, **kw: a)


def test_mprt_bad_call():
    case = _case("conv", batch=2)
    x, y = case.inputs.numpy(), np.array(case.target[:2])
    with pytest.raises(ValueError, match="explain_func"):
        MPRT()(case.model, x, y)
    with pytest.raises(TypeError, match="model"):
        MPRT()(lambda t: t, x, y, explain_func=fastattr.saliency)
    with pytest.raises(ValueError, match="return_aggregate"):
        MPRT(return_aggregate=True)(case.model, x, y, explain_func=fastattr.saliency)
    with pytest.raises(ValueError, match="y_batch"):
        MPRT()(case.model, x, y[:1], explain_func=fastattr.saliency)


def test_mprt_keyed_draws_agree_with_quantus_statistically():
    """On Linear layers Quantus's reset_parameters() and fastattr's keyed draws
    are the same distribution, U[-1/sqrt(fan_in), 1/sqrt(fan_in)). Over 8 seeds
    per side, the mean Spearman score per layer agrees within 0.06 (measured:
    differences <= 0.013 against seed-to-seed standard deviations 0.02-0.04,
    so 0.06 is about 3 standard errors of the difference)."""
    case = _case("mlp", batch=32)
    x, y = case.inputs.numpy(), case.target.numpy()
    theirs, ours = [], []
    for seed in range(8):
        with torch.random.fork_rng(devices=[]):
            theirs.append(quantus.MPRT(disable_warnings=True, seed=seed)(case.model, x, y, explain_func=numpy_saliency))
        ours.append(MPRT(disable_warnings=True, seed=seed)(case.model, x, y, explain_func=fastattr.saliency))
    assert list(theirs[0]) == list(ours[0]) == ["original", "net.4", "net.2", "net.0"]
    for layer in theirs[0]:
        q = np.mean([np.mean(r[layer]) for r in theirs])
        f = np.mean([np.mean(r[layer]) for r in ours])
        assert abs(q - f) < 0.06, (layer, q, f)


# ---------------------------------------------------------------------------
# model_form: each randomized model in the fast form (its copy made anew per step)
# ---------------------------------------------------------------------------
#
# Spearman ranks and histogram entropies jump where rounding reorders two
# values, so the forms are compared on what the metrics compare: the
# explanation of the original and of every randomized model, recorded where
# the similarities (or entropies) take them, held to tests/test_model_form.py's
# rule (measured in the same run): the fast float32 explanation at most
# FACTOR times as far from the float64 one as eager float32's. A fast copy
# left stale by a randomization step explains the previous model: off by the
# explanation's own size.

import fastattr.metrics.randomization as R  # noqa: E402
from fastattr.engine.model_form import model_in_form  # noqa: E402
from fastattr.metrics.randomization import (  # noqa: E402
    efficient_model_randomization, smooth_model_randomization,
)
from fastattr.testing import assert_bitwise_equal, assert_error_within  # noqa: E402

from test_model_form import FACTOR, _assert_unchanged, conv_bn_net  # noqa: E402
from test_model_form import _snapshot as _form_snapshot  # noqa: E402

_TARGET = torch.tensor([1, 3])


def _x(dtype=torch.float32):
    return torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(21), dtype=dtype)


def _recorded(monkeypatch, name, fn):
    """``fn()`` with ``R.<name>`` recording the explanations it is given."""
    seen = []
    real = getattr(R, name)

    def record(*args, **kwargs):
        seen.extend(a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2)
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(R, name, record)
        fn()
    return seen


RANDOMIZATIONS = {
    "model_randomization": ("ssim", lambda model, x, form: model_randomization(
        model, x, _TARGET, order="cascading", seed=3, model_form=form)),
    "smooth_model_randomization": ("ssim", lambda model, x, form: smooth_model_randomization(
        model, x, _TARGET, seed=3, n_samples=3, model_form=form)),
    "efficient_model_randomization": ("discrete_entropy", lambda model, x, form: efficient_model_randomization(
        model, x, _TARGET, seed=3, model_form=form)),
}


@pytest.mark.parametrize("name", sorted(RANDOMIZATIONS))
def test_fast_form_explains_every_randomized_model_up_to_rounding(monkeypatch, name):
    taken, run = RANDOMIZATIONS[name]
    model, x = conv_bn_net(), _x()
    assert model_in_form(model, "fast", (x,)).form == "fast", "the rewrite must apply here"
    snapshot = _form_snapshot(model)
    fast = _recorded(monkeypatch, taken, lambda: run(model, x, "fast"))
    eager = _recorded(monkeypatch, taken, lambda: run(model, x, "eager"))
    exact = _recorded(monkeypatch, taken, lambda: run(copy.deepcopy(model).double(), x.double(), "eager"))
    _assert_unchanged(model, snapshot)
    assert len(fast) == len(eager) == len(exact) >= 2
    for step, (f, e, r) in enumerate(zip(fast, eager, exact)):
        assert_error_within(f, r, e, factor=FACTOR, msg=f"{name}, explanation {step}:")
    assert any(not torch.equal(f, e) for f, e in zip(fast, eager)), "the fast form did not run"


def test_fast_copy_follows_every_randomization_step():
    """The one twin is randomized in place step after step: the fast form's
    cache (keyed on the parameters' version counters) refreshes its one copy
    in place at each step (no rebuild), and its saliency is the twin's at
    that step."""
    model, x = conv_bn_net(), _x()
    copies = []
    for _, twin in randomized_models(model, parameterized_layers(model), "independent", keyed_uniform_init(5)):
        form = model_in_form(twin, "fast", (x,))
        assert form.form == "fast", form.reason
        copies.append(form.model)
        fast = fastattr.saliency(twin, x, target=_TARGET, abs=False, model_form="fast")
        eager = fastattr.saliency(twin, x, target=_TARGET, abs=False, model_form="eager")
        exact = fastattr.saliency(copy.deepcopy(twin).double(), x.double(), target=_TARGET, abs=False,
                                  model_form="eager")
        assert_error_within(fast, exact, eager, factor=FACTOR)
    assert len(copies) == len(parameterized_layers(model)) and len({id(c) for c in copies}) == 1


def test_noisy_copies_made_once_equal_copies_made_per_model():
    """A fastattr explainer gets the one set of noisy copies for every model;
    a user callable (rows made again for each model) gets the same bits."""
    model, x = conv_bn_net(), _x()
    kw = dict(seed=4, n_samples=3, model_form="eager")
    kept = smooth_model_randomization(model, x, _TARGET, **kw)
    remade = smooth_model_randomization(
        model, x, _TARGET, explainer=lambda m, rows, target=None, additional_forward_args=None:
        fastattr.saliency(m, rows, target=target, model_form="eager"), **kw)
    assert_bitwise_equal(kept.spearman, remade.spearman)
    assert_bitwise_equal(kept.ssim, remade.ssim)


@pytest.mark.parametrize("fn", [model_randomization, smooth_model_randomization, efficient_model_randomization])
def test_bad_model_form_fails_before_any_compute(fn):
    model, x = conv_bn_net(), _x()
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        with pytest.raises(ValueError, match="model_form"):
            fn(model, x, _TARGET, model_form="quick")
    finally:
        handle.remove()
    assert not calls
