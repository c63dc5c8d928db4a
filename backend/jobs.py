"""The one job API: submit a run, read its status, cancel it. Jobs run on RQ over Redis.

Jobs are enqueued by dotted path (the web process never imports the worker or torch) with RQ's JSON
serializer (nothing is ever unpickled). The job id is the run id: content-addressed, so submitting
the same analysis twice reuses the first run.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from backend import keys
from backend.cache import Cache
from backend.model_refs import ModelRef, resolve_model
from backend.prune_spec import check_heads, check_prompt, prune_digest
from backend.settings import Settings
from backend.spec import RunSpec, SpecError, build_spec, run_id_for

TASK = "workers.tasks.run_analysis"
EXTEND_TASK = "workers.tasks.run_extension"
FAILURE_TTL_S = 3600
HEARTBEAT_S = float(os.environ.get("ATLAS_HEARTBEAT_S", "5"))
"""The worker refreshes a running run's ``heartbeat`` this often; silence for 6x this means it died."""


class RateLimited(RuntimeError):
    """Too many requests or unfinished jobs for one client."""


INTERACTIVE_SUFFIX = "-interactive"


def interactive_queue(name: str) -> str:
    """The queue of the short jobs a page waits for (a clicked token's pattern, a head switched off, a lab
    intervention) beside queue ``name``: workers serve it first, so they do not wait behind queued analyses."""
    return name + INTERACTIVE_SUFFIX


def served_queues(settings: Settings) -> list[str]:
    """The queues a worker serves, in priority order: the interactive queue of each of ``ATLAS_WORKER_QUEUES``,
    then those queues."""
    return [interactive_queue(q) for q in settings.worker_queues] + list(settings.worker_queues)


def queue_for(r: redis.Redis, settings: Settings, name: str | None = None) -> Queue:
    """The RQ queue ``name`` (default: ``ATLAS_QUEUE``, where submissions go)."""
    return Queue(keys._check(name or settings.queue_name), connection=r, serializer=JSONSerializer)


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_rate(cache: Cache, settings: Settings, client: str) -> None:
    if cache.count_submission(client) > settings.rate_limit_per_minute:
        raise RateLimited(f"rate limit: at most {settings.rate_limit_per_minute} submissions a minute")


def _check_active(cache: Cache, settings: Settings, client: str) -> None:
    active = cache.active_runs(client)
    still = 0
    for rid in active:
        m = cache.manifest(rid)
        if m and m["status"] in ("queued", "running"):
            still += 1
        else:
            cache.drop_active_run(client, rid)
    if still >= settings.max_active_jobs_per_client:
        raise RateLimited(
            f"you have {still} analyses still running; wait for one to finish (limit "
            f"{settings.max_active_jobs_per_client})"
        )


def prepare(
    model: Any, prompts: Any, options: Any, settings: Settings, kind: str | None = None
) -> tuple[RunSpec, ModelRef, str]:
    """Validate a request and compute its run id, without touching Redis."""
    if not isinstance(model, str):
        raise SpecError("model must be a string")
    ref = resolve_model(model, settings)
    spec = build_spec(ref.ref, prompts, options, settings, kind=kind or ref.kind)
    if spec.kind != ref.kind:
        raise SpecError(f"model {ref.ref} takes {ref.kind} inputs, not {spec.kind}")
    n_classes = len(ref.config.get("id2label") or {}) or int(ref.config.get("num_labels") or 0)
    if "labels" in spec.options and n_classes and max(spec.options["labels"]) >= n_classes:
        raise SpecError(f"labels must be class ids below {n_classes} (the number of classes of {ref.ref})")
    return spec, ref, run_id_for(spec, ref.fingerprint)


def model_summary(ref: ModelRef) -> dict[str, Any]:
    return {
        "ref": ref.ref, "path": str(ref.path), "fingerprint": ref.fingerprint, "model_type": ref.model_type,
        "n_layers": ref.n_layers, "n_heads": ref.n_heads, "kind": ref.kind,
    }


def enqueue(cache: Cache, settings: Settings, run_id: str, queue: str | None = None) -> None:
    """(Re)queue the job for an existing manifest on ``queue`` (default ``ATLAS_QUEUE``), replacing any
    finished or abandoned RQ job of that id."""
    q = queue_for(cache.connection, settings, queue)
    try:
        Job.fetch(run_id, connection=cache.connection, serializer=JSONSerializer).delete()
    except NoSuchJobError:
        pass
    q.enqueue_call(
        TASK, args=(run_id,), job_id=run_id, timeout=settings.job_timeout_s, result_ttl=600,
        failure_ttl=FAILURE_TTL_S, description=f"analysis {run_id}",
    )


