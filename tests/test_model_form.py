"""The model's form for the chunk rows (fastattr/engine/model_form.py):
``"fast"`` (a copy with BatchNorm folded, channels-last rows) and
``"compiled"`` give eager's results up to float rounding, leave the caller's
model as it was, keep keyed noise independent of the chunking, and fall
back to eager, with the reason, where they do not apply.

Tolerance (measured in the same run, flash-attention's rule): the form's
float32 result is at most ``FACTOR`` times as far from the float64 eager
result (a float64 copy of the model, float64 inputs) as eager float32 is
(``fastattr.testing.assert_error_within``). ``FACTOR = 4``: channels-last
convolutions sum in another order, and folded weights round once, so the
form's error is of eager's size (ResNet-18: 1.6-2.2 times eager's over
seeds, from the channels-last kernels); a rewrite that changed the function
is off by the result's own size, orders of magnitude beyond.

The ``"compiled"`` test pays a ``torch.compile`` (15-30 s on 2 cores with a
cold inductor cache): one small model only.
"""
import contextlib
import copy
import dataclasses
import types
import warnings
import weakref

import pytest
import torch
import torchvision
from torch import nn

import fastattr
from fastattr.attr._call import build_request
from fastattr.engine import PURPOSE_SMOOTHGRAD, forward_rows, run, single_point_plan
from fastattr.engine import model_form as mf
from fastattr.testing import assert_bitwise_equal, assert_error_within

FACTOR = 4
TARGET = 1


# ---------------------------------------------------------------- models (random weights)


def _randomize_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    """Running statistics and affine parameters away from the identity, so
    that a fold that went wrong shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
    return model.eval()


def conv_bn_net() -> nn.Module:
    """Conv-BN-ReLU-MaxPool-Conv-BN-ReLU-AvgPool-Linear on 3x16x16."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )
    return _randomize_batch_norms(net, 0)


