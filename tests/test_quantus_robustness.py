"""Continuity, Consistency and the relative input / output / representation
stabilities: the functions against float64 references written from the
definitions (one example at a time, plain autograd and loops), the Quantus
0.6 drop-ins against Quantus on the same inputs and the same perturbations
(numpy's draws patched to fastattr's keyed ones), batch independence (and
where Quantus's batch-wide normalisation makes its scores depend on the
batch), chunking, bad input, and the caller's objects left as they were."""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
import quantus
import torch
from torch import Tensor, nn

import fastattr
from fastattr import ops
from fastattr.engine import PURPOSE_PERTURBATION
from fastattr.metrics.consistency import consistency
from fastattr.metrics.continuity import continuity, translations
from fastattr.metrics.stability import (
    hidden_layers, relative_input_stability, relative_output_stability, relative_representation_stability,
)
from fastattr.quantus._consistency import Consistency
from fastattr.quantus._continuity import Continuity
from fastattr.quantus._stability import (
    RelativeInputStability, RelativeOutputStability, RelativeRepresentationStability, quantus_layers,
)

from captum_cases import _case

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")

STREAM = PURPOSE_PERTURBATION * 65536
# float64 against float64: the same sums in another order.
RTOL64 = 1e-10
# Quantus runs the model, explanations, norms and ratios in float32 numpy
# (~6e-8 relative per operation); 1e-5 is about 100 float32 ulps.
RTOL32 = 1e-5


# ---------------------------------------------------------------------------
# float64 references from the definitions, one example at a time
# ---------------------------------------------------------------------------


def ref_saliency(model: nn.Module, x: Tensor, target: Any) -> Tensor:
    """``|d model(x_b)[t_b] / d x_b|`` per example, float64."""
    out = []
    for b in range(x.shape[0]):
        row = x[b:b + 1].detach().double().requires_grad_()
        t = target if isinstance(target, int) else int(torch.as_tensor(target)[b])
        (g,) = torch.autograd.grad(model(row)[0, t], row)
        out.append(g.abs())
    return torch.cat(out)


def keyed_rows(x: Tensor, n: int, seed: int, scale: float, shift: float = 0.0) -> Tensor:
    """``[B * n, *F]`` row b * n + s: ``x_b + shift + scale * z`` (the keyed uniform draws of csrc/README.md §2)."""
    return ops.generate_rows(x + shift, None, None, n, "uniform", scale, seed, STREAM, 0, x.shape[0] * n, 0)


def _relative(new: Tensor, old: Tensor, eps: float) -> Tensor:
    return (old - new) / torch.where(old == 0, torch.full_like(old, eps), old)


def layer_outputs(model: nn.Module, layers: List[nn.Module], x: Tensor) -> Tensor:
    """``[n, D]``: the outputs of ``layers`` in call order, flattened and joined."""
    seen: List[Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o.detach().reshape(o.shape[0], -1).clone()))
               for m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return torch.cat(seen, dim=1)


def reference_stability(kind: str, model: nn.Module, x: Tensor, target: Any, n: int, seed: int, radius: float,
                        eps: float = 1e-6, nan: bool = False, layers: Optional[List[nn.Module]] = None) -> Tensor:
    """float64 ``[B, n]`` per-sample RIS / ROS / RRS from their definitions."""
    model = model.double()
    x = x.double()
    pert = keyed_rows(x, n, seed, radius)
    a = ref_saliency(model, x, target)
    values = torch.empty(x.shape[0], n, dtype=torch.float64)
    for b in range(x.shape[0]):
        t = target if isinstance(target, int) else int(torch.as_tensor(target)[b])
        for s in range(n):
            xp = pert[b * n + s:b * n + s + 1]
            ap = ref_saliency(model, xp, [t])
            num = _relative(ap, a[b:b + 1], eps).norm()
            with torch.no_grad():
                h, hp = model(x[b:b + 1]), model(xp)
            if kind == "input":
                den = _relative(xp, x[b:b + 1], eps).norm()
            elif kind == "output":
                den = (h - hp).norm()
            else:
                den = _relative(layer_outputs(model, layers, xp), layer_outputs(model, layers, x[b:b + 1]), eps).norm()
            v = num / max(den, torch.tensor(eps, dtype=torch.float64))
            if nan and int(h.argmax()) != int(hp.argmax()):
                v = torch.tensor(float("nan"), dtype=torch.float64)
            values[b, s] = v
    return values


