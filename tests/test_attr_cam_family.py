"""The CAM family (fastattr/attr/cam_family.py): each method against a
plain-torch reference of its formula on a tiny conv net, against
pytorch-grad-cam 1.5.7 on ResNet-18, a small ViT and ViT-B/16, chunking,
odd shapes, bad input and the caller's model left as it was."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fastattr.attr import cam_family as cf

GRADIENT_METHODS = ("grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam")
ALL_METHODS = GRADIENT_METHODS + ("eigen_cam", "score_cam", "ablation_cam")
CHUNKED_METHODS = GRADIENT_METHODS + ("score_cam", "ablation_cam")
PGC_CLASSES = {
    "grad_cam_plus_plus": "GradCAMPlusPlus", "xgrad_cam": "XGradCAM", "hires_cam": "HiResCAM",
    "layer_cam": "LayerCAM", "eigen_cam": "EigenCAM", "score_cam": "ScoreCAM", "ablation_cam": "AblationCAM",
}
# pytorch-grad-cam rounds to float32 at its resize (and its Score-/Ablation-CAM
# weights are float32 even for a float64 model): compared in float64, the
# maps (values in [0, 1]) differ by that rounding only.
PGC_ATOL = 64 * torch.finfo(torch.float32).eps


# ---------------------------------------------------------------- models


class TinyConvNet(nn.Module):
    """conv -> relu -> conv (the explained layer, with negative values) -> relu -> pool -> linear."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


class TokenNet(nn.Module):
    """Swin-like: patches as tokens ``[B, h, w, C]``, a LayerNorm on them (the explained layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.embed(x).permute(0, 2, 3, 1))
        return self.head(torch.tanh(tokens).mean(dim=(1, 2)))


def _tiny() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet().double().eval()


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=7).double().eval()


def _vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5)
    nn.init.normal_(model.heads.head.weight)  # torchvision zeroes the head
    nn.init.normal_(model.heads.head.bias)
    return model.double().eval()


def _images(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g, dtype=torch.float64)


def _call(name: str, model: nn.Module, x: torch.Tensor, layer: nn.Module, target, **kw) -> torch.Tensor:
    return getattr(cf, name)(model, x, layer, target, **kw)


# ---------------------------------------------------------------- plain references


def _acts_and_grads(model: nn.Module, x: torch.Tensor, layer: nn.Module, target: list):
    """Per example: the layer's output and d model(x)[target] / d output, with a hook and autograd.grad."""
    acts, grads = [], []
    for b in range(x.shape[0]):
        saved = {}
        handle = layer.register_forward_hook(lambda m, i, o: saved.__setitem__("a", o))
        out = model(x[b : b + 1])
        handle.remove()
        (g,) = torch.autograd.grad(out[0, target[b]], saved["a"])
        acts.append(saved["a"].detach()[0])
        grads.append(g[0])
    return torch.stack(acts), torch.stack(grads)


