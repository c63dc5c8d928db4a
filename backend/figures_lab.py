"""Figures of the extreme-token page and the intervention lab (pure: arrays in, ``go.Figure`` out)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backend.figures import _base, _labels

HEAD_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")


def side_by_side(tokens_a: Sequence[str], a: np.ndarray, tokens_b: Sequence[str], b: np.ndarray,
                 diff: np.ndarray, titles: tuple[str, str, str], title: str, marks: Sequence[int] = ()) -> go.Figure:
    """Two ``[query, key]`` patterns and their difference (``b - a`` over the common tokens), in a row.
    ``marks``: key positions outlined in the first two panels (sinks, intervened keys)."""
    titles = (f"{titles[0]} (white 0, blue 1)", titles[1], titles[2])
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.07)
    for col, (toks, z) in enumerate(((tokens_a, a), (tokens_b, b)), start=1):
        lab = _labels(toks)
        fig.add_trace(go.Heatmap(z=z.astype(np.float32), x=lab, y=lab, colorscale="Blues", zmin=0, zmax=1,
                                 showscale=False,
                                 hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.4f}<extra></extra>"),
                      row=1, col=col)
        for k in marks:
            if k < len(toks):
                fig.add_shape(type="rect", x0=k - 0.5, x1=k + 0.5, y0=-0.5, y1=len(toks) - 0.5,
                              line=dict(color="#d62728", width=2), row=1, col=col)
    n = diff.shape[0]
    lim = float(max(np.abs(diff).max(), 1e-6))
    lab = _labels(tokens_b[:n])
    fig.add_trace(go.Heatmap(z=diff.astype(np.float32), x=lab, y=lab, colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                             colorbar=dict(title="Δ"),
                             hovertemplate="query %{y}<br>key %{x}<br>difference %{z:+.4f}<extra></extra>"),
                  row=1, col=3)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-60)
    fig = _base(fig, title, height=max(380, min(820, 14 * max(len(tokens_a), len(tokens_b)) + 180)))
    fig.update_layout(margin=dict(t=75))
    return fig


def value_scatter(received: np.ndarray, value_norm: np.ndarray, tokens: Sequence[str], title: str) -> go.Figure:
    """One point per (head, token) of a layer: value-vector norm across, attention received up; one colour per
    head. Sinks sit top-left: much attention, small values."""
    fig = go.Figure()
    for h in range(received.shape[0]):
        fig.add_trace(go.Scatter(
            x=value_norm[h], y=received[h], mode="markers", name=f"H{h}",
            marker=dict(color=HEAD_COLOURS[h % len(HEAD_COLOURS)], size=8, opacity=0.8),
            text=[f"{t}:{tok}" for t, tok in enumerate(tokens)],
            hovertemplate=f"head {h}<br>token %{{text}}<br>value norm %{{x:.3f}}<br>received %{{y:.4f}}<extra></extra>"))
    fig.update_xaxes(title="value-vector norm |v|")
    fig.update_yaxes(title="attention received (alpha)", rangemode="tozero")
    return _base(fig, title, height=420)


def received_map(received: np.ndarray, tokens: Sequence[str], sinks: Sequence[dict[str, Any]], eps: float,
                 title: str) -> go.Figure:
    """``[head, key]`` attention received in one layer; sinks above ``eps`` marked with a ring (red: later
    than the first token)."""
    lab = _labels(tokens)
    heads = [f"H{h}" for h in range(received.shape[0])]
    fig = go.Figure(go.Heatmap(z=received.astype(np.float32), x=lab, y=heads, colorscale="Blues", zmin=0, zmax=1,
                               colorbar=dict(title="alpha"),
                               hovertemplate="head %{y}<br>key %{x}<br>received %{z:.4f}<extra></extra>"))
    for first, colour, name in ((True, "#ff7f0e", "sink: first token"), (False, "#d62728", "sink: later token")):
        pts = [s for s in sinks if s["first"] == first]
        fig.add_trace(go.Scatter(
            x=[lab[s["position"]] for s in pts], y=[heads[s["head"]] for s in pts], mode="markers", name=name,
            marker=dict(symbol="circle-open", size=16, color=colour, line=dict(width=3)),
            hovertemplate=f"{name} (alpha > {eps:g})<br>%{{y}} key %{{x}}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-60)
    fig.update_layout(legend=dict(orientation="h", y=1.08, x=0.5))
    return _base(fig, title, height=max(260, 30 * received.shape[0] + 150))


def domain_grids(rates: np.ndarray, domains: Sequence[str], counts: Sequence[int], switch: np.ndarray,
                 switching: Sequence[dict[str, Any]], title: str) -> go.Figure:
    """One ``[layer, head]`` sink-rate grid per domain and the switch score (max - min over domains), switching
    heads outlined."""
    n = len(domains) + 1
    titles = [f"{d} ({c})" for d, c in zip(domains, counts)] + ["switch score"]
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=0.03)
    n_layers, n_heads = switch.shape
    x, y = [f"H{h}" for h in range(n_heads)], [f"L{l}" for l in range(n_layers)]
    for i, grid in enumerate(list(rates) + [switch]):
        last = i == n - 1
        fig.add_trace(go.Heatmap(z=grid.astype(np.float32), x=x, y=y, zmin=0, zmax=1,
                                 colorscale="Reds" if last else "Viridis", showscale=i in (0, n - 1),
                                 colorbar=dict(title="switch" if last else "rate", x=1.1 if last else 1.01, len=0.9),
                                 hovertemplate=f"{titles[i]}<br>layer %{{y}} head %{{x}}<br>%{{z:.3f}}<extra></extra>"),
                      row=1, col=i + 1)
    for s in switching:
        for col in range(1, n + 1):
            fig.add_shape(type="rect", x0=s["head"] - 0.5, x1=s["head"] + 0.5, y0=s["layer"] - 0.5,
                          y1=s["layer"] + 0.5, line=dict(color="#d62728", width=2), row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=True, row=1, col=1)
    fig = _base(fig, title, height=max(300, 16 * n_layers + 140))
    fig.update_layout(margin=dict(r=110))
    return fig


def patch_grid(values: np.ndarray, x: Sequence[str], title: str, x_title: str) -> go.Figure:
    """A ``[layer, position | head]`` grid of normalised patching scores (1: the patch restores the clean
    logit difference, 0: no effect)."""
    lim = float(max(np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0, 1.0))
    fig = go.Figure(go.Heatmap(z=values.astype(np.float32), x=list(x), y=[f"L{l}" for l in range(values.shape[0])],
                               colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim, colorbar=dict(title="restored"),
                               hovertemplate="%{y} %{x}<br>restored %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title=x_title, tickangle=-60)
    return _base(fig, title, height=max(300, 18 * values.shape[0] + 140))


def change_grid(change: np.ndarray, title: str) -> go.Figure:
    """``[layer, head]`` mean |after - before| of each head's pattern."""
    layers, heads = change.shape
    fig = go.Figure(go.Heatmap(z=change.astype(np.float32), x=[f"H{h}" for h in range(heads)],
                               y=[f"L{l}" for l in range(layers)], colorscale="Oranges", colorbar=dict(title="|Δ|"),
                               hovertemplate="layer %{y} head %{x}<br>mean |Δ attention| %{z:.5f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _base(fig, title, height=max(260, 18 * layers + 120))
