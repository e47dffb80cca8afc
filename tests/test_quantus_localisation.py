"""Localisation metrics (fastattr.metrics.localisation and the Quantus 0.6
drop-ins PointingGame, AttributionLocalisation, TopKIntersection,
RelevanceRankAccuracy, RelevanceMassAccuracy, AUC, Focus): against float64
references written per example from the definitions, against Quantus 0.6 on
the same float64 inputs (its edge cases: all-zero explanations, empty and
full masks, ties, mosaics built by Quantus's own ``mosaic_creation``), and
for batch independence, bad input and the caller's arrays.

Tolerances: the values are ratios of float64 sums of at most D = 36 terms,
summed in another order than the reference's; each ratio check allows
4 * D * eps times the sums of magnitudes over the denominator
(:func:`ratio_tolerance`, the first-order rounding bound of the ratio), and
counts and flags are compared exactly."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

import quantus
from quantus.functions.mosaic_func import mosaic_creation
from sklearn.metrics import roc_auc_score

from captum_cases import _build
from fastattr.attr import saliency
from fastattr.metrics.localisation import (
    attribution_localisation, focus, localisation_auc, pointing_game, relevance_mass_accuracy,
    relevance_rank_accuracy, top_k_localisation,
)
from fastattr.metrics.similarity import top_k_intersection
from fastattr.quantus._localisation import (
    AUC, AttributionLocalisation, Focus, PointingGame, RelevanceMassAccuracy, RelevanceRankAccuracy,
    TopKIntersection, numpy_order,
)

# Quantus's own warnings (parameterisation notes, NaN for empty masks, 0 / 0).
pytestmark = [pytest.mark.filterwarnings("ignore:::quantus"), pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")]
EPS = np.finfo(np.float64).eps
H = W = 6
D = H * W


def masks_case(batch=7, channels=1, seed=0):
    """Explanations ``[B, C, 6, 6]`` and masks ``[B, 1, 6, 6]`` (float64) with
    Quantus's edge cases: example 1 all-zero, 2 tied values (rounded),
    3 an empty mask, 4 a full mask, 5 mostly zeros (ReLU-like: ties at 0
    straddle every k), 6 ties at the maximum."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, channels, H, W))
    a[1] = 0
    a[2] = np.round(a[2])
    a[5] = np.maximum(a[5] - 1, 0)
    a[6, :, :2] = a[6].max()
    s = (rng.random((batch, 1, H, W)) > 0.6).astype(np.float64)
    s[3] = 0
    s[4] = 1
    x = rng.standard_normal((batch, 1, H, W))
    y = np.arange(batch) % 3
    return x, y, a, s


