"""Layer DeepLIFT, layer DeepLIFT SHAP and layer LRP: against Captum 0.9 and
on the invariants that hold whatever the model: DeepLIFT's summation to
delta at any layer (the layer's attributions sum to f(x) - f(r)), LRP's
conservation on a bias-free ReLU net (each layer's relevance sums to f(x)),
the same numbers for any chunking, a layer's input equal to the previous
layer's output, and the caller's model left as it was.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import captum.attr
import fastattr.captum
from captum_cases import _rel_err
from fastattr.attr.layer_deeplift import layer_deeplift, layer_deeplift_shap
from fastattr.attr.lrp import layer_lrp

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor .* did not already require gradients", "ignore:Setting forward, backward hooks")


class Net(nn.Module):
    """[B, 3, 8, 8] -> [B, 3], leaf modules only (Captum's LRP needs a rule on each)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, bias=bias), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 5, 3, bias=bias), nn.ReLU()
        self.fc = nn.Linear(80, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).flatten(1))


def _net(bias: bool = True) -> Net:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Net(bias).double().eval()


def _data():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64))


def _gap(model: nn.Module, x: Tensor, r: Tensor, target: list) -> Tensor:
    with torch.no_grad():
        rows = torch.arange(x.shape[0])
        return model(x)[rows, target] - model(r.expand_as(x))[rows, target]


@pytest.mark.parametrize("layer", ["conv1", "relu1", "conv2", "fc"])
@pytest.mark.parametrize("chunk_rows", [None, 2])
def test_layer_deeplift_sums_to_delta_and_equals_captum(backend: str, layer: str, chunk_rows) -> None:
    model, (x, base, _) = _net(), _data()
    target = [0, 2, 1]
    ours, delta = layer_deeplift(model, x, getattr(model, layer), base, target, return_convergence_delta=True,
                                 chunk_rows=chunk_rows)
    assert (ours.flatten(1).sum(1) - _gap(model, x, base, target)).abs().max() <= 1e-12
    assert delta.abs().max() <= 1e-12
    theirs, d_theirs = captum.attr.LayerDeepLift(model, getattr(model, layer)).attribute(
        x, base, target=target, return_convergence_delta=True)
    assert _rel_err(ours, theirs) <= 1e-14 and (delta - d_theirs).abs().max() <= 1e-12


def test_layer_deeplift_input_is_the_previous_output(backend: str) -> None:
    """relu2's input is conv2's output: the same attributions either way.
    (Captum's attribute_to_layer_input on a hooked nonlinearity takes the
    gradient before that module's own rescale, so it differs there.)"""
    model, (x, base, _) = _net(), _data()
    at_input = layer_deeplift(model, x, model.relu2, base, 1, attribute_to_layer_input=True)
    assert torch.equal(at_input, layer_deeplift(model, x, model.conv2, base, 1))
    at_input = layer_deeplift(model, x, model.conv2, base, 1, attribute_to_layer_input=True)
    theirs = captum.attr.LayerDeepLift(model, model.conv2).attribute(x, base, target=1, attribute_to_layer_input=True)
    assert _rel_err(at_input, theirs) <= 1e-14


def test_layer_deeplift_shap_is_the_mean_over_references(backend: str) -> None:
    model, (x, _, refs) = _net(), _data()
    ours, delta = layer_deeplift_shap(model, x, model.conv2, refs, 1, return_convergence_delta=True)
    each = torch.stack([layer_deeplift(model, x, model.conv2, refs[m:m + 1], 1) for m in range(4)]).mean(0)
    assert _rel_err(ours, each) <= 1e-14 and delta.shape == (12,) and delta.abs().max() <= 1e-12
    theirs = captum.attr.LayerDeepLiftShap(model, model.conv2).attribute(x, refs, target=1)
    assert _rel_err(fastattr.captum.LayerDeepLiftShap(model, model.conv2).attribute(x, refs, target=1),
                    theirs) <= 1e-14


@pytest.mark.parametrize("to_input", [False, True])
def test_layer_lrp_conserves_relevance_and_equals_captum(backend: str, to_input: bool) -> None:
    model, (x, _, _) = _net(bias=False), _data()
    target = [0, 2, 1]
    with torch.no_grad():
        f_t = model(x)[torch.arange(3), target]
    for layer in (model.conv1, model.conv2, model.fc):
        ours, delta = layer_lrp(model, x, layer, target, return_convergence_delta=True,
                                attribute_to_layer_input=to_input, chunk_rows=2)
        # No bias, epsilon 1e-9: each layer passes on all of f(x).
        assert (ours.flatten(1).sum(1) - f_t).abs().max() <= 1e-6 * f_t.abs().max()
        theirs, d_theirs = captum.attr.LayerLRP(model, layer).attribute(
            x, target=target, return_convergence_delta=True, attribute_to_layer_input=to_input)
        assert _rel_err(ours, theirs) <= 1e-14 and (delta - d_theirs).abs().max() <= 1e-12
    both, deltas = layer_lrp(model, x, [model.conv1, model.fc], target, return_convergence_delta=True)
    assert isinstance(both, list) and isinstance(deltas, list) and len(deltas) == 2


def test_dropins_refuse_what_captum_refuses_and_leave_the_model(backend: str) -> None:
    model, (x, base, _) = _net(), _data()
    state = {k: t.clone() for k, t in model.state_dict().items()}
    sig = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)).double()
    for module in (captum.attr, fastattr.captum):
        with pytest.raises(TypeError):
            module.LayerLRP(sig, sig[0]).attribute(torch.randn(2, 4, dtype=torch.float64), target=0)
    fastattr.captum.LayerDeepLift(model, model.conv2).attribute(x, base, target=1)
    fastattr.captum.LayerLRP(model, model.conv2).attribute(x, target=1)
    assert all(torch.equal(state[k], t) for k, t in model.state_dict().items())
    assert all(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) == 0
               for m in model.modules())
    assert not any(hasattr(m, "rule") for m in model.modules())
