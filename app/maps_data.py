"""Data of the query-key map views for pages and the API: validated parameters, one head's map, the
matrix of all heads, and per-point hover texts (memoised: a run's arrays never change)."""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import state
from app.memo import LRU
from backend import embedding_points, figures_maps, jobs, names, token_text
from backend.vocab import METHOD_NAMES, RAW_MAPS

BASE_METHODS = METHOD_NAMES
MATRIX_POINTS = 60_000  # points in the matrix view, over all heads (each head at most MATRIX_PER_HEAD)
MATRIX_PER_HEAD = 600


@dataclass(frozen=True)
class MapRun:
    """What the map pages need to know about a finished run that has maps."""

    n_layers: int
    n_heads: int
    methods: tuple[str, ...]  # base methods with a stored map (e.g. ("umap",)); "*_raw" exist beside each
    image: bool
    tokens: list[list[str]]
    shown: list[list[str]] = field(default_factory=list)
    """Readable one-line labels of ``tokens`` (byte-level BPE marks decoded, ``backend.token_text.labels``)."""

    def label(self, prompt: int, position: int) -> str:
        """What a token shows as in hovers and titles."""
        return (self.shown or self.tokens)[prompt][position]


@dataclass(frozen=True)
class PointTable:
    """Per-point data derived from ``meta`` alone (the same for every head of a run)."""

    key: str  # the run and the content of ``meta`` (the hover table a browser holds)
    hover: np.ndarray  # [n] str
    positions: np.ndarray  # [n] float32 in [0, 1]
    token_kinds: np.ndarray  # [n] int8 codes into kind_names
    kind_names: tuple[str, ...]


_RUNS: LRU[MapRun] = LRU(16)
_HEADS: LRU[tuple[np.ndarray, np.ndarray]] = LRU(24)
_TABLES: LRU[PointTable] = LRU(8)
_MATRICES: LRU[dict] = LRU(4)
_MATRIX_IMAGES: LRU[str] = LRU(8)


def gate_analysis(run_id: str | None, normalised: bool) -> str:
    """The analysis the maps page waits for: "embedding", or :data:`RAW_MAPS` when the view asks for the maps
    without normalisation of a finished run that has the normalised ones but not those (the page then offers to
    compute them, shows the extension's progress, then the view)."""
    if normalised or not run_id:
        return "embedding"
    try:
        m = state.done_manifest(run_id)
        run = map_run(run_id)
    except (state.ViewError, state.NotReady, LookupError):
        return "embedding"
    return "embedding" if has_raw_maps(run_id, run.methods[0]) or RAW_MAPS in jobs.run_analyses(m) else RAW_MAPS


def map_run(run_id: str) -> MapRun:
    """The finished run's shape and map methods (ViewError when it has no maps). Memoised once done: a run's
    shape never changes, and an evicted array is still noticed when it is read (:func:`state.load_arrays`)."""

    def make() -> MapRun:
        m = state.done_manifest(run_id)
        info = m.get("info") or {}
        sizes = m.get("sizes") or {}
        methods = tuple(b for b in BASE_METHODS if names.embedding(0, 0, b) in sizes)
        if not methods:
            raise state.ViewError("this run has no query-key maps; submit it with the 'embedding' analysis")
        tokens = info.get("tokens") or []
        image = info.get("kind") == "image"
        return MapRun(n_layers=int(info["n_layers"]), n_heads=int(info["n_heads"]), methods=methods,
                      image=image, tokens=tokens, shown=tokens if image else [token_text.labels(t) for t in tokens])

    return _RUNS.get(run_id, make)


class RawMapsMissing(state.ViewError):
    """The run has no maps without normalisation yet: they are added on request (the run is extended with
    :data:`RAW_MAPS`)."""


def has_raw_maps(run_id: str, method: str) -> bool:
    """Whether the finished run stores ``method``'s maps without normalisation (runs from before they were computed
    on request always do; others once asked for, or extended with, :data:`RAW_MAPS`). Read from the manifest
    each time: an extension adds them to a run whose shape (:func:`map_run`) is memoised."""
    return names.embedding(0, 0, f"{method}_raw") in (state.done_manifest(run_id).get("sizes") or {})


