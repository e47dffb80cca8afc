"""fastattr's DeepLIFT (traced rules, :mod:`fastattr.attr.deeplift_trace`)
on the architectures people use: summation-to-delta in float64, hand-written
references for each rule, and Captum's numbers where Captum is right.

Measured (max |sum(attr) - (f(x) - f(r))| / |f(x) - f(r)|, float64, this
file's models): ResNet-18 1.5e-15 (with Captum's hooks 4e-1: the stem ReLU's
rule saw MaxPool's ordinary gradient), MobileNetV3-small 5.5e-15,
EfficientNet-B0 8.9e-15, the functional model ~1e-15; DenseNet, ConvNeXt,
timm EfficientNet-B0 and Swin ~1e-14 (Swin 2.0e-3 before its windows, folded
into the batch dimension, were followed: its window attention's softmax and
products kept their ordinary gradient).
"""
from __future__ import annotations

from typing import Callable, List

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import captum.attr
from fastattr.attr.deeplift import deeplift
from fastattr.attr.deeplift_trace import PairedRules
from test_attr_guided import assert_unchanged, model_state, relu_case

COMPLETENESS_RTOL = 1e-6


def _calibrated(model: nn.Module, size: int = 32) -> nn.Module:
    """``model`` in float64, eval mode, its batch norms' running statistics
    set from a random batch (random weights with the default (0, 1) stats
    make a torchvision net's output nearly constant, so its f(x) - f(r) would
    be ~1e-10 and the check meaningless)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # the cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, size, size))
    return model.double().eval()


def _assert_complete(model: nn.Module, x: Tensor, base: Tensor, target: List[int], what: str) -> Tensor:
    """sum(attributions) == f(x)[t] - f(base)[t] per example, to
    ``COMPLETENESS_RTOL`` of the gap; returns the attributions."""
    attr = deeplift(model, x, base, target)
    with torch.no_grad():
        rows = torch.arange(x.shape[0])
        gap = model(x)[rows, target] - model(base)[rows, target]
    total = attr.reshape(x.shape[0], -1).sum(1)
    assert gap.abs().min() > 1e-3, f"{what}: f(x) - f(r) too small to test: {gap}"
    err = ((total - gap).abs() / gap.abs()).max().item()
    assert err < COMPLETENESS_RTOL, f"{what}: sum(attr) misses f(x) - f(r) by {err:.3g} (relative)"
    return attr


def _images(batch: int, size: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------------
# torchvision models
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_models_are_complete(name: str) -> None:
    model = _calibrated(getattr(torchvision.models, name)(weights=None, num_classes=5))
    x, base = _images(2, 32, 1), _images(2, 32, 2) * 0.1
    before = model_state(model)
    _assert_complete(model, x, base, [1, 3], name)
    assert_unchanged(before, model)


def _small_densenet() -> nn.Module:
    return torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                                       num_classes=5)


def _small_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig
    # layer_scale 0.5, not 1e-6: with 1e-6 the blocks' nonlinear branches
    # would hardly reach the output, and the check would test the skip path
    return torchvision.models.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)],
                                       stochastic_depth_prob=0.0, layer_scale=0.5, num_classes=5)


def _timm_efficientnet() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("efficientnet_b0", pretrained=False, num_classes=5)


@pytest.mark.parametrize("build", [_small_densenet, _small_convnext, _timm_efficientnet],
                         ids=["densenet", "convnext", "timm_efficientnet_b0"])
def test_densenet_convnext_timm_efficientnet_are_complete(build: Callable[[], nn.Module]) -> None:
    """Concatenations (DenseNet), channels-last layer norm and GELU
    (ConvNeXt), timm's ``BatchNormAct2d`` and squeeze-excitation gates."""
    model = _calibrated(build())
    x, base = _images(2, 32, 1), _images(2, 32, 2) * 0.1
    before = model_state(model)
    _assert_complete(model, x, base, [1, 3], build.__name__)
    assert_unchanged(before, model)


def test_torchvision_swin_is_complete() -> None:
    """Swin: the window partition folds the windows into the batch dimension
    (``[2n, H, W, C] -> [2n * windows, ws * ws, C]``), so attention's
    ``q @ k^T``, softmax and ``@ v`` see a leading dimension of ``2n *
    windows``; 40 pixels make 10x10 patches, padded to 12x12 (F.pad), and
    every second block shifts (torch.roll, the -100 mask); the relative
    position bias is added to the scores."""
    torch.manual_seed(13)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                              window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=5)
    nn.init.normal_(swin.head.weight)  # trunc-normal(0.02): f(x) - f(r) would be ~1e-2
    model = swin.double().eval()
    before = model_state(model)
    _assert_complete(model, _images(2, 40, 1), _images(2, 40, 2) * 0.1, [1, 3], "swin")
    assert_unchanged(before, model)


