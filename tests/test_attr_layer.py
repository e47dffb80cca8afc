"""Layer methods: Grad-CAM, Guided Grad-CAM and layer integrated gradients.

Each is checked against a plain float64 PyTorch reference written here (the
layer's activation as an explicit leaf, the model split by hand at the
layer) and against Captum 0.9 on the same inputs:

* models: the conv net of tests/captum_cases.py (Conv2d, BatchNorm2d in eval
  with non-trivial statistics, MaxPool2d, AdaptiveAvgPool2d), the MLP (a
  layer without spatial dims), the two-input model (tensor and non-tensor
  additional_forward_args; a layer on one branch only), a text model (token
  ids -> nn.Embedding -> masked mean -> Linear, the main use of layer IG), a
  model whose layer returns a tuple, and a conv net with ``nn.ReLU`` modules
  (Guided Grad-CAM) or an in-place ReLU after the layer;
* every target form, batch 1, tuple inputs, a list of layers,
  attribute_to_layer_input, relu_attributions, attr_dim_summation=False,
  chunk sizes that split an example's path steps across chunks;
* the drop-in classes by running one script with ``captum.attr`` and with
  ``fastattr.captum``;
* the caller's model (hooks on every submodule, requires_grad, train/eval
  mode) and inputs come back unchanged, also when the model raises mid-call;
* bad input fails before any gradient is taken, naming the argument.

Measured errors (max |fastattr - other| / max |other|, both backends):

* Grad-CAM and Guided Grad-CAM vs Captum, float64 and float32, and Grad-CAM
  vs the float64 reference: 0 (the same gradients, the same reduction ops).
* layer IG vs the float64 reference (exact float64 Gauss-Legendre weights on
  both sides): 0; vs Captum in float64: <= 3.6e-8, because Captum multiplies
  by float32 step sizes (see tests/test_attr_captum.py); float32 <= 5.2e-8.
* convergence deltas vs Captum, relative to the largest per-example sum of
  |attributions|: <= 2.2e-8 (float64), 2.3e-8 (float32).
"""
from __future__ import annotations

import copy

import types
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import captum.attr
import fastattr.captum.layer
from captum_cases import (
    _build, _case, _randn, assert_as_accurate_as_captum, assert_delta_as_accurate_as_captum, assert_same_attr,
    assert_same_delta,
)
from fastattr.attr.grad_cam import grad_cam, guided_grad_cam
from fastattr.attr.layer_integrated_gradients import layer_integrated_gradients

pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations"),
    pytest.mark.filterwarnings("ignore:Multiple layers provided"),
]

# Tolerances, relative to max |expected|: a few ulps where 0 was measured,
# else about 5x the measured error.
TOL_CAM = 1e-15  # Grad-CAM vs Captum or the reference: measured 0
TOL_F64_REF = 1e-15  # layer IG vs the float64 reference: measured 0
TOL_F64_CAPTUM = 2e-7  # layer IG vs Captum's float32 step sizes: measured 3.6e-8
TOL_F64_DELTA = 1.5e-7  # measured 2.2e-8



# ---------------------------------------------------------------------------
# Models beyond tests/captum_cases.py
# ---------------------------------------------------------------------------


class TextModel(nn.Module):
    """(ids int64 [B, T]) + additional arg (mask [B, T]) -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6, padding_idx=0)
        self.fc = nn.Linear(6, 3)

    def head(self, e: Tensor, mask: Tensor) -> Tensor:
        pooled = (e * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.fc(torch.tanh(pooled))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.head(self.emb(ids), mask)


class SplitPair(nn.Module):
    """A layer whose output is a tuple: two halves of a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        y = self.conv(x)
        return torch.tanh(y[:, :4]), y[:, 4:]


class TupleLayerNet(nn.Module):
    """[B, 3, 6, 6] -> [B, 4] through a tuple-output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.split = SplitPair()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.split(x)
        return self.fc(torch.cat([(a * b).mean((2, 3)), b.amax((2, 3))], 1))


class ReluConvNet(nn.Module):
    """[B, 3, 8, 8] -> [B, 5] with nn.ReLU modules (guided backprop's rules
    go on them), BatchNorm and pooling; ``inplace`` ReLU after ``conv2``."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.gap = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(32, 5)

    def upstream(self, x: Tensor) -> Tensor:
        """Everything up to ``conv2``'s output."""
        return self.conv2(self.pool(self.relu1(self.bn(self.conv1(x)))))

    def head(self, a: Tensor) -> Tensor:
        """Everything after ``conv2``."""
        return self.fc(self.gap(torch.relu(a)).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.gap(self.relu2(self.upstream(x))).flatten(1))


