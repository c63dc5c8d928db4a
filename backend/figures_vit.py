"""Figures of the ViT patch-attention view: patch-grid maps over the image, small multiples of heads,
token norms with high-norm outliers. Pure functions (arrays/bytes in, Plotly figures out)."""

from __future__ import annotations

import base64
import io
import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backend.figures import FONT
from backend.vit import TokenLayout, upsample_bilinear

DISPLAY_MAX = 320  # long side of the displayed image, pixels
SMALL_UPSCALE = 256  # tiny images (8x8 digits) are enlarged (nearest) to about this long side
HEAT_MAX = 128  # long side of the bilinearly upsampled overlay (keeps figures small)
COLORSCALE = "Inferno"


def _base(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=13)), height=height, font=FONT,
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig


def display_image(data: bytes | None, layout: TokenLayout) -> tuple[str | None, int, int]:
    """``(data URI of a PNG, width, height)`` of the image as displayed: downscaled to DISPLAY_MAX on the
    long side, tiny images enlarged with nearest-neighbour. Without bytes (blob gone): ``(None, w, h)``
    with a size of 32 px per patch, so maps still draw."""
    if data is None:
        return None, 32 * layout.cols, 32 * layout.rows
    from PIL import Image  # noqa: PLC0415

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        w, h = img.size
        long_side = max(w, h)
        if long_side > DISPLAY_MAX:
            s = DISPLAY_MAX / long_side
            img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
        elif long_side < SMALL_UPSCALE // 2:
            k = max(1, SMALL_UPSCALE // long_side)
            img = img.resize((w * k, h * k), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        w, h = img.size
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), w, h


def heat_size(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of the upsampled overlay for an image of ``width x height``."""
    s = min(1.0, HEAT_MAX / max(width, height))
    return max(1, round(height * s)), max(1, round(width * s))


def patch_from_click(x: float, y: float, width: int, height: int, layout: TokenLayout) -> tuple[int, int]:
    """(row, col) of the patch under image coordinates ``x, y`` (pixel centres at integers)."""
    col = int(np.clip(math.floor((x + 0.5) / width * layout.cols), 0, layout.cols - 1))
    row = int(np.clip(math.floor((y + 0.5) / height * layout.rows), 0, layout.rows - 1))
    return row, col


def _patch_rect(fig: go.Figure, r: int, c: int, width: int, height: int, layout: TokenLayout,
                color: str, dash: str = "solid", row: int | None = None, col: int | None = None) -> None:
    pw, ph = width / layout.cols, height / layout.rows
    kw = {"row": row, "col": col} if row is not None else {}
    fig.add_shape(type="rect", x0=c * pw - 0.5, x1=(c + 1) * pw - 0.5, y0=r * ph - 0.5, y1=(r + 1) * ph - 0.5,
                  line=dict(color=color, width=2, dash=dash), **kw)


def overlay(image_uri: str | None, width: int, height: int, grid: np.ndarray, layout: TokenLayout,
            opacity: float = 0.6, title: str = "", value_name: str = "attention",
            selected: tuple[int, int] | None = None, marks: Sequence[tuple[int, int]] = (),
            colorscale: str = COLORSCALE) -> go.Figure:
    """A patch-grid map ``grid [rows, cols]`` bilinearly upsampled and drawn over the image.

    ``selected`` outlines one patch (cyan), ``marks`` outline others (dashed red, e.g. high-norm tokens).
    Click coordinates are image pixels (``patch_from_click``)."""
    grid = np.asarray(grid, dtype=np.float64)
    if grid.shape != (layout.rows, layout.cols):
        raise ValueError(f"grid {grid.shape} is not the patch grid {(layout.rows, layout.cols)}")
    hh, ww = heat_size(width, height)
    heat = upsample_bilinear(grid, (hh, ww))
    fig = go.Figure()
    if image_uri is not None:
        fig.add_trace(go.Image(source=image_uri, hoverinfo="skip", name="image"))
    dx, dy = width / ww, height / hh
    zmin = float(grid.min())
    zmax = max(float(grid.max()), zmin + 1e-9)
    fig.add_trace(go.Heatmap(
        z=np.round(heat, 6).astype(np.float32), x0=-0.5 + dx / 2, dx=dx, y0=-0.5 + dy / 2, dy=dy,
        opacity=float(opacity), colorscale=colorscale, zmin=zmin, zmax=zmax, zsmooth=False,
        colorbar=dict(title=value_name, thickness=12), name=value_name,
        hovertemplate=f"x %{{x:.0f}} y %{{y:.0f}}<br>{value_name} %{{z:.4f}}<extra></extra>",
    ))
    for r, c in marks:
        _patch_rect(fig, r, c, width, height, layout, "#ff3b30", "dash")
    if selected is not None:
        _patch_rect(fig, selected[0], selected[1], width, height, layout, "#00e5ff")
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], scaleanchor="x", constrain="domain")
    return _base(fig, title, height=380)


def head_grid(maps: np.ndarray, title: str = "", selected: int | None = None) -> go.Figure:
    """Small multiples: one patch-grid map per head (``maps [H, rows, cols]``), each divided by its own
    max (shared 0..1 colour axis). Clicking a map reports its head as ``curveNumber``."""
    maps = np.asarray(maps, dtype=np.float64)
    n = maps.shape[0]
    ncols = min(n, 6)
    nrows = math.ceil(n / ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[
        f"<b>H{h}</b>" if h == selected else f"H{h}" for h in range(n)],
        horizontal_spacing=0.02, vertical_spacing=0.08)
    for h in range(n):
        m = maps[h]
        peak = m.max() if m.max() > 0 else 1.0
        fig.add_trace(go.Heatmap(
            z=(m / peak).astype(np.float32), coloraxis="coloraxis", name=f"head {h}",
            hovertemplate=f"head {h}<br>patch r%{{y}} c%{{x}}<br>CLS attention / max %{{z:.3f}}<extra></extra>",
        ), row=h // ncols + 1, col=h % ncols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    for i in range(2, n + 1):
        fig.layout[f"yaxis{i}"].scaleanchor = f"x{i}"
    fig.update_layout(coloraxis=dict(colorscale=COLORSCALE, cmin=0, cmax=1, colorbar=dict(title="/ max", thickness=10)))
    return _base(fig, title, height=40 + 170 * nrows)


def _role(i: int, layout: TokenLayout) -> str:
    if i == 0:
        return "CLS"
    if i in layout.registers:
        return "register"
    return "patch" if i >= layout.n_prefix else "prefix"


ROLE_COLORS = {"CLS": "#8a4baf", "register": "#f28e2b", "prefix": "#8a4baf", "patch": "#4e79a7"}


def norm_bars(norms: np.ndarray, tokens: Sequence[str], layout: TokenLayout, outliers: np.ndarray,
              threshold: float, title: str = "") -> go.Figure:
    """One layer's token norms ``[T]``: CLS, registers and patches in their colours, outliers in red, the
    threshold as a dashed line."""
    norms = np.asarray(norms, dtype=np.float64)
    roles = [_role(i, layout) for i in range(len(norms))]
    colors = ["#e15759" if outliers[i] else ROLE_COLORS[roles[i]] for i in range(len(norms))]
    fig = go.Figure(go.Bar(
        x=list(range(len(norms))), y=norms.astype(np.float32), marker_color=colors,
        customdata=[[t, r + (" (high norm)" if outliers[i] else "")] for i, (t, r) in enumerate(zip(tokens, roles))],
        hovertemplate="%{x}: %{customdata[0]}<br>%{customdata[1]}<br>norm %{y:.3f}<extra></extra>",
        name="norm",
    ))
    if np.isfinite(threshold):
        fig.add_hline(y=threshold, line=dict(color="#e15759", dash="dash", width=1),
                      annotation_text=f"threshold {threshold:.2f}", annotation_position="top left")
    fig.update_xaxes(title="token position (0 = CLS)")
    fig.update_yaxes(title="‖hidden state‖", rangemode="tozero")
    return _base(fig, title, height=300)


def norm_layers(norms: np.ndarray, tokens: Sequence[str], outliers: np.ndarray, title: str = "") -> go.Figure:
    """``[L, T]`` token norms as a heatmap (layers down), high-norm outliers marked with an x."""
    norms = np.asarray(norms, dtype=np.float64)
    n_layers, n_tok = norms.shape
    fig = go.Figure(go.Heatmap(
        z=norms.astype(np.float32), x=list(range(n_tok)), y=list(range(n_layers)), colorscale="Viridis",
        customdata=[list(tokens)] * n_layers, colorbar=dict(title="norm", thickness=12),
        hovertemplate="layer %{y} token %{x}: %{customdata}<br>norm %{z:.3f}<extra></extra>",
    ))
    ly, lx = np.nonzero(outliers)
    if len(lx):
        fig.add_trace(go.Scatter(x=lx, y=ly, mode="markers", marker=dict(symbol="x", color="#ff3b30", size=9),
                                 name="high norm", hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed", title="layer", dtick=1)
    fig.update_xaxes(title="token position")
    fig.update_layout(showlegend=False)
    return _base(fig, title, height=max(220, 26 * n_layers + 120))
