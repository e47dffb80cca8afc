"""Layer activation, gradient x activation, internal influence and layer
conductance: against a plain float64 autograd reference (one path point at a
time, the layer's output and gradient caught by hooks), against Captum 0.9,
and on their invariants: conductance sums to f(x) - f(baseline) (its
convergence delta), any chunking gives the same numbers, the rows per
forward stay within the cap whatever ``n_steps``, and layers chosen one
after another keep the later layer on the earlier one's gradient path.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import pytest
import torch
from torch import Tensor, nn

import captum.attr
import fastattr.captum
from captum_cases import _rel_err
from fastattr.attr.layer_gradients import (
    internal_influence, layer_activation, layer_conductance, layer_gradient_x_activation,
)
from fastattr.attr.quadrature import path_rule

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")


def _model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(inplace=True), nn.Flatten(),
            nn.Linear(5 * 4 * 4, 3),
        ).double().eval()


def _data(batch: int = 3) -> Tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64))


def _at(model: nn.Module, layer: nn.Module, x: Tensor, target: List[int]) -> Tuple[Tensor, Tensor]:
    """(the layer's output, the target's gradient at it) at rows ``x``, by plain autograd."""
    caught = {}

    def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        caught["out"] = out
        return out.clone()  # what follows may work in place (nn.ReLU(inplace=True))

    handle = layer.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    picked = out.gather(1, torch.tensor(target).unsqueeze(1)).sum()
    (grad,) = torch.autograd.grad(picked, caught["out"])
    return caught["out"].detach().clone(), grad


def reference_conductance(model, layer, x, base, target, n_steps, method) -> Tensor:
    alphas, _ = path_rule(method, n_steps + 1)
    points = [_at(model, layer, base + float(a) * (x - base), target) for a in alphas]
    return sum(g * (points[s + 1][0] - act) for s, (act, g) in enumerate(points[:-1]))


def reference_internal_influence(model, layer, x, base, target, n_steps, method) -> Tensor:
    alphas, weights = path_rule(method, n_steps)
    return sum(float(w) * _at(model, layer, base + float(a) * (x - base), target)[1]
               for a, w in zip(alphas, weights))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
@pytest.mark.parametrize("chunk_rows", [None, 7, 1])
def test_conductance_equals_reference_for_any_chunking(backend: str, method: str, chunk_rows: Any) -> None:
    model, (x, base) = _model(), _data()
    target = [0, 2, 1]
    for layer in (model[1], model[2]):
        ours = layer_conductance(model, x, layer, base, target, n_steps=9, method=method, chunk_rows=chunk_rows)
        ref = reference_conductance(model, layer, x, base, target, 9, method)
        assert _rel_err(ours, ref) <= 1e-13


def test_conductance_is_complete_and_equals_captum(backend: str) -> None:
    """sum over the layer of conductance -> f(x) - f(baseline) as the steps grow
    (every path from the input passes the layer); the delta says how far."""
    model, (x, base) = _model(), _data()
    attrs, delta = layer_conductance(model, x, model[2], base, [0, 2, 1], n_steps=400,
                                     method="riemann_trapezoid", return_convergence_delta=True)
    with torch.no_grad():
        gap = (model(x) - model(base)).gather(1, torch.tensor([[0], [2], [1]])).squeeze(1)
    assert (attrs.sum((1, 2, 3)) - gap - delta).abs().max() <= 1e-12
    assert delta.abs().max() <= 0.02 * gap.abs().max()
    ours, d_ours = fastattr.captum.LayerConductance(model, model[2]).attribute(
        x, base, target=[0, 2, 1], n_steps=20, internal_batch_size=11, return_convergence_delta=True)
    theirs, d_theirs = captum.attr.LayerConductance(model, model[2]).attribute(
        x, base, target=[0, 2, 1], n_steps=20, internal_batch_size=11, return_convergence_delta=True)
    assert _rel_err(ours, theirs) <= 1e-13 and (d_ours - d_theirs).abs().max() <= 1e-12


def test_conductance_rows_per_forward_stay_within_the_cap(backend: str) -> None:
    """n_steps = 300 on 3 examples: 903 path rows, never more than the cap at once."""
    model, (x, base) = _model(), _data()
    rows: List[int] = []
    handle = model[0].register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        layer_conductance(model, x, model[2], base, 1, n_steps=300, chunk_rows=64)
    finally:
        handle.remove()
    assert max(rows) <= 64 and sum(rows) == 3 * 301


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left"])
def test_internal_influence_equals_reference_and_captum(backend: str, method: str) -> None:
    model, (x, base) = _model(), _data()
    target = [1, 1, 0]
    ours = internal_influence(model, x, model[3], base, target, n_steps=8, method=method, chunk_rows=5)
    ref = reference_internal_influence(model, model[3], x, base, target, 8, method)
    assert _rel_err(ours, ref) <= 1e-13
    theirs = captum.attr.InternalInfluence(model, model[3]).attribute(x, base, target=target, n_steps=8,
                                                                     method=method)
    # Captum's step sizes are float32 (a torch.tensor of Python floats).
    assert _rel_err(ours, theirs) <= 3e-7


def test_gradient_x_activation_of_nested_layers(backend: str) -> None:
    """Two chosen layers, the second fed by the first: the first's gradient
    flows through the second, as Captum computes it."""
    model, (x, _) = _model(), _data()
    layers = [model[0], model[2]]
    ours = layer_gradient_x_activation(model, x, layers, target=[0, 1, 2], chunk_rows=2)
    for layer, got in zip(layers, ours):
        act, grad = _at(model, layer, x, [0, 1, 2])
        assert _rel_err(got, act * grad) <= 1e-14
    theirs = captum.attr.LayerGradientXActivation(model, layers).attribute(x, target=[0, 1, 2])
    assert all(_rel_err(a, b) <= 1e-14 for a, b in zip(ours, theirs))
    plain = layer_gradient_x_activation(model, x, model[2], target=[0, 1, 2], multiply_by_inputs=False)
    assert _rel_err(plain, _at(model, model[2], x, [0, 1, 2])[1]) <= 1e-14


def test_layer_activation_in_chunks(backend: str) -> None:
    model, (x, _) = _model(), _data(5)
    out = layer_activation(model, x, [model[1], model[4]], chunk_rows=2)
    with torch.no_grad():
        first = model[1](model[0](x))
        assert torch.equal(out[0], first) and torch.equal(out[1], model[4](model[3](model[2](first))))
    inp = layer_activation(model, x, model[2], attribute_to_layer_input=True)
    assert torch.equal(inp, first)
    assert layer_activation(model, x[:0], model[1]).shape == (0, 4, 6, 6)


def test_caller_state_unchanged(backend: str) -> None:
    model, (x, base) = _model(), _data()
    before = [p.clone() for p in model.parameters()]
    x_before = x.clone()
    layer_conductance(model, x, model[2], base, 0, n_steps=4)
    internal_influence(model, x, model[2], base, 0, n_steps=4)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(x, x_before)
    assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in model.modules())


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x, b: layer_conductance(m, x, m[2], b, 0, n_steps=0), ValueError, "n_steps: expected an integer >= 1"),
    (lambda m, x, b: layer_conductance(m, x, m[2], b, 0, method="simpson"), ValueError, "method: expected one of"),
    (lambda m, x, b: internal_influence(m, x, nn.ReLU(), b, 0), ValueError, "layer: this ReLU is not a submodule"),
    (lambda m, x, b: layer_conductance(m, x, m[2], b, 7), ValueError, "target: index out of range"),
])
def test_bad_input(backend: str, call: Any, error: type, match: str) -> None:
    model, (x, base) = _model(), _data()
    with pytest.raises(error, match=match):
        call(model, x, base)
