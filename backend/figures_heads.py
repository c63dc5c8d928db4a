"""All heads at once (BertViz's model view): a layer x head grid of small attention heatmaps for one prompt.

Arrays in, figures out. A long prompt is shrunk to at most ``max_bins`` positions by merging runs of consecutive
positions exactly as sub-words are merged into words (:func:`backend.token_text.merge_words`: a bin's attention
to another bin is the sum over the key bin's positions, averaged over the query bin's positions), so every
thumbnail row still sums to 1 and a number in a thumbnail means "share of attention" at any prompt length.

With a query token, each cell shows that token's attention over the (binned) keys as a strip instead of the
whole pattern. The grid is one heatmap (the mosaic, white lines between cells) under a transparent ``[layer, head]``
heatmap that carries the hover text and the clicks: a click anywhere in a cell gives ``x = head, y = layer``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from backend.figures import grid_axes
from backend.token_text import merge_words

MAX_BINS = 32
"""Thumbnail size in positions: SmolLM2's 30 x 9 heads at 32 x 32 are 276,480 cells, about 1.1 MB as float32."""
GAP_PX = 3
"""White lines between two cells, in pixels."""
SCALES = {"shared": "attention weight (0 – 1, the same scale in every cell)",
          "head": "each cell scaled to its own maximum"}


def position_bins(n: int, max_bins: int = MAX_BINS) -> list[list[int]]:
    """``n`` positions in at most ``max_bins`` runs of consecutive positions, as even as possible (the first
    ``n % bins`` runs one longer): ``position_bins(5, 2) == [[0, 1, 2], [3, 4]]``."""
    if n <= 0:
        return []
    k = min(n, max(1, max_bins))
    return [part.tolist() for part in np.array_split(np.arange(n), k)]


def thumbnails(pattern: np.ndarray, groups: Sequence[Sequence[int]], query: int | None = None) -> np.ndarray:
    """One layer's thumbnails from ``pattern [head, query, key]``: ``[head, bins, bins]`` (queries averaged and
    keys summed over each bin), or with ``query`` that position's row with keys summed per bin, ``[head, bins]``."""
    pattern = np.asarray(pattern)
    if query is None:
        return merge_words(pattern, groups).astype(np.float32)
    row = np.asarray(pattern[:, query, :], dtype=np.float64)
    return np.stack([row[:, list(g)].sum(axis=1) for g in groups], axis=1).astype(np.float32)


