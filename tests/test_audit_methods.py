"""The audit's methods (fastattr/cli/methods.py) and settings (fastattr/cli/options.py):
every method equals a direct call of its fastattr function with the same
settings, layer maps equal a hand-written upsample-and-spread, keyed noise,
applicability reasons, and option parsing."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastattr import attr
from fastattr.attr import lrp_rules
from fastattr.cli.config import AuditError
from fastattr.cli.methods import (
    DEFAULT_METHODS, METHOD_SETTINGS, METHODS, check_applicable, check_settings, describe_methods, explain,
    explainer_for, find_auto_layer, make_context, method_rows, spread_map,
)
from fastattr.cli.options import Setting, integer, load_config_file, parse_assignments, resolve
from fastattr.metrics import Explainer
from fastattr.metrics.deletion import gaussian_blur

SEED = 7
H, W = 8, 6  # non-square


def small_cnn():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(6 * 4 * 3, 5),
        ).eval()


@pytest.fixture(scope="module")
def model():
    return small_cnn()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(12, 3, H, W, generator=g) * 3 - 1  # value range about 3: stdev is a fraction of it


def defaults(name, **changes):
    """The method's default settings with ``changes``."""
    s = {st.name: st.default for st in METHOD_SETTINGS[name]}
    s.update(changes)
    return s


def context_for(model, data, method, settings):
    return make_context(model, data, SEED, {method: settings}, torch.device("cpu"))


def drawn(data, k):
    """The reference set: the first k of the seed's permutation of the data set."""
    return data[torch.randperm(len(data), generator=torch.Generator().manual_seed(SEED))[:k]]


def spread_reference(cam, x, mode):
    """[b, C, H, W]: the [b, 1, h, w] map upsampled, divided by C, on every channel."""
    up = F.interpolate(cam, size=x.shape[-2:], mode=mode)
    return torch.cat([up / x.shape[1]] * x.shape[1], dim=1)