def mlp_bn() -> nn.Module:
    """16 -> 32 (BatchNorm1d) -> 32 -> 4 with ReLU."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 4))
    return _randomize_batch_norms(net, 1)


def resnet18() -> nn.Module:
    torch.manual_seed(2)
    return _randomize_batch_norms(torchvision.models.resnet18(num_classes=10), 2)


def mobilenet_v3() -> nn.Module:
    torch.manual_seed(3)
    return _randomize_batch_norms(torchvision.models.mobilenet_v3_small(num_classes=10), 3)


def vit() -> nn.Module:
    torch.manual_seed(4)
    net = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64, num_classes=10)
    nn.init.normal_(net.heads.head.weight, std=0.2)  # torchvision starts the head at zero: no gradient
    return net.eval()


MODELS = {
    "resnet18": (resnet18, (3, 32, 32)),
    "mobilenet_v3": (mobilenet_v3, (3, 32, 32)),
    "vit": (vit, (3, 16, 16)),
    "conv_bn": (conv_bn_net, (3, 16, 16)),
    "mlp_bn": (mlp_bn, (16,)),
}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    make, shape = MODELS[request.param]
    model = make()
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(5))
    return types.SimpleNamespace(name=request.param, model=model, model64=copy.deepcopy(model).double(), x=x)


# ---------------------------------------------------------------- the methods


def _smoothgrad_plan(xs, example_offset=0):
    return dataclasses.replace(single_point_plan("grad"), n_samples=3, noise="gaussian", noise_scales=(0.1,),
                               seed=7, example_offset=example_offset, purpose=PURPOSE_SMOOTHGRAD)


def engine_result(model, x, plan_for, form, needs_baselines=False, chunk_rows=None):
    """The engine's Result of one request (its form and reason, and plans
    the explainers do not expose)."""
    req, _ = build_request(model, x, TARGET, None, plan_for, None, chunk_rows,
                           needs_baselines=needs_baselines, model_form=form)
    return run(req)


def _refs(x):
    return torch.rand((3, *x.shape[1:]), generator=torch.Generator().manual_seed(6), dtype=x.dtype)


def _forward_rows(model, x, form):
    """Forward-only rows (what infidelity / deletion / Score-CAM run): each
    example scaled by 4 factors."""
    scales = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=x.dtype)

    def rows_for(r0, r1):
        r = torch.arange(r0, r1)
        return (x[r // 4] * scales[r % 4].view(-1, *[1] * (x.dim() - 1)),)

    return forward_rows(model, rows_for, x.shape[0] * 4, 4, (x,), TARGET, model_form=form)


METHODS = {
    "saliency": lambda m, x, form: fastattr.saliency(m, x, target=TARGET, abs=False, model_form=form),
    "input_x_gradient": lambda m, x, form: fastattr.input_x_gradient(m, x, target=TARGET, model_form=form),
    "integrated_gradients": lambda m, x, form: fastattr.integrated_gradients(
        m, x, target=TARGET, n_steps=4, model_form=form),
    # refined to a tolerance no example reaches: every example takes max_steps points
    "integrated_gradients_rtol": lambda m, x, form: fastattr.integrated_gradients(
        m, x, target=TARGET, rtol=1e-9, max_steps=9, model_form=form)[0],
    "smoothgrad": lambda m, x, form: fastattr.smoothgrad(
        m, x, target=TARGET, n_samples=3, stdev=0.1, seed=7, model_form=form),
    "gradient_shap": lambda m, x, form: fastattr.gradient_shap(
        m, x, _refs(x), target=TARGET, n_samples=3, stdev=0.05, seed=1, model_form=form),
    "forward_rows": _forward_rows,
}


def test_every_method_in_fast_form_equals_eager_up_to_rounding(case):
    assert mf.model_in_form(case.model, "fast", (case.x,)).form == "fast", "the rewrite must apply here"
    for name, method in METHODS.items():
        eager = method(case.model, case.x, "eager")
        fast = method(case.model, case.x, "fast")
        exact = method(case.model64, case.x.double(), "eager")
        assert fast.dtype == eager.dtype and fast.shape == eager.shape
        assert_error_within(fast, exact, eager, factor=FACTOR, msg=f"{case.name} {name}:")


def test_refined_integrated_gradients_refuses_the_compiled_form():
    model = conv_bn_net()
    with pytest.raises(ValueError, match="model_form.*rtol"):
        fastattr.integrated_gradients(model, torch.rand(2, 3, 16, 16), target=TARGET, rtol=0.1,
                                      model_form="compiled")


def test_engine_reports_the_form_it_ran():
    model = conv_bn_net()
    x = torch.rand(2, 3, 16, 16)
    result = engine_result(model, x, lambda xs: single_point_plan("grad"), "fast")
    assert (result.model_form, result.form_reason) == ("fast", None)
    result = engine_result(model, x, lambda xs: single_point_plan("grad"), "eager")
    assert (result.model_form, result.form_reason) == ("eager", None)


def test_score_cam_masked_rows_in_fast_form():
    model, x = conv_bn_net(), torch.rand(2, 3, 16, 16)
    eager = fastattr.score_cam(model, x, model[4], target=TARGET)
    fast = fastattr.score_cam(model, x, model[4], target=TARGET, model_form="fast")
    model64 = copy.deepcopy(model).double()
    exact = fastattr.score_cam(model64, x.double(), model64[4], target=TARGET)
    assert_error_within(fast, exact, eager, factor=FACTOR)


# ---------------------------------------------------------------- the caller's model


def _snapshot(model: nn.Module):
    state = [(name, t, t.detach().clone(), t.stride(), t.requires_grad)
             for name, t in list(model.named_parameters()) + list(model.named_buffers())]
    modules = [(name, m, m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
               for name, m in model.named_modules()]
    return state, modules


def _assert_unchanged(model: nn.Module, snapshot) -> None:
    state, modules = snapshot
    now = list(model.named_parameters()) + list(model.named_buffers())
    assert [n for n, *_ in state] == [n for n, _ in now]
    for (name, t, value, stride, requires_grad), (_, t_now) in zip(state, now):
        assert t_now is t, f"{name} was replaced"
        assert t.stride() == stride, f"{name}'s layout changed"
        assert t.requires_grad == requires_grad, f"{name}.requires_grad changed"
        assert_bitwise_equal(t.detach(), value, msg=name)
    assert [(n, m) for n, m, *_ in modules] == list(model.named_modules())
    for name, m, training, fwd, pre, bwd in modules:
        assert m.training == training and dict(m._forward_hooks) == fwd
        assert dict(m._forward_pre_hooks) == pre and dict(m._backward_hooks) == bwd, name


def test_callers_model_is_unchanged_by_the_fast_form():
    model = resnet18()
    model.fc.weight.requires_grad_(False)  # a frozen parameter stays frozen, the others trainable
    x = torch.rand(2, 3, 32, 32)
    snap = _snapshot(model)
    for method in METHODS.values():
        method(model, x, "fast")
    _assert_unchanged(model, snap)
    assert model.fc.weight.grad is None and model.conv1.weight.grad is None


# ---------------------------------------------------------------- keyed noise


def test_keyed_noise_in_fast_form_is_independent_of_chunks_and_batch():
    model, x = conv_bn_net(), torch.rand(3, 3, 16, 16)
    exact = engine_result(copy.deepcopy(model).double(), x.double(), _smoothgrad_plan, "eager").mean[0]
    eager = engine_result(model, x, _smoothgrad_plan, "eager").mean[0]
    for chunk_rows in (None, 1, 4):
        fast = engine_result(model, x, _smoothgrad_plan, "fast", chunk_rows=chunk_rows)
        assert fast.model_form == "fast"
        assert_error_within(fast.mean[0], exact, eager, factor=FACTOR, msg=f"chunk_rows={chunk_rows}")
    # example 1 alone, keyed as example 1, is example 1 of the batch
    alone = engine_result(model, x[1:2], lambda xs: _smoothgrad_plan(xs, example_offset=1), "fast").mean[0]
    assert_error_within(alone[0], exact[1], eager[1], factor=FACTOR, msg="example alone")
    # GradientSHAP's keyed draws too, through the public function
    refs = _refs(x)
    shap = lambda m, xx, form, **kw: fastattr.gradient_shap(m, xx, refs.to(xx.dtype), target=TARGET, n_samples=4,
                                                             stdev=0.05, seed=3, model_form=form, **kw)
    exact, eager = shap(copy.deepcopy(model).double(), x.double(), "eager"), shap(model, x, "eager")
    for chunk_rows in (1, 5):
        assert_error_within(shap(model, x, "fast", chunk_rows=chunk_rows), exact, eager, factor=FACTOR)
    alone = shap(model, x[2:], "fast", example_offset=2)
    assert_error_within(alone[0], exact[2], eager[2], factor=FACTOR)


# ---------------------------------------------------------------- fall back, with the reason


def _saliency_result(model, x, form="fast", **options):
    req, _ = build_request(model, x, TARGET, None, lambda xs: single_point_plan("grad"), None, None,
                           model_form=form, **options)
    return run(req)


def test_train_mode_runs_eager_with_the_reason():
    model, x = conv_bn_net().train(), torch.rand(4, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the engine's own train-mode warning
        fast = _saliency_result(model, x, "fast")
        eager = _saliency_result(model, x, "eager")
    assert fast.model_form == "eager" and "train mode" in fast.form_reason
    assert_bitwise_equal(fast.mean[0], eager.mean[0])  # batch statistics, as eager computes them
    assert model.training


def test_hooks_run_eager_with_the_reason():
    model, x = conv_bn_net(), torch.rand(2, 3, 16, 16)
    seen = []
    handle = model[4].register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    try:
        fast = _saliency_result(model, x, "fast")
        assert fast.model_form == "eager" and "'4'" in fast.form_reason and "hooks" in fast.form_reason
        assert seen == [2]  # the caller's hook ran, on the caller's model
        assert_bitwise_equal(fast.mean[0], _saliency_result(model, x, "eager").mean[0])
    finally:
        handle.remove()
    assert _saliency_result(model, x, "fast").model_form == "fast"  # and without the hook, fast again
    handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert "global module hooks" in _saliency_result(model, x, "fast").form_reason
    finally:
        handle.remove()


def test_methods_that_hook_the_callers_modules_run_eager_with_the_reason():
    model, x = conv_bn_net(), torch.rand(2, 3, 16, 16)
    ruled = _saliency_result(model, x, "fast", rules=contextlib.nullcontext)
    assert (ruled.model_form, ruled.form_reason) == ("eager", mf.RULES_REASON)
    req = types.SimpleNamespace(model=model, model_form="fast", rules=None, leaves=lambda: (), inputs=(x,),
                                additional_args=())
    assert (mf.request_form(req).form, mf.request_form(req).reason) == ("eager", mf.LEAVES_REASON)


class _Branchy(nn.Module):
    """Control flow on the values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y.flatten(1) if y.sum() > 0 else -y.flatten(1)


