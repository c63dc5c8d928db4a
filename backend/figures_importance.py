"""Figures of the head-importance views (pure: arrays in, ``go.Figure`` out; no Redis, no Dash).

Definitions: :mod:`backend.engine.importance_gates` (Michel, Levy, Neubig, NeurIPS 2019; docs/REFERENCES.md
section 2). Grid figures put layers down and heads across; ``clickData`` points carry ``x`` = head and
``y`` = layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from backend.figures import CELL_TEXT_MAX_CELLS, FONT, layer_head_axes

METRIC_LABELS = {"loss": "loss (nats)", "perplexity": "perplexity", "accuracy": "accuracy"}
ORDER_STYLE = {
    "importance": {"name": "least important first", "color": "#1f77b4"},
    "reverse": {"name": "most important first", "color": "#d62728"},
    "random": {"name": "random order (mean ± std, 3 seeds)", "color": "#7f7f7f"},
}


def _base(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=14)), height=height, font=FONT,
        margin=dict(l=70, r=20, t=44, b=48),
    )
    return fig


def importance_grid(values: np.ndarray, normalised: bool, title: str = "",
                    off: list[list[int]] | None = None) -> go.Figure:
    """``values [layer, head]``: layer down, head across, the score on hover (and in the cells when the
    grid has at most :data:`backend.figures.CELL_TEXT_MAX_CELLS` cells); heads in ``off`` are outlined."""
    v = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    layers, heads = v.shape
    finite = v[np.isfinite(v)]
    hi = float(finite.max()) if finite.size else 1.0
    label = "importance / layer l2 norm" if normalised else "importance E|dL/dξ|"
    show_text = layers * heads <= CELL_TEXT_MAX_CELLS
    fig = go.Figure(go.Heatmap(
        z=v, x=np.arange(heads), y=np.arange(layers), colorscale="Viridis", zmin=0.0, zmax=max(hi, 1e-12),
        colorbar=dict(title="score", exponentformat="e" if 0 < hi < 1e-3 else "none"),
        texttemplate="%{z:.2g}" if show_text else None, textfont=dict(size=9),
        hovertemplate=f"layer %{{y}} head %{{x}}<br>{label} %{{z:.4g}}<br>click: open this head<extra></extra>",
        xgap=1, ygap=1,
    ))
    for layer, head in off or []:
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line=dict(color="#d62728", width=2))
    layer_head_axes(fig, layers, heads)
    return _base(fig, title or label, height=max(300, min(900, 28 * layers + 130)))


def pruning_curves(curves: dict[str, dict[str, Any]], metric: str, title: str = "",
                   baseline: float | None = None) -> go.Figure:
    """``curves[order] = {"fractions": [K], metric: [K], metric + "_std": [K] (random)}``: the metric
    against the fraction of heads removed; random order as its mean with a ±1 std band."""
    fig = go.Figure()
    label = METRIC_LABELS.get(metric, metric)
    for order in ("importance", "reverse", "random"):
        c = curves.get(order)
        if not c or c.get(metric) is None:
            continue
        x = np.asarray(c["fractions"], dtype=np.float64)
        y = np.asarray(c[metric], dtype=np.float64)
        style = ORDER_STYLE[order]
        std = c.get(f"{metric}_std")
        if order == "random" and std is not None:
            s = np.asarray(std, dtype=np.float64)
            low = y - s if metric != "perplexity" else np.maximum(y - s, y / 10)  # log axis: keep the band > 0
            fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([y + s, low[::-1]]),
                                     mode="lines", fill="toself", fillcolor="rgba(127,127,127,0.2)", line=dict(width=0),
                                     hoverinfo="skip", showlegend=False, name="random ± std"))
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=style["name"], line=dict(color=style["color"],
                                                                          dash="dot" if order == "random" else None),
            customdata=np.asarray(std, dtype=np.float64) if std is not None else None,
            hovertemplate=(f"{style['name']}<br>%{{x:.0%}} heads removed<br>{label} %{{y:.4g}}"
                           + (" ± %{customdata:.3g}" if std is not None else "") + "<extra></extra>"),
        ))
    if baseline is not None and np.isfinite(baseline):
        fig.add_hline(y=baseline, line=dict(color="#2ca02c", width=1, dash="dash"),
                      annotation_text="all heads", annotation_position="top left")
    fig.update_xaxes(title="fraction of heads removed", tickformat=".0%", range=[-0.02, 1.02])
    if metric == "perplexity":  # exp(loss): the curves span orders of magnitude (10 unpruned, 1e4+ pruned)
        ys = np.concatenate([np.asarray(t.y, dtype=np.float64) for t in fig.data] or [np.ones(1)])
        ys = ys[np.isfinite(ys) & (ys > 0)]
        rng = [float(np.log10(ys.min())) - 0.1, float(np.log10(ys.max())) + 0.1] if ys.size else None
        fig.update_yaxes(title=f"{label} (log scale)", type="log", range=rng)  # fitted to the curves
    else:
        fig.update_yaxes(title=label, rangemode="tozero" if metric == "accuracy" else "normal")
    fig.update_layout(legend=dict(orientation="h", y=-0.22))
    return _base(fig, title or f"{label} while pruning heads", height=420)
