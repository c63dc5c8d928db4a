"""Pure functions from arrays to Plotly figures (no Redis, no Dash): pages only wire them."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

FONT = dict(family="Inter, system-ui, sans-serif", size=12)
TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
"""Every figure's template: plotly_white, with tick labels allowed past the graph's edge and no axis-title standoff.
Otherwise plotly.js measures every tick label of every axis as it draws: to hide those past the edge
(``ticklabeloverflow="hide past div"``, its default on linear axes and colour bars: ~50 ms of a page load with token
axes on 2 cores), and to place a title ``standoff`` pixels past the labels' box (the titles are placed past the labels
without it too; axes without a title then measure nothing, see :func:`grid_axes`).

It is plotly's default template in this process (:data:`TEMPLATE_NAME`): figures get it when created, without
passing it. Passing a template object to ``update_layout`` validates a deep copy of it, ~11 ms a figure."""
TEMPLATE.layout.xaxis.ticklabeloverflow = "allow"
TEMPLATE.layout.yaxis.ticklabeloverflow = "allow"
TEMPLATE.layout.xaxis.title.standoff = None
TEMPLATE.layout.yaxis.title.standoff = None
for _trace in TEMPLATE.data.heatmap:  # heatmaps' colour bars too
    _trace.colorbar.ticklabeloverflow = "allow"
TEMPLATE_NAME = "attention_atlas"
pio.templates[TEMPLATE_NAME] = TEMPLATE
pio.templates.default = TEMPLATE_NAME


def grid_axes(fig: go.Figure) -> go.Figure:
    """Axes whose tick labels fit the fixed margins (``L29``, ``H11``): no automargin, so plotly.js does not measure
    every tick label to grow the margins (with the template's other settings, ~40 ms of the atlas comparison's load
    on 2 cores)."""
    fig.update_xaxes(automargin=False)
    fig.update_yaxes(automargin=False)
    return fig


def layer_head_axes(fig: go.Figure, layers: int, heads: int) -> go.Figure:
    """The axes of a ``[layer, head]`` heatmap: heads across, layers down (layer 0 at the top), every index ticked up
    to 32 heads and 48 layers, and :func:`grid_axes`."""
    fig.update_xaxes(title="head", tickmode="linear", dtick=1 if heads <= 32 else max(1, heads // 16))
    fig.update_yaxes(title="layer", autorange="reversed", tickmode="linear", dtick=1 if layers <= 48 else 4)
    return grid_axes(fig)


def row_of_plots(titles: Sequence[str], spacing: float, shared_y: bool = False,
                 title_size: int = 16) -> tuple[go.Figure, list[dict[str, str]]]:
    """One row of ``len(titles)`` plots, titled, as ``make_subplots(rows=1, cols=n, subplot_titles=titles,
    horizontal_spacing=spacing, shared_yaxes=shared_y)`` lays them out, and each plot's axis references (a trace's
    ``xaxis``/``yaxis``). Built as one layout: make_subplots and ``add_trace(row=, col=)`` took ~90 ms of the server's
    time for a row of seven (plotly.py validates every step)."""
    n = len(titles)
    width = (1.0 - spacing * (n - 1)) / n
    layout: dict = {"annotations": []}
    refs = []
    for i, text in enumerate(titles):
        k = "" if i == 0 else str(i + 1)
        x0 = i * (width + spacing)
        layout[f"xaxis{k}"] = dict(domain=[x0, x0 + width], anchor=f"y{k}")
        y = dict(domain=[0.0, 1.0], anchor=f"x{k}")
        if shared_y and i:
            y.update(matches="y", showticklabels=False)
        layout[f"yaxis{k}"] = y
        layout["annotations"].append(dict(text=text, x=x0 + width / 2, y=1.0, xref="paper", yref="paper",
                                          xanchor="center", yanchor="bottom", showarrow=False,
                                          font=dict(size=title_size)))
        refs.append({"xaxis": f"x{k}", "yaxis": f"y{k}"})
    return go.Figure(layout=layout), refs


CELL_TEXT_MAX_CELLS = 150
"""Layer x head grids print each cell's number up to this many cells (MiniLM's 72 heads); larger grids (SmolLM2's
270) give it on hover: plotly.js measures every cell's text as it draws, ~0.1 s of a page load on 2 cores."""


def _base(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=14)), height=height, font=FONT,
        margin=dict(l=60, r=20, t=40, b=40),
    )
    return fig


def _labels(tokens: Sequence[str]) -> list[str]:
    """Unique axis labels (Plotly merges equal category labels): ``3:the``."""
    return [f"{i}:{t}" for i, t in enumerate(tokens)]


WINDOW = 48
"""Above this many tokens the pattern heatmap shows a window of this many queries around the chosen token."""


