"""The audit's verdict, statistics and report on hand-built shard results
with known answers (no model is run): the sanity check gates the
recommendation, ranks aggregate medians (not means), missing metrics are
"not checked", log-scale flags, ties, methods that could not run."""
import html.parser
import types

import numpy as np
import pytest

from fastattr.cli import report as report_module
from fastattr.cli.report import render_report
from fastattr.cli.results import log_scale, merge
from fastattr.cli.shards import SHARD_DIR, commit_shard, plan_shards
from fastattr.cli.verdict import SANITY_THRESHOLD, build_verdict

HIGHER = {"deletion_auc": False, "insertion_auc": True, "infidelity": False, "max_sensitivity": False,
          "avg_sensitivity": False, "relative_input_stability": False, "local_lipschitz_estimate": False,
          "randomization_spearman": False, "fragility_topk": True, "my_metric": False}
LAYERS = ["fc", "conv2", "conv1"]  # top layer first, as the cascading steps run


def constant(values, n):
    """``[M, n]``: method i's value ``values[i]`` for every example."""
    return np.repeat(np.asarray(values, dtype=float)[:, None], n, axis=1)


def sanity_curves(last_steps, n, k=len(LAYERS), early=0.95):
    """``[M, n, k]`` randomization curves: ``early`` at every step but the
    last, ``last_steps[i]`` at the last (every layer randomized)."""
    c = np.full((len(last_steps), n, k), early)
    c[:, :, -1] = np.asarray(last_steps, dtype=float)[:, None]
    return c


