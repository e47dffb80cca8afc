"""The audit's model and data inputs: --model-arg, --weights forms,
--output-key, input transforms (resize / crop / channels / normalization as
the model's first layer), stratified --limit; each against plain torch,
PIL or torchvision code, and the error messages naming their options."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastattr
from fastattr.cli.config import AuditError
from fastattr.cli.data import decode_image, load_dataset, stratified_subset
from fastattr.cli.models import SelectedOutput, class_scores, load_model, parse_model_args, state_hash
from fastattr.cli.transforms import (
    InputTransform, resized, transform_from_options, transform_from_weights,
    with_normalization,
)

FACTORIES = '''
import torch
from torch import nn

def net(classes=10, hidden=(4,), name="x", scale=1.0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(12, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], classes))
    m.name, m.scale = name, scale
    return m

def strict(**kwargs):
    return nn.Linear(2, 2, **kwargs)  # refuses unknown keywords with a TypeError
'''


@pytest.fixture()
def factories(tmp_path, monkeypatch):
    (tmp_path / "input_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("input_factories", None)
    yield __import__("input_factories")
    sys.modules.pop("input_factories", None)


def raises(option, fn, *args, **kwargs):
    """The AuditError's message, after checking it names ``option``."""
    with pytest.raises(AuditError) as info:
        fn(*args, **kwargs)
    assert option in str(info.value), str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------
# --model-arg
# ---------------------------------------------------------------------------


def test_model_args_are_literals_or_text():
    got = parse_model_args(["a=3", "b=0.5", "c=True", "d=None", "e=(1, 2)", "f='q'", "g=resnet18", "h=", "i=a=b"])
    assert got == {"a": 3, "b": 0.5, "c": True, "d": None, "e": (1, 2), "f": "q", "g": "resnet18", "h": "",
                   "i": "a=b"}
    assert type(got["a"]) is int and type(got["c"]) is bool


@pytest.mark.parametrize("items", [["noequals"], ["=3"], ["k=1", "k=2"], ["2k=1"]])
def test_malformed_model_args(items):
    raises("--model-arg", parse_model_args, items)


def test_factory_gets_model_args_and_records_them(factories):
    model, identity = load_model("input_factories:net", None, False, ["classes=3", "hidden=(5,)", "name=big"])
    reference = factories.net(classes=3, hidden=(5,), name="big")
    assert model[-1].out_features == 3 and model[1].out_features == 5 and model.name == "big"
    assert identity["model_args"] == {"classes": "3", "hidden": "(5,)", "name": "'big'"}
    assert identity["sha256"] == state_hash(reference) and not model.training
    _, plain = load_model("input_factories:net", None, False)
    assert "model_args" not in plain and plain["sha256"] != identity["sha256"]


def test_model_args_the_factory_does_not_take(factories):
    e = raises("--model-arg", load_model, "input_factories:net", None, False, ["colour=1"])
    assert "colour" in e
    e = raises("--model-arg", load_model, "input_factories:strict", None, False, ["colour=1"])
    assert "TypeError" in e
    raises("--model-arg", load_model, None, None, False, ["a=1"])


# ---------------------------------------------------------------------------
# --weights
# ---------------------------------------------------------------------------


def _changed_state(factories):
    model = factories.net()
    state = {k: v + 1.0 for k, v in model.state_dict().items()}
    return state


def _assert_loaded(model, state):
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_weights_safetensors(factories, tmp_path):
    from safetensors.torch import save_file

    state = _changed_state(factories)
    save_file(state, str(tmp_path / "w.safetensors"))
    model, identity = load_model("input_factories:net", str(tmp_path / "w.safetensors"), False)
    _assert_loaded(model, state)
    assert identity["weights"] == {"format": "safetensors", "adapted": []}


def test_weights_without_safetensors_installed(factories, tmp_path, monkeypatch):
    (tmp_path / "w.safetensors").write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    e = raises("--weights", load_model, "input_factories:net", str(tmp_path / "w.safetensors"), False)
    assert "pip install safetensors" in e


