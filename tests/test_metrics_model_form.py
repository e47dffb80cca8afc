"""``model_form`` on the metrics (issue 18): with ``"fast"`` every metric's
model rows (forward-only rows, the explainer's rows, the engine plans a
metric extends) run the rewritten copy of the model, and the value equals
``"eager"``'s up to float rounding; the caller's model is left as it was;
keyed noise gives the same values for any chunking; a model the form does
not apply to (train mode, hooks, an MLP with nothing to rewrite) runs as it
is, bit for bit; a bad ``model_form`` fails before any compute.

Tolerance (measured in the same run, as tests/test_model_form.py): the
metric's value in the fast form is at most ``FACTOR`` (tests/test_model_form.py's,
4) times as far from the float64 value (a float64 copy of the model, float64
inputs, eager) as eager float32's is. The metrics are sums, differences,
ratios, norms and correlations of the model's outputs and gradients: the
form's rounding of those enters them as eager's does, so the same factor
holds; a metric that ran the wrong rows or a changed function would be off
by the value's own size.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from fastattr.engine import model_form as mf
from fastattr.metrics._explain import Explainer
from fastattr.metrics.axiomatic import completeness, input_invariance, non_sensitivity
from fastattr.metrics.consistency import consistency
from fastattr.metrics.continuity import continuity
from fastattr.metrics.deletion import deletion_curve, insertion_curve, pixel_flipping
from fastattr.metrics.faithfulness import faithfulness_correlation, faithfulness_estimate, sensitivity_n
from fastattr.metrics.faithfulness_monotonicity import monotonicity, monotonicity_correlation
from fastattr.metrics.faithfulness_regions import region_perturbation, selectivity
from fastattr.metrics.faithfulness_sufficiency import sufficiency
from fastattr.metrics.fragility import fragility
from fastattr.metrics.infidelity import infidelity
from fastattr.metrics.irof import irof
from fastattr.metrics.lipschitz import local_lipschitz_estimate
from fastattr.metrics.random_logit import random_logit
from fastattr.metrics.road import road
from fastattr.metrics.robustness import fgsm_accuracy, pgd_accuracy
from fastattr.metrics.sensitivity import avg_sensitivity, max_sensitivity
from fastattr.testing import assert_bitwise_equal, assert_error_within

from test_model_form import FACTOR, _assert_unchanged, _snapshot, conv_bn_net, mlp_bn

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")

TARGET = 1


def _images(batch: int = 3, seed: int = 5):
    """Inputs ``[B, 3, 16, 16]`` for conv_bn_net and fixed attributions shaped like them."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 16, 16, generator=g), torch.randn(batch, 3, 16, 16, generator=g)


def _segments(batch: int) -> torch.Tensor:
    """Fixed IROF segments ``[B, 16, 16]``: 4 x 4 squares of 4 x 4 pixels (no SLIC, so that float32
    and float64 runs remove the same pixels)."""
    rows = torch.arange(16) // 4
    return (rows.view(16, 1) * 4 + rows.view(1, 16)).expand(batch, 16, 16).contiguous()


def _values(out) -> torch.Tensor:
    return out.values if hasattr(out, "values") and not isinstance(out, torch.Tensor) else out