def reference_continuity(model: nn.Module, x: Tensor, target: Any, n_steps: int) -> Tensor:
    """float64 ``[B]``: translations built pixel by pixel, explanations one row at a time."""
    model, x = model.double(), x.double()
    width = x.shape[-1]
    a = ref_saliency(model, x, target)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for b in range(x.shape[0]):
        t_b = target if isinstance(target, int) else int(torch.as_tensor(target)[b])
        best = -float("inf")
        for t in translations(width, n_steps):
            xt = torch.full_like(x[b:b + 1], float(x[b].min()))
            for j in range(width):
                if 0 <= j - t < width:
                    xt[..., j] = x[b:b + 1, ..., j - t]
            change = (a[b:b + 1] - ref_saliency(model, xt, [t_b])).abs().sum()
            best = max(best, float(change / ((x[b:b + 1] - xt).norm() + 1e-9)))
        out[b] = best
    return out


def reference_consistency(labels: List[Tuple[float, ...]], predictions: List[int]) -> Tensor:
    """O(B^2) double loop over the pairs."""
    out = []
    for i in range(len(labels)):
        same = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        both = [j for j in same if predictions[j] == predictions[i]]
        out.append(len(both) / (len(same) + 1e-9))
    return torch.tensor(out, dtype=torch.float64)


