"""View data of the attention-sinks page: tokens, shape, array names and every ``metrics.*`` value of a run; the
sink rate, attention received, massive activations and StreamingLLM curves it draws."""

from __future__ import annotations

from typing import Any

import numpy as np

from app import state
from backend import jobs, names


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


def sink_summary(run_id: str, eps: Any, rule: Any) -> dict[str, Any]:
    """The sink rate at ``eps`` by ``rule`` from the stored per-prompt alpha (:func:`app.state.sink_summary`)."""
    return state.sink_summary(run_id, eps, rule)


def received_rows(run_id: str, prompt: int, layer: int | str, n_layers: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Tokens, ``[rows, T]`` attention received and row labels for one layer or all layers."""
    if layer == "all":
        parts, tokens = [], []
        for l in range(n_layers):
            tokens, rec = state.received(run_id, prompt, l)
            parts.append(np.asarray(rec))
        h = parts[0].shape[0]
        return tokens, np.concatenate(parts, axis=0), [f"L{l} H{i}" for l in range(n_layers) for i in range(h)]
    tokens, rec = state.received(run_id, prompt, layer)
    return tokens, np.asarray(rec), [f"H{i}" for i in range(rec.shape[0])]


def massive_arrays(run_id: str, prompt: int, n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest |activation| per token after each block and its dimension: ``[L, T]``, ``[L, T]``."""
    top = [state.load_array(run_id, names.resid_absmax(prompt, l)) for l in range(n_layers)]
    dims = [state.load_array(run_id, names.resid_absmax_dim(prompt, l)) for l in range(n_layers)]
    return np.stack(top), np.stack(dims)


def streaming_arrays(run_id: str, sizes: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """The StreamingLLM experiment's NLL curves and ``params`` (window, sinks), and whether the sink positions
    were re-assigned within the cache (False for runs stored before that array existed)."""
    arr = {k: state.load_array(run_id, names.streaming(k)) for k in ("nll_full", "nll_window", "nll_sink", "params")}
    reassigned = (bool(int(state.load_array(run_id, names.streaming("reassigned"))))
                  if names.streaming("reassigned") in sizes else False)
    return arr, reassigned


def gate_analysis(run_id: str) -> str | None:
    """The analysis the page waits for: sink metrics, unless the run has the StreamingLLM experiment, whose card
    this page draws without them (the grid card stays hidden until metrics are added)."""
    try:
        m = state.run_status(run_id)
    except state.REDIS_ERRORS:
        m = None
    return None if m and "streaming" in jobs.run_analyses(m) else "metrics"
