"""Similarity measures, accuracy under FGSM/PGD, and the fragility attack,
each against a plain float64 PyTorch reference written from its definition
(scipy / scikit-image for the similarity measures), plus keyed-draw
invariances (batch composition, chunk size) and bad input."""
from __future__ import annotations

import copy

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

from fastattr import ops
from fastattr._validate import format_baselines
from fastattr.engine import PURPOSE_ATTACK
from fastattr.metrics.fragility import (
    SoftplusForReLU, differentiable_attributions, fragility,
)
from fastattr.metrics.robustness import fgsm_accuracy, pgd_accuracy
from fastattr.metrics.similarity import average_ranks, pearson, spearman, ssim, top_k_intersection
from fastattr.metrics._explain import Explainer

from captum_cases import MLP, _build, _case, _randn


def _mlp_batch(batch: int = 5, seed: int = 3):
    model = _build(MLP, torch.float64)
    x = _randn((batch, 64), torch.float64, seed)
    return model, x


def _snapshot(model: nn.Module):
    return (copy.deepcopy(model.state_dict()), [p.requires_grad for p in model.parameters()], model.training,
            len(model._forward_hooks), len(model._forward_pre_hooks))


def _assert_same_model(model: nn.Module, snap) -> None:
    state, grads, training, hooks, pre_hooks = snap
    for k, t in model.state_dict().items():
        assert torch.equal(t, state[k]), k
    assert [p.requires_grad for p in model.parameters()] == grads
    assert model.training == training
    assert (len(model._forward_hooks), len(model._forward_pre_hooks)) == (hooks, pre_hooks)


# ---------------------------------------------------------------------------
# Similarity measures
# ---------------------------------------------------------------------------


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (7, 3, 5), generator=g).to(torch.float64)  # many ties
    b = a + torch.randint(-2, 3, (7, 3, 5), generator=g)
    expected = [scipy.stats.spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a.numpy(), b.numpy())]
    assert torch.allclose(spearman(a, b), torch.tensor(expected, dtype=torch.float64), atol=1e-14, rtol=0)
    ranks = average_ranks(a.reshape(7, -1))
    for row, ref in zip(ranks, a.reshape(7, -1).numpy()):
        assert torch.equal(row, torch.from_numpy(scipy.stats.rankdata(ref)))
    p = [scipy.stats.pearsonr(x.ravel(), y.ravel())[0] for x, y in zip(a.numpy(), b.numpy())]
    assert torch.allclose(pearson(a, b), torch.tensor(p, dtype=torch.float64), atol=1e-14, rtol=0)


def test_spearman_batch_one_and_constant_row():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    b = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    out = spearman(a, b)
    assert out[0].item() == pytest.approx(-1.0, abs=1e-15) and torch.isnan(out[1])
    assert spearman(a[:1], b[:1]).shape == (1,)


@pytest.mark.parametrize("shape,win", [((4, 40), 7), ((3, 9, 11), 7), ((3, 9, 11), 3), ((2, 7, 8, 9), 5)])
def test_ssim_matches_skimage(shape, win):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    b = a + 0.4 * torch.randn(shape, generator=g, dtype=torch.float64)
    expected = []
    for x, y in zip(a.numpy(), b.numpy()):
        rng = float(max(x.max(), y.max()) - min(x.min(), y.min()))
        expected.append(structural_similarity(x, y, win_size=win, data_range=rng))
    assert torch.allclose(ssim(a, b, win), torch.tensor(expected), atol=1e-13, rtol=0)
    fixed = [structural_similarity(x, y, win_size=win, data_range=3.0) for x, y in zip(a.numpy(), b.numpy())]
    assert torch.allclose(ssim(a, b, win, data_range=3.0), torch.tensor(fixed), atol=1e-13, rtol=0)


def test_top_k_intersection_matches_sets():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(6, 30, generator=g), torch.rand(6, 30, generator=g)
    for k in (1, 7, 30):
        expected = [len(set(x.topk(k).indices.tolist()) & set(y.topk(k).indices.tolist())) / k for x, y in zip(a, b)]
        assert top_k_intersection(a, b, k).tolist() == expected


def test_similarity_bad_input():
    a = torch.zeros(2, 9)
    with pytest.raises(ValueError, match="a, b"):
        spearman(a, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="k:"):
        top_k_intersection(a, a, 10)
    with pytest.raises(ValueError, match="win_size"):
        ssim(a, a, 4)
    with pytest.raises(ValueError, match="win_size"):
        ssim(a, a, 11)