def ratio_tolerance(num_terms: np.ndarray, den_terms: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Per example: 4 * D * eps * (sum|num| + |value| sum|den|) / |sum den|,
    the first-order rounding bound of a ratio of two float64 sums of D terms
    (0 where every term is 0: nothing to round)."""
    n, d = num_terms.reshape(len(num_terms), -1), den_terms.reshape(len(den_terms), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = 4 * n.shape[1] * EPS * (np.abs(n).sum(1) + np.abs(np.nan_to_num(value)) * np.abs(d).sum(1))
        return np.nan_to_num(bound / np.abs(d.sum(1)), nan=0.0, posinf=np.inf)


def assert_close(got, expected, tol):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(expected)), (got, expected)
    ok = ~np.isnan(expected)
    assert (np.abs(got[ok] - expected[ok]) <= np.broadcast_to(tol, got.shape)[ok]).all(), (got, expected)


# ---------------------------------------------------------------------------
# float64 references, one example at a time, from the definitions
# ---------------------------------------------------------------------------


def ref_pointing(a, s, weighted=False):
    out = []
    for ai, si in zip(a.reshape(len(a), -1), s.reshape(len(s), -1)):
        if si.sum() == 0:
            out.append(np.nan)
            continue
        hit = float(any(si[j] for j in range(len(ai)) if ai[j] == ai.max()))
        out.append(hit * (1 - si.sum() / len(si)) if weighted else hit)
    return np.array(out)


def ref_localisation(a, s, weighted=False, positive=False):
    out = []
    for ai, si in zip(a.reshape(len(a), -1), s.reshape(len(s), -1)):
        ai = np.maximum(ai, 0) if positive else ai
        share = sum(ai[j] for j in range(len(ai)) if si[j]) / (sum(ai) + 1e-9)
        share = np.nan if si.sum() == 0 or share > 1 else share
        out.append(share * si.sum() / len(si) if weighted else share)
    return np.array(out)


def ref_top_k(s, order, k, concept_influence=False):
    out = []
    for oi, si in zip(order, s.reshape(len(s), -1)):
        value = sum(si[j] for j in oi[:k]) / k
        if concept_influence:
            value = value * len(si) / si.sum() if si.sum() else np.nan
        out.append(np.nan if si.sum() == 0 else value)
    return np.array(out)


def ref_rank_accuracy(s, order):
    out = []
    for oi, si in zip(order, s.reshape(len(s), -1)):
        size = int(si.sum())
        out.append(np.nan if size == 0 else sum(si[j] for j in oi[:size]) / size)
    return np.array(out)


def ref_mass(a, s):
    out = []
    for ai, si in zip(a.reshape(len(a), -1), s.reshape(len(s), -1)):
        total = sum(ai)
        out.append(np.nan if si.sum() == 0 or total == 0 else sum(ai[j] for j in range(len(ai)) if si[j]) / total)
    return np.array(out)


def ref_auc(a, s):
    """The probability that a masked feature outranks an unmasked one, ties one half: pairs counted."""
    out = []
    for ai, si in zip(a.reshape(len(a), -1), s.reshape(len(s), -1)):
        pos, neg = ai[si == 1], ai[si == 0]
        if len(pos) == 0 or len(neg) == 0:
            out.append(np.nan)
            continue
        wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
        out.append(wins / (len(pos) * len(neg)))
    return np.array(out)


def stable_order(a):
    flat = a.reshape(len(a), -1)
    return np.array([sorted(range(flat.shape[1]), key=lambda j: (-row[j], j)) for row in flat])


def t(arr):
    return torch.from_numpy(np.ascontiguousarray(arr))


# ---------------------------------------------------------------------------
# The functions against the references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_pointing_game_matches_reference(weighted):
    _, _, a, s = masks_case()
    got = pointing_game(t(a), t(s), weighted=weighted)
    assert got.dtype == torch.float64
    assert_close(got, ref_pointing(a, s, weighted), 0)


@pytest.mark.parametrize("weighted,positive", [(False, False), (True, False), (False, True)])
def test_attribution_localisation_matches_reference(weighted, positive):
    _, _, a, s = masks_case()
    a = np.abs(a) if not positive else a
    got = attribution_localisation(t(a), t(s), weighted=weighted, positive_attributions=positive).numpy()
    expected = ref_localisation(a, s, weighted, positive)
    clipped = np.maximum(a, 0) if positive else a
    assert_close(got, expected, ratio_tolerance(clipped * s, clipped, expected))


def test_attribution_localisation_share_above_one_is_nan():
    a = t(np.array([[[[2.0, -1.5]]]]))  # inside 2, total 0.5
    s = t(np.array([[[[1.0, 0.0]]]]))
    assert torch.isnan(attribution_localisation(a, s)).all()


@pytest.mark.parametrize("k", [1, 5, 18, 36])
@pytest.mark.parametrize("concept_influence", [False, True])
def test_top_k_and_rank_accuracy_match_reference(k, concept_influence):
    _, _, a, s = masks_case()
    order = stable_order(a)
    got = top_k_localisation(t(a), t(s), k, concept_influence)
    assert_close(got, ref_top_k(s, order, k, concept_influence), 4 * D * EPS)
    assert_close(relevance_rank_accuracy(t(a), t(s)), ref_rank_accuracy(s, order), 0)
    # A given order replaces the stable one (here the reverse order among ties).
    rev = np.array([sorted(range(D), key=lambda j: (-row[j], -j)) for row in a.reshape(len(a), -1)])
    got = top_k_localisation(t(a), t(s), k, concept_influence, order=t(rev))
    assert_close(got, ref_top_k(s, rev, k, concept_influence), 4 * D * EPS)


def test_mass_accuracy_and_auc_match_reference():
    _, _, a, s = masks_case()
    mass = relevance_mass_accuracy(t(a), t(s)).numpy()
    expected = ref_mass(a, s)
    assert_close(mass, expected, ratio_tolerance(a * s, a, expected))
    auc = localisation_auc(t(a), t(s)).numpy()
    assert_close(auc, ref_auc(a, s), 4 * EPS)  # integer rank sums: one rounding in the division
    for b in range(len(a)):
        if 0 < s[b].sum() < D:
            assert abs(auc[b] - roc_auc_score(s[b].ravel(), a[b].ravel())) <= 4 * D * EPS


def test_masks_broadcast_over_channels():
    """A per-pixel mask covers every channel of a 3-channel explanation: the
    same as repeating it (Quantus fails on this shape)."""
    _, _, a, s = masks_case(channels=3)
    s3 = np.repeat(s, 3, axis=1)
    for fn in (pointing_game, relevance_mass_accuracy, localisation_auc, relevance_rank_accuracy):
        assert torch.equal(fn(t(a), t(s)).nan_to_num(-7), fn(t(a), t(s3)).nan_to_num(-7))
    with pytest.raises(ValueError):
        quantus.RelevanceMassAccuracy(disable_warnings=True, normalise=False)(
            model=None, x_batch=np.zeros((7, 3, H, W)), y_batch=np.zeros(7, int), a_batch=a, s_batch=s)


def test_top_k_intersection_with_a_mask_and_order():
    """similarity.top_k_intersection's mask form: the share of a's top k in the mask."""
    g = torch.Generator().manual_seed(3)
    a, mask = torch.rand(4, 20, generator=g), torch.rand(4, 20, generator=g) > 0.5
    for k in (1, 6, 20):
        expected = [sum(bool(m[j]) for j in row.topk(k).indices.tolist()) / k for row, m in zip(a, mask)]
        assert top_k_intersection(a, mask, k).tolist() == expected
    ties = torch.zeros(1, 6)
    order = torch.tensor([[5, 4, 3, 2, 1, 0]])
    assert top_k_intersection(ties, torch.tensor([[False] * 4 + [True] * 2]), 2, order=order).item() == 1.0
    with pytest.raises(ValueError, match="order"):
        top_k_intersection(ties, ties > 0, 2, order=order.int())


def test_focus_matches_reference():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 2, 7, 9))  # odd sides: Quantus splits at H // 2, W // 2
    pos = rng.integers(0, 2, (5, 4))
    pos[0] = 0
    a[1] = -np.abs(a[1])  # nothing positive: 0
    expected = []
    for ai, p in zip(a, pos):
        ai = np.maximum(ai, 0)
        inside = 0.0
        for h in range(7):
            for w in range(9):
                if p[2 * (h >= 3) + (w >= 4)]:
                    inside += ai[:, h, w].sum()
        expected.append(inside / (ai.sum() + 1e-9))
    got = focus(t(a), t(pos)).numpy()
    assert_close(got, expected, 4 * a[0].size * EPS)
    assert got[0] == 0 and got[1] == 0


# ---------------------------------------------------------------------------
# The drop-ins against Quantus 0.6
# ---------------------------------------------------------------------------

DROP_INS = [
    (quantus.PointingGame, PointingGame, {}),
    (quantus.AttributionLocalisation, AttributionLocalisation, {}),
    (quantus.AttributionLocalisation, AttributionLocalisation, dict(positive_attributions=True, abs=False)),
    (quantus.TopKIntersection, TopKIntersection, dict(k=7)),
    (quantus.TopKIntersection, TopKIntersection, dict(k=20, concept_influence=True)),
    (quantus.RelevanceRankAccuracy, RelevanceRankAccuracy, {}),
    (quantus.RelevanceMassAccuracy, RelevanceMassAccuracy, {}),
    (quantus.RelevanceMassAccuracy, RelevanceMassAccuracy, dict(abs=True)),
    (quantus.AUC, AUC, {}),
]


def quantus_scores(cls, kwargs, x, y, a, s, **call):
    return cls(disable_warnings=True, **kwargs)(model=None, x_batch=x, y_batch=y, a_batch=a.copy(), s_batch=s,
                                                **call)


@pytest.mark.parametrize("theirs,ours,kwargs", DROP_INS)
def test_drop_ins_equal_quantus(theirs, ours, kwargs):
    """Unnormalised: equal on the batch with every edge case (NumPy's tie
    order, NaN where Quantus gives NaN, bools where it gives bools);
    normalised (Quantus divides by the batch's maximum), one example at a time.
    Quantus refuses a batch of all-zero explanations; fastattr scores it."""
    x, y, a, s = masks_case()
    for normalise in (False, True):
        # Quantus refuses a batch whose explanations are all 0: example 1 alone.
        per_call = [slice(None)] if not normalise else [slice(b, b + 1) for b in range(len(x)) if b != 1]
        for sl in per_call:
            expected = quantus_scores(theirs, dict(kwargs, normalise=normalise), x[sl], y[sl], a[sl], s[sl])
            got = ours(normalise=normalise, **kwargs)(model=None, x_batch=x[sl], y_batch=y[sl], a_batch=a[sl],
                                                      s_batch=s[sl])
            assert [type(v) for v in got] == [type(v) for v in expected]
            assert_close(got, expected, drop_in_tolerance(theirs, kwargs, a[sl], s[sl], expected))


def drop_in_tolerance(theirs, kwargs, a, s, expected):
    """Ratios of sums: :func:`ratio_tolerance` of the explanation Quantus
    scores; counts and ranks: a few roundings of a value <= D."""
    e = np.asarray(expected, dtype=np.float64)
    if theirs in (quantus.AttributionLocalisation, quantus.RelevanceMassAccuracy):
        used = np.abs(a) if kwargs.get("abs", theirs is quantus.AttributionLocalisation) else a
        used = np.maximum(used, 0) if kwargs.get("positive_attributions") else used
        return ratio_tolerance(used * s, used, e)
    return 4 * D * EPS * np.maximum(1, np.abs(np.nan_to_num(e)))


def test_pointing_game_empty_mask_is_true_as_in_quantus():
    """Quantus stores its NaN for an empty mask in a bool array: True. The
    drop-in returns the same; the function returns NaN."""
    x, y, a, s = masks_case()
    got = PointingGame(normalise=False)(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    assert got[3] is np.True_ or got[3] == np.True_
    assert torch.isnan(pointing_game(t(a), t(s))[3])
    agg = PointingGame(normalise=False, return_aggregate=True)(model=None, x_batch=x, y_batch=y, a_batch=a,
                                                               s_batch=s)
    assert agg == [np.mean(quantus_scores(quantus.PointingGame, dict(normalise=False), x, y, a, s))]


def test_pointing_game_weighted_where_quantus_fails():
    x, y, a, s = masks_case()
    with pytest.raises(TypeError):
        quantus_scores(quantus.PointingGame, dict(weighted=True), x, y, a, s)
    got = PointingGame(weighted=True)(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    assert_close(got, ref_pointing(a, s, weighted=True), 0)


def test_attribution_localisation_weighted_is_per_example():
    """Quantus 0.6 weighs by |mask| / x_batch[2:].size, the size of all but
    two examples of its batch; here by |mask| / (H * W). On B examples of
    one channel the two differ by the factor B - 2 exactly, and Quantus's
    value for an example changes with its batch while fastattr's does not."""
    x, y, a, s = masks_case()
    opts = dict(weighted=True, normalise=False)
    theirs = np.array(quantus_scores(quantus.AttributionLocalisation, opts, x, y, a, s))
    ours = np.array(AttributionLocalisation(**opts)(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s))
    unweighted = np.array(AttributionLocalisation(normalise=False)(model=None, x_batch=x, y_batch=y, a_batch=a,
                                                                   s_batch=s))
    assert_close(theirs * (len(x) - 2), ours, 4 * D * EPS)
    assert_close(ours, unweighted * s.reshape(len(s), -1).sum(1) / D, 4 * D * EPS)
    alone = AttributionLocalisation(**opts)(model=None, x_batch=x[:3], y_batch=y[:3], a_batch=a[:3], s_batch=s[:3])
    assert alone == ours[:3].tolist()
    theirs_small = quantus_scores(quantus.AttributionLocalisation, opts, x[:3], y[:3], a[:3], s[:3])
    assert not np.allclose(theirs_small, theirs[:3])


def test_normalised_scores_do_not_depend_on_the_batch():
    """With Quantus's default normalise (by the maximum), Quantus divides by
    the batch's maximum: AttributionLocalisation's 1e-9 and TopK's ties see
    other values. fastattr normalises per example: an example scores the same
    alone and in any batch, and equals Quantus's score of it alone."""
    x, y, a, s = masks_case()
    a = a.copy()
    a[0] *= 1e6  # the batch's maximum
    batch = AttributionLocalisation()(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    theirs = quantus_scores(quantus.AttributionLocalisation, {}, x, y, a, s)
    for b in (2, 6):
        alone = AttributionLocalisation()(model=None, x_batch=x[b:b + 1], y_batch=y[b:b + 1], a_batch=a[b:b + 1],
                                          s_batch=s[b:b + 1])
        theirs_alone = quantus_scores(quantus.AttributionLocalisation, {}, x[b:b + 1], y[b:b + 1], a[b:b + 1],
                                      s[b:b + 1])
        assert alone == [batch[b]]
        assert_close(alone, theirs_alone, ratio_tolerance(np.abs(a[b:b + 1]) * s[b:b + 1], np.abs(a[b:b + 1]),
                                                          np.array(theirs_alone)))
        assert abs(theirs[b] - theirs_alone[0]) > 1e-6  # Quantus's depends on the batch


def test_ties_follow_numpys_order_in_the_drop_in():
    """Example 5 (zeros straddle k) scores by NumPy's argsort order in the
    drop-in, as in Quantus; the function's default (stable) order is its own."""
    x, y, a, s = masks_case()
    k = 20
    expected = quantus_scores(quantus.TopKIntersection, dict(k=k, normalise=False), x, y, a, s)
    got = TopKIntersection(k=k, normalise=False)(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    assert got == expected or np.array_equal(got, expected, equal_nan=True)
    stable = top_k_localisation(t(a), t(s), k)
    assert not np.array_equal(stable.numpy(), np.asarray(expected), equal_nan=True)  # the tie order matters here
    order = numpy_order(t(a))
    assert torch.equal(order, torch.from_numpy(np.argsort(-a.reshape(len(a), -1), axis=-1)))
    assert_close(top_k_localisation(t(a), t(s), k, order=order), expected, 0)


def test_explain_func_runs_on_the_engine():
    """explain_func = fastattr.saliency (engine) equals Quantus given the same
    saliency maps as a_batch (one example per call: normalise spans Quantus's batch)."""
    model = _build(SmallNet, torch.float64)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 1, H, W))
    y = np.array([0, 2, 1])
    s = (rng.random((3, 1, H, W)) > 0.5).astype(np.float64)
    a = saliency(model, t(x), target=t(y)).numpy()
    for theirs, ours in ((quantus.RelevanceRankAccuracy, RelevanceRankAccuracy), (quantus.AUC, AUC),
                         (quantus.PointingGame, PointingGame)):
        got = ours()(model=model, x_batch=x, y_batch=y, s_batch=s, explain_func=saliency)
        for b in range(3):
            expected = quantus_scores(theirs, {}, x[b:b + 1], y[b:b + 1], a[b:b + 1], s[b:b + 1])
            assert_close(got[b:b + 1], expected, 4 * D * EPS)


class SmallNet(nn.Module):
    """[B, 1, H, W] -> [B, 4]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4, 4)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_focus_on_quantus_mosaics():
    """Mosaics, targets and positions from Quantus's mosaic_creation; Quantus's
    Focus on the same saliency maps (normalise off, and per mosaic with it on)."""
    rng = np.random.default_rng(7)
    images = rng.random((12, 1, 3, 3)).astype(np.float32)
    labels = np.arange(12) % 4
    mosaics, _, _, positions, targets = mosaic_creation(images, labels, mosaics_per_class=2, seed=3)
    x, y = mosaics.astype(np.float64), np.array(targets)
    model = _build(SmallNet, torch.float64)
    a = saliency(model, t(x), target=t(y)).numpy()
    for kwargs in (dict(normalise=False), dict(normalise=False, abs=True)):
        expected = quantus.Focus(disable_warnings=True, **kwargs)(
            model=model, x_batch=x, y_batch=y, a_batch=a.copy(), custom_batch=positions)
        got = Focus(**kwargs)(model=model, x_batch=x, y_batch=y, a_batch=a, custom_batch=positions)
        assert_close(got, expected, 4 * x[0].size * EPS)
    engine = Focus()(model=model, x_batch=x, y_batch=y, explain_func=saliency, custom_batch=positions)
    for b in range(len(x)):
        alone = quantus.Focus(disable_warnings=True)(model=model, x_batch=x[b:b + 1], y_batch=y[b:b + 1],
                                                     a_batch=a[b:b + 1].copy(), custom_batch=positions[b:b + 1])
        assert_close(engine[b:b + 1], alone, 4 * x[0].size * EPS)


def test_batch_of_one_and_any_batch():
    """Each function's value for an example is the same alone as in its batch."""
    _, _, a, s = masks_case()
    fns = [pointing_game, attribution_localisation, relevance_rank_accuracy, relevance_mass_accuracy,
           localisation_auc, lambda a, s: top_k_localisation(a, s, 9)]
    for fn in fns:
        whole = fn(t(a), t(s))
        for b in range(len(a)):
            assert torch.equal(fn(t(a[b:b + 1]), t(s[b:b + 1])).nan_to_num(-7), whole[b:b + 1].nan_to_num(-7))


# ---------------------------------------------------------------------------
# Bad input, before any compute; the caller's arrays
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [pointing_game, attribution_localisation, relevance_rank_accuracy,
                                relevance_mass_accuracy, localisation_auc, lambda a, s: top_k_localisation(a, s, 3)])
@pytest.mark.parametrize("a,s,name", [
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5), "masks"),
    (torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4), "masks"),
    (torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5), "masks"),
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4), "masks"),
    (torch.full((2, 1, 4, 4), float("nan")), torch.zeros(2, 1, 4, 4), "attributions"),
    (torch.zeros(2, dtype=torch.bool), torch.zeros(2, 1, 4, 4), "attributions"),
])
def test_functions_bad_input(fn, a, s, name):
    with pytest.raises((ValueError, TypeError), match=name):
        fn(a, s)


