"""View data of the run page: what the token view needs of a finished run (tokens, shape, kind, array names)."""

from __future__ import annotations

from typing import Any

from app import state


def load_info(run_id: str) -> dict[str, Any]:
    """Tokens per prompt, layer and head counts, input kind, the run's array names and its notices (small)."""
    m = state.done_manifest(run_id)
    mi = m["info"] or {}
    return {"tokens": mi.get("tokens", []), "n_layers": mi.get("n_layers"), "n_heads": mi.get("n_heads"),
            "kind": mi.get("kind", "text"), "sizes": sorted(m.get("sizes") or {}),
            "notices": mi.get("notices", [])}
