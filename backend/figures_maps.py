"""Figures of the joint query-key maps (AttentionViz, docs/REFERENCES.md section 1): arrays in, ``go.Figure`` out.

A head's points go to the browser as float32 arrays (Plotly sends them as base64 typed arrays) in WebGL traces; the
matrix of all heads as one PNG image (:func:`matrix`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from backend.figures import FONT
from backend.embedding_points import KEY, KIND_NAMES, QUERY, Thumbnail

KIND_COLOURS = ("#3aa655", "#d6409f")  # queries green, keys pink, as in AttentionViz
KIND_SYMBOLS = ("circle", "diamond")
KIND_PLURALS = ("queries", "keys")
TOKEN_KIND_COLOURS = {"special": "#1f3a93", "punctuation": "#f28e2b", "word": "#9aa5b1", "patch": "#9aa5b1"}
COLOUR_MODES = {
    "kind": "query / key",
    "position": "normalised position",
    "token_kind": "token kind",
    "prompt": "prompt",
}


PROMPT_COLOURS = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#1f77b4", "#8c564b", "#17becf", "#bcbd22", "#7f7f7f", "#d62728", "#2ca02c", "#9467bd", "#e377c2", "#393b79",
)
"""Categorical colours for "colour by prompt" (Tableau 10, then D3 category colours); they repeat after 20."""


def prompt_colour(prompt: int) -> str:
    """The categorical colour of input ``prompt`` (cycles after :data:`PROMPT_COLOURS`)."""
    return PROMPT_COLOURS[int(prompt) % len(PROMPT_COLOURS)]


def prompt_label(prompt: int, names: Sequence[str] | None = None) -> str:
    """``input 3`` (1-based, as the pickers show it), or the input's name when ``names`` has one."""
    if names is not None and 0 <= prompt < len(names) and names[prompt]:
        return str(names[prompt])
    return f"input {int(prompt) + 1}"


def _frame(fig: go.Figure, title: str, height: int, uirevision: str | None = None) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=14)), height=height, font=FONT,
        margin=dict(l=50, r=20, t=60, b=30), legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1, xanchor="right"),
        hoverlabel=dict(namelength=0), uirevision=uirevision,
    )
    return fig


def _points(x: np.ndarray, y: np.ndarray, name: str, **kw) -> go.Scattergl:
    return go.Scattergl(x=x.astype(np.float32), y=y.astype(np.float32), mode="markers", name=name, **kw)


