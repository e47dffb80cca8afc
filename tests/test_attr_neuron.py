"""Neuron attributions and DeepLIFT SHAP: against plain float64 autograd
references (the neuron caught by a hook and differentiated), against Captum
0.9's classes, and on invariants: DeepLIFT's summation-to-delta for DeepLIFT
SHAP (the attributions sum to f(x) minus the mean output over the
references), every neuron selector form, errors that name the selector, no
hook left behind.
"""
from __future__ import annotations

from typing import Any, List

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import captum.attr
import fastattr.captum
from captum_cases import _rel_err
from fastattr.attr.deeplift import deeplift
from fastattr.attr.deeplift_shap import deeplift_shap
from fastattr.attr.neuron import (
    neuron_deconvolution, neuron_deeplift, neuron_deeplift_shap, neuron_gradient, neuron_guided_backprop,
    neuron_integrated_gradients,
)
from fastattr.attr.quadrature import path_rule

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor .* did not already require gradients", "ignore:Setting forward, backward hooks")


def _model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(80, 3),
        ).double().eval()


def _data(batch: int = 3):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(batch, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64))


def _neuron_grad(model: nn.Module, layer: nn.Module, x: Tensor, pick: Any) -> Tensor:
    """d pick(layer output) / d x by plain autograd, rows independent."""
    caught: List[Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, out: caught.append(out))
    try:
        x = x.detach().requires_grad_()
        model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(pick(caught[0]).sum(), x)
    return grad


SELECTORS = {
    "tuple": ((1, 2, 2), lambda o: o[:, 1, 2, 2]),
    "slice": ((2, slice(0, 2), 1), lambda o: o[:, 2, 0:2, 1].sum(1)),
    "callable": (lambda o: o[:, 0, 1:3, 1:3].sum((1, 2)), lambda o: o[:, 0, 1:3, 1:3].sum((1, 2))),
    "scalar_callable": (lambda o: o[:, 3].sum(), lambda o: o[:, 3].sum((1, 2))),
}


@pytest.mark.parametrize("selector", sorted(SELECTORS))
def test_neuron_gradient_and_ig_equal_reference(backend: str, selector: str) -> None:
    model, (x, base, _) = _model(), _data()
    sel, pick = SELECTORS[selector]
    ours = neuron_gradient(model, x, model[2], sel, chunk_rows=2)
    assert _rel_err(ours, _neuron_grad(model, model[2], x, pick)) <= 1e-14
    alphas, weights = path_rule("gausslegendre", 6)
    ref = sum(float(w) * _neuron_grad(model, model[2], base + float(a) * (x - base), pick)
              for a, w in zip(alphas, weights)) * (x - base)
    ig = neuron_integrated_gradients(model, x, model[2], sel, base, n_steps=6, internal_batch_size=5)
    assert _rel_err(ig, ref) <= 1e-13


@pytest.mark.parametrize("selector", ["tuple", "slice", "callable"])
def test_neuron_methods_equal_captum(backend: str, selector: str) -> None:
    model, (x, base, refs) = _model(), _data()
    sel = SELECTORS[selector][0]
    pairs = [
        (neuron_gradient(model, x, model[2], sel), captum.attr.NeuronGradient(model, model[2]).attribute(x, sel)),
        (neuron_guided_backprop(model, x, model[2], sel),
         captum.attr.NeuronGuidedBackprop(model, model[2]).attribute(x, sel)),
        (neuron_deconvolution(model, x, model[2], sel),
         captum.attr.NeuronDeconvolution(model, model[2]).attribute(x, sel)),
        (neuron_deeplift(model, x, model[2], sel, base),
         captum.attr.NeuronDeepLift(model, model[2]).attribute(x, sel, base)),
        (neuron_deeplift(model, x, model[3], sel, base, attribute_to_neuron_input=True),
         captum.attr.NeuronDeepLift(model, model[3]).attribute(x, sel, base, attribute_to_neuron_input=True)),
        (neuron_deeplift_shap(model, x, model[2], sel, refs),
         captum.attr.NeuronDeepLiftShap(model, model[2]).attribute(x, sel, refs)),
    ]
    for i, (ours, theirs) in enumerate(pairs):
        assert _rel_err(ours, theirs) <= 1e-14, i


def test_deeplift_shap_sums_to_the_mean_output_difference(backend: str) -> None:
    """The rescale rule sums exactly to f(x) - f(r) per reference, so the mean
    over references sums to f(x) - mean_m f(r_m); and it is DeepLIFT's mean."""
    model, (x, _, refs) = _model(), _data()
    target = [0, 2, 1]
    attrs, delta = deeplift_shap(model, x, refs, target, return_convergence_delta=True)
    with torch.no_grad():
        picked = torch.tensor(target)
        gap = model(x)[torch.arange(3), picked] - model(refs)[:, picked].mean(0)
    assert (attrs.sum((1, 2, 3)) - gap).abs().max() <= 1e-12 and delta.shape == (12,)
    assert delta.abs().max() <= 1e-12
    each = torch.stack([deeplift(model, x, refs[m:m + 1], target) for m in range(4)]).mean(0)
    assert _rel_err(attrs, each) <= 1e-14
    theirs, d_theirs = captum.attr.DeepLiftShap(model).attribute(x, refs, target=target,
                                                                 return_convergence_delta=True)
    assert _rel_err(attrs, theirs) <= 1e-14 and (delta - d_theirs).abs().max() <= 1e-12