class WindowAttention(nn.Module):
    """[B, 8, 6] -> [B, 3]: self-attention within two windows of four
    tokens, the windows folded into the batch dimension (``folded``) or
    taken as slices of it, then GELU and a linear head: the same function."""

    def __init__(self, folded: bool) -> None:
        super().__init__()
        self.qkv, self.head = nn.Linear(6, 18), nn.Linear(48, 3)
        self.folded = folded

    def attend(self, t: Tensor) -> Tensor:
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v

    def forward(self, x: Tensor) -> Tensor:
        if self.folded:
            h = self.attend(x.reshape(-1, 4, 6)).reshape(x.shape)
        else:
            h = torch.cat((self.attend(x[:, :4]), self.attend(x[:, 4:])), dim=1)
        return self.head(F.gelu(h).flatten(1))


def test_windows_folded_into_the_batch_get_the_rules_of_unfolded_ones() -> None:
    """The folded model is explained as its unfolded twin (each rule sees
    the same pairs), and both are complete."""
    torch.manual_seed(14)
    folded, unfolded = WindowAttention(True).double(), WindowAttention(False).double()
    unfolded.load_state_dict(folded.state_dict())
    x, base = torch.randn(3, 8, 6, dtype=torch.float64), 0.3 * torch.randn(3, 8, 6, dtype=torch.float64)
    ours = _assert_complete(folded, x, base, [0, 1, 2], "folded windows")
    twin = _assert_complete(unfolded, x, base, [0, 1, 2], "unfolded windows")
    torch.testing.assert_close(ours, twin, rtol=1e-10, atol=1e-12 * twin.abs().max().item())


def test_pair_layout_follows_reshapes_permutes_and_indexing() -> None:
    """Where the pairs of ``rows`` paired rows go, call by call: folded into
    the leading dimension, moved to dimension 1 and back by a permute and an
    index, and lost when a call reorders or cuts that dimension. A tensor
    whose leading dimension is a multiple of ``rows`` without holding the
    pairs there (sequence-first ``[L, rows, E]``) is not taken as paired."""
    rows = 4
    x = torch.randn(rows, 6, 6, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(24, 8, dtype=torch.float64)
    mode = PairedRules(rows, 1e-10)
    with mode:
        windows = x.view(rows, 3, 2, 3, 2, 8).permute(0, 1, 3, 2, 4, 5).reshape(rows * 9, 4, 8)
        qkv = F.linear(windows, weight).reshape(rows * 9, 4, 3, 2, 4).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        scores = q @ k.transpose(-2, -1)
        first = qkv[0, :, 1]
        merged = windows.reshape(rows * 9 * 4, 8)
        sequence_first = x.flatten(1, 2).transpose(0, 1)  # [36, rows, 8]
        rolled, cut, split = windows.roll(1, 0), windows[: rows * 4], qkv.flatten(0, 1)
        unsqueezed = windows * 1.0
        unsqueezed.unsqueeze_(0)  # in place: what was recorded of it no longer holds
    layout = mode.layout
    assert [layout.dim(t) for t in (windows, qkv, q, k, scores, first, merged, sequence_first)] == [
        0, 1, 0, 0, 0, 0, 0, 1]
    assert mode.paired(scores) and not mode.paired(sequence_first)
    assert [layout.dim(t) for t in (rolled, cut, split, unsqueezed)] == [None] * 4


def test_resnet18_captum_hooks_are_not_complete() -> None:
    """The gap the traced rules close: with Captum's hooks the stem ReLU's
    rule rescales MaxPool's *ordinary* gradient (ReLU's output hook runs
    before MaxPool's input hook), so the sum misses f(x) - f(r)."""
    model = _calibrated(torchvision.models.resnet18(weights=None, num_classes=5))
    x, base = _images(2, 32, 1), _images(2, 32, 2) * 0.1
    _, delta = deeplift(model, x, base, [1, 3], return_convergence_delta=True, captum_hooks=True)
    assert delta.abs().max() > 1e-3


def test_resnet18_batch_one_and_non_square() -> None:
    model = _calibrated(torchvision.models.resnet18(weights=None, num_classes=5))
    x = torch.randn(1, 3, 40, 56, dtype=torch.float64)
    _assert_complete(model, x, torch.zeros_like(x), [4], "resnet18 [1, 3, 40, 56]")


def test_torchvision_vit_is_complete() -> None:
    """GELU, layer norm, nn.MultiheadAttention (its softmax and q k^T, w v
    products inside ``F.multi_head_attention_forward``)."""
    torch.manual_seed(9)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64, num_classes=5)
    nn.init.normal_(vit.heads.head.weight)  # zero-initialised: every output would be constant
    model = vit.double().eval()
    before = model_state(model)
    _assert_complete(model, _images(2, 32, 1), _images(2, 32, 2) * 0.1, [1, 3], "vit")
    assert_unchanged(before, model)