def method_name(run: MapRun, method: Any, normalised: bool, run_id: str | None = None) -> str:
    """Stored map name: ``umap`` (normalised) or ``umap_raw``; ViewError for a method the run lacks,
    :class:`RawMapsMissing` (with ``run_id``) for raw maps it does not have yet."""
    if method not in BASE_METHODS:
        raise state.ViewError(f"method must be one of {', '.join(BASE_METHODS)} (add _raw for the map without "
                              "normalisation)")
    if method not in run.methods:
        raise state.ViewError(f"this run has no {method} map; submit it with the 'embedding' analysis and that "
                              f"method (it has: {', '.join(run.methods)})")
    if normalised:
        return str(method)
    if run_id is not None and not has_raw_maps(run_id, str(method)):
        raise RawMapsMissing(f"this run has no maps without normalisation yet: they are computed on request (extend "
                             f"the run with the '{RAW_MAPS}' analysis: POST /api/runs/{run_id}/extend with "
                             f'{{"analyses": ["{RAW_MAPS}"]}}, or untick the normalisation on the maps page)')
    return f"{method}_raw"


def head(run_id: str, layer: Any, head_: Any, method: Any, normalised: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(xy [n, 2] float32, meta [n, 3] int32)`` of one head's map, validated and memoised."""
    run = map_run(run_id)
    l = state.check_index("layer", layer, run.n_layers)
    h = state.check_index("head", head_, run.n_heads)
    name = method_name(run, method, normalised, run_id)

    def load() -> tuple[np.ndarray, np.ndarray]:
        xy, meta = state.load_arrays(run_id, [names.embedding(l, h, name), names.embedding_meta(l, h)])
        return np.asarray(xy, dtype=np.float32), np.asarray(meta, dtype=np.int32)

    return _HEADS.get((run_id, l, h, name), load)


def hover_text(run: MapRun, kind: int, prompt: int, position: int) -> str:
    """One point's hover: kind, token, where it is, and (text runs) its context. HTML-escaped (Plotly renders
    a few tags in hover labels; tokens must stay text)."""
    toks = (run.shown or run.tokens)[prompt]
    tok = html.escape(toks[position])
    if run.image:
        return f"<b>{embedding_points.KIND_NAMES[kind]}</b> · {tok} · image {prompt}"
    ctx = html.escape(embedding_points.context(toks, position))
    return f"<b>{embedding_points.KIND_NAMES[kind]}</b> · '{tok}' · prompt {prompt}, position {position}<br>{ctx}"


def point_table(run_id: str, run: MapRun, meta: np.ndarray) -> PointTable:
    """Hover texts, normalised positions and token kinds of ``meta``'s points (memoised by its content)."""
    digest = hashlib.blake2b(np.ascontiguousarray(meta).tobytes(), digest_size=16).hexdigest()

    def make() -> PointTable:
        hover = [hover_text(run, k, p, pos) for k, p, pos in meta.tolist()]
        kind_names = embedding_points.IMAGE_TOKEN_KINDS if run.image else embedding_points.TEXT_TOKEN_KINDS
        return PointTable(
            key=f"{run_id}:{digest}",
            hover=np.asarray(hover, dtype=object),
            positions=embedding_points.normalised_positions([len(t) for t in run.tokens], meta),
            token_kinds=embedding_points.token_kinds(run.tokens, meta, run.image),
            kind_names=kind_names,
        )

    return _TABLES.get((run_id, digest), make)


def matrix(run_id: str, method: Any, normalised: bool = True) -> dict:
    """Thumbnails of every head (``{(l, h): Thumbnail}``), from one pipelined read."""
    run = map_run(run_id)
    return _thumbnails(run_id, run, method_name(run, method, normalised, run_id))


def _thumbnails(run_id: str, run: MapRun, name: str) -> dict:
    """:func:`matrix` of the stored maps ``name``, memoised."""

    def make() -> dict:
        heads = [(l, h) for l in range(run.n_layers) for h in range(run.n_heads)]
        wanted = [n for l, h in heads for n in (names.embedding(l, h, name), names.embedding_meta(l, h))]
        arrays = state.load_arrays(run_id, wanted)
        per_head = max(40, min(MATRIX_PER_HEAD, MATRIX_POINTS // max(len(heads), 1)))
        thumbs = {}
        for i, (l, h) in enumerate(heads):
            xy, meta = arrays[2 * i], arrays[2 * i + 1]
            thumbs[(l, h)] = embedding_points.thumbnail(xy, meta, embedding_points.thumbnail_indices(meta, per_head))
        return thumbs

    return _MATRICES.get((run_id, name), make)


def matrix_image(run_id: str, method: Any, normalised: bool = True) -> str:
    """The matrix of all heads as a PNG ``data:`` URI (:func:`backend.figures_maps.matrix_source`), memoised: the
    raster of SmolLM2's 270 heads takes ~0.2 s to draw and encode, and the page asks for it on every load."""
    run = map_run(run_id)
    name = method_name(run, method, normalised, run_id)
    return _MATRIX_IMAGES.get((run_id, name), lambda: figures_maps.matrix_source(
        _thumbnails(run_id, run, name), run.n_layers, run.n_heads))


def selected_point(run_id: str, layer: Any, head_: Any, method: Any, normalised: bool, x: Any, y: Any) -> list[int] | None:
    """``[kind, prompt, position]`` of the point of a head's map clicked at ``(x, y)``, or None."""
    xy, meta = head(run_id, layer, head_, method, normalised)
    try:
        i = embedding_points.nearest_point(xy, float(x), float(y))
    except (TypeError, ValueError):
        return None
    return None if i is None else [int(v) for v in meta[i]]


def points(run_id: str, layer: Any, head_: Any, method: Any) -> list[dict[str, Any]]:
    """The API's points of one head: x, y, kind, prompt, position, token. ``method`` may end in ``_raw``."""
    base = str(method).removesuffix("_raw")
    xy, meta = head(run_id, layer, head_, base, normalised=not str(method).endswith("_raw"))
    tokens = map_run(run_id).tokens
    return [
        {"x": x, "y": y, "kind": embedding_points.KIND_NAMES[k], "prompt": p, "position": pos, "token": tokens[p][pos]}
        for (x, y), (k, p, pos) in zip(xy.tolist(), meta.tolist())
    ]


def csv_text(run_id: str, layer: Any, head_: Any, method: Any, normalised: bool) -> str:
    """The head's map as CSV: x, y, kind, prompt, position, token."""
    import csv
    import io

    run = map_run(run_id)
    xy, meta = head(run_id, layer, head_, method, normalised)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["x", "y", "kind", "prompt", "position", "token"])
    for (x, y), (k, p, pos) in zip(xy.tolist(), meta.tolist()):
        w.writerow([f"{x:.6g}", f"{y:.6g}", embedding_points.KIND_NAMES[k], p, pos, run.tokens[p][pos]])
    return buf.getvalue()


PATTERN_WAIT_S = 20.0
"""A clicked point's pattern, when computed on request, is waited for this long inside the callback; past it the
page says the pattern is being computed and polls (without waiting) until it is there."""


def pattern(run_id: str, prompt: Any, layer: Any, head_: Any,
            wait_s: float = PATTERN_WAIT_S) -> tuple[list[str], np.ndarray]:
    """Tokens and the ``[query, key]`` pattern of one head for one prompt (the selected token's attention);
    ``state.PatternPending`` past ``wait_s`` while it is computed on request."""
    return state.pattern(run_id, prompt, layer, head_, wait_s)


def image_names(run_id: str) -> list[str]:
    """A name per input image of an image run (:func:`app.vit_data.image_names`)."""
    from app import vit_data  # noqa: PLC0415  (image runs only)

    return vit_data.image_names(state.done_manifest(run_id))
