"""The ``/api`` blueprint shared by the JSON API modules (``app.api``, ``app.api_prune``): JSON errors, the
client id used for rate limits, run URLs."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app import state
from backend import jobs
from backend.model_refs import ModelError
from backend.spec import SpecError

api = Blueprint("api", __name__, url_prefix="/api")


def error(message: str, code: int):
    """A JSON error body ``{"error", "code"}`` with that HTTP status."""
    return jsonify({"error": message, "code": code}), code


def run_url(run_id: str) -> str:
    """The run page's absolute URL."""
    return f"{request.host_url.rstrip('/')}/runs/{run_id}"


MAX_WAIT_S = 60.0
"""The longest ``?wait=`` an endpoint over on-request patterns accepts (seconds)."""


def wait_arg() -> float:
    """``?wait=`` seconds (default 0, at most :data:`MAX_WAIT_S`): how long an endpoint over a pattern computed on
    request waits for it before answering 202 with the job's progress."""
    raw = request.args.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        raise state.ViewError(f"wait must be a number of seconds between 0 and {MAX_WAIT_S:g}") from None
    if not 0 <= wait <= MAX_WAIT_S:  # also refuses nan
        raise state.ViewError(f"wait must be a number of seconds between 0 and {MAX_WAIT_S:g}")
    return wait


def pending(exc: "state.PatternPending"):
    """202 while a pattern is computed on request: ``{"status": "queued" | "running", "stage", "progress", "job"}``
    (ask again, or pass ``?wait=``)."""
    rec = exc.record or {}
    return jsonify({"status": rec.get("status", "queued"), "stage": str(exc), "progress": rec.get("progress", 0.0),
                    "job": rec.get("job")}), 202


def client_id() -> str:
    """The caller's address, the key of its rate limits."""
    return (request.remote_addr or "local").replace(":", "_")


@api.errorhandler(Exception)
def _any_error(exc: Exception):
    if isinstance(exc, state.REDIS_ERRORS):
        return error(state.REDIS_DOWN, 503)
    if isinstance(exc, (SpecError, ModelError, state.ViewError)):
        return error(str(exc), 400)
    if isinstance(exc, LookupError):
        return error(str(exc), 404)
    if isinstance(exc, state.NotReady):
        return error(str(exc), 409)
    if isinstance(exc, jobs.RateLimited):
        return error(str(exc), 429)
    if hasattr(exc, "code") and isinstance(getattr(exc, "code"), int):
        return error(getattr(exc, "description", str(exc)), exc.code)  # type: ignore[attr-defined]
    current_app.logger.error("API error on %s %s", request.method, request.path, exc_info=exc)  # the cause, for the log
    return error(f"internal error: {type(exc).__name__}", 500)
