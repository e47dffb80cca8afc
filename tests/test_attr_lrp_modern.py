"""LRP on the architectures people use: residual additions, gates, timm's
BatchNormAct2d, LayerNorm, attention, shape ops (fastattr.attr.lrp_functional).

Each rule is checked against a hand-written reference built from one
obviously-right step, ``x * J^T (R / stab(z))`` by autograd on the layer
alone (:func:`_z_step`), and the whole-model property is conservation: on a
bias-free float64 twin of each torchvision/timm model (every parameter that
is not a weight zeroed, BatchNorm running means zeroed: nothing absorbs
relevance but the stabilizer, here 1e-30) the relevances sum to ``f(x)``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import timm
import torchvision
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.ops import SqueezeExcitation
from torchvision.ops.misc import Permute

import captum.attr
import fastattr.captum
from fastattr.attr import lrp_rules as rules
from fastattr.attr.lrp import layer_lrp, lrp

pytestmark = [pytest.mark.filterwarnings("ignore:Setting forward, backward hooks"),
              pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")]

EPS = 1e-9
TOL_REF = 1e-12
TOL_CONSERVE = 1e-6
TINY = 1e-30  # the stabilizer of the conservation checks: absorbs nothing measurable
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _stab(z: Tensor, eps: float = EPS) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _z_step(layer: Callable[[Tensor], Tensor], x: Tensor, relevance: Tensor, eps: float = EPS) -> Tensor:
    """The epsilon rule of ``layer`` at ``x``: ``x * J^T (R / stab(layer(x)))``."""
    x = x.detach().requires_grad_(True)
    z = layer(x)
    (g,) = torch.autograd.grad(z, x, relevance / _stab(z.detach(), eps))
    return x.detach() * g


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.double().eval()


def _output_relevance(y: Tensor, target: int) -> Tensor:
    """Captum's start: the target output's value at the target, 0 elsewhere."""
    r = torch.zeros_like(y)
    r[:, target] = y[:, target]
    return r.detach()


# ---------------------------------------------------------------------------
# Residual additions
# ---------------------------------------------------------------------------


class Block(nn.Module):
    """[B, 4, 6, 6] -> [B, 3]: torchvision's BasicBlock (biases, BatchNorm)
    with its addition written as ``form``."""

    def __init__(self, form: str = "iadd", bias: bool = True) -> None:
        super().__init__()
        self.form = form
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(4)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.form == "iadd":
            out += x
        elif self.form == "add":
            out = out + x
        elif self.form == "radd":
            out = x + out
        elif self.form == "torch.add":
            out = torch.add(out, x)
        else:
            out.add_(x)
        return self.fc(self.gap(self.relu2(out)).flatten(1))


def _head_reference(m: nn.Module, features: Tensor, y: Tensor, target: int) -> Tensor:
    """The relevance at the input of ``m.fc(m.gap(features).flatten(1))``:
    the epsilon rule of fc, then of the pooling."""
    pooled = m.gap(features)
    r_pooled = _z_step(lambda t: m.fc(t.flatten(1)), pooled, _output_relevance(y, target))
    return _z_step(m.gap, features, r_pooled)


def _block_reference(m: Block, x: Tensor, target: int) -> Tensor:
    """Hand-written LRP-epsilon of :class:`Block` (BatchNorm with its own
    epsilon rule): the addition ``s = b2 + x`` splits ``R_s`` as
    ``b2 / stab(s)`` and ``x / stab(s)``."""
    with torch.no_grad():
        a1 = m.conv1(x)
        r1 = F.relu(m.bn1(a1))
        a2 = m.conv2(r1)
        b2 = m.bn2(a2)
        s = b2 + x
        r2 = F.relu(s)
        y = m.fc(m.gap(r2).flatten(1))
    r_s = _head_reference(m, r2, y, target)  # ReLU: passed
    r_b2, r_skip = b2 / _stab(s) * r_s, x / _stab(s) * r_s
    r_r1 = _z_step(m.conv2, r1, _z_step(m.bn2, a2, r_b2))
    return _z_step(m.conv1, x, _z_step(m.bn1, a1, r_r1)) + r_skip


@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (1, 4, 5, 7)])
def test_residual_addition_matches_reference(shape: Tuple[int, ...]) -> None:
    m = _seeded(Block())
    x = torch.randn(*shape, dtype=torch.float64)
    ours = lrp(m, x, target=1)
    ref = _block_reference(m, x, 1)
    assert (ours - ref).abs().max() <= TOL_REF * ref.abs().max()


@pytest.mark.parametrize("form", ["add", "radd", "torch.add", "add_"])
def test_every_form_of_addition_is_the_same(form: str) -> None:
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    ours = lrp(_seeded(Block(form)), x, target=2)
    assert torch.equal(ours, lrp(_seeded(Block("iadd")), x, target=2))


def test_bias_free_block_sums_to_f() -> None:
    """The issue's case: relevance sums to f(x); without the function rules
    (Captum's way: the addition hands all of its relevance to both terms)
    it does not."""
    m = _seeded(Block("add", bias=False))
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.zero_()
            bn.bias.zero_()
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        f = m(x)[:, 0]
    composite = rules.default_composite(epsilon=TINY)
    total = lrp(m, x, target=0, composite=composite).sum((1, 2, 3))
    assert (total - f).abs().max() <= TOL_CONSERVE * f.abs().max()
    captum_way = dataclasses.replace(composite, function_rules=False)
    assert (lrp(m, x, target=0, composite=captum_way).sum((1, 2, 3)) - f).abs().min() > 0.1 * f.abs().min()


class LinearSkip(nn.Module):
    """[B, 4] -> [B, 3]: ``h = x + fc1(x)``, then ``fc(h)``, the linear
    layers as modules or (``functional``) as ``F.linear`` on the same weights."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc = nn.Linear(4, 4), nn.Linear(4, 3)
        self.functional = functional

    def forward(self, x: Tensor) -> Tensor:
        if self.functional:
            h = x + F.linear(x, self.fc1.weight, self.fc1.bias)
            return F.linear(h, self.fc.weight, self.fc.bias)
        return self.fc(x + self.fc1(x))


def _multi_term_step(rule: rules.MultiTermRule, layer: nn.Linear, x: Tensor, relevance: Tensor) -> Tensor:
    """``rule``'s relevance at ``layer``'s input (the rule's own function,
    checked against Zennit's hooks in test_attr_lrp_zennit.py)."""
    params = {"weight": layer.weight.detach(), "bias": layer.bias.detach()}
    return rules.multi_term_relevance(rule, lambda t, p: F.linear(t, p["weight"], p["bias"]), x, params, relevance)


def test_addition_takes_a_multi_term_linear_rules_stabilizer() -> None:
    """With a multi-term rule on nn.Linear (Zennit's alpha-beta), the
    additions are stabilized by that rule's ``stabilizer``, as they take a
    z-rule's ``epsilon`` (they fell back to the default 1e-9, which absorbed
    36% of f(x) on the bias-free MobileNetV3 twin, whose activations are ~1e-9)."""
    m = _seeded(LinearSkip())
    rule = rules.AlphaBetaRule(2.0, 1.0, stabilizer=0.3)
    composite = rules.Composite({**rules.default_composite().rules_by_type, nn.Linear: rule})
    x = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():
        a = m.fc1(x)
        h = x + a
        y = m.fc(h)
    r_h = _multi_term_step(rule, m.fc, h, _output_relevance(y, 2) / y[:, 2:3])
    r_x, r_a = x / _stab(h, 0.3) * r_h, a / _stab(h, 0.3) * r_h
    ref = (r_x + _multi_term_step(rule, m.fc1, x, r_a)) * y[:, 2:3]
    ours = lrp(m, x, target=2, composite=composite)
    assert (ours - ref).abs().max() <= TOL_REF * ref.abs().max()


def test_functional_linear_gets_a_multi_term_linear_rule() -> None:
    """``F.linear`` outside an nn.Linear gets the composite's nn.Linear rule
    also when it is a multi-term rule (it kept its plain gradient)."""
    modules = _seeded(LinearSkip())
    functional = LinearSkip(functional=True).double()
    functional.load_state_dict(modules.state_dict())
    composite = rules.Composite({**rules.default_composite().rules_by_type, nn.Linear: rules.AlphaBetaRule()})
    x = torch.randn(3, 4, dtype=torch.float64)
    ref = lrp(modules, x, target=1, composite=composite)
    ours = lrp(functional, x, target=1, composite=composite)
    assert (ours - ref).abs().max() <= TOL_REF * ref.abs().max()


def test_mobilenet_v3_alpha_beta_head_conserves() -> None:
    """The puzzle's case: epsilon on every convolution, Zennit's
    AlphaBetaRule(1, 0) on the classifier's Linear layers: conserves, and
    equals z+ there (the same rule on a bias-free layer)."""
    torch.manual_seed(0)
    model = _bias_free_twin(torchvision.models.mobilenet_v3_small(num_classes=5))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    base = rules.default_composite(epsilon=TINY).rules_by_type
    alpha_beta = lrp(model, x, target=1, composite=rules.Composite({**base, nn.Linear: rules.AlphaBetaRule(1.0, 0.0, TINY)}))
    zplus = lrp(model, x, target=1, composite=rules.Composite({**base, nn.Linear: rules.ZPlusRule(TINY)}))
    with torch.no_grad():
        f = model(x)[:, 1]
    assert (alpha_beta.sum((1, 2, 3)) - f).abs().max() <= TOL_CONSERVE * f.abs().max()
    assert (alpha_beta - zplus).abs().max() <= 1e-10 * zplus.abs().max()


# ---------------------------------------------------------------------------
# Gates, pass-through activations, BatchNormAct2d
# ---------------------------------------------------------------------------


class Gated(nn.Module):
    """[B, 3, 8, 8] -> [B, 3]: conv, Hardswish, squeeze-excitation (a
    Hardsigmoid gate times the signal), stochastic depth, pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.act = nn.Hardswish()
        self.se = SqueezeExcitation(8, 4, scale_activation=nn.Hardsigmoid)
        self.depth = torchvision.ops.StochasticDepth(0.2, "row")
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.gap(self.depth(self.se(self.act(self.conv(x))))).flatten(1))


def test_gate_and_pass_through_match_reference() -> None:
    """Hardswish and StochasticDepth pass relevance unchanged; the gate
    ``scale * h`` gives all of it to the signal ``h``, none to ``scale``."""
    m = _seeded(Gated())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        a = m.conv(x)
        gated = m.se(m.act(a))
        y = m.fc(m.gap(gated).flatten(1))
    r_gated = _head_reference(m, gated, y, 0)
    ref = _z_step(m.conv, x, r_gated)  # the gate and Hardswish pass it unchanged
    ours = lrp(m, x, target=0)
    assert (ours - ref).abs().max() <= TOL_REF * ref.abs().max()


def _bn_act_models(act: Callable[[], nn.Module]) -> Tuple[nn.Module, nn.Module]:
    """The same network with timm's BatchNormAct2d and with BatchNorm2d + ``act``."""
    timm_style = nn.Sequential(nn.Conv2d(3, 5, 3), timm.layers.BatchNormAct2d(5, act_layer=act),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    _seeded(timm_style)
    plain = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), act(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(5, 2)).double().eval()
    state = {k: v for k, v in timm_style.state_dict().items()}
    plain.load_state_dict({k.replace("4.", "5.") if k.startswith("4.") else k: v for k, v in state.items()})
    return timm_style, plain


@pytest.mark.parametrize("act", [nn.ReLU, nn.SiLU])
@pytest.mark.parametrize("batchnorm", ["rule", "fold", "identity", "alpha_beta"])
def test_batchnorm_act_equals_batchnorm_and_act(batchnorm: str, act: Callable[[], nn.Module]) -> None:
    """BatchNormAct2d runs ``F.batch_norm``, its ``drop`` (an nn.Identity)
    and its ``act``: two pass-through layers in a row, which must both pass
    (with Captum's hooks the SiLU's ordinary gradient leaked in; a ReLU's
    hides it: where it masks, the relevance is 0 anyway). ``alpha_beta``: a
    multi-term rule on nn.BatchNorm2d, given to ``F.batch_norm`` too."""
    timm_style, plain = _bn_act_models(act)
    x = torch.randn(3, 3, 7, 5, dtype=torch.float64)
    assert torch.equal(timm_style(x), plain(x))
    if batchnorm == "alpha_beta":
        composite = rules.Composite({**rules.default_composite().rules_by_type,
                                     nn.BatchNorm2d: rules.AlphaBetaRule()})
    else:
        composite = rules.default_composite(batchnorm)
    ours = lrp(timm_style, x, target=1, composite=composite)
    ref = lrp(plain, x, target=1, composite=composite)
    assert (ours - ref).abs().max() <= TOL_REF * ref.abs().max()


def test_pass_through_layers_in_a_row_pass_relevance() -> None:
    """Dropout then Tanh: the relevance at the Tanh's output reaches the
    Dropout's input unchanged (hand-written reference). The Captum way keeps
    Captum 0.9's numbers, where the Dropout's hook sees the Tanh's ordinary
    gradient (1 - tanh^2) instead."""
    m = _seeded(nn.Sequential(nn.Linear(5, 6), nn.Dropout(), nn.Tanh(), nn.Linear(6, 3)))
    x = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        a = m[0](x)
        t = torch.tanh(a)
        y = m[3](t)
    r_t = _z_step(m[3], t, _output_relevance(y, 0))
    ref = _z_step(m[0], x, r_t)
    ours = lrp(m, x, target=0)
    assert (ours - ref).abs().max() <= TOL_REF * ref.abs().max()
    captum_way = dataclasses.replace(rules.default_composite(), function_rules=False)
    theirs = captum.attr.LRP(m).attribute(x, target=0)
    assert (lrp(m, x, target=0, composite=captum_way) - theirs).abs().max() <= TOL_REF * theirs.abs().max()
    leaked = _z_step(m[0], x, r_t * (1 - t ** 2))
    assert (theirs - leaked).abs().max() <= TOL_REF * leaked.abs().max()


# ---------------------------------------------------------------------------
# LayerNorm, attention, shape ops, Embedding
# ---------------------------------------------------------------------------


def test_layernorm_rule_matches_reference() -> None:
    """LN-rule: the standard deviation detached, the epsilon rule on
    ``(x - mean x) / std * w + b``; with a Permute around it (shape ops:
    relevance follows the elements)."""
    m = _seeded(nn.Sequential(nn.Conv2d(2, 6, 1), Permute([0, 2, 3, 1]), nn.LayerNorm(6),
                              Permute([0, 3, 1, 2]), nn.Flatten(), nn.Linear(6 * 3 * 4, 2)))
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    ln = m[2]
    with torch.no_grad():
        a = m[0](x).permute(0, 2, 3, 1)
        normed = ln(a)
        y = m[5](normed.permute(0, 3, 1, 2).flatten(1))
    std = torch.sqrt(a.var(-1, unbiased=False, keepdim=True) + ln.eps)
    r_normed = _z_step(lambda t: m[5](t.permute(0, 3, 1, 2).flatten(1)), normed, _output_relevance(y, 1))
    r_a = _z_step(lambda t: (t - t.mean(-1, keepdim=True)) / std * ln.weight + ln.bias, a, r_normed)
    ref = _z_step(m[0], x, r_a.permute(0, 3, 1, 2))
    ours = lrp(m, x, target=1)
    assert (ours - ref).abs().max() <= TOL_REF * ref.abs().max()


@pytest.mark.parametrize("norm", ["torchvision", "timm"])
def test_layernorm2d_equals_permuted_layernorm(norm: str) -> None:
    """torchvision's and timm's LayerNorm2d (a channel LayerNorm on
    ``[B, C, H, W]``) get the LN-rule of the same permuted nn.LayerNorm."""
    layer_norm_2d = (torchvision.models.convnext.LayerNorm2d(6) if norm == "torchvision"
                     else timm.layers.LayerNorm2d(6))
    ours_model = _seeded(nn.Sequential(nn.Conv2d(2, 6, 1), layer_norm_2d, nn.Flatten(), nn.Linear(6 * 3 * 4, 2)))
    ref_model = nn.Sequential(nn.Conv2d(2, 6, 1), Permute([0, 2, 3, 1]), nn.LayerNorm(6, layer_norm_2d.eps),
                              Permute([0, 3, 1, 2]), nn.Flatten(), nn.Linear(6 * 3 * 4, 2)).double().eval()
    renamed = {"1": "2", "3": "5"}  # the LayerNorm's and the Linear's positions
    ref_model.load_state_dict({renamed.get(k.split(".")[0], k.split(".")[0]) + k[k.index("."):]: v
                               for k, v in ours_model.state_dict().items()})
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    assert torch.equal(ours_model(x), ref_model(x))
    ours, ref = lrp(ours_model, x, target=1), lrp(ref_model, x, target=1)
    assert (ours - ref).abs().max() <= TOL_REF * ref.abs().max()


class Attention(nn.Module):
    """[B, L, E] -> [B, 2]: self-attention and a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.fc = nn.Linear(6 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.fc(out.flatten(1))


def test_attention_rule_matches_reference() -> None:
    """AH-rule: the softmax weights A detached, the epsilon rule on the value
    path ``out_proj(A · v_proj(x))``; queries and keys take no relevance."""
    m = _seeded(Attention())
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    mha = m.attn
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

    def heads(t: Tensor) -> Tensor:  # [B, L, E] -> [B, H, L, E/H]
        return t.reshape(t.shape[0], t.shape[1], 2, 3).transpose(1, 2)

    with torch.no_grad():
        weights = torch.softmax(heads(F.linear(x, w_q, b_q)) @ heads(F.linear(x, w_k, b_k)).transpose(-1, -2)
                                / 3 ** 0.5, -1)
        out, _ = mha(x, x, x)
        y = m.fc(out.flatten(1))

    def value_path(t: Tensor) -> Tensor:
        mixed = (weights @ heads(F.linear(t, w_v, b_v))).transpose(1, 2).reshape(t.shape)
        return mha.out_proj(mixed)

    r_out = _z_step(lambda t: m.fc(t.flatten(1)), out, _output_relevance(y, 0))
    ref = _z_step(value_path, x, r_out)
    ours = lrp(m, x, target=0)
    assert (ours - ref).abs().max() <= 1e-10 * ref.abs().max()


class WrittenOutAttention(nn.Module):
    """[B, L, E] -> [B, 2]: single-head self-attention written with
    ``softmax`` and ``@`` / ``bmm`` (as timm's ``Attention`` without fused
    attention and Hugging Face's eager attention), or with
    ``scaled_dot_product_attention`` when ``fused``."""

    def __init__(self, fused: bool, bmm: bool = False) -> None:
        super().__init__()
        self.qkv, self.proj, self.fc = nn.Linear(6, 18), nn.Linear(6, 6), nn.Linear(24, 2)
        self.fused, self.bmm = fused, bmm

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.fused:
            mixed = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = (q @ k.transpose(-2, -1) / 6 ** 0.5).softmax(dim=-1)
            mixed = torch.bmm(weights, v) if self.bmm else weights @ v
        return self.fc((x + self.proj(mixed)).flatten(1))


@pytest.mark.parametrize("bmm", [False, True])
def test_written_out_attention_equals_the_fused_ah_rule(bmm: bool) -> None:
    """``softmax`` + ``@`` / ``bmm`` get the AH-rule that
    ``scaled_dot_product_attention`` gets: the same relevance."""
    fused = _seeded(WrittenOutAttention(fused=True))
    written = WrittenOutAttention(fused=False, bmm=bmm).double()
    written.load_state_dict(fused.state_dict())
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    ref = lrp(fused, x, target=1)
    ours = lrp(written, x, target=1)
    assert (ours - ref).abs().max() <= 1e-10 * ref.abs().max()


def test_timm_vit_written_out_attention_conserves() -> None:
    """timm's ViT with ``fused_attn`` off (softmax and ``@`` in its forward)
    conserves on its bias-free twin and equals the fused model's relevance
    (before this rule the written-out path was 8% off conservation)."""
    torch.manual_seed(0)
    model = _bias_free_twin(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
                                              img_size=32, patch_size=8, depth=2))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    composite = rules.default_composite(epsilon=TINY)
    fused = lrp(model, x, target=1, composite=composite)
    for block in model.blocks:
        block.attn.fused_attn = False
    written = lrp(model, x, target=1, composite=composite)
    with torch.no_grad():
        f = model(x)[:, 1]
    assert (written.sum((1, 2, 3)) - f).abs().max() <= TOL_CONSERVE * f.abs().max()
    assert (written - fused).abs().max() <= 1e-10 * fused.abs().max()


def test_a_softmax_output_is_refused() -> None:
    """A model ending in a softmax: its detached output would carry no
    relevance, so LRP asks for the logits."""
    class Probabilities(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x).softmax(dim=-1)

    with pytest.raises(ValueError, match="output is a softmax"):
        lrp(Probabilities().double(), torch.randn(2, 4, dtype=torch.float64), target=0,
            composite=rules.default_composite())


def test_attention_without_a_rule_is_named_before_any_compute() -> None:
    m = _seeded(Attention())
    m.attn = nn.MultiheadAttention(6, 2, batch_first=True, add_zero_attn=True).double().eval()
    calls = []
    m.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(NotImplementedError, match="model.attn: .*add_zero_attn"):
        lrp(m, torch.randn(1, 4, 6, dtype=torch.float64), target=0)
    assert not calls


def test_embedding_relevance_is_at_its_output() -> None:
    """The indices take no relevance: it stays at the embedding's output,
    where it sums to f(x) (no biases)."""
    m = nn.Sequential(nn.Embedding(10, 6), nn.Flatten(), nn.Linear(18, 3, bias=False)).double()
    ids = torch.tensor([[1, 2, 3], [4, 5, 9]])
    relevance = layer_lrp(m, ids, m[0], target=1, composite=rules.default_composite(epsilon=TINY))
    with torch.no_grad():
        f = m(ids)[:, 1]
    assert relevance.shape == (2, 3, 6)
    assert (relevance.sum((1, 2)) - f).abs().max() <= TOL_CONSERVE * f.abs().max()


def test_captum_drop_in_still_refuses_what_captum_refuses() -> None:
    with pytest.raises(TypeError, match="Hardswish"):
        fastattr.captum.LRP(_seeded(Gated())).attribute(torch.randn(1, 3, 8, 8, dtype=torch.float64), target=0)


# ---------------------------------------------------------------------------
# Conservation on torchvision and timm models
# ---------------------------------------------------------------------------


def _vit() -> nn.Module:
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                             hidden_dim=32, mlp_dim=64, num_classes=5)
    nn.init.normal_(m.heads.head.weight)  # zeros in torchvision: f(x) would be 0
    return m


MODELS: Dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=5),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=5),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=5),
    # DenseNet-121's, ConvNeXt-T's and Swin-T's blocks, fewer and narrower:
    # concatenations; depthwise convs, Permute + LayerNorm, LayerNorm2d, layer
    # scale (1, not 1e-6: the blocks must carry relevance), stochastic depth;
    # (shifted) window attention with its mask and position bias, patch merging.
    "densenet": lambda: torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                                    num_classes=5),
    "convnext": lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 2)], layer_scale=1.0,
                                 num_classes=5),
    "vit": _vit,
    "swin": lambda: torchvision.models.SwinTransformer([4, 4], 16, [2, 1], [2, 2], [2, 2], num_classes=5),
    "timm_resnet10t": lambda: timm.create_model("resnet10t", pretrained=False, num_classes=5),
    # BatchNormAct2d (its drop and act: two pass-through layers in a row), SiLU, SqueezeExcite
    "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=5),
}
NO_BATCHNORM = ("convnext", "vit", "swin")
PRE_ACTIVATION = ("densenet",)  # BatchNorm before the conv: nothing to fold it into (test below)
RULES: Dict[str, Any] = {
    "epsilon": rules.EpsilonRule(TINY), "zplus": rules.ZPlusRule(TINY),
    "gamma": rules.GammaRule(0.25, epsilon=TINY), "alpha1beta0": rules.Alpha1_Beta0_Rule(epsilon=TINY),
    # Zennit's sign-split rules (multi-term rules)
    "zennit_gamma": rules.GeneralizedGammaRule(0.25, TINY), "alpha2beta1": rules.AlphaBetaRule(2.0, 1.0, TINY),
}
# Captum's gamma and alpha1-beta0 rules assume non-negative inputs (after a
# ReLU): MobileNetV3's and EfficientNet's depthwise convolutions (9 inputs
# each, one on the last 1x1 maps) take Hardswish / SiLU outputs, which are
# negative too, and there the rules' denominators cross 0 and the ratios
# explode (relevances up to 1e14..1e45 |f(x)| here: float64 cannot hold the
# cancellation). Zennit's GeneralizedGammaRule and AlphaBetaRule split the
# input's sign for such layers; they are checked on every model.
NOT_CONSERVING = {(m, r) for m in ("mobilenet_v3_small", "efficientnet_b0", "timm_efficientnet_b0")
                  for r in ("gamma", "alpha1beta0")}
# Where the sign-split rules' denominators are 0 (z+: no positive
# contribution; alpha-beta: no positive, or no negative one, which *adds*
# beta R), relevance is absorbed: measured, nearly all of it at the
# depthwise convolutions on the 1x1 and 2x2 maps (one to four inputs per
# output: often no contribution of one sign). AbsorbedRelevance accounts it.
ABSORBING = {(m, r) for m in ("mobilenet_v3_small", "efficientnet_b0", "timm_efficientnet_b0")
             for r in ("zplus", "alpha2beta1")} | {("densenet", "alpha2beta1")}


def _stabilized(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _term_input(what: Any, x: Tensor) -> Tensor:
    if isinstance(what, Tensor):
        return what.to(x).expand(x.shape)
    return {"positive": x.clamp(min=0), "negative": x.clamp(max=0), "ones": torch.ones_like(x), "all": x}[what]


def _multi_term_absorbed(rule: rules.MultiTermRule, layer: Callable[[Tensor, Dict[str, Tensor]], Tensor],
                         x: Tensor, params: Dict[str, Tensor], relevance: Tensor) -> Tensor:
    """``[B]``: what ``rule`` absorbs at a layer with input ``x`` ``[B, *I]``
    and output relevance ``[B, *O]``, from the forward values alone. A term
    ``k`` hands its inputs ``sign_k scale_k (mask_k R / d_g) . (z_k - z_k(0))``
    (Euler: ``sum_i x_i dz/dx_i`` of an affine layer is ``z(x) - z(0)``, the
    bias ``z_k(0)`` is absorbed); the rest of ``R`` is absorbed."""
    terms = rule.terms(params)
    with torch.no_grad():
        own = layer(x, dict(params))
        masks = {"none": torch.ones_like(own), "positive": (own > 0).to(own), "negative": (own < 0).to(own)}
        z = [layer(_term_input(t.input, x), {**params, **t.params}) for t in terms]
        bias = [layer(torch.zeros_like(x), {**params, **t.params}) for t in terms]
        groups: Dict[int, Tensor] = {}
        for t, zk in zip(terms, z):
            groups[t.group] = groups.get(t.group, 0) + t.sign * zk
        kept = sum(t.sign * t.scale * masks[t.output_mask] * relevance * (zk - bk)
                   / _stabilized(groups[t.group], rule.stabilizer) for t, zk, bk in zip(terms, z, bias))
    return (relevance - kept).flatten(1).sum(1)


class AbsorbedRelevance:
    """What the rules absorb, per example, as a fraction of the output: at
    each z-rule's output, ``R (1 - z' / stab(z'))`` (zero where ``z'`` is
    well above the stabilizer, all of ``R`` where ``z' = 0``), recorded by
    wrapping :class:`fastattr.attr.lrp_backward.Relevance`; at each
    multi-term rule's, :func:`_multi_term_absorbed`, recorded by wrapping
    :func:`fastattr.attr.lrp_rules.multi_term_relevance` (the relevance
    flowing back is relative to the explained output). For models whose
    layers keep the batch dimension first."""

    def __init__(self, monkeypatch: Any) -> None:
        from fastattr.attr import lrp_backward

        self.parts: list = []
        relevance = lrp_backward.Relevance
        forward, backward = relevance.forward, relevance.backward
        multi_term = rules.multi_term_relevance

        def recording_forward(ctx: Any, value: Tensor, through: Tensor, denom: Tensor) -> Tensor:
            ctx.through = through.detach()
            return forward(ctx, value, through, denom)

        def recording_backward(ctx: Any, grad: Tensor) -> Any:
            (denom,) = ctx.saved_tensors
            self.parts.append((grad * (1 - ctx.through / denom)).flatten(1).sum(1))
            return backward(ctx, grad)

        def recording_multi_term(rule: Any, layer: Any, x: Tensor, params: Any, grad: Tensor) -> Tensor:
            self.parts.append(_multi_term_absorbed(rule, layer, x, params, grad))
            return multi_term(rule, layer, x, params, grad)

        monkeypatch.setattr(relevance, "forward", staticmethod(recording_forward))
        monkeypatch.setattr(relevance, "backward", staticmethod(recording_backward))
        monkeypatch.setattr(rules, "multi_term_relevance", recording_multi_term)

    def fraction(self) -> Tensor:
        return torch.stack(self.parts).sum(0)


def _bias_free_twin(model: nn.Module) -> nn.Module:
    """``model`` in float64, eval mode, with every parameter that is not a
    weight or a layer scale zeroed (biases, ViT's class token and position
    embedding, Swin's position bias) and BatchNorm running means zeroed:
    only the stabilizer absorbs relevance."""
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(("weight", "layer_scale")):
                p.zero_()
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.zero_()
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return model


def _composite(rule: Any, batchnorm: str) -> rules.Composite:
    base = rules.default_composite(batchnorm, TINY)
    return rules.Composite({t: (rule if t in WEIGHTED else r) for t, r in base.rules_by_type.items()}, batchnorm)


def _snapshot(model: nn.Module) -> Dict[str, Any]:
    return {"state": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
            "modes": [m.training for m in model.modules()],
            "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                       "forward" in m.__dict__) for m in model.modules()]}


CONSERVATION_CASES = [pytest.param(name, rule, batchnorm, id=f"{name}-{rule}-{batchnorm}")
                      for name in MODELS for rule in RULES for batchnorm in ("rule", "fold")
                      if not (batchnorm == "fold" and name in NO_BATCHNORM + PRE_ACTIVATION)]


@pytest.mark.parametrize("name,rule,batchnorm", CONSERVATION_CASES)
def test_conserves_on_bias_free_twins(name: str, rule: str, batchnorm: str, monkeypatch: Any) -> None:
    """sum of relevance = f(x) minus what the rules absorb, in float64 to
    1e-6 of f(x), the caller's model untouched."""
    if (name, rule) in NOT_CONSERVING:
        pytest.skip("Captum's rule assumes inputs >= 0; these layers take negative ones (see NOT_CONSERVING)")
    torch.manual_seed(0)
    model = _bias_free_twin(MODELS[name]())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    before = _snapshot(model)
    absorbed = AbsorbedRelevance(monkeypatch) if (name, rule) in ABSORBING else None
    relevance, delta = lrp(model, x, target=1, composite=_composite(RULES[rule], batchnorm),
                           return_convergence_delta=True)
    with torch.no_grad():
        f = model(x)[:, 1]
    assert relevance.shape == x.shape
    if absorbed is not None:  # f(x) minus what the rules absorbed where a denominator is 0
        kept = f * (1 - absorbed.fraction())
        assert absorbed.fraction().abs().min() > 0.01, "no relevance absorbed: the model no longer tests this"
        assert (relevance.sum((1, 2, 3)) - kept).abs().max() <= TOL_CONSERVE * f.abs().max()
    else:
        assert (relevance.sum((1, 2, 3)) - f).abs().max() <= TOL_CONSERVE * f.abs().max()
        assert delta.abs().max() <= TOL_CONSERVE * f.abs().max()
    after = _snapshot(model)
    assert before["modes"] == after["modes"] and before["hooks"] == after["hooks"]
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])


def test_batchnorm_without_a_producing_layer_is_not_folded() -> None:
    """DenseNet's BatchNorms normalize a concatenation (BN-ReLU-conv), so
    ``batchnorm='fold'`` has no layer to fold them into (neither has Zennit's
    canonizer): a ValueError naming the first one, the model unchanged."""
    torch.manual_seed(0)
    model = _bias_free_twin(MODELS["densenet"]())
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"model\.features\.denseblock1\.denselayer1\.norm1: a BatchNorm folded"):
        lrp(model, torch.randn(1, 3, 32, 32, dtype=torch.float64), target=1, composite=_composite(RULES["epsilon"], "fold"))
    after = _snapshot(model)
    assert before["modes"] == after["modes"] and before["hooks"] == after["hooks"]
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])