# ---------------------------------------------------------------------------
# Accuracy under FGSM / PGD
# ---------------------------------------------------------------------------


def _ce_grad(model, x, y):
    """Per-example d CE / dx, one example at a time (the definition, no batching)."""
    rows = []
    for xi, yi in zip(x, y):
        xi = xi.unsqueeze(0).clone().requires_grad_()
        loss = F.cross_entropy(model(xi), yi.unsqueeze(0))
        rows.append(torch.autograd.grad(loss, xi)[0][0])
    return torch.stack(rows)


def _reference_pgd(model, x, y, eps, n_steps, step, z, clamp):
    """Madry's PGD from the start ``x + eps * z``, per example, in float64."""
    adv = torch.maximum(torch.minimum(x + eps * z, x + eps), x - eps).clamp(*clamp)
    for _ in range(n_steps):
        adv = adv + step * _ce_grad(model, adv, y).sign()
        adv = torch.maximum(torch.minimum(adv, x + eps), x - eps).clamp(*clamp)
    return adv


def test_fgsm_matches_reference_and_eps_zero_is_clean_accuracy():
    model, x = _mlp_batch(6)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    eps = [0.0, 0.05, 0.2, 1.0]
    snap, x_before = _snapshot(model), x.clone()
    res = fgsm_accuracy(model, x, y, eps, clamp=(-2.0, 2.0), return_adversarial=True)
    g = _ce_grad(model, x, y)
    for e, radius in enumerate(eps):
        adv = (x + radius * g.sign()).clamp(-2.0, 2.0)
        assert torch.equal(res.adversarial[e], adv)
        assert torch.equal(res.correct[e], model(adv).argmax(1) == y)
    with torch.no_grad():
        clean = (model(x.clamp(-2, 2)).argmax(1) == y).double().mean()
    assert res.accuracy[0] == clean
    assert res.accuracy.dtype == torch.float64 and res.correct.shape == (4, 6)
    _assert_same_model(model, snap)
    assert torch.equal(x, x_before)


def test_pgd_matches_reference():
    model, x = _mlp_batch(4)
    y = torch.tensor([3, 1, 0, 2])
    eps, n_steps = [0.0, 0.1, 0.3], 4
    res = pgd_accuracy(model, x, y, eps, n_steps=n_steps, seed=11, clamp=(-5.0, 5.0), return_adversarial=True)
    z = ops.generate_rows(torch.zeros_like(x), None, None, len(eps), "uniform", 1.0, 11,
                          PURPOSE_ATTACK * 65536, 0, 4 * len(eps), 0).view(4, len(eps), 64)
    for e, radius in enumerate(eps):
        adv = _reference_pgd(model, x, y, radius, n_steps, 2.5 * radius / n_steps, z[:, e], (-5.0, 5.0))
        assert torch.allclose(res.adversarial[e], adv, atol=1e-12, rtol=0)
        assert torch.equal(res.correct[e], model(adv).argmax(1) == y)
    assert torch.equal(res.adversarial[0], x)  # eps = 0: the clean input, clean accuracy


def test_pgd_same_for_any_batch_composition_and_chunking():
    model, x = _mlp_batch(5)
    y = torch.tensor([0, 1, 2, 3, 1])
    full = pgd_accuracy(model, x, y, [0.1, 0.4], n_steps=3, seed=5, return_adversarial=True)
    part = pgd_accuracy(model, x[2:4], y[2:4], [0.1, 0.4], n_steps=3, seed=5, return_adversarial=True,
                        example_offset=2)
    assert torch.equal(full.adversarial[:, 2:4], part.adversarial)
    assert torch.equal(full.correct[:, 2:4], part.correct)
    for chunk in ({"chunk_rows": 1}, {"chunk_rows": 3}, {"memory_budget": 1}):
        other = pgd_accuracy(model, x, y, [0.1, 0.4], n_steps=3, seed=5, return_adversarial=True, **chunk)
        assert torch.equal(other.adversarial, full.adversarial) and torch.equal(other.correct, full.correct)
    single = pgd_accuracy(model, x[4:], y[4:], [0.1, 0.4], n_steps=3, seed=5, return_adversarial=True,
                          example_offset=4)
    assert torch.equal(single.adversarial[:, 0], full.adversarial[:, 4])
    other_seed = pgd_accuracy(model, x, y, [0.4], n_steps=3, seed=6, return_adversarial=True)
    assert not torch.equal(other_seed.adversarial[0], full.adversarial[1])