class MHABlock(nn.Module):
    """[B, L, 8] -> [B, 3] (or [L, B, 8] with ``batch_first=False``):
    ``nn.MultiheadAttention`` returning its weights or not, masked or not."""

    def __init__(self, need_weights: bool, masked: bool, batch_first: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.fc = nn.Linear(32, 3)
        self.need_weights, self.batch_first = need_weights, batch_first
        mask = torch.zeros(4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf"))
        self.register_buffer("mask", mask if masked else None)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.attn(x, x, x, need_weights=self.need_weights, attn_mask=self.mask)
        return self.fc((out if self.batch_first else out.transpose(0, 1)).flatten(1))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_returning_weights_is_complete(masked: bool, batch_first: bool) -> None:
    """With ``need_weights=True`` the attention runs as ``bmm`` / ``baddbmm``
    and softmax over heads folded into the batch (``[2n * heads, L, S]``):
    complete, and equal to the ``need_weights=False`` path's attributions
    (before: 0.94 relative off completeness)."""
    torch.manual_seed(3)
    plain = MHABlock(False, masked, batch_first).double().eval()
    weighted = MHABlock(True, masked, batch_first).double().eval()
    weighted.load_state_dict(plain.state_dict())
    x, base = torch.randn(3, 4, 8, dtype=torch.float64), 0.3 * torch.randn(3, 4, 8, dtype=torch.float64)
    if not batch_first:
        # DeepLIFT pairs rows along dim 0: the model takes [B, L, E] and transposes itself
        plain_model = nn.Sequential(_Transpose(), plain)
        weighted_model = nn.Sequential(_Transpose(), weighted)
    else:
        plain_model, weighted_model = plain, weighted
    ref = _assert_complete(plain_model, x, base, [0, 1, 2], "need_weights=False")
    ours = _assert_complete(weighted_model, x, base, [0, 1, 2], "need_weights=True")
    assert (ours - ref).abs().max() <= 1e-10 * ref.abs().max()


class _Transpose(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(0, 1)


def test_timm_vit_fused_and_plain_attention_are_complete() -> None:
    """timm's attention: ``F.scaled_dot_product_attention``, or ``q @ k^T``,
    softmax, ``@ v`` written out."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(10)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              num_classes=5, depth=2).double().eval()
    x, base = _images(2, 32, 3), _images(2, 32, 4) * 0.2
    fused = _assert_complete(model, x, base, [0, 4], "timm vit (fused attention)")
    for block in model.blocks:
        block.attn.fused_attn = False
    plain = _assert_complete(model, x, base, [0, 4], "timm vit (plain attention)")
    torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-12)


class NormSoftmaxNet(nn.Module):
    """[B, 5, 8] -> [B, 3]: layer norm, self-attention weights by
    ``softmax(x x^T)``, weighted sum, tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        weights = torch.softmax(self.proj(h) @ h.transpose(1, 2), dim=-1)
        return self.head((weights @ h).mean(1)).tanh()


def test_layer_norm_softmax_and_matmul_are_complete() -> None:
    torch.manual_seed(11)
    model = NormSoftmaxNet().double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    _assert_complete(model, x, torch.randn_like(x) * 0.5, [0, 1, 2], "norm/softmax net")


def test_softmax_rule_by_hand() -> None:
    """One softmax: the decomposition ``exp(x - m) * (1 / sum)`` written out,
    each part's multiplier a secant or a Shapley mean."""
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)).double()
    x, base = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    ours = deeplift(model, x, base, 1)
    with torch.no_grad():
        z_x, z_r = model[0](x), model[0](base)
        m = torch.max(z_x.amax(1, keepdim=True), z_r.amax(1, keepdim=True))
        e_x, e_r = (z_x - m).exp(), (z_r - m).exp()
        s_x, s_r = e_x.sum(1, keepdim=True), e_r.sum(1, keepdim=True)
        i_x, i_r = 1 / s_x, 1 / s_r
        exp_secant = (e_x - e_r) / (z_x - z_r)
        inv_secant = (i_x - i_r) / (s_x - s_r)
        onehot = torch.zeros(3, dtype=torch.float64)
        onehot[1] = 1
        # y = e * i: dy/de = mean(i) (target column only), dy/di = mean(e[target])
        grad_e = onehot * (i_x + i_r) / 2 + inv_secant * (e_x[:, 1:2] + e_r[:, 1:2]) / 2
        hand = (grad_e * exp_secant) @ model[0].weight * (x - base)
    torch.testing.assert_close(ours, hand, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# Functional nonlinearities: each against a hand-written DeepLIFT
# ---------------------------------------------------------------------------

FUNCTIONS: dict = {
    "torch.relu": torch.relu,
    "F.relu": F.relu,
    "F.relu_inplace": lambda t: F.relu(t, inplace=True),
    "Tensor.relu_": lambda t: t.relu_(),
    "F.gelu": F.gelu,
    "F.gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "torch.sigmoid": torch.sigmoid,
    "Tensor.tanh": lambda t: t.tanh(),
    "F.silu": F.silu,
    "F.hardswish": F.hardswish,
    "F.hardsigmoid": F.hardsigmoid,
    "F.relu6": F.relu6,
    "F.leaky_relu": lambda t: F.leaky_relu(t, 0.1),
    "F.elu": F.elu,
    "F.softplus": F.softplus,
    "F.mish": F.mish,
}


class FunctionalMLP(nn.Module):
    """[B, 6] -> [B, 3]: linear, ``act`` (a plain function), linear."""

    def __init__(self, act: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.act = act
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x) * 1.0))  # * 1.0: an in-place act must not write into fc1's output


