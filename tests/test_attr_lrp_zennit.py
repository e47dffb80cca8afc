"""Zennit parity: fastattr's Zennit rules (fastattr.attr.lrp_rules:
AlphaBetaRule, GeneralizedGammaRule, FlatRule, WSquareRule, ZBoxRule) and
named composites (fastattr.attr.lrp_zennit.zennit_composite) against Zennit
0.5.1 itself, in float64.

* Rules: one layer (Linear, Conv2d) and a small sequential net, each layer's
  relevance from :meth:`MultiTermRule.output`, against Zennit's hook of the
  same rule on the same layers (relevance seeded with a random tensor).
* Composites: ``fastattr.lrp`` on torchvision's VGG-16 and ResNet-18
  (random weights) against Zennit's ``Gradient`` attributor with the named
  composite and its canonizer, seeded with ``one_hot(target) * f(x)``;
  ``fastattr.lrp`` returns the relevances of a seed of 1 times ``f_t(x)``,
  the same numbers since every rule is linear in the incoming relevance.
  Zennit's ``MergeBatchNorm`` leaves the BatchNorm's ``eps`` in the merged
  (otherwise identity) BatchNorm, so Zennit's canonized ResNet computes
  ``x / sqrt(1 + eps)`` at each BatchNorm: with ``eps = 0`` both agree to
  rounding; with torchvision's ``eps = 1e-5`` Zennit's own output moves by
  ~4e-5 relative and its relevances by ~7e-5 (measured below).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import fastattr
from fastattr.attr import lrp_rules as rules
from fastattr.attr.lrp_zennit import ZENNIT_COMPOSITES, zennit_composite
from test_attr_lrp_modern import _bias_free_twin

zennit = pytest.importorskip("zennit")
from zennit import composites as zc  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit import torchvision as ztv  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:Setting forward, backward hooks"),
              pytest.mark.filterwarnings("ignore:Full backward hook")]

TOL = 1e-10
LOW, HIGH = -3.0, 3.0


def _rel_err(ours: Tensor, theirs: Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def _rule_pairs() -> List[Tuple[str, rules.MultiTermRule, Callable[[], Any]]]:
    """(id, fastattr rule, Zennit rule factory), Zennit's defaults unless named."""
    low_t = torch.linspace(-3.0, -1.0, 3, dtype=torch.float64).reshape(1, 3, 1, 1)
    high_t = torch.linspace(1.0, 3.0, 3, dtype=torch.float64).reshape(1, 3, 1, 1)
    return [
        ("alpha2_beta1", rules.AlphaBetaRule(), lambda: zr.AlphaBeta()),
        ("alpha1_beta0", rules.AlphaBetaRule(1.0, 0.0), lambda: zr.AlphaBeta(1.0, 0.0)),
        ("alpha3_beta2_eps1e-2", rules.AlphaBetaRule(3.0, 2.0, 1e-2), lambda: zr.AlphaBeta(3.0, 2.0, 1e-2)),
        ("gamma", rules.GeneralizedGammaRule(), lambda: zr.Gamma()),
        ("gamma_1", rules.GeneralizedGammaRule(1.0, 1e-3), lambda: zr.Gamma(1.0, 1e-3)),
        ("flat", rules.FlatRule(), lambda: zr.Flat()),
        ("wsquare", rules.WSquareRule(), lambda: zr.WSquare()),
        ("zbox_floats", rules.ZBoxRule(LOW, HIGH), lambda: zr.ZBox(LOW, HIGH)),
        ("zbox_tensors", rules.ZBoxRule(low_t, high_t), lambda: zr.ZBox(low_t, high_t)),
    ]


RULE_PAIRS = _rule_pairs()
RULE_IDS = [p[0] for p in RULE_PAIRS]


class _Ruled(nn.Module):
    """``layer`` with ``rule``'s backward (what fastattr.lrp installs)."""

    def __init__(self, layer: nn.Module, rule: rules.MultiTermRule) -> None:
        super().__init__()
        self.layer, self.rule = layer, rule

    def forward(self, x: Tensor) -> Tensor:
        params = {n: p.detach() for n, p in self.layer.named_parameters(recurse=False)}
        with torch.no_grad():
            value = self.layer(x)
        return self.rule.output(value, lambda xi, p: torch.func.functional_call(self.layer, dict(p), (xi,)),
                                x, params)


def _relevance_at_input(model: nn.Module, x: Tensor, seed: Tensor) -> Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x), x, seed)
    return grad