@pytest.mark.parametrize("form,adapted", [
    ("plain", []),
    ("state_dict", ["the checkpoint's 'state_dict' entry"]),
    ("model", ["the checkpoint's 'model' entry"]),
    ("ddp", ["keys without their 'module.' prefix"]),
    ("ddp_in_state_dict", ["the checkpoint's 'state_dict' entry", "keys without their 'module.' prefix"]),
])
def test_weights_checkpoint_forms(factories, tmp_path, form, adapted):
    state = _changed_state(factories)
    ddp = {"module." + k: v for k, v in state.items()}
    saved = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}},
             "model": {"model": state, "step": 7}, "ddp": ddp, "ddp_in_state_dict": {"state_dict": ddp}}[form]
    torch.save(saved, tmp_path / "w.pt")
    model, identity = load_model("input_factories:net", str(tmp_path / "w.pt"), False)
    _assert_loaded(model, state)
    assert identity["weights"] == {"format": "torch", "adapted": adapted}


def test_module_prefix_kept_when_the_model_has_it(tmp_path, factories):
    """A model whose own keys start with 'module.' loads them as they are."""
    (tmp_path / "wrapped_factory.py").write_text(
        "from torch import nn\ndef wrapped():\n    m = nn.Module()\n    m.module = nn.Linear(2, 2)\n    return m\n")
    model, _ = load_model("wrapped_factory:wrapped", None, False)
    state = {k: torch.full_like(v, 2.0) for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    loaded, identity = load_model("wrapped_factory:wrapped", str(tmp_path / "w.pt"), False)
    _assert_loaded(loaded, state)
    assert identity["weights"]["adapted"] == []


def test_weights_that_do_not_fit(factories, tmp_path):
    state = _changed_state(factories)
    torch.save({"module." + k: v[..., :1] for k, v in state.items()}, tmp_path / "bad.pt")
    e = raises("--weights", load_model, "input_factories:net", str(tmp_path / "bad.pt"), False)
    assert "does not fit" in e and "size mismatch" in e and "'module.' prefix" in e
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    e = raises("--weights", load_model, "input_factories:net", str(tmp_path / "nostate.pt"), False)
    assert "'state_dict'" in e and "epoch" in e
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    raises("--weights", load_model, "input_factories:net", str(tmp_path / "junk.safetensors"), False)


# ---------------------------------------------------------------------------
# --output-key
# ---------------------------------------------------------------------------


class DictModel(nn.Module):
    def __init__(self, key="logits"):
        super().__init__()
        self.key = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    def forward(self, x):
        scores = self.body(x)
        return {"features": x.flatten(1), self.key: scores, "extra": (scores, 1)}


class TupleModel(DictModel):
    def forward(self, x):
        return self.body(x), x.flatten(1)


class Holder:
    def __init__(self, scores):
        self.scores = scores
        self._private = 1


class ObjectModel(DictModel):
    def forward(self, x):
        return Holder(self.body(x))


def _input_gradient(fn, x, target):
    """∂ fn(x)[i, target[i]] / ∂x, by hand."""
    x = x.clone().requires_grad_(True)
    fn(x).gather(1, target[:, None]).sum().backward()
    return x.grad


def test_tensor_output_is_returned_unchanged():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    assert class_scores(model, torch.rand(1, 3, 2, 2), None) is model
    raises("--output-key", class_scores, model, torch.rand(1, 3, 2, 2), "logits")


@pytest.mark.parametrize("model,key,pick", [
    (DictModel(), None, lambda m, x: m.body(x)),
    (DictModel("scores"), "scores", lambda m, x: m.body(x)),
    (DictModel(), "features", lambda m, x: x.flatten(1)),
    (TupleModel(), "0", lambda m, x: m.body(x)),
    (TupleModel(), "-2", lambda m, x: m.body(x)),
    (ObjectModel(), "scores", lambda m, x: m.body(x)),
])
def test_chosen_output(model, key, pick):
    x = torch.rand(4, 3, 2, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = class_scores(model, x[:1], key)
    assert isinstance(wrapped, SelectedOutput) and wrapped.model is model
    assert torch.equal(wrapped(x), pick(model, x))
    target = torch.tensor([0, 1, 2, 0])
    if key != "features":
        got = fastattr.attr.saliency(wrapped, x, target=target, abs=False)
        torch.testing.assert_close(got, _input_gradient(lambda t: pick(model, t), x, target))
    # the user's model is the child, untouched, with its names under "model."
    assert [n for n, _ in wrapped.named_parameters()] == ["model." + n for n, _ in model.named_parameters()]
    assert all(a is b for a, b in zip(wrapped.parameters(), model.parameters()))
    assert dict(wrapped.named_modules())["model.body.1"] is model.body[1]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_output_without_scores_lists_what_it_holds():
    x = torch.rand(1, 3, 2, 2)
    e = raises("--output-key", class_scores, DictModel("scores"), x, None)
    assert "'features': Tensor [1, 12]" in e and "'scores': Tensor [1, 3]" in e and "'extra': tuple of 2" in e
    e = raises("--output-key", class_scores, TupleModel(), x, None)
    assert "tuple of 2" in e and "[0] Tensor [1, 3]" in e and "[1] Tensor [1, 12]" in e
    e = raises("--output-key", class_scores, ObjectModel(), x, None)
    assert "Holder" in e and "scores: Tensor [1, 3]" in e and "_private" not in e
    assert "0 to 1" in raises("--output-key", class_scores, TupleModel(), x, "2")
    raises("--output-key", class_scores, TupleModel(), x, "first")
    assert "'nope'" in raises("--output-key", class_scores, DictModel(), x, "nope")
    assert "tuple of 2" in raises("--output-key", class_scores, DictModel(), x, "extra")
    raises("--output-key", class_scores, ObjectModel(), x, "nope")


def test_a_model_that_cannot_take_the_example():
    assert "[5]" in raises("--data", class_scores, nn.Linear(3, 2), torch.rand(1, 5), None)


def test_hugging_face_model_output():
    from transformers import ViTConfig, ViTForImageClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = ViTForImageClassification(ViTConfig(
            image_size=16, patch_size=8, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
            intermediate_size=37, num_labels=3)).eval()
    x = torch.rand(2, 3, 16, 16)
    wrapped = class_scores(vit, x[:1], None)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), vit(x).logits, rtol=0, atol=0)
    target = torch.tensor([2, 0])
    got = fastattr.attr.saliency(wrapped, x, target=target, abs=False)
    torch.testing.assert_close(got, _input_gradient(lambda t: vit(t).logits, x, target))
    assert {n for n, _ in wrapped.named_parameters()} == {"model." + n for n, _ in vit.named_parameters()}
    e = raises("--output-key", class_scores, vit, x[:1], "hidden_states")
    assert "'logits': Tensor [1, 3]" in e