# name -> metric(model, x, attributions, model_form, **chunking): a float tensor. Attributions
# given as tensors are the same in every run (their order does not move with rounding).
METRICS = {
    "max_sensitivity (engine plan)": lambda m, x, a, form, **kw: max_sensitivity(
        m, x, TARGET, "saliency", {"abs": False}, radius=0.05, n_samples=4, seed=3, model_form=form, **kw),
    "avg_sensitivity (explainer per chunk)": lambda m, x, a, form, **kw: avg_sensitivity(
        m, x, TARGET, "smoothgrad", {"n_samples": 3, "stdev": 0.1, "seed": 2}, radius=0.05, n_samples=3, seed=4,
        model_form=form, **kw),
    "infidelity": lambda m, x, a, form, **kw: infidelity(
        m, x, "input_x_gradient", TARGET, n_samples=5, stdev=0.05, seed=2, model_form=form, **kw),
    "local_lipschitz_estimate": lambda m, x, a, form, **kw: local_lipschitz_estimate(
        m, x, TARGET, "integrated_gradients", {"n_steps": 4}, std=0.05, n_samples=3, seed=1, model_form=form, **kw),
    "deletion_curve": lambda m, x, a, form, **kw: deletion_curve(
        m, x, a, TARGET, n_steps=6, model_form=form, **kw).values,
    "pixel_flipping": lambda m, x, a, form, **kw: pixel_flipping(
        m, x, a, TARGET, features_in_step=96, model_form=form, **kw).values,
    "faithfulness_correlation": lambda m, x, a, form, **kw: faithfulness_correlation(
        m, x, a, TARGET, n_runs=12, subset_size=64, model_form=form, **kw),
    "irof": lambda m, x, a, form, **kw: irof(
        m, x, a, TARGET, segments=_segments(x.shape[0]), model_form=form, **kw).values,
    "completeness": lambda m, x, a, form, **kw: completeness(m, x, a, TARGET, model_form=form, **kw),
    "random_logit": lambda m, x, a, form, **kw: random_logit(
        m, x, TARGET, num_classes=4, similarity="pearson", seed=3, model_form=form, **kw),
    "continuity": lambda m, x, a, form, **kw: continuity(m, x, TARGET, n_steps=3, model_form=form, **kw),
}


@pytest.fixture(scope="module")
def conv_case():
    model = conv_bn_net()
    x, a = _images()
    return model, copy.deepcopy(model).double(), x, a


@pytest.fixture
def fast_calls(monkeypatch):
    """How many times the rewritten copy's forward ran."""
    calls = []
    real = mf._FastForward.forward

    def counted(self, *args):
        calls.append(args[0].shape[0])
        return real(self, *args)

    monkeypatch.setattr(mf._FastForward, "forward", counted)
    return calls


@pytest.mark.parametrize("name", list(METRICS))
def test_fast_form_equals_eager_up_to_rounding(conv_case, fast_calls, name):
    model, model64, x, a = conv_case
    metric = METRICS[name]
    assert mf.model_in_form(model, "fast", (x,)).form == "fast", "the rewrite must apply to this model"
    fast_calls.clear()  # the check of the copy on the first row
    eager = metric(model, x, a, "eager")
    assert fast_calls == [], "eager must not run the rewritten copy"
    fast = metric(model, x, a, "fast")
    assert fast_calls, f"{name}: the fast form did not run the rewritten copy"
    exact = metric(model64, x.double(), a.double(), "eager")
    assert fast.shape == eager.shape and fast.dtype == eager.dtype
    assert torch.isfinite(exact).all(), f"{name}: pick inputs where the metric is defined"
    assert_error_within(fast, exact, eager, factor=FACTOR, msg=f"{name}:")


def test_default_form_is_fast(conv_case, fast_calls):
    model, _, x, a = conv_case
    default = completeness(model, x, a, TARGET)
    assert fast_calls
    assert_bitwise_equal(default, completeness(model, x, a, TARGET, model_form="fast"))


def test_mlp_has_nothing_to_rewrite_and_runs_eager_bit_for_bit(fast_calls):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x, a = _images()
    assert "no rewrite applies" in mf.model_in_form(mlp, "fast", (x,)).reason
    for name, metric in METRICS.items():
        assert_bitwise_equal(metric(mlp, x, a, "fast"), metric(mlp, x, a, "eager"), msg=name)
    assert fast_calls == []


# ---------------------------------------------------------------- keyed noise, chunks and batches


@pytest.mark.parametrize("name", ["max_sensitivity (engine plan)", "avg_sensitivity (explainer per chunk)",
                                  "infidelity", "faithfulness_correlation"])
