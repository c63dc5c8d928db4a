"""View data of the attention-sinks page: tokens, shape, array names and every ``metrics.*`` value of a run."""

from __future__ import annotations

from typing import Any

from app import state
from backend import names


def load_info(run_id: str) -> dict[str, Any]:
    """What the page needs of a finished run (small): tokens, shape, array names, every metrics.* value."""
    m = state.done_manifest(run_id)
    info = m["info"] or {}
    all_sizes = m.get("sizes") or {}
    metrics = state.metrics(run_id)[0] if any(s.startswith("metrics.") for s in all_sizes) else {}
    # only the names the page asks about: the store goes back to the server with every callback that reads it,
    # and a run's full list holds thousands of per-layer names
    wanted = {names.resid_absmax(p, 0) for p in range(len(info.get("tokens") or []))}
    first_prompt = next((s for s in sorted(all_sizes) if s.startswith("prompt.")), None)
    sizes = sorted(s for s in all_sizes if s.startswith("streaming.") or s in wanted or s == first_prompt)
    return {"tokens": info.get("tokens", []), "n_layers": info["n_layers"], "n_heads": info["n_heads"],
            "causal": info.get("causal"), "sizes": sizes, "metrics": metrics,
            "model": (m.get("model") or {}).get("ref")}
