"""Quantus's metrics in ``fastattr audit --metrics``: every new name runs in
an audit and its column (and curve) equals the :mod:`fastattr.metrics`
function called directly on the same batch with the same explanation;
ground-truth masks (an .npz's ``s``) are loaded, transformed and checked,
and a localisation metric without them is refused before any work; the
default metric set is unchanged."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import fastattr.metrics as M
from fastattr.cli import main
from fastattr.cli.audit import check_masks_given
from fastattr.cli.config import AuditError
from fastattr.cli.data import load_dataset
from fastattr.cli.measures import available_groups, metric_names, resolved_for_model
from fastattr.cli.methods import METHOD_SETTINGS, explain, explainer_for, make_context, method_rows
from fastattr.cli.options import resolve
from fastattr.cli.plan import rows_per_example
from fastattr.cli.transforms import InputTransform
from fastattr.metrics.continuity import continuity
from fastattr.metrics.random_logit import random_logit
from fastattr.metrics.randomization import efficient_model_randomization, smooth_model_randomization
from fastattr.metrics.stability import relative_output_stability, relative_representation_stability

FACTORY = '''
import torch
from torch import nn

def cnn():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

def mlp():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 10))

def never_built():
    raise RuntimeError("the model was built: the audit started work before refusing")
'''
DEFAULTS = ("max_sensitivity", "avg_sensitivity", "relative_input_stability", "infidelity", "local_lipschitz_estimate",
            "deletion_auc", "insertion_auc", "randomization_spearman", "fgsm_accuracy", "pgd_accuracy",
            "explanation_error")
FAITHFULNESS = ("faithfulness_correlation", "faithfulness_estimate", "monotonicity", "monotonicity_correlation",
                "region_perturbation_auc", "selectivity_auc", "irof", "road", "pixel_flipping_auc")
ROBUSTNESS = ("continuity", "relative_output_stability", "relative_representation_stability", "random_logit",
              "smooth_mprt", "efficient_mprt")
AXIOMATIC = ("completeness_gap", "non_sensitivity", "input_invariance")
COMPLEXITY = ("sparseness", "entropy_complexity", "effective_complexity")
LOCALISATION = ("pointing_game", "attribution_localisation", "top_k_localisation", "relevance_rank_accuracy",
                "relevance_mass_accuracy", "localisation_auc")
NEW = FAITHFULNESS + ROBUSTNESS + AXIOMATIC + COMPLEXITY + LOCALISATION
# Small, and off the defaults where a wrong wiring would show.
OPTIONS = ("faithfulness_correlation.n_runs=5", "faithfulness_correlation.baseline=uniform",
           "faithfulness_estimate.features_in_step=8", "faithfulness_estimate.similarity=spearman",
           "monotonicity.features_in_step=8", "monotonicity_correlation.features_in_step=8",
           "monotonicity_correlation.n_samples=2", "region_perturbation.patch_size=2",
           "region_perturbation.regions_evaluation=5", "selectivity.patch_size=4", "irof.n_segments=8",
           "irof.baseline=black", "road.percentage_step=20", "road.noise=0.05", "pixel_flipping.features_in_step=8",
           "pixel_flipping.baseline=white", "continuity.n_steps=4", "output_stability.n_samples=2",
           "output_stability.output=probability", "representation_stability.n_samples=2",
           "representation_stability.layers=1", "smooth_mprt.n_samples=2", "efficient_mprt.n_bins=20",
           "non_sensitivity.features_in_step=8", "complexity.eps=0.1", "top_k_localisation.k=6")
METHODS = ("saliency", "smoothgrad")
SEED, LIMIT, BATCH = 3, 6, 3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantus_audit")
    (root / "quantus_audit_models.py").write_text(FACTORY)
    data = load_dataset(None, 40)
    masks = data.x[:, 0] > 0.5  # [N, H, W]: one mask per example
    np.savez(root / "masked.npz", x=data.x, y=data.y, s=masks)
    np.savez(root / "plain.npz", x=data.x, y=data.y)
    np.savez(root / "flat.npz", x=data.x.reshape(len(data.x), -1), y=data.y)
    import sys

    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


def audit(*args):
    return main(["audit", "--quiet", *map(str, args)])


@pytest.fixture(scope="module")
def audited(env):
    out = env / "out"
    options = [a for o in OPTIONS for a in ("--metric-option", o)]
    assert audit("--model", "quantus_audit_models:cnn", "--data", env / "masked.npz", "--limit", LIMIT,
                 "--batch-size", BATCH, "--seed", SEED, "--methods", ",".join(METHODS), "--metrics", ",".join(NEW),
                 *options, "--out", out) == 0
    frame = pd.read_parquet(out / "results.parquet")
    with open(out / "summary.json") as f:
        return frame, json.load(f)


def _by_max(a):
    """Quantus's normalise_by_max, per example (no all-zero example here)."""
    return a / a.abs().reshape(a.shape[0], -1).amax(1).view(-1, *([1] * (a.dim() - 1)))