def run_merge(tmp_path, methods, columns, curves=None, not_applicable=None, n=6, ran=None):
    """merge() over two committed shards of the hand-written ``[M, n]`` columns
    (``columns``: metric -> array; ``fgsm_accuracy`` is a model column ``[n]``)."""
    out = str(tmp_path)
    (tmp_path / SHARD_DIR).mkdir(parents=True)
    curves = curves or {}
    shards = plan_shards(n, (n + 1) // 2, 1)
    for s in shards:
        arrays = {"index": np.arange(s.start, s.stop), "label": np.arange(s.start, s.stop) % 3,
                  "pred": np.zeros(s.stop - s.start, dtype=np.int64)}
        for name, a in columns.items():
            a = np.asarray(a, dtype=float)
            if a.ndim == 1:
                arrays["model:" + name] = a[s.start:s.stop]
            else:
                arrays["method:" + name] = a[:, s.start:s.stop]
        for name, c in curves.items():
            arrays["curve:" + name] = c[:, s.start:s.stop]
        commit_shard(out, s, arrays)
    run = {"fingerprint": "f" * 64, "command": {}, "versions": {"fastattr": "0", "torch": "0"},
           "fingerprinted": {
               "methods": list(ran or methods), "model": {"kind": "factory"}, "data": {"description": "hand-built"},
               "method_settings": {m: {"n_steps": 16} for m in methods},
               "metric_settings": {"randomization_spearman": {"granularity": "blocks", "steps": LAYERS},
                                   "fgsm_accuracy": {"epsilon": 0.03, "norm": "L-inf"},
                                   "deletion_auc": {"n_steps": 16}}}}
    groups = [types.SimpleNamespace(higher_is_better=HIGHER)]
    return merge(out, shards, types.SimpleNamespace(seed=0), run, groups, not_applicable)


def test_a_method_failing_the_sanity_check_is_never_recommended(tmp_path):
    # "guided" is best on every faithfulness and robustness metric, and its
    # explanation survives randomizing every layer (0.93): it must fail.
    methods = ["guided", "saliency", "ig"]
    n = 6
    merged = run_merge(tmp_path, methods, {
        "deletion_auc": constant([0.1, 0.2, 0.3], n), "insertion_auc": constant([0.9, 0.8, 0.7], n),
        "infidelity": constant([1.0, 2.0, 3.0], n), "max_sensitivity": constant([0.01, 0.5, 0.9], n),
    }, {"randomization_spearman": sanity_curves([0.93, 0.1, 0.2], n)})
    v = merged.summary["verdict"]
    guided = v["methods"]["guided"]
    assert guided["sanity"] == "fail" and guided["sanity_value"] == pytest.approx(0.93)
    assert guided["faithfulness_rank"] == 1 and guided["robustness_rank"] == 1
    assert guided["recommended"] is False
    assert "fails the sanity check" in guided["reason"] and "0.93" in guided["reason"]
    assert str(SANITY_THRESHOLD) in guided["reason"]
    assert v["recommended"] == ["saliency"] and v["methods"]["saliency"]["recommended"] is True
    assert "most faithful of the methods that pass" in v["methods"]["saliency"]["reason"]
    assert "less faithful than saliency" in v["methods"]["ig"]["reason"]
    assert v["sanity_check"]["threshold"] == SANITY_THRESHOLD and v["sanity_check"]["computed"] is True
    assert "median over examples" in v["sanity_check"]["statistic"]


def test_sanity_statistic_is_the_median_after_the_last_step(tmp_path):
    n = 5
    curves = np.empty((3, n, 3))
    curves[0] = [0.95, 0.9, 0.1]  # similar while the top layers are random, not once all are: passes
    curves[1] = [0.1, 0.1, 0.9]  # the fully random model explained alike: fails
    curves[2] = [0.0, 0.0, -0.8]  # strongly anti-correlated is fixed by the input too: fails
    curves[0, 0, -1] = 0.99  # one outlier example does not move the median
    curves[1, 1, -1] = np.nan  # an undefined similarity (constant map) is left out
    merged = run_merge(tmp_path, ["a", "b", "c"], {"deletion_auc": constant([1, 2, 3], n)},
                       {"randomization_spearman": curves}, n=n)
    got = merged.summary["verdict"]["methods"]
    assert [got[m]["sanity"] for m in "abc"] == ["pass", "fail", "fail"]
    assert got["a"]["sanity_value"] == pytest.approx(0.1)
    assert got["b"]["sanity_value"] == pytest.approx(0.9) and got["b"]["sanity_n_examples"] == n - 1
    assert got["c"]["sanity_value"] == pytest.approx(-0.8)


def test_medians_resist_an_outlier_that_flips_the_mean_ranking(tmp_path):
    n = 5
    deletion = np.array([[0.1, 0.1, 0.1, 0.1, 1000.0],  # a: median 0.1, mean 200.08
                         [0.2, 0.2, 0.2, 0.2, 0.2]])  # b: median 0.2, mean 0.2
    merged = run_merge(tmp_path, ["a", "b"], {"deletion_auc": deletion},
                       {"randomization_spearman": sanity_curves([0.1, 0.1], n)}, n=n)
    s = merged.summary
    assert deletion[0].mean() > deletion[1].mean()  # by the mean, b would come first
    assert s["ranking"]["deletion_auc"] == {"best_first": ["a", "b"], "higher_is_better": False, "by": "median"}
    assert s["verdict"]["methods"]["a"]["faithfulness_rank"] == 1 and s["verdict"]["recommended"] == ["a"]


def test_ranks_are_averaged_over_the_metrics_of_each_axis(tmp_path):
    n = 4
    merged = run_merge(tmp_path, ["a", "b", "c"], {
        "deletion_auc": constant([1, 2, 3], n),  # lower is better: a 1, b 2, c 3
        "insertion_auc": constant([0.2, 0.9, 0.5], n),  # higher is better: a 3, b 1, c 2
        "infidelity": constant([1, 3, 2], n),  # a 1, b 3, c 2
        "max_sensitivity": constant([3, 1, 2], n),  # a 3, b 1, c 2
        "fragility_topk": constant([0.9, 0.1, 0.5], n),  # higher is better: a 1, b 3, c 2
    }, {"randomization_spearman": sanity_curves([0.1, 0.1, 0.1], n)}, n=n)
    got = merged.summary["verdict"]["methods"]
    assert [got[m]["faithfulness_score"] for m in "abc"] == pytest.approx([5 / 3, 2, 7 / 3])
    assert [got[m]["faithfulness_rank"] for m in "abc"] == [1, 2, 3]
    assert [got[m]["robustness_score"] for m in "abc"] == pytest.approx([2, 2, 2])
    assert [got[m]["robustness_rank"] for m in "abc"] == [1, 1, 1]
    assert merged.summary["verdict"]["axes"] == {
        "faithfulness": ["deletion_auc", "insertion_auc", "infidelity"],
        "robustness": ["max_sensitivity", "fragility_topk"]}


def test_a_faithfulness_tie_is_broken_by_robustness_and_full_ties_are_all_recommended(tmp_path):
    n = 4
    curves = {"randomization_spearman": sanity_curves([0.1, 0.1, 0.1], n)}
    merged = run_merge(tmp_path / "one", ["a", "b", "c"], {
        "deletion_auc": constant([0.5, 0.5, 0.9], n), "avg_sensitivity": constant([0.3, 0.1, 0.2], n),
    }, curves, n=n)
    v = merged.summary["verdict"]
    assert [v["methods"][m]["faithfulness_rank"] for m in "abc"] == [1, 1, 3]  # ties share the best rank
    assert v["recommended"] == ["b"]
    assert "ties b on faithfulness, but is less robust" in v["methods"]["a"]["reason"]
    both = run_merge(tmp_path / "two", ["a", "b", "c"], {
        "deletion_auc": constant([0.5, 0.5, 0.9], n), "avg_sensitivity": constant([0.1, 0.1, 0.2], n),
    }, curves, n=n).summary["verdict"]
    assert both["recommended"] == ["a", "b"] and "tied" in both["recommendation"]
    assert "tied with b" in both["methods"]["a"]["reason"]


def test_sanity_check_not_computed_means_not_checked_and_no_recommendation(tmp_path):
    n = 4
    merged = run_merge(tmp_path / "none", ["a", "b"], {"deletion_auc": constant([1, 2], n)}, n=n)
    v = merged.summary["verdict"]
    assert [v["methods"][m]["sanity"] for m in "ab"] == ["not checked", "not checked"]
    assert v["recommended"] == [] and not any(r["recommended"] for r in v["methods"].values())
    assert "was not computed" in v["recommendation"] and v["sanity_check"]["computed"] is False
    # computed for b only (a's similarities are all undefined): a, the most faithful, is still not checked
    curves = sanity_curves([0.1, 0.1], n)
    curves[0] = np.nan
    v = run_merge(tmp_path / "some", ["a", "b"], {"deletion_auc": constant([1, 2], n)},
                  {"randomization_spearman": curves}, n=n).summary["verdict"]
    assert v["methods"]["a"]["sanity"] == "not checked" and v["methods"]["a"]["sanity_value"] is None
    assert v["recommended"] == ["b"]


def test_no_method_passing_or_no_faithfulness_metric_is_said(tmp_path):
    n = 4
    v = run_merge(tmp_path / "fail", ["a", "b"], {"deletion_auc": constant([1, 2], n)},
                  {"randomization_spearman": sanity_curves([0.8, 0.7], n)}, n=n).summary["verdict"]
    assert v["recommended"] == [] and "no method passes the sanity check" in v["recommendation"]
    # robustness alone never recommends: a constant explanation is perfectly robust
    v = run_merge(tmp_path / "robust", ["a", "b"], {"max_sensitivity": constant([1, 2], n)},
                  {"randomization_spearman": sanity_curves([0.1, 0.1], n)}, n=n).summary["verdict"]
    assert v["recommended"] == [] and "no faithfulness metric" in v["recommendation"]
    assert "no faithfulness metric was computed for it" in v["methods"]["a"]["reason"]


def test_methods_that_could_not_run_are_listed_with_their_reason(tmp_path):
    n = 4
    merged = run_merge(tmp_path, ["a", "b"], {"deletion_auc": constant([1, 2], n)},
                       {"randomization_spearman": sanity_curves([0.1, 0.1], n)},
                       not_applicable={"lrp": "no LRP rule for nn.GELU"}, n=n, ran=["a", "lrp", "b"])
    v = merged.summary["verdict"]
    assert list(merged.summary["methods"]) == ["a", "b"] and set(merged.table["method"]) == {"a", "b"}
    assert v["not_applicable"] == {"lrp": "no LRP rule for nn.GELU"}
    row = v["methods"]["lrp"]
    assert row["applicable"] is False and row["sanity"] == "not applicable" and row["recommended"] is False
    assert row["reason"] == "could not run on this model: no LRP rule for nn.GELU"
    with pytest.raises(ValueError, match="both ran and are not applicable: a"):
        build_verdict(merged.table, ["a", "b"], ["deletion_auc"], {}, HIGHER, {"a": "why"})


def test_shards_with_rows_for_another_method_count_are_refused(tmp_path):
    with pytest.raises(ValueError, match="rows for 2 methods, expected 1"):
        run_merge(tmp_path, ["a", "b"], {"deletion_auc": constant([1, 2], 4)}, not_applicable={"b": "x"}, n=4)


def test_an_unknown_metric_is_shown_but_not_ranked(tmp_path):
    n = 4
    columns = {"deletion_auc": constant([1, 2], n), "my_metric": constant([9, 1], n)}
    curves = {"randomization_spearman": sanity_curves([0.1, 0.1], n)}
    merged = run_merge(tmp_path / "x", ["a", "b"], columns, curves, n=n)
    v = merged.summary["verdict"]
    assert v["unranked_metrics"] == ["my_metric"] and v["recommended"] == ["a"]
    assert merged.summary["methods"]["b"]["my_metric"]["median"] == 1
    flipped = run_merge(tmp_path / "y", ["a", "b"], {**columns, "my_metric": constant([1, 9], n)}, curves, n=n)
    assert {m: r["faithfulness_rank"] for m, r in flipped.summary["verdict"]["methods"].items()} == \
        {m: r["faithfulness_rank"] for m, r in v["methods"].items()}
    assert "my_metric" in render_report(merged, _examples)


def test_robust_statistics_against_numpy(tmp_path):
    n = 9
    rng = np.random.default_rng(0)
    values = rng.lognormal(0, 3, (2, n))
    values[0, 2] = np.nan
    values[1, 4] = np.inf
    merged = run_merge(tmp_path, ["a", "b"], {"relative_input_stability": values}, n=n)
    for i, m in enumerate("ab"):
        finite = values[i][np.isfinite(values[i])]
        s = merged.summary["methods"][m]["relative_input_stability"]
        p5, p25, p50, p75, p95 = np.percentile(finite, [5, 25, 50, 75, 95])
        assert (s["p5"], s["p25"], s["median"], s["p75"], s["p95"]) == pytest.approx((p5, p25, p50, p75, p95))
        assert s["mean"] == pytest.approx(finite.mean()) and (s["n"], s["n_missing"]) == (n - 1, 1)
    assert merged.summary["log_scale"]["relative_input_stability"] is True


def test_log_scale_flag():
    decades = 10.0 ** np.linspace(0, 4, 101)  # p5 = 10^0.2, p95 = 10^3.8: a ratio of 10^3.6
    assert log_scale(decades) is True
    narrow = 10.0 ** np.linspace(0, 2.2, 101)  # p95 / p5 = 10^(0.9 * 2.2) = 10^1.98 < 100
    assert log_scale(narrow) is False
    assert log_scale(np.concatenate([decades, [0.0]])) is False  # a zero has no logarithm
    assert log_scale(-decades) is False
    assert log_scale(np.concatenate([decades, [np.nan, np.inf]])) is True  # non-finite values are ignored
    assert log_scale(np.array([np.nan])) is False and log_scale(np.ones((2, 3))) is False


def _examples(method, indices):
    """A stub of the audit's examples_of: 8x8 grey inputs and attributions."""
    rng = np.random.default_rng(len(indices))
    return rng.random((len(indices), 1, 8, 8)), rng.standard_normal((len(indices), 1, 8, 8))


class _Tables(html.parser.HTMLParser):
    """Every ``<table id=...>``'s rows as lists of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self._current, self._cell = {}, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._current = self.tables.setdefault(dict(attrs).get("id"), [])
        elif tag == "tr" and self._current is not None:
            self._current.append([])
        elif tag in ("td", "th") and self._current is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._current[-1].append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._current = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _report_case(tmp_path):
    n = 6
    rng = np.random.default_rng(1)
    columns = {
        "deletion_auc": rng.random((3, n)), "insertion_auc": rng.random((3, n)),
        "relative_input_stability": 10.0 ** rng.uniform(-5, 0, (3, n)), "fgsm_accuracy": np.ones(n),
    }
    curves = {"randomization_spearman": sanity_curves([0.93, 0.1, 0.2], n),
              "deletion": rng.random((3, n, 17)), "insertion": rng.random((3, n, 17))}
    return run_merge(tmp_path, ["guided", "saliency", "ig"], columns, curves,
                     not_applicable={"lrp": "no rule for GELU"}, n=n)


def test_report_tables_match_the_summary(tmp_path):
    merged = _report_case(tmp_path)
    page = render_report(merged, _examples)
    assert "http" not in page and "<script" not in page
    parsed = _Tables()
    parsed.feed(page)
    v = merged.summary["verdict"]
    rows = parsed.tables["verdict"][1:]
    # recommended first, then passing, failing and not applicable methods
    assert [r[0] for r in rows] == ["ig", "saliency", "guided", "lrp"] and set(v["methods"]) == {r[0] for r in rows}
    for method, sanity, faith, robust, recommended, why in rows:
        row = v["methods"][method]
        assert sanity.split(":")[0] == row["sanity"]
        assert faith == ("–" if row["faithfulness_rank"] is None else str(row["faithfulness_rank"]))
        assert robust == ("–" if row["robustness_rank"] is None else str(row["robustness_rank"]))
        assert recommended == ("yes" if row["recommended"] else "no") and why == row["reason"]
    assert rows[2][1] == f"fail: 0.93 ≥ {SANITY_THRESHOLD}" and rows[3][1] == "not applicable"
    metrics = parsed.tables["metrics"]
    assert metrics[0][1:] == ["deletion_auc ↓", "insertion_auc ↑", "relative_input_stability ↓"]
    st = merged.summary["methods"]["saliency"]["deletion_auc"]
    assert metrics[2][1] == f"{st['median']:.3g} [{st['p25']:.3g}, {st['p75']:.3g}]"
    accuracy = {r[0]: r[1:] for r in parsed.tables["accuracy"][1:]}
    assert accuracy["fgsm"][0] == "0.03" and accuracy["clean"][0] == "–"
    settings = {r[0]: r[1] for r in parsed.tables["metric-settings"][1:]}
    assert settings["randomization_spearman"] == "granularity = blocks; steps = fc, conv2, conv1"
    assert {r[0] for r in parsed.tables["method-settings"][1:]} == {"guided", "saliency", "ig"}


def test_report_figures(tmp_path, monkeypatch):
    """The sanity-check axis names the layers and carries the threshold; a
    metric spanning decades is drawn on a log axis; heatmap panels are large."""
    import matplotlib.pyplot as plt

    figures = {}

    def keep(fig, alt):
        figures[alt] = fig
        return f"<img alt='{alt}'>"

    monkeypatch.setattr(report_module, "_img", keep)
    merged = _report_case(tmp_path)
    assert merged.summary["log_scale"] == {"deletion_auc": False, "insertion_auc": False,
                                           "relative_input_stability": True}
    render_report(merged, _examples)
    try:
        ax = figures["sanity-check curves"].axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
        assert any(list(line.get_ydata()) == [SANITY_THRESHOLD] * 2 for line in ax.get_lines())
        medians = [line.get_ydata() for line in ax.get_lines()[:3]]
        assert [m[-1] for m in medians] == pytest.approx([0.93, 0.1, 0.2])
        assert figures["distribution of relative_input_stability"].axes[0].get_xscale() == "log"
        assert figures["distribution of deletion_auc"].axes[0].get_xscale() == "linear"
        heat = figures["example heatmaps"]
        width, height = heat.get_size_inches()
        assert width / 6 >= 2.5 and height / 3 >= 2.5  # 3 methods x (input, map) x 3 examples
    finally:
        for fig in figures.values():
            plt.close(fig)