def top_keys(pattern: np.ndarray, query: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each head's most-attended key at full resolution: ``(position [head], weight [head])``. Without a query, the
    key with the largest attention received averaged over all queries (Gu et al.'s alpha); with one, the key
    with the largest weight in that query's row."""
    pattern = np.asarray(pattern, dtype=np.float64)
    scores = pattern.mean(axis=1) if query is None else pattern[:, query, :]
    idx = np.argmax(scores, axis=1)
    return idx.astype(np.int64), scores[np.arange(scores.shape[0]), idx]


def mosaic(thumbs: np.ndarray, scale: str = "shared") -> np.ndarray:
    """The cells of ``thumbs [layer, head, rows, cols]`` side by side, ``[layer * rows, head * cols]``.
    ``scale="head"`` divides each cell by its own maximum."""
    t = np.asarray(thumbs, dtype=np.float32)
    if scale == "head":
        peak = t.max(axis=(2, 3), keepdims=True)
        t = np.where(peak > 0, t / np.where(peak > 0, peak, 1), 0).astype(np.float32)
    n_layers, n_heads, rows, cols = t.shape
    return t.transpose(0, 2, 1, 3).reshape(n_layers * rows, n_heads * cols)


def quantise(z: np.ndarray, zmax: float) -> np.ndarray:
    """``z`` in ``[0, zmax]`` as 0-255 (what the browser receives: a quarter of float32's bytes; the hover
    numbers come from the full-precision arrays)."""
    return np.clip(np.rint(np.asarray(z, dtype=np.float64) / max(zmax, 1e-12) * 255), 0, 255).astype(np.uint8)


def cell_of(x: float, y: float, n_layers: int, n_heads: int) -> tuple[int, int] | None:
    """The ``(layer, head)`` of a click at ``(x, y)`` (cells centred on ``x = head, y = layer``), None outside."""
    l, h = int(round(float(y))), int(round(float(x)))
    return (l, h) if 0 <= l < n_layers and 0 <= h < n_heads else None


def hover_texts(tokens: Sequence[str], top: np.ndarray, weight: np.ndarray, query: int | None = None) -> list[list[str]]:
    """``[layer][head]`` hover lines: the head and its most-attended key (one-line token label, position, weight)."""
    what = "mean attention received" if query is None else f"attention from {query}:{tokens[query]}"
    return [[f"layer {l} head {h}<br>top key {int(top[l, h])}:{tokens[int(top[l, h])]}<br>"
             f"{what} {float(weight[l, h]):.3f}<br>click to open this head"
             for h in range(top.shape[1])] for l in range(top.shape[0])]


def heads_grid(thumbs: np.ndarray, hover: Sequence[Sequence[str]] | None = None, title: str = "",
               scale: str = "shared", selected: tuple[int, int] | None = None) -> go.Figure:
    """The model view: ``thumbs [layer, head, rows, cols]`` (rows = 1: one query's strip) as one grid, layer 0 at
    the top, queries down and keys across inside each cell. Hover: ``hover[layer][head]``; click: head and layer."""
    t = np.asarray(thumbs, dtype=np.float32)
    if t.ndim == 3:  # one query: [layer, head, keys] -> strips
        t = t[:, :, None, :]
    n_layers, n_heads, rows, cols = t.shape
    z = mosaic(t, scale)
    strip = rows == 1
    zmax = 1.0 if scale == "head" else float(max(z.max() if z.size else 0.0, 1e-9))
    ticks = [0, 0.25, 0.5, 0.75, 1.0]
    fig = go.Figure(go.Heatmap(
        z=quantise(z, zmax), x0=-0.5 + 0.5 / cols, dx=1 / cols, y0=-0.5 + 0.5 / rows, dy=1 / rows,
        colorscale="Blues", zmin=0, zmax=255, hoverinfo="skip", name="attention",
        colorbar=dict(title="max-scaled" if scale == "head" else "attn", thickness=12,
                      tickvals=[255 * f for f in ticks], ticktext=[f"{zmax * f:.2g}" for f in ticks]),
    ))
    fig.add_trace(go.Heatmap(
        z=np.zeros((n_layers, n_heads), dtype=np.float32), x=np.arange(n_heads), y=np.arange(n_layers),
        colorscale=[[0, "rgba(0,0,0,0)"], [1, "rgba(0,0,0,0)"]], showscale=False, name="heads",
        text=hover, hovertemplate="%{text}<extra></extra>" if hover is not None else
        "layer %{y} head %{x}<extra></extra>",
    ))
    shapes = [dict(type="line", x0=h - 0.5, x1=h - 0.5, y0=-0.5, y1=n_layers - 0.5,
                   line=dict(color="#ffffff", width=GAP_PX)) for h in range(1, n_heads)]
    shapes += [dict(type="line", x0=-0.5, x1=n_heads - 0.5, y0=l - 0.5, y1=l - 0.5,
                    line=dict(color="#ffffff", width=GAP_PX * (3 if strip else 1))) for l in range(1, n_layers)]
    if selected is not None:
        l, h = selected
        shapes.append(dict(type="rect", x0=h - 0.5, x1=h + 0.5, y0=l - 0.5, y1=l + 0.5,
                           line=dict(color="#d62728", width=2)))
    fig.update_layout(shapes=shapes)
    ratio = 0.25 if strip else 1.0
    fig.update_xaxes(tickvals=list(range(n_heads)), ticktext=[f"H{h}" for h in range(n_heads)], side="top",
                     range=[-0.5, n_heads - 0.5], showgrid=False, zeroline=False, constrain="domain", fixedrange=True)
    fig.update_yaxes(tickvals=list(range(n_layers)), ticktext=[f"L{l}" for l in range(n_layers)],
                     range=[n_layers - 0.5, -0.5], showgrid=False, zeroline=False, scaleanchor="x",
                     scaleratio=ratio, constrain="domain", fixedrange=True)
    grid_axes(fig)
    cell_px = 64 if not strip else 20
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=14)), dragmode=False,
        font=dict(family="Inter, system-ui, sans-serif", size=12), margin=dict(l=50, r=20, t=80, b=20),
        height=max(260, cell_px * n_layers + 110), plot_bgcolor="#ffffff",
    )
    return fig