def references(model, data):
    """method -> (settings, reference(x, target, offset)): the fastattr function called by hand."""
    value_range = float(data.max() - data.min())
    mean = data.mean(0, keepdim=True)
    layer = model[4]
    ig_settings = defaults("integrated_gradients", rtol="off", n_steps=5, method="riemann_trapezoid", baseline="mean")
    gamma = lrp_rules.GammaRule(0.5, epsilon=1e-6)
    gamma_rules = dict(attr.default_composite(epsilon=1e-6).rules_by_type)
    gamma_rules.update({nn.Conv2d: gamma, nn.Linear: gamma})
    return {
        "saliency": (defaults("saliency", abs=False), lambda x, t, o: attr.saliency(model, x, t, abs=False)),
        "input_x_gradient": (defaults("input_x_gradient"), lambda x, t, o: attr.input_x_gradient(model, x, t)),
        "integrated_gradients": (ig_settings, lambda x, t, o: attr.integrated_gradients(
            model, x, mean, t, n_steps=5, method="riemann_trapezoid")),
        "integrated_gradients/blur": (defaults("integrated_gradients", rtol="off", baseline="blur"),
                                      lambda x, t, o: attr.integrated_gradients(
                                          model, x, gaussian_blur(x, 5.0, 11), t, n_steps=16)),
        "integrated_gradients/rtol": (defaults("integrated_gradients", baseline="mean"),
                                      lambda x, t, o: attr.integrated_gradients(
                                          model, x, mean, t, rtol=0.05, max_steps=64)[0]),
        "smoothgrad": (defaults("smoothgrad", stdev=0.2, n_samples=3),
                       lambda x, t, o: attr.smoothgrad(model, x, t, n_samples=3, stdev=0.2 * value_range,
                                                       seed=SEED, example_offset=o)),
        "smoothgrad/ig": (defaults("smoothgrad", explainer="integrated_gradients", n_steps=4, kind="vargrad"),
                          lambda x, t, o: attr.smoothgrad(
                              model, x, t, n_samples=8, stdev=0.1 * value_range, kind="vargrad",
                              explainer="integrated_gradients", explainer_kwargs={"n_steps": 4}, seed=SEED,
                              example_offset=o)),
        "gradient_shap": (defaults("gradient_shap", baselines="background", background=5),
                          lambda x, t, o: attr.gradient_shap(model, x, drawn(data, 5), t, n_samples=8,
                                                             stdev=0.1 * value_range, seed=SEED, example_offset=o)),
        "gradient_shap/number": (defaults("gradient_shap", baselines=0.5, stdev=0.0),
                                 lambda x, t, o: attr.gradient_shap(model, x, torch.full_like(x[:1], 0.5), t,
                                                                    n_samples=8, seed=SEED, example_offset=o)),
        "expected_gradients": (defaults("expected_gradients", background=4, n_samples=5),
                               lambda x, t, o: attr.expected_gradients(model, x, drawn(data, 4), t, n_samples=5,
                                                                       seed=SEED, example_offset=o)),
        "deeplift": (defaults("deeplift", baseline=0.25),
                     lambda x, t, o: attr.deeplift(model, x, torch.full_like(x, 0.25), t)),
        "deeplift_shap": (defaults("deeplift_shap", background=3),
                          lambda x, t, o: attr.deeplift_shap(model, x, drawn(data, 3), t)),
        "guided_backprop": (defaults("guided_backprop"), lambda x, t, o: attr.guided_backprop(model, x, t)),
        "deconvolution": (defaults("deconvolution"), lambda x, t, o: attr.deconvolution(model, x, t)),
        "lrp": (defaults("lrp"), lambda x, t, o: attr.lrp(model, x, t)),
        "lrp/gamma": (defaults("lrp", rule="gamma", gamma=0.5, epsilon=1e-6),
                      lambda x, t, o: attr.lrp(model, x, t, composite=lrp_rules.Composite(gamma_rules))),
        "grad_cam": (defaults("grad_cam"), lambda x, t, o: spread_reference(
            attr.grad_cam(model, x, layer, t, relu_attributions=True), x, "bilinear")),
        "grad_cam/nearest": (defaults("grad_cam", relu_attributions=False, interpolate_mode="nearest", layer="2"),
                             lambda x, t, o: spread_reference(attr.grad_cam(model, x, model[2], t), x, "nearest")),
        **{name: (defaults(name), lambda x, t, o, fn=getattr(attr, name): spread_reference(
            fn(model, x, layer, t)[:, None], x, "bilinear"))
           for name in ("grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam")},
        "guided_grad_cam": (defaults("guided_grad_cam"), lambda x, t, o: attr.guided_grad_cam(
            model, x, layer, t, interpolate_mode="bilinear")),
        "layer_integrated_gradients": (
            defaults("layer_integrated_gradients", n_steps=6), lambda x, t, o: spread_reference(
                attr.layer_integrated_gradients(model, x, layer, 0.0, t, n_steps=6).sum(1, keepdim=True), x,
                "bilinear")),
    }


CASES = sorted(references(small_cnn(), torch.zeros(2, 3, H, W)))


def test_every_method_has_a_reference_case():
    assert {c.split("/")[0] for c in CASES} == set(METHODS)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", CASES)
def test_explain_equals_the_fastattr_function(model, data, case, batch):
    settings, reference = references(model, data)[case]
    method = case.split("/")[0]
    context = context_for(model, data, method, settings)
    x, target = data[:batch] + 0.1, torch.arange(batch) % 5
    x_before = x.clone()
    got = explain(method, model, x, target, SEED, 4, None, settings, context)
    want = reference(x, target, 4)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(x, x_before)


def test_auto_layer_is_the_last_spatial_module(model, data):
    assert find_auto_layer(model, data[:1]) == "4"  # MaxPool2d [1, 6, 4, 3]


def test_auto_layer_of_resnet18_is_layer4():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(weights=None).eval()
    assert find_auto_layer(net, torch.zeros(1, 3, 64, 64)) == "layer4"


def test_auto_layer_skips_a_module_called_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.head = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Linear(2 * 16, 3)

        def forward(self, x):
            return self.head(self.act(self.act(self.conv(x))).flatten(1))

    assert find_auto_layer(Twice(), torch.zeros(1, 1, 4, 4)) == "conv"


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (2, 1, 5, 7), (2, 8, 6), (2, 2, 3, 8, 6)])
def test_spread_map_is_upsampled_and_divided_among_the_channels(shape):
    x = torch.zeros(shape)
    cam = torch.randn(2, 1, 3, 2)
    got = spread_map(cam, x, "bilinear")
    up = F.interpolate(cam, size=shape[-2:], mode="bilinear")
    channels = 1
    for d in shape[1:-2]:
        channels *= d
    assert got.shape == x.shape
    per_channel = got.reshape(2, channels, *shape[-2:])
    for c in range(channels):
        torch.testing.assert_close(per_channel[:, c:c + 1], up / channels)
    torch.testing.assert_close(got.sum((tuple(range(1, len(shape))))), up.sum((1, 2, 3)))