# ---------------------------------------------------------------------------
# Transforms: settings
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,option", [
    (dict(resize=0), "--resize"), (dict(resize=(3,)), "--resize"), (dict(crop=4), "--crop"),
    (dict(crop=(0, 2)), "--crop"), (dict(channels=2), "--channels"), (dict(std=(0.5, 0.0, 1.0)), "--std"),
    (dict(mean=(float("nan"),)), "--mean"), (dict(mean=(0.1, 0.2), channels=3), "--mean"),
    (dict(resize=8, crop=(9, 4)), "--crop"), (dict(resize=(8, 8), crop=(4, 9)), "--crop"),
])
def test_bad_transform_settings(kwargs, option):
    raises(option, InputTransform, **kwargs)


def test_transform_from_command_line_values():
    assert transform_from_options() is None
    assert transform_from_options(resize=(7,), channels=1, mean=[0.5]) == \
        InputTransform(resize=7, channels=1, mean=(0.5,))
    assert transform_from_options(resize=(20, 30), crop=(10,)) == InputTransform(resize=(20, 30), crop=(10, 10))


def test_transform_from_torchvision_weights_reads_without_downloading(monkeypatch):
    import torch.hub

    def no_download(*a, **k):
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    for name in ("ResNet18_Weights.IMAGENET1K_V1", "ResNet18_Weights.DEFAULT"):
        t = transform_from_weights(name)
        assert (t.resize, t.crop, t.channels, t.interpolation) == (256, (224, 224), 3, "bilinear")
        assert t.mean == (0.485, 0.456, 0.406) and t.std == (0.229, 0.224, 0.225) and t.source == name
    t = transform_from_options(resize=(64,), crop=(48,), weights="ResNet18_Weights.DEFAULT")
    assert (t.resize, t.crop, t.mean) == (64, (48, 48), (0.485, 0.456, 0.406))
    t = transform_from_options(resize=(64, 80), weights="ResNet18_Weights.DEFAULT")
    assert (t.resize, t.crop) == ((64, 80), None)