def submit(
    cache: Cache, settings: Settings, model: Any, prompts: Any, options: Any = None,
    kind: str | None = None, client: str = "local", queue: str | None = None,
) -> tuple[str, bool]:
    """Submit an analysis; returns ``(run_id, queued_now)``. A done or running twin is reused.

    ``queue``: the RQ queue to put it on (default ``ATLAS_QUEUE``; e.g. a queue only GPU workers serve)."""
    spec, ref, run_id = prepare(model, prompts, options, settings, kind)
    if spec.kind == "image":
        missing = cache.missing_blobs(list(spec.inputs))
        if missing:
            raise SpecError(f"{len(missing)} image(s) are not stored (first: {missing[0][:16]}); upload them first "
                            "(the inputs of an image run are the digests the upload returns)")
    existing = cache.manifest(run_id)
    if existing and existing["status"] in ("queued", "running"):
        return run_id, False
    if existing and existing["status"] == "done" and cache.has_arrays(run_id, list(existing["sizes"])[:50]):
        return run_id, False
    _check_rate(cache, settings, client)
    _check_active(cache, settings, client)
    cache.delete_arrays(run_id)
    cache.create_run(run_id, spec.canonical(), model_summary(ref), client, queue=queue)
    cache.add_active_run(client, run_id)
    enqueue(cache, settings, run_id, queue)
    return run_id, True


# ------------------------------------------------------------------------------- extending a run
#
# A run id addresses (engine, model weights, inputs, options). Every analysis is a deterministic function of the
# same model and inputs, so adding an analysis to a finished run adds arrays without changing any stored one:
# the run keeps its id (and every URL to it), its manifest keeps the spec it was submitted with, and the
# analyses added later are listed in the manifest's ``extra_analyses``. A recompute after eviction runs the
# spec's analyses plus the extra ones. The extension itself is a job (id ``<run id>-extend``) whose
# progress lives in the manifest's ``extension`` field while the run stays ``done`` (its views keep working).


def run_analyses(manifest: dict[str, Any]) -> list[str]:
    """The analyses a run has (or will have once done): the spec's plus those added by extensions."""
    spec_analyses = ((manifest.get("spec") or {}).get("options") or {}).get("analyses") or []
    return sorted(set(spec_analyses) | set(manifest.get("extra_analyses") or []))


def extension_job_id(run_id: str) -> str:
    return f"{run_id}-extend"


def extend(cache: Cache, settings: Settings, run_id: str, analyses: Any, client: str = "local") -> dict[str, Any]:
    """Add ``analyses`` to a finished run in the background; returns the manifest's ``extension`` record.

    Analyses the run already has are skipped; while an extension is queued or running, a request for analyses
    it covers returns its record and a request for others is refused (one extension at a time)."""
    from backend.vocab import ANALYSIS_NAMES

    if not isinstance(analyses, list) or not analyses or not all(a in ANALYSIS_NAMES for a in analyses):
        raise SpecError(f"analyses must be a non-empty list drawn from {', '.join(ANALYSIS_NAMES)}")
    m = cache.manifest(run_id)
    if m is None:
        raise LookupError(f"unknown run {run_id}")
    if m["status"] != "done":
        raise SpecError(f"the run is {m['status']}; an analysis can be added once it is done")
    missing = sorted(set(analyses) - set(run_analyses(m)))
    ext = extension_status(cache, run_id, m)
    if ext and ext.get("status") in ("queued", "running"):
        if set(missing) <= set(ext["analyses"]):
            return ext
        raise SpecError(f"this run is already being extended with {', '.join(ext['analyses'])}; "
                        "wait for it to finish")
    if not missing:
        return {"analyses": [], "status": "done", "progress": 1.0, "stage": "done", "error": ""}
    if (m.get("spec") or {}).get("kind") == "image" and "streaming" in missing:
        raise SpecError("the StreamingLLM experiment needs a causal language model on text")
    _check_rate(cache, settings, client)
    ext = {"analyses": missing, "status": "queued", "progress": 0.0, "stage": "queued", "error": "",
           "created": time.time()}
    cache.update(run_id, extension=ext)
    job_id = extension_job_id(run_id)
    try:
        Job.fetch(job_id, connection=cache.connection, serializer=JSONSerializer).delete()
    except NoSuchJobError:
        pass
    queue_for(cache.connection, settings).enqueue_call(
        EXTEND_TASK, args=(run_id, missing), job_id=job_id, timeout=settings.job_timeout_s, result_ttl=600,
        failure_ttl=FAILURE_TTL_S, description=f"extend {run_id} with {', '.join(missing)}",
    )
    return ext