def direct_values(x, s, pred, model, method, offset, settings, context):
    """Every new metric's values ``[b]`` (and curves ``[b, K]``) of one batch,
    from the fastattr.metrics functions with OPTIONS written out by hand."""
    a = explain(method, model, x, pred, SEED, offset, None, settings, context)
    explainer, kw = explainer_for(method, x, SEED, None, settings, context)
    common = {"seed": SEED, "example_offset": offset}
    normed = _by_max(a).abs()
    region = M.region_perturbation(model, x, a, pred, patch_size=2, regions_evaluation=5, **common)
    selective = M.selectivity(model, x, a, pred, patch_size=4, **common)
    flipped = M.pixel_flipping(model, x, a, pred, features_in_step=8, baseline="white", **common)
    kept = M.road(model, x, a.sum(1, keepdim=True), pred, percentages=range(1, 100, 20), noise=0.05, **common)
    # blocks of Sequential(conv, relu, flatten, linear): its parameterized children, bottom first
    smooth = smooth_model_randomization(model, x, pred, explainer, kw, order="bottom_up", layers=["0", "3"],
                                        seed=SEED, n_samples=2, noise_magnitude=0.1, ssim_win_size=7,
                                        example_offset=offset)
    columns = {
        "faithfulness_correlation": M.faithfulness_correlation(model, x, a, pred, n_runs=5, subset_size=6,
                                                               baseline="uniform", **common),
        "faithfulness_estimate": M.faithfulness_estimate(model, x, a, pred, features_in_step=8, similarity="spearman",
                                                         **common),
        "monotonicity": M.monotonicity(model, x, a.abs(), pred, features_in_step=8, **common),
        "monotonicity_correlation": M.monotonicity_correlation(model, x, a.abs(), pred, features_in_step=8,
                                                               n_samples=2, **common),
        "region_perturbation_auc": region.auc, "selectivity_auc": selective.auc,
        "irof": M.irof(model, x, a, pred, baseline="black", n_segments=8, **common).aoc,
        "road": kept.mean(1), "pixel_flipping_auc": flipped.auc,
        "continuity": continuity(model, x, pred, explainer, kw, n_steps=4, attributions=a, example_offset=offset),
        "relative_output_stability": relative_output_stability(model, x, pred, explainer, kw, radius=0.02,
                                                               n_samples=2, output="probability", attributions=a,
                                                               **common),
        "relative_representation_stability": relative_representation_stability(
            model, x, pred, explainer, kw, layer_names=["1"], radius=0.02, n_samples=2, attributions=a, **common),
        "random_logit": random_logit(model, x, pred, 10, explainer, kw, ssim_win_size=7, attributions=a, **common),
        "smooth_mprt": smooth.spearman[-1],
        "efficient_mprt": efficient_model_randomization(model, x, pred, explainer, kw, order="bottom_up",
                                                        layers=["0", "3"], n_bins=20, **common).relative,
        "completeness_gap": M.completeness(model, x, a, pred, **common).abs(),
        "non_sensitivity": M.non_sensitivity(model, x, normed, pred, features_in_step=8, **common),
        "input_invariance": M.input_invariance(model, x, explainer, pred, attributions=a, explainer_kwargs=kw,
                                               example_offset=offset),
        "sparseness": M.sparseness(normed), "entropy_complexity": M.entropy_complexity(normed),
        "effective_complexity": M.effective_complexity(normed, 0.1),
        "pointing_game": M.pointing_game(a, s), "attribution_localisation": M.attribution_localisation(a.abs(), s),
        "top_k_localisation": M.top_k_localisation(a, s, 6), "relevance_rank_accuracy": M.relevance_rank_accuracy(a, s),
        "relevance_mass_accuracy": M.relevance_mass_accuracy(a, s), "localisation_auc": M.localisation_auc(a, s),
    }
    curves = {"region_perturbation": region.values, "selectivity": selective.values, "pixel_flipping": flipped.values,
              "road": kept, "smooth_mprt": smooth.spearman.T}
    return ({k: v.to(torch.float64).numpy() for k, v in columns.items()},
            {k: v.to(torch.float64).numpy() for k, v in curves.items()})