@pytest.mark.parametrize("model, reason", [
    (_Branchy().eval(), "torch.fx cannot trace"),
    (nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval(), "no rewrite applies"),
    (lambda t: t.sum(1, keepdim=True), "not an nn.Module"),
])
def test_models_the_rewrite_cannot_take_run_eager_with_the_reason(model, reason):
    x = torch.rand(2, 3, 6, 6) if isinstance(model, _Branchy) else torch.rand(2, 16)
    target = 0 if not isinstance(model, nn.Module) else TARGET
    req, _ = build_request(model, x, target, None, lambda xs: single_point_plan("grad"), None, None,
                           model_form="fast")
    result = run(req)
    assert result.model_form == "eager" and reason in result.form_reason
    req, _ = build_request(model, x, target, None, lambda xs: single_point_plan("grad"), None, None)
    assert_bitwise_equal(result.mean[0], run(req).mean[0])


def test_a_rewrite_that_changes_the_function_is_caught(monkeypatch):
    # a build of its own: not a copy of another test's conv_bn_net, whose check it would share
    monkeypatch.setattr(mf, "_by_architecture", weakref.WeakValueDictionary())
    real = mf._batch_norm_affine
    monkeypatch.setattr(mf, "_batch_norm_affine", lambda bn: (real(bn)[0], torch.zeros_like(real(bn)[1])))
    model, x = conv_bn_net(), torch.rand(2, 3, 16, 16)
    result = _saliency_result(model, x, "fast")
    assert result.model_form == "eager" and "off by" in result.form_reason


