"""``report.html``: one self-contained page (every image an embedded PNG data
URI, no scripts, no external resources) that ranks the methods per metric and
shows the metrics' distributions, example heatmaps (best, typical, worst per
method), sanity-check curves and deletion/insertion curves."""
from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable, List, Sequence

import numpy as np

from .results import Merged, selected_examples

# (method, data-set indices [k]) -> (inputs [k, *F], attributions [k, *F])
ExamplesOf = Callable[[str, Sequence[int]], "tuple[np.ndarray, np.ndarray]"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#666}
img{max-width:100%;display:block;margin:.5em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(fig: Any, alt: str) -> str:
    return f'<img src="{_png(fig)}" alt="{html.escape(alt)}">'


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4g}"


def _ranking(merged: Merged) -> str:
    parts = []
    for metric, r in merged.summary["ranking"].items():
        way = "higher is better" if r["higher_is_better"] else "lower is better"
        rows = "".join(
            f"<tr><td>{i + 1}. {html.escape(m)}</td>"
            + "".join(f"<td>{_fmt(merged.summary['methods'][m][metric][k])}</td>" for k in ("mean", "median", "p5", "p95"))
            + "</tr>"
            for i, m in enumerate(r["best_first"])
        )
        parts.append(f"<h3>{html.escape(metric)} <span class=note>({way})</span></h3><table>"
                     f"<tr><th>method</th><th>mean</th><th>median</th><th>p5</th><th>p95</th></tr>{rows}</table>")
    return "".join(parts) or "<p class=note>No per-method metric was computed.</p>"


def _distributions(merged: Merged, methods: List[str]) -> str:
    import matplotlib.pyplot as plt

    parts = []
    for metric in merged.summary["ranking"]:
        values = [merged.table.loc[merged.table["method"] == m, metric].to_numpy() for m in methods]
        values = [v[np.isfinite(v)] for v in values]
        if not any(v.size for v in values):
            continue
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(methods)))
        ax.boxplot([v if v.size else np.array([np.nan]) for v in values], orientation="horizontal", showfliers=True)
        ax.set_yticks(range(1, len(methods) + 1), methods)
        ax.set_xlabel(metric)
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


def _heatmaps(merged: Merged, methods: List[str], examples_of: ExamplesOf) -> str:
    import matplotlib.pyplot as plt

    ranking = merged.summary["ranking"]
    if not ranking:
        return "<p class=note>No per-method metric to choose examples by.</p>"
    metric = next(iter(ranking))
    higher = ranking[metric]["higher_is_better"]
    picks = {m: selected_examples(merged, m, metric, higher) for m in methods}
    if not any(picks.values()) or merged.table.empty:
        return "<p class=note>No example has a finite value.</p>"
    first_x, _ = examples_of(methods[0], [picks[methods[0]][0]["index"]])
    if first_x[0].ndim not in (2, 3):
        return "<p class=note>Heatmaps are drawn for image-shaped inputs ([C, H, W]) only.</p>"
    fig, axes = plt.subplots(len(methods), 6, figsize=(11, 2 * len(methods)), squeeze=False)
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
            ax_in.set_title(f"{m}\n{p['kind']}: #{p['index']} y={p['label']} ŷ={p['pred']}", fontsize=7)
            a = attrs[col].sum(0) if attrs[col].ndim == 3 else attrs[col]
            lim = float(np.abs(a).max()) or 1.0
            ax_map.imshow(a, cmap="bwr", vmin=-lim, vmax=lim)
            ax_map.set_title(f"{metric} = {p['value']:.3g}", fontsize=7)
    fig.tight_layout()
    return (f"<p>Chosen by {html.escape(metric)} ({'higher' if higher else 'lower'} is better); "
            f"red: positive attribution, blue: negative.</p>" + _img(fig, "example heatmaps"))


def _curves(merged: Merged, names: Sequence[str], title: str, missing: str) -> str:
    import matplotlib.pyplot as plt

    chosen = [n for n in merged.curves if any(n.startswith(p) for p in names)]
    if not chosen:
        return f"<p class=note>{html.escape(missing)}</p>"
    fig, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 3.5), squeeze=False)
    for ax, name in zip(axes[0], chosen):
        for method, mean in merged.summary["mean_curves"][name].items():
            ax.plot(np.arange(len(mean)), mean, marker=".", label=method)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _img(fig, title)


def render_report(merged: Merged, examples_of: ExamplesOf) -> str:
    """The page's HTML text."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    s = merged.summary
    methods = list(s["methods"])
    cfg = s["configuration"]
    acc = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in s["accuracy"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fastattr audit</title><style>{_CSS}</style></head><body>
<h1>fastattr audit</h1>
<p>{s['n_examples']} examples of {html.escape(cfg['data']['description'])}; model: {html.escape(cfg['model']['kind'])};
methods: {html.escape(', '.join(methods))}; seed {s['seed']}; fastattr {html.escape(s['versions']['fastattr'])},
torch {html.escape(s['versions']['torch'])}.</p>
<h2>Model accuracy</h2><table><tr><th>condition</th><th>accuracy</th></tr>{acc}</table>
<h2>Methods ranked per metric</h2>{_ranking(merged)}
<h2>Distributions</h2>{_distributions(merged, methods)}
<h2>Example heatmaps</h2>{_heatmaps(merged, methods, examples_of)}
<h2>Sanity checks (model-parameter randomization)</h2>
{_curves(merged, ('randomization',), 'sanity-check curves', 'Not computed: the model-parameter randomization metric is not installed or not selected.')}
<h2>Deletion and insertion</h2>
{_curves(merged, ('deletion', 'insertion'), 'deletion and insertion curves', 'Not computed: the deletion/insertion metrics are not installed or not selected.')}
<p class=note>Configuration fingerprint {s['fingerprint'][:16]}…; full configuration in summary.json.</p>
</body></html>
"""