@pytest.fixture(scope="module")
def expected(env):
    """(columns, curves): method -> name -> values over the audited examples, batch by batch as the audit ran."""
    import quantus_audit_models

    data = load_dataset(str(env / "masked.npz"), LIMIT, SEED)
    model = quantus_audit_models.cnn().eval()
    settings = resolve(METHOD_SETTINGS, {}, "--method-option")
    context = make_context(model, torch.from_numpy(data.x), SEED, {m: settings[m] for m in METHODS},
                           torch.device("cpu"))
    columns = {m: {} for m in METHODS}
    curves = {m: {} for m in METHODS}
    for offset in range(0, LIMIT, BATCH):
        x = torch.from_numpy(data.x[offset:offset + BATCH])
        s = torch.from_numpy(data.s[offset:offset + BATCH])
        with torch.no_grad():
            pred = model(x).argmax(1)
        for m in METHODS:
            got_columns, got_curves = direct_values(x, s, pred, model, m, offset, settings[m], context)
            for into, got in ((columns[m], got_columns), (curves[m], got_curves)):
                for k, v in got.items():
                    into.setdefault(k, []).append(v)
    return ({m: {k: np.concatenate(v) for k, v in per.items()} for m, per in columns.items()},
            {m: {k: np.concatenate(v) for k, v in per.items()} for m, per in curves.items()})


@pytest.mark.parametrize("name", NEW)
def test_column_equals_the_function_on_the_same_batch(audited, expected, name):
    frame, summary = audited
    for m in METHODS:
        got = frame.loc[frame["method"] == m, name].to_numpy(dtype=float)
        want = expected[0][m][name]
        assert got.shape == (LIMIT,)
        # the same calls on the same rows: equal to the bit (NaN where the function gives NaN)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} of {m}")
    assert name in summary["ranking"]  # ranked with its higher_is_better, shown in the report


@pytest.mark.parametrize("name", ["region_perturbation", "selectivity", "pixel_flipping", "road", "smooth_mprt"])
def test_curve_equals_the_function_on_the_same_batch(audited, expected, name):
    summary = audited[1]
    for m in METHODS:
        curve = expected[1][m][name]  # [examples, K]
        np.testing.assert_allclose(summary["mean_curves"][name][m], curve.mean(0), rtol=1e-12, atol=0)


def test_values_vary_and_the_report_names_them(audited, env):
    frame, summary = audited
    # not a constant column: the metrics see the explanations (localisation differs between examples)
    for name in ("faithfulness_correlation", "irof", "sparseness", "localisation_auc", "relative_output_stability"):
        assert frame[name].nunique() > 1, name
    axes = summary["verdict"]["axes"]
    assert set(FAITHFULNESS) <= set(axes["faithfulness"])
    assert {"continuity", "relative_output_stability", "relative_representation_stability"} <= set(axes["robustness"])
    assert set(LOCALISATION + COMPLEXITY) <= set(summary["verdict"]["unranked_metrics"])
    settings = summary["configuration"]["metric_settings"]
    assert settings["road"]["percentage_step"] == 20 and settings["smooth_mprt"]["steps"] == ["3", "0"]
    page = (env / "out" / "report.html").read_text()
    assert all(name in page for name in NEW)
    assert '<h2>Other curves</h2><img src="data:image/png;base64,' in page and 'alt="other metrics curves"' in page