def head_map(
    xy: np.ndarray,
    meta: np.ndarray,
    hover: Sequence[str] | None,
    colour: str = "kind",
    positions: np.ndarray | None = None,
    token_kinds: np.ndarray | None = None,
    token_kind_names: Sequence[str] = (),
    highlight: np.ndarray | None = None,
    highlight_label: str = "",
    selected: int | None = None,
    title: str = "",
    uirevision: str | None = None,
    prompt_names: Sequence[str] | None = None,
) -> go.Figure:
    """One head's joint map: ``xy [n, 2]``, ``meta [n, 3]`` (kind, prompt, position), ``hover [n]`` strings.

    ``colour``: ``kind`` (queries green, keys pink), ``position`` (``positions [n]`` in [0, 1]), ``token_kind``
    (``token_kinds [n]`` codes into ``token_kind_names``) or ``prompt`` (one categorical colour per input, named by
    ``prompt_names`` when given). Keys are diamonds in every mode except
    ``kind``. ``highlight [n]`` bool rings matching points; ``selected`` marks one point with a star. A click maps back to
    its point by its coordinates (:func:`backend.embedding_points.nearest_point`; dcc.Graph drops typed-array
    ``customdata`` from click events).

    ``hover=None``: no hover texts in the figure; each trace's ``customdata`` holds its points' indices into the
    run's hover table instead (int32), which the page sends to the browser once and fills in there, so that a head
    switch transfers only coordinates and indices."""
    if colour not in COLOUR_MODES:
        raise ValueError(f"colour must be one of {', '.join(COLOUR_MODES)}")
    xy = np.asarray(xy, dtype=np.float32)
    hover = None if hover is None else np.asarray(hover, dtype=object)
    kind = meta[:, 0]
    fig = go.Figure()
    marker = dict(size=4, opacity=0.75)
    common = dict(hovertemplate="%{hovertext}<extra></extra>")

    def texts(idx: np.ndarray) -> dict:
        return {"customdata": idx} if hover is None else {"hovertext": hover[idx]}

    def add(mask: np.ndarray, name: str, **mk) -> None:
        idx = np.flatnonzero(mask).astype(np.int32)
        fig.add_trace(_points(xy[idx, 0], xy[idx, 1], name, marker={**marker, **mk}, **texts(idx), **common))

    if colour == "kind":
        for k in (QUERY, KEY):
            add(kind == k, KIND_PLURALS[k], color=KIND_COLOURS[k])
    elif colour == "token_kind":
        codes = np.asarray(token_kinds)
        for c, tk in enumerate(token_kind_names):
            for k in (QUERY, KEY):
                if ((codes == c) & (kind == k)).any():
                    add((codes == c) & (kind == k), f"{tk} ({KIND_NAMES[k]})", color=TOKEN_KIND_COLOURS.get(tk, "#777"),
                        symbol=KIND_SYMBOLS[k])
    elif colour == "prompt":  # categories, not a scale: input 3 is not "between" inputs 2 and 4
        prompts = meta[:, 1]
        slot = prompts % len(PROMPT_COLOURS)  # at most len(PROMPT_COLOURS) x 2 traces, however many inputs
        for c in np.unique(slot).tolist():
            members = np.unique(prompts[slot == c]).tolist()
            name = prompt_label(members[0], prompt_names) if len(members) == 1 else (
                "inputs " + ", ".join(str(p + 1) for p in members[:4]) + (", …" if len(members) > 4 else ""))
            for k in (QUERY, KEY):
                m = (slot == c) & (kind == k)
                if m.any():
                    add(m, f"{name} ({KIND_PLURALS[k]})", color=PROMPT_COLOURS[c], symbol=KIND_SYMBOLS[k])
    else:
        values = np.asarray(positions, dtype=np.float32)
        for k in (QUERY, KEY):
            m = kind == k
            add(m, KIND_PLURALS[k], color=values[m], colorscale="Viridis", cmin=0.0, cmax=1.0, symbol=KIND_SYMBOLS[k],
                colorbar=dict(title="position", thickness=12) if k == QUERY else None, showscale=k == QUERY)
    if highlight is not None and highlight.any():
        idx = np.flatnonzero(highlight).astype(np.int32)
        fig.add_trace(_points(xy[idx, 0], xy[idx, 1], highlight_label or f"matches ({len(idx)})", **texts(idx),
                              marker=dict(size=10, color="rgba(0,0,0,0)", line=dict(color="#e8112d", width=2)), **common))
    if selected is not None and 0 <= selected < len(xy):
        idx = np.asarray([selected], dtype=np.int32)
        fig.add_trace(_points(xy[idx, 0], xy[idx, 1], "selected", **texts(idx),
                              marker=dict(size=16, symbol="star", color="#111", line=dict(color="#fff", width=1)), **common))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x", scaleratio=1)
    return _frame(fig, title, 640, uirevision)


CELL_PX = 96
"""Pixels per cell side of the matrix's raster (a cell is drawn about this size on a 1,300-px page)."""
DOT_OFFSETS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
"""The pixels of one point in the raster: a plus of 5 pixels, about the old 2.5-px WebGL marker."""
DOT_OPACITY = 0.7
CELL_BACKGROUND = "#f4f5f8"
CELL_GAP_PX = 2
"""Each cell's background is drawn into the raster, inset by this many transparent pixels on every side."""


MAX_LEVEL = 3
"""Points on one pixel counted up to this many per kind (4 points of one colour at 0.7 opacity look as 3 do)."""


def matrix_indices(thumbs: Mapping[tuple[int, int], Thumbnail], n_layers: int, n_heads: int,
                   cell_px: int = CELL_PX) -> np.ndarray:
    """``[n_layers * cell_px, n_heads * cell_px]`` uint8 palette indices of the matrix raster (:data:`MATRIX_PALETTE`):
    0 in the :data:`CELL_GAP_PX` gap around each cell, else ``1 + 4 * queries + keys``, the numbers of query and key
    points covering the pixel (each capped at :data:`MAX_LEVEL`). Cell ``(l, h)`` is rows ``l * cell_px ..``,
    columns ``h * cell_px ..``; a point at ``(x, y)`` of the cell's unit square (y up) covers the plus of
    :data:`DOT_OFFSETS` around column ``(x + 0.5) * cell_px``, row ``(0.5 - y) * cell_px``, within its cell."""
    h_px, w_px = n_layers * cell_px, n_heads * cell_px
    counts = np.zeros((2, h_px * w_px), dtype=np.int64)
    for k in (QUERY, KEY):
        flat = []
        for (l, h), th in thumbs.items():
            m = th.kind == k
            col = np.clip(np.floor((th.xy[m, 0].astype(np.float64) + 0.5) * cell_px), 0, cell_px - 1).astype(np.int64)
            row = np.clip(np.floor((0.5 - th.xy[m, 1].astype(np.float64)) * cell_px), 0, cell_px - 1).astype(np.int64)
            for dr, dc in DOT_OFFSETS:
                r, c = row + dr, col + dc
                ok = (r >= 0) & (r < cell_px) & (c >= 0) & (c < cell_px)  # a dot stays inside its cell
                flat.append((l * cell_px + r[ok]) * w_px + h * cell_px + c[ok])
        if flat:
            counts[k] = np.bincount(np.concatenate(flat), minlength=h_px * w_px)
    np.minimum(counts, MAX_LEVEL, out=counts)
    out = (1 + (MAX_LEVEL + 1) * counts[QUERY] + counts[KEY]).astype(np.uint8).reshape(h_px, w_px)
    inside = np.zeros(cell_px, dtype=bool)
    inside[CELL_GAP_PX: cell_px - CELL_GAP_PX] = True
    out[~(np.tile(inside, n_layers)[:, None] & np.tile(inside, n_heads)[None, :])] = 0
    return out


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64) / 255