def test_spread_map_refuses_inputs_without_two_spatial_dims():
    with pytest.raises(ValueError, match="H, W"):
        spread_map(torch.zeros(2, 1, 3, 3), torch.zeros(2, 10), "bilinear")


@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap", "expected_gradients"])
def test_noise_is_keyed_by_data_set_index(model, data, method):
    settings = defaults(method, **({"baselines": "background"} if method == "gradient_shap" else {}))
    context = context_for(model, data, method, settings)
    x, target = data[:6], torch.tensor([0, 1, 2, 3, 4, 0])
    whole = explain(method, model, x, target, SEED, 0, None, settings, context)
    part = explain(method, model, x[2:5], target[2:5], SEED, 2, None, settings, context)
    torch.testing.assert_close(part, whole[2:5], rtol=1e-5, atol=1e-7)
    elsewhere = explain(method, model, x[2:5], target[2:5], SEED, 0, None, settings, context)
    assert not torch.allclose(elsewhere, whole[2:5])


def test_background_does_not_depend_on_other_methods(model, data):
    s = defaults("deeplift_shap", background=3)
    alone = make_context(model, data, SEED, {"deeplift_shap": s}, torch.device("cpu"))
    with_more = make_context(model, data, SEED, {"deeplift_shap": s, "expected_gradients": defaults(
        "expected_gradients", background=10)}, torch.device("cpu"))
    x, t = data[:2], torch.tensor([1, 2])
    assert torch.equal(explain("deeplift_shap", model, x, t, SEED, 0, None, s, alone),
                       explain("deeplift_shap", model, x, t, SEED, 0, None, s, with_more))
    other_seed = make_context(model, data, SEED + 1, {"deeplift_shap": s}, torch.device("cpu"))
    assert not torch.equal(alone.background, other_seed.background[:3])


# --- what the metrics re-run ---

def test_engine_native_methods_are_given_to_metrics_by_name(model, data):
    s = defaults("smoothgrad")
    context = context_for(model, data, "smoothgrad", s)
    name, kwargs = explainer_for("smoothgrad", data[:2], SEED, None, s, context)
    assert name == "smoothgrad" and kwargs["seed"] == SEED and "example_offset" not in kwargs
    x, t = data[:3], torch.tensor([0, 1, 2])
    (via_metric,) = Explainer(name, kwargs)(model, (x,), False, target=t, example_offset=5)
    assert torch.equal(via_metric, explain("smoothgrad", model, x, t, SEED, 5, None, s, context))
    assert explainer_for("saliency", x, SEED, None, defaults("saliency"), context) == (
        "saliency", {"abs": True, "model_form": context.model_form})


@pytest.mark.parametrize("method,settings", [
    ("grad_cam", {}), ("layer_integrated_gradients", {"n_steps": 4}), ("integrated_gradients", {"baseline": "blur"}),
])
def test_callable_explainer_reruns_explain_on_the_model_it_is_given(model, data, method, settings):
    s = defaults(method, **settings)
    context = context_for(model, data, method, s)
    fn, kwargs = explainer_for(method, data[:2], SEED, 4096, s, context)
    assert callable(fn) and kwargs == {"memory_budget": 4096}
    x, t = data[3:6], torch.tensor([4, 0, 1])
    (got,) = Explainer(fn, kwargs)(model, (x,), False, target=t, example_offset=3)
    assert torch.equal(got, explain(method, model, x, t, SEED, 3, 4096, s, context))
    twin = copy.deepcopy(model)  # the randomization test hands a randomized copy: its layer must be used
    with torch.no_grad():
        twin[2].weight.mul_(-1)
    (on_twin,) = Explainer(fn, kwargs)(twin, (x,), False, target=t)
    torch.testing.assert_close(on_twin, explain(method, twin, x, t, SEED, 0, 4096, s, context))
    assert not torch.allclose(on_twin, got)


