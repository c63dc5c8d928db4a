"""View data of the all-heads page: the run's shape and tokens, and one prompt's thumbnails of every head.

The patterns are read one layer at a time (a 512-token prompt of SmolLM2 is 9 MB a layer) and shrunk at once to
``backend.figures_heads.MAX_BINS`` positions; the result is memoised per (run, prompt, token, words), since a
run's arrays never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app import state
from app.memo import LRU
from backend import figures_heads, names, token_text


def load_info(run_id: str) -> dict[str, Any]:
    """What the page needs of a finished run (small): tokens, shape, the prompts whose patterns are stored."""
    m = state.done_manifest(run_id)
    info = m["info"] or {}
    sizes = m.get("sizes") or {}
    tokens = info.get("tokens", [])
    stored = [p for p in range(len(tokens)) if names.attn_pattern(p, 0) in sizes]
    return {"tokens": tokens, "n_layers": info["n_layers"], "n_heads": info["n_heads"], "stored": stored,
            "model": (m.get("model") or {}).get("ref"), "kind": info.get("kind", "text")}


@dataclass(frozen=True)
class HeadsGrid:
    """One prompt's model view: ``thumbs [L, H, bins, bins]`` (or ``[L, H, bins]`` for one query token), the
    most-attended key of each head at full resolution (``top [L, H]`` positions, ``weight [L, H]``), the labels of
    the positions (words when merged) and how many positions each thumbnail bin holds at most."""

    thumbs: np.ndarray
    top: np.ndarray
    weight: np.ndarray
    labels: list[str]
    per_bin: int


_GRIDS: LRU[HeadsGrid] = LRU(16)


def grid(run_id: str, prompt: Any, token: int | None = None, words: bool = False) -> HeadsGrid:
    """Every head's thumbnail for ``prompt`` (and ``token``: its row only). ViewError for a bad prompt or token
    or a prompt whose patterns were too long to store; NotReady while evicted arrays are recomputed."""
    m = state.done_manifest(run_id)
    info = m["info"]
    p = state.check_index("prompt", prompt, len(info["tokens"]))
    if names.attn_pattern(p, 0) not in (m.get("sizes") or {}):
        raise state.ViewError(f"prompt {p + 1} is too long for its full patterns to be stored (ATLAS_MAX_PATTERN_TOKENS, "
                              "ATLAS_MAX_PATTERN_MB); the sinks page and per-head metrics still cover it")
    raw = info["tokens"][p]
    groups = token_text.word_groups(raw) if words else [[i] for i in range(len(raw))]
    shown = token_text.word_text(raw, groups) if words else token_text.readable_tokens(raw)
    if token is not None:
        token = state.check_index("token", token, len(shown))
    return _GRIDS.get((run_id, p, token, words),
                      lambda: _build(run_id, p, info["n_layers"], groups, shown, token, words))


def _build(run_id: str, p: int, n_layers: int, groups: list[list[int]], shown: list[str], token: int | None,
           words: bool) -> HeadsGrid:
    bins = figures_heads.position_bins(len(groups))
    thumbs, tops, weights = [], [], []
    for layer in range(n_layers):
        pat = np.asarray(state.load_array(run_id, names.attn_pattern(p, layer)))
        if words:
            pat = token_text.merge_words(pat, groups)
        thumbs.append(figures_heads.thumbnails(pat, bins, token))
        top, weight = figures_heads.top_keys(pat, token)
        tops.append(top)
        weights.append(weight)
    return HeadsGrid(np.stack(thumbs), np.stack(tops), np.stack(weights), [token_text.one_line(t) for t in shown],
                     max(len(b) for b in bins))