def test_dropin_classes(backend: str) -> None:
    model, (x, base, refs) = _model(), _data()
    sel = (1, 2, 2)
    ours = fastattr.captum.NeuronIntegratedGradients(model, model[2]).attribute(x, sel, base, n_steps=5)
    theirs = captum.attr.NeuronIntegratedGradients(model, model[2]).attribute(x, sel, base, n_steps=5)
    assert _rel_err(ours, theirs) <= 3e-7  # Captum's float32 step sizes
    for seed_call in (lambda m: m.NeuronGradientShap(model, model[2]).attribute(x, sel, refs, n_samples=4),):
        torch.manual_seed(3)
        np.random.seed(3)
        ours = seed_call(fastattr.captum)
        torch.manual_seed(3)
        np.random.seed(3)
        theirs = seed_call(captum.attr)
        assert _rel_err(ours, theirs) <= 1e-14
    keyed = fastattr.captum.NeuronGradientShap(model, model[2], seed=4).attribute(x, sel, refs, n_samples=4)
    cut = fastattr.attr.neuron.neuron_model(model, model[2], sel, False)
    assert torch.equal(keyed, fastattr.gradient_shap(cut, x, refs, n_samples=4, seed=4))
    ours = fastattr.captum.DeepLiftShap(model).attribute(x, refs, target=1)
    assert _rel_err(ours, captum.attr.DeepLiftShap(model).attribute(x, refs, target=1)) <= 1e-14


@pytest.mark.parametrize("selector, match", [
    ((9999,) * 20, r"neuron_selector: 20 indices for a layer output of shape \(3, 5, 4, 4\)"),
    ((7, 0, 0), r"neuron_selector: index 7 out of range for dim 1 of size 5"),
    ((1,), r"neuron_selector: \(1,\) selects 16 values per example"),
    ("a", r"neuron_selector: expected an int"),
    (lambda o: o[:2, 0, 0, 0], r"neuron_selector: the callable must return one value per example"),
])
def test_bad_selectors_fail_naming_them_and_leave_no_hooks(backend: str, selector: Any, match: str) -> None:
    model, (x, _, _) = _model(), _data()
    with pytest.raises(AssertionError, match=match):  # also ValueError / TypeError
        neuron_gradient(model, x, model[2], selector)
    assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in model.modules())


def test_deeplift_shap_needs_a_distribution(backend: str) -> None:
    model, (x, base, _) = _model(), _data()
    with pytest.raises(ValueError, match="baselines: DeepLiftShap needs a distribution of at least 2"):
        deeplift_shap(model, x, base)


@pytest.mark.parametrize("selector", ["tuple", "slice", "callable"])
@pytest.mark.parametrize("target", [1, [0, 2, 1]])
def test_neuron_conductance_equals_reference_and_captum(backend: str, selector: str, target: Any) -> None:
    """Per path point: (selector of the target's gradient at the layer) times
    (the neuron's gradient w.r.t. the input), summed with the rule's step
    sizes, times x - baseline; in any chunking."""
    model, (x, base, _) = _model(), _data()
    sel, pick = SELECTORS[selector]
    rows = torch.tensor([target] * 3 if isinstance(target, int) else target)
    alphas, weights = path_rule("riemann_trapezoid", 7)
    ref = torch.zeros_like(x)
    for a, w in zip(alphas, weights):
        point = (base + float(a) * (x - base)).requires_grad_()
        caught: List[Tensor] = []
        handle = model[2].register_forward_hook(lambda m, args, out: caught.append(out))
        try:
            out = model(point)
        finally:
            handle.remove()
        (g_layer,) = torch.autograd.grad(out[torch.arange(3), rows].sum(), caught[0], retain_graph=True)
        (g_input,) = torch.autograd.grad(pick(caught[0]).sum(), point)
        ref += float(w) * pick(g_layer).view(-1, 1, 1, 1) * g_input
    ref *= x - base
    for cap in (None, 4):
        ours = fastattr.attr.neuron.neuron_conductance(model, x, model[2], sel, base, target, n_steps=7,
                                                       internal_batch_size=cap)
        assert _rel_err(ours, ref) <= 1e-13
    assert ref.abs().max() > 0
    theirs = captum.attr.NeuronConductance(model, model[2]).attribute(x, sel, base, target=target, n_steps=7)
    assert _rel_err(fastattr.captum.NeuronConductance(model, model[2]).attribute(
        x, sel, base, target=target, n_steps=7), theirs) <= 3e-7  # Captum's float32 step sizes