def _saliency_callable(model: Any, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
    """A user explainer (no engine folding)."""
    return fastattr.saliency(model, inputs, target=target, additional_forward_args=additional_forward_args)


# ---------------------------------------------------------------------------
# functions vs references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["input", "output", "representation"])
@pytest.mark.parametrize("explainer", ["saliency", "callable"])
def test_stability_against_reference(kind: str, explainer: str) -> None:
    case = _case("conv", torch.float64, batch=3)
    n, seed, radius = 5, 3, 0.3
    explain = "saliency" if explainer == "saliency" else _saliency_callable
    layers = [case.model.conv2, case.model.fc]
    fns = {
        "input": lambda **kw: relative_input_stability(**kw),
        "output": lambda **kw: relative_output_stability(**kw),
        "representation": lambda **kw: relative_representation_stability(layer_names=["conv2", "fc"], **kw),
    }
    for nan in (False, True):
        expected = reference_stability(kind, case.model, case.inputs, case.target, n, seed, radius,
                                       nan=nan, layers=layers).amax(1)
        ours = fns[kind](model=case.model, inputs=case.inputs, target=case.target, explainer=explain,
                         radius=radius, n_samples=n, seed=seed, nan_when_prediction_changes=nan)
        torch.testing.assert_close(ours, expected, rtol=RTOL64, atol=0, equal_nan=True)
    assert expected.isnan().any() and not expected.isnan().all()  # both kinds of example were checked


def test_representation_layers_and_default() -> None:
    case = _case("conv", torch.float64, batch=2)
    names = [n for n, _ in hidden_layers(case.model)]
    assert names == ["conv1", "bn", "pool", "conv2", "gap", "fc"]  # the model itself is left out
    by_index = relative_representation_stability(case.model, case.inputs, case.target, layer_indices=[-3, 5],
                                                  n_samples=3)
    by_name = relative_representation_stability(case.model, case.inputs, case.target, layer_names=["conv2", "fc"],
                                                n_samples=3)
    torch.testing.assert_close(by_index, by_name, rtol=0, atol=0)
    every = relative_representation_stability(case.model, case.inputs, case.target, n_samples=3, radius=0.3, seed=3)
    expected = reference_stability("representation", case.model, case.inputs, case.target, 3, 3, 0.3,
                                   layers=[m for _, m in hidden_layers(case.model)]).amax(1)
    torch.testing.assert_close(every, expected, rtol=RTOL64, atol=0)


def test_continuity_against_reference() -> None:
    case = _case("conv", torch.float64, batch=3)
    expected = reference_continuity(case.model, case.inputs, case.target, 5)
    for explain in ("saliency", _saliency_callable):
        ours = continuity(case.model, case.inputs, case.target, explainer=explain, n_steps=5)
        torch.testing.assert_close(ours, expected, rtol=RTOL64, atol=0)
    # nr_steps > 2W + 1: every translation is the blank image, as Quantus's;
    # nr_steps dividing 2W + 1 (17): the last shift is W + 1, blank too (Quantus raises).
    # Eager: on a blank image max pooling ties everywhere, and which tied
    # element takes the gradient is up to the kernel (channels-last's differs).
    for n in (20, 17):
        torch.testing.assert_close(continuity(case.model, case.inputs, case.target, n_steps=n, model_form="eager"),
                                   reference_continuity(case.model, case.inputs, case.target, n),
                                   rtol=RTOL64, atol=0)
    assert translations(8, 20) == [-8] * 20 and translations(8, 17)[-1] == 9


def test_continuity_nan_when_prediction_is_not_target() -> None:
    """NaN exactly where a translation's predicted class is not the target
    (an int here: class 4), the other values unchanged."""
    case = _case("conv", torch.float64, batch=6)
    plain = continuity(case.model, case.inputs, 4, n_steps=2)
    flagged = continuity(case.model, case.inputs, 4, n_steps=2, nan_when_prediction_changes=True)
    moved = []
    with torch.no_grad():
        for t in translations(8, 2):
            xt = torch.stack([torch.full_like(case.inputs[b], float(case.inputs[b].min())) for b in range(6)])
            for j in range(8):
                if 0 <= j - t < 8:
                    xt[..., j] = case.inputs[..., j - t]
            moved.append(case.model(xt).argmax(1) != 4)
    changed = torch.stack(moved).any(0)
    assert changed.any() and not changed.all()
    assert torch.equal(flagged.isnan(), changed)
    torch.testing.assert_close(flagged[~changed], plain[~changed], rtol=0, atol=0)


def test_consistency_against_reference() -> None:
    case = _case("mlp", torch.float64, batch=16)
    attrs = fastattr.input_x_gradient(case.model, case.inputs, target=case.target)
    with torch.no_grad():
        predictions = case.model(case.inputs).argmax(1).tolist()
    for n in (2, None):
        labels = [tuple(torch.sign(a.flatten()[:n]).tolist()) for a in attrs]
        expected = reference_consistency(labels, predictions)
        ours = consistency(case.model, case.inputs, case.target, explainer="input_x_gradient", n_signs=n)
        torch.testing.assert_close(ours, expected, rtol=RTOL64, atol=0)
        given = consistency(case.model, case.inputs, case.target, attributions=attrs, n_signs=n)
        torch.testing.assert_close(given, expected, rtol=RTOL64, atol=0)
        if n == 2:
            assert 0 < float(expected.mean()) < 1  # shared classes, agreeing and not


# ---------------------------------------------------------------------------
# batch independence, chunking, example_offset
# ---------------------------------------------------------------------------


STABILITY_FUNCTIONS = {
    "input": lambda m, x, t, **kw: relative_input_stability(m, x, t, nan_when_prediction_changes=True, **kw),
    "output": lambda m, x, t, **kw: relative_output_stability(m, x, t, output="probability", **kw),
    "representation": lambda m, x, t, **kw: relative_representation_stability(m, x, t, layer_indices=[0, 3], **kw),
    "continuity": lambda m, x, t, **kw: continuity(m, x, t, n_steps=4,
                                                   **{k: a for k, a in kw.items() if k not in ("n_samples", "seed")}),
}


@pytest.mark.parametrize("name", sorted(STABILITY_FUNCTIONS))
def test_batch_independence_chunking_and_offsets(backend: str, name: str) -> None:
    """Example b alone (keyed as b by example_offset) gives its value in the
    batch; a 1-row chunk cap and a tiny memory budget give the same values."""
    case = _case("conv", torch.float64, batch=4)
    fn = STABILITY_FUNCTIONS[name]
    target = torch.tensor(case.target)
    whole = fn(case.model, case.inputs, target, n_samples=3, seed=5)
    for b in (0, 3):
        alone = fn(case.model, case.inputs[b:b + 1], target[b:b + 1], n_samples=3, seed=5, example_offset=b)
        torch.testing.assert_close(alone, whole[b:b + 1], rtol=1e-12, atol=0, equal_nan=True)
    for chunks in ({"chunk_rows": 1}, {"memory_budget": 1}):
        torch.testing.assert_close(fn(case.model, case.inputs, target, n_samples=3, seed=5, **chunks), whole,
                                   rtol=1e-12, atol=0, equal_nan=True)
    parts = torch.cat([fn(case.model, case.inputs[a:b], target[a:b], n_samples=3, seed=5, example_offset=a)
                       for a, b in ((0, 1), (1, 4))])
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=0, equal_nan=True)