@pytest.mark.parametrize("name", ["ResNet18_Weights.NOPE", "Nope_Weights.DEFAULT", "resnet18"])
def test_unknown_weights_name(name):
    assert "ResNet18_Weights.IMAGENET1K_V1" in raises("--transforms", transform_from_weights, name)


def test_transforms_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    assert "torchvision" in raises("--transforms", transform_from_weights, "ResNet18_Weights.DEFAULT")


# ---------------------------------------------------------------------------
# Transforms: resizing against torchvision
# ---------------------------------------------------------------------------


def _torchvision_eval(x, resize, crop, interpolation="bilinear"):
    from torchvision.transforms import InterpolationMode, v2

    steps = [v2.Resize(resize, interpolation=InterpolationMode(interpolation), antialias=True)]
    if crop is not None:
        steps.append(v2.CenterCrop(crop))
    return v2.Compose(steps)(x)


@pytest.mark.parametrize("shape,transform,resize,crop", [
    ((2, 3, 37, 50), InputTransform(resize=16), 16, 16),
    ((1, 3, 50, 37), InputTransform(resize=20, crop=(11, 14)), 20, (11, 14)),
    ((2, 1, 31, 31), InputTransform(resize=(12, 20)), (12, 20), None),
    ((1, 3, 40, 30), InputTransform(resize=(23, 18), crop=(20, 7)), (23, 18), (20, 7)),  # anchors x.5
    ((1, 3, 9, 13), InputTransform(resize=24), 24, 24),  # upscaling
    ((1, 3, 16, 16), InputTransform(resize=16), 16, 16),  # nothing to do
])
def test_resize_and_crop_match_torchvision(shape, transform, resize, crop):
    x = torch.rand(*shape)
    torch.testing.assert_close(resized(x, transform), _torchvision_eval(x, resize, crop), rtol=0, atol=0)


def test_bicubic_and_nearest_match_torchvision():
    x = torch.rand(1, 3, 33, 21)
    bicubic = resized(x, InputTransform(resize=12, interpolation="bicubic"))
    torch.testing.assert_close(bicubic, _torchvision_eval(x, 12, 12, "bicubic").clamp(0, 1), rtol=0, atol=0)
    assert bicubic.min() >= 0 and bicubic.max() <= 1
    nearest = resized(x, InputTransform(resize=(10, 7), interpolation="nearest"))
    torch.testing.assert_close(nearest, _torchvision_eval(x, (10, 7), None, "nearest"), rtol=0, atol=0)


def test_crop_larger_than_the_image():
    assert "--resize" in raises("--crop", resized, torch.rand(1, 3, 8, 8), InputTransform(crop=(9, 4)))


# ---------------------------------------------------------------------------
# Normalization as the model's first layer, with every method
# ---------------------------------------------------------------------------

MEAN, STD = (0.4, 0.5, 0.3), (0.2, 0.25, 0.5)
NORMALIZE = InputTransform(mean=MEAN, std=STD)


def _cnn():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3),
                             nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 5)).eval()


def _by_hand(x):
    mean, std = torch.tensor(MEAN).reshape(1, 3, 1, 1), torch.tensor(STD).reshape(1, 3, 1, 1)
    return (x - mean) / std, std


def test_no_normalization_leaves_the_model():
    model = _cnn()
    assert with_normalization(model, None) is model
    assert with_normalization(model, InputTransform(resize=8)) is model


