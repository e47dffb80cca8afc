"""Guided backprop and deconvnet equal Captum 0.9 and a plain float64 reference.

* models (also used by tests/test_attr_deeplift.py): a conv net with
  Conv2d, BatchNorm2d in eval with non-trivial statistics, an in-place
  nn.ReLU, MaxPool2d, AdaptiveAvgPool2d; an MLP with ReLU, Sigmoid, Tanh,
  ELU, LeakyReLU, Softplus modules; a two-input model with a per-example
  additional_forward_args tensor and a float; a ``[B]``-output model
  (target=None); a model calling one nn.ReLU module twice;
* the reference swaps every nn.ReLU module for an autograd Function with the
  rule's backward and takes the gradient one example at a time (no hooks);
* every target form, batch 1, tuple in -> tuple out, ``chunk_rows=2`` on a
  batch of 3 (an uneven split), float64 and float32;
* the drop-in classes run by the same script as ``captum.attr``'s;
* after every call, also one where the model raises mid-call, no hook is
  left on any submodule, and parameters, modes and inputs are unchanged;
* bad arguments fail before any forward, naming the argument.

Measured (max |fastattr - other| / max |other|; nonzero only where
``chunk_rows`` changes the model's batch size, i.e. the matmul blocking):
float64 <= 6.3e-17 against Captum and <= 1.8e-16 against the per-example
reference; float32 <= 1.8e-7 against Captum. TOL_F64 is ~11x that; float32
is held to Captum's own float32 error against float64, measured in the run.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

import captum.attr
import fastattr.captum.guided as fa_captum
from captum_cases import (
    ConvNet, ForwardOnly, _build, _randn, _rel_err, assert_as_accurate_as_captum, assert_same_attr, upcast,
)
from fastattr.attr import relu_rules
from fastattr.attr.guided import deconvolution, guided_backprop
from fastattr.attr.saliency import saliency

# Every rule test also runs the skipped-backward path (conftest.py).
pytestmark = [
    pytest.mark.usefixtures("rules_skip_at_every_size"),
    pytest.mark.filterwarnings(
        "ignore:Input Tensor .* did not already require gradients",
        "ignore:Setting backward hooks on ReLU",
    ),
]

TOL_F64 = 2e-15

METHODS = {"guided": (guided_backprop, captum.attr.GuidedBackprop, fa_captum.GuidedBackprop),
           "deconv": (deconvolution, captum.attr.Deconvolution, fa_captum.Deconvolution)}


# ---------------------------------------------------------------------------
# Models whose nonlinearities are modules
# ---------------------------------------------------------------------------


class ReluConvNet(nn.Module):
    """[B, 3, 8, 8] -> [B, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(32, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu1(self.bn(self.conv1(x))))
        return self.fc(self.gap(self.relu2(self.conv2(x))).flatten(1))


class ActMLP(nn.Module):
    """[B, 16] -> [B, 4], one module of each elementwise nonlinearity."""

    def __init__(self) -> None:
        super().__init__()
        acts = [nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.ELU(), nn.LeakyReLU(0.1), nn.Softplus()]
        layers: List[nn.Module] = []
        for act in acts:
            layers += [nn.Linear(16 if not layers else 12, 12), act]
        self.net = nn.Sequential(*layers, nn.Linear(12, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ReluTwoInput(nn.Module):
    """(img [B, 2, 6, 6], vec [B, 10]) + (extra [B, 10], scale: float) -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.relu = nn.ReLU()
        self.fc_img = nn.Linear(64, 8)
        self.fc_vec = nn.Linear(10, 8)
        self.tanh = nn.Tanh()
        self.head = nn.Linear(8, 3)

    def forward(self, img: Tensor, vec: Tensor, extra: Tensor, scale: float) -> Tensor:
        if not isinstance(scale, float):  # the non-tensor argument must arrive untouched
            raise TypeError(f"scale: expected a float, got {type(scale).__name__}")
        h = self.fc_img(self.relu(self.conv(img)).flatten(1))
        return self.head(h * (1.0 + scale * self.tanh(self.fc_vec(vec * extra))))


class ReluScalar(nn.Module):
    """[B, 12] -> [B]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(x))).squeeze(1)


class ReusedRelu(nn.Module):
    """[B, 10] -> [B, 3], one nn.ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(10, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


class Case:
    def __init__(self, model: nn.Module, inputs: Any, target: Any, afa: Any = None) -> None:
        self.model, self.inputs, self.target, self.afa = model, inputs, target, afa

    @property
    def xs(self) -> Tuple[Tensor, ...]:
        return self.inputs if isinstance(self.inputs, tuple) else (self.inputs,)


MODELS = ("conv", "mlp", "two_input", "scalar", "reused")


def relu_case(name: str, dtype: torch.dtype = torch.float64, batch: int = 3, seed: int = 1) -> Case:
    """Each model with a different target form: conv a list, MLP a 1-D tensor,
    the two-input model an int, the scalar model None, the reused-ReLU model
    a negative int."""
    if name == "conv":
        return Case(_build(ReluConvNet, dtype), _randn((batch, 3, 8, 8), dtype, seed),
                    [i % 5 for i in range(2, 2 + batch)])
    if name == "mlp":
        return Case(_build(ActMLP, dtype), _randn((batch, 16), dtype, seed), torch.arange(batch) % 4)
    if name == "two_input":
        xs = (_randn((batch, 2, 6, 6), dtype, seed), _randn((batch, 10), dtype, seed + 1))
        return Case(_build(ReluTwoInput, dtype), xs, 1, (_randn((batch, 10), dtype, seed + 2), 0.5))
    if name == "scalar":
        return Case(_build(ReluScalar, dtype), _randn((batch, 12), dtype, seed), None)
    if name == "reused":
        return Case(_build(ReusedRelu, dtype), _randn((batch, 10), dtype, seed), -1)
    raise ValueError(name)


# ---------------------------------------------------------------------------
# Reference: ReLU modules swapped for the rule, one example at a time
# ---------------------------------------------------------------------------


class _RuleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, kind: str) -> Tensor:
        ctx.save_for_backward(x)
        ctx.kind = kind
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        if ctx.kind == "guided":
            return g * ((x > 0) & (g > 0)).to(g.dtype), None
        return g.clamp_min(0), None


class _RuleReLUModule(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        return _RuleReLU.apply(x, self.kind)


def swap_modules(model: nn.Module, replace: Callable[[nn.Module], Optional[nn.Module]]) -> nn.Module:
    """A deep copy of ``model`` with each submodule ``m`` for which
    ``replace(m)`` is a module replaced by it."""
    out = copy.deepcopy(model)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            new = replace(child)
            if new is not None:
                setattr(parent, name, new)
    return out


def per_example_gradients(
    model: nn.Module, case: Case,
    rows_of: Callable[[Tuple[Tensor, ...], int], Tuple[Tensor, ...]] = lambda xs, b: xs,
) -> Tuple[Tensor, ...]:
    """Per example ``b``: the gradient w.r.t. ``b``'s inputs ``xs`` (each
    ``[1, *F]``) of the target outputs of ``model(*rows_of(xs, b))``, summed
    over the rows; stacked over examples."""
    target = torch.tensor(case.target) if isinstance(case.target, list) else case.target
    grads: List[Tuple[Tensor, ...]] = []
    for b in range(case.xs[0].shape[0]):
        xs = tuple(x[b:b + 1].clone().requires_grad_() for x in case.xs)
        rows = rows_of(xs, b)
        n = rows[0].shape[0]
        args = tuple(a[b:b + 1].expand(n, *a.shape[1:]) if isinstance(a, Tensor) else a
                     for a in (case.afa or ()))
        out = model(*rows, *args)
        t = int(target[b]) if isinstance(target, Tensor) else target
        picked = out if t is None else out[:, t]
        grads.append(torch.autograd.grad(picked.sum(), xs))
    return tuple(torch.cat(g) for g in zip(*grads))


def reference(kind: str, case: Case) -> Any:
    """float64 guided backprop / deconvnet of ``case``, per example."""
    model = swap_modules(case.model, lambda m: _RuleReLUModule(kind) if isinstance(m, nn.ReLU) else None)
    grads = per_example_gradients(model, case)
    return grads if isinstance(case.inputs, tuple) else grads[0]


# ---------------------------------------------------------------------------
# Model state: hooks, modes, requires_grad, inputs
# ---------------------------------------------------------------------------

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
              "_forward_hooks_always_called", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def model_state(model: nn.Module) -> Dict[str, Any]:
    """Everything about ``model`` a call must leave as it was."""
    return {
        "hooks": [(name, d, len(getattr(m, d))) for name, m in model.named_modules() for d in HOOK_DICTS],
        "attrs": [(name, sorted(m.__dict__)) for name, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
    }


def assert_unchanged(before: Dict[str, Any], model: nn.Module) -> None:
    after = model_state(model)
    for key in ("hooks", "attrs", "training", "requires_grad"):
        assert after[key] == before[key], key
    assert all(torch.equal(a, b) for a, b in zip(after["params"], before["params"]))


class RaiseOnSecondChunk(nn.Module):
    """Raises from inside the wrapped model's forward (after the ReLU hooks
    ran) on the ``n``-th call."""

    def __init__(self, inner: nn.Module, n: int = 2) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0
        self.inner.fc.register_forward_pre_hook(self._maybe_raise)

    def _maybe_raise(self, mod: nn.Module, args: Any) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("model failed mid-call")

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(METHODS))
@pytest.mark.parametrize("name", MODELS)
def test_equals_captum_and_reference(backend: str, name: str, kind: str) -> None:
    case = relu_case(name)
    fn, captum_cls, _ = METHODS[kind]
    inputs = tuple(x.clone() for x in case.xs)
    ours = fn(case.model, case.inputs, case.target, case.afa, chunk_rows=2)
    assert all(torch.equal(a, b) for a, b in zip(case.xs, inputs)), "inputs modified"
    theirs = captum_cls(case.model).attribute(case.inputs, target=case.target,
                                             additional_forward_args=case.afa)
    assert_same_attr(ours, theirs, TOL_F64, f"{kind} {name} vs Captum")
    assert_same_attr(ours, reference(kind, case), TOL_F64, f"{kind} {name} vs reference")
    # The rules really change something here (not a plain gradient).
    plain = saliency(case.model, case.inputs, case.target, abs=False, additional_forward_args=case.afa)
    assert max(_rel_err(a, p) for a, p in zip(ours if isinstance(ours, tuple) else (ours,),
                                              plain if isinstance(plain, tuple) else (plain,))) > 1e-3


@pytest.mark.parametrize("kind", list(METHODS))
@pytest.mark.parametrize("name", ["conv", "two_input"])
def test_float32_and_batch_one(backend: str, name: str, kind: str) -> None:
    """float32 as accurate as Captum's own float32 against the float64 twin
    (measured here); float64 at batch one equal to Captum to roundoff."""
    fn, captum_cls, _ = METHODS[kind]
    for dtype, batch in ((torch.float32, 3), (torch.float64, 1)):
        case = relu_case(name, dtype, batch)
        if batch == 1 and isinstance(case.target, list):
            case.target = case.target[:1]
        ours = fn(case.model, case.inputs, case.target, case.afa, chunk_rows=2)
        theirs = captum_cls(case.model).attribute(case.inputs, target=case.target,
                                                 additional_forward_args=case.afa)
        what = f"{kind} {name} {dtype} batch {batch}"
        if dtype == torch.float64:
            assert_same_attr(ours, theirs, TOL_F64, what)
            continue
        truth = captum_cls(copy.deepcopy(case.model).double()).attribute(
            upcast(case.inputs), target=case.target, additional_forward_args=upcast(case.afa))
        assert_as_accurate_as_captum(ours, theirs, truth, what)


@pytest.mark.parametrize("kind", list(METHODS))
def test_module_keeps_its_own_hooks_and_forward(backend: str, kind: str) -> None:
    """The rules wrap a module's forward for the call: the module's own hooks
    still run around it, a forward set on the instance is what the wrapper
    calls and is put back, and the numbers are still Captum's."""
    fn, captum_cls, _ = METHODS[kind]
    case = relu_case("conv")
    relu = case.model.relu2
    rows: List[int] = []
    relu.register_forward_hook(lambda m, a, o: rows.append(o.shape[0]))
    own_calls: List[int] = []

    def own_forward(x: Tensor) -> Tensor:
        own_calls.append(x.shape[0])
        return nn.ReLU.forward(relu, x)

    relu.forward = own_forward
    ours = fn(case.model, case.inputs, case.target, chunk_rows=2)
    assert relu.__dict__["forward"] is own_forward
    assert rows == own_calls == [2, 1]
    theirs = captum_cls(case.model).attribute(case.inputs, target=case.target)
    assert_same_attr(ours, theirs, TOL_F64, kind)
    assert_same_attr(ours, reference(kind, case), TOL_F64, f"{kind} vs reference")