_WITHOUT_CAPTUM = """
import sys
sys.modules["captum"] = None  # as if not installed: any import of it fails
import torch, torchvision
import fastattr
from fastattr.attr import lrp_rules as rules
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=5).double().eval()
x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
relevance = fastattr.lrp(model, x, target=1, composite=rules.default_composite(epsilon=1e-30))
assert not [name for name in sys.modules if name.startswith("captum.")]
torch.save(relevance, sys.argv[1])
"""


def test_residual_rules_work_without_captum(tmp_path: Any) -> None:
    """The function rules (ResNet-18's residual additions) need no Captum:
    in a process where it cannot be imported, the same relevances."""
    import subprocess
    import sys

    out = tmp_path / "relevance.pt"
    subprocess.run([sys.executable, "-c", _WITHOUT_CAPTUM, str(out)], check=True, timeout=300)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = lrp(model, x, target=1, composite=rules.default_composite(epsilon=1e-30))
    theirs = torch.load(out)
    assert (theirs - ref).abs().max() <= 1e-10 * ref.abs().max()  # thread counts may round differently


class MeanPooled(nn.Module):
    """[B, 3, 6, 6] -> [B, 2]: a conv, ``x.mean((2, 3))``, a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def test_functional_pooling_matches_reference() -> None:
    """``x.mean(dims)`` gets the epsilon rule, as nn.AdaptiveAvgPool2d does."""
    m = _seeded(MeanPooled())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        a = m.conv(x)
        pooled = a.mean((2, 3))
        y = m.fc(pooled)
    r_pooled = _z_step(m.fc, pooled, _output_relevance(y, 1))
    ref = _z_step(m.conv, x, _z_step(lambda t: t.mean((2, 3)), a, r_pooled))
    ours = lrp(m, x, target=1)
    assert (ours - ref).abs().max() <= TOL_REF * ref.abs().max()
