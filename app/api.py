"""JSON API on the app's Flask server, for scripts and notebooks (documented in the README)."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from app import api_lab, api_maps, api_prune  # noqa: F401  (their endpoints join the blueprint before register() is called)
from app import maps_data, state
from app.api_blueprint import api, client_id, error, pending, run_url, wait_arg
from backend import jobs

@api.post("/runs")
def create_run():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error('body must be a JSON object: {"model": ..., "prompts": [...], "options": {...}}', 400)
    model = body.get("model") or "all-MiniLM-L6-v2"
    run_id, queued = jobs.submit(
        state.cache(), state.settings(), model, body.get("prompts"), body.get("options"),
        kind=body.get("kind"), client=client_id(),
    )
    return jsonify({"run_id": run_id, "url": run_url(run_id), "queued": queued}), 202 if queued else 200


def status_body(m: dict[str, Any]) -> dict[str, Any]:
    info = m.get("info") or {}
    model = m.get("model") or {}
    return {
        "run_id": m["run_id"],
        "status": m["status"],  # queued, running, done, failed or cancelled
        "progress": m["progress"],
        "stage": m["stage"],
        "error": m["error"] or None,
        "model": model.get("ref"),
        "n_layers": info.get("n_layers", model.get("n_layers")),
        "n_heads": info.get("n_heads", model.get("n_heads")),
        "tokens": info.get("tokens", []),
        "notices": info.get("notices", []),
        "events": m.get("events") or [],
        "attempts": m.get("attempts") or 0,
        "options": (m.get("spec") or {}).get("options"),
        "analyses": jobs.run_analyses(m),
        "extension": m.get("extension"),
        "created": m.get("created"),
        "finished": m.get("finished"),
        "workers_starting": jobs.starting_workers(state.cache()) if m["status"] == "queued" else [],
    }


@api.get("/runs")
def list_runs():
    runs = state.cache().recent_runs(50)
    return jsonify({"runs": [
        {"run_id": r["run_id"], "status": r["status"], "model": (r.get("model") or {}).get("ref"),
         "analyses": jobs.run_analyses(r),
         "n_inputs": len((r.get("spec") or {}).get("inputs", [])), "created": r["created"]}
        for r in runs
    ]})


@api.get("/runs/<run_id>")
def get_run(run_id: str):
    m = state.run_status(run_id)
    if m is None:
        return error(f"unknown run {run_id}", 404)
    return jsonify(status_body(m))


@api.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str):
    if state.run_status(run_id) is None:
        return error(f"unknown run {run_id}", 404)
    ok = jobs.cancel(state.cache(), state.settings(), run_id)
    return jsonify({"run_id": run_id, "cancelled": ok})


@api.post("/runs/<run_id>/extend")
def extend_run(run_id: str):
    """Add analyses to a finished run in the background (same run id); poll ``GET /api/runs/<id>``."""
    if not state.RUN_ID.match(run_id):
        return error(f"unknown run {run_id}", 404)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error('body must be a JSON object: {"analyses": [...]}', 400)
    ext = jobs.extend(state.cache(), state.settings(), run_id, body.get("analyses"), client=client_id())
    return jsonify({"run_id": run_id, "extension": ext}), 202 if ext.get("status") in ("queued", "running") else 200


@api.get("/runs/<run_id>/attention")
def get_attention(run_id: str):
    """One head's pattern: ``?prompt=P&layer=L&head=H`` (``&wait=S``: wait up to S seconds for a pattern computed on
    request; until it is there, 202 with the job's progress)."""
    args = request.args
    for name in ("prompt", "layer", "head"):
        if name not in args:
            return error(f"missing query parameter {name}", 400)
    try:
        tokens, pat = state.pattern(run_id, args["prompt"], args["layer"], args["head"], wait_arg())
    except state.PatternPending as exc:
        return pending(exc)
    return jsonify({"tokens": tokens, "pattern": pat.round(6).tolist()})


def register(server: Flask) -> None:
    server.register_blueprint(api)


@api.get("/runs/<run_id>/metrics")
def get_metrics(run_id: str):
    """Every ``metrics.*`` grid; ``?eps=E&sink_rule=per_prompt|prompt_mean`` choose the sink-rate threshold (default
    ``backend.vocab.SINK_EPS``) and rule (``sink_rate`` in ``metrics`` is then the rate at that threshold;
    docs/REFERENCES.md)."""
    values, info = state.metrics(run_id)
    body = {"n_layers": info["n_layers"], "n_heads": info["n_heads"], "metrics": values}
    if "sink_rate" in values:
        sink = state.sink_summary(run_id, request.args.get("eps"), request.args.get("sink_rule"))
        values["sink_rate"] = sink["sink_rate"]
        body.update(sink_eps=sink["eps"], sink_rule=sink["rule"], sink_rule_label=sink["rule_label"])
    return jsonify(body)


@api.get("/runs/<run_id>/embedding")
def get_embedding(run_id: str):
    for name in ("layer", "head"):
        if name not in request.args:
            return error(f"missing query parameter {name}", 400)
    points = maps_data.points(run_id, request.args["layer"], request.args["head"], request.args.get("method", "umap"))
    return jsonify({"points": points})


@api.get("/runs/<run_id>/received")
def get_received(run_id: str):
    for name in ("prompt", "layer"):
        if name not in request.args:
            return error(f"missing query parameter {name}", 400)
    tokens, rec = state.received(run_id, request.args["prompt"], request.args["layer"])
    return jsonify({"tokens": tokens, "received": rec.round(6).tolist()})


@api.get("/runs/<run_id>/rollout")
def get_rollout(run_id: str):
    """Attention rollout of one image of a ViT run: ``?image=I&fusion=mean|max|min&discard=0.9`` and
    ``discard_rule=all_entries`` (vit-explain, default) or ``spare_cls`` (variant; docs/REFERENCES.md)."""
    from app import vit_data  # noqa: PLC0415

    if "image" not in request.args:
        return error("missing query parameter image", 400)
    rule = vit_data.check_discard_rule(request.args.get("discard_rule"))
    grid, _, fusion, discard = vit_data.rollout(
        run_id, request.args["image"], request.args.get("fusion", "mean"), request.args.get("discard", "0"), rule
    )
    return jsonify({"grid": grid.round(8).tolist(), "fusion": fusion, "discard": discard, "discard_rule": rule})


@api.route("/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def not_found(rest: str):
    """Any other /api path is a JSON 404 (never the HTML app)."""
    return error(f"no such API endpoint: /api/{rest}", 404)