def _reference_gradient_map(name: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """One example's map from its ``[C, h, w]`` activations and gradients, channel by channel."""
    cam = torch.zeros(a.shape[1:], dtype=a.dtype)
    for c in range(a.shape[0]):
        if name == "grad_cam_plus_plus":
            alpha = g[c] ** 2 / (2 * g[c] ** 2 + a[c].sum() * g[c] ** 3 + 1e-6)
            alpha[g[c] == 0] = 0
            cam += (g[c].clamp(min=0) * alpha).sum() * a[c]
        elif name == "xgrad_cam":
            cam += (g[c] * a[c]).sum() / (a[c].sum() + 1e-7) * a[c]
        elif name == "hires_cam":
            cam += g[c] * a[c]
        elif name == "layer_cam":
            cam += g[c].clamp(min=0) * a[c]
    return cam


def _reference_score_cam(model, x, layer, target):
    with torch.no_grad():
        acts, _ = _acts_and_grads_nograd(model, x, layer)
        maps = []
        for b in range(x.shape[0]):
            scores = []
            for c in range(acts.shape[1]):
                up = F.interpolate(acts[b, c][None, None], size=x.shape[2:], mode="bilinear", align_corners=True)
                mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
                scores.append(model(x[b : b + 1] * mask)[0, target[b]])
            w = torch.softmax(torch.stack(scores), 0)
            maps.append(sum(w[c] * acts[b, c] for c in range(acts.shape[1])))
    return torch.stack(maps)


def _acts_and_grads_nograd(model, x, layer):
    saved = {}
    handle = layer.register_forward_hook(lambda m, i, o: saved.__setitem__("a", o.clone()))
    out = model(x)
    handle.remove()
    return saved["a"], out


def _reference_ablation_cam(model, x, layer, target):
    """Every (example, channel) through the whole model from its input, the
    channel set to 0 (layer minimum 0) or to the minimum - 1e7."""
    with torch.no_grad():
        acts, out = _acts_and_grads_nograd(model, x, layer)
        maps = []
        for b in range(x.shape[0]):
            low = acts[b].min()
            value = 0.0 if low == 0 else low - 1e7
            s = out[b, target[b]]
            cam = torch.zeros(acts.shape[2:], dtype=acts.dtype)
            for c in range(acts.shape[1]):
                def ablate(m, i, o, c=c):
                    o = o.clone()
                    o[:, c] = value
                    return o
                handle = layer.register_forward_hook(ablate)
                s_c = model(x[b : b + 1])[0, target[b]]
                handle.remove()
                cam += (s - s_c) / s * acts[b, c]
            maps.append(cam)
    return torch.stack(maps)


def _reference_eigen_cam(acts: torch.Tensor) -> torch.Tensor:
    maps = []
    for a in acts:
        p = a.reshape(a.shape[0], -1).T
        p = p - p.mean(0)
        _, _, vh = torch.linalg.svd(p)
        maps.append((p @ vh[0]).reshape(a.shape[1:]))
    return torch.stack(maps)


# ---------------------------------------------------------------- formulas on a tiny net


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("shape", [(1, 9, 9), (3, 8, 13)])
def test_gradient_methods_equal_their_formula(name, shape):
    model, x = _tiny(), _images(*shape)
    target = [2, 0, 1][: shape[0]]
    a, g = _acts_and_grads(model, x, model.conv2, target)
    expected = torch.stack([_reference_gradient_map(name, a[b], g[b]) for b in range(shape[0])])
    got = _call(name, model, x, model.conv2, target)
    assert got.shape == (shape[0], shape[1], shape[2])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer_name", ["conv2", "relu2"])  # negative values / minimum 0
def test_score_and_ablation_cam_equal_their_formula(layer_name):
    model, x = _tiny(), _images(2, 7, 10)
    layer = getattr(model, layer_name)
    target = torch.tensor([1, 2])
    torch.testing.assert_close(cf.score_cam(model, x, layer, target),
                               _reference_score_cam(model, x, layer, [1, 2]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cf.ablation_cam(model, x, layer, target),
                               _reference_ablation_cam(model, x, layer, [1, 2]), rtol=1e-9, atol=1e-9)


def test_eigen_cam_is_the_first_principal_projection():
    model, x = _tiny(), _images(3, 8, 11)
    acts, _ = _acts_and_grads_nograd(model, x, model.conv2)
    got = cf.eigen_cam(model, x, model.conv2)
    expected = _reference_eigen_cam(acts)
    for g, e in zip(got, expected):  # a singular vector's sign is a convention: numpy's, checked below
        sign = 1.0 if (g * e).sum() >= 0 else -1.0
        torch.testing.assert_close(g, sign * e, rtol=1e-9, atol=1e-12)


def test_post_processing_is_relu_scale_resize_scale():
    model, x = _tiny(), _images(2, 6, 9)
    raw = cf.hires_cam(model, x, model.conv2, 1)
    both = cf.hires_cam(model, x, model.conv2, 1, upsample_to_input=True, scale=True)
    for r, m in zip(raw, both):
        r = r.clamp(min=0)
        r = (r - r.min()) / (1e-7 + (r - r.min()).max())
        # a hand-written bilinear resize with half-pixel centres, as OpenCV's
        up = torch.from_numpy(_bilinear_half_pixel(r.numpy(), *x.shape[2:]))
        up = (up - up.min()) / (1e-7 + (up - up.min()).max())
        torch.testing.assert_close(m, up, rtol=1e-10, atol=1e-12)
    assert both.min() >= 0 and both.max() <= 1


def _bilinear_half_pixel(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    def axis(n_in: int, n_out: int):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo
    (y0, y1, fy), (x0, x1, fx) = axis(img.shape[0], out_h), axis(img.shape[1], out_w)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def test_default_target_is_the_top_class():
    model, x = _tiny(), _images(3, 8, 8)
    top = model(x).argmax(1)
    for name in ("layer_cam", "score_cam", "ablation_cam"):
        torch.testing.assert_close(_call(name, model, x, model.conv2, None),
                                   _call(name, model, x, model.conv2, top.tolist()))


# ---------------------------------------------------------------- pytorch-grad-cam 1.5.7


def _pgc_map(name, model, x, layer, target, reshape_transform=None, **kw):
    os.environ.setdefault("TQDM_DISABLE", "1")
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    targets = None if target is None else [ClassifierOutputTarget(t) for t in target]
    with getattr(pgc, PGC_CLASSES[name])(model, [layer], reshape_transform=reshape_transform, **kw) as cam:
        return torch.from_numpy(cam(x, targets)).double()


@pytest.mark.parametrize("name", ALL_METHODS)
def test_equals_pytorch_grad_cam_on_resnet18(name):
    model, x = _resnet(), _images(2, 64, 48)  # non-square
    got = _call(name, model, x, model.layer4[-1], [3, 5], upsample_to_input=True, scale=True)
    expected = _pgc_map(name, model, x, model.layer4[-1], [3, 5])  # Ablation-CAM at its batch_size=32
    assert got.shape == expected.shape == (2, 64, 48)
    torch.testing.assert_close(got, expected, rtol=0, atol=PGC_ATOL)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_equals_pytorch_grad_cam_on_vit(name):
    model, x = _vit(), _images(3, 32, 32)
    layer = model.encoder.layers[-1].ln_1
    transform = cf.vit_reshape_transform(4, 4)
    kw = {}
    if name == "ablation_cam":
        from pytorch_grad_cam.ablation_layer import AblationLayerVit
        # the layer has negative values: pytorch-grad-cam's ablation value
        # then depends on the position in its batch, except at batch_size=1
        kw = dict(ablation_layer=AblationLayerVit(), batch_size=1)
    got = _call(name, model, x, layer, None, upsample_to_input=True, scale=True, reshape_transform=transform)
    expected = _pgc_map(name, model, x, layer, None, reshape_transform=transform, **kw)
    torch.testing.assert_close(got, expected, rtol=0, atol=PGC_ATOL)


@pytest.fixture(scope="module")
def vit_b16() -> nn.Module:
    """torchvision's ViT-B/16 (the real architecture: 12 blocks, 768 wide,
    224 pixels), random weights, float64, eval. Only the explained layer's
    parameters require grad: the maps do not depend on that, and it spares
    pytorch-grad-cam's backward into the 11 blocks before the layer (2.3 s
    against 0.8 s a call on this machine, one thread)."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zeroes the head
    model = model.double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.encoder.layers[-1].ln_1.requires_grad_(True)
    return model


@pytest.mark.parametrize("name", GRADIENT_METHODS + ("eigen_cam",))
def test_equals_pytorch_grad_cam_on_vit_b16(name, vit_b16):
    """pytorch-grad-cam's README ViT example on torchvision's ViT-B/16: the
    last block's ``ln_1``, tokens reshaped to 14x14 without the class token.

    Score-CAM and Ablation-CAM are left to the small ViT above: each runs
    the model once per channel of the layer, 768 here, and one ViT-B/16
    forward of one image costs 0.7 s in float64 on this machine (one
    thread), so pytorch-grad-cam alone would take ~9 min per method; their
    ViT token handling (the reshape, AblationLayerVit) is the same at any
    width."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    model, x = vit_b16, _images(1, 224, 224, seed=3)
    layer = model.encoder.layers[-1].ln_1
    transform = cf.vit_reshape_transform(14, 14)
    target = None if name == "eigen_cam" else [3]
    got = _call(name, model, x, layer, target, upsample_to_input=True, scale=True, reshape_transform=transform)
    # Eigen-CAM's numpy SVD fights torch's spinning OpenMP threads for the
    # two cores (3.6 s against 0.03 s for one [196, 768] SVD): one BLAS thread
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        expected = _pgc_map(name, model, x, layer, target, reshape_transform=transform)
    assert got.shape == expected.shape == (1, 224, 224)
    assert expected.std() > 0.05  # a map, not a constant
    torch.testing.assert_close(got, expected, rtol=0, atol=PGC_ATOL)


@pytest.mark.parametrize("name", ("hires_cam", "score_cam", "ablation_cam"))
def test_swin_token_layout_equals_pytorch_grad_cam(name):
    torch.manual_seed(0)
    model, x = TokenNet().double().eval(), _images(1, 16, 12)  # batch 1, non-square
    kw = {}
    if name == "ablation_cam":
        from pytorch_grad_cam.ablation_layer import AblationLayerVit
        kw = dict(ablation_layer=AblationLayerVit(), batch_size=1)
    got = _call(name, model, x, model.norm, [2], upsample_to_input=True, scale=True,
                reshape_transform=cf.swin_reshape_transform)
    expected = _pgc_map(name, model, x, model.norm, [2], reshape_transform=cf.swin_reshape_transform, **kw)
    torch.testing.assert_close(got, expected, rtol=0, atol=PGC_ATOL)


@pytest.mark.parametrize("net", ["tiny", "resnet18"])
def test_float32_model_matches_float64_to_float32_rounding(net):
    model, x = (_tiny(), _images(2, 9, 8)) if net == "tiny" else (_resnet(), _images(2, 64, 64))
    layer = model.conv2 if net == "tiny" else model.layer4[-1]
    narrow_model = copy.deepcopy(model).float()
    narrow_layer = narrow_model.conv2 if net == "tiny" else narrow_model.layer4[-1]
    # Score-CAM's float32 path is the tiny net's; on ResNet-18 it is 1024 forwards
    for name in ALL_METHODS if net == "tiny" else tuple(m for m in ALL_METHODS if m != "score_cam"):
        wide = _call(name, model, x, layer, [1, 2], upsample_to_input=True, scale=True)
        narrow = _call(name, narrow_model, x.float(), narrow_layer, [1, 2], upsample_to_input=True, scale=True)
        assert narrow.dtype == torch.float32
        torch.testing.assert_close(narrow.double(), wide, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- reshape transforms


def test_vit_reshape_transform_is_pytorch_grad_cams():
    tokens = torch.randn(2, 1 + 12, 5)
    expected = tokens[:, 1:, :].reshape(2, 3, 4, 5).transpose(2, 3).transpose(1, 2)
    assert torch.equal(cf.vit_reshape_transform(3, 4)(tokens), expected)
    assert torch.equal(cf.vit_reshape_transform(3, 4, prefix_tokens=0)(tokens[:, 1:]), expected)
    with pytest.raises(ValueError, match="reshape_transform: expected ViT tokens"):
        cf.vit_reshape_transform(4, 4)(tokens)


def test_swin_reshape_transform():
    tokens = torch.randn(2, 3, 4, 5)
    assert torch.equal(cf.swin_reshape_transform(tokens), tokens.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="reshape_transform: expected Swin tokens"):
        cf.swin_reshape_transform(torch.randn(2, 12, 5))


# ---------------------------------------------------------------- chunking


@pytest.mark.parametrize("name", CHUNKED_METHODS)
def test_chunk_rows_do_not_change_the_result(name):
    model, x = _tiny(), _images(3, 8, 9)
    whole = _call(name, model, x, model.conv2, [0, 1, 2])
    for kw in (dict(chunk_rows=1), dict(chunk_rows=4), dict(memory_budget=1)):
        torch.testing.assert_close(_call(name, model, x, model.conv2, [0, 1, 2], **kw), whole,
                                   rtol=1e-12, atol=1e-12)


def test_score_cam_never_runs_more_rows_than_a_chunk():
    model, x = _tiny(), _images(2, 8, 8)
    seen = []
    handle = model.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        cf.score_cam(model, x, model.conv2, 1, chunk_rows=3)
    finally:
        handle.remove()
    assert seen[0] == 2 and max(seen[1:]) == 3 and sum(seen[1:]) == 2 * 5  # capture, then B*C rows


def test_score_cam_evaluates_all_zero_channels_once_per_example():
    model, x = _tiny(), _images(2, 8, 8)
    with torch.no_grad():
        model.conv2.bias[[1, 3]] = -1e3  # channels 1 and 3 of relu2 are all 0
    rows = []
    handle = model.conv1.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        got = cf.score_cam(model, x, model.relu2, [0, 2])
    finally:
        handle.remove()
    assert sum(rows[1:]) == 2 * (5 - 2) + 2  # live channels, plus one zero-masked row per example
    torch.testing.assert_close(got, _reference_score_cam(model, x, model.relu2, [0, 2]), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- the caller's objects


@pytest.mark.parametrize("name", ALL_METHODS)
def test_callers_model_and_inputs_unchanged(name):
    model = _tiny().train()
    model.conv1.weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x = _images(2, 8, 8).requires_grad_()
    x_before = x.detach().clone()
    out = _call(name, model, x, model.conv2, 1)
    assert model.training and all(m.training for m in model.modules())
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(x.detach(), x_before) and x.requires_grad and x.grad is None
    assert not out.requires_grad


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ALL_METHODS)
def test_layer_outside_the_model(name):
    model, x = _tiny(), _images(1, 8, 8)
    with pytest.raises(ValueError, match="layer: this Conv2d is not a submodule of model"):
        _call(name, model, x, nn.Conv2d(3, 3, 1), 0)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_token_layer_without_reshape_transform(name):
    model = _vit()
    with pytest.raises(ValueError, match=r"layer: its output is \(2, 17, 32\).*reshape_transform"):
        _call(name, model, _images(2, 32, 32), model.encoder.layers[-1].ln_1, 0)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_reshape_transform_giving_no_grid(name):
    model = _tiny()
    with pytest.raises(ValueError, match=r"reshape_transform: expected it to return \[2, C, h, w\]"):
        _call(name, model, _images(2, 8, 8), model.conv2, 0, reshape_transform=lambda t: t.flatten(2))


def test_other_bad_arguments_name_themselves():
    model, x = _tiny(), _images(2, 8, 8)
    with pytest.raises(TypeError, match="scale: expected a bool"):
        cf.layer_cam(model, x, model.conv2, 0, scale=1)
    with pytest.raises(TypeError, match="reshape_transform: expected a callable"):
        cf.layer_cam(model, x, model.conv2, 0, reshape_transform="vit")
    with pytest.raises(ValueError, match=r"inputs: expected an image batch \[B, C, H, W\]"):
        cf.score_cam(model, x[0], model.conv2, 0)
    with pytest.raises(TypeError, match="inputs: expected one tensor"):
        cf.score_cam(model, (x,), model.conv2, 0)
    with pytest.raises(ValueError, match="chunk_rows: expected an integer >= 1"):
        cf.ablation_cam(model, x, model.conv2, 0, chunk_rows=0)
    with pytest.raises(ValueError, match="target: expected 2 entries"):
        cf.score_cam(model, x, model.conv2, [0, 1, 2])
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        cf.eigen_cam(lambda t: t, x, model.conv2)