def _zennit_hooked(layers: List[nn.Module], rule: Callable[[], Any]) -> List[Any]:
    return [rule().register(layer) for layer in layers if isinstance(layer, (nn.Linear, nn.Conv2d))]


def _layer(kind: str) -> Tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(3 * 5 * 4, 7).double(), torch.randn(4, 3 * 5 * 4, dtype=torch.float64)
    if kind == "gray_batch1_conv":
        return nn.Conv2d(1, 5, 3, padding=1, bias=False).double(), torch.randn(1, 1, 5, 4, dtype=torch.float64)
    return nn.Conv2d(3, 5, 3, padding=1, stride=(1, 2)).double(), torch.randn(4, 3, 5, 4, dtype=torch.float64)


# per-channel bounds ([1, 3, 1, 1]) are for [B, 3, H, W] inputs: the RGB conv only
ONE_LAYER_CASES = [pytest.param(kind, *pair, id=f"{pair[0]}-{kind}") for pair in RULE_PAIRS
                   for kind in ("linear", "conv", "gray_batch1_conv")
                   if not (pair[0] == "zbox_tensors" and kind != "conv")]


@pytest.mark.parametrize("kind,name,ours,theirs", ONE_LAYER_CASES)
def test_rule_on_one_layer_matches_zennit(kind: str, name: str, ours: rules.MultiTermRule,
                                          theirs: Callable[[], Any]) -> None:
    layer, x = _layer(kind)
    seed = torch.randn_like(layer(x))
    mine = _relevance_at_input(_Ruled(layer, ours), x, seed)
    handles = _zennit_hooked([layer], theirs)
    try:
        ref = _relevance_at_input(layer, x, seed)
    finally:
        for h in handles:
            h.remove()
    assert _rel_err(mine, ref) <= TOL, name


@pytest.mark.parametrize("name,ours,theirs", RULE_PAIRS, ids=RULE_IDS)
def test_rule_in_a_sequential_net_matches_zennit(name: str, ours: rules.MultiTermRule,
                                                 theirs: Callable[[], Any]) -> None:
    torch.manual_seed(1)
    layers = [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.Flatten(),
              nn.Linear(5 * 4 * 3, 6), nn.ReLU(), nn.Linear(6, 2)]
    net = nn.Sequential(*layers).double()
    x = torch.randn(3, 3, 6, 5, dtype=torch.float64)
    seed = torch.randn(3, 2, dtype=torch.float64)
    # ZBox's bounds are the input's: the first layer only, as in Zennit's composites.
    box = name.startswith("zbox")
    ruled = nn.Sequential(*[
        _Ruled(m, ours if (not box or i == 0) else rules.AlphaBetaRule()) if isinstance(m, (nn.Linear, nn.Conv2d))
        else m for i, m in enumerate(layers)])
    mine = _relevance_at_input(ruled, x, seed)
    handles = _zennit_hooked(layers[:1], theirs) + _zennit_hooked(layers[1:], theirs if not box else zr.AlphaBeta)
    try:
        ref = _relevance_at_input(net, x, seed)
    finally:
        for h in handles:
            h.remove()
    assert _rel_err(mine, ref) <= TOL, name


def test_alpha_beta_conserves_on_a_bias_free_layer() -> None:
    """Hand-checked property: alpha R - beta R = R when each group's sum is nonzero."""
    layer, x = _layer("conv")
    with torch.no_grad():
        layer.bias.zero_()
    seed = torch.rand_like(layer(x))
    mine = _relevance_at_input(_Ruled(layer, rules.AlphaBetaRule(4.0, 3.0, 1e-30)), x, seed)
    assert mine.sum().item() == pytest.approx(seed.sum().item(), rel=1e-10)


def test_alpha_beta_takes_alpha_minus_beta_one_up_to_rounding() -> None:
    assert rules.AlphaBetaRule(1.1, 0.1).alpha == 1.1  # 1.1 - 0.1 == 1.0000000000000002


@pytest.mark.parametrize("alpha,beta", [(2.0, 0.5), (-1.0, -2.0), (0.5, -0.5), (float("nan"), 0.0)])
def test_alpha_beta_refuses_bad_parameters(alpha: float, beta: float) -> None:
    with pytest.raises(ValueError, match="alpha - beta == 1"):
        rules.AlphaBetaRule(alpha, beta)