def test_random_explainer_keyed_by_row() -> None:
    """A random explainer (SmoothGrad) in the per-chunk route: its draws
    follow the (example, sample) row, so chunking does not change them."""
    case = _case("mlp", torch.float64, batch=3)
    kwargs = dict(explainer=fastattr.smoothgrad, explainer_kwargs={"n_samples": 2, "stdev": 0.1}, n_samples=3)
    whole = relative_output_stability(case.model, case.inputs, case.target, **kwargs)
    torch.testing.assert_close(relative_output_stability(case.model, case.inputs, case.target, chunk_rows=2,
                                                         **kwargs), whole, rtol=1e-12, atol=0)
    alone = relative_output_stability(case.model, case.inputs[2:], case.target[2:], example_offset=2, **kwargs)
    torch.testing.assert_close(alone, whole[2:], rtol=1e-12, atol=0)
    blocks = continuity(_case("conv").model, _case("conv").inputs, _case("conv").target, n_steps=3,
                        explainer=fastattr.smoothgrad, explainer_kwargs={"n_samples": 2, "stdev": 0.1})
    one_by_one = continuity(_case("conv").model, _case("conv").inputs, _case("conv").target, n_steps=3,
                            explainer=fastattr.smoothgrad, explainer_kwargs={"n_samples": 2, "stdev": 0.1},
                            memory_budget=1)
    torch.testing.assert_close(blocks, one_by_one, rtol=1e-12, atol=0)