class FlatView(nn.Module):
    """[B, 3, 4] -> [B, 2], viewing its input with the batch dim merged
    (which a stride-0 expanded batch cannot do)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(12, 12)
        self.fc = nn.Linear(12, 2)

    def forward(self, x: Tensor) -> Tensor:
        rows = torch.tanh(x.view(-1, 4)).view(-1, 12)
        return self.fc(torch.tanh(self.mix(rows)))


def _text_case(batch: int = 4, dtype: torch.dtype = torch.float64) -> Tuple[nn.Module, Tensor, Tensor]:
    """The text model, token ids [B, 7] (padding 0 at the end of example 0) and its mask."""
    model = _build(TextModel, dtype)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 20, (batch, 7), generator=g)
    ids[0, 5:] = 0
    mask = (ids != 0).to(dtype)
    return model, ids, mask


def _select(out: Tensor, target: Any) -> Tensor:
    """Sum over examples of ``out[b, target_b]`` (the quantity every method differentiates)."""
    t = torch.as_tensor(target).expand(out.shape[0])
    return out.gather(1, t.unsqueeze(1)).sum()


# ---------------------------------------------------------------------------
# Plain float64 references
# ---------------------------------------------------------------------------


def reference_grad_cam(head: Callable[[Tensor], Tensor], act: Tensor, target: Any) -> Tensor:
    """Grad-CAM ``[B, 1, *S]`` of the activations ``act`` [B, C, *S] for ``head(act)``."""
    a = act.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(_select(head(a), target), a)
    weights = grad.mean(tuple(range(2, grad.dim())), keepdim=True)
    return (weights * a.detach()).sum(1, keepdim=True)


def reference_layer_ig(head: Callable[[Tensor], Tensor], act: Tensor, base: Tensor,
                       target: Any, n_steps: int) -> Tensor:
    """Layer IG with the Gauss-Legendre rule, one path point at a time."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    act, base = act.detach(), base.detach()
    total = torch.zeros_like(act)
    for node, weight in zip(nodes, weights):
        point = (base + (node + 1) / 2 * (act - base)).detach().requires_grad_()
        (grad,) = torch.autograd.grad(_select(head(point), target), point)
        total += weight / 2 * grad
    return total * (act - base)


def test_grad_cam_matches_float64_reference() -> None:
    model = _build(ReluConvNet, torch.float64)
    x = _randn((5, 3, 8, 8), torch.float64, 2)
    target = [0, 4, 2, 1, 3]
    expected = reference_grad_cam(model.head, model.upstream(x), target)
    actual = grad_cam(model, x, model.conv2, target=target, chunk_rows=2)
    assert_same_attr(actual, expected, TOL_CAM, "grad_cam vs reference")


def test_grad_cam_with_in_place_relu_after_the_layer() -> None:
    """The replacement rows are copies: ``ReLU(inplace=True)`` right after
    the layer must not write into the engine's leaf (Captum's layer IG fails
    on this model) nor into the captured activations."""
    model = _build(lambda: ReluConvNet(inplace=True), torch.float64)
    x = _randn((3, 3, 8, 8), torch.float64, 2)
    act = model.upstream(x)
    cam = grad_cam(model, x, model.conv2, target=1)
    assert_same_attr(cam, reference_grad_cam(model.head, act, 1), TOL_CAM, "in-place grad_cam")
    lig = layer_integrated_gradients(model, x, model.conv2, target=1, n_steps=6)
    base = model.upstream(torch.zeros_like(x))
    assert_same_attr(lig, reference_layer_ig(model.head, act, base, 1, 6), TOL_F64_REF, "in-place layer IG")


