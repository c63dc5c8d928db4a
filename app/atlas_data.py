"""What the head-atlas pages read of a run: role scores, dominant roles, and the run's label (torch-free).

The data travels to the browser as JSON (``dcc.Store``): arrays become nested lists with ``None`` for NaN.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from app import state
from backend import roles as hr
from backend import names


def _jsonable(arr: np.ndarray) -> list:
    a = np.asarray(arr, dtype=np.float64)
    return np.where(np.isfinite(a), np.round(a, 6), None).tolist()


def load(run_id: str) -> dict[str, Any]:
    """The atlas of a finished run. Raises ``LookupError`` (unknown run), ``state.NotReady`` (not finished or
    being recomputed) or ``state.ViewError`` (the run has no head roles)."""
    m = state.done_manifest(run_id)
    sizes = m.get("sizes") or {}
    if names.role_array("dominant") not in sizes:
        raise state.ViewError("This run has no head roles: submit it with the 'roles' analysis.")
    scores = {k: _jsonable(state.load_array(run_id, names.metric(k)))
              for k in hr.SCORE_KEYS if names.metric(k) in sizes}
    dominant = np.asarray(state.load_array(run_id, names.role_array("dominant")), dtype=np.int64)
    recall_name = names.role_array("retrieval_recall")
    recall = state.load_array(run_id, recall_name).tolist() if recall_name in sizes else None
    trials_name = names.role_array("retrieval_trials")
    retrieval = None
    if trials_name in sizes:
        retrieval = json.loads(np.asarray(state.load_array(run_id, trials_name), dtype=np.uint8).tobytes().decode())
    info = m.get("info") or {}
    return {
        "run_id": run_id, "label": run_label(m), "model": (m.get("model") or {}).get("ref"),
        "n_layers": int(dominant.shape[0]), "n_heads": int(dominant.shape[1]), "causal": info.get("causal"),
        "scores": scores, "dominant": dominant.tolist(), "retrieval_recall": recall, "retrieval": retrieval,
        "notices": info.get("notices", []),
    }


def run_label(m: dict[str, Any]) -> str:
    model = (m.get("model") or {}).get("ref") or "?"
    return f"{model} · {m['run_id'][:8]}"


def arrays(data: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(dominant [L, H] int, {score: [L, H] float with NaN})`` from :func:`load`'s JSON."""
    dominant = np.asarray(data["dominant"], dtype=np.int32)
    scores = {k: np.asarray(v, dtype=np.float64) for k, v in data["scores"].items()}
    return dominant, scores


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    dominant, scores = arrays(data)
    return hr.head_rows(scores, dominant)


def to_json(data: dict[str, Any]) -> str:
    """The JSON download: scores, roles, the code table, thresholds, definitions and sources."""
    body = {
        "run_id": data["run_id"], "model": data["model"], "n_layers": data["n_layers"], "n_heads": data["n_heads"],
        "scores": data["scores"], "dominant": data["dominant"], "retrieval_recall": data.get("retrieval_recall"),
        "retrieval": data.get("retrieval"),
        "role_codes": list(hr.ROLES), "priority": list(hr.PRIORITY), "thresholds": hr.THRESHOLDS,
        "definitions": {s.key: {"label": s.label, "definition": s.definition, "inputs": s.inputs,
                                "source": s.source, "url": s.url} for s in hr.SCORES},
        "heads": rows(data),
    }
    return json.dumps(body, ensure_ascii=False)

