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
    fig = fs.streaming_curves(nll, nll + 1, nll, window_size=2, sinks=1)  # W + k = 3 >= 3 predictions: no eviction
    assert len(fig.data) == 3 and fig.layout.yaxis.type == "log"
    assert list(fig.data[0].x) == [1, 2, 3]  # nothing evicted: every prediction shown


def test_streaming_scores_only_tokens_after_the_first_eviction() -> None:
    """Perplexity and curves start at query t = W + k, the first one whose window + sinks cache evicted a token:
    a high NLL before it (the first tokens, seen whole by every setting) must not change the numbers, each
    curve must end at the reported perplexity, and the y axis must span the curves."""
    rng = np.random.default_rng(0)
    w, k, n = 8, 2, 60
    full = rng.uniform(1.0, 2.0, n)
    window, sink = full + 1.5, full + 0.3
    for arr in (full, window, sink):
        arr[: w + k] = 9.0  # early tokens: large NLL, identical context in all three settings
    ppl = fs.streaming_perplexity(full, window, sink, w, k)
    assert ppl["first"] == w + k + 1 and ppl["n"] == n - w - k
    for name, arr in (("full", full), ("window", window), ("sink", sink)):
        assert ppl[name] == pytest.approx(np.exp(arr[w + k:].mean()))
    assert ppl["full"] < ppl["sink"] < ppl["window"] < np.exp(3.6)  # 9.0 nats (8,100) would dominate otherwise
    fig = fs.streaming_curves(full, window, sink, w, k)
    for trace, name in zip(fig.data, ("full", "window", "sink")):
        assert trace.x[0] == w + k + 1 and trace.x[-1] == n
        assert float(trace.y[-1]) == pytest.approx(ppl[name], rel=1e-5)
    lo, hi = (10 ** v for v in fig.layout.yaxis.range)
    ys = np.concatenate([np.asarray(t.y, dtype=np.float64) for t in fig.data])
    assert lo <= ys.min() and ys.max() <= hi and hi / lo < 3 * ys.max() / ys.min()
    assert list(fig.layout.xaxis.range) == [w + k + 1, n]
    short = fs.streaming_perplexity(full[:5], window[:5], sink[:5], w, k)  # never evicts
    assert short["n"] == 0 and np.isnan(short["full"])


def test_cell_numbers_on_small_grids_only() -> None:
    """MiniLM's 6 x 12 grid prints its numbers; SmolLM2's 30 x 9 gives them on hover (the browser measures every
    cell's text) and keeps its sink outlines."""
    from backend import figures_importance as fi
    from backend.figures import CELL_TEXT_MAX_CELLS

    assert 72 <= CELL_TEXT_MAX_CELLS < 270
    assert fs.head_grid(np.full((6, 12), 0.5), "sink_first").data[0].texttemplate == "%{z:.2f}"
    big = fs.head_grid(np.full((30, 9), 0.9), "sink_first")
    assert big.data[0].texttemplate is None and "%{z:.4f}" in big.data[0].hovertemplate
    assert len(big.layout.shapes) == 1
    assert fi.importance_grid(np.ones((6, 12)), False).data[0].texttemplate == "%{z:.2g}"
    assert fi.importance_grid(np.ones((30, 9)), False).data[0].texttemplate is None


def test_figures_let_tick_labels_pass_the_edge() -> None:
    """Every figure's template allows tick labels past the graph's edge, so plotly.js does not measure each one to
    hide it (its default on linear axes)."""
    from backend import figures, figures_importance as fi, figures_maps

    figs = [fs.head_grid(np.full((6, 12), 0.5), "entropy"), fi.importance_grid(np.ones((6, 12)), False),
            figures.attention_row(["a", "b", "c"], np.array([0.2, 0.3, 0.5]), 1),
            figures_maps.matrix("data:image/png;base64,", 2, 3)]
    for fig in figs:
        for axis in (fig.layout.template.layout.xaxis, fig.layout.template.layout.yaxis):
            assert axis.ticklabeloverflow == "allow"
        assert fig.layout.template.layout.paper_bgcolor == "white"  # plotly_white underneath
        assert all(t.colorbar.ticklabeloverflow == "allow" for t in fig.layout.template.data.heatmap)
        # no axis-title standoff: with one, plotly.js measures every tick label to place the title
        assert "standoff" not in fig.to_plotly_json()["layout"]["template"]["layout"]["xaxis"].get("title", {})


def test_layer_head_grids_measure_no_tick_labels_and_figures_get_the_template_free() -> None:
    """Grids of heads draw without automargin (their short labels fit the margins, and plotly.js measures every tick
    label to grow them); the template is plotly's default here, so a figure gets it without validating a copy."""
    import plotly.graph_objects as go
    import plotly.io as pio

    from backend import figures, figures_atlas, figures_heads, figures_importance as fi

    assert pio.templates.default == figures.TEMPLATE_NAME
    assert go.Figure().layout.template.layout.xaxis.ticklabeloverflow == "allow"
    dom = np.zeros((6, 12), dtype=np.int32)
    grids = [fs.head_grid(np.full((6, 12), 0.5), "entropy"), fi.importance_grid(np.ones((6, 12)), False),
             figures_atlas.role_grid(dom, {}), figures_atlas.compare_grids(dom, dom, {}, {}),
             figures_heads.heads_grid(np.zeros((6, 12, 4, 4)))]
    for fig in grids:
        axes = [v for k, v in fig.to_plotly_json()["layout"].items() if k.startswith(("xaxis", "yaxis"))]
        assert axes and all(a.get("automargin") is False for a in axes)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
@pytest.mark.parametrize("shared", [False, True])
def test_a_row_of_plots_is_laid_out_as_make_subplots(n: int, shared: bool) -> None:
    """backend.figures.row_of_plots builds in one layout what make_subplots(rows=1) builds step by step: the same
    axis domains and anchors, shared y axes matched, and the same subplot titles."""
    from plotly.subplots import make_subplots

    from backend.figures import row_of_plots

    titles = [f"plot {i}" for i in range(n)]
    spacing = 0.2 / n
    ours, refs = row_of_plots(titles, spacing, shared_y=shared)
    want = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=spacing, shared_yaxes=shared)
    for i in range(n):
        k = "" if i == 0 else str(i + 1)
        for axis in (f"xaxis{k}", f"yaxis{k}"):
            np.testing.assert_allclose(ours.layout[axis].domain, want.layout[axis].domain, atol=1e-9)
            assert ours.layout[axis].anchor == want.layout[axis].anchor
        assert ours.layout[f"yaxis{k}"].matches == want.layout[f"yaxis{k}"].matches
        assert refs[i] == {"xaxis": f"x{k}", "yaxis": f"y{k}"}
    got_titles = [(a.text, round(a.x, 9), a.y, a.xref, a.yref) for a in ours.layout.annotations]
    assert got_titles == [(a.text, round(a.x, 9), a.y, a.xref, a.yref) for a in want.layout.annotations]