class GradModeLog(ReluConvNet):
    """Records the autograd mode before and after ``conv2`` in every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: List[Tuple[bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        before = torch.is_grad_enabled()
        a = self.relu2(self.upstream(x))
        self.modes.append((before, torch.is_grad_enabled()))
        return self.fc(self.gap(a).flatten(1))


@pytest.mark.parametrize("caller_mode", [True, False], ids=["grad", "no_grad"])
def test_what_precedes_the_layer_runs_without_autograd(caller_mode: bool) -> None:
    """Only the layer's rows need a graph: upstream runs without autograd
    (no saved activations), downstream with it, and the caller's mode
    (also under torch.no_grad()) is back afterwards."""
    model = _build(GradModeLog, torch.float64)
    x = _randn((2, 3, 8, 8), torch.float64, 1)
    with torch.set_grad_enabled(caller_mode):
        lig = layer_integrated_gradients(model, x, model.conv2, target=1, n_steps=3, chunk_rows=2)
        assert torch.is_grad_enabled() == caller_mode
    # The captures at the inputs and at the baselines stop at conv2, before
    # the point that logs; then 3 chunks of the path.
    assert model.modes == [(False, True)] * 3
    model.modes.clear()
    with torch.set_grad_enabled(caller_mode):
        _, delta = layer_integrated_gradients(model, x, model.conv2, target=1, n_steps=3, chunk_rows=2,
                                              return_convergence_delta=True)
    # The convergence delta needs the model's outputs: the captures run whole.
    assert model.modes == [(False, False)] * 2 + [(False, True)] * 3
    assert_same_attr(lig, reference_layer_ig(model.head, model.upstream(x), model.upstream(0 * x), 1, 3),
                     TOL_F64_REF, "layer IG under no_grad")


def test_layer_ig_embedding_matches_float64_reference(backend: str) -> None:
    model, ids, mask = _text_case()
    target = torch.tensor([0, 2, 1, 2])
    base_ids = torch.zeros_like(ids)
    head = lambda e: model.head(e, mask)  # noqa: E731
    expected = reference_layer_ig(head, model.emb(ids), model.emb(base_ids), target, 9)
    actual, delta = layer_integrated_gradients(
        model, ids, model.emb, baselines=0, target=target, additional_forward_args=mask,
        n_steps=9, return_convergence_delta=True, chunk_rows=5,
    )
    assert_same_attr(actual, expected, TOL_F64_REF, "embedding layer IG vs reference")
    with torch.no_grad():
        gap = _select(model(ids, mask), target) - _select(model(base_ids, mask), target)
    assert abs(float(delta.sum()) - float(expected.sum() - gap)) < 1e-12


# ---------------------------------------------------------------------------
# Against Captum
# ---------------------------------------------------------------------------


def _layer_cases() -> Dict[str, Tuple[nn.Module, Any, Any, Any, Callable[[nn.Module], Any]]]:
    """name -> (model, inputs, target, additional_forward_args, layer of the model)."""
    conv, mlp, two = _case("conv", batch=5), _case("mlp"), _case("two_input")
    text, ids, mask = _text_case()
    return {
        "conv": (conv.model, conv.inputs, conv.target, None, lambda m: m.conv2),
        "conv_bn": (conv.model, conv.inputs, conv.target, None, lambda m: m.bn),
        "mlp": (mlp.model, mlp.inputs, mlp.target, None, lambda m: m.net[2]),
        "two_input": (two.model, two.inputs, two.target, two.afa, lambda m: m.conv),
        "text": (text, ids, torch.tensor([0, 2, 1, 2]), mask, lambda m: m.emb),
        "tuple_layer": (_build(TupleLayerNet, torch.float64), _randn((3, 3, 6, 6), torch.float64, 4),
                        [3, 0, 1], None, lambda m: m.split),
    }


CAM_OPTIONS = {
    "default": {},
    "relu": {"relu_attributions": True},
    "no_sum": {"attr_dim_summation": False},
    "layer_input": {"attribute_to_layer_input": True},
}


@pytest.mark.parametrize("name, options", [
    (name, options)
    for name in ["conv", "conv_bn", "mlp", "two_input", "text", "tuple_layer"]
    for options in CAM_OPTIONS
    # The text model's layer input is token ids, tested as bad input.
    if not (name == "text" and options == "layer_input")
])
def test_grad_cam_matches_captum(name: str, options: str) -> None:
    model, inputs, target, afa, layer_of = _layer_cases()[name]
    kw = CAM_OPTIONS[options]
    ours = grad_cam(model, inputs, layer_of(model), target=target, additional_forward_args=afa,
                    chunk_rows=2, **kw)
    theirs = captum.attr.LayerGradCam(model, layer_of(model)).attribute(
        inputs, target=target, additional_forward_args=afa, **kw)
    assert_same_attr(ours, theirs, TOL_CAM, f"grad_cam {name} {options}")


def test_layer_methods_measure_activation_sizes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine sizes chunks from activation bytes measured on a first
    chunk; a layer method's per-call wrapper must not make every call measure
    again (the measuring hooks cost a Python call per saved tensor)."""
    from fastattr.engine import budget
    measured = []
    real = budget.SavedBytesMeter.measuring
    monkeypatch.setattr(budget.SavedBytesMeter, "measuring",
                        lambda self: (measured.append(1), real(self))[1])
    case = _case("conv", torch.float64, batch=2)
    for _ in range(3):
        grad_cam(case.model, case.inputs, case.model.conv2, target=0)
    assert len(measured) == 1
    for _ in range(3):
        layer_integrated_gradients(case.model, case.inputs, case.model.conv2, target=0, n_steps=3)
    assert len(measured) == 2


