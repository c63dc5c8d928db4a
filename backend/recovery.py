"""What becomes of a job whose worker went away: a run is retried once, then failed with a clear message.

Three places notice a lost worker and call in here: ``attention-atlas serve``'s supervisor (its own worker
process exited), the private Redis coming back from its data folder (every job it lists as running lost
its worker), and ``backend.jobs.status`` (a run's heartbeat went silent, wherever its worker was). Each
transition is conditional on the attempt's token (``Cache.update_attempt``), so when several notice the
same loss at once, exactly one requeues the run.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from backend.cache import Cache
from backend.settings import Settings

MAX_ATTEMPTS = 2
"""A run whose worker dies is run at most this many times (the first attempt and one retry)."""


def worker_name(pid: int | None = None, host: str | None = None) -> str:
    """The RQ worker name of process ``pid`` on ``host`` (the supervisor computes it for a dead child)."""
    return f"atlas-{host or socket.gethostname()}-{pid or os.getpid()}"


def _event(text: str) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC: {text}"


def lost_run(cache: Cache, settings: Settings, run_id: str, attempt: str, reason: str) -> str | None:
    """Attempt ``attempt`` of ``run_id`` lost its worker (``reason`` says how): requeue the run if it has a
    retry left, else mark it failed. Returns ``"requeued"``, ``"failed"``, or None when the attempt is
    no longer the run's (finished, retried or deleted meanwhile)."""
    from backend import jobs  # noqa: PLC0415  (jobs.status calls in here)

    m = cache.manifest(run_id)
    outcome = None
    if m is not None and m.get("attempt") == attempt and m.get("status") == "running":
        n = int(m.get("attempts") or 1)
        events = list(m.get("events") or [])
        if n < MAX_ATTEMPTS:
            events.append(_event(f"attempt {n} of {MAX_ATTEMPTS} stopped: {reason}; the run was queued again"))
            if cache.update_attempt(
                run_id, attempt, ("running",), status="queued", progress=0.0, heartbeat=None, attempt=None,
                stage=f"queued again after its worker stopped ({reason}); attempt {n + 1} of {MAX_ATTEMPTS}",
                events=events,
            ):
                jobs.enqueue(cache, settings, run_id, queue=m.get("queue"))
                outcome = "requeued"
        else:
            events.append(_event(f"attempt {n} of {MAX_ATTEMPTS} stopped: {reason}; no retry left"))
            message = (
                f"the worker stopped while running this analysis, on the retry too ({reason}). "
                "It may need more memory or time than a worker has: submit it again with fewer or shorter "
                "prompts, or ask the operator (ATLAS_WORKER_MEMORY_MB, ATLAS_JOB_TIMEOUT, worker logs)"
            )
            if cache.update_attempt(
                run_id, attempt, ("running",), status="failed", stage="failed", error=message, events=events,
                finished=time.time(),
            ):
                cache.delete_arrays(run_id)
                outcome = "failed"
    cache.release_running(run_id, attempt)
    return outcome


DERIVED_KINDS = {"prune": "pruning job", "lab": "lab job", "pattern": "pattern job"}
"""Jobs on a finished run (a record under ``keys.derived``), by the kind they register as running."""


def lost_prune(cache: Cache, digest: str, attempt: str, reason: str, kind: str = "prune") -> None:
    """A pruning (or lab) job lost its worker: mark it failed (it is short and cheap to ask for again)."""
    from backend import jobs  # noqa: PLC0415

    rec = cache.get_record(digest)
    if rec is not None and rec.get("status") in ("queued", "running"):
        rec.update(status="failed", stage="failed", error=f"the worker stopped while running this "
                   f"{DERIVED_KINDS.get(kind, 'job')} ({reason}); run it again", finished=time.time())
        jobs.put_prune(cache, digest, rec, jobs.FAILURE_TTL_S)
    cache.release_running(digest, attempt)


def lost_jobs(cache: Cache, settings: Settings, reason: str, worker: str | None = None) -> dict[str, Any]:
    """Every job listed as running by ``worker`` (every worker when None) lost it: retry or fail each.
    Returns job id -> outcome. O(jobs running), never a keyspace scan."""
    out: dict[str, Any] = {}
    for job_id, entry in cache.running_jobs().items():
        if worker is not None and entry.get("worker") != worker:
            continue
        if entry.get("kind") in DERIVED_KINDS:
            lost_prune(cache, job_id, entry["attempt"], reason, entry["kind"])
            out[job_id] = "failed"
        else:
            out[job_id] = lost_run(cache, settings, job_id, entry["attempt"], reason)
    return out