def test_functional_relu_keeps_its_gradient(backend: str) -> None:
    """Captum hooks only nn.ReLU modules: on a model with functional
    ``torch.relu`` both methods are the plain gradient, in Captum and here."""
    model = _build(ConvNet, torch.float64)
    x = _randn((3, 3, 8, 8), torch.float64, 4)
    plain = saliency(model, x, 2, abs=False, model_form="eager")  # the rule methods run the model as it is
    for kind, (fn, captum_cls, _) in METHODS.items():
        ours = fn(model, x, 2)
        assert_same_attr(ours, plain, 0.0, kind)
        assert_same_attr(ours, captum_cls(model).attribute(x, target=2), TOL_F64, kind)


class _ReLUWithoutBackward(nn.ReLU):
    def forward(self, x: Tensor) -> Tensor:
        return ForwardOnly.apply(torch.relu, x)


def test_deconv_skips_the_ordinary_relu_backward(backend: str) -> None:
    """Deconvnet replaces a ReLU's gradient by ``relu(grad_output)``, which
    does not read the ReLU's ordinary gradient: that backward never runs
    (here it would raise), and the result is deconvnet's on plain ReLUs."""
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    stub = copy.deepcopy(plain)
    stub[1], stub[3] = _ReLUWithoutBackward(), _ReLUWithoutBackward()
    x, target = _randn((4, 6), torch.float64, 3), torch.tensor([0, 1, 2, 0])
    assert_same_attr(deconvolution(stub, x, target), deconvolution(plain, x, target), 0.0, "deconv")
    with pytest.raises(AssertionError, match="ordinary backward ran"):
        guided_backprop(stub, x, target)  # guided masks by the ReLU's own gradient


