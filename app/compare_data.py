"""View data of the compare pages (``/compare``: two runs' layer x head grids; ``/atlas/compare``: two head
atlases): the runs to pick from, what each side loads, and the comparisons shaped for the page (no figures).

Each side's loader runs behind :func:`app.run_gate.wait_for_runs` and raises as the gate expects
(``LookupError``, ``state.NotReady``, ``state.ViewError``).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np

from app import atlas_data, state
from backend import jobs
from backend import roles as hr
from backend.vocab import GRID_METRICS, METRIC_BY_NAME

PREVIEW_CHARS = 40
"""Characters of the first prompt shown in a run's dropdown label."""

ROLE_STATUS_TEXT = {"appears": "appears in B", "vanishes": "vanishes in B", "moves": "moves", "stays": "stays"}


def run_label(r: dict[str, Any]) -> str:
    """``model · “first prompt…” (+n) · 2026-12-05 07:30`` (and the status while not done) for a dropdown."""
    spec = r.get("spec") or {}
    inputs = spec.get("inputs") or []
    if spec.get("kind", "text") == "text" and inputs:
        first = " ".join(str(inputs[0]).split())
        preview = "“" + (first if len(first) <= PREVIEW_CHARS else first[:PREVIEW_CHARS - 1] + "…") + "”"
    else:
        preview = f"{len(inputs)} image(s)"
    more = f" (+{len(inputs) - 1})" if spec.get("kind", "text") == "text" and len(inputs) > 1 else ""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.get("created") or 0))
    model = (r.get("model") or {}).get("ref") or "?"
    status = "" if r.get("status") == "done" else f" · {r.get('status')}"
    return f"{model} · {preview}{more} · {when}{status}"


def run_options(analysis: str, keep: Iterable[str | None] = (), limit: int = 100) -> list[dict[str, str]]:
    """Dropdown options: recent runs that have (or, queued or running, will have) ``analysis``, newest first,
    labelled by :func:`run_label`; ids in ``keep`` (from the URL) are listed even when not among them."""
    out = []
    for r in state.cache().recent_runs(limit):
        if r.get("status") not in ("done", "queued", "running") or analysis not in jobs.run_analyses(r):
            continue
        out.append({"label": run_label(r), "value": r["run_id"]})
    have = {o["value"] for o in out}
    return out + [{"label": i, "value": i} for i in dict.fromkeys(keep) if i and i not in have]


# ---- /compare: layer x head grids ------------------------------------------------------------------------------

def sinks_side(run_id: str) -> dict[str, Any]:
    """One side of ``/compare``: every grid metric of a finished run and what describes it."""
    m = state.done_manifest(run_id)
    if not any(s.startswith("metrics.") for s in m.get("sizes") or {}):
        raise state.ViewError(f"run {run_id[:12]} has no per-head metrics (submit it with the 'metrics' analysis)")
    values, info = state.metrics(run_id)
    return {"run_id": run_id, "model": (m.get("model") or {}).get("ref"),
            "n_prompts": len((m.get("spec") or {}).get("inputs", [])),
            "n_layers": info["n_layers"], "n_heads": info["n_heads"], "sink_rate": values.get("sink_rate"),
            "grids": {k: values[k] for k in GRID_METRICS if k in values}}


def describe(side: str, d: dict[str, Any]) -> str:
    rate = f", sink rate {d['sink_rate']:.3f}" if isinstance(d.get("sink_rate"), float) else ""
    return (f"Run {side}: {d['run_id'][:12]} · {d['model']} · {d['n_prompts']} prompt(s) · "
            f"{d['n_layers']} x {d['n_heads']}{rate}")


def grids(a: dict[str, Any], b: dict[str, Any], metric: str) -> tuple[np.ndarray | None, np.ndarray | None, float | None]:
    """Both sides' ``[layer, head]`` grids of ``metric`` (None where a run lacks it) and one colour-scale top."""
    ga, gb = (np.asarray(d["grids"][metric], dtype=np.float64) if metric in d["grids"] else None for d in (a, b))
    finite = [g[np.isfinite(g)] for g in (ga, gb) if g is not None]
    zmax = max((float(f.max()) for f in finite if f.size), default=None)
    return ga, gb, 1.0 if getattr(METRIC_BY_NAME.get(metric), "unit", None) == "alpha" else zmax


# ---- /atlas/compare: head atlases ------------------------------------------------------------------------------

atlas_side = atlas_data.load
"""One side of ``/atlas/compare``: the run's head atlas (:func:`app.atlas_data.load`)."""


def roles_comparison(da: dict[str, Any], db: dict[str, Any]) -> dict[str, Any]:
    """Two atlases compared (:func:`backend.roles.compare_roles`), shaped for the page: ``dominant``/``scores``
    of each side, ``roles`` and ``heads`` table rows, ``matched``, the ``mode`` sentence and the raw
    ``comparison`` (for the depth bars)."""
    dom_a, scores_a = atlas_data.arrays(da)
    dom_b, scores_b = atlas_data.arrays(db)
    comparison = hr.compare_roles(dom_a, dom_b)
    roles = []
    for r in comparison["roles"]:
        row = {k: v for k, v in r.items() if k not in ("by_depth_a", "by_depth_b")}
        row.update(role=f"{hr.ROLE_GLYPHS[r['role']]} {hr.ROLE_LABELS[r['role']]}", status=ROLE_STATUS_TEXT[r["status"]],
                   depth_a=None if r["depth_a"] is None else round(r["depth_a"], 2),
                   depth_b=None if r["depth_b"] is None else round(r["depth_b"], 2))
        roles.append(row)
    if comparison["matched"]:
        mode = (f"Same shape ({dom_a.shape[0]} layers × {dom_a.shape[1]} heads): heads matched by (layer, head); "
                f"{len(comparison['heads'])} of {dom_a.size} heads changed their dominant role (third panel: green = "
                "a role appears, red = it vanishes, orange = another role).")
    else:
        mode = (f"Different shapes ({dom_a.shape[0]}×{dom_a.shape[1]} vs {dom_b.shape[0]}×{dom_b.shape[1]}): no head "
                "matching; roles are compared by their share of heads per quarter of relative depth (a role 'moves' "
                "when its mean relative depth shifts by more than 0.125).")
    heads = [{**h, "role_a": hr.ROLE_LABELS[h["role_a"]], "role_b": hr.ROLE_LABELS[h["role_b"]]}
             for h in comparison["heads"]]
    return {"dom_a": dom_a, "dom_b": dom_b, "scores_a": scores_a, "scores_b": scores_b, "roles": roles,
            "heads": heads, "matched": comparison["matched"], "mode": mode, "comparison": comparison}
