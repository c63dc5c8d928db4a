"""Figures of the attention-sink views (pure: arrays in, ``go.Figure`` out; no Redis, no Dash).

Long prompts: token axes are numeric positions (hover shows ``position:token``), never one tick per
token, and every ``z`` goes to Plotly as a float32 NumPy array (sent as a typed array, not a JSON list).
Definitions and sources of the numbers: :mod:`backend.metrics` (docs/REFERENCES.md section 3).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from backend.figures import CELL_TEXT_MAX_CELLS, FONT, layer_head_axes
from backend.vocab import METRIC_BY_NAME, SINK_EPS

METRICS: dict[str, dict[str, str]] = {
    m.name: {"label": m.label, "unit": m.unit, "help": m.help} for m in METRIC_BY_NAME.values()
}
"""Label, unit and help text of each per-head metric, from :mod:`backend.vocab`."""


def _base(fig: go.Figure, title: str, height: int, margin_l: int = 70) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=14)), height=height, font=FONT,
        margin=dict(l=margin_l, r=20, t=44, b=44),
    )
    return fig


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def token_labels(tokens: Sequence[str]) -> list[str]:
    """``position:token`` (unique, so Plotly never merges two positions)."""
    return [f"{i}:{t}" for i, t in enumerate(tokens)]


def _token_axis(fig: go.Figure, n: int, max_ticks: int = 60) -> None:
    """Category axis of ``position:token`` labels; Plotly thins the tick labels to ``max_ticks``."""
    fig.update_xaxes(type="category", tickangle=-60, nticks=min(n, max_ticks), title="key position:token")


def cell_outline_path(mask: np.ndarray) -> str:
    """An SVG path (data coordinates, cells centred on integers) outlining every ``True`` cell of ``mask
    [layer, head]``: one closed rectangle per cell, ``""`` when none."""
    ly, hx = np.nonzero(np.asarray(mask, dtype=bool))
    return "".join(f"M{h - 0.5:g},{l - 0.5:g}H{h + 0.5:g}V{l + 0.5:g}H{h - 0.5:g}Z"
                   for l, h in zip(ly.tolist(), hx.tolist()))


def head_grid(values: np.ndarray, metric: str, title: str = "", eps: float | None = SINK_EPS,
              zmax: float | None = None) -> go.Figure:
    """``values [layer, head]`` of ``metric``: layer down, head across, numbers on hover; for the sink
    metrics the cells above ``eps`` are outlined. ``clickData`` points carry ``x`` = head, ``y`` = layer."""
    v = _f32(values)
    layers, heads = v.shape
    meta = METRICS.get(metric, {"label": metric, "unit": metric})
    sink = metric in ("sink_first", "sink_special")
    finite = v[np.isfinite(v)]
    hi = zmax if zmax is not None else (1.0 if sink else float(finite.max()) if finite.size else 1.0)
    show_text = layers * heads <= CELL_TEXT_MAX_CELLS
    outlined = layers * heads <= 400
    fig = go.Figure(go.Heatmap(
        z=v, x=np.arange(heads), y=np.arange(layers), colorscale="Blues" if sink else "Viridis",
        zmin=0.0, zmax=max(hi, 1e-9), colorbar=dict(title=meta["unit"]),
        texttemplate="%{z:.2f}" if show_text else None, textfont=dict(size=9),
        hovertemplate=f"layer %{{y}} head %{{x}}<br>{meta['label']} %{{z:.4f}}<br>click: open this head<extra></extra>",
        xgap=1, ygap=1,
    ))
    if sink and eps is not None and outlined:  # outlines only on grids small enough to read
        outline = cell_outline_path(v > eps)
        if outline:  # one path shape for every outlined cell (a shape per cell took 4 s on a 30 x 9 grid)
            fig.add_shape(type="path", path=outline, line=dict(color="#d62728", width=2), layer="above")
    layer_head_axes(fig, layers, heads)
    return _base(fig, title or meta["label"], height=max(300, min(900, 28 * layers + 120)))


def diff_grid(a: np.ndarray, b: np.ndarray, metric: str, title: str = "") -> go.Figure:
    """``b - a`` of two ``[layer, head]`` grids of the same shape, diverging colours centred on 0."""
    a, b = _f32(a), _f32(b)
    if a.shape != b.shape:
        raise ValueError(f"grids differ in shape: {a.shape} vs {b.shape}")
    d = b - a
    finite = np.abs(d[np.isfinite(d)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    meta = METRICS.get(metric, {"label": metric, "unit": metric})
    fig = go.Figure(go.Heatmap(
        z=d, x=np.arange(a.shape[1]), y=np.arange(a.shape[0]), colorscale="RdBu_r", zmid=0.0,
        zmin=-lim, zmax=lim, colorbar=dict(title="B - A"), xgap=1, ygap=1,
        hovertemplate=f"layer %{{y}} head %{{x}}<br>B - A {meta['label']} %{{z:+.4f}}<extra></extra>",
    ))
    layer_head_axes(fig, *a.shape)
    return _base(fig, title or f"difference B - A: {meta['label']}", height=max(300, min(900, 28 * a.shape[0] + 120)))


def received_heatmap(tokens: Sequence[str], received: np.ndarray, rows: Sequence[str], title: str = "") -> go.Figure:
    """``received [row, key_pos]``: attention each position receives (Gu et al. alpha), rows = heads of
    one layer or all layers x heads (``rows`` their labels)."""
    r = _f32(received)
    n_rows, n = r.shape
    if len(tokens) != n or len(rows) != n_rows:
        raise ValueError(f"received {r.shape} does not match {len(rows)} rows x {len(tokens)} tokens")
    fig = go.Figure(go.Heatmap(
        z=r, x=token_labels(tokens), y=list(rows), colorscale="Blues", zmin=0.0,
        zmax=float(max(np.nanmax(r) if r.size else 0.0, 1e-9)), colorbar=dict(title="alpha"),
        hovertemplate="key %{x}<br>%{y}<br>alpha (mean attention received) %{z:.4f}<extra></extra>",
    ))
    _token_axis(fig, n)
    fig.update_yaxes(type="category", autorange="reversed", nticks=min(n_rows, 48))
    return _base(fig, title, height=max(300, min(1100, 14 * n_rows + 160)))


def massive_heatmap(tokens: Sequence[str], absmax: np.ndarray, dims: np.ndarray,
                    layer_ratio: np.ndarray | None = None, title: str = "") -> go.Figure:
    """Massive activations (Sun et al., 2024): ``absmax [layer, T]`` largest |hidden| per token after each
    block, ``dims [layer, T]`` its feature; ``layer_ratio [layer]`` the layer's max / median |h| (shown in
    the row labels and on hover)."""
    z = _f32(absmax)
    n_layers, n = z.shape
    ratio = np.asarray(layer_ratio, dtype=np.float64) if layer_ratio is not None else np.full(n_layers, np.nan)
    rows = [f"L{l} ({ratio[l]:,.0f}x median)" if np.isfinite(ratio[l]) else f"L{l}" for l in range(n_layers)]
    fig = go.Figure(go.Heatmap(
        z=z, x=token_labels(tokens), y=rows, colorscale="Magma", zmin=0.0, colorbar=dict(title="max |h|"),
        customdata=np.ascontiguousarray(np.asarray(dims), dtype=np.int32),
        hovertemplate=("token %{x}<br>layer %{y}<br>max |activation| %{z:.2f}"
                       "<br>at feature dim %{customdata}<extra></extra>"),
    ))
    _token_axis(fig, n)
    fig.update_xaxes(title="token position:token")
    fig.update_yaxes(type="category", autorange="reversed")
    return _base(fig, title, height=max(300, min(900, 24 * n_layers + 150)), margin_l=110)


def running_perplexity(nll: np.ndarray) -> np.ndarray:
    """``exp(cumulative mean NLL)`` after each predicted token."""
    nll = np.asarray(nll, dtype=np.float64)
    return np.exp(np.cumsum(nll) / np.arange(1, len(nll) + 1))


def first_evicted(window_size: int, sinks: int) -> int:
    """Index into the ``[T-1]`` NLL arrays of the first prediction made after the window + sinks cache evicted
    a token: query ``t = W + k`` (the window-only cache evicts from ``t = W``, the sink cache from ``t = W + k``).
    Predictions before it see every earlier token in all three settings, so they are not scored: StreamingLLM's
    perplexity is over the tokens after the cache filled (as ``scripts/measure_smollm2.py``)."""
    return int(window_size) + int(sinks)


def streaming_perplexity(full: np.ndarray, window: np.ndarray, sink: np.ndarray, window_size: int,
                         sinks: int) -> dict[str, float | int]:
    """Perplexity ``exp(mean NLL)`` of each setting over the same tokens, those predicted after the first
    eviction (:func:`first_evicted`); ``first``: the first scored position (1-based, as the curves' x axis),
    ``n``: how many tokens are scored (0, with NaN perplexities, when the text never fills the cache)."""
    skip = first_evicted(window_size, sinks)
    n = max(0, len(full) - skip)
    out: dict[str, float | int] = {"first": skip + 1, "n": n}
    for name, arr in (("full", full), ("window", window), ("sink", sink)):
        tail = np.asarray(arr, dtype=np.float64)[skip:]
        out[name] = float(np.exp(tail.mean())) if n else float("nan")
    return out


def streaming_curves(full: np.ndarray, window: np.ndarray, sink: np.ndarray, window_size: int, sinks: int,
                     reassigned: bool = True, title: str = "") -> go.Figure:
    """Running perplexity along the text for full, window and window + sink attention (StreamingLLM), over the
    tokens predicted after the first eviction (:func:`first_evicted`), so that each curve ends at the
    perplexity :func:`streaming_perplexity` reports; the y axis spans the curves (log scale)."""
    fig = go.Figure()
    skip = first_evicted(window_size, sinks)
    if len(full) <= skip:  # the text fits in the cache: nothing was evicted, show every prediction
        skip = 0
    x = np.arange(skip + 1, len(full) + 1)  # position of the predicted token (query t predicts t + 1)
    lo, hi = np.inf, 0.0
    for name, arr, colour in (("full attention", full, "#2f6fde"), (f"window (W={window_size})", window, "#c8372d"),
                              (f"window + {sinks} sink tokens", sink, "#2e9e5b")):
        y = running_perplexity(np.asarray(arr)[skip:])
        lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
        fig.add_trace(go.Scatter(x=x, y=y.astype(np.float32), mode="lines", name=name,
                                 line=dict(color=colour, width=2),
                                 hovertemplate=f"{name}<br>token %{{x}}<br>running perplexity %{{y:.2f}}<extra></extra>"))
    fig.update_xaxes(title=f"token position (scored from token {skip + 1}, after the cache first evicted)"
                     if skip else "token position", range=[skip + 1, len(full)])
    yr = [np.log10(lo) - 0.05, np.log10(hi) + 0.05] if np.isfinite(lo) and lo > 0 else None
    fig.update_yaxes(title="running perplexity", type="log", range=yr)
    if yr:  # ticks at 1-2-5 steps (Plotly's own log ticks label every minor step 2..9 on short ranges)
        ticks = [m * 10.0 ** e for e in range(int(np.floor(yr[0])), int(np.ceil(yr[1])) + 1) for m in (1, 2, 5)
                 if yr[0] <= np.log10(m * 10.0 ** e) <= yr[1]]
        fig.update_yaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    pos = "sink positions re-assigned in the cache" if reassigned else "original positions"
    return _base(fig, title or f"StreamingLLM: running perplexity ({pos})", height=400)