@pytest.mark.parametrize("fn", [relative_input_stability, relative_output_stability])
def test_path_explainer_on_the_engine_equals_the_callable(fn: Any) -> None:
    """Integrated gradients folded into the engine plan (no forward at the
    perturbed rows themselves: the model is read separately) equals IG
    called per chunk."""
    case = _case("mlp", torch.float64, batch=3)
    options = {"n_steps": 4}

    def ig(model: Any, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
        return fastattr.integrated_gradients(model, inputs, target=target, **options)

    kw = dict(n_samples=3, radius=0.5)
    if fn is relative_input_stability:
        kw["nan_when_prediction_changes"] = True
    engine = fn(case.model, case.inputs, case.target, explainer="integrated_gradients", explainer_kwargs=options, **kw)
    callable_route = fn(case.model, case.inputs, case.target, explainer=ig, **kw)
    torch.testing.assert_close(engine, callable_route, rtol=1e-12, atol=0, equal_nan=True)


def test_batch_one_and_tuple_inputs() -> None:
    case = _case("two_input", torch.float64, batch=1)
    value = relative_input_stability(case.model, case.inputs, case.target, n_samples=2,
                                     additional_forward_args=case.afa)
    assert value.shape == (1,) and torch.isfinite(value).all()
    out = relative_output_stability(case.model, case.inputs, case.target, n_samples=2,
                                    additional_forward_args=case.afa)
    assert out.shape == (1,) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------
# Quantus drop-ins against Quantus 0.6
# ---------------------------------------------------------------------------


class draws_as:
    """Patch ``np.random.<name>``: call k returns ``noise[:, k % period]`` (a
    ``[B, n, D]`` array), asserting Quantus's keyword arguments."""

    def __init__(self, name: str, noise: np.ndarray, expect: Optional[Dict[str, Any]] = None) -> None:
        self.name, self.noise, self.expect, self.calls = name, noise, expect, 0

    def __enter__(self) -> "draws_as":
        self.real = getattr(np.random, self.name)

        def fake(*args: Any, **kwargs: Any) -> np.ndarray:
            kwargs.pop("size", None)
            if self.expect is not None:
                assert kwargs == self.expect, kwargs
            out = self.noise[:, self.calls % self.noise.shape[1]]
            self.calls += 1
            return out

        setattr(np.random, self.name, fake)
        return self

    def __exit__(self, *exc: Any) -> None:
        setattr(np.random, self.name, self.real)


def quantus_uniform(x: Tensor, n: int, seed: int = 0, low: float = 0.02, high: float = 0.2) -> np.ndarray:
    """``[B, n, D]``: the noise that makes Quantus's ``x + U[low, high)`` our keyed rows
    (``x' - x`` in float64: Quantus adds it in float64 and rounds to float32, giving x')."""
    rows = keyed_rows(x, n, seed, (high - low) / 2, (high + low) / 2)
    return (rows.double() - x.double().repeat_interleave(n, 0)).view(x.shape[0], n, -1).numpy()


def numpy_saliency(model: Any, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
    """A Quantus-style explain_func (numpy in and out), on the model as it is
    (the drop-ins' engine rows are eager: Quantus's numbers)."""
    return fastattr.saliency(model, torch.as_tensor(inputs), target=torch.as_tensor(targets),
                             model_form="eager").numpy()


STABILITY_CLASSES = {
    "RelativeInputStability": RelativeInputStability,
    "RelativeOutputStability": RelativeOutputStability,
    "RelativeRepresentationStability": RelativeRepresentationStability,
}


@pytest.mark.parametrize("cls,options", [
    ("RelativeInputStability", {}),
    ("RelativeInputStability", {"return_nan_when_prediction_changes": False, "abs": True}),
    ("RelativeOutputStability", {}),
    ("RelativeOutputStability", {"eps_min": 1e-3}),
    ("RelativeRepresentationStability", {}),
    ("RelativeRepresentationStability", {"layer_names": ["conv2", "gap"]}),
    ("RelativeRepresentationStability", {"layer_indices": [1, -2]}),
    ("RelativeInputStability", {"perturb_func_kwargs": {"lower_bound": 0.1, "upper_bound": None}}),
])
def test_stability_equals_quantus(cls: str, options: Dict[str, Any]) -> None:
    """Same perturbations (numpy's uniform draws patched): Quantus's scores,
    NaN where the prediction changed, to float32 rounding; the fastattr
    explainer (engine) and Quantus-style callables alike."""
    case = _case("conv", torch.float32, batch=3)
    x, y = case.inputs.numpy(), np.array(case.target)
    n = 4
    bounds = (0.02, 0.2)
    expect = {"low": 0.02, "high": 0.2}
    if options.get("perturb_func_kwargs"):
        bounds, expect = (-0.1, 0.1), {"low": -0.1, "high": 0.1}
    with draws_as("uniform", quantus_uniform(case.inputs, n, 0, *bounds), expect) as patch:
        theirs = getattr(quantus, cls)(nr_samples=n, disable_warnings=True, **options)(
            case.model, x, y, explain_func=numpy_saliency)
    assert patch.calls == n
    for explain in (fastattr.saliency, numpy_saliency):
        ours = STABILITY_CLASSES[cls](nr_samples=n, disable_warnings=True, **options)(
            case.model, x, y, explain_func=explain)
        assert isinstance(ours, list) and len(ours) == 3
        np.testing.assert_allclose(ours, theirs, rtol=RTOL32, equal_nan=True)
    if options.get("return_nan_when_prediction_changes", True):
        assert np.isnan(theirs).any() and not np.isnan(theirs).all()


def test_quantus_layer_indices_as_quantus() -> None:
    """A negative index counts back from the number of ALL modules (Quantus):
    -1 selects nothing of this model (the model itself is module 0)."""
    model = _case("conv", torch.float32).model
    assert quantus_layers(model, None, [-2]) == [model.fc]
    assert quantus_layers(model, ["fc", "nope"], None) == [model.fc]
    with pytest.raises(ValueError, match="no hidden representation"):
        quantus_layers(model, None, [-1])


def test_stability_normalise_is_per_example() -> None:
    """Quantus's default normalise (second moment) spans the batch: its
    example-0 score changes with the rest of the batch; ours does not, and
    equals Quantus's for a batch of one."""
    case = _case("conv", torch.float32, batch=3)
    x, y = case.inputs.numpy(), np.array(case.target)
    n = 3
    kw = dict(nr_samples=n, disable_warnings=True, normalise=True, return_nan_when_prediction_changes=False)
    with draws_as("uniform", quantus_uniform(case.inputs, n)):
        theirs = quantus.RelativeInputStability(**kw)(case.model, x, y, explain_func=numpy_saliency)
    with draws_as("uniform", quantus_uniform(case.inputs[:1], n)):
        theirs_alone = quantus.RelativeInputStability(**kw)(case.model, x[:1], y[:1], explain_func=numpy_saliency)
    ours = RelativeInputStability(**kw)(case.model, x, y, explain_func=fastattr.saliency)
    ours_alone = RelativeInputStability(**kw)(case.model, x[:1], y[:1], explain_func=fastattr.saliency)
    assert abs(theirs[0] / theirs_alone[0] - 1) > 1e-3  # Quantus: depends on the batch
    np.testing.assert_allclose(ours_alone, theirs_alone, rtol=RTOL32)
    # ours: the same up to the float32 model's rounding at another batch size
    # (exact in float64: test_batch_independence_chunking_and_offsets)
    np.testing.assert_allclose(ours[0], ours_alone[0], rtol=RTOL32)


@pytest.mark.parametrize("options", [{"nr_steps": 5, "normalise": False}, {"nr_steps": 28, "abs": False,
                                                                          "normalise": False}])
def test_continuity_equals_quantus(options: Dict[str, Any], monkeypatch: Any) -> None:
    case = _case("conv", torch.float32, batch=3)
    x, y = case.inputs.numpy(), np.array(case.target)
    theirs = quantus.Continuity(disable_warnings=True, **options)(case.model, x, y, explain_func=numpy_saliency)
    for explain in (fastattr.saliency, numpy_saliency):
        ours = Continuity(disable_warnings=True, **options)(case.model, x, y, explain_func=explain)
        np.testing.assert_allclose(ours, theirs, rtol=RTOL32)
    # Quantus 0.6 writes np.NaN (removed in NumPy 2): given back for its NaN path.
    monkeypatch.setattr(np, "NaN", np.nan, raising=False)
    y_other = (y + 1) % 5
    flagged = dict(options, return_nan_when_prediction_changes=True)
    theirs = quantus.Continuity(disable_warnings=True, **flagged)(case.model, x, y_other, explain_func=numpy_saliency)
    ours = Continuity(disable_warnings=True, **flagged)(case.model, x, y_other, explain_func=fastattr.saliency)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL32, equal_nan=True)


def test_continuity_normalise_per_example_and_batch_one() -> None:
    case = _case("conv", torch.float32, batch=3)
    x, y = case.inputs.numpy(), np.array(case.target)
    theirs = quantus.Continuity(disable_warnings=True, nr_steps=5)(case.model, x, y, explain_func=numpy_saliency)
    ours = Continuity(disable_warnings=True, nr_steps=5)(case.model, x, y, explain_func=fastattr.saliency)
    for b in range(3):
        alone = quantus.Continuity(disable_warnings=True, nr_steps=5)(case.model, x[b:b + 1], y[b:b + 1],
                                                                     explain_func=numpy_saliency)
        np.testing.assert_allclose(ours[b], alone[0], rtol=RTOL32)  # ours in a batch == Quantus alone
    assert np.abs(np.array(ours) / np.array(theirs) - 1).max() > 1e-2  # Quantus's batch-wide max


@pytest.mark.parametrize("options,call", [
    ({}, {}),
    ({"abs": False}, {"batch_size": 5}),
    ({"abs": False, "discretise_func": functools.partial(quantus.functions.discretise_func.top_n_sign, n=2)},
     {"batch_size": 5}),
    ({"abs": False, "discretise_func": quantus.functions.discretise_func.sign}, {}),
])
def test_consistency_equals_quantus(options: Dict[str, Any], call: Dict[str, Any]) -> None:
    """Exactly Quantus's, comparing each example with the others of its
    batch_size chunk (as Quantus; fastattr's function compares with the whole call)."""
    case = _case("mlp", torch.float32, batch=12)
    x, y = case.inputs.numpy(), case.target.numpy()

    def numpy_ixg(model: Any, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        return fastattr.input_x_gradient(model, torch.as_tensor(inputs), target=torch.as_tensor(targets)).numpy()

    theirs = quantus.Consistency(disable_warnings=True, **options)(case.model, x, y, explain_func=numpy_ixg, **call)
    ours = Consistency(disable_warnings=True, **options)(case.model, x, y, explain_func=fastattr.input_x_gradient,
                                                         **call)
    np.testing.assert_array_equal(ours, theirs)
    given = Consistency(disable_warnings=True, **options)(case.model, x, y, a_batch=numpy_ixg(case.model, x, y),
                                                          **call)
    np.testing.assert_array_equal(given, theirs)


# ---------------------------------------------------------------------------
# bad input, unsupported options, the caller's objects
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn,kwargs,match", [
    (relative_input_stability, {"eps_min": 0.0}, "eps_min"),
    (relative_input_stability, {"radius": -1.0}, "radius"),
    (relative_output_stability, {"output": "softmax"}, "output"),
    (relative_output_stability, {"n_samples": 0}, "n_samples"),
    (relative_representation_stability, {"layer_names": ["nope"]}, "layer_names"),
    (relative_representation_stability, {"layer_indices": [6]}, "layer_indices"),
    (relative_representation_stability, {"layer_names": ["fc"], "layer_indices": [0]}, "layer_names"),
    (continuity, {"n_steps": 0}, "n_steps"),
    (continuity, {"inputs": torch.zeros(2, 192)}, "inputs"),
    (continuity, {"nan_when_prediction_changes": True, "target": (1, 2)}, "target"),
    (consistency, {"n_signs": 0}, "n_signs"),
    (consistency, {"explainer": "no_such"}, "explainer"),
    (consistency, {"inputs": torch.full((2, 3, 8, 8), float("nan"))}, "inputs"),
])
def test_bad_input_fails_before_any_compute(fn: Any, kwargs: Dict[str, Any], match: str) -> None:
    case = _case("conv", torch.float64, batch=2)
    calls: List[int] = []
    case.model.register_forward_hook(lambda *a: calls.append(1))
    args = {"model": case.model, "inputs": case.inputs, "target": case.target[:2], **kwargs}
    with pytest.raises((ValueError, TypeError, NotImplementedError), match=match):
        fn(**args)
    assert not calls


