"""View data of the all-heads page: the run's shape and tokens, and one prompt's thumbnails of every head.

A text run stores each prompt's thumbnails and top keys (``backend.engine.grid_reducer``): the whole-pattern view
reads them as they are. A query token's strips and merged words need the full patterns: those are computed on
request (``backend.pattern_jobs``, one job per layer, all submitted at once; ``PatternPending`` until every layer
is there) or read from runs that stored them, one layer at a time (a 512-token prompt of SmolLM2 is 9 MB a
layer), and shrunk at once to ``backend.figures_heads.MAX_BINS`` positions. Grids are memoised per (run, prompt,
token, words), since a run's arrays never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app import state
from app.memo import LRU
from backend import figures_heads, names, pattern_jobs, token_text


def load_info(run_id: str) -> dict[str, Any]:
    """What the page needs of a finished run (small): tokens, shape, the prompts whose patterns are stored."""
    m = state.done_manifest(run_id)
    info = m["info"] or {}
    sizes = m.get("sizes") or {}
    tokens = info.get("tokens", [])
    stored = [p for p in range(len(tokens)) if names.attn_pattern(p, 0) in sizes or names.attn_thumbs(p) in sizes]
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
    or a prompt of an old run whose patterns were too long to store; NotReady while evicted arrays are
    recomputed; PatternPending while full patterns are computed on request."""
    m = state.done_manifest(run_id)
    info = m["info"]
    sizes = m.get("sizes") or {}
    p = state.check_index("prompt", prompt, len(info["tokens"]))
    full, thumbs = names.attn_pattern(p, 0) in sizes, names.attn_thumbs(p) in sizes
    if not full and not thumbs:
        raise state.ViewError(f"prompt {p + 1} is too long for its full patterns to be stored (ATLAS_MAX_PATTERN_TOKENS, "
                              "ATLAS_MAX_PATTERN_MB); the sinks page and per-head metrics still cover it")
    raw = info["tokens"][p]
    groups = token_text.word_groups(raw) if words else [[i] for i in range(len(raw))]
    shown = token_text.word_text(raw, groups) if words else token_text.readable_tokens(raw)
    if token is not None:
        token = state.check_index("token", token, len(shown))
    if thumbs and token is None and not words:
        return _GRIDS.get((run_id, p, token, words), lambda: _from_thumbs(run_id, p, groups, shown))
    return _GRIDS.get((run_id, p, token, words),
                      lambda: _build(run_id, p, info["n_layers"], groups, shown, token, words, full))


def _require_patterns(run_id: str, p: int, n_layers: int) -> None:
    """Ask for every layer's pattern of prompt ``p`` at once; PatternPending until all are computed (ViewError if
    one failed)."""
    done, failed, first = 0, None, None
    for layer in range(n_layers):
        _, rec = pattern_jobs.submit_pattern(state.cache(), state.settings(), run_id, p, layer)
        if rec.get("status") == "done":
            done += 1
        elif rec.get("status") == "failed":
            failed = failed or (layer, rec)
        else:
            first = first or rec
    if failed is not None:
        raise state.ViewError(f"computing layer {failed[0]} of prompt {p + 1} failed: {failed[1].get('error')}")
    if done < n_layers:
        raise state.PatternPending(f"computing the full patterns of prompt {p + 1} for this view: {done} of "
                                   f"{n_layers} layers done…", first or {})


def _from_thumbs(run_id: str, p: int, groups: list[list[int]], shown: list[str]) -> HeadsGrid:
    thumbs, top, weight = state.load_arrays(run_id, [names.attn_thumbs(p), names.attn_top_key(p),
                                                     names.attn_top_weight(p)])
    return HeadsGrid(np.asarray(thumbs, dtype=np.float32), np.asarray(top, dtype=np.int64),
                     np.asarray(weight, dtype=np.float64), [token_text.one_line(t) for t in shown],
                     max(len(b) for b in figures_heads.position_bins(len(groups))))


def _build(run_id: str, p: int, n_layers: int, groups: list[list[int]], shown: list[str], token: int | None,
           words: bool, stored: bool) -> HeadsGrid:
    """The grid from every layer's full patterns: as ``stored`` by an old run, else computed on request (all
    layers asked for at once; PatternPending until every one is there, and nothing is memoised meanwhile)."""
    if not stored:
        _require_patterns(run_id, p, n_layers)
    bins = figures_heads.position_bins(len(groups))
    thumbs, tops, weights = [], [], []
    for layer in range(n_layers):
        pat = np.asarray(state.layer_patterns(run_id, p, layer)[1])
        if words:
            pat = token_text.merge_words(pat, groups)
        thumbs.append(figures_heads.thumbnails(pat, bins, token))
        top, weight = figures_heads.top_keys(pat, token)
        tops.append(top)
        weights.append(weight)
    return HeadsGrid(np.stack(thumbs), np.stack(tops), np.stack(weights), [token_text.one_line(t) for t in shown],
                     max(len(b) for b in bins))
