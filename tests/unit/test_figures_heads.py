"""The all-heads view's maths and figure (backend.figures_heads): bins, thumbnails, top keys, mosaic, clicks."""

from __future__ import annotations

import numpy as np
import pytest

from backend import figures_heads as fh


def _patterns(rng: np.random.Generator, heads: int, n: int, causal: bool = True) -> np.ndarray:
    pat = rng.random((heads, n, n))
    if causal:
        pat = np.tril(pat)
    return pat / pat.sum(-1, keepdims=True)


def test_position_bins_are_consecutive_and_even() -> None:
    assert fh.position_bins(5, 2) == [[0, 1, 2], [3, 4]]
    assert fh.position_bins(3, 32) == [[0], [1], [2]]
    bins = fh.position_bins(512, 32)
    assert len(bins) == 32 and all(len(b) == 16 for b in bins)
    assert [i for b in fh.position_bins(70, 32) for i in b] == list(range(70))
    assert fh.position_bins(0) == []


def test_thumbnail_equals_direct_block_computation() -> None:
    rng = np.random.default_rng(1)
    pat = _patterns(rng, 3, 7)
    bins = fh.position_bins(7, 3)  # [[0, 1, 2], [3, 4], [5, 6]]
    th = fh.thumbnails(pat, bins)
    assert th.shape == (3, 3, 3) and th.dtype == np.float32
    for h in range(3):
        for a, qa in enumerate(bins):
            for b, kb in enumerate(bins):
                direct = np.mean([sum(pat[h, q, k] for k in kb) for q in qa])
                assert th[h, a, b] == pytest.approx(direct, abs=1e-6)
    np.testing.assert_allclose(th.sum(-1), 1.0, atol=1e-6)  # rows still sum to 1
    # causal: the first query bin cannot see the last key bin
    assert th[:, 0, 2].max() == 0.0


def test_thumbnail_of_one_query_sums_keys_per_bin() -> None:
    rng = np.random.default_rng(2)
    pat = _patterns(rng, 2, 6)
    bins = fh.position_bins(6, 4)  # [[0, 1], [2, 3], [4], [5]]
    strip = fh.thumbnails(pat, bins, query=5)
    assert strip.shape == (2, 4)
    np.testing.assert_allclose(strip[:, 0], pat[:, 5, 0] + pat[:, 5, 1], atol=1e-6)
    np.testing.assert_allclose(strip[:, 3], pat[:, 5, 5], atol=1e-6)
    # short prompts are not binned: the strip is the row itself
    np.testing.assert_allclose(fh.thumbnails(pat, fh.position_bins(6), query=3), pat[:, 3], atol=1e-6)


def test_top_keys() -> None:
    pat = np.zeros((2, 3, 3))
    pat[0] = [[1, 0, 0], [0.9, 0.1, 0], [0.2, 0.3, 0.5]]  # a first-token sink: mean received 0.7 at key 0
    pat[1] = [[1, 0, 0], [0, 1, 0], [0, 0.6, 0.4]]        # previous/self: mean received (1/3, 1.6/3, 0.4/3)
    top, w = fh.top_keys(pat)
    assert top.tolist() == [0, 1]
    np.testing.assert_allclose(w, [0.7, 1.6 / 3])
    top, w = fh.top_keys(pat, query=2)
    assert top.tolist() == [2, 1] and w.tolist() == [0.5, 0.6]


def test_mosaic_places_cells_and_scales_per_head() -> None:
    thumbs = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4) / 100
    z = fh.mosaic(thumbs)
    assert z.shape == (8, 12)
    np.testing.assert_array_equal(z[4:8, 8:12], thumbs[1, 2])
    np.testing.assert_array_equal(z[0:4, 4:8], thumbs[0, 1])
    zh = fh.mosaic(thumbs, scale="head")
    np.testing.assert_allclose(zh[4:8, 8:12], thumbs[1, 2] / thumbs[1, 2].max())
    assert zh.max() == pytest.approx(1.0)
    assert fh.quantise(np.array([0.0, 0.25, 0.5, 1.0]), 0.5).tolist() == [0, 128, 255, 255]


def test_grid_figure_hover_and_click_cells() -> None:
    rng = np.random.default_rng(3)
    layers = [_patterns(rng, 9, 40) for _ in range(30)]
    bins = fh.position_bins(40)
    thumbs = np.stack([fh.thumbnails(p, bins) for p in layers])
    assert thumbs.shape == (30, 9, 32, 32)
    tops = np.stack([fh.top_keys(p)[0] for p in layers])
    ws = np.stack([fh.top_keys(p)[1] for p in layers])
    tokens = [f"t{i}" for i in range(40)]
    hover = fh.hover_texts(tokens, tops, ws)
    assert hover[4][7].startswith(f"layer 4 head 7<br>top key {tops[4, 7]}:t{tops[4, 7]}")
    fig = fh.heads_grid(thumbs, hover, title="x")
    mosaic_trace, cells = fig.data
    assert cells.z.shape == (30, 9) and cells.text[4][7] == hover[4][7]
    # the cell (layer 4, head 7) is centred on x = 7, y = 4
    assert mosaic_trace.z.shape == (30 * 32, 9 * 32) and mosaic_trace.z.dtype == np.uint8
    x_first = mosaic_trace.x0 + (7 * 32) * mosaic_trace.dx
    x_last = mosaic_trace.x0 + (7 * 32 + 31) * mosaic_trace.dx
    assert (x_first + x_last) / 2 == pytest.approx(7.0)
    assert x_first - mosaic_trace.dx / 2 == pytest.approx(6.5)  # the cell's pixels fill [6.5, 7.5]
    y_first = mosaic_trace.y0 + (4 * 32) * mosaic_trace.dy
    y_last = mosaic_trace.y0 + (4 * 32 + 31) * mosaic_trace.dy
    assert (y_first + y_last) / 2 == pytest.approx(4.0)
    assert fh.cell_of(x_first, y_last, 30, 9) == (4, 7)
    assert fh.cell_of(9.2, 0, 30, 9) is None
    strip = fh.heads_grid(np.stack([fh.thumbnails(p, bins, query=39) for p in layers]))
    assert strip.data[0].z.shape == (30, 9 * 32)
