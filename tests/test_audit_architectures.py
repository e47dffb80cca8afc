"""`fastattr audit` end to end on the architectures people audit: torchvision
ResNet-18, MobileNetV3, EfficientNet-B0 and a ViT, a timm model and a
Hugging Face model (random weights, small images, a few examples each, every
method the library offers that can explain the model), and a 1-channel
model fed from a folder of grey images. What must hold whatever the model:
the run completes, every applicable method has finite metrics for every
example, the methods that cannot explain the model are named with a reason,
the verdict covers every method, and the caller's model file is unchanged."""
import json
import os
import sys

import numpy as np
import pytest

from fastattr.cli import main

PIL = pytest.importorskip("PIL.Image")
torchvision = pytest.importorskip("torchvision")

FACTORIES = '''
import torch
import torchvision
from torch import nn


def _seeded(build):
    """The model with seeded random weights, in eval mode, its BatchNorm
    statistics set from one random batch: with the default statistics a
    random EfficientNet's logits are ~1e-14 and every explanation underflows."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build()
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
            channels = first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
            with torch.no_grad():
                model.train()(torch.rand(8, channels, 32, 32))
        return model.eval()


def resnet18(num_classes=3):
    return _seeded(lambda: torchvision.models.resnet18(num_classes=num_classes))


def mobilenet_v3_small(num_classes=3):
    return _seeded(lambda: torchvision.models.mobilenet_v3_small(num_classes=num_classes))


def efficientnet_b0(num_classes=3):
    return _seeded(lambda: torchvision.models.efficientnet_b0(num_classes=num_classes))


def vit(image_size=32, num_classes=3):
    def build():
        model = torchvision.models.VisionTransformer(
            image_size=image_size, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
            num_classes=num_classes)
        nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zeroes the head: every gradient 0
        return model
    return _seeded(build)


def timm_model(name="resnet10t", num_classes=3):
    import timm
    return _seeded(lambda: timm.create_model(name, pretrained=False, num_classes=num_classes))


def hf_vit(num_labels=3):
    from transformers import ViTConfig, ViTForImageClassification
    config = ViTConfig(image_size=32, patch_size=8, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                       intermediate_size=37, num_labels=num_labels)
    return _seeded(lambda: ViTForImageClassification(config))


def grey_cnn(num_classes=2):
    return _seeded(lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)))
'''

# The cheapest settings that still exercise every metric: the test is about
# running on the architecture, not about the metrics' precision.
CHEAP = ["--metric-option", "sensitivity.n_samples=2", "--metric-option", "infidelity.n_samples=2",
         "--metric-option", "lipschitz.n_samples=2", "--metric-option", "deletion.n_steps=4",
         "--metric-option", "insertion.n_steps=4", "--metric-option", "pgd.n_steps=2",
         "--method-option", "integrated_gradients.n_steps=4", "--method-option", "smoothgrad.n_samples=2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    (root / "arch_models.py").write_text(FACTORIES)
    rng = np.random.default_rng(0)
    for mode, folder in (("RGB", "rgb"), ("L", "grey")):
        for c in ("cat", "dog"):
            os.makedirs(root / folder / c)
            for i in range(3):  # sizes differ: the audit must be told to resize
                h, w = 36 + 4 * i, 40 - 2 * i
                shape = (h, w, 3) if mode == "RGB" else (h, w)
                PIL.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / folder / c / f"{i}.png")
    sys.path.insert(0, str(root))
    old = dict(os.environ)
    os.environ["FASTATTR_CACHE_DIR"] = str(root / "cache")
    yield root
    sys.path.remove(str(root))
    os.environ.clear()
    os.environ.update(old)


def run_audit(env, tmp_path, *args):
    out = tmp_path / "out"
    code = main(["audit", "--quiet", "--out", str(out), "--batch-size", "2", *map(str, args), *CHEAP])
    assert code == 0
    with open(out / "summary.json") as f:
        return json.load(f)


def check_summary(summary, n_examples):
    methods = summary["configuration"]["methods"]
    assert methods, "no method ran"
    assert summary["n_examples"] == n_examples
    for m in methods:
        for name, stats in summary["methods"][m].items():
            assert stats["n"] + stats["n_missing"] == n_examples
            # A ReLU'd CAM map can be all zeros: its rank similarity is undefined (NaN), said as missing.
            # explanation_error is a method's own estimate: IG with rtol has one, SmoothGrad with
            # two pairs or more (CHEAP gives it one), the others none.
            undefined_allowed = name.startswith("fragility") or (
                name == "randomization_spearman" and m in ("grad_cam", "guided_grad_cam")) or (
                name == "explanation_error" and m != "integrated_gradients")
            if not undefined_allowed:
                assert stats["n_missing"] == 0, (m, name)
    verdict = summary["verdict"]
    assert set(verdict["methods"]) == set(methods) | set(verdict["not_applicable"])
    for m in methods:
        assert verdict["methods"][m]["sanity"] in ("pass", "fail", "not checked") and verdict["methods"][m]["reason"]
    assert verdict["recommendation"]
    return methods


ARCHITECTURES = [
    ("arch_models:resnet18", []),
    ("arch_models:mobilenet_v3_small", []),
    ("arch_models:efficientnet_b0", []),
    ("arch_models:vit", ["--model-arg", "image_size=32"]),
    ("arch_models:timm_model", ["--model-arg", "name=resnet10t"]),
]


@pytest.mark.parametrize("factory,extra", ARCHITECTURES, ids=[a[0].split(":")[1] for a in ARCHITECTURES])
def test_real_architecture_end_to_end(env, tmp_path, factory, extra):
    if "timm" in factory:
        pytest.importorskip("timm")
    summary = run_audit(env, tmp_path, "--model", factory, "--model-arg", "num_classes=2", *extra,
                        "--data", env / "rgb", "--resize", "32", "--mean", "0.485,0.456,0.406",
                        "--std", "0.229,0.224,0.225", "--limit", 4, "--methods", "all")
    methods = check_summary(summary, 4)
    skipped = summary["verdict"]["not_applicable"]
    assert set(methods) | set(skipped) == set(summary["configuration"]["methods_requested"])
    assert all(isinstance(reason, str) and reason for reason in skipped.values())
    assert "grad_cam" in methods
    if "vit" in factory:  # its only [B, C, H, W] output is the patch embedding; a named layer would be used
        assert summary["configuration"]["auto_layer"] == "conv_proj"
    if "resnet" in factory:
        assert summary["configuration"]["auto_layer"] == "layer3"  # layer4 is 1x1 at 32x32
        assert summary["configuration"]["metric_settings"]["randomization_spearman"]["steps"] == [
            "fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]


def test_hugging_face_model_output_object(env, tmp_path):
    pytest.importorskip("transformers")
    summary = run_audit(env, tmp_path, "--model", "arch_models:hf_vit", "--model-arg", "num_labels=2",
                        "--data", env / "rgb", "--resize", "32", "--limit", 2,
                        "--methods", "saliency,integrated_gradients")
    check_summary(summary, 2)
    assert summary["configuration"]["model"]["output_key"] == "logits"


def test_one_channel_model_from_a_grey_folder(env, tmp_path):
    summary = run_audit(env, tmp_path, "--model", "arch_models:grey_cnn", "--data", env / "grey",
                        "--resize", "16", "--limit", 4)
    check_summary(summary, 4)
    assert "centre crop 16x16" in summary["configuration"]["data"]["description"]
    assert summary["configuration"]["metric_settings"]["randomization_spearman"]["steps"]