def test_grad_cam_empty_batch_keeps_the_map_shape() -> None:
    """No examples: a map of zero rows, shaped like a non-empty batch's."""
    case = _case("conv", torch.float64, batch=2)
    full = grad_cam(case.model, case.inputs, case.model.conv2, target=0)
    empty = grad_cam(case.model, case.inputs[:0], case.model.conv2, target=0)
    assert empty.shape == (0, *full.shape[1:]) and empty.dtype == full.dtype


def test_grad_cam_float32_and_upsampling() -> None:
    case = _case("conv", torch.float32, batch=4)
    ours = grad_cam(case.model, case.inputs, case.model.conv2, target=case.target,
                    relu_attributions=True, upsample_to_input=True, interpolate_mode="bilinear")
    cam = captum.attr.LayerGradCam(case.model, case.model.conv2).attribute(
        case.inputs, target=case.target, relu_attributions=True)
    theirs = captum.attr.LayerAttribution.interpolate(cam, (8, 8), interpolate_mode="bilinear")
    assert ours.shape == (4, 1, 8, 8)
    assert_same_attr(ours, theirs, TOL_CAM, "grad_cam f32 upsampled")


@pytest.mark.parametrize("name", ["relu_conv", "two_input"])
def test_guided_grad_cam_matches_captum(name: str) -> None:
    if name == "relu_conv":
        model, inputs, target, afa = (_build(ReluConvNet, torch.float64),
                                      _randn((3, 3, 8, 8), torch.float64, 5), [4, 0, 2], None)
        layer = model.conv2
    else:
        case = _case("two_input")
        model, inputs, target, afa, layer = case.model, case.inputs, case.target, case.afa, case.model.conv
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours = guided_grad_cam(model, inputs, layer, target=target, additional_forward_args=afa,
                               interpolate_mode="bilinear", chunk_rows=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = captum.attr.GuidedGradCam(model, layer).attribute(
            inputs, target=target, additional_forward_args=afa, interpolate_mode="bilinear")
    if name == "two_input":
        # The [B, 10] input has no spatial dims: both give an empty tensor (and warn).
        assert ours[1].shape == theirs[1].shape == (0,)
        assert any("cannot upsample" in str(w.message) for w in ours_warned)
        ours, theirs = ours[0], theirs[0]
    assert_same_attr(ours, theirs, TOL_CAM, f"guided_grad_cam {name}")


LIG_OPTIONS: Dict[str, Dict[str, Any]] = {
    "gl_split_steps": {"n_steps": 5, "chunk_rows": 7},
    "left_local": {"n_steps": 6, "method": "riemann_left", "multiply_by_inputs": False},
    "trapezoid_layer_input": {"n_steps": 4, "method": "riemann_trapezoid", "attribute_to_layer_input": True},
}


def _lig_both(model: nn.Module, inputs: Any, layer: Any, target: Any, afa: Any,
              baselines: Any = None, **kw: Any) -> Tuple[Any, Any]:
    mbi = kw.pop("multiply_by_inputs", True)
    chunk = {k: kw.pop(k) for k in ("chunk_rows",) if k in kw}
    ours = layer_integrated_gradients(
        model, inputs, layer, baselines=baselines, target=target, additional_forward_args=afa,
        return_convergence_delta=True, multiply_by_inputs=mbi, **kw, **chunk)
    theirs = captum.attr.LayerIntegratedGradients(model, layer, multiply_by_inputs=mbi).attribute(
        inputs, baselines=baselines, target=target, additional_forward_args=afa,
        return_convergence_delta=True, **kw)
    return ours, theirs


def _check_lig(ours: Any, theirs: Any, tol: float, dtol: float, what: str) -> None:
    (a_ours, d_ours), (a_theirs, d_theirs) = ours, theirs
    assert isinstance(a_ours, list) == isinstance(a_theirs, list), f"{what}: list vs not"
    pairs = zip(a_ours, a_theirs) if isinstance(a_ours, list) else [(a_ours, a_theirs)]
    for i, (a, b) in enumerate(pairs):
        assert_same_attr(a, b, tol, f"{what} layer {i}")
    assert_same_delta(d_ours, d_theirs, _flat(a_theirs), dtol, f"{what} delta")


@pytest.mark.parametrize("options", list(LIG_OPTIONS))
@pytest.mark.parametrize("name", ["conv", "mlp", "two_input", "text", "tuple_layer"])
def test_layer_ig_matches_captum(backend: str, name: str, options: str) -> None:
    model, inputs, target, afa, layer_of = _layer_cases()[name]
    kw = dict(LIG_OPTIONS[options])
    if name == "text":  # the embedding's input is token ids (tested as bad input)
        kw.pop("attribute_to_layer_input", None)
    ours, theirs = _lig_both(model, inputs, layer_of(model), target, afa, **kw)
    _check_lig(ours, theirs, TOL_F64_CAPTUM, TOL_F64_DELTA, f"layer IG {name} {options}")


def test_layer_ig_list_of_layers_and_baselines(backend: str) -> None:
    """Two independent layers of the two-input model (the delta counts the
    vec branch, which neither layer sees alone), tuple baselines."""
    case = _case("two_input")
    m = case.model
    baselines = (0.2, _randn((1, 10), torch.float64, 9))
    ours, theirs = _lig_both(m, case.inputs, [m.conv, m.fc_vec], case.target, case.afa,
                             baselines=baselines, n_steps=7, chunk_rows=4)
    _check_lig(ours, theirs, TOL_F64_CAPTUM, TOL_F64_DELTA, "layer IG list")
    single, _ = _lig_both(m, case.inputs, [m.conv], case.target, case.afa, n_steps=3)
    assert isinstance(single[0], list) and len(single[0]) == 1


def test_layer_ig_text_batch_1_and_float32() -> None:
    model, ids, mask = _text_case(batch=1)
    ours, theirs = _lig_both(model, ids, model.emb, 2, mask, n_steps=8, chunk_rows=3)
    _check_lig(ours, theirs, TOL_F64_CAPTUM, TOL_F64_DELTA, "text batch 1")
    model, ids, mask = _text_case(dtype=torch.float32)
    (ours, d_ours), (theirs, d_theirs) = _lig_both(model, ids, model.emb, [0, 1, 2, 0], mask, n_steps=10,
                                                   baselines=torch.zeros_like(ids))
    twin = copy.deepcopy(model).double()
    _, (truth, d_truth) = _lig_both(twin, ids, twin.emb, [0, 1, 2, 0], mask.double(), n_steps=10,
                                    baselines=torch.zeros_like(ids))
    assert_as_accurate_as_captum(ours, theirs, truth, "text float32")
    assert_delta_as_accurate_as_captum(d_ours, d_theirs, d_truth, theirs, truth, "text float32")


def test_batch_1_model_that_views_its_input() -> None:
    """With one example the engine expands the model's inputs to the chunk's
    rows; the model still gets tensors it can ``view`` across the batch."""
    model = _build(FlatView, torch.float64)
    x = _randn((1, 3, 4), torch.float64, 6)
    ours, theirs = _lig_both(model, x, model.mix, 1, None, n_steps=6, chunk_rows=4)
    _check_lig(ours, theirs, TOL_F64_CAPTUM, TOL_F64_DELTA, "batch 1 view")


# ---------------------------------------------------------------------------
# The drop-in classes: one script, run with Captum's and with fastattr's
# ---------------------------------------------------------------------------


class _Delta(NamedTuple):
    """A convergence delta with the attributions it belongs to (its scale)."""

    delta: Tensor
    attributions: Any


def _with_delta(result: Tuple[Any, Tensor]) -> Tuple[Any, _Delta]:
    return result[0], _Delta(result[1], result[0])


def _flat(attrs: Any) -> Tuple[Tensor, ...]:
    """Every tensor of a (list of) tensor-or-tuple attributions."""
    items = attrs if isinstance(attrs, list) else [attrs]
    return tuple(t for a in items for t in (a if isinstance(a, tuple) else (a,)))


def _dropin_script(ns: types.ModuleType) -> List[Any]:
    """Every target form, batch 1, list of layers, internal_batch_size, on ``ns``'s classes."""
    out: List[Any] = []
    conv = _case("conv", batch=4)
    m, x = conv.model, conv.inputs
    for target in (3, -1, [0, 1, 2, 4], torch.tensor([4, 3, 2, 1]), torch.tensor(2), (1,)):
        out.append(ns.LayerGradCam(m, m.conv2).attribute(x, target=target, relu_attributions=True))
        out.append(ns.LayerIntegratedGradients(m, m.bn).attribute(
            x, target=target, n_steps=4, internal_batch_size=5))
    out.append(ns.LayerGradCam(m, m.pool).attribute(x[:1], 2, attr_dim_summation=False))
    out.append(ns.LayerGradCam.interpolate(out[0], (8, 8), "bilinear"))
    out.append([cls.get_name() for cls in (ns.LayerGradCam, ns.GuidedGradCam, ns.LayerIntegratedGradients)])
    out.append(ns.LayerGradCam(m, m.conv2).attribute((x,), target=1))
    two = _case("two_input")
    t = two.model
    out.append(_with_delta(ns.LayerIntegratedGradients(t, [t.conv, t.fc_vec], multiply_by_inputs=False).attribute(
        two.inputs, target=two.target, additional_forward_args=two.afa, n_steps=5,
        return_convergence_delta=True)))
    text, ids, mask = _text_case()
    lig = ns.LayerIntegratedGradients(text, text.emb)
    out.append(_with_delta(lig.attribute(ids, 0, [0, 1, 2, 1], mask, 6, "riemann_middle", 7, True)))
    out.append((lig.has_convergence_delta(), lig.multiplies_by_inputs))
    relu_net = _build(ReluConvNet, torch.float64)
    out.append(ns.GuidedGradCam(relu_net, relu_net.conv2).attribute(x, [1, 2, 3, 4]))
    out.append(ns.GuidedGradCam(relu_net, relu_net.bn).attribute((x,), 0, None, "bilinear", True))
    return out


def _assert_same_structure(ours: Any, theirs: Any, what: str) -> None:
    if isinstance(theirs, _Delta):
        assert_same_delta(ours.delta, theirs.delta, _flat(theirs.attributions), TOL_F64_DELTA, what)
    elif isinstance(theirs, (list, tuple)) and not isinstance(theirs, Tensor):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), f"{what}: {type(ours)} vs {type(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_same_structure(a, b, f"{what}[{i}]")
    elif isinstance(theirs, Tensor):
        assert_same_attr(ours, theirs, TOL_F64_CAPTUM, what)
    else:
        assert ours == theirs, f"{what}: {ours} vs {theirs}"


