"""Faithfulness correlation / estimate, Sensitivity-N, monotonicity (and its
correlation), region perturbation, selectivity and sufficiency: against
float64 references written from the definitions (one model call per row,
SciPy's correlations and distances), against Quantus 0.6 on the same inputs
with its random draws patched to fastattr's keyed ones, for batch and
chunking independence, bad input, the caller's objects and batches of one.

Tolerances: float64 end to end (the Quantus comparisons run a float64 copy
of the model behind a float32 input, which Quantus casts to float32 as it
always does), so values agree to float64 rounding amplified by at most a
correlation's conditioning: asserted 1e-10 absolute on correlations (in
[-1, 1]) and 1e-12 relative on outputs; decisions (bools, orders) exactly.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from typing import Any, Iterator, List

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
from torch import Tensor, nn

import quantus
from captum_cases import ConvNet, _build, _case, numpy_uniform_returns
from fastattr.attr import saliency
from fastattr.engine.draws import group_uniforms
from fastattr.metrics.faithfulness import (
    CORRELATION_FILL_STREAM, ESTIMATE_FILL_STREAM, SENSITIVITY_N_FILL_STREAM, correlation_subsets, smallest_keys,
    faithfulness_correlation, faithfulness_estimate, sensitivity_n,
)
from fastattr.metrics.faithfulness_monotonicity import (
    MONOTONICITY_CORRELATION_FILL_STREAM, MONOTONICITY_FILL_STREAM, monotonicity, monotonicity_correlation,
)
from fastattr.metrics.faithfulness_regions import (
    REGION_FILL_STREAM, SELECTIVITY_FILL_STREAM, random_patch_order, region_perturbation, selectivity,
)
from fastattr.metrics.faithfulness_sufficiency import sufficiency
from fastattr.quantus._faithfulness import (
    FaithfulnessCorrelation, FaithfulnessEstimate, Monotonicity, MonotonicityCorrelation, SensitivityN,
)
from fastattr.quantus._faithfulness_regions import RegionPerturbation, Selectivity
from fastattr.quantus._faithfulness_sufficiency import Sufficiency

warnings.filterwarnings("ignore", module="quantus")
pytestmark = pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning",
                                        "ignore::RuntimeWarning", "ignore::UserWarning")

CPU = torch.device("cpu")
CORR_TOL = 1e-10
REL_TOL = 1e-12


# ---------------------------------------------------------------------------
# Inputs and plain references
# ---------------------------------------------------------------------------


def conv_case(batch: int = 4, seed: int = 1):
    """The float64 conv net on ``[B, 3, 8, 8]``, one class per example, and
    per-pixel attributions ``[B, 1, 8, 8]`` without ties."""
    case = _case("conv", batch=batch, seed=seed)
    a = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    return case.model, case.inputs, a, torch.tensor(case.target)


def clustered_attributions(batch: int, seed: int = 3) -> Tensor:
    """float64 ``[B, 1, 8, 8]`` around three centres (example ``b`` around
    centre ``b % 3``), so that normalised distances within a cluster (~0.45)
    and between clusters (~0.9) straddle Sufficiency's thresholds."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 64, generator=g, dtype=torch.float64)
    a = centres[torch.arange(batch) % 3] + 0.3 * torch.randn(batch, 64, generator=g, dtype=torch.float64)
    return a.view(batch, 1, 8, 8)


def outputs(model, rows: Tensor, t: int, probability: bool) -> Tensor:
    """float64 ``[n]``: the target output of each row, one model call per row."""
    with torch.no_grad():
        out = torch.cat([model(r.unsqueeze(0)) for r in rows])
    return (torch.softmax(out, 1) if probability else out)[:, t].double()


def ranked(values: List[float], descending: bool) -> List[int]:
    """Element indices by value, ties by index."""
    return sorted(range(len(values)), key=lambda i: (-values[i] if descending else values[i], i))


def fill_value(baseline: Any, xb: Tensor, table: Tensor, b: int, column: int) -> float:
    if baseline == "black":
        return xb.min().item()
    if baseline == "white":
        return xb.max().item()
    if baseline == "uniform":
        return table[b, column].item()
    return float(baseline)


def uniform_table(seed: int, stream: int, batch: int, columns: int, offset: int = 0) -> Tensor:
    u, _ = group_uniforms(seed, stream, batch, columns, CPU, offset)
    return u.view(batch, columns)


def scipy_corr(a, b, similarity: str) -> float:
    fn = scipy.stats.pearsonr if similarity == "pearson" else scipy.stats.spearmanr
    return float(fn(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))[0])


def assert_close(got: Tensor, expected, tol: float = CORR_TOL) -> None:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert np.array_equal(np.isnan(got), np.isnan(expected)), (got, expected)
    ok = ~np.isnan(got)
    assert np.abs(got[ok] - expected[ok]).max(initial=0) <= tol, (got, expected)