def test_normalized_is_the_model_on_normalized_input():
    model, x = _cnn(), torch.rand(3, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = with_normalization(model, NORMALIZE)
    xn, _ = _by_hand(x)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(xn))
    assert wrapped.model is model and not wrapped.training
    assert all(a is b for a, b in zip(wrapped.model.parameters(), model.parameters()))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    one = with_normalization(model, InputTransform(mean=(0.5,)))
    with torch.no_grad():
        torch.testing.assert_close(one(x), model(x - 0.5))


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "deconvolution"])
def test_gradient_methods_follow_the_chain_rule(method):
    """∂f/∂x = ∂f/∂x_n / std for x_n = (x - mean) / std (the ReLU rules act after it)."""
    model, x, target = _cnn(), torch.rand(3, 3, 8, 8), torch.tensor([0, 3, 4])
    xn, std = _by_hand(x)
    fn = getattr(fastattr.attr, method)
    kwargs = {"abs": False} if method == "saliency" else {}
    got = fn(with_normalization(model, NORMALIZE), x, target=target, **kwargs)
    torch.testing.assert_close(got, fn(model, xn, target=target, **kwargs) / std)


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
def test_path_methods_equal_the_model_at_normalized_points(method):
    """(x - b) * ∂f/∂x = (x_n - b_n) * ∂f/∂x_n: the same attributions at
    the normalized input and baseline."""
    model, x, target = _cnn(), torch.rand(3, 3, 8, 8), torch.tensor([0, 3, 4])
    xn, _ = _by_hand(x)
    baseline_n, _ = _by_hand(torch.zeros(1, 3, 8, 8))
    fn = getattr(fastattr.attr, method)
    got = fn(with_normalization(model, NORMALIZE), x, baselines=torch.zeros(1, 3, 8, 8), target=target)
    torch.testing.assert_close(got, fn(model, xn, baselines=baseline_n, target=target), rtol=1e-4, atol=1e-6)


def test_lrp_relevance_passes_the_normalization():
    model, x, target = _cnn(), torch.rand(3, 3, 8, 8), torch.tensor([0, 3, 4])
    xn, _ = _by_hand(x)
    got = fastattr.attr.lrp(with_normalization(model, NORMALIZE), x, target=target)
    torch.testing.assert_close(got, fastattr.attr.lrp(model, xn, target=target))


def test_grad_cam_at_a_layer_of_the_wrapped_model():
    model, x, target = _cnn(), torch.rand(3, 3, 8, 8), torch.tensor([0, 3, 4])
    xn, _ = _by_hand(x)
    wrapped = with_normalization(model, NORMALIZE)
    got = fastattr.attr.grad_cam(wrapped, x, layer=model[3], target=target)
    torch.testing.assert_close(got, fastattr.attr.grad_cam(model, xn, layer=model[3], target=target))
    assert dict(wrapped.named_modules())["model.3"] is model[3]


def test_resnet_with_normalization():
    """A real architecture (BatchNorm, residual additions): saliency and IG."""
    from torchvision.models import resnet18

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = resnet18(weights=None, num_classes=4).eval()
    x, target = torch.rand(2, 3, 32, 32), torch.tensor([1, 3])
    xn, std = _by_hand(x)
    wrapped = with_normalization(model, NORMALIZE)
    got = fastattr.attr.saliency(wrapped, x, target=target, abs=False)
    torch.testing.assert_close(got, _input_gradient(model, xn, target) / std)
    cam = fastattr.attr.grad_cam(wrapped, x, layer=model.layer4, target=target)
    torch.testing.assert_close(cam, fastattr.attr.grad_cam(model, xn, layer=model.layer4, target=target))


def test_torchscript_and_exported_models_with_normalization():
    model, x, target = _cnn(), torch.rand(3, 3, 8, 8), torch.tensor([0, 3, 4])
    xn, std = _by_hand(x)
    scripted = torch.jit.trace(model, x)
    exported = torch.export.export(model, (x,)).module()
    for inner in (scripted, exported):
        got = fastattr.attr.saliency(with_normalization(inner, NORMALIZE), x, target=target, abs=False)
        torch.testing.assert_close(got, _input_gradient(model, xn, target) / std)


# ---------------------------------------------------------------------------
# --limit: the stratified sample
# ---------------------------------------------------------------------------


def _class_counts(y, chosen):
    return np.bincount(y[chosen], minlength=y.max() + 1).tolist()


def test_stratified_quotas():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    assert _class_counts(y, stratified_subset(y, 10, 0)) == [5, 3, 2]
    # one each, then 2 more in proportion to the remaining sizes 6, 1, 0 (exact 1.71, 0.29, 0)
    y = np.repeat([0, 1, 2], [7, 2, 1])
    assert _class_counts(y, stratified_subset(y, 5, 0)) == [3, 1, 1]
    # fewer than the classes: largest remainders, seeded ties
    y = np.repeat([0, 1, 2, 3], [40, 30, 20, 10])
    assert _class_counts(y, stratified_subset(y, 2, 0)) == [1, 1, 0, 0]
    y = np.repeat(np.arange(5), 4)
    picks = {tuple(_class_counts(y, stratified_subset(y, 2, s))) for s in range(20)}
    assert all(sum(p) == 2 and max(p) == 1 for p in picks) and len(picks) > 1