def test_linear_model_closed_form_and_monotone():
    """Two classes, f(x) = W x + b: the worst case in the L-inf ball lowers the
    margin by eps * ||w_y - w_other||_1, and FGSM and PGD both reach it."""
    torch.manual_seed(0)
    lin = nn.Linear(10, 2).double()
    x = torch.randn(40, 10, dtype=torch.float64)
    y = lin(x).argmax(1)
    y[::3] = 1 - y[::3]  # some examples misclassified from the start
    dw = lin.weight[y] - lin.weight[1 - y]
    margin = ((dw * x).sum(1) + lin.bias[y] - lin.bias[1 - y]).detach()
    eps = torch.linspace(0, 1.5, 7, dtype=torch.float64).tolist()
    expected = torch.stack([margin - e * dw.abs().sum(1).detach() > 0 for e in eps])
    fgsm = fgsm_accuracy(lin, x, y, eps)
    pgd = pgd_accuracy(lin, x, y, eps, n_steps=3, seed=1)
    assert torch.equal(fgsm.correct, expected)
    assert torch.equal(pgd.correct, expected)
    assert (fgsm.accuracy[1:] <= fgsm.accuracy[:-1]).all()
    assert fgsm.accuracy[0] == (margin > 0).double().mean()


def test_attack_additional_forward_args_follow_rows():
    case = _case("two_input", batch=3)

    class Img(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = case.model

        def forward(self, img, vec, extra, scale):
            return self.inner(img, vec, extra, scale)

    model = Img()
    img, vec = case.inputs
    args = (vec, case.afa[0], case.afa[1])
    y = torch.tensor([0, 1, 2])
    res = pgd_accuracy(model, img, y, [0.0, 0.2], n_steps=2, additional_forward_args=args, return_adversarial=True)
    part = pgd_accuracy(model, img[1:], y[1:], [0.0, 0.2], n_steps=2,
                        additional_forward_args=(vec[1:], case.afa[0][1:], 0.5), return_adversarial=True,
                        example_offset=1)
    assert torch.equal(res.adversarial[:, 1:], part.adversarial)
    with torch.no_grad():
        assert torch.equal(res.correct[0], model(img, *args).argmax(1) == y)


@pytest.mark.parametrize("kwargs,match", [
    ({"labels": torch.tensor([0, 1])}, "labels"),
    ({"labels": torch.tensor([0.0, 1.0, 2.0])}, "labels"),
    ({"labels": torch.tensor([0, 1, 9])}, "labels"),
    ({"epsilons": [-0.1]}, "epsilons"),
    ({"epsilons": []}, "epsilons"),
    ({"epsilons": float("nan")}, "epsilons"),
    ({"clamp": (1.0, 0.0)}, "clamp"),
    ({"n_steps": 0}, "n_steps"),
    ({"step_size": 0.0}, "step_size"),
    ({"seed": -1}, "seed"),
    ({"example_offset": -1}, "example_offset"),
    ({"chunk_rows": 0}, "chunk_rows"),
    ({"inputs": (torch.zeros(3, 64, dtype=torch.float64),)}, "inputs"),
    ({"inputs": torch.full((3, 64), float("nan"), dtype=torch.float64)}, "inputs"),
])
def test_attack_bad_input(kwargs, match):
    model, x = _mlp_batch(3)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    args = {"model": model, "inputs": x, "labels": torch.tensor([0, 1, 2]), "epsilons": [0.1], **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        pgd_accuracy(**args)
    assert len(calls) <= 1  # at most the one-row probe of the class count
    if not {"n_steps", "step_size", "seed", "example_offset"} & set(kwargs):
        with pytest.raises((ValueError, TypeError), match=match):
            fgsm_accuracy(**args)


# ---------------------------------------------------------------------------
# Fragility
# ---------------------------------------------------------------------------


class ReluNet(nn.Module):
    """[B, 2, 5, 5] -> [B, 3] with nn.ReLU modules, functional relu and an in-place relu."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(100, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        h = self.act(self.conv(x)).flatten(1)
        h = F.relu(self.fc1(h), inplace=True)
        return self.fc2(torch.relu(h) + h.relu())


def _relu_net():
    return _build(ReluNet, torch.float64, seed=4), _randn((4, 2, 5, 5), torch.float64, 9)


class _SoftplusTwin(nn.Module):
    """The reference's surrogate: ReluNet with every ReLU written as softplus."""

    def __init__(self, net: ReluNet, beta: float):
        super().__init__()
        self.net, self.beta = net, beta

    def forward(self, x):
        n, sp = self.net, lambda t: F.softplus(t, beta=self.beta)
        h = sp(n.conv(x)).flatten(1)
        h = sp(n.fc1(h))
        return n.fc2(sp(h) + sp(h))


def _reference_fragility(model, x, k, eps, n_steps, step, beta, z):
    """Ghorbani et al.'s top-k attack on saliency, one example at a time:
    surrogate softplus model for the steps, real model to judge."""
    twin = _SoftplusTwin(model, beta)
    tops, rhos, kept = [], [], []
    for b in range(x.shape[0]):
        xb = x[b:b + 1]
        label = model(xb).argmax(1)

        def sal(m, inp, create_graph=False):
            inp = inp if inp.requires_grad else inp.clone().requires_grad_()
            g = torch.autograd.grad(m(inp)[0, label], inp, create_graph=create_graph)[0]
            return g.abs().sum(1)  # map: |a| summed over channels

        clean = sal(model, xb).reshape(-1)
        top = set(clean.topk(k).indices.tolist())
        mask = torch.zeros_like(clean)
        mask[list(top)] = 1
        adv = torch.maximum(torch.minimum(xb + eps * z[b:b + 1], xb + eps), xb - eps)
        best, best_map, best_inter = xb, clean, 1.0
        for _ in range(n_steps):
            xa = adv.clone().requires_grad_()
            m = sal(twin, xa, create_graph=True).reshape(-1)
            loss = (m / m.sum() * mask).sum()
            g = torch.autograd.grad(-loss, xa)[0]
            adv = torch.maximum(torch.minimum(adv + step * g.sign(), xb + eps), xb - eps).detach()
            real = sal(model, adv).reshape(-1)
            inter = len(top & set(real.topk(k).indices.tolist())) / k
            if model(adv).argmax(1) == label and inter < best_inter:
                best, best_map, best_inter = adv, real, inter
        tops.append(best_inter)
        rhos.append(scipy.stats.spearmanr(clean.detach().numpy(), best_map.detach().numpy())[0])
        kept.append(best)
    return torch.tensor(tops, dtype=torch.float64), torch.tensor(rhos, dtype=torch.float64), torch.cat(kept)


def test_fragility_matches_reference():
    model, x = _relu_net()
    snap, x_before = _snapshot(model), x.clone()
    eps, n_steps, k, beta = 0.4, 4, 5, 3.0
    res = fragility(model, x, explainer="saliency", epsilon=eps, n_steps=n_steps, k=k, softplus_beta=beta,
                    seed=2, return_attacked=True)
    z = ops.generate_rows(torch.zeros_like(x), None, None, 1, "uniform", 1.0, 2, PURPOSE_ATTACK * 65536, 0, 4, 0)
    tops, rhos, attacked = _reference_fragility(model, x, k, eps, n_steps, 2.5 * eps / n_steps, beta, z)
    assert torch.equal(res.top_k_intersection, tops)
    assert torch.allclose(res.spearman, rhos, atol=1e-12, rtol=0)
    assert torch.allclose(res.attacked, attacked, atol=1e-12, rtol=0)
    assert (res.top_k_intersection < 1).any()  # the attack did something
    _assert_same_model(model, snap)
    assert torch.equal(x, x_before)
    assert torch.relu(torch.tensor(-1.0)) == 0  # the softplus mode is gone


def test_fragility_keeps_label_ball_and_range():
    model, x = _relu_net()
    x = x.clamp(-1.5, 1.5)  # inputs inside the valid range
    res = fragility(model, x, epsilon=0.5, n_steps=3, k=4, objective="center_of_mass", clamp=(-1.5, 1.5),
                    return_attacked=True)
    assert torch.equal(model(res.attacked).argmax(1), model(x).argmax(1))
    assert ((res.attacked - x).abs() <= 0.5 + 1e-12).all()
    assert (res.attacked >= -1.5).all() and (res.attacked <= 1.5).all()
    tiny = fragility(model, x, epsilon=1e-12, n_steps=2, k=4)
    assert torch.equal(tiny.top_k_intersection, torch.ones(4, dtype=torch.float64))


def test_fragility_same_for_any_batch_composition_and_chunking():
    model, x = _relu_net()
    kw = dict(epsilon=0.3, n_steps=3, k=5, seed=7, return_attacked=True, explainer="input_x_gradient")
    full = fragility(model, x, **kw)
    part = fragility(model, x[1:3], **kw, example_offset=1)
    assert torch.equal(full.attacked[1:3], part.attacked)
    assert torch.equal(full.top_k_intersection[1:3], part.top_k_intersection)
    assert torch.equal(full.spearman[1:3], part.spearman)
    for chunk in ({"chunk_rows": 1}, {"memory_budget": 1}):
        other = fragility(model, x, **kw, **chunk)
        assert torch.equal(other.attacked, full.attacked) and torch.equal(other.spearman, full.spearman)


@pytest.mark.parametrize("name,kwargs", [
    ("saliency", {}), ("saliency", {"abs": False}), ("input_x_gradient", {}),
    ("integrated_gradients", {"n_steps": 5, "baselines": 0.1}),
    ("integrated_gradients", {"n_steps": 4, "method": "riemann_trapezoid", "multiply_by_inputs": False}),
])
def test_differentiable_attributions_equal_the_engine(name, kwargs):
    case = _case("conv", batch=3)
    explain = Explainer(name, kwargs)
    plan, needs_base, base = explain.plan()
    target = torch.tensor(case.target)
    x = case.inputs.clone().requires_grad_()
    baselines = format_baselines(base, (case.inputs,), False)[0] if needs_base else None
    got = differentiable_attributions(case.model, x, target, plan, baselines, (), torch.arange(3))
    (expected,) = explain(case.model, (case.inputs,), False, target)
    assert torch.allclose(got, expected, atol=1e-12, rtol=1e-10)
    res = fragility(case.model, case.inputs, explainer=name, explainer_kwargs=kwargs, epsilon=0.2, n_steps=2, k=4)
    assert res.spearman.shape == (3,) and torch.isfinite(res.spearman).all()


def test_softplus_mode_swaps_every_relu_and_leaves_on_raise():
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    sp = F.softplus(x, beta=2.0)
    with SoftplusForReLU(2.0):
        assert torch.equal(torch.relu(x), sp) and torch.equal(F.relu(x), sp) and torch.equal(x.relu(), sp)
        assert torch.equal(nn.ReLU()(x), sp) and torch.equal(nn.ReLU(inplace=True)(x.clone()), sp)
        y = x.clone()
        y.relu_()
        assert torch.equal(y, sp)
    assert torch.equal(torch.relu(x), x.clamp(min=0))

    model, inp = _relu_net()
    count = []

    def fail_on_third(module, args):
        count.append(1)
        if len(count) == 6:
            raise RuntimeError("boom")

    handle = model.register_forward_pre_hook(fail_on_third)
    with pytest.raises(RuntimeError, match="boom"):
        fragility(model, inp, epsilon=0.1, n_steps=3, k=3)
    handle.remove()
    assert torch.equal(torch.relu(x), x.clamp(min=0)) and torch.equal(nn.ReLU()(x), x.clamp(min=0))


@pytest.mark.parametrize("kwargs,match", [
    ({"explainer": "guided_backprop"}, "explainer"),
    ({"explainer": lambda m, x, **kw: x}, "explainer"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"n_steps": 0}, "n_steps"),
    ({"k": 0}, "k:"),
    ({"k": 26}, "k:"),
    ({"objective": "mass"}, "objective"),
    ({"softplus_beta": -1.0}, "softplus_beta"),
    ({"target": [0, 1]}, "target"),
    ({"target": 7}, "target"),
    ({"channel_dim": 4}, "channel_dim"),
    ({"inputs": (torch.zeros(4, 2, 5, 5, dtype=torch.float64),)}, "inputs"),
    ({"inputs": torch.full((4, 2, 5, 5), float("inf"), dtype=torch.float64)}, "inputs"),
])
def test_fragility_bad_input(kwargs, match):
    model, x = _relu_net()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises((ValueError, TypeError), match=match):
        fragility(**{"model": model, "inputs": x, **kwargs})
    assert len(calls) <= 1