def test_callable_explainer_runs_in_a_sensitivity_metric(model, data):
    from fastattr.metrics import sensitivity

    s = defaults("grad_cam")
    context = context_for(model, data, "grad_cam", s)
    fn, kwargs = explainer_for("grad_cam", data[:4], SEED, None, s, context)
    x, t = data[:4], torch.tensor([0, 1, 2, 3])
    value = sensitivity.max_sensitivity(model, x, t, fn, kwargs, radius=0.05, n_samples=3, seed=SEED,
                                        example_offset=8)
    assert value.shape == (4,) and bool(torch.isfinite(value).all())


# --- applicability ---

class TinyViT(nn.Module):
    """Patches cut by reshaping (no convolution), a token mixer, a linear head."""

    def __init__(self):
        super().__init__()
        self.embed, self.mix, self.head = nn.Linear(3 * 4 * 4, 8), nn.Linear(8, 8), nn.Linear(8, 5)

    def forward(self, x):
        b = x.shape[0]
        patches = x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * 4 * 4)
        tokens = self.embed(patches)
        tokens = tokens + torch.softmax(tokens @ tokens.transpose(1, 2), -1) @ self.mix(tokens)
        return self.head(tokens.mean(1))


@pytest.mark.parametrize("net", [TinyViT(), nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))])
@pytest.mark.parametrize("method", ["grad_cam", "guided_grad_cam", "layer_integrated_gradients"])
def test_layer_methods_need_a_spatial_layer(net, method):
    x = torch.rand(4, 3, 8, 8)
    context = make_context(net, x, SEED, {method: defaults(method)}, torch.device("cpu"))
    reason = check_applicable(method, net, x[:1], torch.tensor([0]), defaults(method), context)
    assert reason is not None and "4-D output" in reason
    assert check_applicable("saliency", net, x[:1], torch.tensor([0]), defaults("saliency"), context) is None


def test_lrp_refuses_a_layer_without_a_rule():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    x = torch.rand(4, 3, 8, 8)
    context = make_context(net, x, SEED, {"lrp": defaults("lrp")}, torch.device("cpu"))
    reason = check_applicable("lrp", net, x[:1], torch.tensor([1]), defaults("lrp"), context)
    assert reason is not None and "GroupNorm" in reason and "\n" not in reason


def test_rule_methods_need_a_module(model, data):
    def fn(x):
        return model(x)

    context = make_context(fn, data, SEED, {}, torch.device("cpu"))
    for method in ("guided_backprop", "deconvolution", "deeplift", "lrp"):
        reason = check_applicable(method, fn, data[:1], torch.tensor([0]), defaults(method), context)
        assert reason is not None and "nn.Module" in reason, (method, reason)
    assert check_applicable("saliency", fn, data[:1], torch.tensor([0]), defaults("saliency"), context) is None


def test_non_finite_attributions_are_a_reason(data):
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 5))

    def rooted(x):
        return net(x.sqrt())  # NaN at the negative inputs

    x = -data[:1].abs() - 0.1
    context = make_context(rooted, data, SEED, {}, torch.device("cpu"))
    reason = check_applicable("input_x_gradient", rooted, x, torch.tensor([0]), defaults("input_x_gradient"), context)
    assert reason is not None and "non-finite" in reason


def test_too_small_a_background_for_deeplift_shap_is_a_reason(model, data):
    context = make_context(model, data[:1], SEED, {"deeplift_shap": defaults("deeplift_shap")}, torch.device("cpu"))
    reason = check_applicable("deeplift_shap", model, data[:1], torch.tensor([0]), defaults("deeplift_shap"), context)
    assert reason is not None


def test_every_method_applies_to_a_small_cnn(model, data):
    context = make_context(model, data, SEED, {m: defaults(m) for m in METHODS}, torch.device("cpu"))
    for method in METHODS:
        assert check_applicable(method, model, data[:1], torch.tensor([2]), defaults(method), context) is None


def test_a_named_layer_the_model_lacks_is_an_audit_error(model, data):
    with pytest.raises(AuditError, match=r"--method-option: grad_cam.layer: .*'nope'"):
        make_context(model, data, SEED, {"grad_cam": defaults("grad_cam", layer="nope")}, torch.device("cpu"))


# --- settings ---

def test_defaults_parse_to_themselves_as_text_and_values():
    for method, settings in METHOD_SETTINGS.items():
        for s in settings:
            assert s.parse(s.default) == s.default, (method, s.name)
            text = str(s.default).lower() if isinstance(s.default, bool) else str(s.default)
            assert s.parse(text) == s.default, (method, s.name)


