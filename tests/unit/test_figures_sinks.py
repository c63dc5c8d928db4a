"""The sink-view figure builders: pure arrays in, figures out (no Redis, no Dash)."""

from __future__ import annotations

import numpy as np
import pytest

from backend import figures_sinks as fs


def test_head_grid_axes_follow_layer_and_head() -> None:
    grid = np.zeros((3, 5))
    grid[1, 4] = 0.9  # layer 1, head 4
    fig = fs.head_grid(grid, "sink_first")
    hm = fig.data[0]
    z = np.asarray(hm.z)
    assert z.shape == (3, 5) and z.dtype == np.float32
    assert list(hm.x) == list(range(5)) and list(hm.y) == list(range(3))  # clickData: x = head, y = layer
    assert z[1, 4] == pytest.approx(0.9)
    assert len(fig.layout.shapes) == 1  # one path outlines every head above eps = 0.3: here only (1, 4)
    assert fig.layout.shapes[0].path == "M3.5,0.5H4.5V1.5H3.5Z"
    assert "layer %{y} head %{x}" in hm.hovertemplate


def test_head_grid_handles_unseen_layers_and_large_models() -> None:
    grid = np.full((32, 32), 0.5)
    grid[3] = np.nan
    fig = fs.head_grid(grid, "entropy")
    assert fig.data[0].texttemplate is None and len(fig.layout.shapes) == 0  # no per-cell text at 1024 cells


def test_cell_outline_path_one_rectangle_per_cell() -> None:
    mask = np.zeros((30, 9), bool)
    assert fs.cell_outline_path(mask) == ""
    mask[0, 0] = mask[29, 8] = True
    assert fs.cell_outline_path(mask) == "M-0.5,-0.5H0.5V0.5H-0.5ZM7.5,28.5H8.5V29.5H7.5Z"
    fig = fs.head_grid(np.full((30, 9), 0.9), "sink_first")  # SmolLM2's shape, every head a sink
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].path.count("Z") == 270


def test_diff_grid_is_b_minus_a_and_needs_equal_shapes() -> None:
    a, b = np.full((2, 3), 0.2), np.full((2, 3), 0.5)
    d = np.asarray(fs.diff_grid(a, b, "sink_first").data[0].z)
    np.testing.assert_allclose(d, 0.3, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        fs.diff_grid(a, np.zeros((3, 3)), "sink_first")


def test_received_and_massive_heatmaps() -> None:
    toks = ["[CLS]", "the", "the", "[SEP]"]
    fig = fs.received_heatmap(toks, np.random.rand(2, 4), ["H0", "H1"], "t")
    assert list(fig.data[0].x) == ["0:[CLS]", "1:the", "2:the", "3:[SEP]"]  # repeated tokens stay apart
    with pytest.raises(ValueError):
        fs.received_heatmap(toks, np.random.rand(2, 3), ["H0", "H1"])
    top = np.array([[300.0, 1, 2, 1], [5.0, 1, 2, 1]])
    dims = np.array([[7, 0, 1, 2], [3, 3, 3, 3]])
    fig = fs.massive_heatmap(toks, top, dims, np.array([1500.0, np.nan]))
    assert list(fig.data[0].y) == ["L0 (1,500x median)", "L1"]
    assert np.asarray(fig.data[0].customdata)[0, 0] == 7


def test_running_perplexity_and_streaming_curves() -> None:
    nll = np.array([1.0, 3.0, 2.0])
    np.testing.assert_allclose(fs.running_perplexity(nll), np.exp([1.0, 2.0, 2.0]))
    fig = fs.streaming_curves(nll, nll + 1, nll, window_size=2, sinks=1)
    assert len(fig.data) == 3 and fig.layout.yaxis.type == "log"