class _Viewing(nn.Module):
    """Flattens a conv's output with ``view``, which a channels-last tensor
    only takes when its spatial size is 1 x 1."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        z = self.bn(self.conv(x)).view(x.shape[0], -1)
        return torch.stack((z.sum(1), z.square().sum(1)), 1)


def test_the_rewrite_is_checked_per_input_signature():
    torch.manual_seed(10)
    model = _randomize_batch_norms(_Viewing(), 10)
    ok = mf.model_in_form(model, "fast", (torch.rand(2, 3, 3, 3),))  # 1 x 1 after the conv
    assert (ok.form, ok.reason) == ("fast", None)
    wide = torch.rand(2, 3, 5, 5)  # 3 x 3 after the conv
    failed = mf.model_in_form(model, "fast", (wide,))
    assert failed.form == "eager" and "fails on the first row" in failed.reason and "view" in failed.reason
    eager = fastattr.saliency(model, wide, target=TARGET)
    assert_bitwise_equal(fastattr.saliency(model, wide, target=TARGET, model_form="fast"), eager)


def test_linear_batch_norm_folds_only_for_rows_of_features():
    torch.manual_seed(8)
    model = _randomize_batch_norms(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)), 8)
    fast = mf.model_in_form(model, "fast", (torch.rand(2, 8),))
    assert fast.form == "fast"
    x3 = torch.rand(3, 8, 8)  # BatchNorm1d normalises dim 1 here, not the linear layer's features
    with torch.no_grad():
        assert_bitwise_equal(fast.model(x3), model(x3))
        x2 = torch.rand(3, 8)
        assert_error_within(fast.model(x2), copy.deepcopy(model).double()(x2.double()), model(x2), factor=FACTOR)


def test_changed_parameters_make_a_new_copy():
    model, x = conv_bn_net(), torch.rand(2, 3, 16, 16)
    exact = lambda: fastattr.saliency(copy.deepcopy(model).double(), x.double(), target=TARGET, abs=False)
    first = fastattr.saliency(model, x, target=TARGET, abs=False, model_form="fast")
    with torch.no_grad():
        model[0].weight.mul_(-1.5)  # in place: the version counter moves
        model[5].running_mean.add_(1.0)  # a buffer
    fast = fastattr.saliency(model, x, target=TARGET, abs=False, model_form="fast")
    eager = fastattr.saliency(model, x, target=TARGET, abs=False)
    assert_error_within(fast, exact(), eager, factor=FACTOR)
    assert not torch.allclose(fast, first)
    model.load_state_dict(conv_bn_net().state_dict())  # copy_ into every tensor
    assert_error_within(fastattr.saliency(model, x, target=TARGET, abs=False, model_form="fast"), exact(),
                        fastattr.saliency(model, x, target=TARGET, abs=False), factor=FACTOR)


@pytest.mark.parametrize("name", ["conv_bn", "mlp_bn", "vit"])
def test_changed_values_refresh_the_copy_in_place(name):
    """A change of the weights' values only (an optimizer step, a
    randomization step) refreshes the fast copy in place, no rebuild (no
    trace, fold or check again): the same copy, holding exactly the tensors
    a copy built afresh from the changed model holds (folds included; the
    ViT has parameters on non-leaf modules: its class token and position
    embedding)."""
    make, shape = MODELS[name]
    model, x = make(), torch.rand((2, *shape), generator=torch.Generator().manual_seed(6))
    before = mf.model_in_form(model, "fast", (x,))
    assert before.form == "fast"
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for t in [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]:
            t.mul_(torch.empty_like(t).uniform_(0.5, 1.5, generator=g))
    after = mf.model_in_form(model, "fast", (x,))
    assert after.model is before.model
    rebuilt = mf.model_in_form(copy.deepcopy(model), "fast", (x,)).model
    mine, fresh = after.model.state_dict(), rebuilt.state_dict()
    assert mine.keys() == fresh.keys()
    for key in mine:
        assert torch.equal(mine[key], fresh[key]), key
    with torch.no_grad():
        assert torch.equal(after.model(x), rebuilt(x))


def test_a_copy_of_a_cached_model_is_not_traced_again(monkeypatch):
    """A deep copy of a model whose fast copy is cached (the randomization
    metrics explain one per call), with other weights, gets the cached copy
    copied and refreshed: no trace, fold or check, the tensors of a copy
    built afresh."""
    monkeypatch.setattr(mf, "_by_architecture", weakref.WeakValueDictionary())  # model's entry is the one kept
    model, x = conv_bn_net(), torch.rand(2, 3, 16, 16)
    assert mf.model_in_form(model, "fast", (x,)).form == "fast"
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for t in twin.parameters():
            t.mul_(-2.0)
    rebuilt, _ = mf._rewritten(twin)  # built afresh

    def no_rebuild(*_):
        raise AssertionError("the copy was traced again")

    monkeypatch.setattr(mf, "_rewritten", no_rebuild)
    monkeypatch.setattr(mf, "_check", no_rebuild)
    formed = mf.model_in_form(twin, "fast", (x,))
    assert formed.form == "fast" and formed.model is not mf.model_in_form(model, "fast", (x,)).model
    mine, fresh = formed.model.state_dict(), rebuilt.state_dict()
    assert mine.keys() == fresh.keys() and all(torch.equal(mine[k], fresh[k]) for k in mine)


def test_a_model_with_nothing_to_rewrite_is_never_copied(monkeypatch):
    """An MLP or a transformer block (no 2-D convolution, no BatchNorm) runs
    eager under "fast" without a copy of its weights: the default form costs
    a large model of that kind no memory."""
    def no_copy(_):
        raise AssertionError("the model was copied")

    monkeypatch.setattr(mf, "_copy", no_copy)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    mixer = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)).eval()
    block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()  # fx cannot trace it
    for model, x in ((mlp, torch.rand(2, 8)), (mixer, torch.rand(2, 5, 8)), (block, torch.rand(2, 5, 8))):
        formed = mf.model_in_form(model, "fast", (x,))
        assert formed.form == "eager" and formed.model is model
        assert formed.reason.startswith(mf.NO_REWRITE if model is not block else "torch.fx cannot trace")


def test_bad_model_form_fails_before_any_compute():
    calls = []
    model = conv_bn_net()
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="model_form: expected one of 'eager', 'fast', 'compiled'"):
        fastattr.saliency(model, torch.rand(2, 3, 16, 16), target=TARGET, model_form="fastest")
    with pytest.raises(ValueError, match="model_form"):
        fastattr.score_cam(model, torch.rand(2, 3, 16, 16), model[4], target=TARGET, model_form=None)
    assert calls == []


# ---------------------------------------------------------------- "compiled": one small model (slow: torch.compile)


def test_compiled_form_small_mlp():
    """torch.compile of the folded MLP, one graph per chunk size: within the
    measured tolerance, compiled once, reused by a later call, the last
    shorter chunk and the measuring chunk uncompiled, the caller's model
    unchanged."""
    from torch._dynamo.utils import counters

    model = mlp_bn()
    x = torch.rand(7, 16, generator=torch.Generator().manual_seed(9))
    snap = _snapshot(model)
    plan = lambda xs: single_point_plan("grad")
    exact = engine_result(copy.deepcopy(model).double(), x.double(), plan, "eager").mean[0]
    eager = engine_result(model, x, plan, "eager").mean[0]
    graphs = counters["stats"]["unique_graphs"]
    first = engine_result(model, x, plan, "compiled", chunk_rows=3)  # chunks of 3, 3, 1 rows
    assert (first.model_form, first.form_reason) == ("compiled", None)
    assert_error_within(first.mean[0], exact, eager, factor=FACTOR)
    form = mf.model_in_form(model, "compiled", (x,))
    assert form.compiled.served == {(3, True)} and isinstance(form.compiled.base, mf._FastForward)
    compiled_graphs = counters["stats"]["unique_graphs"] - graphs
    assert compiled_graphs >= 1
    again = engine_result(model, x, plan, "compiled", chunk_rows=3)
    assert counters["stats"]["unique_graphs"] - graphs == compiled_graphs  # no new compilation
    assert_error_within(again.mean[0], exact, eager, factor=FACTOR)  # its first chunk compiled too now
    _assert_unchanged(model, snap)