def test_dropin_classes_match_captum() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _dropin_script(captum.attr)
    ours = _dropin_script(fastattr.captum.layer)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        _assert_same_structure(a, b, f"result {i}")


def test_dropin_rejects_what_it_does_not_support() -> None:
    m = _build(ReluConvNet, torch.float64)
    x = _randn((2, 3, 8, 8), torch.float64, 1)
    for cls in (fastattr.captum.layer.LayerGradCam, fastattr.captum.layer.GuidedGradCam,
                fastattr.captum.layer.LayerIntegratedGradients):
        with pytest.raises(NotImplementedError, match="device_ids"):
            cls(m, m.conv2, device_ids=[0])
    with pytest.raises(NotImplementedError, match="grad_kwargs"):
        fastattr.captum.layer.LayerGradCam(m, m.conv2).attribute(x, 0, grad_kwargs={"retain_graph": True})
    with pytest.raises(NotImplementedError, match="grad_kwargs"):
        fastattr.captum.layer.LayerIntegratedGradients(m, m.conv2).attribute(
            x, target=0, grad_kwargs={"create_graph": True})
    with pytest.raises(ValueError, match=r"target: indexes 2 output dim\(s\), but the model's output \[n, 5\]"):
        fastattr.captum.layer.LayerGradCam(m, m.conv2).attribute(x, target=(0, 1))