def test_default_methods_exist():
    assert set(DEFAULT_METHODS) <= set(METHODS)


def test_parse_assignments():
    got = parse_assignments(["integrated_gradients.n_steps=32", "smoothgrad.stdev = 0.2",
                             "integrated_gradients.baseline=blur", "integrated_gradients.n_steps=8"], "--method-option")
    assert got == {"integrated_gradients": {"n_steps": "8", "baseline": "blur"}, "smoothgrad": {"stdev": "0.2"}}
    for bad in ("n_steps=32", "integrated_gradients.n_steps", ".n_steps=3", "integrated_gradients.=3"):
        with pytest.raises(AuditError, match="^--method-option: expected NAME.KEY=VALUE"):
            parse_assignments([bad], "--method-option")


def test_resolve_parses_types():
    given = {"integrated_gradients": {"n_steps": "32", "baseline": "-0.5", "method": "riemann_left"},
             "saliency": {"abs": "false"}, "smoothgrad": {"stdev": "0.25"}, "lrp": {"epsilon": "1e-6"}}
    before = copy.deepcopy(given)
    out = resolve(METHOD_SETTINGS, given, "--method-option")
    assert out["integrated_gradients"] == {"n_steps": 32, "baseline": -0.5, "method": "riemann_left",
                                           "rtol": 0.05, "max_steps": 64}
    assert out["saliency"] == {"abs": False}
    assert out["smoothgrad"]["stdev"] == 0.25 and out["smoothgrad"]["n_samples"] == 8
    assert out["lrp"]["epsilon"] == 1e-6
    assert out["grad_cam"] == defaults("grad_cam")
    assert given == before


@pytest.mark.parametrize("given,message", [
    ({"integrated_gradients": {"n_steps": "abc"}}, "integrated_gradients.n_steps: expected an integer >= 1, got 'abc'"),
    ({"integrated_gradients": {"n_steps": "0"}}, "expected an integer >= 1, got '0'"),
    ({"integrated_gradients": {"n_steps": True}}, "expected an integer >= 1, got True"),
    ({"integrated_gradients": {"baseline": "noise"}}, "expected one of zeros, blur, mean or a number, got 'noise'"),
    ({"integrated_gradients": {"method": "simpson"}}, "expected one of riemann_left"),
    ({"smoothgrad": {"stdev": "-1"}}, "smoothgrad.stdev: expected a finite number >= 0"),
    ({"smoothgrad": {"stdev": "nan"}}, "expected a finite number >= 0"),
    ({"lrp": {"epsilon": "0"}}, "lrp.epsilon: expected a finite number > 0"),
    ({"saliency": {"abs": "maybe"}}, "saliency.abs: expected true or false"),
    ({"deeplift_shap": {"background": "1"}}, "expected an integer >= 2"),
    ({"grad_cam": {"layer": ""}}, "expected a module name"),
    ({"integrated_gradient": {"n_steps": "3"}}, "unknown 'integrated_gradient'; available: saliency, "),
    ({"integrated_gradients": {"steps": "3"}}, "integrated_gradients has no setting 'steps'; its settings: "
                                                "rtol (default 0.05), max_steps (default 64), "
                                                "n_steps (default 16), method (default gausslegendre), "
                                                "baseline (default zeros)"),
    ({"input_x_gradient": {"abs": "true"}}, "input_x_gradient has no setting 'abs'; its settings: none"),
])
def test_resolve_errors_name_the_option_and_what_was_expected(given, message):
    with pytest.raises(AuditError) as e:
        resolve(METHOD_SETTINGS, given, "--method-option")
    assert str(e.value).startswith("--method-option: ") and message in str(e.value)


def test_metric_settings_use_the_same_machinery():
    declared = {"sensitivity": (Setting("n_samples", 10, integer(1), "perturbed copies"),)}
    got = resolve(declared, {"sensitivity": {"n_samples": "20"}}, "--metric-option")
    assert got == {"sensitivity": {"n_samples": 20}}
    with pytest.raises(AuditError, match="^--metric-option: sensitivity has no setting 'radius'"):
        resolve(declared, {"sensitivity": {"radius": "0.1"}}, "--metric-option")