def test_default_metric_set_is_unchanged():
    groups = available_groups()
    assert metric_names(groups, defaults_only=True) == DEFAULTS
    assert set(NEW) <= set(metric_names(groups))
    new = [g for g in groups if set(g.metrics) & set(NEW)]
    assert new and not any(g.by_default for g in new)


def test_metric_list_shows_the_new_groups(capsys):
    assert main(["audit", "--metrics", "list"]) == 0
    listing = capsys.readouterr().out
    for name in NEW:
        assert name in listing
    for line in ("road.percentage_step = 2", "continuity.n_steps = auto", "complexity.abs = true",
                 "top_k_localisation.k = 1000", "representation_stability.layers = all"):
        assert line in listing


def _resolved(names, shape, model, options=None):
    groups = [g for g in available_groups() if set(g.metrics) & set(names)]
    declared = {g.name: g.settings(int(np.prod(shape))) for g in groups}
    settings = resolve(declared, options or {}, "--metric-option")
    return groups, {g.name: resolved_for_model(g, settings[g.name], model, "", shape) for g in groups}


def test_plan_counts_the_new_rows_by_hand(env):
    import quantus_audit_models

    names = ("faithfulness_estimate", "pixel_flipping_auc", "region_perturbation_auc", "smooth_mprt", "road",
             "continuity", "relative_output_stability", "completeness_gap", "sparseness")
    groups, settings = _resolved(names, (1, 8, 8), quantus_audit_models.cnn())
    rows = method_rows({"integrated_gradients": resolve(METHOD_SETTINGS, {}, "x")["integrated_gradients"]})
    r = rows["integrated_gradients"]  # 16 steps
    # 64 values: 1 per step, 64 steps; patch 1: 64 patches, all evaluated; 2 blocks; 50 percentages;
    # min(28, 2 * 8 + 1) translations; 10 samples for 64 values
    gradient = r + r * (2 + 1) * 10 + r * 17 + r * 10
    forward = (64 + 1) + 64 + (64 + 1) + 50 + (10 + 1) + 2
    assert rows_per_example(rows, groups, settings) == (gradient, forward)


def _refused(capsys, *args):
    assert audit(*args) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("name", LOCALISATION)
def test_localisation_without_masks_is_refused_before_any_work(env, tmp_path, capsys, name):
    err = _refused(capsys, "--model", "quantus_audit_models:never_built", "--data", env / "plain.npz",
                   "--metrics", f"infidelity,{name}", "--out", tmp_path / "o")
    assert f"--metrics: {name}" in err and "array s" in err and "the model was built" not in err
    assert not (tmp_path / "o").exists()


def test_masks_checked_by_the_metrics_that_need_them(env):
    data = load_dataset(str(env / "plain.npz"), 4)
    groups = available_groups()

    check_masks_given(SimpleNamespace(metrics=("deletion_auc", "sparseness")), groups, data)  # none needed
    with pytest.raises(AuditError, match="pointing_game, localisation_auc.*array s"):
        check_masks_given(SimpleNamespace(metrics=("pointing_game", "localisation_auc")), groups, data)


def _npz(path, x, y, s):
    np.savez(path, x=x, y=y, s=s)
    return str(path)


@pytest.mark.parametrize("form", ["per_pixel", "one_channel", "per_channel", "uint8", "float"])
def test_masks_load_in_every_form(tmp_path, form):
    rng = np.random.default_rng(0)
    x = rng.random((12, 3, 5, 6), dtype=np.float32)
    y = np.arange(12) % 3
    per_channel = rng.random((12, 3, 5, 6)) > 0.5
    s = {"per_pixel": per_channel[:, 0], "one_channel": per_channel[:, :1], "per_channel": per_channel,
         "uint8": per_channel[:, 0].astype(np.uint8), "float": per_channel[:, :1].astype(np.float32)}[form]
    data = load_dataset(_npz(tmp_path / "d.npz", x, y, s), 7, seed=1)
    want = (per_channel if form == "per_channel" else per_channel[:, :1])[data.source_index]
    assert data.s.dtype == np.bool_ and data.s.shape == (7, want.shape[1], 5, 6)
    np.testing.assert_array_equal(data.s, want)
    # the masks are part of the data's identity
    plain = load_dataset(_npz(tmp_path / "e.npz", x, y, np.zeros_like(s)), 7, seed=1)
    assert plain.content_hash() != data.content_hash()


