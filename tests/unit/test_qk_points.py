"""Per-point data and figures of the query-key map views (``backend.embedding_points``, ``backend.figures_maps``)."""

from __future__ import annotations

import numpy as np
import pytest

from backend import embedding_points, figures_maps

TOKENS = [["[CLS]", "the", "cat", "sat", ".", "[SEP]"], ["[CLS]", "The", "##re", "Ġcat", ",", "[SEP]"]]
# every token of both prompts as a query, then as a key
META = np.array([[k, p, pos] for k in (0, 1) for p, toks in enumerate(TOKENS) for pos in range(len(toks))],
                dtype=np.int32)


def test_token_kinds_and_cleaning() -> None:
    assert [embedding_points.token_kind(t) for t in TOKENS[0]] == ["special", "word", "word", "word", "punctuation", "special"]
    assert embedding_points.token_kind("<|endoftext|>") == "special" and embedding_points.token_kind("Ġ,") == "punctuation"
    assert embedding_points.token_kind("patch r0 c1", image=True) == "patch"
    assert embedding_points.token_kind("[CLS]", image=True) == "special"
    assert embedding_points.clean_token("##re") == "re" and embedding_points.clean_token("ĠCat") == "cat"
    codes = embedding_points.token_kinds(TOKENS, META)
    names = embedding_points.TEXT_TOKEN_KINDS
    assert [names[c] for c in codes[:6]] == ["special", "word", "word", "word", "punctuation", "special"]
    assert np.array_equal(codes[:12], codes[12:])  # queries and keys of the same tokens


def test_positions_context_and_find() -> None:
    pos = embedding_points.normalised_positions([len(t) for t in TOKENS], META)
    assert pos[0] == 0 and pos[5] == 1 and pos[2] == pytest.approx(2 / 5)
    assert embedding_points.normalised_positions([1], np.array([[0, 0, 0]])).tolist() == [0.0]
    assert embedding_points.context(TOKENS[0], 2, width=1) == "… the [cat] sat …"
    assert embedding_points.context(TOKENS[0], 0, width=1) == "[[CLS]] the …"
    assert embedding_points.find_point(META, 1, 1, 3) == 12 + 6 + 3
    assert embedding_points.find_point(META, 0, 5, 0) is None


def test_search_exact_and_regex() -> None:
    mask = embedding_points.search_mask(TOKENS, META, "Cat")
    hits = {tuple(m) for m in META[mask].tolist()}
    assert hits == {(k, 0, 2) for k in (0, 1)} | {(k, 1, 3) for k in (0, 1)}  # "cat" and "Ġcat", both kinds
    assert embedding_points.search_mask(TOKENS, META, "  ").sum() == 0
    assert embedding_points.search_mask(TOKENS, META, "/^th/").sum() == 4  # "the", "The" as query and key
    with pytest.raises(ValueError, match="regular expression"):
        embedding_points.search_mask(TOKENS, META, "/(/")


def test_thumbnails_fit_the_cell_and_keep_the_shape() -> None:
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(400, 2)) * [10, 2] + [5, -3]
    meta = np.array([[i % 2, 0, i] for i in range(400)], dtype=np.int32)
    idx = embedding_points.thumbnail_indices(meta, 100, seed=1)
    assert len(idx) == 100 and (np.diff(idx) > 0).all()
    assert (meta[idx, 0] == 0).sum() == 50
    assert np.array_equal(idx, embedding_points.thumbnail_indices(meta, 100, seed=1))
    th = embedding_points.thumbnail(xy, meta, idx)
    assert np.abs(th.xy).max() <= 0.5
    full = embedding_points.fit_cell(xy)
    assert np.allclose(full[idx], th.xy)
    # a similarity transform: distance ratios are kept
    d = lambda a, i, j: np.linalg.norm(a[i] - a[j])  # noqa: E731
    assert d(full, 0, 1) / d(full, 2, 3) == pytest.approx(d(xy, 0, 1) / d(xy, 2, 3), rel=1e-4)
    assert embedding_points.thumbnail_indices(meta[:30], 100).tolist() == list(range(30))


def test_cell_of_clicks() -> None:
    assert embedding_points.cell_of(3.4, 1.2, 6, 12) == (1, 3)
    assert embedding_points.cell_of(11.49, 5.4, 6, 12) == (5, 11)
    assert embedding_points.cell_of(12.6, 0, 6, 12) is None and embedding_points.cell_of(0, -0.7, 6, 12) is None


def _head_fig(colour: str, **kw):
    xy = np.arange(2 * len(META), dtype=np.float32).reshape(-1, 2)
    hover = [f"p{p} t{t}" for _, p, t in META.tolist()]
    return figures_maps.head_map(
        xy, META, hover, colour, positions=embedding_points.normalised_positions([6, 6], META),
        token_kinds=embedding_points.token_kinds(TOKENS, META), token_kind_names=embedding_points.TEXT_TOKEN_KINDS, **kw)


