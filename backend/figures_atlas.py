"""Head-atlas figures: pure functions from role codes and score arrays to Plotly figures (no Redis, no Dash).

A head grid has layers down and heads across; each cell carries its dominant role as colour and glyph
(:mod:`backend.roles` code table) and every score in the hover.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from backend import roles as hr
from backend.figures import FONT, grid_axes, row_of_plots

CHANGE_NAMES = ("same role", "role appears", "role vanishes", "role changes")
CHANGE_COLOURS = ("#f3f4f6", "#2ca02c", "#d62728", "#ff7f0e")
LEGEND_GREY = "#9ca3af"


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)), height=height, font=FONT,
                      margin=dict(l=60, r=20, t=60, b=40))
    return fig


def _discrete_scale(colours: Sequence[str]) -> list[list[Any]]:
    """A stepwise colorscale for integer codes ``0 .. n-1`` drawn with ``zmin=-0.5, zmax=n-0.5``."""
    n = len(colours)
    scale = []
    for i, c in enumerate(colours):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale


def _fmt(v: Any, key: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{int(v):+d}" if key == "positional_peak" else f"{float(v):.3f}"


def _hover(dominant: np.ndarray, scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """``customdata [L, H, 1 + n_scores]`` of preformatted strings and the matching hovertemplate."""
    keys = [k for k in hr.SCORE_KEYS if k in scores]
    L, H = dominant.shape
    data = np.empty((L, H, 1 + len(keys)), dtype=object)
    for l in range(L):
        for h in range(H):
            data[l, h, 0] = hr.ROLE_LABELS[hr.ROLES[int(dominant[l, h])]]
            for i, k in enumerate(keys):
                data[l, h, 1 + i] = _fmt(float(scores[k][l, h]), k)
    lines = ["<b>layer %{y} head %{x}</b>", "role: %{customdata[0]}"]
    lines += [f"{hr.SCORE_BY_KEY[k].label}: %{{customdata[{1 + i}]}}" for i, k in enumerate(keys)]
    return data, "<br>".join(lines) + "<extra></extra>"


def _grid_trace(dominant: np.ndarray, scores: Mapping[str, np.ndarray], colour_by: str = "role",
                showscale: bool = True, **axes: str) -> go.Heatmap:
    dominant = np.asarray(dominant, dtype=np.int32)
    L, H = dominant.shape
    custom, hover = _hover(dominant, scores)
    glyphs = np.vectorize(lambda c: hr.ROLE_GLYPHS[hr.ROLES[int(c)]])(dominant)
    common = dict(
        x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)], customdata=custom, hovertemplate=hover,
        text=glyphs, texttemplate="%{text}" if H <= 40 and L <= 48 else "", textfont=dict(size=13),
        xgap=1, ygap=1, showscale=showscale, **axes,
    )
    if colour_by == "role" or colour_by not in scores:
        n = len(hr.ROLES)
        return go.Heatmap(
            z=dominant, zmin=-0.5, zmax=n - 0.5, colorscale=_discrete_scale([hr.ROLE_COLOURS[r] for r in hr.ROLES]),
            colorbar=dict(title="role", tickvals=list(range(n)),
                          ticktext=[f"{hr.ROLE_GLYPHS[r]} {hr.ROLE_LABELS[r]}" for r in hr.ROLES]),
            **common,
        )
    z = np.asarray(scores[colour_by], dtype=np.float64)
    kw = dict(colorscale="RdBu", zmid=0) if colour_by == "positional_peak" else dict(colorscale="Viridis")
    return go.Heatmap(z=np.where(np.isfinite(z), z, np.nan).astype(np.float32),
                      colorbar=dict(title=hr.SCORE_BY_KEY[colour_by].label), **kw, **common)


def role_grid(dominant: np.ndarray, scores: Mapping[str, np.ndarray], title: str = "",
              colour_by: str = "role") -> go.Figure:
    """Layer x head grid: colour = dominant role (or the score ``colour_by``), glyph = dominant role,
    hover = role and every score. Click a cell to pick that head."""
    L = np.asarray(dominant).shape[0]
    fig = go.Figure(_grid_trace(dominant, scores, colour_by))
    fig.update_yaxes(autorange="reversed", title="layer")
    fig.update_xaxes(title="head", side="top")
    grid_axes(fig)
    return _layout(fig, title, height=int(min(1400, max(320, 30 * L + 140))))


def compare_grids(dom_a: np.ndarray, dom_b: np.ndarray, scores_a: Mapping[str, np.ndarray],
                  scores_b: Mapping[str, np.ndarray], label_a: str = "A", label_b: str = "B") -> go.Figure:
    """Runs A and B side by side (same role colours); with equal shapes a third panel marks each head
    whose dominant role appears, vanishes or changes from A to B."""
    dom_a, dom_b = np.asarray(dom_a), np.asarray(dom_b)
    matched = dom_a.shape == dom_b.shape
    titles = [label_a, label_b] + (["change A → B"] if matched else [])
    fig, refs = row_of_plots(titles, 0.06)
    traces = [_grid_trace(dom_a, scores_a, showscale=False, **refs[0]),
              _grid_trace(dom_b, scores_b, showscale=True, **refs[1])]
    if matched:
        codes = hr.change_codes(dom_a, dom_b)
        L, H = codes.shape
        text = np.vectorize(lambda a, b: f"{hr.ROLE_LABELS[hr.ROLES[a]]} → {hr.ROLE_LABELS[hr.ROLES[b]]}")(dom_a, dom_b)
        traces.append(go.Heatmap(
            z=codes, zmin=-0.5, zmax=3.5, colorscale=_discrete_scale(CHANGE_COLOURS), showscale=False,
            x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)], customdata=text, xgap=1, ygap=1,
            hovertemplate="layer %{y} head %{x}<br>%{customdata}<extra></extra>", **refs[2],
        ))
    fig.add_traces(traces)
    fig.update_yaxes(autorange="reversed")
    grid_axes(fig)
    L = max(dom_a.shape[0], dom_b.shape[0])
    return _layout(fig, "", height=int(min(1400, max(340, 30 * L + 160))))


def role_depth_bars(comparison: Mapping[str, Any], label_a: str = "A", label_b: str = "B") -> go.Figure:
    """Per role, the share of all heads with that dominant role in each quarter of relative depth, A vs B
    (the comparison of :func:`backend.roles.compare_roles`; works for models of different shapes)."""
    roles = comparison["roles"]
    na = int(np.prod(comparison["shape_a"])) or 1
    nb = int(np.prod(comparison["shape_b"])) or 1
    if not roles:
        return _layout(go.Figure(), "no head has a role in either run", 200)
    fig, refs = row_of_plots([f"{hr.ROLE_GLYPHS[r['role']]} {hr.ROLE_LABELS[r['role']]} ({r['status']})"
                              for r in roles], 0.2 / len(roles), shared_y=True, title_size=11)
    # the legend tells the runs apart by fill (solid A, hatched B) in a neutral grey: the bars' colours are the roles'
    traces = [go.Bar(x=[None], y=[None], name=label, legendgroup=label, offsetgroup=label, hoverinfo="skip", **refs[0],
                     marker=dict(color=LEGEND_GREY, pattern_shape=pattern, line=dict(color="#333", width=0.5)))
              for label, pattern in ((label_a, ""), (label_b, "/"))]
    for i, r in enumerate(roles):
        colour = hr.ROLE_COLOURS[r["role"]]
        for label, counts, n, pattern in ((label_a, r["by_depth_a"], na, ""), (label_b, r["by_depth_b"], nb, "/")):
            traces.append(go.Bar(
                x=list(hr.DEPTH_BINS), y=[c / n for c in counts], name=label, legendgroup=label, offsetgroup=label,
                showlegend=False,
                marker=dict(color=colour, pattern_shape=pattern, line=dict(color="#333", width=0.5)),
                customdata=counts, hovertemplate=f"{label}<br>%{{x}}: %{{customdata}} heads (%{{y:.1%}})<extra></extra>",
                **refs[i],
            ))
    fig.add_traces(traces)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(hr.DEPTH_BINS))
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.layout.yaxis.title = "share of heads"
    fig.update_layout(barmode="group")
    return _layout(fig, "roles by relative depth (quarters of the layer stack)", 320)
