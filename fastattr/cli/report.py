"""``report.html``: one self-contained page (every image an embedded PNG data
URI, no scripts, no external resources): the verdict first (sanity check,
faithfulness and robustness ranks, the recommended method and why), one
table of every metric's median [IQR], the model's accuracy under attack,
the metrics' distributions, example heatmaps (best, typical, worst per
method, beside their inputs), the sanity-check curves over the randomized
layers, deletion/insertion curves, the other selected metrics' curves, and
the settings of every method and metric."""
from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .results import Merged, selected_examples
from .verdict import FAIL, FAITHFULNESS, NOT_APPLICABLE, NOT_CHECKED, PASS, ROBUSTNESS, SANITY_METRIC

# (method, data-set indices [k]) -> (inputs [k, *F], attributions [k, *F])
ExamplesOf = Callable[[str, Sequence[int]], "tuple[np.ndarray, np.ndarray]"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#666}
td.text,th.text{text-align:left}td.text{max-width:40em}
tr.fail td{background:#fdecec}tr.recommended td{background:#e8f6e8}tr.na td{color:#888}
.verdict{font-size:1.1em;font-weight:600}.scroll{overflow-x:auto}#metrics td{white-space:nowrap}
img{max-width:100%;display:block;margin:.5em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
"""
_PANEL_INCHES = 2.6  # each heatmap and its input
_DPI = 80
_AXIS_TITLES = {FAITHFULNESS: "faithfulness", ROBUSTNESS: "robustness"}
_ATTACKS = {"fgsm": "fgsm_accuracy", "pgd": "pgd_accuracy"}  # accuracy condition -> its metric's settings


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(fig: Any, alt: str) -> str:
    return f'<img src="{_png(fig)}" alt="{html.escape(alt)}">'


def _e(x: Any) -> str:
    return html.escape(str(x))


def _way(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def _sanity_cell(row: Mapping[str, Any], threshold: float) -> str:
    """``pass: 0.12 < 0.5``, ``fail: 0.93 ≥ 0.5``, ``not checked``, ``not applicable``."""
    if row["sanity"] == PASS:
        return f"pass: {row['sanity_value']:.2f} &lt; {threshold}"
    if row["sanity"] == FAIL:
        return f"fail: {row['sanity_value']:.2f} ≥ {threshold}"
    return _e(row["sanity"])


def _rank(rank: Optional[int]) -> str:
    return "–" if rank is None else str(rank)


def _row_class(row: Mapping[str, Any]) -> str:
    if row["recommended"]:
        return "recommended"
    if row["sanity"] == FAIL:
        return "fail"
    return "" if row["applicable"] else "na"


_SANITY_ORDER = {PASS: 0, NOT_CHECKED: 1, FAIL: 2, NOT_APPLICABLE: 3}


def _verdict_order(row: Mapping[str, Any]) -> tuple:
    """Recommended first, then passing, not checked, failing and not
    applicable methods, each by faithfulness then robustness rank."""
    def rank(r: Optional[int]) -> float:
        return float("inf") if r is None else r

    return (not row["recommended"], _SANITY_ORDER[row["sanity"]], rank(row["faithfulness_rank"]),
            rank(row["robustness_rank"]))


def _verdict(merged: Merged) -> str:
    v = merged.summary["verdict"]
    check = v["sanity_check"]
    rows = "".join(
        f"<tr class='{_row_class(r)}'><td>{_e(m)}</td><td>{_sanity_cell(r, check['threshold'])}</td>"
        f"<td>{_rank(r['faithfulness_rank'])}</td><td>{_rank(r['robustness_rank'])}</td>"
        f"<td>{'yes' if r['recommended'] else 'no'}</td><td class=text>{_e(r['reason'])}</td></tr>"
        for m, r in sorted(v["methods"].items(), key=lambda item: _verdict_order(item[1]))
    )
    ranking = merged.summary["ranking"]
    axes = "".join(
        f"<li>{_AXIS_TITLES[axis]}: "
        + (", ".join(f"{_e(n)} {_way(ranking[n]['higher_is_better'])}" for n in names) or "none computed")
        + "</li>"
        for axis, names in v["axes"].items()
    )
    unranked = (f"<li>shown, not ranked: {_e(', '.join(v['unranked_metrics']))}</li>"
                if v["unranked_metrics"] else "")
    return (
        f"<p class=verdict>{_e(v['recommendation'])}</p>"
        f"<table id=verdict><tr><th>method</th><th>sanity check (threshold {check['threshold']})</th>"
        f"<th>faithfulness rank</th><th>robustness rank</th><th>recommended</th><th class=text>why</th></tr>{rows}"
        "</table>"
        f"<p class=note>Sanity check (Adebayo et al. 2018, model-parameter randomization): "
        f"{_e(check['statistic'])}; passes when {_e(check['passes_when'])}. A method that fails it, or was not "
        f"checked, is never recommended. Ranks (1 = best): per metric by the median over examples, averaged "
        f"over the axis's metrics; the recommended method is the most faithful that passes, ties broken by "
        f"robustness.</p><ul class=note>{axes}{unranked}</ul>"
    )


def _metric_order(merged: Merged) -> List[str]:
    """The per-method metrics, grouped: sanity check, faithfulness, robustness, the rest."""
    v = merged.summary["verdict"]
    ordered = [m for m in merged.summary["ranking"] if m == SANITY_METRIC]
    ordered += v["axes"][FAITHFULNESS] + v["axes"][ROBUSTNESS]
    return ordered + [m for m in merged.summary["ranking"] if m not in ordered]


def _metrics_table(merged: Merged) -> str:
    s = merged.summary
    metrics = _metric_order(merged)
    if not metrics:
        return "<p class=note>No per-method metric was computed.</p>"
    # long names may wrap after an underscore, keeping the table within the page
    head = "".join(f"<th>{_e(n).replace('_', '_<wbr>')} {_way(s['ranking'][n]['higher_is_better'])}</th>"
                   for n in metrics)

    def cell(st: Mapping[str, Any]) -> str:
        if st["median"] is None:
            return "<td>–</td>"
        return f"<td>{st['median']:.3g} <br><small>[{st['p25']:.3g}, {st['p75']:.3g}]</small></td>"

    rows = "".join(f"<tr><td>{_e(m)}</td>{''.join(cell(per[n]) for n in metrics)}</tr>"
                   for m, per in s["methods"].items())
    sanity = (f" {SANITY_METRIC} here is the mean over the cascading steps; the sanity check reads the last step."
              if SANITY_METRIC in metrics else "")
    return (f"<div class=scroll><table id=metrics><tr><th>method</th>{head}</tr>{rows}</table></div>"
            f"<p class=note>Median over examples [25th, 75th percentile]; ↑ higher is better, ↓ lower is better."
            f"{sanity} Mean, 5th and 95th percentiles, and the count of missing values are in summary.json.</p>")


def _accuracy(merged: Merged) -> str:
    s = merged.summary
    settings = s["configuration"].get("metric_settings", {})
    rows = []
    for condition, value in s["accuracy"].items():
        attack = dict(settings.get(_ATTACKS.get(condition, ""), {}))
        eps = attack.pop("epsilon", None)
        rows.append(f"<tr><td>{_e(condition)}</td><td>{'–' if eps is None else _e(eps)}</td>"
                    f"<td class=text>{_e(_settings_text(attack))}</td><td>{value:.4f}</td></tr>")
    return ("<table id=accuracy><tr><th>condition</th><th>epsilon</th><th class=text>attack settings</th>"
            f"<th>accuracy</th></tr>{''.join(rows)}</table>")


def _distributions(merged: Merged, methods: List[str]) -> str:
    import matplotlib.pyplot as plt

    parts = []
    for metric in _metric_order(merged):
        values = [merged.table.loc[merged.table["method"] == m, metric].to_numpy(dtype=float) for m in methods]
        values = [v[np.isfinite(v)] for v in values]
        if not any(v.size for v in values):
            continue
        log = merged.summary["log_scale"][metric]
        fig, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * len(methods)))
        ax.boxplot([v if v.size else np.array([np.nan]) for v in values], orientation="horizontal", showfliers=True)
        ax.set_yticks(range(1, len(methods) + 1), methods)
        ax.invert_yaxis()  # the first method on top, as in the tables
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(f"{metric} ({'log scale, ' if log else ''}"
                      f"{'higher' if merged.summary['ranking'][metric]['higher_is_better'] else 'lower'} is better)")
        ax.set_title(f"{metric} per example")
        parts.append(_img(fig, f"distribution of {metric}"))
    return "".join(parts) or "<p class=note>No per-method metric was computed.</p>"


def _picture(x: np.ndarray) -> np.ndarray:
    """An input ``[C, H, W]`` (or ``[H, W]``) as an image ``[H, W]`` or ``[H, W, 3]`` in [0, 1]."""
    if x.ndim == 3 and x.shape[0] == 3:
        x = np.moveaxis(x, 0, -1)
    elif x.ndim == 3:
        x = x[0]
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _heatmap_metric(merged: Merged) -> Optional[str]:
    """The metric the examples are chosen by: the first faithfulness metric
    with a finite value, else the first metric with one."""
    candidates = merged.summary["verdict"]["axes"][FAITHFULNESS] + list(merged.summary["ranking"])
    for metric in candidates:
        if np.isfinite(merged.table[metric].to_numpy(dtype=float)).any():
            return metric
    return None


def _heatmaps(merged: Merged, methods: List[str], examples_of: ExamplesOf) -> str:
    import matplotlib.pyplot as plt

    metric = _heatmap_metric(merged)
    if metric is None or not methods:
        return "<p class=note>No per-method metric with a finite value to choose examples by.</p>"
    higher = merged.summary["ranking"][metric]["higher_is_better"]
    picks = {m: selected_examples(merged, m, metric, higher) for m in methods}
    first = next(m for m in methods if picks[m])
    first_x, _ = examples_of(first, [picks[first][0]["index"]])
    if first_x[0].ndim not in (2, 3):
        return "<p class=note>Heatmaps are drawn for image-shaped inputs ([C, H, W]) only.</p>"
    fig, axes = plt.subplots(len(methods), 6, figsize=(6 * _PANEL_INCHES, (_PANEL_INCHES + 0.5) * len(methods)),
                             squeeze=False)
    for row, m in enumerate(methods):
        chosen = picks[m]
        xs, attrs = examples_of(m, [p["index"] for p in chosen]) if chosen else (None, None)
        for col in range(3):
            ax_in, ax_map = axes[row, 2 * col], axes[row, 2 * col + 1]
            ax_in.axis("off")
            ax_map.axis("off")
            if col >= len(chosen):
                continue
            p = chosen[col]
            ax_in.imshow(_picture(xs[col]), cmap="gray")
            ax_in.set_title(f"{m}: {p['kind']}\n#{p['index']} y={p['label']} ŷ={p['pred']}", fontsize=9)
            a = attrs[col].sum(0) if attrs[col].ndim == 3 else attrs[col]
            lim = float(np.abs(a).max()) or 1.0
            ax_map.imshow(a, cmap="bwr", vmin=-lim, vmax=lim)
            ax_map.set_title(f"{metric} = {p['value']:.3g}", fontsize=9)
    fig.tight_layout()
    return (f"<p>Per method its best, typical (nearest the median) and worst example by {_e(metric)} "
            f"({'higher' if higher else 'lower'} is better), each input beside its attribution map; "
            f"red: positive attribution, blue: negative, each map scaled to its own largest |value|.</p>"
            + _img(fig, "example heatmaps"))


def _step_labels(merged: Merged, k: int) -> Optional[List[str]]:
    """The randomized layer of each of the ``k`` cascading steps, from the
    metric's settings; None when they are not there (or do not match ``k``)."""
    settings = merged.summary["configuration"].get("metric_settings", {}).get(SANITY_METRIC, {})
    steps = settings.get("steps")
    return [str(s) for s in steps] if isinstance(steps, list) and len(steps) == k else None


def _band(ax: Any, x: np.ndarray, q: Mapping[str, List[Optional[float]]], label: str) -> None:
    """The median curve with its interquartile band."""
    as_array = {k: np.array([np.nan if v is None else v for v in q[k]], dtype=float) for k in ("p25", "median", "p75")}
    line, = ax.plot(x, as_array["median"], marker=".", label=label)
    ax.fill_between(x, as_array["p25"], as_array["p75"], color=line.get_color(), alpha=0.12)


def _sanity_curves(merged: Merged) -> str:
    import matplotlib.pyplot as plt

    per = merged.summary["curve_quantiles"].get(SANITY_METRIC)
    if not per:
        return ("<p class=note>Not computed: the model-parameter randomization metric is not installed or not "
                "selected, so no method can be recommended.</p>")
    v = merged.summary["verdict"]
    k = len(next(iter(per.values()))["median"])
    labels = _step_labels(merged, k)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * k + 3) + 2.5, 4.5))
    x = np.arange(k)
    for method, q in per.items():
        _band(ax, x, q, f"{method} ({v['methods'][method]['sanity']})")
    threshold = v["sanity_check"]["threshold"]
    ax.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold} (last step)")
    if labels is not None:
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("randomized down to this layer (cascading from the top)")
    else:
        ax.set_xticks(x, [str(i + 1) for i in x])
        ax.set_xlabel("cascading step (layers randomized from the top)")
    ax.set_ylabel("Spearman of |attributions|\nto the original model's")
    ax.set_title("similarity after randomizing: median over examples, interquartile band")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, not over them
    fig.tight_layout()
    return _img(fig, "sanity-check curves")