def _indices(trace) -> np.ndarray:
    """Point indices of a trace of ``_head_fig`` (point i sits at x = 2 i)."""
    x = np.asarray(trace.x)
    assert np.allclose(np.asarray(trace.y), x + 1)
    return (x / 2).astype(int)


def test_head_map_traces_cover_every_point_once() -> None:
    for colour in figures_maps.COLOUR_MODES:
        fig = _head_fig(colour)
        idx = np.concatenate([_indices(t) for t in fig.data])
        assert sorted(idx.tolist()) == list(range(len(META))), colour
        for t in fig.data:
            assert list(t.hovertext) == [f"p{META[i, 1]} t{META[i, 2]}" for i in _indices(t)]
    kinds = _head_fig("kind")
    assert [t.name for t in kinds.data] == ["queries", "keys"]
    assert all(META[i, 0] == 1 for i in _indices(kinds.data[1]))
    pos = _head_fig("position")
    assert np.allclose(np.asarray(pos.data[0].marker.color), META[_indices(pos.data[0]), 2] / 5)
    xy = np.arange(2 * len(META), dtype=np.float32).reshape(-1, 2)
    assert embedding_points.nearest_point(xy, 14.0, 15.0) == 7 and embedding_points.nearest_point(xy[:0], 0, 0) is None
    with pytest.raises(ValueError):
        _head_fig("rainbow")


