"""The parts of Captum's ``Attribution`` contract beyond the numbers: the
completeness check ``compute_convergence_delta``, ``attribute_future``,
``attribute.__wrapped__``, the error classes Captum's users catch, and the
cases Captum refuses (a module used twice by DeepLift / LRP, a layer type
LRP has no default rule for, an unknown Guided Grad-CAM interpolation).

Each is checked against ``captum.attr`` run on the same case, or, where
Captum refuses, that both refuse and that fastattr's own function (which
has no such limit) explains the model correctly instead.
"""
from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import captum.attr
import fastattr
import fastattr.captum
from captum_cases import _case, _randn, assert_same_attr

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor .* did not already require gradients", "ignore:Setting forward, backward hooks")

GRADIENT_CLASSES = ("Saliency", "InputXGradient", "IntegratedGradients", "GradientShap", "DeepLift",
                    "GuidedBackprop", "Deconvolution", "LRP")


def _make(name: str, model: nn.Module) -> Any:
    return getattr(fastattr.captum, name)(model)


@pytest.mark.parametrize("name", ["conv", "two_input", "scalar"])
def test_compute_convergence_delta_equals_captums(backend: str, name: str) -> None:
    """Any attributions, any start point form: sum(attributions) - (f(end) - f(start))."""
    case = _case(name)
    attrs = tuple(_randn(x.shape, torch.float64, 20 + i) for i, x in enumerate(case.xs))
    attrs = attrs if isinstance(case.inputs, tuple) else attrs[0]
    rows = tuple(_randn((1, *x.shape[1:]), torch.float64, 30 + i) for i, x in enumerate(case.xs))
    was_tuple = isinstance(case.inputs, tuple)
    for start in (None, (0.25,) * len(rows) if was_tuple else 0.25, rows if was_tuple else rows[0]):
        ours = fastattr.captum.IntegratedGradients(case.model).compute_convergence_delta(
            attrs, start, case.inputs, target=case.target, additional_forward_args=case.afa)
        theirs = captum.attr.IntegratedGradients(case.model).compute_convergence_delta(
            attrs, start, case.inputs, target=case.target, additional_forward_args=case.afa)
        assert ours.shape == theirs.shape == (case.batch,) and ours.dtype == theirs.dtype
        assert (ours - theirs).abs().max() <= 1e-13 * (1 + theirs.abs().max())


def test_compute_convergence_delta_of_an_attribution_call_is_its_delta(backend: str) -> None:
    case = _case("conv")
    ig = fastattr.captum.IntegratedGradients(case.model)
    attrs, delta = ig.attribute(case.inputs, baselines=0.1, target=case.target, return_convergence_delta=True)
    again = ig.compute_convergence_delta(attrs, 0.1, case.inputs, target=case.target)
    assert (again - delta).abs().max() <= 1e-12


def test_compute_convergence_delta_checks_shapes_as_captum(backend: str) -> None:
    case = _case("mlp")
    for module in (captum.attr, fastattr.captum):
        with pytest.raises(AssertionError):
            module.Saliency(case.model).compute_convergence_delta(
                case.inputs[:2], None, case.inputs, target=case.target)
    with pytest.raises(ValueError, match="^attributions: expected one tensor per end_point tensor"):
        fastattr.captum.Saliency(case.model).compute_convergence_delta(
            case.inputs[:2], None, case.inputs, target=case.target)


@pytest.mark.parametrize("name", GRADIENT_CLASSES)
def test_attribute_future_is_not_implemented_and_attribute_is_wrapped(name: str) -> None:
    model = _case("conv").model
    method = _make(name, model)
    with pytest.raises(NotImplementedError, match=f"attribute_future is not implemented for {name}"):
        method.attribute_future()
    # Captum's attribute methods sit behind a decorator; code reads their
    # arguments from __wrapped__.
    ours = inspect.getfullargspec(method.attribute.__wrapped__).args
    theirs = inspect.getfullargspec(getattr(captum.attr, name)(model).attribute.__wrapped__).args
    assert ours[: len(theirs)] == theirs


class ReusedReLU(nn.Module):
    """One nn.ReLU (and, with ``linear``, one nn.Linear) called twice."""

    def __init__(self, linear: bool) -> None:
        super().__init__()
        self.lin1 = nn.Linear(3, 3)
        self.lin2 = self.lin1 if linear else nn.Linear(3, 3)
        self.relu = nn.ReLU()
        self.out = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.relu(self.lin2(self.relu(self.lin1(x)))))