def test_dropin_accepts_materialize_grads() -> None:
    """The engine always materializes unused gradients as zeros, which is what
    Captum's grad_kwargs={"materialize_grads": True} asks for."""
    m = _build(ReluConvNet, torch.float64)
    x = _randn((2, 3, 8, 8), torch.float64, 1)
    for cls, kwargs in ((fastattr.captum.layer.LayerGradCam, {}),
                        (fastattr.captum.layer.LayerIntegratedGradients, {"n_steps": 4})):
        plain = cls(m, m.conv2).attribute(x, target=0, **kwargs)
        asked = cls(m, m.conv2).attribute(x, target=0, grad_kwargs={"materialize_grads": True}, **kwargs)
        torch.testing.assert_close(asked, plain, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# The caller's model and inputs come back unchanged
# ---------------------------------------------------------------------------


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
               "_forward_hooks_always_called", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def _model_state(model: nn.Module) -> Tuple[List[Any], List[Any], List[Tensor]]:
    """Hooks and mode of every submodule, requires_grad of every parameter,
    and every parameter and buffer value."""
    modules = [(name, [list(getattr(mod, d, {})) for d in _HOOK_DICTS], mod.training)
               for name, mod in model.named_modules()]
    flags = [(name, p.requires_grad) for name, p in model.named_parameters()]
    values = [t.detach().clone() for t in model.state_dict().values()]
    return modules, flags, values


def _assert_same_state(now: Any, before: Any) -> None:
    assert now[0] == before[0], "hooks or train/eval mode changed"
    assert now[1] == before[1], "requires_grad changed"
    assert all(torch.equal(a, b) for a, b in zip(now[2], before[2])), "a parameter or buffer changed"


class RaisesInGradientChunk(ReluConvNet):
    """Raises on the k-th forward that reaches its head with autograd on
    (a gradient chunk inside the engine, with the hooks installed)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu2(self.upstream(x))
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.k:
                raise RuntimeError("model failed mid-call")
        return self.fc(self.gap(a).flatten(1))


@pytest.mark.parametrize("method", ["grad_cam", "guided_grad_cam", "layer_ig"])
def test_model_and_inputs_unchanged(method: str) -> None:
    model = _build(ReluConvNet, torch.float64)
    model.fc.weight.requires_grad_(False)  # a frozen parameter stays frozen
    model.pool.train()  # a submodule in train mode stays so (the rest is in eval)
    user_hook = model.conv2.register_forward_hook(lambda *a: None)
    x = _randn((3, 3, 8, 8), torch.float64, 1)
    x_before, state = x.clone(), _model_state(model)
    run = {
        "grad_cam": lambda m, k: grad_cam(m, x, m.conv2, target=1, chunk_rows=k),
        "guided_grad_cam": lambda m, k: guided_grad_cam(m, x, m.conv2, target=1, chunk_rows=k),
        "layer_ig": lambda m, k: layer_integrated_gradients(m, x, [m.conv2], target=1, n_steps=3,
                                                            chunk_rows=k, return_convergence_delta=True),
    }[method]
    run(model, 2)
    assert torch.equal(x, x_before) and not x.requires_grad
    _assert_same_state(_model_state(model), state)
    assert model.conv2._forward_hooks.keys() == {user_hook.id}

    raising = _build(lambda: RaisesInGradientChunk(k=2), torch.float64)
    state = _model_state(raising)
    with pytest.raises(RuntimeError, match="mid-call"):
        run(raising, 1)
    assert raising.calls == 2
    _assert_same_state(_model_state(raising), state)
    assert torch.is_grad_enabled()  # the caller's autograd mode is back


# ---------------------------------------------------------------------------
# Bad input fails before any gradient, naming the argument
# ---------------------------------------------------------------------------


class CountingNet(ReluConvNet):
    """Counts forwards (``calls[0]`` without autograd at the output,
    ``calls[1]`` with: the layer methods run what precedes the layer without
    autograd) and backward passes through the output."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = [0, 0]
        self.backwards = 0

    def _count_backward(self, grad: Tensor) -> None:
        self.backwards += 1

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        self.calls[int(torch.is_grad_enabled())] += 1
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out


class ThreeDimOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x).view(-1, 3, 2)


class TwiceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.fc(x))


def _bad_cases(m: CountingNet, x: Tensor) -> Dict[str, Tuple[Callable[[], Any], type, str, int]]:
    """name -> (call, error, message pattern, forwards allowed before the error)."""
    lig, gc = layer_integrated_gradients, grad_cam
    meta = torch.zeros(3, 4, device="meta")
    return {
        "batch": (lambda: gc(m, (x, x[:2]), m.conv2, 0), ValueError, r"inputs\[1\]: batch size 2", 0),
        "dtype": (lambda: gc(m, x.to(torch.complex64), m.conv2, 0), TypeError, "inputs: expected a floating or integer", 0),
        "device": (lambda: gc(m, (x, meta), m.conv2, 0), ValueError, r"inputs\[1\]: on meta", 0),
        "unknown_layer": (lambda: gc(m, x, nn.Linear(2, 2), 0), ValueError, "layer: this Linear is not a submodule", 0),
        "layer_type": (lambda: gc(m, x, "conv2", 0), TypeError, "layer: expected an nn.Module", 0),
        "layer_list_gc": (lambda: gc(m, x, [m.conv2], 0), TypeError, "layer: expected an nn.Module inside model, got a list", 0),
        "layer_list_dup": (lambda: lig(m, x, [m.conv2, m.conv2], target=0), ValueError, "more than once", 0),
        "target_form": (lambda: gc(m, x, m.conv2, [0, 1]), ValueError, "target: expected 3 entries", 0),
        "afa_rows": (lambda: gc(m, x, m.conv2, 0, additional_forward_args=torch.ones(2, 1)), ValueError,
                     r"additional_forward_args\[0\]", 0),
        "interpolate_mode": (lambda: gc(m, x, m.conv2, 0, interpolate_mode="cubic"), ValueError, "interpolate_mode", 0),
        "chunk_rows": (lambda: gc(m, x, m.conv2, 0, chunk_rows=0), ValueError, "chunk_rows", 0),
        "n_steps": (lambda: lig(m, x, m.conv2, target=0, n_steps=0), ValueError, "n_steps", 0),
        "method": (lambda: lig(m, x, m.conv2, target=0, method="simpson"), ValueError, "method", 0),
        "internal_batch_size": (lambda: lig(m, x, m.conv2, target=0, internal_batch_size=-1), ValueError,
                                "internal_batch_size", 0),
        "baselines": (lambda: lig(m, x, m.conv2, torch.zeros(2, 3, 8, 8), 0), ValueError, "baselines: shape", 0),
        "device_model": (lambda: gc(m.to("meta"), x, m.conv2, 0), ValueError, "model: parameter", 0),
        # These need the model's output or the layer's activations: one
        # forward (Grad-CAM's builds its graph from the layer on, layer IG's
        # none), never a backward.
        "target_range": (lambda: gc(m, x, m.conv2, 5), ValueError, "target: index out of range", 1),
        "target_range_lig": (lambda: lig(m, x, m.conv2, target=-6), ValueError, "target: index out of range", 1),
        "target_none": (lambda: gc(m, x, m.conv2), ValueError, "target: required", 1),
        "upsample": (lambda: gc(m, x, m.fc, 0, upsample_to_input=True), ValueError,
                     "upsample_to_input: the Grad-CAM map has 0 spatial dims", 1),
        "upsample_mode": (lambda: gc(m, x, m.conv2, 0, upsample_to_input=True, interpolate_mode="linear"),
                          ValueError, "interpolate_mode: 'linear' interpolates 1", 1),
    }