def test_head_map_colours_prompts_by_category() -> None:
    """Colour by prompt: one categorical colour per input (no colour scale), queries and keys in each."""
    fig = _head_fig("prompt")
    assert [t.name for t in fig.data] == ["input 1 (queries)", "input 1 (keys)", "input 2 (queries)", "input 2 (keys)"]
    colours = [t.marker.color for t in fig.data]
    assert all(isinstance(c, str) for c in colours) and colours[0] == colours[1] != colours[2] == colours[3]
    assert all(META[i, 1] == 1 for i in _indices(fig.data[2])) and not any(t.marker.showscale for t in fig.data)
    # many inputs: the colours cycle, the traces stay bounded, every point is still drawn once
    n = 3 * len(figures_maps.PROMPT_COLOURS)
    meta = np.array([[i % 2, i // 2, 0] for i in range(2 * n)], dtype=np.int32)
    many = figures_maps.head_map(np.zeros((2 * n, 2), np.float32), meta, [""] * (2 * n), "prompt")
    assert len(many.data) == 2 * len(figures_maps.PROMPT_COLOURS)
    assert sum(len(t.x) for t in many.data) == 2 * n and many.data[0].name.startswith("inputs 1, 21, 41")
    assert figures_maps.prompt_colour(0) == figures_maps.prompt_colour(len(figures_maps.PROMPT_COLOURS))
    named = _head_fig("prompt", prompt_names=["cat.png", "dog.png"])  # image runs: inputs by file name
    assert [t.name for t in named.data][::2] == ["cat.png (queries)", "dog.png (queries)"]


def test_head_map_highlight_and_selection() -> None:
    mask = embedding_points.search_mask(TOKENS, META, "cat")
    fig = _head_fig("kind", highlight=mask, highlight_label="matches", selected=4)
    names = [t.name for t in fig.data]
    assert names == ["queries", "keys", "matches", "selected"]
    assert sorted(_indices(fig.data[2])) == np.flatnonzero(mask).tolist()
    assert list(_indices(fig.data[3])) == [4] and fig.data[3].marker.symbol == "star"


def test_head_map_without_hover_carries_indices_into_the_table() -> None:
    """hover=None (the page's head switch): each trace's customdata is its points' indices into the hover table,
    the same points, in the same order, that carry texts in the figure with hover."""
    mask = embedding_points.search_mask(TOKENS, META, "cat")
    xy = np.arange(2 * len(META), dtype=np.float32).reshape(-1, 2)
    for colour in figures_maps.COLOUR_MODES:
        with_text = _head_fig(colour, highlight=mask, selected=4)
        bare = figures_maps.head_map(
            xy, META, None, colour, positions=embedding_points.normalised_positions([6, 6], META),
            token_kinds=embedding_points.token_kinds(TOKENS, META), token_kind_names=embedding_points.TEXT_TOKEN_KINDS,
            highlight=mask, selected=4)
        assert len(bare.data) == len(with_text.data)
        for t, ref in zip(bare.data, with_text.data):
            assert t.hovertext is None and np.asarray(t.customdata).dtype == np.int32
            assert np.asarray(t.customdata).tolist() == _indices(ref).tolist() == _indices(t).tolist()


def _decode(source: str) -> np.ndarray:
    """``[H, W, 4]`` uint8 RGBA of a PNG ``data:`` URI."""
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGBA"))


def test_matrix_places_each_head_in_its_cell() -> None:
    """Each head's points are drawn in its own cell of the raster, at the pixel their cell coordinates give (y up),
    in their kind's colour; the figure's image spans the cells exactly, so a click or hover maps to the head."""
    rng = np.random.default_rng(1)
    meta = np.array([[i % 2, 0, i // 2] for i in range(60)], dtype=np.int32)
    idx = embedding_points.thumbnail_indices(meta, 60)
    thumbs = {(l, h): embedding_points.thumbnail(rng.normal(size=(60, 2)), meta, idx) for l in range(2) for h in range(3)}
    px = 20
    raster = _decode(figures_maps.matrix_source(thumbs, 2, 3, cell_px=px))  # the PNG the page shows, as RGBA
    assert raster.shape == (40, 60, 4) and raster.dtype == np.uint8
    colours = {k: [int(figures_maps.KIND_COLOURS[k][i:i + 2], 16) for i in (1, 3, 5)] for k in (0, 1)}
    drawn = np.zeros((40, 60), dtype=bool)
    for (l, h), th in thumbs.items():
        for (x, y), k in zip(th.xy, th.kind):
            r, c = l * px + int((0.5 - y) * px), h * px + int((x + 0.5) * px)
            assert (raster[r, c, :3] != np.rint(np.array(figures_maps._rgb(figures_maps.CELL_BACKGROUND)) * 255)).any()
            drawn[r, c] = True
    # a pixel only queries cover has the query colour; an empty pixel is transparent
    q_only = np.zeros((40, 60), dtype=bool)
    for (l, h), th in thumbs.items():
        k0 = th.kind == 0
        q_only[l * px + ((0.5 - th.xy[k0, 1]) * px).astype(int), h * px + ((th.xy[k0, 0] + 0.5) * px).astype(int)] = True
    one = np.zeros((2, 40, 60), dtype=int)
    for (l, h), th in thumbs.items():
        for k in (0, 1):
            m = th.kind == k
            for dr, dc in figures_maps.DOT_OFFSETS:
                r = ((0.5 - th.xy[m, 1]) * px).astype(int) + dr
                c = ((th.xy[m, 0] + 0.5) * px).astype(int) + dc
                ok = (r >= 0) & (r < px) & (c >= 0) & (c < px)
                np.add.at(one[k], (l * px + r[ok], h * px + c[ok]), 1)
    bg = np.array(figures_maps._rgb(figures_maps.CELL_BACKGROUND))
    gap = figures_maps.CELL_GAP_PX
    inside = np.zeros((40, 60), dtype=bool)
    for l in range(2):
        for h in range(3):
            inside[l * px + gap: (l + 1) * px - gap, h * px + gap: (h + 1) * px - gap] = True

    def over(colour, n):  # n points of one colour over the opaque background
        a = 1 - 0.3 ** n
        return np.rint((np.array(colour) / 255 * a + bg * (1 - a)) * 255)

    only_q = (one[0] == 1) & (one[1] == 0) & inside
    assert only_q.any()
    assert (raster[only_q, :3] == over(colours[0], 1)).all() and (raster[only_q, 3] == 255).all()
    only_k = (one[1] == 2) & (one[0] == 0) & inside
    if only_k.any():
        assert (raster[only_k, :3] == over(colours[1], 2)).all()
    empty = (one[0] == 0) & (one[1] == 0)
    assert (raster[empty & inside] == [*np.rint(bg * 255), 255]).all()  # the cell's background
    assert (raster[empty & ~inside] == 0).all()  # the gaps between cells are transparent

    source = figures_maps.matrix_source(thumbs, 2, 3, cell_px=px)
    from PIL import Image  # noqa: PLC0415
    import base64, io  # noqa: E401, PLC0415

    png = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
    assert png.mode == "P" and png.size == (60, 40)
    assert (np.asarray(png.convert("RGBA")) == raster).all()  # the PNG is the raster, transparency included
    fig = figures_maps.matrix(source, 2, 3, selected=(1, 2), cell_px=px)
    image = fig.data[0]
    assert image.type == "image" and image.source == source
    assert image.x0 - image.dx / 2 == pytest.approx(-0.5) and image.y0 - image.dy / 2 == pytest.approx(-0.5)
    assert image.dx * px == pytest.approx(1.0) and image.dy * px == pytest.approx(1.0)
    assert [t.name for t in fig.data[1:]] == ["queries", "keys"]  # legend entries
    assert not any(t.type == "scattergl" for t in fig.data)  # no WebGL context for the overview
    assert fig.layout.shapes[0].x0 == 1.5 and fig.layout.shapes[0].y0 == 0.5