def test_small_inputs_keep_the_ordinary_relu_backward(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the ordinary backward is skipped only on ReLU inputs of at
    least ``_SKIP_MIN_NUMEL`` elements (below, skipping costs more than it
    saves): on a small batch the stub's raising backward runs."""
    monkeypatch.undo()  # the default threshold
    model = nn.Sequential(nn.Linear(6, 8), _ReLUWithoutBackward(), nn.Linear(8, 3)).double()
    small = _randn((4, 6), torch.float64, 3)
    with pytest.raises(AssertionError, match="ordinary backward ran"):
        deconvolution(model, small, 1)
    large = _randn((relu_rules._SKIP_MIN_NUMEL // 8, 6), torch.float64, 3)
    assert deconvolution(model, large, 1).shape == large.shape


@pytest.mark.parametrize("kind", list(METHODS))
def test_relu_feeding_a_relu_equals_captum(backend: str, kind: str) -> None:
    """A hooked ReLU whose output feeds another hooked ReLU directly: in
    Captum's hook order the first one's rule sees the second's *ordinary*
    gradient, so the second's ordinary backward must run even for deconvnet."""
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.ReLU(), nn.Linear(8, 3)).double()
    x, target = _randn((4, 6), torch.float64, 5), torch.tensor([0, 1, 2, 0])
    fn, captum_cls, _ = METHODS[kind]
    assert_same_attr(fn(model, x, target), captum_cls(model).attribute(x, target=target), TOL_F64, kind)


@pytest.mark.parametrize("kind", list(METHODS))
def test_drop_in_script(backend: str, kind: str) -> None:
    """The same script with ``captum.attr`` and ``fastattr.captum`` classes:
    every target form, tuple in -> tuple out, additional_forward_args."""
    _, captum_cls, fa_cls = METHODS[kind]
    conv, two = relu_case("conv"), relu_case("two_input")

    def script(cls: type) -> List[Any]:
        out = []
        explainer = cls(conv.model)
        for target in (3, -2, (1,), [0, 4, 2], torch.tensor([1, 1, 3]), torch.tensor(2)):
            out.append(explainer.attribute(conv.inputs, target=target))
        out.append(explainer.attribute(conv.inputs, 1, None))
        out.append(cls(two.model).attribute(two.inputs, target=[2, 0, 1], additional_forward_args=two.afa))
        return out

    for i, (ours, theirs) in enumerate(zip(script(fa_cls), script(captum_cls))):
        assert_same_attr(ours, theirs, TOL_F64, f"{kind} call {i}")
    explainer = fa_cls(conv.model)
    assert explainer.get_name() == captum_cls.get_name()
    assert not explainer.has_convergence_delta() and not explainer.multiplies_by_inputs


@pytest.mark.parametrize("kind", list(METHODS))
def test_model_left_unchanged_also_when_it_raises(backend: str, kind: str) -> None:
    fn, _, fa_cls = METHODS[kind]
    case = relu_case("conv")
    before = model_state(case.model)
    fn(case.model, case.inputs, case.target, chunk_rows=2)
    fa_cls(case.model).attribute(case.inputs, target=case.target)
    assert_unchanged(before, case.model)

    raising = RaiseOnSecondChunk(case.model)
    before = model_state(raising)
    with pytest.raises(RuntimeError, match="failed mid-call"):
        fn(raising, case.inputs, case.target, chunk_rows=2)
    assert raising.calls == 2
    assert_unchanged(before, raising)

    # Requires-grad flags and training mode the caller chose are kept too.
    case.model.conv1.weight.requires_grad_(False)
    case.model.train()
    before = model_state(case.model)
    fn(case.model, case.inputs, case.target)
    assert_unchanged(before, case.model)


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.forwards = inner, 0

    def forward(self, *args: Any) -> Any:
        self.forwards += 1
        return self.inner(*args)


@pytest.mark.parametrize("kind", list(METHODS))
def test_bad_input(backend: str, kind: str) -> None:
    fn, _, fa_cls = METHODS[kind]
    case = relu_case("conv")
    model = Counting(case.model)
    x = case.inputs
    up_front = [
        (dict(model=lambda t: t.sum(1)), TypeError, "model: expected an nn.Module"),
        (dict(inputs=x.long()), TypeError, "inputs: expected a floating dtype"),
        (dict(inputs=(x, x[:2])), ValueError, r"inputs\[1\]: batch size 2"),
        (dict(target=[1, 2]), ValueError, "target: expected 3 entries"),
        (dict(target=torch.zeros(3, 1, dtype=torch.long)), ValueError, "target: expected an integer tensor of one element"),
        (dict(chunk_rows=0), ValueError, "chunk_rows: expected an integer >= 1"),
        (dict(additional_forward_args=torch.ones(2, 3)), ValueError, r"additional_forward_args\[0\]"),
    ]
    for kwargs, err, msg in up_front:
        args = dict(model=model, inputs=x, target=1) | kwargs
        with pytest.raises(err, match=msg):
            fn(**args)
        assert model.forwards == 0, msg
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        fa_cls(lambda t: t)
    # What only the output tells: after the first forward, before any backward.
    with pytest.raises(ValueError, match="target: index out of range"):
        fn(model, x, 5)
    with pytest.raises(ValueError, match=r"model output: expected shape \[3, \.\.\.\]"):
        fn(nn.Sequential(case.model, nn.Flatten(0)), x, [1, 0, 1])
    with pytest.raises(ValueError, match="target: selects 5 values per example"):
        fn(nn.Sequential(case.model, nn.Unflatten(1, (1, 5))), x, 0)
