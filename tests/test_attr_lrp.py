"""fastattr's LRP gives Captum 0.9's numbers, Zennit's where Captum has no
equivalent, and a plain float64 layer-by-layer reference's.

* Captum: a conv net (Conv2d, BatchNorm2d in eval with non-trivial running
  statistics, nn.ReLU and a functional relu, MaxPool2d, AvgPool2d,
  AdaptiveAvgPool2d, Linear), an MLP (Linear, ReLU, Dropout, Tanh), a
  two-input model (Captum's Addition_Module, a per-example
  additional_forward_args tensor and a non-tensor argument); Captum's
  default rules and epsilon / gamma / alpha1-beta0 / identity rules set per
  layer with Captum's own rule objects; every target form; batch 1; chunk
  sizes that split the batch unevenly; convergence deltas; float32;
  ``fastattr.captum.lrp.LRP`` and ``captum.attr.LRP`` run by the same script.
  Captum consumes the ``rule`` attributes (and leaves others) on the model it
  runs, so it always gets a fresh deep copy.
* Zennit 0.5.1 (test-only dependency): fastattr's ZPlusRule (z+ for inputs
  of any sign, which Captum's Alpha1_Beta0_Rule is not) and BatchNorm folding.
* A float64 reference written out here (explicit matrices, layer by layer)
  for epsilon, gamma, Captum's alpha1-beta0, z+ and folding.
* The caller's model comes back unchanged (parameters bit for bit,
  requires_grad, hooks, mode, rule attributes, inputs), also when it raises.

LRP runs a single-point plan (no fused ops), so the tests do not take the
backend fixture. Measured errors (max |fastattr - other| / max |other|);
each tolerance is a few times its figure:

* float64 vs Captum: 0 (bit-identical) where the batch is one chunk; <= 2.2e-15
  where the chunks change the matmuls' batch size (attributions; where
  relevances cancel, relative to max|Captum|); deltas <= 3.9e-16 x the
  largest per-example sum of |attributions|.
* float32 vs Captum: 0 in one chunk, <= 8.6e-7 in chunks of 2 rows; deltas
  <= 8.5e-8 x that sum (Captum sums in float32, fastattr in float64). The
  test holds float32 to Captum's own float32 error against float64, measured
  in the run (it depends on the CPU), not to a constant.
* float64 vs Zennit: z+ 0 (bit-identical here); folding <= 1.0e-12 (Zennit's
  merged BatchNorm still divides by sqrt(1 + eps); eps = 1e-12 here).
* float64 vs the reference: <= 5.4e-16.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

import captum.attr
from captum.attr._utils import lrp_rules as cr
from captum.attr._utils.custom_modules import Addition_Module
from captum_cases import ForwardOnly, assert_as_accurate_as_captum, assert_delta_as_accurate_as_captum, upcast

from fastattr.attr.lrp import lrp
from fastattr.attr.lrp_rules import (
    Alpha1_Beta0_Rule, Composite, EpsilonRule, GammaRule, IdentityRule, ZPlusRule, default_composite,
)
from fastattr.captum.lrp import LRP

# Every rule test also runs the skipped-backward path (conftest.py).
pytestmark = [pytest.mark.usefixtures("rules_skip_at_every_size"),
              pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")]

# Each a few times the measured error in the module docstring.
TOL_F64 = 1e-14
TOL_F64_DELTA = 2e-15
TOL_ZENNIT = 2e-15
TOL_ZENNIT_FOLD = 5e-12
TOL_REF = 3e-15



# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


class ConvNet(nn.Module):
    """[B, 3, 8, 8] -> [B, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.avg = nn.AvgPool2d(2, stride=1)
        self.gap = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(32, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu1(self.bn(self.conv1(x))))
        x = self.gap(self.avg(torch.relu(self.conv2(x))))
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    """[B, 16] -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 12)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(12, 10)
        self.tanh = nn.Tanh()
        self.fc3 = nn.Linear(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.tanh(self.fc2(self.drop(self.relu(self.fc1(x))))))


class TwoInput(nn.Module):
    """([B, 2, 6, 6], [B, 8]), extra ([B, 8] scale, a float) -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc_img = nn.Linear(12, 8)
        self.fc_vec = nn.Linear(8, 8)
        self.add = Addition_Module()
        self.relu2 = nn.ReLU()
        self.out = nn.Linear(8, 4)

    def forward(self, img: Tensor, vec: Tensor, scale: Tensor, shift: float) -> Tensor:
        a = self.fc_img(self.pool(self.relu(self.conv(img))).flatten(1))
        b = self.fc_vec(vec * scale + shift)
        return self.out(self.relu2(self.add(a, b)))


def _seeded(model: nn.Module, seed: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        with torch.no_grad():
            p.copy_(torch.randn_like(p) * 0.5)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.to(dtype).eval()


def _case(name: str, dtype: torch.dtype = torch.float64, batch: int = 5, seed: int = 0):
    """(model, inputs, additional_forward_args, target) for a named case."""
    g = torch.Generator().manual_seed(seed + 1)
    target = [(2 * i + 1) % 4 for i in range(batch)]
    if name == "conv":
        return (_seeded(ConvNet(), seed, dtype), torch.randn(batch, 3, 8, 8, generator=g).to(dtype),
                None, target)
    if name == "mlp":
        return _seeded(MLP(), seed, dtype), torch.randn(batch, 16, generator=g).to(dtype), None, target
    xs = (torch.randn(batch, 2, 6, 6, generator=g).to(dtype), torch.randn(batch, 8, generator=g).to(dtype))
    afa = (torch.rand(batch, 8, generator=g).to(dtype) + 0.5, 0.25)
    return _seeded(TwoInput(), seed, dtype), xs, afa, target


# Rules set on the modules the Captum way: name -> {module attribute: Captum rule}.
RULE_SETS: Dict[str, Callable[[], Dict[str, Any]]] = {
    "default": lambda: {},
    "mixed": lambda: {"conv1": cr.GammaRule(), "conv2": cr.EpsilonRule(0.05), "fc": cr.Alpha1_Beta0_Rule(),
                      "bn": cr.IdentityRule(), "fc1": cr.GammaRule(0.5, set_bias_to_zero=True),
                      "fc2": cr.Alpha1_Beta0_Rule(set_bias_to_zero=True), "fc3": cr.EpsilonRule(0.1),
                      "conv": cr.GammaRule(), "fc_vec": cr.Alpha1_Beta0_Rule(), "out": cr.EpsilonRule(0.01)},
}


def _with_rules(model: nn.Module, rules: Dict[str, Any]) -> nn.Module:
    """A deep copy of ``model`` with ``rules`` set on its modules that exist."""
    model = copy.deepcopy(model)
    for name, rule in rules.items():
        if hasattr(model, name):
            getattr(model, name).rule = copy.deepcopy(rule)
    return model


def _rel_err(ours: Any, theirs: Any) -> float:
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    scale = max(t.detach().abs().max().item() for t in theirs)
    errs = []
    for o, t in zip(ours, theirs):
        assert o.shape == t.shape and o.dtype == t.dtype, (o.shape, t.shape, o.dtype, t.dtype)
        errs.append((o.detach().double() - t.detach().double()).abs().max().item())
    return max(errs) / scale


# Captum's way: no function rules, so an addition in a forward gives each
# term all of its relevance (the native default splits it; test_attr_lrp_modern.py).
CAPTUM_WAY = dataclasses.replace(default_composite(), function_rules=False)


def _captum(model: nn.Module, rules: Dict[str, Any], inputs: Any, target: Any, afa: Any) -> Tuple[Any, Tensor]:
    return captum.attr.LRP(_with_rules(model, rules)).attribute(
        inputs, target=target, additional_forward_args=afa, return_convergence_delta=True)


def _check(ours: Tuple[Any, Tensor], theirs: Tuple[Any, Tensor], dtype: torch.dtype, what: str) -> None:
    (a, d), (ca, cd) = ours, theirs
    assert dtype == torch.float64  # float32: test_matches_captum_float32, against Captum's own error
    tol, dtol = TOL_F64, TOL_F64_DELTA
    assert _rel_err(a, ca) <= tol, f"{what}: {_rel_err(a, ca)}"
    assert d.shape == cd.shape and d.dtype == cd.dtype
    assert (d - cd.detach()).abs().max().item() <= dtol * _abs_sum(ca), f"{what} delta"


def _abs_sum(attr: Any) -> float:
    """The largest per-example sum of |attributions| (the scale of a delta's roundoff)."""
    items = attr if isinstance(attr, tuple) else (attr,)
    return max(sum(a.detach().abs().reshape(a.shape[0], -1).sum(1) for a in items)).item()


# ---------------------------------------------------------------------------
# Captum
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rules", list(RULE_SETS))
@pytest.mark.parametrize("name", ["conv", "mlp", "two_input"])
@pytest.mark.parametrize("chunk_rows", [None, 2], ids=["whole", "rows2"])
def test_matches_captum(name: str, rules: str, chunk_rows: Optional[int]) -> None:
    model, x, afa, target = _case(name)
    ours = lrp(_with_rules(model, RULE_SETS[rules]()), x, target=target, additional_forward_args=afa,
               composite=CAPTUM_WAY, return_convergence_delta=True, chunk_rows=chunk_rows)
    _check(ours, _captum(model, RULE_SETS[rules](), x, target, afa), torch.float64, f"{name} {rules}")


@pytest.mark.parametrize("name", ["conv", "mlp", "two_input"])
def test_matches_captum_float32(name: str) -> None:
    """As accurate as Captum's own float32 against the float64 twin, measured here."""
    model, x, afa, target = _case(name, torch.float32)
    twin = copy.deepcopy(model).double()
    for rules in RULE_SETS.values():
        ours, d_ours = lrp(_with_rules(model, rules()), x, target=target, additional_forward_args=afa,
                           composite=CAPTUM_WAY, return_convergence_delta=True, chunk_rows=3)
        theirs, d_theirs = _captum(model, rules(), x, target, afa)
        truth, d_truth = _captum(twin, rules(), upcast(x), target, upcast(afa))
        assert_as_accurate_as_captum(ours, theirs, truth, f"f32 {name}")
        assert_delta_as_accurate_as_captum(d_ours, d_theirs, d_truth, theirs, truth, f"f32 {name}")


TARGET_FORMS: Dict[str, Callable[[int], Any]] = {
    "int": lambda b: 2,
    "negative_int": lambda b: -1,
    "list": lambda b: [(3 * i + 1) % 4 for i in range(b)],
    "tensor_1d": lambda b: torch.tensor([(i + 3) % 4 for i in range(b)]),
    "tensor_0d": lambda b: torch.tensor(1),
    "tuple_1": lambda b: (3,),
}


@pytest.mark.parametrize("batch", [4, 1])
@pytest.mark.parametrize("form", list(TARGET_FORMS))
def test_drop_in_same_script(form: str, batch: int) -> None:
    """The same script with ``captum.attr.LRP`` and ``fastattr.captum.lrp.LRP``."""
    model, x, afa, _ = _case("two_input", batch=batch, seed=3)
    target = TARGET_FORMS[form](batch)

    def script(cls: type) -> Tuple[Any, Tensor, Tensor]:
        explainer = cls(_with_rules(model, RULE_SETS["mixed"]()))
        attr, delta = explainer.attribute(x, target=target, additional_forward_args=afa,
                                          return_convergence_delta=True)
        plain = cls(_with_rules(model, {})).attribute(x, target, afa)
        out = explainer.compute_convergence_delta(attr, torch.ones(batch, dtype=x[0].dtype))
        assert explainer.has_convergence_delta() and explainer.multiplies_by_inputs
        assert isinstance(attr, tuple) and isinstance(plain, tuple)
        return attr, delta, plain, out, cls.get_name()

    ours, theirs = script(LRP), script(captum.attr.LRP)
    _check((ours[0], ours[1]), (theirs[0], theirs[1]), torch.float64, form)
    assert _rel_err(ours[2], theirs[2]) <= TOL_F64
    assert torch.allclose(ours[3], theirs[3].detach(), rtol=0, atol=1e-14)
    assert ours[4] == theirs[4]


def test_drop_in_tensor_in_tensor_out_and_verbose(capsys: pytest.CaptureFixture) -> None:
    model, x, _, target = _case("mlp", batch=1)
    ours = LRP(_with_rules(model, {})).attribute(x, target=target, verbose=True)
    assert isinstance(ours, Tensor) and ours.shape == x.shape
    assert "Applied EpsilonRule" in capsys.readouterr().out
    theirs = captum.attr.LRP(_with_rules(model, {})).attribute(x, target=target)
    assert _rel_err(ours, theirs) <= TOL_F64


@pytest.mark.parametrize("chunk", [dict(chunk_rows=1), dict(chunk_rows=3), dict(chunk_rows=6),
                                   dict(memory_budget=1)], ids=["rows1", "rows3", "rows6", "budget1B"])
def test_chunking(chunk: Dict[str, int]) -> None:
    """B = 7 split 1/3/6 rows per chunk (uneven), and one row per chunk by budget."""
    model, x, afa, target = _case("two_input", batch=7)
    calls: List[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    ours = lrp(model, x, target=target, additional_forward_args=afa, composite=CAPTUM_WAY,
               return_convergence_delta=True, **chunk)
    rows = chunk.get("chunk_rows", 1)
    assert calls == [min(rows, 7 - r) for r in range(0, 7, rows)]
    model._forward_pre_hooks.clear()
    _check(ours, _captum(model, {}, x, target, afa), torch.float64, str(chunk))


def test_inplace_relu_matches_captum() -> None:
    model = _seeded(nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8),
                                  nn.ReLU(inplace=True), nn.Linear(8, 3)), 4, torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    ours = lrp(model, x, target=1, return_convergence_delta=True)
    _check(ours, _captum(model, {}, x, 1, None), torch.float64, "inplace relu")


class _TanhWithoutBackward(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return ForwardOnly.apply(torch.tanh, x)


def test_pass_through_layers_skip_their_ordinary_backward() -> None:
    """Relevance passes a pass-through layer unchanged, whatever its own
    gradient: that backward never runs (here it would raise), and the
    relevances are those with nn.Tanh in its place, which equal Captum's."""
    plain = _seeded(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), 5, torch.float64)
    stub = copy.deepcopy(plain)
    stub[1] = _TanhWithoutBackward()
    stub[1].rule = IdentityRule()
    x = torch.randn(4, 6, dtype=torch.float64)
    ours = lrp(stub, x, target=2, return_convergence_delta=True)
    assert all(torch.equal(a, b) for a, b in zip(ours, lrp(plain, x, target=2, return_convergence_delta=True)))
    _check(ours, _captum(plain, {}, x, 2, None), torch.float64, "pass-through")


class Residual(nn.Module):
    """[B, 4, 6, 6] -> [B, 3]: torchvision's BasicBlock, whose addition writes
    into a layer's output when ``inplace``. The rules wrap each layer's own
    forward and work on its output tensor itself, so in-place writes after a
    layer must not change its relevances."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.ident = nn.Identity()
        self.relu2 = nn.ReLU(inplace=inplace)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.ident(self.bn2(self.conv2(out)))
        if self.inplace:
            out += x
        else:
            out = out + x
        return self.fc(self.gap(self.relu2(out)).flatten(1))


def test_inplace_writes_after_layers_equal_out_of_place() -> None:
    """``out += x`` on a BatchNorm's output (the epsilon rule's stabilizer is
    taken before it), on an nn.Identity with a rule (whose output is its input,
    a view the rule must copy before the write), and an in-place ReLU with
    an epsilon rule of its own (run on a copy of its input): relevances and
    deltas bit for bit those of the out-of-place model."""
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    results = []
    for inplace in (True, False):
        model = _seeded(Residual(inplace), 3, torch.float64)
        model.ident.rule = EpsilonRule()
        model.relu1.rule = EpsilonRule(0.01)
        results.append(lrp(model, x, target=1, return_convergence_delta=True, chunk_rows=2))
    (a, d), (b, e) = results
    assert torch.equal(a, b) and torch.equal(d, e)
    assert a.abs().sum() > 0


def test_fastattr_rules_on_modules_equal_captum_rules() -> None:
    model, x, _, target = _case("conv")
    ours_rules = {"conv1": GammaRule(), "conv2": EpsilonRule(0.05), "fc": Alpha1_Beta0_Rule(),
                  "bn": IdentityRule()}
    ours = lrp(_with_rules(model, ours_rules), x, target=target, return_convergence_delta=True)
    _check(ours, _captum(model, RULE_SETS["mixed"](), x, target, None), torch.float64, "fastattr rules")


# ---------------------------------------------------------------------------
# A plain float64 reference, layer by layer
# ---------------------------------------------------------------------------


def _stab(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).double()


def _ref_dense(a: Tensor, w: Tensor, b: Tensor, r: Tensor, rule: str, eps: float) -> Tensor:
    """Relevance of the inputs ``a`` [B, I] of ``a @ w.T + b`` given ``r`` [B, O]."""
    if rule == "zplus":
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        z = ap @ wp.T + an @ wn.T + b.clamp(min=0)
        s = r / _stab(z, eps)
        return ap * (s @ wp) + an * (s @ wn)
    if rule == "gamma":
        w = w + 0.25 * w.clamp(min=0)
    elif rule == "alpha1beta0":
        w = w.clamp(min=0)
    s = r / _stab(a @ w.T + b, eps)
    return a * (s @ w)


def _ref_mlp(layers: List[Tuple[Tensor, Tensor]], x: Tensor, target: int, rules: List[str],
             epss: List[float]) -> Tensor:
    """LRP of a ReLU MLP ``[(W, b), ...]`` written out: relevance ``f_t`` at the
    target, each dense layer by its rule, ReLUs passed through."""
    acts = [x]
    for i, (w, b) in enumerate(layers):
        z = acts[-1] @ w.T + b
        acts.append(z.relu() if i < len(layers) - 1 else z)
    r = torch.zeros_like(acts[-1])
    r[:, target] = acts[-1][:, target]
    for i in reversed(range(len(layers))):
        r = _ref_dense(acts[i], *layers[i], r, rules[i], epss[i])
    return r


def _relu_mlp(bn: bool = False) -> nn.Sequential:
    mods: List[nn.Module] = [nn.Linear(10, 9)]
    if bn:
        mods.append(nn.BatchNorm1d(9))
    mods += [nn.ReLU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 3)]
    return _seeded(nn.Sequential(*mods), 5, torch.float64)


@pytest.mark.parametrize("rules", [("eps", "gamma", "alpha1beta0"), ("zplus", "zplus", "eps"),
                                   ("gamma", "zplus", "gamma")])
def test_matches_reference(rules: Tuple[str, ...]) -> None:
    model = _relu_mlp()
    x = torch.randn(6, 10, dtype=torch.float64)  # signed inputs: z+ differs from alpha1-beta0
    make = {"eps": lambda: EpsilonRule(0.01), "gamma": GammaRule, "alpha1beta0": Alpha1_Beta0_Rule,
            "zplus": ZPlusRule}
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for m, r in zip(linears, rules):
        m.rule = make[r]()
    ours = lrp(model, x, target=2, chunk_rows=4)
    epss = [m.rule.epsilon for m in linears]
    ref = _ref_mlp([(m.weight.detach(), m.bias.detach()) for m in linears], x, 2, list(rules), epss)
    assert _rel_err(ours, ref) <= TOL_REF


@pytest.mark.parametrize("rule", ["eps", "gamma"])
def test_batchnorm_fold_matches_reference(rule: str) -> None:
    model = _relu_mlp(bn=True)
    with torch.no_grad():
        model[1].weight.uniform_(-1.5, 1.5)  # negative scales too: gamma of the merged weights
    x = torch.randn(6, 10, dtype=torch.float64)
    model[0].rule = EpsilonRule() if rule == "eps" else GammaRule()
    ours = lrp(model, x, target=0, composite=default_composite(batchnorm="fold"))
    lin, bn = model[0], model[1]
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w0 = lin.weight.detach() * scale[:, None]
    b0 = (lin.bias.detach() - bn.running_mean) * scale + bn.bias.detach()
    layers = [(w0, b0)] + [(m.weight.detach(), m.bias.detach()) for m in (model[3], model[5])]
    ref = _ref_mlp(layers, x, 0, [("gamma" if rule == "gamma" else "eps"), "eps", "eps"], [1e-9] * 3)
    assert _rel_err(ours, ref) <= TOL_REF


def test_batchnorm_identity_option() -> None:
    """batchnorm='identity' equals Captum with IdentityRule set on the BatchNorm."""
    model, x, _, target = _case("conv")
    ours = lrp(model, x, target=target, composite=default_composite(batchnorm="identity"),
               return_convergence_delta=True)
    _check(ours, _captum(model, {"bn": cr.IdentityRule()}, x, target, None), torch.float64, "bn identity")


# ---------------------------------------------------------------------------
# Zennit (z+ for signed inputs, BatchNorm folding)
# ---------------------------------------------------------------------------


def _zennit(model: nn.Module, layer_map: List[Tuple[Any, Any]], x: Tensor, target: int,
            canonizers: Optional[List[Any]] = None) -> Tensor:
    from zennit.composites import LayerMapComposite

    composite = LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    x = x.clone().requires_grad_()
    with composite.context(model) as modified:
        out = modified(x)
        seed = torch.zeros_like(out)
        seed[:, target] = out[:, target]
        (rel,) = torch.autograd.grad(out, x, seed)
    return rel


def _zennit_convnet(bn_eps: float = 1e-5) -> nn.Sequential:
    return _seeded(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, eps=bn_eps), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(),
        nn.Linear(32, 5)), 6, torch.float64)


def test_zplus_matches_zennit() -> None:
    from zennit.rules import Epsilon, Pass, ZPlus

    model = _zennit_convnet()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    ours = lrp(model, x, target=4, composite=Composite({
        nn.Conv2d: ZPlusRule(), nn.BatchNorm2d: EpsilonRule(1e-6), nn.ReLU: IdentityRule(),
        nn.MaxPool2d: EpsilonRule(1e-6), nn.AdaptiveAvgPool2d: ZPlusRule(), nn.Flatten: IdentityRule(),
        nn.Linear: EpsilonRule(1e-6)}))
    theirs = _zennit(model, [(nn.Conv2d, ZPlus()), (nn.BatchNorm2d, Epsilon()), (nn.ReLU, Pass()),
                             (nn.MaxPool2d, Epsilon()), (nn.AdaptiveAvgPool2d, ZPlus()),
                             (nn.Linear, Epsilon())], x, 4)
    assert _rel_err(ours, theirs) <= TOL_ZENNIT


def test_batchnorm_fold_matches_zennit() -> None:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import NameLayerMapComposite
    from zennit.rules import Epsilon, Pass, ZPlus

    model = _zennit_convnet(bn_eps=1e-12)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    for first, z_first in ((EpsilonRule(1e-6), Epsilon()), (ZPlusRule(), ZPlus())):
        model[0].rule = first
        ours = lrp(model, x, target=1, composite=Composite(
            {nn.Conv2d: EpsilonRule(1e-6), nn.Linear: EpsilonRule(1e-6), nn.ReLU: IdentityRule(),
             nn.MaxPool2d: EpsilonRule(1e-6), nn.AdaptiveAvgPool2d: EpsilonRule(1e-6),
             nn.Flatten: IdentityRule(), nn.BatchNorm2d: EpsilonRule()}, batchnorm="fold"))
        del model[0].rule
        # The first conv gets its rule by name, the rest by type.
        composite = NameLayerMapComposite(
            name_map=[(("0",), z_first), (("4",), Epsilon())],
            layer_map=[(nn.ReLU, Pass()), (nn.MaxPool2d, Epsilon()), (nn.AdaptiveAvgPool2d, Epsilon()),
                       (nn.Linear, Epsilon())],
            canonizers=[SequentialMergeBatchNorm()])
        xg = x.clone().requires_grad_()
        with composite.context(model) as modified:
            out = modified(xg)
            seed = torch.zeros_like(out)
            seed[:, 1] = out[:, 1]
            (theirs,) = torch.autograd.grad(out, xg, seed)
        assert _rel_err(ours, theirs) <= TOL_ZENNIT_FOLD, type(first).__name__


# ---------------------------------------------------------------------------
# The caller's model and inputs come back unchanged
# ---------------------------------------------------------------------------


def _snapshot(model: nn.Module) -> Dict[str, Any]:
    return {
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "hooks": [(n, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
                   dict(m._backward_pre_hooks)) for n, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
        "attrs": [sorted(vars(m)) for m in model.modules()],
        "rules": [getattr(m, "rule", None) for m in model.modules()],
    }


def _assert_unchanged(model: nn.Module, before: Dict[str, Any]) -> None:
    after = _snapshot(model)
    for n, (p, rg) in before["params"].items():
        q, rg2 = after["params"][n]
        assert torch.equal(p, q) and rg == rg2, n
    for n, b in before["buffers"].items():
        assert torch.equal(b, after["buffers"][n]), n
    for key in ("hooks", "training", "attrs", "rules"):
        assert after[key] == before[key], key


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("raise_in", [None, "fc", "fold"])
def test_model_and_inputs_unchanged(raise_in: Optional[str]) -> None:
    model, x, _, target = _case("conv")
    model.conv1.rule = cr.GammaRule()
    model.fc.rule = ZPlusRule()
    model.conv2.weight.requires_grad_(False)
    x_before = x.clone()
    before = _snapshot(model)
    composite = None
    if raise_in == "fc":
        model.fc.register_forward_hook(lambda m, a, o: (_ for _ in ()).throw(Boom()))
        before = _snapshot(model)
    elif raise_in == "fold":  # the BatchNorm no longer sees conv1's output itself
        composite = default_composite(batchnorm="fold")
        model.bn.register_forward_pre_hook(lambda m, a: (a[0] * 1.0,))
        before = _snapshot(model)
    if raise_in is None:
        lrp(model, x, target=target, chunk_rows=2, return_convergence_delta=True)
    else:
        with pytest.raises(Boom if raise_in == "fc" else ValueError, match=None if raise_in == "fc" else "model.bn"):
            lrp(model, x, target=target, chunk_rows=2, composite=composite)
    _assert_unchanged(model, before)
    assert torch.equal(x, x_before) and not x.requires_grad


# ---------------------------------------------------------------------------
# Bad input fails before any compute, naming what is wrong
# ---------------------------------------------------------------------------


class Counting(nn.Module):
    """A leaf layer fastattr's composite has no rule for; counts its forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4, dtype=torch.float64))
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x * self.w


class MyCaptumRule(cr.EpsilonRule):
    def _create_backward_hook_input(self, inputs):  # noqa: ANN001, ANN202
        return super()._create_backward_hook_input(inputs)


def _bad_model() -> nn.Sequential:
    return nn.Sequential(Counting(), nn.Linear(4, 3).double())


@pytest.mark.parametrize("case, error, match", [
    ("not_module", TypeError, "model: expected an nn.Module"),
    ("unknown_layer", TypeError, r"model\.0 of type Counting has no LRP rule"),
    ("rule_type", TypeError, r"model\.1\.rule: expected an LRP propagation rule"),
    ("captum_subclass", NotImplementedError, r"model\.1\.rule: Captum rule class MyCaptumRule"),
    ("composite_type", TypeError, "composite: expected"),
    ("batchnorm_mode", ValueError, "batchnorm: expected one of"),
    ("fold_train_mode", ValueError, r"model\.bn: composite\.batchnorm='fold' needs the BatchNorm in eval"),
    ("input_dtype", TypeError, "inputs: expected a floating dtype"),
    ("target_range", ValueError, "target: index out of range"),
    ("output_shape", ValueError, r"target: selects 3 values per example from the model's output \[n, 1, 3\]"),
    ("chunk_rows", ValueError, "chunk_rows: expected an integer >= 1"),
])
def test_bad_input(case: str, error: type, match: str) -> None:
    model = _bad_model()
    model[0].rule = EpsilonRule()
    x = torch.randn(4, 4, dtype=torch.float64)
    kw: Dict[str, Any] = dict(target=0)
    if case == "not_module":
        model = lambda t: t  # noqa: E731
    elif case == "unknown_layer":
        del model[0].rule
    elif case == "rule_type":
        model[1].rule = "epsilon"
    elif case == "captum_subclass":
        model[1].rule = MyCaptumRule()
    elif case == "composite_type":
        kw["composite"] = {nn.Linear: EpsilonRule()}
    elif case == "batchnorm_mode":
        with pytest.raises(error, match=match):
            Composite({}, batchnorm="merge")
        return
    elif case == "fold_train_mode":
        model, x, _, _ = _case("conv")
        model.bn.train()
        kw["composite"] = default_composite(batchnorm="fold")
    elif case == "input_dtype":
        x = x.long()
    elif case == "target_range":
        kw["target"] = 3
    elif case == "output_shape":
        model = nn.Sequential(model, nn.Unflatten(1, (1, 3)))
        model[1].rule = IdentityRule()
    elif case == "chunk_rows":
        kw["chunk_rows"] = 0
    with pytest.raises(error, match=match):
        lrp(model, x, **kw)
    if isinstance(model, nn.Sequential) and case not in ("target_range", "output_shape"):
        assert model[0].calls == 0
    if case in ("rule_type", "captum_subclass", "not_module"):
        with pytest.raises(error, match=match):
            LRP(model)


class GridOutput(nn.Module):
    """A [B, 4]-output model's outputs as [B, 2, 2] (reshaped in the forward,
    not by a module: Captum's LRP has no rule for nn.Unflatten)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x).view(-1, 2, 2)


@pytest.mark.parametrize("target", [(1, 0), [(1, 0), (0, 1), (1, 1), (0, 0), (1, 0)], torch.tensor([1])])
def test_captum_drop_in_indexes_outputs_of_any_rank(target: Any) -> None:
    """Outputs [B, 2, 2]: a tuple, a list of tuples (one per example), a
    one-element tensor (index 1 of dim 1 for all: [B, 2] left, refused)."""
    mlp, x, _, _ = _case("mlp")
    model = GridOutput(mlp)
    if isinstance(target, Tensor):
        with pytest.raises(AssertionError):  # Captum's error class, also a ValueError here
            LRP(model).attribute(x, target=target)
        return
    ours = LRP(model).attribute(x, target=target, return_convergence_delta=True)
    _check(ours, _captum(model, {}, x, target, None), torch.float64, f"target {target}")
