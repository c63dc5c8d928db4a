"""Live head pruning on the JSON API (a job on the worker; see ``backend.jobs.submit_prune``).

``POST /api/runs/<run_id>/prune`` ``{"heads": [[layer, head], ...], "prompt": P}`` switches the heads off
(gate 0) in the run's model and measures loss / perplexity / accuracy on the run's first inputs (at most
``backend.engine.importance_stage.MAX_CURVE_PROMPTS``) before and after, with the top-5 predictions for
input ``P`` (default 0). 202 ``{"status": "queued" | "running", "job": digest, ...}`` until the result
exists, then 200 with it; ``GET /api/runs/<run_id>/prune/<job>`` polls. Bad heads or prompt: 400.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from app import state
from app.api_blueprint import api, client_id, error
from backend import jobs
from backend.prune_spec import DIGEST


def prune_body(rec: dict[str, Any]):
    """200 with the result when done (or failed, with ``error``), else 202 with the job's status."""
    if rec.get("status") == "done":
        body = {k: v for k, v in rec.items() if k not in ("created", "finished", "stage", "progress")}
        return jsonify(body), 200
    if rec.get("status") == "failed":
        return jsonify({"run_id": rec.get("run_id"), "job": rec.get("job"), "heads": rec.get("heads"),
                        "status": "failed", "error": rec.get("error")}), 200
    return jsonify({"run_id": rec.get("run_id"), "job": rec.get("job"), "heads": rec.get("heads"),
                    "status": rec.get("status", "queued"), "stage": rec.get("stage"),
                    "progress": rec.get("progress", 0.0)}), 202


@api.post("/runs/<run_id>/prune")
def prune_run(run_id: str):
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error('body must be a JSON object: {"heads": [[layer, head], ...], "prompt": 0}', 400)
    if "heads" not in body:
        return error('missing "heads": a list of [layer, head] pairs to switch off', 400)
    state.done_manifest(run_id)  # 404 unknown run, 409 unfinished
    _, rec = jobs.submit_prune(state.cache(), state.settings(), run_id, body["heads"], body.get("prompt"),
                               client=client_id())
    return prune_body(rec)


@api.get("/runs/<run_id>/prune/<job>")
def prune_poll(run_id: str, job: str):
    rec = jobs.prune_status(state.cache(), state.settings(), job) if DIGEST.match(job or "") else None
    if rec is None or rec.get("run_id") != run_id:
        return error(f"unknown pruning job {job} for run {run_id}", 404)
    return prune_body(rec)