def test_masks_follow_resize_and_crop_with_nearest_neighbours(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((6, 1, 8, 10), dtype=np.float32)
    s = rng.random((6, 8, 10)) > 0.5
    transform = InputTransform(resize=(16, 20), crop=(12, 14))
    data = load_dataset(_npz(tmp_path / "d.npz", x, np.arange(6) % 2, s), None, transform=transform)
    big = nn.functional.interpolate(torch.from_numpy(s[:, None]).float(), size=[16, 20], mode="nearest")
    np.testing.assert_array_equal(data.s, big[..., 2:14, 3:17].numpy() > 0.5)
    assert data.x.shape == (6, 1, 12, 14)


def test_bad_masks_are_refused_naming_data_and_s(tmp_path):
    x = np.zeros((4, 3, 5, 5), dtype=np.float32)
    y = np.arange(4)
    bad = {"shape": np.zeros((4, 5, 4)), "channels": np.zeros((4, 2, 5, 5)), "count": np.zeros((3, 5, 5)),
           "values": np.full((4, 5, 5), 2.0), "nan": np.full((4, 5, 5), np.nan), "text": np.full((4, 5, 5), "a")}
    for what, s in bad.items():
        with pytest.raises(AuditError, match="--data: .*masks s") as e:
            load_dataset(_npz(tmp_path / f"{what}.npz", x, y, s), None)
        assert what != "shape" or "[N, H, W], [N, 1, H, W] or [N, C, H, W]" in str(e.value)
    # per-channel masks cannot follow a change of channels; one mask per example can
    path = _npz(tmp_path / "c.npz", x, y, np.ones((4, 3, 5, 5), dtype=bool))
    with pytest.raises(AuditError, match="--channels"):
        load_dataset(path, None, transform=InputTransform(channels=1))
    one = load_dataset(_npz(tmp_path / "o.npz", x, y, np.ones((4, 5, 5), dtype=bool)), None,
                       transform=InputTransform(channels=1))
    assert one.s.shape == (4, 1, 5, 5) and one.x.shape == (4, 1, 5, 5)


@pytest.mark.parametrize("name, says", [("irof", "irof needs images"), ("road", "road needs images"),
                                         ("continuity", "continuity needs images"),
                                         ("selectivity_auc", "selectivity_auc needs images")])
def test_metrics_of_images_refuse_other_inputs_before_work(env, tmp_path, capsys, name, says):
    err = _refused(capsys, "--model", "quantus_audit_models:mlp", "--data", env / "flat.npz", "--limit", 4,
                   "--methods", "saliency", "--metrics", name, "--out", tmp_path / "o")
    assert says in err and "[64]" in err
    assert not (tmp_path / "o").exists()


def test_settings_that_cannot_run_are_refused_before_work(env, tmp_path, capsys):
    common = ["--model", "quantus_audit_models:cnn", "--data", env / "masked.npz", "--limit", 4, "--methods",
              "saliency", "--out", tmp_path / "o"]
    err = _refused(capsys, *common, "--metrics", "relative_representation_stability", "--metric-option",
                   "representation_stability.layers=7")
    assert "representation_stability.layers" in err and "unknown" in err
    err = _refused(capsys, *common, "--metrics", "top_k_localisation", "--metric-option", "top_k_localisation.k=65")
    assert "top_k_localisation.k: 65 is more than the 64 values" in err
    err = _refused(capsys, *common, "--metrics", "continuity", "--metric-option", "continuity.n_steps=18")
    assert "continuity.n_steps" in err and "at most 17" in err
    err = _refused(capsys, *common, "--metrics", "continuity", "--metric-option", "continuity.n_steps=two")
    assert "expected auto or an integer >= 1" in err
    # the normalisation layer in front of the model has no bias to absorb the shift
    err = _refused(capsys, *common, "--mean", "0.5", "--std", "0.25", "--metrics", "input_invariance")
    assert "input_invariance" in err and "bias" in err
    assert not (tmp_path / "o").exists()