class TwoReLUs(nn.Module):
    """``ReusedReLU`` with a second nn.ReLU module: the same function."""

    def __init__(self, reused: ReusedReLU) -> None:
        super().__init__()
        self.lin1, self.lin2, self.out = reused.lin1, reused.lin2, reused.out
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.relu2(self.lin2(self.relu1(self.lin1(x)))))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.mark.parametrize("cls, native, linear", [("DeepLift", "deeplift", False), ("LRP", "lrp", True)])
def test_reused_modules_refused_by_the_dropin_explained_by_fastattr(backend: str, cls: str, native: str,
                                                                    linear: bool) -> None:
    torch.manual_seed(3)
    model = ReusedReLU(linear).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    for module in (captum.attr, fastattr.captum):
        with pytest.raises(RuntimeError, match="more than once"):
            getattr(module, cls)(model).attribute(x, target=1)
    assert _hooks(model) == 0
    # fastattr's own function keeps each call's state: the same relevances as
    # the model with one module per call.
    once = getattr(fastattr, native)(TwoReLUs(model), x, target=1)
    twice = getattr(fastattr, native)(model, x, target=1)
    torch.testing.assert_close(twice, once, rtol=0, atol=0)
    assert once.abs().sum() > 0


def test_lrp_dropin_refuses_what_captum_has_no_rule_for(backend: str) -> None:
    """Captum's LRP has no default rule for nn.Sigmoid: a TypeError in both;
    fastattr.lrp passes relevance through it."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    for module in (captum.attr, fastattr.captum):
        with pytest.raises(TypeError):
            module.LRP(model).attribute(x, target=0)
    relevance, delta = fastattr.lrp(model, x, target=0, return_convergence_delta=True)
    assert relevance.shape == x.shape and delta.shape == (2,)


def test_guided_grad_cam_unknown_interpolation_gives_empty_tensors_as_captum(backend: str) -> None:
    case = _case("conv")
    for module in (captum.attr, fastattr.captum):
        with pytest.warns(UserWarning):
            out = module.GuidedGradCam(case.model, case.model.conv2).attribute(
                case.inputs, target=case.target, interpolate_mode="no_such_mode")
        assert isinstance(out, Tensor) and out.numel() == 0
    with pytest.raises(ValueError, match="interpolate_mode: expected one of"):
        fastattr.guided_grad_cam(case.model, case.inputs, case.model.conv2, target=case.target,
                                 interpolate_mode="no_such_mode")


@pytest.mark.parametrize("target", [(9999,) * 20, 9999, [9999, 0, 0]])
def test_bad_targets_are_assertion_errors_as_in_captum_and_leave_no_hooks(backend: str, target: Any) -> None:
    case = _case("conv")
    for name in GRADIENT_CLASSES:
        method = _make(name, case.model)
        args = (case.inputs, torch.zeros(1, 3, 8, 8, dtype=torch.float64)) if name == "GradientShap" else (case.inputs,)
        with pytest.raises(AssertionError, match="^target: "):
            method.attribute(*args, target=target)
        assert _hooks(case.model) == 0, name


def test_gradient_shap_callable_returning_a_wrong_type_is_an_assertion_error(backend: str) -> None:
    case = _case("mlp")
    with pytest.raises(AssertionError, match="^baselines: the callable must return"):
        fastattr.captum.GradientShap(case.model).attribute(
            case.inputs, baselines=lambda x: x.numpy(), target=case.target)
    with pytest.raises(TypeError):
        fastattr.gradient_shap(case.model, case.inputs, lambda x: x.numpy(), target=case.target)


def test_noise_tunnel_delta_and_grad_kwargs_surface(backend: str) -> None:
    case = _case("conv")
    nt = fastattr.captum.NoiseTunnel(fastattr.captum.IntegratedGradients(case.model))
    assert nt.has_convergence_delta() and nt.multiplies_by_inputs
    assert_same_attr(
        fastattr.captum.LayerGradCam(case.model, case.model.conv2).attribute(
            case.inputs, target=case.target, grad_kwargs={"materialize_grads": True}),
        captum.attr.LayerGradCam(case.model, case.model.conv2).attribute(
            case.inputs, target=case.target, grad_kwargs={"materialize_grads": True}),
        2e-15)


class FirstRowOnly(nn.Module):
    """A batch-level output: [B, 2] inputs -> [1, 2], the first row's."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.lin(x))[0].unsqueeze(0)


def test_batch_level_output_in_one_chunk_as_captum(backend: str) -> None:
    """An output without one row per input row is differentiated as a whole
    (Captum's semantics) when every row is in one chunk and the target is
    shared; otherwise the call refuses it, naming the output."""
    model = FirstRowOnly().double()
    with torch.no_grad():
        model.lin.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 1.0]]))
        model.lin.bias.zero_()
    x = torch.tensor([[1.0, 2.0], [1.0, 3.0]], dtype=torch.float64)
    for name in ("Saliency", "InputXGradient", "LRP"):
        ours = getattr(fastattr.captum, name)(model).attribute(x, target=1)
        theirs = getattr(captum.attr, name)(model).attribute(x, target=1)
        assert_same_attr(ours, theirs, 1e-15, name)
        assert ours[1].abs().sum() == 0 and ours[0].abs().sum() > 0
    with pytest.raises(ValueError, match=r"^model output: expected shape \[2, \.\.\.\]"):
        fastattr.saliency(model, torch.cat((x, x)), target=1, chunk_rows=2)
    with pytest.raises(ValueError, match=r"^model output: expected shape \[2, \.\.\.\]"):
        fastattr.saliency(model, x, target=[1, 0])