def window_bounds(n: int, centre: int, window: int = WINDOW) -> tuple[int, int]:
    """``[lo, hi)`` of ``window`` consecutive positions of ``n`` around ``centre`` (clamped to the prompt)."""
    if n <= window:
        return 0, n
    lo = min(max(0, centre - window // 2), n - window)
    return lo, lo + window


def pattern_heatmap(tokens: Sequence[str], pattern: np.ndarray, title: str = "", query: int | None = None,
                    window: int | None = None) -> go.Figure:
    """``pattern [query_pos, key_pos]`` as a heatmap, queries down, keys across; hover shows both tokens.

    With ``window`` and more tokens than that, only the ``window`` query rows around ``query`` are drawn (every key
    is there, the key axis opens on the same window and pans): a 512-token prompt stays a readable, bounded
    figure instead of 512 rows of one pixel each."""
    labels = _labels(tokens)
    n = len(tokens)
    lo, hi = (0, n) if window is None or query is None else window_bounds(n, query, window)
    rows = pattern[lo:hi].astype(np.float32)
    fig = go.Figure(
        go.Heatmap(
            z=rows, x=labels, y=labels[lo:hi], colorscale="Blues", zmin=0, zmax=float(max(rows.max(), 1e-9)),
            hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.4f}<extra></extra>",
            colorbar=dict(title="attn"),
        )
    )
    fig.update_yaxes(autorange="reversed", title="query" if (lo, hi) == (0, n) else f"query ({lo}–{hi - 1} of {n})")
    fig.update_xaxes(title="key", tickangle=-60)
    if (lo, hi) != (0, n):
        fig.update_xaxes(range=[lo - 0.5, hi - 0.5], title=f"key (drag to pan over all {n}; double-click: all)")
        fig.update_layout(dragmode="pan")
        fig.update_yaxes(fixedrange=True)
    if query is not None:
        fig.add_shape(type="rect", xref="paper", x0=0, x1=1, yref="y", y0=query - lo - 0.5, y1=query - lo + 0.5,
                      line=dict(color="#d62728", width=2))
    return _base(fig, title, height=max(320, min(900, 18 * (hi - lo) + 120)))


def attention_row(tokens: Sequence[str], weights: np.ndarray, query: int, title: str = "") -> go.Figure:
    """Where token ``query`` attends: one bar per key position."""
    labels = _labels(tokens)
    fig = go.Figure(
        go.Bar(x=labels, y=weights.astype(np.float32), marker_color="#1f77b4",
               hovertemplate="key %{x}<br>attention %{y:.4f}<extra></extra>")
    )
    fig.update_yaxes(title="attention", rangemode="tozero")
    fig.update_xaxes(tickangle=-60)
    return _base(fig, title or f"attention from {labels[query]}", height=300)


def attention_lines(tokens: Sequence[str], pattern: np.ndarray, query: int | None = None,
                    title: str = "", min_weight: float = 0.02, max_lines: int | None = None) -> go.Figure:
    """bertviz-style lines: queries on the left, keys on the right, line opacity = attention.

    With a ``query`` and more than ``max_lines`` tokens, only that token's ``max_lines`` strongest edges are drawn,
    its keys listed in text order (``12:the``): a 512-token prompt stays a readable figure, not a 11,000 px one."""
    n = len(tokens)
    fig = go.Figure()
    if query is not None and max_lines is not None and n > max_lines:
        row = np.asarray(pattern[query], dtype=np.float64)
        keys = sorted(int(k) for k in np.argsort(-row, kind="stable")[:max_lines])
        m = len(keys)
        for y, k in enumerate(keys):
            w = float(row[k])
            fig.add_trace(go.Scatter(
                x=[0, 1], y=[(m - 1) / 2, y], mode="lines",
                line=dict(color=f"rgba(31,119,180,{min(1.0, 0.15 + w)})", width=1 + 6 * w), hoverinfo="text",
                text=f"{tokens[query]} → {tokens[k]}: {w:.3f}", showlegend=False,
            ))
        fig.add_trace(go.Scatter(x=[-0.02], y=[(m - 1) / 2], mode="text", text=[f"{query}:{tokens[query]}"],
                                 textposition="middle left", showlegend=False, hovertemplate="query %{text}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[1.02] * m, y=list(range(m)), mode="text", text=[f"{k}:{tokens[k]}" for k in keys],
                                 textposition="middle right", showlegend=False, hovertemplate="key %{text}<extra></extra>"))
        fig.update_xaxes(visible=False, range=[-0.6, 1.6])
        fig.update_yaxes(visible=False, autorange="reversed")
        return _base(fig, title, height=max(300, 22 * m + 80))
    rows = [query] if query is not None else list(range(n))
    for q in rows:
        for k in range(n):
            w = float(pattern[q, k])
            if w < min_weight:
                continue
            fig.add_trace(go.Scatter(
                x=[0, 1], y=[q, k], mode="lines", line=dict(color=f"rgba(31,119,180,{min(1.0, 0.15 + w)})", width=1 + 6 * w),
                hoverinfo="text", text=f"{tokens[q]} → {tokens[k]}: {w:.3f}", showlegend=False,
            ))
    for side, x in (("query", -0.02), ("key", 1.02)):
        fig.add_trace(go.Scatter(
            x=[x] * n, y=list(range(n)), mode="text", text=list(tokens),
            textposition="middle left" if side == "query" else "middle right", showlegend=False,
            hovertemplate=f"{side} %{{text}}<extra></extra>",
        ))
    fig.update_xaxes(visible=False, range=[-0.6, 1.6])
    fig.update_yaxes(visible=False, autorange="reversed")
    return _base(fig, title, height=max(300, 22 * n + 80))


def layer_head_heatmap(values: np.ndarray, title: str, colorbar: str, hover_name: str = "value") -> go.Figure:
    """A ``[layer, head]`` grid of one metric; click a cell to open that head."""
    layers, heads = values.shape
    fig = go.Figure(go.Heatmap(
        z=values.astype(np.float32), x=[f"H{h}" for h in range(heads)], y=[f"L{l}" for l in range(layers)],
        colorscale="Viridis", colorbar=dict(title=colorbar),
        hovertemplate=f"layer %{{y}} head %{{x}}<br>{hover_name} %{{z:.4f}}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed")
    return _base(fig, title, height=max(280, 34 * layers + 100))