class AsDouble(nn.Module):
    """A float64 copy of a model behind Quantus's float32 cast of the input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(model).double()

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.double())


def quantus_case(batch: int = 4, seed: int = 1):
    """(model, x float32 numpy, y, a float64 numpy ``[B, 1, 8, 8]``) for both libraries."""
    case = _case("conv", dtype=torch.float32, batch=batch, seed=seed)
    a = np.random.default_rng(seed).standard_normal((batch, 1, 8, 8))
    return AsDouble(case.model).eval(), case.inputs.numpy(), np.array(case.target), a


@contextlib.contextmanager
def patched(module: Any, name: str, values: List[np.ndarray]) -> Iterator[List[Any]]:
    """``module.name(...)`` returns ``values[k]`` on its k-th call (all used)."""
    calls: List[Any] = []
    real = getattr(module, name)

    def fake(*args: Any, **kwargs: Any) -> np.ndarray:
        calls.append((args, kwargs))
        return values[len(calls) - 1]

    setattr(module, name, fake)
    try:
        yield calls
    finally:
        setattr(module, name, real)
    assert len(calls) == len(values)


def run_both(name: str, init: dict, model, x, y, a, call: dict = None, theirs_init: dict = None):
    call = call or {}
    theirs = getattr(quantus, name)(disable_warnings=True, **(theirs_init or init))(
        model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu", **call)
    ours = globals()[name](**init)(model=model, x_batch=x, y_batch=y, a_batch=a, **call)
    return ours, theirs


# ---------------------------------------------------------------------------
# The functions against their definitions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["black", 0.3, "uniform"])
@pytest.mark.parametrize("similarity", ["pearson", "spearman"])
def test_faithfulness_correlation_matches_definition(baseline, similarity):
    model, x, a, t = conv_case()
    runs, size, seed = 12, 20, 3
    got = faithfulness_correlation(model, x, a, t, n_runs=runs, subset_size=size, baseline=baseline,
                                   similarity=similarity, seed=seed, chunk_rows=7)
    subsets = correlation_subsets(4, 192, runs, size, seed, CPU)
    table = uniform_table(seed, CORRELATION_FILL_STREAM, 4, runs)
    expected = []
    for b in range(4):
        a_flat = a[b].expand(3, 8, 8).reshape(-1)
        rows = x[b].reshape(1, -1).repeat(runs, 1)
        for n in range(runs):
            rows[n, subsets[b, n]] = fill_value(baseline, x[b], table, b, n)
        clean = outputs(model, x[b:b + 1], t[b], False)
        deltas = clean - outputs(model, rows.view(runs, 3, 8, 8), t[b], False)
        sums = torch.stack([a_flat[subsets[b, n]].sum() for n in range(runs)])
        expected.append(scipy_corr(sums, deltas, similarity))
    assert_close(got, expected)


def test_correlation_subsets_are_uniform_draws_without_replacement():
    subsets = correlation_subsets(1, 192, 3000, 20, 0, CPU)[0]
    assert all(len(set(s.tolist())) == 20 for s in subsets)
    counts = torch.bincount(subsets.reshape(-1), minlength=192).double()
    mean = 3000 * 20 / 192
    sd = math.sqrt(mean * (1 - 20 / 192))
    assert (counts - mean).abs().max() <= 5 * sd


def _smallest_by_sort(keys: Tensor, k: int) -> Tensor:
    """The columns of each row's k smallest keys, equal keys lowest column
    first, in increasing column order: a stable sort of the whole row."""
    return keys.sort(dim=1, stable=True).indices[:, :k].sort(dim=1).values


@pytest.mark.parametrize("rows,n,k", [(64, 3072, 224), (7, 10, 3), (5, 40, 40), (3, 40, 1), (0, 12, 4),
                                      (4, 12, 0)])
def test_smallest_keys_is_a_stable_sort_of_whole_rows(rows, n, k):
    keys = 2 * torch.rand(rows, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n + k)) - 1
    assert torch.equal(smallest_keys(keys, k), _smallest_by_sort(keys, k))


def test_smallest_keys_with_equal_keys_and_short_rows():
    # Keys from 80 values in [-1, 1): many equal keys at the k-th; the last rows have
    # fewer keys under the threshold than k (the sorted-whole fallback).
    keys = torch.randint(-40, 40, (50, 300), generator=torch.Generator().manual_seed(1)).double() / 40
    keys[-3:] = 0.99 - torch.arange(300, dtype=torch.float64) / 1000
    for k in (1, 25, 150, 300):
        assert torch.equal(smallest_keys(keys, k), _smallest_by_sort(keys, k))


@pytest.mark.parametrize("baseline", ["black", "white", "uniform"])
@pytest.mark.parametrize("step", [16, 40])
def test_faithfulness_estimate_matches_definition(baseline, step):
    model, x, a, t = conv_case()
    got = faithfulness_estimate(model, x, a, t, features_in_step=step, baseline=baseline, seed=2, chunk_rows=5)
    k_steps = math.ceil(192 / step)
    table = uniform_table(2, ESTIMATE_FILL_STREAM, 4, k_steps)
    expected = []
    for b in range(4):
        a_flat = a[b].expand(3, 8, 8).reshape(-1)
        order = ranked(a_flat.tolist(), descending=True)
        rows = x[b].reshape(1, -1).repeat(k_steps, 1)
        sums = []
        for k in range(k_steps):
            idx = order[k * step:(k + 1) * step]
            rows[k, idx] = fill_value(baseline, x[b], table, b, k)
            sums.append(a_flat[idx].sum().item())
        deltas = outputs(model, x[b:b + 1], t[b], False) - outputs(model, rows.view(-1, 3, 8, 8), t[b], False)
        expected.append(scipy_corr(sums, deltas, "pearson"))
    assert_close(got, expected)


@pytest.mark.parametrize("baseline", ["black", "uniform"])
def test_sensitivity_n_matches_definition(baseline):
    model, x, a, t = conv_case(batch=5)
    step, seed = 8, 4
    got = sensitivity_n(model, x, a, t, features_in_step=step, n_max_percentage=0.5, baseline=baseline,
                        seed=seed, chunk_rows=9)
    n_eval = int(0.5 * 64 // step)
    table = uniform_table(seed, SENSITIVITY_N_FILL_STREAM, 5, 192 // step)
    sums, changes = torch.zeros(5, n_eval, dtype=torch.float64), torch.zeros(5, n_eval, dtype=torch.float64)
    for b in range(5):
        a_flat = a[b].expand(3, 8, 8).reshape(-1)
        order = ranked(a_flat.tolist(), descending=True)
        row, rows = x[b].reshape(-1).clone(), []
        for k in range(n_eval):
            idx = order[k * step:(k + 1) * step]
            row[idx] = fill_value(baseline, x[b], table, b, k)
            rows.append(row.clone())
            sums[b, k] = a_flat[idx].sum()
        changes[b] = outputs(model, x[b:b + 1], t[b], True) - outputs(model, torch.stack(rows).view(-1, 3, 8, 8),
                                                                     t[b], True)
    assert got.attribution_sums.shape == (5, n_eval)
    assert_close(got.attribution_sums, sums, REL_TOL)
    assert_close(got.output_changes, changes, REL_TOL)
    assert_close(got.correlation, [scipy_corr(changes[:, k], sums[:, k], "pearson") for k in range(n_eval)])


class PositiveLinear(nn.Module):
    """``[B, 3, 8, 8] -> [B, 2]``: class 0 sums the input with positive
    weights, so putting an input value above the baseline in raises it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.rand(192, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.reshape(x.shape[0], -1) @ self.w
        return torch.stack([s, -s], dim=1)


def reference_monotonicity(model, x, a, t, step, baseline, inserted, table, probability):
    result = []
    for b in range(x.shape[0]):
        a_flat = a[b].expand(3, 8, 8).reshape(-1)
        order = ranked(a_flat.tolist(), descending=False)
        row = torch.full((192,), fill_value(baseline, x[b], table, b, 0), dtype=torch.float64)
        rows = []
        for k in range(math.ceil(192 / step)):
            idx = order[k * step:(k + 1) * step]
            row[idx] = x[b].reshape(-1)[idx] if inserted == "input" else fill_value(baseline, x[b], table, b, k + 1)
            rows.append(row.clone())
        preds = outputs(model, torch.stack(rows).view(-1, 3, 8, 8), t[b], probability)
        result.append(bool((preds[1:] >= preds[:-1]).all()))
    return result


@pytest.mark.parametrize("baseline", ["black", "uniform"])
@pytest.mark.parametrize("inserted", ["input", "baseline"])
def test_monotonicity_matches_definition(baseline, inserted):
    model, x, a, t = conv_case()
    table = uniform_table(5, MONOTONICITY_FILL_STREAM, 4, 192 // 16 + 1)
    got = monotonicity(model, x, a, t, features_in_step=16, baseline=baseline, inserted=inserted, seed=5,
                       chunk_rows=6)
    expected = reference_monotonicity(model, x, a, t, 16, baseline, inserted, table, True)
    assert got.dtype == torch.bool and got.tolist() == expected
    # Inputs above a black baseline put into a model increasing in every input: monotonic.
    linear, positive = PositiveLinear(), x.abs() + 0.1
    got = monotonicity(linear, positive, a, 0, features_in_step=16, output="logit")
    assert got.tolist() == reference_monotonicity(linear, positive, a, [0] * 4, 16, "black", "input", table, False)
    assert got.all() and not monotonicity(linear, positive, a, 1, features_in_step=16, output="logit").any()


@pytest.mark.parametrize("baseline,samples", [("uniform", 3), ("black", 5)])
@pytest.mark.parametrize("similarity", ["spearman", "pearson"])
def test_monotonicity_correlation_matches_definition(baseline, samples, similarity):
    model, x, a, t = conv_case()
    step, seed = 24, 6
    k_steps = 192 // step
    got = monotonicity_correlation(model, x, a, t, features_in_step=step, n_samples=samples, baseline=baseline,
                                   similarity=similarity, seed=seed, chunk_rows=11)
    draws = samples if baseline == "uniform" else 1
    table = uniform_table(seed, MONOTONICITY_CORRELATION_FILL_STREAM, 4, k_steps * draws)
    expected = []
    for b in range(4):
        a_flat = a[b].expand(3, 8, 8).reshape(-1)
        order = ranked(a_flat.tolist(), descending=False)
        y = outputs(model, x[b:b + 1], t[b], True)[0]
        spreads, sums = [], []
        for k in range(k_steps):
            idx = order[k * step:(k + 1) * step]
            rows = x[b].reshape(1, -1).repeat(samples, 1)
            for n in range(samples):
                rows[n, idx] = fill_value(baseline, x[b], table, b, k * draws + min(n, draws - 1))
            preds = outputs(model, rows.view(-1, 3, 8, 8), t[b], True)
            spreads.append(((preds - y) ** 2).mean().item() / y.item() ** 2)
            sums.append(a_flat[idx].sum().item())
        expected.append(scipy_corr(sums, spreads, similarity))
    assert_close(got, expected)


def reference_regions(model, x, a, t, patch, n_regions, baseline, table, descending=True):
    """``[B, 1 + K]``: the clean output, then the outputs with the first
    ``k + 1`` patches (Quantus's padded grid, ranked by sum, ties by index) replaced."""
    _, channels, h, w = x.shape
    ph, pw = (-h) % patch, (-w) % patch
    top, left = math.floor(ph / 2), math.floor(pw / 2)
    cols = (w + pw) // patch
    members: dict = {}
    for i in range(h):
        for j in range(w):
            members.setdefault(((i + top) // patch) * cols + (j + left) // patch, []).append((i, j))
    result = []
    for b in range(x.shape[0]):
        ab = a[b].expand(channels, h, w)
        sums = [sum(ab[:, i, j].sum().item() for i, j in members.get(p, [])) for p in range(len(members))]
        order = ranked(sums, descending)
        row, rows = x[b].clone(), [x[b].clone()]
        for k, p in enumerate(order[:n_regions]):
            for i, j in members[p]:
                row[:, i, j] = fill_value(baseline, x[b], table, b, k)
            rows.append(row.clone())
        result.append(outputs(model, torch.stack(rows), t[b], True))
    return torch.stack(result)


@pytest.mark.parametrize("patch,regions,baseline", [(3, 100, "black"), (4, 2, "uniform"), (5, 3, 0.2)])
def test_region_perturbation_and_selectivity_match_definition(patch, regions, baseline):
    model, x, a, t = conv_case()
    n_patches = math.ceil(8 / patch) ** 2
    table = uniform_table(7, REGION_FILL_STREAM, 4, n_patches)
    got = region_perturbation(model, x, a, t, patch_size=patch, regions_evaluation=regions, baseline=baseline,
                              seed=7, chunk_rows=5)
    ref = reference_regions(model, x, a, t, patch, regions, baseline, table)
    assert_close(got.values, ref[:, :1] - ref[:, 1:], REL_TOL)
    assert_close(got.auc, np.trapezoid((ref[:, :1] - ref[:, 1:]).numpy(), dx=1, axis=1), REL_TOL)
    lerf = region_perturbation(model, x, a, t, patch_size=patch, order="lerf", regions_evaluation=regions,
                               baseline=baseline, seed=7)
    ref = reference_regions(model, x, a, t, patch, regions, baseline, table, descending=False)
    assert_close(lerf.values, ref[:, :1] - ref[:, 1:], REL_TOL)
    table = uniform_table(7, SELECTIVITY_FILL_STREAM, 4, n_patches)
    sel = selectivity(model, x, a, t, patch_size=patch, baseline=baseline, seed=7)
    assert_close(sel.values, reference_regions(model, x, a, t, patch, n_patches, baseline, table)[:, 1:], REL_TOL)


def test_region_perturbation_random_order_is_keyed():
    model, x, a, t = conv_case()
    order = random_patch_order(8, 4, 9, CPU)
    assert all(sorted(o.tolist()) == list(range(9)) for o in order)
    got = region_perturbation(model, x, a, t, patch_size=3, order="random", seed=8)
    assert torch.equal(got.values, region_perturbation(model, x, a, t, patch_size=3, patch_order=order).values)
    alone = region_perturbation(model, x[2:3], a[2:3], t[2:3], patch_size=3, order="random", seed=8,
                                example_offset=2)
    assert_close(alone.values, got.values[2:3], REL_TOL)


def test_series_inputs_are_images_of_height_one():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 8, 3)).double().eval()
    x = torch.randn(3, 2, 10, dtype=torch.float64)
    a = torch.randn(3, 1, 10, dtype=torch.float64)
    got = region_perturbation(model, x, a, [0, 1, 2], patch_size=4)
    # Quantus's grid pads 10 -> 12: patches hold positions 0-2, 3-6, 7-9.
    members = [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    expected = []
    for b in range(3):
        sums = [a[b, 0, m].sum().item() * 2 for m in members]
        row, rows = x[b].clone(), [x[b].clone()]
        for p in ranked(sums, True):
            row[:, members[p]] = x[b].min()
            rows.append(row.clone())
        out = outputs(model, torch.stack(rows), b, True)
        expected.append((out[:1] - out[1:]).tolist())
    assert_close(got.values, expected, REL_TOL)


@pytest.mark.parametrize("name", ["RegionPerturbation", "Selectivity"])
def test_quantus_series(name):
    torch.manual_seed(0)
    model = AsDouble(nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 8, 3))).eval()
    x = torch.randn(3, 2, 10, generator=torch.Generator().manual_seed(1)).numpy()
    a = np.random.default_rng(2).standard_normal((3, 1, 10))
    ours, theirs = run_both(name, dict(patch_size=4), model, x, np.arange(3), a)
    assert_close(np.stack(ours), np.stack(theirs), REL_TOL)


@pytest.mark.parametrize("threshold", [0.4, 0.6, 0.9])
def test_sufficiency_matches_definition(threshold):
    model, x, _, _ = conv_case(batch=8)
    a = clustered_attributions(8)
    got = sufficiency(model, x, a, threshold=threshold)
    d = scipy.spatial.distance.cdist(a.reshape(8, -1).numpy(), a.reshape(8, -1).numpy(), "seuclidean")
    d = d / np.abs(d).max()
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    expected = []
    for i in range(8):
        close = [j for j in range(8) if j != i and d[i, j] <= threshold]
        expected.append(sum(pred[j] == pred[i] for j in close) / len(close) if close else 0.0)
    assert_close(got, expected)
    if threshold == 0.6:  # within-cluster neighbours, some of another class
        assert got.tolist() == [1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.5]


# ---------------------------------------------------------------------------
# The drop-ins against Quantus 0.6
# ---------------------------------------------------------------------------


def choice_values(batch: int, runs: int, size: int, seed: int) -> List[np.ndarray]:
    """fastattr's subsets in Quantus's call order (per run, per example)."""
    subsets = correlation_subsets(batch, 192, runs, size, seed, CPU).numpy()
    return [subsets[b, n] for n in range(runs) for b in range(batch)]


@pytest.mark.parametrize("init", [
    dict(nr_runs=15, subset_size=20),
    dict(nr_runs=15, subset_size=30, similarity_func=quantus.similarity_func.correlation_spearman,
         normalise=False, abs=True, perturb_baseline="white"),
    dict(nr_runs=10, subset_size=20, perturb_baseline="uniform", return_aggregate=False,
         perturb_func_kwargs={"uniform_low": -1.0, "uniform_high": 0.5}),
])
def test_quantus_faithfulness_correlation(init):
    model, x, y, a = quantus_case()
    seed, runs, size = 9, init["nr_runs"], init["subset_size"]
    theirs_init = dict(init, return_aggregate=False)
    uniform = contextlib.nullcontext()
    if init.get("perturb_baseline") == "uniform":
        table = (-1.0 + 1.5 * uniform_table(seed, CORRELATION_FILL_STREAM, 4, runs)).numpy()
        uniform = numpy_uniform_returns([table[:, n] for n in range(runs)], -1.0, 0.5)
    with patched(np.random, "choice", choice_values(4, runs, size, seed)), uniform:
        theirs = quantus.FaithfulnessCorrelation(disable_warnings=True, **theirs_init)(
            model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    ours = FaithfulnessCorrelation(seed=seed, chunk_rows=13, **theirs_init)(model=model, x_batch=x, y_batch=y,
                                                                           a_batch=a)
    assert_close(ours, theirs)
    agg = FaithfulnessCorrelation(seed=seed, **dict(init, return_aggregate=True))(model=model, x_batch=x,
                                                                                 y_batch=y, a_batch=a)
    assert len(agg) == 1 and abs(agg[0] - np.mean(theirs)) <= CORR_TOL


@pytest.mark.parametrize("init", [
    dict(features_in_step=16),
    dict(features_in_step=4, normalise=False, perturb_baseline=0.1),
    dict(features_in_step=8, similarity_func=quantus.similarity_func.correlation_spearman, abs=True),
])
def test_quantus_faithfulness_estimate(init):
    model, x, y, a = quantus_case()
    ours, theirs = run_both("FaithfulnessEstimate", init, model, x, y, a)
    assert_close(ours, theirs)


def test_quantus_faithfulness_estimate_uniform_and_explain_func():
    model, x, y, a = quantus_case()
    table = uniform_table(1, ESTIMATE_FILL_STREAM, 4, 12).numpy()
    with numpy_uniform_returns([table[:, k] for k in range(12)], 0.0, 1.0):
        theirs = quantus.FaithfulnessEstimate(features_in_step=16, perturb_baseline="uniform",
                                              disable_warnings=True)(model=model, x_batch=x, y_batch=y,
                                                                     a_batch=a, device="cpu")
    ours = FaithfulnessEstimate(features_in_step=16, perturb_baseline="uniform", seed=1)(
        model=model, x_batch=x, y_batch=y, a_batch=a)
    assert_close(ours, theirs)
    # float64 inputs (float32 values: Quantus's cast keeps them), so that the
    # explainer's attributions are float64 on both sides.
    x64 = x.astype(np.float64)
    a_sal = saliency(model, torch.from_numpy(x64), target=torch.from_numpy(y)).numpy()
    theirs = quantus.FaithfulnessEstimate(features_in_step=16, disable_warnings=True)(
        model=model, x_batch=x64, y_batch=y, a_batch=a_sal, device="cpu")
    ours = FaithfulnessEstimate(features_in_step=16)(model=model, x_batch=x64, y_batch=y, explain_func=saliency)
    assert_close(ours, theirs)


@pytest.mark.parametrize("init,call", [
    (dict(features_in_step=4), {}),
    (dict(features_in_step=8, return_aggregate=False, n_max_percentage=0.5), dict(softmax=False)),
    (dict(features_in_step=4, return_aggregate=False, perturb_baseline="white"), dict(batch_size=5)),
])
def test_quantus_sensitivity_n(init, call):
    model, x, y, a = quantus_case(batch=7)
    ours, theirs = run_both("SensitivityN", init, model, x, y, a, call)
    assert isinstance(ours, type(theirs))
    assert_close(ours, theirs)


def test_quantus_sensitivity_n_uniform():
    model, x, y, a = quantus_case(batch=5)
    table = uniform_table(2, SENSITIVITY_N_FILL_STREAM, 5, 48).numpy()
    init = dict(features_in_step=4, perturb_baseline="uniform", return_aggregate=False)
    with numpy_uniform_returns([table[:, k] for k in range(48)], 0.0, 1.0):
        theirs = quantus.SensitivityN(disable_warnings=True, **init)(model=model, x_batch=x, y_batch=y, a_batch=a,
                                                                    device="cpu")
    assert_close(SensitivityN(seed=2, **init)(model=model, x_batch=x, y_batch=y, a_batch=a), theirs)


def test_quantus_monotonicity_reproduces_quantus():
    """Quantus 0.6 never puts the input in (its steps replace baseline values
    by baseline values): every score is True with a constant baseline; with
    ``"uniform"`` the same draws give the same scores."""
    model, x, y, a = quantus_case()
    for init in (dict(features_in_step=16), dict(features_in_step=8, perturb_baseline="white", normalise=False)):
        ours, theirs = run_both("Monotonicity", init, model, x, y, a)
        assert ours == theirs == [True] * 4 and all(type(s) is bool for s in ours)
    model, x, y, a = quantus_case(batch=8, seed=0)
    init = dict(features_in_step=64, perturb_baseline="uniform")
    table = uniform_table(3, MONOTONICITY_FILL_STREAM, 8, 4).numpy()
    with numpy_uniform_returns([table[:, k] for k in range(4)], 0.0, 1.0):
        theirs = quantus.Monotonicity(disable_warnings=True, **init)(model=model, x_batch=x, y_batch=y, a_batch=a,
                                                                    device="cpu")
    ours = Monotonicity(seed=3, **init)(model=model, x_batch=x, y_batch=y, a_batch=a)
    assert ours == theirs and True in ours and False in ours


def inserting(x: np.ndarray):
    """A Quantus ``perturb_func`` that puts ``x``'s values in at the indices."""
    flat = x.reshape(x.shape[0], -1)

    def insert_input(arr, indices, perturb_baseline, **kwargs):
        rows = np.arange(arr.shape[0])[:, None]
        out = arr.copy()
        out[rows, indices] = flat[rows, indices]
        return out

    return insert_input


def test_quantus_monotonicity_inserting_the_input():
    """``inserted="input"`` equals Quantus's loop with a perturbation that puts the input's values in."""
    model, x, y, a = quantus_case()
    theirs = quantus.Monotonicity(features_in_step=8, perturb_func=inserting(x), disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    ours = Monotonicity(features_in_step=8, inserted="input")(model=model, x_batch=x, y_batch=y, a_batch=a)
    assert ours == theirs
    linear = AsDouble(PositiveLinear()).eval()
    positive = np.abs(x) + 0.1
    theirs = quantus.Monotonicity(features_in_step=8, perturb_func=inserting(positive), disable_warnings=True)(
        model=linear, x_batch=positive, y_batch=np.zeros(4, int), a_batch=a, device="cpu", softmax=False)
    ours = Monotonicity(features_in_step=8, inserted="input")(model=linear, x_batch=positive,
                                                              y_batch=np.zeros(4, int), a_batch=a, softmax=False)
    assert ours == theirs == [True] * 4


@pytest.mark.parametrize("init", [
    dict(features_in_step=16, nr_samples=4),
    dict(features_in_step=32, perturb_baseline="black", similarity_func=quantus.similarity_func.correlation_pearson),
])
def test_quantus_monotonicity_correlation(init):
    model, x, y, a = quantus_case()
    seed = 4
    steps, samples = 192 // init["features_in_step"], init.get("nr_samples", 100)
    uniform = contextlib.nullcontext()
    if "perturb_baseline" not in init:
        table = uniform_table(seed, MONOTONICITY_CORRELATION_FILL_STREAM, 4, steps * samples).numpy()
        uniform = numpy_uniform_returns([table[:, p] for p in range(steps * samples)], 0.0, 1.0)
    with uniform:
        theirs = quantus.MonotonicityCorrelation(disable_warnings=True, **init)(
            model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    ours = MonotonicityCorrelation(seed=seed, chunk_rows=10, **init)(model=model, x_batch=x, y_batch=y, a_batch=a)
    assert_close(ours, theirs)


def test_quantus_monotonicity_correlation_constant_example():
    """When the first (or second) example's series is constant, SciPy's
    spearmanr returns a plain NaN for the whole batch and Quantus 0.6 fails on
    it; here that example alone is NaN and the others equal Quantus's scores
    without it."""
    model, x, y, a = quantus_case()
    a[0] = 1.0
    init = dict(features_in_step=16, perturb_baseline="black")
    with pytest.raises(AttributeError):
        quantus.MonotonicityCorrelation(disable_warnings=True, **init)(
            model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    ours = MonotonicityCorrelation(**init)(model=model, x_batch=x, y_batch=y, a_batch=a)
    rest = quantus.MonotonicityCorrelation(disable_warnings=True, **init)(
        model=model, x_batch=x[1:], y_batch=y[1:], a_batch=a[1:], device="cpu")
    assert np.isnan(ours[0]) and len(ours) == 4
    assert_close(ours[1:], rest)


@pytest.mark.parametrize("name,init", [
    ("RegionPerturbation", dict(patch_size=3)),
    ("RegionPerturbation", dict(patch_size=4, order="LeRF", regions_evaluation=3, perturb_baseline="white")),
    ("RegionPerturbation", dict(patch_size=5, regions_evaluation=2, abs=True, normalise=False)),
    ("Selectivity", dict(patch_size=3)),
    ("Selectivity", dict(patch_size=4, perturb_baseline=0.5)),
])
def test_quantus_region_curves(name, init):
    model, x, y, a = quantus_case()
    ours, theirs = run_both(name, init, model, x, y, a)
    assert len(ours) == len(theirs) == 4 and all(isinstance(c, np.ndarray) for c in ours)
    assert_close(np.stack(ours), np.stack(theirs), REL_TOL * np.abs(np.stack(theirs)).max())
    metric = globals()[name](**init)
    metric(model=model, x_batch=x, y_batch=y, a_batch=a)
    assert abs(metric.get_auc_score - np.mean([np.trapezoid(c, dx=1) for c in theirs])) <= 1e-12


def test_quantus_explain_func_called_as_quantus_calls_it():
    """``quantus.explain`` (numpy in and out) as the explanation function of both."""
    model, x, y, _ = quantus_case()
    init = dict(patch_size=3, normalise=False)
    call = dict(explain_func=quantus.explain, explain_func_kwargs={"method": "Saliency"})
    ours, theirs = run_both("Selectivity", init, model, x, y, None, call)
    assert_close(np.stack(ours), np.stack(theirs), REL_TOL)


def test_quantus_region_perturbation_random_and_uniform():
    model, x, y, a = quantus_case()
    seed, n_patches = 5, 9
    orders = random_patch_order(seed, 4, n_patches, CPU).numpy()
    table = uniform_table(seed, REGION_FILL_STREAM, 4, n_patches).numpy()
    init = dict(patch_size=3, order="random", perturb_baseline="uniform")
    with patched(np.random, "permutation", list(orders)), \
            numpy_uniform_returns([table[:, k] for k in range(n_patches)], 0.0, 1.0):
        theirs = quantus.RegionPerturbation(disable_warnings=True, **init)(
            model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    ours = RegionPerturbation(seed=seed, **init)(model=model, x_batch=x, y_batch=y, a_batch=a)
    assert_close(np.stack(ours), np.stack(theirs), REL_TOL)


def test_quantus_selectivity_float32_model():
    """With Quantus's float32 model as it is, Selectivity's curves (model
    outputs, no arithmetic) are the same float32 values evaluated in other
    batch sizes: equal within what this CPU's kernels change across batch sizes."""
    case = _case("conv", dtype=torch.float32, batch=4)
    x, y = case.inputs.numpy(), np.array(case.target)
    a = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    ours, theirs = run_both("Selectivity", dict(patch_size=3), case.model, x, y, a)
    with torch.no_grad():
        ref = torch.softmax(case.model(case.inputs), 1)
        sizes = [torch.softmax(case.model(case.inputs.repeat(s, 1, 1, 1)), 1)[:4] for s in (2, 3, 5, 9)]
    sensitivity = max((s - ref).abs().max().item() for s in sizes)
    assert np.abs(np.stack(ours) - np.stack(theirs)).max() <= 4 * sensitivity


@pytest.mark.parametrize("init,call", [
    (dict(), {}),
    (dict(threshold=0.8, normalise=False), dict(batch_size=4)),
    (dict(threshold=0.7, abs=False), dict(softmax=False)),
])
def test_quantus_sufficiency(init, call):
    model, x, y, _ = quantus_case(batch=8)
    a = clustered_attributions(8).numpy()
    ours, theirs = run_both("Sufficiency", init, model, x, y, a, call)
    assert_close(ours, theirs)
    assert len(set(theirs)) > 1


# ---------------------------------------------------------------------------
# What depends on the batch, and what does not
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn,kwargs", [
    (faithfulness_correlation, dict(n_runs=8, subset_size=20, baseline="uniform")),
    (faithfulness_estimate, dict(features_in_step=16, baseline="uniform")),
    (monotonicity_correlation, dict(features_in_step=24, n_samples=3)),
    (monotonicity, dict(features_in_step=16, baseline="uniform", inserted="baseline")),
    (region_perturbation, dict(patch_size=3, order="random", baseline="uniform")),
    (selectivity, dict(patch_size=4, baseline="uniform")),
])
def test_example_value_does_not_depend_on_batch_or_chunking(fn, kwargs):
    model, x, a, t = conv_case(batch=5)
    full = fn(model, x, a, t, seed=11, **kwargs)
    full = full.values if hasattr(full, "values") and not isinstance(full, Tensor) else full
    for b in (0, 3):
        alone = fn(model, x[b:b + 1], a[b:b + 1], t[b:b + 1], seed=11, example_offset=b, chunk_rows=3, **kwargs)
        alone = alone.values if hasattr(alone, "values") and not isinstance(alone, Tensor) else alone
        if full.dtype == torch.bool:
            assert alone.tolist() == full[b:b + 1].tolist()
        else:
            assert_close(alone, full[b:b + 1], CORR_TOL)


def test_sensitivity_n_curves_per_example_correlation_per_batch():
    """The per-example curves do not depend on the batch; the score, a
    correlation across the examples, does (by definition), and Quantus's
    batch-wide normalisation does not change it while a per-example one would."""
    model, x, a, t = conv_case(batch=6)
    full = sensitivity_n(model, x, a, t, features_in_step=8)
    part = sensitivity_n(model, x[2:], a[2:], t[2:], features_in_step=8)
    assert_close(part.output_changes, full.output_changes[2:], REL_TOL)
    assert_close(part.attribution_sums, full.attribution_sums[2:], REL_TOL)
    assert np.abs((part.correlation - full.correlation).numpy()).max() > 1e-3
    common = sensitivity_n(model, x, a / a.abs().max(), t, features_in_step=8)
    assert_close(common.correlation, full.correlation)
    per_example = sensitivity_n(model, x, a / a.abs().amax((1, 2, 3), keepdim=True), t, features_in_step=8)
    assert np.abs((per_example.correlation - full.correlation).numpy()).max() > 1e-3


def test_quantus_sensitivity_n_scores_the_first_batch_only():
    model, x, y, a = quantus_case(batch=7)
    init = dict(features_in_step=8, return_aggregate=False)
    ours = SensitivityN(**init)(model=model, x_batch=x, y_batch=y, a_batch=a, batch_size=4)
    first = SensitivityN(**init)(model=model, x_batch=x[:4], y_batch=y[:4], a_batch=a[:4])
    assert_close(ours, first, 0.0)


def test_sufficiency_depends_on_the_batch_by_definition():
    """Quantus scores each batch of ``batch_size`` on its own: so does the drop-in."""
    model, x, y, _ = quantus_case(batch=8)
    a = clustered_attributions(8).numpy()
    whole = Sufficiency(threshold=0.8)(model=model, x_batch=x, y_batch=y, a_batch=a)
    split = Sufficiency(threshold=0.8)(model=model, x_batch=x, y_batch=y, a_batch=a, batch_size=4)
    first = Sufficiency(threshold=0.8)(model=model, x_batch=x[:4], y_batch=y[:4], a_batch=a[:4])
    assert_close(split[:4], first, 0.0)
    assert whole != split


# ---------------------------------------------------------------------------
# Batches of one, bad input, the caller's objects
# ---------------------------------------------------------------------------


def test_batch_of_one():
    model, x, a, t = conv_case(batch=1)
    assert faithfulness_correlation(model, x, a, t, n_runs=6, subset_size=10).shape == (1,)
    assert faithfulness_estimate(model, x, a, t, features_in_step=32).shape == (1,)
    assert monotonicity(model, x, a, t, features_in_step=32).shape == (1,)
    assert monotonicity_correlation(model, x, a, t, features_in_step=32, n_samples=2).shape == (1,)
    assert region_perturbation(model, x, a, t, patch_size=4).values.shape == (1, 4)
    assert selectivity(model, x, a, t, patch_size=4).values.shape == (1, 4)
    assert sufficiency(model, x, a).tolist() == [0.0]  # no other example: SciPy's 0/0 variance, Quantus's 0
    assert torch.isnan(sensitivity_n(model, x, a, t, features_in_step=32).correlation).all()
    qm, qx, qy, qa = quantus_case(batch=1)
    ours, theirs = run_both("FaithfulnessEstimate", dict(features_in_step=32), qm, qx, qy, qa)
    assert_close(ours, theirs)
    ours, theirs = run_both("Sufficiency", {}, qm, qx, qy, qa)
    assert ours == theirs == [0.0]
    with pytest.raises(ValueError, match="at least 2"):
        SensitivityN()(model=qm, x_batch=qx, y_batch=qy, a_batch=qa)


class CountingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _build(ConvNet, torch.float64)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x)


FUNCTIONS = [
    (faithfulness_correlation, dict(n_runs=4, subset_size=10)),
    (faithfulness_estimate, dict(features_in_step=32)),
    (sensitivity_n, dict(features_in_step=32)),
    (monotonicity, dict(features_in_step=32)),
    (monotonicity_correlation, dict(features_in_step=32, n_samples=2)),
    (region_perturbation, dict(patch_size=4)),
    (selectivity, dict(patch_size=4)),
]


@pytest.mark.parametrize("fn,base", FUNCTIONS)
@pytest.mark.parametrize("kwargs,name", [
    (dict(attributions=torch.zeros(2, 2, 8, 8, dtype=torch.float64)), "attributions"),
    (dict(attributions=torch.full((2, 1, 8, 8), math.nan, dtype=torch.float64)), "attributions"),
    (dict(inputs=torch.full((2, 3, 8, 8), math.nan, dtype=torch.float64)), "inputs"),
    (dict(output="prob"), "output"),
    (dict(baseline="grey"), "baseline"),
    (dict(baseline="uniform", uniform_low=math.inf), "uniform_low"),
    (dict(chunk_rows=0), "chunk_rows"),
    (dict(example_offset=-1), "example_offset"),
])
def test_bad_input_fails_before_compute(fn, base, kwargs, name):
    model = CountingModel()
    args = dict(inputs=torch.randn(2, 3, 8, 8, dtype=torch.float64),
                attributions=torch.randn(2, 1, 8, 8, dtype=torch.float64), target=1, **base)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        fn(model, **args)
    assert model.calls == 0


@pytest.mark.parametrize("fn,kwargs,name", [
    (faithfulness_correlation, dict(n_runs=4, subset_size=193), "subset_size"),
    (faithfulness_correlation, dict(n_runs=0, subset_size=4), "n_runs"),
    (faithfulness_correlation, dict(similarity="kendall"), "similarity"),
    (faithfulness_estimate, dict(features_in_step=0), "features_in_step"),
    (faithfulness_estimate, dict(order=torch.zeros(2, 192, dtype=torch.int64)), "order"),
    (sensitivity_n, dict(n_max_percentage=0.001), "n_max_percentage"),
    (monotonicity, dict(inserted="x"), "inserted"),
    (monotonicity_correlation, dict(eps=-1.0), "eps"),
    (region_perturbation, dict(order="best"), "order"),
    (region_perturbation, dict(regions_evaluation=0), "regions_evaluation"),
    (selectivity, dict(patch_order=torch.arange(4).repeat(2, 1)), "patch_order"),
    (selectivity, dict(inputs=torch.randn(2, 192, dtype=torch.float64),
                       attributions=torch.randn(2, 192, dtype=torch.float64)), "inputs"),
    (sufficiency, dict(threshold=math.nan), "threshold"),
    (sufficiency, dict(distance="euclidean"), "distance"),
])
def test_bad_options_fail_before_compute(fn, kwargs, name):
    model = CountingModel()
    args = dict(inputs=torch.randn(2, 3, 8, 8, dtype=torch.float64),
                attributions=torch.randn(2, 1, 8, 8, dtype=torch.float64))
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        fn(model, args.pop("inputs"), args.pop("attributions"), **args)
    assert model.calls == 0


def test_bad_options_with_an_explainer_fail_before_it_runs():
    model = CountingModel()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="subset_size"):
        faithfulness_correlation(model, x, "saliency", 1, subset_size=500)
    with pytest.raises(ValueError, match="baseline"):
        faithfulness_estimate(model, x, "saliency", 1, baseline="grey")
    with pytest.raises(ValueError, match="inputs"):
        region_perturbation(model, x.view(2, 192), "saliency", 1)
    assert model.calls == 0


@pytest.mark.parametrize("cls,init,call,error,name", [
    (FaithfulnessCorrelation, dict(subset_size=64), {}, ValueError, "subset_size"),
    (FaithfulnessCorrelation, dict(similarity_func=quantus.similarity_func.correlation_kendall_tau), {},
     NotImplementedError, "similarity_func"),
    (FaithfulnessEstimate, dict(features_in_step=5), {}, ValueError, "features_in_step"),
    (FaithfulnessEstimate, dict(perturb_baseline="mean"), {}, NotImplementedError, "perturb_baseline"),
    (Monotonicity, dict(perturb_func=quantus.functions.perturb_func.gaussian_noise), {}, NotImplementedError,
     "perturb_func"),
    (MonotonicityCorrelation, dict(features_in_step=16), dict(model_predict_kwargs={"a": 1}), NotImplementedError,
     "model_predict_kwargs"),
    (SensitivityN, dict(features_in_step=7), {}, ValueError, "features_in_step"),
    (RegionPerturbation, dict(order="best"), {}, ValueError, "order"),
    (Selectivity, {}, dict(a_batch=np.zeros((4, 1, 8, 7))), ValueError, "a_batch"),
    (Sufficiency, dict(distance_func="euclidean"), {}, NotImplementedError, "distance_func"),
    (Sufficiency, dict(normalise_func=quantus.normalise_func.normalise_by_negative, normalise=False), {},
     NotImplementedError, "normalise_func"),
])
def test_quantus_bad_input(cls, init, call, error, name):
    model, x, y, a = quantus_case()
    args = dict(model=model, x_batch=x, y_batch=y, a_batch=a)
    args.update(call)
    with pytest.raises(error, match=name):
        cls(**init)(**args)


def test_caller_objects_unchanged():
    model = _build(ConvNet, torch.float64)
    list(model.parameters())[0].requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: t.clone() for k, t in model.state_dict().items()}
    x, a = torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.randn(3, 1, 8, 8, dtype=torch.float64)
    x0, a0 = x.clone(), a.clone()
    for fn, kwargs in FUNCTIONS:
        fn(model, x, a, 1, **kwargs)
    sufficiency(model, x, a)
    assert torch.equal(x, x0) and torch.equal(a, a0) and not model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    qm, qx, qy, qa = quantus_case()
    qx0, qa0 = qx.copy(), qa.copy()
    for cls, init in ((FaithfulnessEstimate, dict(features_in_step=32)), (Sufficiency, {}),
                      (RegionPerturbation, dict(patch_size=4))):
        cls(**init)(model=qm, x_batch=qx, y_batch=qy, a_batch=qa)
    assert np.array_equal(qx, qx0) and np.array_equal(qa, qa0)
