"""View data of the head-importance page: importance grids (``"{rule}.{scale}"``: the run's importance rule and,
from engine 5, the other rule too), pruning curves, the objective and the prompts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from app import state
from backend import names
from backend.spec import IMPORTANCE_RULES

CURVE_KEYS = ("fractions", "loss", "perplexity", "accuracy", "loss_std", "perplexity_std", "accuracy_std")


def _json_meta(arr: np.ndarray) -> dict[str, Any]:
    return json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode())


def load_info(run_id: str) -> dict[str, Any]:
    """What the page needs of a finished run: shape, importance grids, curves, the objective, prompts."""
    m = state.done_manifest(run_id)
    info = m["info"] or {}
    sizes = set(m.get("sizes") or {})
    if names.metric("importance") not in sizes:
        raise state.ViewError("this run has no head importance: submit it with the 'importance' analysis")
    meta = _json_meta(state.load_array(run_id, names.IMPORTANCE_META)) if names.IMPORTANCE_META in sizes else {}
    run_rule = meta.get("importance_rule", "per_example")  # runs before engine 5 had the per-example rule only
    grids = {f"{run_rule}.raw": state.load_array(run_id, names.metric("importance")),
             f"{run_rule}.normalised": state.load_array(run_id, names.metric("importance_normalised"))}
    for rule in IMPORTANCE_RULES:  # the other rule's raw scores, from the same pass (engine 5 and later)
        name = names.metric(f"importance_{rule}")
        if rule != run_rule and name in sizes:
            raw = np.asarray(state.load_array(run_id, name), dtype=np.float64)
            grids[f"{rule}.raw"] = raw
            grids[f"{rule}.normalised"] = raw / (np.linalg.norm(raw, axis=1, keepdims=True) + 1e-20)
    curves: dict[str, dict[str, Any]] = {}
    for order in names.PRUNING_ORDERS:
        c = {k: state.load_array(run_id, names.pruning(order, k)).astype(np.float64).tolist()
             for k in CURVE_KEYS if names.pruning(order, k) in sizes}
        if c:
            curves[order] = c
    spec = m.get("spec") or {}
    if spec.get("kind") == "image":
        prompts = [f"image {i + 1}" for i in range(len(spec.get("inputs", [])))]
    else:
        prompts = [f"{i + 1}: {p[:80]}" for i, p in enumerate(spec.get("inputs", []))]
    return {"n_layers": info["n_layers"], "n_heads": info["n_heads"], "model": (m.get("model") or {}).get("ref"),
            "grids": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in grids.items()},
            "curves": curves, "meta": meta, "prompts": prompts, "rule": run_rule}