def test_function_options_bad_input():
    a, s = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    with pytest.raises(ValueError, match="k:"):
        top_k_localisation(a, s, 17)
    with pytest.raises(ValueError, match="order"):
        top_k_localisation(a, s, 3, order=torch.zeros(2, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="positions"):
        focus(a, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positions"):
        focus(a, torch.full((2, 4), 2))


class Counting:
    """An explain_func that counts its calls (Quantus-style)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, inputs, targets, **kwargs):
        self.calls += 1
        return np.ones_like(inputs)


@pytest.mark.parametrize("ctor,call,error,name", [
    (PointingGame, dict(s_batch=None), ValueError, "s_batch"),
    (PointingGame, dict(s_batch=np.zeros((3, 1, 4, 4))), ValueError, "s_batch"),
    (PointingGame, dict(s_batch=np.zeros((3, 2, H, W))), ValueError, "s_batch"),
    (AUC, dict(s_batch=np.full((3, 1, H, W), 0.5)), ValueError, "s_batch"),
    (lambda: TopKIntersection(k=36), {}, ValueError, "k:"),
    (lambda: TopKIntersection(k=0), None, ValueError, "k:"),
    (lambda: AttributionLocalisation(max_size=2.0), None, ValueError, "max_size"),
    (lambda: PointingGame(normalise_func=np.tanh), None, NotImplementedError, "normalise_func"),
    (Focus, dict(custom_batch=None), ValueError, "custom_batch"),
    (Focus, dict(custom_batch=[(1, 0, 0, 2)] * 3), ValueError, "custom_batch"),
    (Focus, dict(custom_batch=[(1, 0, 0, 1)] * 2), ValueError, "custom_batch"),
])
def test_drop_in_bad_input_fails_before_compute(ctor, call, error, name):
    model = _build(SmallNet, torch.float64)
    x, s = np.zeros((3, 1, H, W)), np.ones((3, 1, H, W))
    explain = Counting()
    if call is None:
        with pytest.raises(error, match=name):
            ctor()
        return
    args = dict(model=model, x_batch=x, y_batch=np.zeros(3, int), s_batch=s, explain_func=explain)
    args.update(call)
    with pytest.raises(error, match=name):
        ctor()(**args)
    assert explain.calls == 0


def test_caller_arrays_unchanged():
    x, y, a, s = masks_case()
    copies = [arr.copy() for arr in (x, y, a, s)]
    for cls in (PointingGame, AttributionLocalisation, RelevanceRankAccuracy, RelevanceMassAccuracy, AUC):
        cls()(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    TopKIntersection(k=5)(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    for arr, copy in zip((x, y, a, s), copies):
        assert np.array_equal(arr, copy)
    ta, ts = t(a), t(s)
    ta0, ts0 = ta.clone(), ts.clone()
    relevance_rank_accuracy(ta, ts)
    assert torch.equal(ta, ta0) and torch.equal(ts, ts0)
