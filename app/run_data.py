"""View data of the run page: what the token view needs of a finished run (tokens, shape, kind, array names)
and one head's pattern."""

from __future__ import annotations

from typing import Any

import numpy as np

from app import state


def load_info(run_id: str) -> dict[str, Any]:
    """Tokens per prompt, layer and head counts, input kind, the run's array names and its notices (small)."""
    m = state.done_manifest(run_id)
    mi = m["info"] or {}
    return {"tokens": mi.get("tokens", []), "n_layers": mi.get("n_layers"), "n_heads": mi.get("n_heads"),
            "kind": mi.get("kind", "text"), "sizes": sorted(m.get("sizes") or {}),
            "notices": mi.get("notices", [])}


def pattern(run_id: str, prompt: Any, layer: Any, head: Any, wait_s: float = 0.0) -> tuple[list[str], np.ndarray]:
    """Tokens and the ``[query, key]`` pattern of one head for one prompt (validated indices); computed on request
    for text runs (``state.PatternPending`` until it is there, after waiting up to ``wait_s`` seconds)."""
    return state.pattern(run_id, prompt, layer, head, wait_s)
