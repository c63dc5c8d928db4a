"""On-request full patterns (Redis side): a job per (run, prompt, layer), like the lab's and live pruning's.

A text run stores no full patterns (they grow as layers x heads x T^2: SmolLM2 at 1,024 tokens would take 283 MB
a prompt in float16); a view or the API that needs one asks for it here. The request is content-addressed: the
SHA-256 of the engine version, run, prompt and layer is the RQ job id, the ``keys.derived`` key of its JSON
record (queued -> running -> done | failed) and the prefix of its one array (``names.pattern_job_array()``:
``[head, query, key]`` in ``ATLAS_PATTERN_DTYPE``, byte-shuffled and compressed, with the result TTL), so a
repeated request or a shared link is a cache hit. The worker side is ``workers.tasks.run_pattern``
(:mod:`backend.engine.pattern_job`). Old runs that stored full patterns are read as stored
(``app.state.pattern``), never recomputed.

No rate limit: views ask for these as the user moves between heads (the all-heads view with a query token asks
for every layer at once), and a run bounds them (its prompts x layers).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
from backend import ENGINE_VERSION, names
from backend.cache import Cache
from backend.jobs import derived_status, enqueue_derived
from backend.settings import Settings
from backend.spec import canonical_json

PATTERN_TASK = "workers.tasks.run_pattern"
RETRY_FAILED_AFTER_S = 30.0
"""A failed job is reported for this long (a polling view shows the error instead of retrying at once), then a
new request runs it again."""
POLL_S = 0.1


def pattern_digest(run_id: str, prompt: int, layer: int) -> str:
    """SHA-256 of the engine version, the run, the prompt and the layer."""
    payload = canonical_json({"what": "pattern", "engine": ENGINE_VERSION, "run_id": run_id,
                              "prompt": int(prompt), "layer": int(layer)})
    return hashlib.sha256(payload.encode()).hexdigest()


def stage_text(prompt: int, layer: int) -> str:
    """The progress line of a pattern job (prompts counted from 1, as the pages list them)."""
    return f"computing layer {layer} of prompt {prompt + 1}…"


def pattern_status(cache: Cache, digest: str) -> dict[str, Any] | None:
    """A pattern job's record, reconciled with RQ (a job that died is reported failed); None if unknown."""
    return derived_status(cache, digest, "pattern job")


def submit_pattern(cache: Cache, settings: Settings, run_id: str, prompt: int, layer: int,
                   ) -> tuple[str, dict[str, Any]]:
    """Ask for the full pattern of ``prompt`` in ``layer`` (indices already validated against the run);
    returns ``(digest, record)``. A queued or running twin is reused, a done one whose array is still there too;
    a failed one is reported for :data:`RETRY_FAILED_AFTER_S`, then retried."""
    digest = pattern_digest(run_id, prompt, layer)
    rec = pattern_status(cache, digest)
    if rec is not None:
        status = rec.get("status")
        if status in ("queued", "running"):
            return digest, rec
        if status == "done" and cache.get_derived_array_exists(digest, names.pattern_job_array()):
            return digest, rec
        if status == "failed" and time.time() - float(rec.get("finished") or 0) < RETRY_FAILED_AFTER_S:
            return digest, rec
    record = {"job": digest, "run_id": run_id, "prompt": int(prompt), "layer": int(layer), "status": "queued",
              "stage": stage_text(prompt, layer) + " (queued)", "progress": 0.0, "created": time.time()}
    enqueue_derived(cache, settings, PATTERN_TASK, digest, record, (digest, run_id, int(prompt), int(layer)),
                    f"pattern {run_id} prompt {prompt} layer {layer}")
    return digest, record


def put_pattern(cache: Cache, digest: str, pattern: np.ndarray, ttl_s: int) -> None:
    """Store a computed pattern (already in its stored dtype) under the job's digest, shuffled and compressed."""
    cache.put_derived_arrays(digest, {names.pattern_job_array(): pattern}, ttl_s, shuffle=True)


def get_pattern(cache: Cache, digest: str) -> np.ndarray | None:
    return cache.get_derived_array(digest, names.pattern_job_array())


def fetch(cache: Cache, settings: Settings, run_id: str, prompt: int, layer: int, wait_s: float = 0.0,
          ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """``(pattern [head, query, key], record)`` once computed, else ``(None, record)`` of the queued, running or
    failed job (submitted here when needed), after waiting up to ``wait_s`` seconds for it."""
    deadline = time.monotonic() + max(0.0, float(wait_s))
    while True:
        digest, rec = submit_pattern(cache, settings, run_id, prompt, layer)
        if rec.get("status") == "done":
            arr = get_pattern(cache, digest)
            if arr is not None:
                return arr, rec
            continue  # evicted between the two reads: submit again
        if rec.get("status") == "failed" or time.monotonic() >= deadline:
            return None, rec
        time.sleep(POLL_S)