def _hand_deeplift(model: FunctionalMLP, x: Tensor, base: Tensor, target: int, act: Callable[[Tensor], Tensor]
                   ) -> Tensor:
    """The rescale rule written out: ((w2[t] * (act(h_x) - act(h_r)) / (h_x - h_r)) @ W1) * (x - r)."""
    with torch.no_grad():
        h_x, h_r = model.fc1(x), model.fc1(base)
        multiplier = (act(h_x.clone()) - act(h_r.clone())) / (h_x - h_r)
        return ((model.fc2.weight[target] * multiplier) @ model.fc1.weight) * (x - base)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functional_nonlinearity_gets_the_rescale_rule(name: str) -> None:
    torch.manual_seed(3)
    act = FUNCTIONS[name]
    model = FunctionalMLP(act).double()
    x, base = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64) * 0.3
    ours = deeplift(model, x, base, 2)
    torch.testing.assert_close(ours, _hand_deeplift(model, x, base, 2, act), rtol=1e-12, atol=1e-14)


class GatedConvNet(nn.Module):
    """[B, 3, 12, 10] -> [B, 4]: functional relu -> max pool (overlapping
    windows), a squeeze-excitation gate ``x * sigmoid(fc(mean(x)))``, gelu, tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(torch.relu(self.conv(x)), 3, stride=2, padding=1)
        gate = torch.sigmoid(self.fc(h.mean((2, 3))))[:, :, None, None]
        h = F.gelu(h * gate)
        return self.head(h.mean((2, 3)).tanh())


def test_functional_gated_net_is_complete() -> None:
    torch.manual_seed(4)
    model = GatedConvNet().double()
    x = torch.randn(3, 3, 12, 10, dtype=torch.float64)
    _assert_complete(model, x, torch.randn_like(x) * 0.2, [0, 1, 3], "gated net")


class Gate(nn.Module):
    """[B, 5] -> [B]: ``(W1 x) * sigmoid(W2 x)`` summed, one product of two activations."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 4), nn.Linear(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        return (self.a(x) * torch.sigmoid(self.b(x))).sum(1)