@pytest.mark.parametrize("make,match", [
    (lambda: RelativeInputStability(nr_samples=0), "nr_samples"),
    (lambda: RelativeInputStability(normalise=True, normalise_func=quantus.normalise_func.normalise_by_negative),
     "normalise_func"),
    (lambda: RelativeOutputStability(perturb_func=quantus.perturb_func.gaussian_noise), "perturb_func"),
    (lambda: RelativeRepresentationStability(layer_names=["fc"], layer_indices=[0]), "layer_indices"),
    (lambda: Continuity(perturb_baseline="white"), "perturb_baseline"),
    (lambda: Continuity(perturb_func=quantus.perturb_func.translation_x_direction), "perturb_func"),
    (lambda: Consistency(discretise_func=quantus.functions.discretise_func.rank), "discretise_func"),
])
def test_quantus_unsupported_or_bad_options(make: Any, match: str) -> None:
    with pytest.raises((ValueError, NotImplementedError), match=match):
        make()


def test_quantus_bad_calls() -> None:
    case = _case("conv", torch.float32, batch=2)
    x, y = case.inputs.numpy(), np.array(case.target[:2])
    with pytest.raises(ValueError, match="explain_func"):
        RelativeInputStability()(case.model, x, y)
    with pytest.raises(NotImplementedError, match="model_predict_kwargs"):
        RelativeInputStability(nr_samples=1)(case.model, x, y, explain_func=fastattr.saliency,
                                             model_predict_kwargs={"a": 1})
    softmaxed = nn.Sequential(case.model, nn.Softmax(dim=1))
    with pytest.raises(NotImplementedError, match="Softmax"):
        RelativeOutputStability(nr_samples=1)(softmaxed, x, y, explain_func=fastattr.saliency)
    with pytest.raises(ValueError, match="x_batch"):
        mlp = _case("mlp", torch.float32, batch=2)
        Continuity()(mlp.model, mlp.inputs.numpy(), mlp.target.numpy(), explain_func=fastattr.saliency)
    assert Consistency()(case.model, x, y, a_batch=numpy_saliency(case.model, x, y)) is not None