def _deletion_curves(merged: Merged) -> str:
    import matplotlib.pyplot as plt

    names = [n for n in ("deletion", "insertion") if n in merged.summary["curve_quantiles"]]
    if not names:
        return "<p class=note>Not computed: the deletion/insertion metrics are not installed or not selected.</p>"
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names) + 2, 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        per = merged.summary["curve_quantiles"][name]
        for method, q in per.items():
            _band(ax, np.linspace(0.0, 1.0, len(q["median"])), q, method)
        ax.set_title(f"{name}: median over examples, interquartile band")
        ax.set_xlabel(f"fraction of features {'removed' if name == 'deletion' else 'inserted'}")
        ax.set_ylabel("probability of the explained class")
    axes[0, -1].legend(*axes[0, 0].get_legend_handles_labels(), fontsize=8, loc="upper left",
                       bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _img(fig, "deletion and insertion curves")


_OWN_SECTIONS = (SANITY_METRIC, "deletion", "insertion")  # the curves drawn in their own sections above


def _other_curves(merged: Merged) -> str:
    """A section of every other metric's curve (Quantus's metrics, on request),
    by step, labelled as its group declares; nothing when none was computed."""
    import matplotlib.pyplot as plt

    from .measures import available_groups

    names = [n for n in merged.summary["curve_quantiles"] if n not in _OWN_SECTIONS]
    if not names:
        return ""
    labels = {name: label for g in available_groups() for name, label in g.curves.items()}
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names) + 2, 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, q in merged.summary["curve_quantiles"][name].items():
            _band(ax, np.arange(1, len(q["median"]) + 1), q, method)
        ax.set_title(f"{name}: median, interquartile band", fontsize=9)
        ax.set_xlabel(labels.get(name, "step"), fontsize=8)
    axes[0, -1].legend(*axes[0, 0].get_legend_handles_labels(), fontsize=8, loc="upper left",
                       bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return f"<h2>Other curves</h2>{_img(fig, 'other metrics curves')}"


def _settings_text(settings: Mapping[str, Any]) -> str:
    def value(v: Any) -> str:
        return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return "; ".join(f"{k} = {value(v)}" for k, v in settings.items()) or "–"


def _settings(merged: Merged) -> str:
    cfg = merged.summary["configuration"]

    def table(title: str, items: Dict[str, Mapping[str, Any]], table_id: str) -> str:
        rows = "".join(f"<tr><td>{_e(name)}</td><td class=text>{_e(_settings_text(s))}</td></tr>"
                       for name, s in items.items())
        return f"<table id={table_id}><tr><th>{title}</th><th class=text>settings</th></tr>{rows}</table>"

    return (table("method", cfg.get("method_settings", {}), "method-settings")
            + table("metric", cfg.get("metric_settings", {}), "metric-settings"))


def render_report(merged: Merged, examples_of: ExamplesOf) -> str:
    """The page's HTML text."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    s = merged.summary
    methods = list(s["methods"])
    cfg = s["configuration"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fastattr audit</title><style>{_CSS}</style></head><body>
<h1>fastattr audit</h1>
<p>{s['n_examples']} examples of {_e(cfg['data']['description'])}; model: {_e(cfg['model']['kind'])};
methods: {_e(', '.join(methods))}; seed {s['seed']}; fastattr {_e(s['versions']['fastattr'])},
torch {_e(s['versions']['torch'])}.</p>
<h2>Verdict</h2>{_verdict(merged)}
<h2>Metrics</h2>{_metrics_table(merged)}
<h2>Model accuracy, clean and under attack</h2>{_accuracy(merged)}
<h2>Distributions</h2>{_distributions(merged, methods)}
<h2>Example heatmaps</h2>{_heatmaps(merged, methods, examples_of)}
<h2>Sanity checks (model-parameter randomization)</h2>{_sanity_curves(merged)}
<h2>Deletion and insertion</h2>{_deletion_curves(merged)}
{_other_curves(merged)}
<h2>Settings</h2>{_settings(merged)}
<p class=note>Configuration fingerprint {s['fingerprint'][:16]}…; full configuration in summary.json.</p>
</body></html>
"""