def test_product_gets_the_shapley_split() -> None:
    """d(ab) = mean(b) da + mean(a) db, the means over (input, reference),
    written out by hand."""
    torch.manual_seed(5)
    model = Gate().double()
    x, base = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    ours = deeplift(model, x, base)
    with torch.no_grad():
        a_x, a_r = model.a(x), model.a(base)
        z_x, z_r = model.b(x), model.b(base)
        s_x, s_r = torch.sigmoid(z_x), torch.sigmoid(z_r)
        m_a = (s_x + s_r) / 2
        m_z = (a_x + a_r) / 2 * (s_x - s_r) / (z_x - z_r)
        hand = (m_a @ model.a.weight + m_z @ model.b.weight) * (x - base)
    torch.testing.assert_close(ours, hand, rtol=1e-12, atol=1e-14)
    gap = model(x) - model(base)
    torch.testing.assert_close(ours.sum(1), gap.detach(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# Reused modules; Captum where Captum is right
# ---------------------------------------------------------------------------


class ReusedAct(nn.Module):
    """[B, 6] -> [B, 3]: one nn.ReLU module called three times (``shared``)
    or three nn.ReLU modules (``shared=False``), otherwise the same net."""

    def __init__(self, shared: bool) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(6, 6) for _ in range(3))
        self.head = nn.Linear(6, 3)
        self.acts = nn.ModuleList([nn.ReLU()] * 3 if shared else [nn.ReLU() for _ in range(3)])

    def forward(self, x: Tensor) -> Tensor:
        for fc, act in zip(self.fcs, self.acts):
            x = act(fc(x))
        return self.head(x)


def test_reused_module_equals_distinct_modules_in_captum() -> None:
    """Each call of a reused nn.ReLU has its own pairing: the same numbers
    as Captum gives the twin net with one module per call."""
    torch.manual_seed(6)
    shared = ReusedAct(shared=True).double()
    distinct = ReusedAct(shared=False).double()
    distinct.load_state_dict(shared.state_dict())
    x, base = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64) * 0.3
    ours = deeplift(shared, x, base, 1)
    theirs = captum.attr.DeepLift(distinct).attribute(x, base, target=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-15)


@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks", "ignore:Input Tensor .* did not")
@pytest.mark.parametrize("name", ["mlp", "scalar"])
def test_plain_module_nets_equal_captum(name: str) -> None:
    """nn modules each called once, no module feeding a hooked module, no
    product of two activations: the traced rules give Captum's numbers."""
    case = relu_case(name, torch.float64, 3)
    ours = deeplift(case.model, case.inputs, None, case.target, case.afa)
    theirs = captum.attr.DeepLift(case.model).attribute(case.inputs, None, target=case.target,
                                                        additional_forward_args=case.afa)
    ours, theirs = (t if isinstance(t, tuple) else (t,) for t in (ours, theirs))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_product_of_activations_is_complete_where_captum_is_not() -> None:
    """``h * (1 + s * tanh(...))`` multiplies two activations: the Shapley
    split conserves, Captum's ordinary product gradient does not."""
    case = relu_case("two_input", torch.float64, 3)
    base = tuple(torch.randn_like(x) * 0.3 for x in case.inputs)
    _, delta = deeplift(case.model, case.inputs, base, case.target, case.afa, return_convergence_delta=True)
    _, captum_delta = deeplift(case.model, case.inputs, base, case.target, case.afa,
                               return_convergence_delta=True, captum_hooks=True)
    scale = captum_delta.abs().max()
    assert scale > 1e-4
    assert delta.abs().max() < 1e-12 * max(1.0, scale.item())


def test_equal_input_and_reference_entries_keep_completeness() -> None:
    """Where x == r (|x - r| < eps) the row's own derivative is taken: the
    result stays finite and complete."""
    torch.manual_seed(7)
    model = GatedConvNet().double()
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    base = x.clone()
    base[:, 0] = 0.0  # channels 1, 2 equal the input
    attr = _assert_complete(model, x, base, [2, 0], "half-equal baseline")
    assert torch.isfinite(attr).all()
    assert (attr[:, 1:] == 0).all()


def test_bad_captum_hooks() -> None:
    with pytest.raises(TypeError, match="captum_hooks: expected a bool"):
        deeplift(GatedConvNet().double(), torch.zeros(1, 3, 12, 10, dtype=torch.float64), captum_hooks="yes")


def test_inputs_and_model_unchanged() -> None:
    torch.manual_seed(8)
    model = GatedConvNet().double()
    model.register_forward_hook(lambda m, i, o: None)
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    x_before, before = x.clone(), model_state(model)
    deeplift(model, x, None, [0, 1])
    assert torch.equal(x, x_before)
    assert_unchanged(before, model)
