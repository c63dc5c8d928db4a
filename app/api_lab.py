"""Extreme tokens and the intervention lab on the JSON API (jobs on the worker; see ``backend.lab_jobs``).

``POST /api/runs/<run_id>/lab`` with a request of ``backend.lab_spec`` (``{"kind": "intervene", ...}``,
``"patch"``, ``"extremes"``, ``"domains"``): 202 ``{"status": "queued" | "running", "job", ...}`` until the
result exists, then 200 with it; ``GET /api/runs/<run_id>/lab/<job>`` polls;
``GET /api/runs/<run_id>/lab/<job>/attention?layer=L&head=H``: one head's pattern before and after an
intervention. Shortcuts that submit and poll in one call: ``GET /api/runs/<run_id>/extremes?prompt=P&eps=E``
(adds every sink above eps) and ``GET /api/runs/<run_id>/domains?labels=prose,code&eps=E`` (adds sink rates
per domain and the switching heads; ``eps`` defaults to ``backend.vocab.SINK_EPS``). ``GET /api/runs/<run_id>/pair?a=A&b=B&layer=L&head=H``: the same head on
two prompts and their difference (patterns computed on request: ``&wait=S`` waits up to S seconds, else 202 with
the job's progress until they are there).
"""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from app import lab_data, state
from app.api_blueprint import api, client_id, error, pending, wait_arg
from backend.vocab import SINK_EPS


def _eps() -> float:
    try:
        eps = float(request.args.get("eps", SINK_EPS))
    except ValueError:
        raise state.ViewError("eps must be a number between 0 and 1") from None
    if not 0 <= eps < 1:
        raise state.ViewError("eps must be a number between 0 and 1")
    return eps


def _answer(rec: dict[str, Any], extra=None):
    body = lab_data.public(rec)
    if rec.get("status") == "done":
        if extra is not None:
            body.update(extra(rec))
        return jsonify(body), 200
    if rec.get("status") == "failed":
        return jsonify(body), 200
    return jsonify(body), 202


@api.post("/runs/<run_id>/lab")
def lab_submit(run_id: str):
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error('body must be a JSON object, e.g. {"kind": "intervene", "op": "scale", "factor": 0.5}', 400)
    _, rec = lab_data.submit(run_id, body, client_id())
    return _answer(rec)


@api.get("/runs/<run_id>/lab/<job>")
def lab_poll(run_id: str, job: str):
    return _answer(lab_data.record(run_id, job))


@api.get("/runs/<run_id>/lab/<job>/attention")
def lab_attention(run_id: str, job: str):
    for name in ("layer", "head"):
        if name not in request.args:
            return error(f"missing query parameter {name}", 400)
    out = lab_data.lab_attention(run_id, job, request.args["layer"], request.args["head"])
    return jsonify({k: (v.round(6).tolist() if hasattr(v, "round") else v) for k, v in out.items()})


@api.get("/runs/<run_id>/extremes")
def extremes(run_id: str):
    try:
        prompt = int(request.args.get("prompt", 0))
    except ValueError:
        return error("prompt must be an integer", 400)
    eps = _eps()
    _, rec = lab_data.submit(run_id, {"kind": "extremes", "prompt": prompt}, client_id())
    return _answer(rec, lambda r: {"eps": eps, "sinks": lab_data.extreme_view(r, 0, eps)["sinks"]})


@api.get("/runs/<run_id>/domains")
def domain_rates(run_id: str):
    eps = _eps()
    labels = lab_data.run_labels(run_id, request.args.get("labels"))
    _, rec = lab_data.submit(run_id, {"kind": "domains"}, client_id())

    def extra(r):
        v = lab_data.domain_view(r, labels, eps)
        return {"eps": eps, "labels": labels, "domains": v["domains"], "counts": v["counts"],
                "sink_rate": v["rates"].round(6).tolist(), "switch": v["switch"].round(6).tolist(),
                "switching": v["switching"]}

    return _answer(rec, extra)


@api.get("/runs/<run_id>/pair")
def pair(run_id: str):
    for name in ("a", "b", "layer", "head"):
        if name not in request.args:
            return error(f"missing query parameter {name}", 400)
    try:
        out = lab_data.pair(run_id, request.args["a"], request.args["b"], request.args["layer"], request.args["head"],
                            wait_arg())
    except state.PatternPending as exc:
        return pending(exc)
    return jsonify({k: (v.round(6).tolist() if hasattr(v, "round") else v) for k, v in out.items()})