def extension_status(cache: Cache, run_id: str, manifest: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The run's latest extension record, reconciled with RQ (a job that died is reported failed)."""
    m = manifest if manifest is not None else cache.manifest(run_id)
    ext = (m or {}).get("extension")
    if not ext or ext.get("status") not in ("queued", "running"):
        return ext
    try:
        job = Job.fetch(extension_job_id(run_id), connection=cache.connection, serializer=JSONSerializer)
        rq_status = job.get_status(refresh=True)
        rq_status = getattr(rq_status, "value", rq_status)
    except NoSuchJobError:
        rq_status = None if time.time() - ext.get("created", 0) > 10 else "queued"
    beat = ext.get("heartbeat")
    dead = ext.get("status") == "running" and beat is not None and time.time() - beat > 6 * HEARTBEAT_S
    if dead or rq_status in (None, "failed", "stopped", "canceled"):
        fresh = (cache.manifest(run_id) or {}).get("extension") or ext
        if fresh.get("status") in ("queued", "running"):
            fresh = {**fresh, "status": "failed", "stage": "failed",
                     "error": "the worker stopped while adding this analysis; try again"}
            cache.update(run_id, extension=fresh)
        return fresh
    return ext


def recompute(cache: Cache, settings: Settings, run_id: str) -> bool:
    """Requeue a run whose arrays were evicted or whose job died; False if it is unknown."""
    m = cache.manifest(run_id)
    if m is None:
        return False
    if m["status"] in ("queued", "running"):
        return True
    cache.delete_arrays(run_id)
    cache.update(run_id, status="queued", stage="recomputing (cached results had expired)", progress=0.0, error="",
                 attempt=None, attempts=0, heartbeat=None)
    enqueue(cache, settings, run_id, m.get("queue"))
    return True


def starting_workers(cache: Cache) -> list[dict[str, Any]]:
    """Workers still starting, each ``{name, phase, detail, seconds}`` (seconds since it started), written by
    :mod:`workers.startup`; empty when every live worker is ready."""
    now = time.time()
    return [
        {"name": name, "phase": st.get("phase"), "detail": st.get("detail", ""),
         "seconds": round(now - float(st.get("started", now)), 1)}
        for name, st in sorted(cache.worker_states().items()) if st.get("phase") != "ready"
    ]


def start_message(workers: list[dict[str, Any]]) -> str:
    """One line for a waiting run: what the starting worker(s) are doing, or "" when none is starting."""
    if not workers:
        return ""
    w = min(workers, key=lambda x: x["seconds"])
    more = f" (and {len(workers) - 1} more starting)" if len(workers) > 1 else ""
    return f"the worker is starting, {w['seconds']:.0f} s so far: {w['detail']}{more}"


def status(cache: Cache, settings: Settings, run_id: str) -> dict[str, Any] | None:
    """The manifest, reconciled with RQ: a job that died with its worker is reported failed."""
    m = cache.manifest(run_id)
    if m is None:
        return None
    if m["status"] in ("queued", "running"):
        try:
            job = Job.fetch(run_id, connection=cache.connection, serializer=JSONSerializer)
            rq_status = job.get_status(refresh=True)
            rq_status = getattr(rq_status, "value", rq_status)
        except NoSuchJobError:
            rq_status = None
        if m["status"] == "queued" and rq_status == "finished" and "attempt" in m:
            # queued again (by a stopped or lost worker) but the new job never reached the queue, because the
            # process that was to put it there died first: put it there, once (the token moves on)
            if cache.update_attempt(run_id, m["attempt"], ("queued",), attempt=f"requeued-{uuid.uuid4().hex}"):
                enqueue(cache, settings, run_id, m.get("queue"))
            return cache.manifest(run_id) or m
        beat = m.get("heartbeat")
        silent = 6 * HEARTBEAT_S
        dead = (
            m["status"] == "running" and beat is not None and time.time() - beat > silent
            and cache.server_uptime_s() > silent  # a heartbeat missed while Redis was away is no death
        )
        if dead or rq_status in (None, "failed", "stopped", "canceled"):
            m = cache.manifest(run_id) or m  # the worker may have just finished
            if m["status"] == "running" and m.get("attempt"):
                from backend.recovery import lost_run  # noqa: PLC0415  (recovery calls enqueue here)

                reason = (
                    f"its heartbeat stopped for over {silent:.0f} s: killed, out of memory, or its machine went away"
                    if dead else f"RQ reports its job {rq_status or 'gone'}"
                )
                lost_run(cache, settings, run_id, m["attempt"], reason)
                m = cache.manifest(run_id) or m
            elif m["status"] in ("queued", "running"):
                msg = (
                    "the worker stopped while running this analysis (crash, out of memory, or timeout); "
                    "submit it again"
                )
                cache.update(run_id, status="failed", stage="failed", error=msg)
                m.update(status="failed", stage="failed", error=msg)
    return m


def cancel(cache: Cache, settings: Settings, run_id: str) -> bool:
    """Ask a run to stop: a queued job is removed, a running one stops at its next check."""
    m = cache.manifest(run_id)
    if m is None or m["status"] not in ("queued", "running"):
        return False
    cache.request_cancel(run_id)
    try:
        job = Job.fetch(run_id, connection=cache.connection, serializer=JSONSerializer)
        if job.get_status(refresh=True) in ("queued", "deferred", "scheduled"):
            job.cancel()
            cache.update(run_id, status="cancelled", stage="cancelled", error="cancelled by the user")
    except NoSuchJobError:
        pass
    return True


# ------------------------------------------------------------------------------- live pruning

PRUNE_TASK = "workers.tasks.run_prune"


def put_prune(cache: Cache, digest: str, record: dict[str, Any], ttl_s: int) -> None:
    """Write a pruning job's record (queued / running / done / failed) under ``keys.derived``."""
    cache.put_record(digest, record, ttl_s)


def derived_status(cache: Cache, digest: str, what: str) -> dict[str, Any] | None:
    """The record of a job on a finished run (live pruning, lab), reconciled with RQ: a job that died is
    reported failed ("the worker stopped while running this {what}"); None if unknown."""
    rec = cache.get_record(digest)
    if rec is None:
        return None
    if rec.get("status") in ("queued", "running"):
        try:
            job = Job.fetch(digest, connection=cache.connection, serializer=JSONSerializer)
            rq_status = job.get_status(refresh=True)
            rq_status = getattr(rq_status, "value", rq_status)
        except NoSuchJobError:  # (missing for a moment between the record and the enqueue)
            rq_status = None if time.time() - rec.get("created", 0) > 10 else "queued"
        if rq_status in (None, "failed", "stopped", "canceled"):
            rec = cache.get_record(digest) or rec  # the worker may have just finished
            if rec.get("status") in ("queued", "running"):
                rec.update(status="failed", error=f"the worker stopped while running this {what}; run it again")
                cache.put_record(digest, rec, FAILURE_TTL_S)
    return rec


def enqueue_derived(cache: Cache, settings: Settings, task: str, digest: str, record: dict[str, Any],
                    args: tuple, description: str) -> None:
    """Queue a job on a finished run (live pruning, lab, on-request pattern): its ``record`` goes under
    ``keys.derived`` first, then an RQ job of id ``digest`` (a finished or failed RQ job of that id is replaced)
    on the interactive queue (:func:`interactive_queue`): a page waits for it."""
    cache.put_record(digest, record, settings.job_timeout_s + 600)
    try:
        Job.fetch(digest, connection=cache.connection, serializer=JSONSerializer).delete()
    except NoSuchJobError:
        pass
    queue_for(cache.connection, settings, interactive_queue(settings.queue_name)).enqueue_call(
        task, args=args, job_id=digest, timeout=settings.job_timeout_s, result_ttl=600, failure_ttl=FAILURE_TTL_S,
        description=description,
    )


def prune_status(cache: Cache, settings: Settings, digest: str) -> dict[str, Any] | None:
    """A pruning job's record, reconciled with RQ (a job that died is reported failed); None if unknown."""
    return derived_status(cache, digest, "pruning job")


def submit_prune(
    cache: Cache, settings: Settings, run_id: str, heads: Any, prompt: Any = None, client: str = "local",
) -> tuple[str, dict[str, Any]]:
    """Switch ``heads`` off in a finished run's model: returns ``(digest, record)``. The digest (SHA-256 of
    run, sorted heads and prompt) is the job id; a done, queued or running twin is reused, a failed one
    retried. The worker (``workers.tasks.run_prune``) stores the result with the result TTL."""
    m = cache.manifest(run_id)
    if m is None:
        raise LookupError(f"unknown run {run_id}")
    if m["status"] != "done" or not m.get("info"):
        raise SpecError(f"the run is {m['status']}; pruning needs a finished run")
    info = m["info"]
    heads = check_heads(heads, int(info["n_layers"]), int(info["n_heads"]))
    prompt = check_prompt(prompt, len(m["spec"]["inputs"]))
    digest = prune_digest(run_id, heads, prompt)
    existing = prune_status(cache, settings, digest)
    if existing and existing.get("status") in ("done", "queued", "running"):
        return digest, existing
    _check_rate(cache, settings, client)
    record = {"job": digest, "run_id": run_id, "heads": heads, "prompt": prompt, "status": "queued",
              "stage": "queued", "progress": 0.0, "created": time.time()}
    enqueue_derived(cache, settings, PRUNE_TASK, digest, record, (digest, run_id, heads, prompt),
                    f"prune {run_id} {len(heads)} head(s)")
    return digest, record
