"""The token view's figures at long prompts (backend.figures): a windowed heatmap and the strongest-edge lines."""

from __future__ import annotations

import numpy as np
import pytest

from backend import figures


def _causal(n: int, seed: int = 0) -> np.ndarray:
    pat = np.tril(np.random.default_rng(seed).random((n, n)))
    return pat / pat.sum(-1, keepdims=True)


@pytest.mark.parametrize("n, centre, bounds", [(512, 300, (276, 324)), (512, 3, (0, 48)), (512, 511, (464, 512)),
                                               (30, 7, (0, 30)), (48, 40, (0, 48)), (49, 48, (1, 49))])
def test_window_bounds(n, centre, bounds) -> None:
    assert figures.window_bounds(n, centre) == bounds


def test_heatmap_of_512_tokens_is_a_window_of_rows_with_every_key() -> None:
    n, q = 512, 300
    pat = _causal(n)
    tokens = [f"t{i}" for i in range(n)]
    fig = figures.pattern_heatmap(tokens, pat, query=q, window=figures.WINDOW)
    hm = fig.data[0]
    assert hm.z.shape == (48, 512)
    np.testing.assert_array_equal(hm.z, pat[276:324].astype(np.float32))  # exact rows, every key
    assert list(hm.y) == [f"{i}:t{i}" for i in range(276, 324)] and len(hm.x) == 512
    assert tuple(fig.layout.xaxis.range) == (275.5, 323.5) and fig.layout.dragmode == "pan"
    assert fig.layout.shapes[0].y0 == pytest.approx(q - 276 - 0.5)  # the chosen query's row is outlined
    assert fig.layout.height <= 900
    # a short prompt is drawn whole, as before
    small = figures.pattern_heatmap(tokens[:20], _causal(20), query=5, window=figures.WINDOW)
    assert small.data[0].z.shape == (20, 20) and small.layout.xaxis.range is None


def test_lines_keep_the_strongest_edges_of_the_query() -> None:
    n, q = 512, 400
    pat = _causal(n, 1)
    fig = figures.attention_lines([f"t{i}" for i in range(n)], pat, query=q, max_lines=24)
    edges = [t for t in fig.data if t.mode == "lines"]
    assert len(edges) == 24
    strongest = set(np.argsort(-pat[q])[:24].tolist())
    assert {int(t.text.split("→ t")[1].split(":")[0]) for t in edges} == strongest
    assert fig.layout.height < 1000