def test_stratified_sample_is_seeded_sorted_and_uses_labels_not_positions():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 200) * 3  # labels 0, 3, 6, 9 in random order
    a = stratified_subset(y, 17, 1)
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0) and len(a) == 17
    assert np.array_equal(a, stratified_subset(y, 17, 1)) and not np.array_equal(a, stratified_subset(y, 17, 2))
    counts = np.bincount(y)[[0, 3, 6, 9]]
    assert np.all(np.abs(np.bincount(y[a])[[0, 3, 6, 9]] - 17 * counts / 200) < 1)
    assert np.array_equal(stratified_subset(y, 200, 0), np.arange(200))
    assert np.array_equal(stratified_subset(y, 500, 0), np.arange(200))
    assert np.array_equal(stratified_subset(np.zeros(9, np.int64), 1, 0).shape, (1,))


def test_digits_limit():
    data = load_dataset(None, 20, seed=3)
    full = load_dataset(None, None)
    assert _class_counts(full.y, data.source_index) == [2] * 10
    assert np.array_equal(data.x, full.x[data.source_index]) and np.array_equal(data.y, full.y[data.source_index])
    assert np.array_equal(full.source_index, np.arange(len(full.y))) and full.names == ()
    assert "stratified sample of 20 of 360 examples (seed 3)" in data.description
    assert data.content_hash() != load_dataset(None, 20, seed=4).content_hash()


# ---------------------------------------------------------------------------
# Image folders and .npz arrays
# ---------------------------------------------------------------------------


def _folder(root, images):
    """``images``: {"class/file.png": PIL image}; the folder's path."""
    for rel, im in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(root / rel)
    return str(root)


def _rgb(rng, h, w):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _gray(rng, h, w):
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))


def _pixels(im):
    """PIL image -> float [C, H, W] by hand."""
    a = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


def test_folder_of_different_sizes_needs_resize(tmp_path):
    rng = np.random.default_rng(0)
    images = {"a/0.png": _rgb(rng, 20, 30), "a/1.jpg": _rgb(rng, 33, 17), "b/0.png": _rgb(rng, 25, 25)}
    root = _folder(tmp_path, images)
    e = raises("--data", load_dataset, root, None)
    assert "--resize" in e
    transform = InputTransform(resize=12, crop=(10, 8))
    data = load_dataset(root, None, transform=transform)
    with Image.open(tmp_path / "a/1.jpg") as jpg:  # as decoded (JPEG is lossy)
        decoded = {**images, "a/1.jpg": jpg.convert("RGB")}
    expected = torch.stack([_torchvision_eval(_pixels(decoded[n]), 12, (10, 8)) for n in sorted(images)])
    torch.testing.assert_close(torch.from_numpy(data.x), expected, rtol=0, atol=0)
    assert data.names == ("a/0.png", "a/1.jpg", "b/0.png") and data.y.tolist() == [0, 0, 1]
    assert transform.describe() in data.description
    # PIL's own resampling (what torchvision does on PIL images) agrees to uint8 rounding
    from torchvision.transforms import v2

    pil = v2.Compose([v2.Resize(12), v2.CenterCrop((10, 8)), v2.PILToTensor()])(images["a/0.png"])
    np.testing.assert_allclose(data.x[0], pil.numpy() / 255.0, atol=2.5 / 255)


def test_grayscale_folder_gives_one_channel(tmp_path):
    rng = np.random.default_rng(1)
    sixteen = Image.fromarray(rng.integers(0, 65536, (6, 5), dtype=np.uint16))
    one_bit = Image.fromarray(rng.integers(0, 2, (6, 5)).astype(bool))
    la = _gray(rng, 6, 5).convert("LA")
    images = {"a/l.png": _gray(rng, 6, 5), "a/i16.png": sixteen, "b/1.png": one_bit, "b/la.png": la}
    data = load_dataset(_folder(tmp_path, images), None)
    assert data.x.shape == (4, 1, 6, 5)
    by_name = dict(zip(data.names, data.x))
    np.testing.assert_allclose(by_name["a/i16.png"][0], np.asarray(sixteen) / 65535.0, rtol=1e-6)
    np.testing.assert_array_equal(by_name["a/l.png"], _pixels(images["a/l.png"]).numpy())
    np.testing.assert_array_equal(by_name["b/1.png"][0], np.asarray(one_bit, dtype=np.float32))
    np.testing.assert_array_equal(by_name["b/la.png"], _pixels(la.convert("L")).numpy())
    # a one-channel model takes it
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 3, 2))
    assert class_scores(model, torch.from_numpy(data.x[:1]), None) is model


