"""The relative stabilities (fastattr/metrics/stability.py) beyond their
definitions (tests/test_quantus_robustness.py): relative representation
stability reads the layers in the forward that explains the perturbed rows,
with the values a separate forward reads; and ``model_form``.

Tolerances: a representation read in the explainer's forward is the same
forward of the same rows as a separate one (only autograd is on), so it is
held bit for bit. ``"fast"`` against ``"eager"`` is held to the rule of
tests/test_model_form.py (measured in the same run): the fast float32 value
at most ``FACTOR`` times as far from the float64 value (a float64 copy of
the model, float64 inputs) as eager float32 is.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict

import pytest
import torch
from torch import Tensor, nn

import fastattr
from fastattr.attr._call import build_request
from fastattr.engine import single_point_plan
from fastattr.engine.model_form import model_in_form
from fastattr.metrics.stability import (
    ModelReads, hidden_layers, relative_input_stability, relative_output_stability,
    relative_representation_stability,
)
from fastattr.testing import assert_bitwise_equal, assert_error_within

from test_model_form import FACTOR, _assert_unchanged, _snapshot, conv_bn_net
from test_quantus_robustness import RTOL64, reference_stability

TARGET = torch.tensor([1, 3, 0])


def _inputs(dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.rand((3, 3, 16, 16), generator=torch.Generator().manual_seed(11), dtype=dtype)


class CountingRows:
    """Rows the model ran with autograd off, counted by a pre-hook while a
    call runs (the fast form falls back to eager under it: count eager runs only)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.no_grad_rows, self.grad_rows = model, 0, 0

    def run(self, fn: Callable[[], Any]) -> Any:
        def count(_m: nn.Module, args: Any) -> None:
            if torch.is_grad_enabled():
                self.grad_rows += args[0].shape[0]
            else:
                self.no_grad_rows += args[0].shape[0]

        handle = self.model.register_forward_pre_hook(count)
        try:
            return fn()
        finally:
            handle.remove()


# ---------------------------------------------------------------------------
# the representation read in the explainer's own forward
# ---------------------------------------------------------------------------


def test_layers_read_in_the_explaining_forward_equal_a_separate_forward() -> None:
    """ModelReads on the rows the engine's capturing model ran (autograd on,
    as in the engine) gives the outputs and the representation change of a
    separate no-grad forward, bit for bit."""
    model, x = conv_bn_net(), _inputs()
    rows = x.repeat_interleave(4, 0) + 0.01 * torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    examples = torch.arange(3).repeat_interleave(4)
    req, _ = build_request(model, x, TARGET, None, lambda xs: single_point_plan("grad"), None, None)
    layers = [m for _, m in hidden_layers(model)]
    captured = ModelReads(req, layers=layers)
    pts = rows.clone().requires_grad_()
    with torch.enable_grad():
        captured.capturing_model()(pts)
    assert captured.captured is not None and len(captured.captured[2]) == len(layers)
    got = captured.read((pts.detach(),), examples)
    expected = ModelReads(req, layers=layers).read((rows,), examples)
    assert captured.captured is None  # used once
    for g, e in zip(got, expected):
        assert_bitwise_equal(g, e)


@pytest.mark.parametrize("explainer", ["saliency", "input_x_gradient"])
def test_representation_stability_runs_one_forward_per_perturbed_row(explainer: str) -> None:
    """Saliency / input x gradient: the perturbed rows are read for the
    layers in the forward that explains them; the only no-grad forward is
    the clean inputs' read. Values as the float64 reference (a separate forward)."""
    case_model = conv_bn_net().double()
    x = _inputs(torch.float64)
    n = 5
    counter = CountingRows(case_model)
    ours = counter.run(lambda: relative_representation_stability(
        case_model, x, TARGET, explainer=explainer, layer_names=["1", "4", "9"], n_samples=n, radius=0.3,
        seed=4, nan_when_prediction_changes=True))
    assert counter.grad_rows == 3 * (n + 1) and counter.no_grad_rows == 3
    if explainer == "saliency":
        layers = [case_model[1], case_model[4], case_model[9]]
        expected = reference_stability("representation", case_model, x, TARGET.tolist(), n, 4, 0.3, nan=True,
                                       layers=layers).amax(1)
        torch.testing.assert_close(ours, expected, rtol=RTOL64, atol=0, equal_nan=True)


