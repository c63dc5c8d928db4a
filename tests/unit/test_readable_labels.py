"""Readable tokens on the pages beyond the token view: the query-key maps' hovers (app.maps_data)."""

from __future__ import annotations

from app import maps_data
from backend import token_text


def test_map_hovers_show_readable_tokens() -> None:
    raw = ["<|im_start|>", "The", "Ġcat", "Ċ", "def"]
    run = maps_data.MapRun(n_layers=1, n_heads=1, methods=("umap",), image=False, tokens=[raw],
                           shown=[token_text.labels(raw)])
    hover = maps_data.hover_text(run, 0, 0, 2)
    assert "' cat'" in hover and "Ġ" not in hover and "Ċ" not in hover
    assert hover.endswith("&lt;|im_start|&gt; The [ cat] ↵ def")
    assert run.label(0, 3) == "↵"
    image = maps_data.MapRun(n_layers=1, n_heads=1, methods=("umap",), image=True, tokens=[["[CLS]", "p0"]],
                             shown=[["[CLS]", "p0"]])
    assert "p0" in maps_data.hover_text(image, 1, 0, 1)