def test_mixed_folder_and_forced_channels(tmp_path):
    rng = np.random.default_rng(2)
    rgba = Image.fromarray(rng.integers(0, 256, (4, 6, 4), dtype=np.uint8), "RGBA")
    images = {"a/gray.png": _gray(rng, 4, 6), "a/rgb.png": _rgb(rng, 4, 6), "b/rgba.png": rgba}
    root = _folder(tmp_path, images)
    data = load_dataset(root, None)
    assert data.x.shape == (3, 3, 4, 6)
    np.testing.assert_array_equal(data.x[0], _pixels(images["a/gray.png"].convert("RGB")).numpy())
    np.testing.assert_array_equal(data.x[2], _pixels(rgba.convert("RGB")).numpy())  # alpha dropped
    gray = load_dataset(root, None, transform=InputTransform(channels=1))
    assert gray.x.shape == (3, 1, 4, 6)
    np.testing.assert_array_equal(gray.x[1], _pixels(images["a/rgb.png"].convert("L")).numpy())
    np.testing.assert_array_equal(gray.x[0], _pixels(images["a/gray.png"]).numpy())
    rgb = load_dataset(root, None, transform=InputTransform(channels=3))
    np.testing.assert_array_equal(rgb.x, data.x)


def test_folder_limit_decodes_only_the_sample(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    images = {f"{c}/{i:02d}.png": _rgb(rng, 5, 5) for c, n in (("a", 12), ("b", 6), ("c", 2)) for i in range(n)}
    root = _folder(tmp_path, images)
    full = load_dataset(root, None)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    data = load_dataset(root, 10, seed=7)
    assert len(opened) == 10
    assert _class_counts(full.y, data.source_index) == [6, 3, 1]
    assert np.array_equal(data.source_index, stratified_subset(full.y, 10, 7))
    assert data.names == tuple(full.names[i] for i in data.source_index)
    assert np.array_equal(data.x, full.x[data.source_index]) and np.array_equal(data.y, full.y[data.source_index])
    assert "stratified sample of 10 of 20 examples (seed 7)" in data.description


def test_npz_transforms(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.random((6, 3, 14, 10), dtype=np.float32)
    y = np.array([0, 1, 0, 1, 2, 2])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    path = str(tmp_path / "d.npz")
    data = load_dataset(path, None, transform=InputTransform(resize=8))
    torch.testing.assert_close(torch.from_numpy(data.x), _torchvision_eval(torch.from_numpy(x), 8, 8),
                               rtol=0, atol=0)
    gray = load_dataset(path, None, transform=InputTransform(channels=1))
    np.testing.assert_allclose(gray.x[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2], rtol=1e-6)
    np.savez(tmp_path / "g.npz", x=x[:, :1], y=y)
    rgb = load_dataset(str(tmp_path / "g.npz"), None, transform=InputTransform(channels=3))
    np.testing.assert_array_equal(rgb.x, np.repeat(x[:, :1], 3, axis=1))
    np.savez(tmp_path / "two.npz", x=x[:, :2], y=y)
    assert "2 channels" in raises("--channels", load_dataset, str(tmp_path / "two.npz"), None,
                                  transform=InputTransform(channels=3))
    np.savez(tmp_path / "flat.npz", x=x.reshape(6, -1), y=y)
    raises("--resize", load_dataset, str(tmp_path / "flat.npz"), None, transform=InputTransform(resize=4))
    assert "1 channel" in raises("--mean", load_dataset, str(tmp_path / "g.npz"), None,
                                 transform=InputTransform(mean=MEAN))
    np.testing.assert_array_equal(np.load(path)["x"], x)  # the file's arrays are not modified


def test_decode_image_refuses_unreadable_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    raises("--data", decode_image, str(tmp_path / "bad.png"), None)