def test_a_layer_changed_in_place_later_is_read_again() -> None:
    """An in-place ReLU after the read convolution overwrites its output in
    the explaining forward: the read falls back to a forward of its own,
    and the values stay the reference's."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 4)).double().eval()
    x = _inputs(torch.float64)
    counter = CountingRows(model)
    ours = counter.run(lambda: relative_representation_stability(model, x, TARGET, layer_names=["0"], n_samples=3,
                                                                 radius=0.3, seed=1))
    assert counter.no_grad_rows == 3 + 3 * 3  # the clean read, and every perturbed row read again
    expected = reference_stability("representation", model, x, TARGET.tolist(), 3, 1, 0.3, layers=[model[0]]).amax(1)
    torch.testing.assert_close(ours, expected, rtol=RTOL64, atol=0)


# ---------------------------------------------------------------------------
# model_form
# ---------------------------------------------------------------------------


def _ig(model: Any, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
    """A user explainer: no model_form is passed to it (it runs IG eagerly)."""
    return fastattr.integrated_gradients(model, inputs, target=target, n_steps=3, model_form="eager")


STABILITIES: Dict[str, Callable[..., Tensor]] = {
    "input": lambda m, x, **kw: relative_input_stability(m, x, TARGET, n_samples=4, radius=0.05, **kw),
    "input_nan_reads": lambda m, x, **kw: relative_input_stability(m, x, TARGET, n_samples=4, radius=0.05,
                                                                   nan_when_prediction_changes=True, **kw),
    "output": lambda m, x, **kw: relative_output_stability(m, x, TARGET, n_samples=4, radius=0.05, **kw),
    "output_ig": lambda m, x, **kw: relative_output_stability(m, x, TARGET, n_samples=3, radius=0.05,
                                                              explainer="integrated_gradients",
                                                              explainer_kwargs={"n_steps": 3}, **kw),
    "representation_ig": lambda m, x, **kw: relative_representation_stability(
        m, x, TARGET, explainer="integrated_gradients", explainer_kwargs={"n_steps": 3}, layer_names=["4", "9"],
        n_samples=3, radius=0.05, **kw),
    "representation_callable": lambda m, x, **kw: relative_representation_stability(
        m, x, TARGET, explainer=_ig, layer_names=["4", "9"], n_samples=3, radius=0.05, **kw),
}


@pytest.mark.parametrize("name", sorted(STABILITIES))
def test_fast_form_equals_eager_up_to_rounding(name: str) -> None:
    model, x = conv_bn_net(), _inputs()
    assert model_in_form(model, "fast", (x,)).form == "fast", "the rewrite must apply here"
    fn = STABILITIES[name]
    snapshot = _snapshot(model)
    fast = fn(model, x, model_form="fast")
    eager = fn(model, x, model_form="eager")
    exact = fn(copy.deepcopy(model).double(), x.double(), model_form="eager")
    _assert_unchanged(model, snapshot)
    assert torch.isfinite(exact).all()
    assert_error_within(fast, exact, eager, factor=FACTOR, msg=f"{name}:")
    if name != "representation_callable":  # there every row runs eager (the user's IG, the layer reads)
        assert not torch.equal(fast, eager), "the fast form did not run"


def test_representation_read_in_the_explaining_forward_runs_eager_whatever_the_form() -> None:
    """Saliency's perturbed rows are read for the layers in their own forward,
    which runs the caller's modules: "fast" gives eager's bits."""
    model, x = conv_bn_net(), _inputs()
    kw = dict(layer_names=["4", "9"], n_samples=3, radius=0.05)
    assert_bitwise_equal(relative_representation_stability(model, x, TARGET, model_form="fast", **kw),
                         relative_representation_stability(model, x, TARGET, model_form="eager", **kw))


def test_explainer_kwargs_model_form_wins() -> None:
    """The caller's explainer_kwargs choose the explainer's form: eager
    explanations (with fast reads of the outputs) are eager's bits where the
    model's reads agree to rounding."""
    model, x = conv_bn_net(), _inputs()
    kw = dict(n_samples=3, radius=0.05)
    pinned = relative_input_stability(model, x, TARGET, explainer_kwargs={"model_form": "eager"}, **kw)
    assert_bitwise_equal(pinned, relative_input_stability(model, x, TARGET, model_form="eager", **kw))


@pytest.mark.filterwarnings("ignore:.*normalisation layer")
def test_train_mode_model_runs_eager() -> None:
    model, x = conv_bn_net().train(), _inputs()
    kw = dict(n_samples=3, radius=0.05)
    for fn in (relative_input_stability, relative_output_stability):
        assert_bitwise_equal(fn(model, x, TARGET, model_form="fast", **kw),
                             fn(model, x, TARGET, model_form="eager", **kw))


@pytest.mark.parametrize("fn", [relative_input_stability, relative_output_stability,
                                relative_representation_stability])
def test_bad_model_form_fails_before_any_compute(fn: Callable[..., Tensor]) -> None:
    model, x = conv_bn_net(), _inputs()
    counter = CountingRows(model)
    with pytest.raises(ValueError, match="model_form"):
        counter.run(lambda: fn(model, x, TARGET, model_form="quick"))
    assert counter.grad_rows == counter.no_grad_rows == 0


def test_representation_read_in_the_explaining_forward_ignores_the_explainers_form() -> None:
    """The clean explanation runs eager with the perturbed rows, even where
    explainer_kwargs ask for another form; a bad form there is still refused."""
    model, x = conv_bn_net(), _inputs()
    kw = dict(layer_names=["4"], n_samples=3, radius=0.05)
    assert_bitwise_equal(
        relative_representation_stability(model, x, TARGET, explainer_kwargs={"model_form": "fast"}, **kw),
        relative_representation_stability(model, x, TARGET, model_form="eager", **kw))
    with pytest.raises(ValueError, match="model_form"):
        relative_representation_stability(model, x, TARGET, explainer_kwargs={"model_form": "quick"}, **kw)