def _palette() -> np.ndarray:
    """``[1 + (MAX_LEVEL + 1)^2, 4]`` uint8 RGBA: transparent, then each (queries, keys) count pair's colour: that
    many query dots then key dots at :data:`DOT_OPACITY`, "over" the opaque :data:`CELL_BACKGROUND`."""
    rows = [np.zeros(4)]
    for nq in range(MAX_LEVEL + 1):
        for nk in range(MAX_LEVEL + 1):
            rgb = _rgb(CELL_BACKGROUND)
            for colour, n in ((KIND_COLOURS[QUERY], nq), (KIND_COLOURS[KEY], nk)):
                a = 1.0 - (1.0 - DOT_OPACITY) ** n
                rgb = _rgb(colour) * a + rgb * (1 - a)
            rows.append(np.array([*(rgb * 255), 255]))
    return np.rint(np.array(rows)).astype(np.uint8)


MATRIX_PALETTE = _palette()


def matrix_source(thumbs: Mapping[tuple[int, int], Thumbnail], n_layers: int, n_heads: int,
                  cell_px: int = CELL_PX) -> str:
    """The matrix raster as a palette PNG ``data:`` URI (one byte a pixel before compression; index 0 transparent),
    for :func:`matrix`'s ``source``."""
    import base64  # noqa: PLC0415
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    img = Image.fromarray(matrix_indices(thumbs, n_layers, n_heads, cell_px), "P")
    img.putpalette(MATRIX_PALETTE[:, :3].reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def matrix(
    source: str,
    n_layers: int,
    n_heads: int,
    selected: tuple[int, int] | None = None,
    title: str = "",
    cell_px: int = CELL_PX,
) -> go.Figure:
    """All heads at once: cell ``(l, h)`` (centred on ``x = h, y = l``, layer 0 at the top) holds that head's
    thumbnail, queries and keys drawn into one PNG image, ``source`` (:func:`matrix_source`, ``cell_px`` pixels a
    cell): an overview of hundreds of heads and tens of thousands of points that the browser draws as one picture,
    without WebGL (creating a WebGL context alone took ~185 ms of a load in software rendering, and a WebGL canvas as
    tall as SmolLM2's 30 layers another ~230 ms to composite). The image holds the cells' backgrounds too; hovering
    or clicking anywhere in a cell names or opens that head (:func:`backend.embedding_points.cell_of` maps click
    coordinates back to a head); a head's own map has the points' hover details."""
    step = 1.0 / cell_px
    fig = go.Figure(go.Image(
        source=source, name="heads",
        x0=-0.5 + step / 2, dx=step, y0=-0.5 + step / 2, dy=step,
        hovertemplate="layer %{y:.0f} head %{x:.0f}: click to open<extra></extra>",
    ))
    for k in (QUERY, KEY):  # legend entries only
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=KIND_PLURALS[k], hoverinfo="skip",
                                 marker=dict(size=7, color=KIND_COLOURS[k], opacity=DOT_OPACITY)))
    if selected is not None:
        l, h = selected
        fig.add_shape(type="rect", x0=h - 0.5, x1=h + 0.5, y0=l - 0.5, y1=l + 0.5, line=dict(color="#111", width=2))
    fig.update_xaxes(tickvals=list(range(n_heads)), ticktext=[f"H{h}" for h in range(n_heads)], side="top",
                     range=[-0.5, n_heads - 0.5], showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(tickvals=list(range(n_layers)), ticktext=[f"L{l}" for l in range(n_layers)],
                     range=[n_layers - 0.5, -0.5], showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1,
                     constrain="domain")
    fig = _frame(fig, title, max(320, 95 * n_layers + 110))
    fig.update_layout(margin=dict(l=50, r=20, t=100, b=20), dragmode=False, showlegend=True,
                      legend=dict(y=1.0, yanchor="top", x=1, xanchor="right", yref="container", xref="container"))
    return fig
