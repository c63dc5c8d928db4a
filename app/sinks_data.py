"""View data of the attention-sinks page: tokens, shape, array names and every ``metrics.*`` value of a run."""

from __future__ import annotations

from typing import Any

from app import state


def load_info(run_id: str) -> dict[str, Any]:
    """What the page needs of a finished run (small): tokens, shape, array names, every metrics.* value."""
    m = state.done_manifest(run_id)
    info = m["info"] or {}
    sizes = sorted(m.get("sizes") or {})
    metrics = state.metrics(run_id)[0] if any(s.startswith("metrics.") for s in sizes) else {}
    return {"tokens": info.get("tokens", []), "n_layers": info["n_layers"], "n_heads": info["n_heads"],
            "causal": info.get("causal"), "sizes": sizes, "metrics": metrics,
            "model": (m.get("model") or {}).get("ref")}