def test_zbox_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError, match="low <= high"):
        rules.ZBoxRule(1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        rules.ZBoxRule(float("-inf"), 1.0)


def test_generalized_gamma_refuses_negative_gamma() -> None:
    with pytest.raises(ValueError, match="gamma >= 0"):
        rules.GeneralizedGammaRule(-0.5)


# ---------------------------------------------------------------------------
# Named composites
# ---------------------------------------------------------------------------


def test_named_composite_layer_assignment() -> None:
    """Zennit's layer_map / first_map, layer by layer."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))
    expected = {
        "epsilon_plus": (rules.ZPlusRule, rules.ZPlusRule),
        "epsilon_alpha2_beta1": (rules.AlphaBetaRule, rules.AlphaBetaRule),
        "epsilon_gamma_box": (rules.ZBoxRule, rules.GeneralizedGammaRule),
        "epsilon_plus_flat": (rules.FlatRule, rules.ZPlusRule),
    }
    for name, (first, conv) in expected.items():
        kw = {"low": LOW, "high": HIGH} if name == "epsilon_gamma_box" else {}
        got = {n: r for n, _, r in rules.assign_rules(model, zennit_composite(name, epsilon=1e-3, **kw))}
        assert isinstance(got["0"], first) and isinstance(got["3"], conv), name
        assert got["1"] is rules.PASS and got["2"] == rules.FUNCTIONS, name
        assert got["4"] == rules.EpsilonRule(1e-6) and got["6"] == got["7"] == rules.EpsilonRule(1e-3), name
    flat_first = {n: r for n, _, r in rules.assign_rules(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)),
                                                         zennit_composite("epsilon_plus_flat"))}
    assert isinstance(flat_first["0"], rules.FlatRule) and flat_first["1"] == rules.EpsilonRule(1e-6)


def test_own_rule_beats_first_layer_rule() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    model[0].rule = rules.EpsilonRule(0.5)
    got = rules.assign_rules(model, zennit_composite("epsilon_plus_flat"))
    # the first conv is still "the first layer": the second gets z+, not Flat (as Zennit's first_map)
    assert got[0][2] == rules.EpsilonRule(0.5) and isinstance(got[1][2], rules.ZPlusRule)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "epsilon"}, "name: expected one of"),
    ({"name": "epsilon_plus", "batchnorm": "rule"}, "batchnorm: expected one of"),
    ({"name": "epsilon_gamma_box"}, "low, high: epsilon_gamma_box needs"),
    ({"name": "epsilon_plus", "low": 0.0, "high": 1.0}, "low, high: only epsilon_gamma_box"),
])
def test_named_composite_refuses_bad_arguments(kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        zennit_composite(**kwargs)


def _seeded(model: nn.Module, seed: int, bn_eps: float = 1e-5) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.eps = bn_eps
    return model.double().eval()


@pytest.fixture(scope="module")
def images() -> Tuple[Tensor, List[int]]:
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 64, dtype=torch.float64), [3, 7]


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    torch.manual_seed(1)
    return _seeded(torchvision.models.vgg16(weights=None, num_classes=10), 1)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(2)
    return _seeded(torchvision.models.resnet18(weights=None, num_classes=10), 2, bn_eps=0.0)


def _zennit_composite(name: str, canonizers: List[Any]) -> Any:
    low = torch.full((1, 3, 1, 1), LOW, dtype=torch.float64)
    high = torch.full((1, 3, 1, 1), HIGH, dtype=torch.float64)
    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    return zc.COMPOSITES[name](canonizers=canonizers)


def _ours(model: nn.Module, x: Tensor, target: List[int], name: str) -> Tensor:
    kw = {"low": torch.full((3, 1, 1), LOW), "high": HIGH} if name == "epsilon_gamma_box" else {}
    return fastattr.lrp(model, x, target=target, composite=zennit_composite(name, **kw))


def _theirs(model: nn.Module, x: Tensor, target: List[int], name: str, canonizers: List[Any]) -> Tensor:
    """Zennit's relevances for the seed ``one_hot(target) * f(x)``."""
    def seed(out: Tensor) -> Tensor:
        return F.one_hot(torch.tensor(target), out.shape[1]).to(out) * out

    with Gradient(model, _zennit_composite(name, canonizers)) as attributor:
        _, relevance = attributor(x.clone().requires_grad_(True), seed)
    return relevance


COMPOSITE_PARAMS = list(ZENNIT_COMPOSITES)


@pytest.mark.parametrize("name", COMPOSITE_PARAMS)
def test_vgg16_matches_zennit(vgg16: nn.Module, images: Tuple[Tensor, List[int]], name: str) -> None:
    x, target = images
    ours = _ours(vgg16, x, target, name)
    theirs = _theirs(vgg16, x, target, name, [ztv.VGGCanonizer()])
    assert _rel_err(ours, theirs) <= TOL, name


@pytest.mark.parametrize("name", COMPOSITE_PARAMS)
def test_resnet18_matches_zennit(resnet18: nn.Module, images: Tuple[Tensor, List[int]], name: str) -> None:
    """BatchNorm eps 0: Zennit's merged BatchNorm is then an exact identity."""
    x, target = images
    ours = _ours(resnet18, x, target, name)
    theirs = _theirs(resnet18, x, target, name, [ztv.ResNetCanonizer()])
    assert _rel_err(ours, theirs) <= TOL, name


def test_resnet18_difference_is_zennits_leftover_batchnorm_eps(images: Tuple[Tensor, List[int]]) -> None:
    """With eps = 1e-5 Zennit's canonized model is not the model: each merged
    BatchNorm still divides by sqrt(1 + eps). fastattr explains the model
    itself (its output unchanged), so the relevances differ by about as much
    as Zennit's output does from the model's."""
    x, target = images
    model = _seeded(torchvision.models.resnet18(weights=None, num_classes=10), 2, bn_eps=1e-5)
    plain = model(x)
    with _zennit_composite("epsilon_plus", [ztv.ResNetCanonizer()]).context(model) as canonized:
        output_shift = _rel_err(canonized(x), plain)
    difference = _rel_err(_ours(model, x, target, "epsilon_plus"),
                          _theirs(model, x, target, "epsilon_plus", [ztv.ResNetCanonizer()]))
    assert 1e-6 < output_shift < 1e-3 and 1e-6 < difference < 1e-3
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    plain = model(x)
    with _zennit_composite("epsilon_plus", [ztv.ResNetCanonizer()]).context(model) as canonized:
        assert _rel_err(canonized(x), plain) <= 1e-13


# ---------------------------------------------------------------------------
# MobileNetV3: Zennit's module-hook view of a model with gates and residuals
# ---------------------------------------------------------------------------

TINY = 1e-30  # both libraries' stabilizer: the bias-free twin's activations are ~1e-9


def _bias_free_mobilenet_v3() -> nn.Module:
    """MobileNetV3-small in float64 with its biases and BatchNorm running
    means zeroed (nothing absorbs relevance but the stabilizers)."""
    torch.manual_seed(0)
    return _bias_free_twin(torchvision.models.mobilenet_v3_small(num_classes=5))


MOBILENET_RULES = {  # id: (fastattr conv rule, Zennit's, fastattr Linear rule, Zennit's)
    "eps_conv-alpha1beta0_linear": (rules.EpsilonRule(TINY), lambda: zr.Epsilon(TINY),
                                    rules.AlphaBetaRule(1.0, 0.0, TINY), lambda: zr.AlphaBeta(1.0, 0.0, TINY)),
    "alpha2beta1_conv-eps_linear": (rules.AlphaBetaRule(2.0, 1.0, TINY), lambda: zr.AlphaBeta(2.0, 1.0, TINY),
                                    rules.EpsilonRule(TINY), lambda: zr.Epsilon(TINY)),
}


@pytest.mark.parametrize("case", list(MOBILENET_RULES))
def test_mobilenet_v3_without_function_rules_matches_zennit(case: str) -> None:
    """Zennit has no canonizer for MobileNetV3's inverted residuals and
    squeeze-excitation: its relevance takes the plain gradient of ``result
    += input`` and ``scale * x`` (with epsilon on the convolutions it sums
    to 460 and -303 times f(x) on these two examples). fastattr without the function rules (``function_rules=False``)
    is that same module-hook view, and gives Zennit's numbers; with them
    (the default) it conserves (test_attr_lrp_modern.py)."""
    from zennit.composites import LayerMapComposite
    from zennit.types import Activation, AvgPool, BatchNorm, Convolution

    conv, zennit_conv, linear, zennit_linear = MOBILENET_RULES[case]
    model = _bias_free_mobilenet_v3()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    base = rules.default_composite("rule", TINY).rules_by_type
    ours = fastattr.lrp(model, x, target=[1, 3], composite=rules.Composite(
        {**base, nn.Conv2d: conv, nn.Linear: linear}, function_rules=False))
    composite = LayerMapComposite([(Activation, zr.Pass()), (Convolution, zennit_conv()), (AvgPool, zr.Norm(TINY)),
                                   (BatchNorm, zr.Epsilon(TINY)), (nn.Linear, zennit_linear())])
    with Gradient(model, composite) as attributor:
        _, theirs = attributor(x.clone().requires_grad_(True),
                               lambda out: F.one_hot(torch.tensor([1, 3]), out.shape[1]).to(out) * out)
    assert _rel_err(ours, theirs) <= TOL, case