def test_keyed_noise_in_fast_form_does_not_depend_on_chunks_or_batch(conv_case, name):
    model, model64, x, a = conv_case
    metric = METRICS[name]
    exact = metric(model64, x.double(), a.double(), "eager")
    eager = metric(model, x, a, "eager")
    for chunk_rows in (1, 5):
        fast = metric(model, x, a, "fast", chunk_rows=chunk_rows)
        assert_error_within(fast, exact, eager, factor=FACTOR, msg=f"{name} chunk_rows={chunk_rows}:")
    # each example alone, keyed as its index in the batch, is that example of the batch (held to
    # the batch's tolerance: one example's eager error may be exact by luck)
    alone = torch.cat([metric(model, x[b:b + 1], a[b:b + 1], "fast", example_offset=b) for b in range(x.shape[0])])
    assert_error_within(alone, exact, eager, factor=FACTOR, msg=f"{name} examples alone:")


# ---------------------------------------------------------------- the caller's model


def test_callers_model_is_unchanged(fast_calls):
    model = conv_bn_net()
    model[0].weight.requires_grad_(False)  # a frozen parameter stays frozen, the others trainable
    x, a = _images(2)
    snap = _snapshot(model)
    for metric in METRICS.values():
        metric(model, x, a, "fast")
    fgsm_accuracy(model, x, torch.tensor([0, 1]), [0.01, 0.05], model_form="fast")
    pgd_accuracy(model, x, torch.tensor([0, 1]), 0.03, n_steps=2, model_form="fast")
    fragility(model, x, TARGET, n_steps=1, model_form="fast")
    assert fast_calls
    _assert_unchanged(model, snap)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- "compiled" (slow: torch.compile)


def test_compiled_form_behind_a_softmax():
    """A metric's softmax around the model (a FormedModel): the folded MLP
    compiled for the forward rows' chunk size, within the measured tolerance,
    compiled once and reused by a later call."""
    from torch._dynamo.utils import counters

    model = mlp_bn()
    x = torch.rand(5, 16, generator=torch.Generator().manual_seed(3))
    a = torch.randn(5, 16, generator=torch.Generator().manual_seed(4))
    curve = lambda m, xx, form: deletion_curve(m, xx, a.to(xx.dtype), TARGET, n_steps=4, model_form=form,
                                                chunk_rows=8).values  # 25 rows: chunks of 8, 8, 8, 1
    exact, eager = curve(copy.deepcopy(model).double(), x.double(), "eager"), curve(model, x, "eager")
    graphs = counters["stats"]["unique_graphs"]
    assert_error_within(curve(model, x, "compiled"), exact, eager, factor=FACTOR)
    form = mf.model_in_form(model, "compiled", (x,))
    assert form.form == "compiled" and form.compiled.served == {(8, False)}
    compiled_graphs = counters["stats"]["unique_graphs"] - graphs
    assert compiled_graphs >= 1
    assert_error_within(curve(model, x, "compiled"), exact, eager, factor=FACTOR)
    assert counters["stats"]["unique_graphs"] - graphs == compiled_graphs  # no new compilation


# ---------------------------------------------------------------- falling back to eager


def test_train_mode_runs_eager_bit_for_bit(fast_calls):
    model = conv_bn_net().train()
    x, a = _images()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the engine's own train-mode warning
        for name in ("max_sensitivity (engine plan)", "infidelity", "pixel_flipping", "completeness",
                     "faithfulness_correlation"):
            metric = METRICS[name]
            assert_bitwise_equal(metric(model, x, a, "fast"), metric(model, x, a, "eager"), msg=name)
    assert model.training and fast_calls == []
    assert "train mode" in mf.model_in_form(model, "fast", (x,)).reason


def test_hooks_run_eager_bit_for_bit(fast_calls):
    model = conv_bn_net()
    x, a = _images()
    seen = []
    handle = model[4].register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    try:
        for name in ("infidelity", "deletion_curve"):
            metric = METRICS[name]
            assert_bitwise_equal(metric(model, x, a, "fast"), metric(model, x, a, "eager"), msg=name)
    finally:
        handle.remove()
    assert seen and fast_calls == []  # the caller's hook ran, on the caller's model


# ---------------------------------------------------------------- the explainer's form