@pytest.mark.parametrize("name", list(_bad_cases(CountingNet(), torch.zeros(3, 3, 8, 8))))
def test_bad_input_fails_early_naming_the_argument(name: str) -> None:
    m = _build(CountingNet, torch.float64)
    x = _randn((3, 3, 8, 8), torch.float64, 1)
    call, error, pattern, forwards = _bad_cases(m, x)[name]
    with pytest.raises(error, match=pattern):
        call()
    assert m.backwards == 0, f"{name}: a backward pass ran before the error"
    assert sum(m.calls) <= forwards, f"{name}: {sum(m.calls)} forwards before the error"
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_bad_model_and_layer_fail_naming_them() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    three = ThreeDimOut().double()
    with pytest.raises(ValueError, match=r"target: selects 2 values per example from the model's output \[n, 3, 2\]"):
        grad_cam(three, x, three.fc, target=0)
    # Layer IG's captures stop at the layer; the engine checks the output of
    # its first chunk (3 examples x 50 steps), before any backward.
    with pytest.raises(ValueError, match=r"target: selects 2 values per example from the model's output \[n, 3, 2\]"):
        layer_integrated_gradients(three, x, three.fc, target=0)
    twice = TwiceNet().double()
    with pytest.raises(ValueError, match="layer: ran 2 times"):
        layer_integrated_gradients(twice, x, twice.fc, target=0)
    unused = nn.Linear(4, 4).double()
    with pytest.raises(ValueError, match="layer: did not run"):
        grad_cam(lambda t: twice(t), x, unused, target=0)
    text, ids, mask = _text_case()
    with pytest.raises(TypeError, match="layer input: expected floating tensors.*embedding"):
        layer_integrated_gradients(text, ids, text.emb, target=0, additional_forward_args=mask,
                                   attribute_to_layer_input=True)
    relu_net = _build(ReluConvNet, torch.float64)
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        guided_grad_cam(lambda t: relu_net(t), torch.zeros(1, 3, 8, 8, dtype=torch.float64), relu_net.conv2, 0)
    tuple_net = _build(TupleLayerNet, torch.float64)
    with pytest.raises(ValueError, match="layer: Guided Grad-CAM needs a layer output of one tensor"):
        guided_grad_cam(tuple_net, torch.zeros(1, 3, 6, 6, dtype=torch.float64), tuple_net.split, 0)
    for model in (three, twice, text, relu_net, tuple_net):
        assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in model.modules())