def test_config_file_then_command_line(tmp_path):
    path = tmp_path / "audit.toml"
    path.write_text('[methods.integrated_gradients]\nn_steps = 8\nbaseline = "mean"\n\n'
                    '[methods.smoothgrad]\nstdev = 0.3\n\n[metrics.sensitivity]\nn_samples = 20\n')
    loaded = load_config_file(str(path))
    assert loaded == {"methods": {"integrated_gradients": {"n_steps": 8, "baseline": "mean"},
                                  "smoothgrad": {"stdev": 0.3}},
                      "metrics": {"sensitivity": {"n_samples": 20}}}
    from_file = resolve(METHOD_SETTINGS, loaded["methods"], "--config")
    cli = parse_assignments(["integrated_gradients.n_steps=32"], "--method-option")
    final = resolve(METHOD_SETTINGS, cli, "--method-option", base=from_file)
    assert final["integrated_gradients"] == {"n_steps": 32, "method": "gausslegendre", "baseline": "mean",
                                             "rtol": 0.05, "max_steps": 64}
    assert final["smoothgrad"]["stdev"] == 0.3
    assert from_file["integrated_gradients"]["n_steps"] == 8  # the base is not modified


@pytest.mark.parametrize("text,message", [
    ("[model]\nname = 'x'\n", "unknown top-level table 'model'"),
    ("methods = 3\n", "expected [methods.NAME] tables"),
    ("[methods]\nsaliency = 1\n", "expected [methods.NAME] tables"),
    ("[methods.saliency\n", "not valid TOML"),
])
def test_bad_config_files_name_the_option(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(AuditError) as e:
        load_config_file(str(path))
    assert str(e.value).startswith(f"--config {path}: ") and message in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(AuditError, match="^--config: cannot read"):
        load_config_file(str(tmp_path / "absent.toml"))


def test_wrong_toml_type_names_the_option(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("[methods.integrated_gradients]\nn_steps = 1.5\n")
    with pytest.raises(AuditError, match=r"^--config: integrated_gradients.n_steps: expected an integer >= 1, got 1.5"):
        resolve(METHOD_SETTINGS, load_config_file(str(path))["methods"], "--config")


def test_settings_that_do_not_fit_together():
    given = {"integrated_gradients": {"method": "riemann_left", "n_steps": "1", "rtol": "off"}}
    s = resolve(METHOD_SETTINGS, given, "--method-option")
    with pytest.raises(AuditError, match="^--method-option: integrated_gradients: the riemann_left rule needs n_steps"):
        check_settings(s, "--method-option")
    fixed_rule_with_rtol = resolve(METHOD_SETTINGS, {"integrated_gradients": {"method": "riemann_left"}},
                                   "--method-option")
    with pytest.raises(AuditError, match="method=riemann_left is a fixed rule, but rtol=0.05 .* set rtol=off"):
        check_settings(fixed_rule_with_rtol, "--method-option")
    with pytest.raises(AuditError, match="rtol must be > 0"):
        check_settings(resolve(METHOD_SETTINGS, {"integrated_gradients": {"rtol": "0"}}, "--method-option"),
                       "--method-option")
    check_settings(resolve(METHOD_SETTINGS, {}, "--method-option"), "--method-option")


def test_resolved_settings_are_json():
    given = {"integrated_gradients": {"baseline": "0.5"}, "lrp": {"rule": "zplus"}, "grad_cam": {"layer": "4"}}
    out = resolve(METHOD_SETTINGS, given, "--method-option")
    assert json.loads(json.dumps(out)) == out
    for values in out.values():
        assert all(type(v) in (bool, int, float, str) for v in values.values())


def test_listing_names_every_method_and_setting():
    text = describe_methods()
    for method, settings in METHOD_SETTINGS.items():
        assert f"\n{method}: " in "\n" + text
        for s in settings:
            assert f"{method}.{s.name} = " in text


def test_method_rows_count_the_backwards_per_example():
    s = resolve(METHOD_SETTINGS, {"integrated_gradients": {"n_steps": "5"},
                                  "smoothgrad": {"explainer": "integrated_gradients", "n_steps": "4", "n_samples": "3"},
                                  "deeplift_shap": {"background": "6"}}, "--method-option")
    rows = method_rows(s)
    assert rows["saliency"] == 1 and rows["integrated_gradients"] == 5 and rows["smoothgrad"] == 12
    assert rows["gradient_shap"] == 8 and rows["deeplift_shap"] == 12 and rows["layer_integrated_gradients"] == 16
    assert set(rows) == set(METHODS)