def test_explainer_takes_the_metrics_form_unless_its_options_set_one():
    assert Explainer("saliency").model_form == "eager"  # the drop-ins' default
    exp = Explainer("saliency", None, "fast")
    assert exp.passes_model_form and exp.model_form == "fast"
    own = Explainer("integrated_gradients", {"model_form": "eager", "n_steps": 4}, "fast")
    assert not own.passes_model_form and own.model_form == "eager"
    assert own.plan()[0].n_steps == 4  # the option is the form's, not the plan's
    user = Explainer(lambda model, x, target=None, additional_forward_args=None: x, None, "fast")
    assert not user.passes_model_form
    with pytest.raises(ValueError, match="model_form"):
        Explainer("saliency", {"model_form": "quick"}, "fast")


def test_explainer_options_choose_the_form_of_the_explainers_rows(conv_case, fast_calls):
    model, _, x, a = conv_case
    value = max_sensitivity(model, x, TARGET, "saliency", {"model_form": "eager"}, n_samples=2, model_form="fast")
    assert fast_calls == []
    assert_bitwise_equal(value, max_sensitivity(model, x, TARGET, n_samples=2, model_form="eager"))


# ---------------------------------------------------------------- bad model_form


def _every_metric(model, x, a, form):
    """Every metric function that takes ``model_form``, called with ``form``."""
    labels = torch.zeros(x.shape[0], dtype=torch.int64)
    pixels = a.sum(1, keepdim=True)
    return [
        lambda: max_sensitivity(model, x, TARGET, model_form=form),
        lambda: avg_sensitivity(model, x, TARGET, model_form=form),
        lambda: local_lipschitz_estimate(model, x, TARGET, model_form=form),
        lambda: infidelity(model, x, "saliency", TARGET, model_form=form),
        lambda: infidelity(model, x, a, TARGET, model_form=form),
        lambda: deletion_curve(model, x, a, TARGET, model_form=form),
        lambda: insertion_curve(model, x, a, TARGET, model_form=form),
        lambda: pixel_flipping(model, x, "saliency", TARGET, model_form=form),
        lambda: completeness(model, x, "saliency", TARGET, model_form=form),
        lambda: non_sensitivity(model, x, a, TARGET, model_form=form),
        lambda: input_invariance(model, x, "saliency", TARGET, model_form=form),
        lambda: faithfulness_correlation(model, x, a, TARGET, subset_size=8, model_form=form),
        lambda: faithfulness_estimate(model, x, a, TARGET, model_form=form),
        lambda: sensitivity_n(model, x, a, TARGET, model_form=form),
        lambda: monotonicity(model, x, a, TARGET, model_form=form),
        lambda: monotonicity_correlation(model, x, a, TARGET, model_form=form),
        lambda: region_perturbation(model, x, a, TARGET, model_form=form),
        lambda: selectivity(model, x, a, TARGET, model_form=form),
        lambda: sufficiency(model, x, a, TARGET, model_form=form),
        lambda: irof(model, x, a, TARGET, model_form=form),
        lambda: road(model, x, pixels, TARGET, model_form=form),
        lambda: consistency(model, x, TARGET, model_form=form),
        lambda: continuity(model, x, TARGET, model_form=form),
        lambda: random_logit(model, x, TARGET, 4, model_form=form),
        lambda: fgsm_accuracy(model, x, labels, 0.1, model_form=form),
        lambda: pgd_accuracy(model, x, labels, 0.1, model_form=form),
        lambda: fragility(model, x, TARGET, model_form=form),
    ]


@pytest.mark.parametrize("bad", ["fastest", None, "FAST"])
def test_bad_model_form_fails_before_any_compute(bad):
    model = conv_bn_net()
    x, a = _images(2)
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    for i, call in enumerate(_every_metric(model, x, a, bad)):
        with pytest.raises(ValueError, match="model_form: expected one of 'eager', 'fast', 'compiled'"):
            call()
        assert calls == [], f"metric {i} ran the model before refusing model_form={bad!r}"