def test_caller_objects_unchanged() -> None:
    """Train mode, requires_grad, parameters, hooks and inputs come back as they were."""
    case = _case("mlp", torch.float32)
    model = case.model.train()
    model.net[4].weight.requires_grad_(False)
    params = {k: p.clone() for k, p in model.state_dict().items()}
    x = case.inputs.clone()
    relative_representation_stability(model, case.inputs, case.target, n_samples=2,
                                      nan_when_prediction_changes=True)
    relative_output_stability(model, case.inputs, case.target, n_samples=2)
    relative_input_stability(model, case.inputs, case.target, n_samples=2, nan_when_prediction_changes=True)
    consistency(model, case.inputs, case.target)
    RelativeRepresentationStability(nr_samples=2)(model, case.inputs, case.target, explain_func=fastattr.saliency)
    assert model.training and not model.net[4].weight.requires_grad and model.net[0].weight.requires_grad
    assert all(torch.equal(p, params[k]) for k, p in model.state_dict().items())
    assert torch.equal(case.inputs, x) and not case.inputs.requires_grad
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.filterwarnings("ignore:model. 1 normalisation layer")
def test_train_mode_batch_norm_buffers_restored() -> None:
    """The model reads between the engine's passes (outputs, layer outputs,
    predictions) leave a train-mode BatchNorm's running statistics as they were."""
    case = _case("conv", torch.float32, batch=3)
    model = case.model.train()
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    relative_representation_stability(model, case.inputs, case.target, n_samples=2, nan_when_prediction_changes=True)
    relative_output_stability(model, case.inputs, case.target, n_samples=2, nan_when_prediction_changes=True)
    continuity(model, case.inputs, 1, n_steps=2, nan_when_prediction_changes=True)
    consistency(model, case.inputs, case.target)
    assert model.training
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
