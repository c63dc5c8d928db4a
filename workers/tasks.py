"""Job orchestration only: read the run's spec, run the analysis, store arrays, record the outcome.

Runs inside an RQ ``SimpleWorker`` (same process for every job), so the model registry below keeps
models resident between jobs.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from typing import Any, Callable

import numpy as np
import redis

from backend.cache import Cache
from backend.jobs import HEARTBEAT_S, run_analyses
from backend.model_refs import ModelError, resolve_model
from backend.recovery import worker_name
from backend.redis_conn import connect
from backend.settings import Settings, get_settings
from backend.spec import SpecError
from workers.memory import cap_mb, is_out_of_memory, release_memory

PROGRESS_EVERY_S = 0.25


def throttled(write: Callable[[float, str, float], None]) -> Callable[[float, str], None]:
    """A progress callback that calls ``write(fraction rounded to 4 places, stage, now)`` at most every
    :data:`PROGRESS_EVERY_S` seconds, and always at completion (one Redis write per update, not per step)."""
    last = [0.0]

    def progress(frac: float, stage: str) -> None:
        now = time.time()
        if now - last[0] > PROGRESS_EVERY_S or frac >= 1.0:
            last[0] = now
            write(round(float(frac), 4), stage, now)

    return progress


_REGISTRY = None
FLUSH_BYTES = 8 * 1024 * 1024

STOPPING = threading.Event()
"""Set when the worker was asked to stop (SIGTERM): the running analysis stops at its next check and is
queued again for another worker (``requeue_after_stop``)."""
CURRENT: dict[str, Any] = {}
"""The job this process runs now: {"id", "attempt", "kind"} (empty between jobs); the stop watchdog reads it."""
TO_ENQUEUE: list[tuple[str, str | None]] = []
"""Runs interrupted by a stop, to put back on their queue once RQ has finished its bookkeeping of the job."""


def registry(settings: Settings):
    """The process-wide resident model registry (created on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        from backend.engine.models import ModelRegistry

        _REGISTRY = ModelRegistry(settings)
    return _REGISTRY


class _Writer:
    """Buffers emitted arrays and writes them to Redis in pipelines of about FLUSH_BYTES."""

    def __init__(self, cache: Cache, run_id: str) -> None:
        self.cache, self.run_id = cache, run_id
        self.buf: list[tuple[str, np.ndarray]] = []
        self.nbytes = 0
        self.sizes: dict[str, int] = {}

    def __call__(self, name: str, arr: np.ndarray) -> None:
        self.buf.append((name, np.asarray(arr)))
        self.nbytes += np.asarray(arr).nbytes
        if self.nbytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.sizes.update(self.cache.put_arrays(self.run_id, self.buf))
        self.buf, self.nbytes = [], 0


class _Heartbeat(threading.Thread):
    """Marks the run alive every HEARTBEAT_S seconds so a killed worker is noticed.

    Each beat is conditional on the attempt's token (``Cache.update_attempt``): once the run was deleted,
    retried elsewhere or finished, a beat writes nothing, and ``superseded`` tells the job to stop."""

    def __init__(self, cache: Cache, run_id: str, attempt: str) -> None:
        super().__init__(daemon=True)
        self.cache, self.run_id, self.attempt = cache, run_id, attempt
        self.stop = threading.Event()
        self.superseded = False

    def beat(self) -> bool:
        """One heartbeat; False (and ``superseded``) when the run is no longer this attempt's."""
        if not self.cache.update_attempt(self.run_id, self.attempt, ("running",), heartbeat=time.time()):
            self.superseded = True
        return not self.superseded

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.beat():
                    return
            except Exception:  # noqa: BLE001  (Redis blip: the next beat retries)
                pass
            self.stop.wait(HEARTBEAT_S)


def _load_inputs(cache: Cache, spec: dict[str, Any], settings: Settings) -> list[Any]:
    if spec["kind"] != "image":
        return list(spec["inputs"])
    from PIL import Image

    from backend.uploads import UploadError, open_image

    images = []
    for digest in spec["inputs"]:
        data = cache.get_blob(digest)
        if data is None:
            raise SpecError(f"uploaded image {digest[:12]} is no longer stored; upload it again")
        try:  # checked on upload too; the size is checked again before decoding
            with open_image(f"image {digest[:12]}", data, settings) as img:
                images.append(img.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as exc:
            raise UploadError(f"image {digest[:12]} cannot be decoded ({exc})") from None
    return images


def _failure_message(exc: BaseException) -> str:
    if is_out_of_memory(exc):
        cap = cap_mb()
        where = f" (this worker may use {cap:,} MB above its start-up footprint, ATLAS_WORKER_MEMORY_MB)" if cap else ""
        return (
            f"out of memory while running the model{where}: try fewer or shorter prompts, dtype bfloat16, "
            "or a smaller model; the operator can lower ATLAS_BATCH_SIZE or give the worker more memory"
        )
    if type(exc).__name__ == "JobTimeoutException":
        return "the analysis took longer than the job timeout (ATLAS_JOB_TIMEOUT); try fewer prompts"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return "lost the connection to Redis for longer than ATLAS_REDIS_RETRY_S; submit it again"
    return f"{type(exc).__name__}: {exc}"


def run_analysis(run_id: str) -> str:
    """RQ entry point: run the analysis of ``run_id``; the outcome is recorded in its manifest."""
    from backend.engine.analyze import Cancelled, analyze
    from backend.engine.capture import UnsupportedArchitecture

    settings = get_settings()
    cache = Cache(connect(settings, patient=True), settings)
    manifest = cache.manifest(run_id)
    if manifest is None or "spec" not in manifest:
        return "unknown run"
    spec = manifest["spec"]
    attempt = uuid.uuid4().hex
    n = cache.start_attempt(run_id, attempt, worker_name(), status="running", stage="loading model", progress=0.0,
                            started=time.time(), heartbeat=time.time(), error="")
    if n is None:
        return "unknown run"
    CURRENT.update(id=run_id, attempt=attempt, kind="run", queue=manifest.get("queue"))
    cache.delete_arrays(run_id)  # a retry never mixes with a crashed attempt's partial arrays
    beat = _Heartbeat(cache, run_id, attempt)
    beat.start()
    writer = _Writer(cache, run_id)
    progress = throttled(lambda frac, stage, _now: cache.update_attempt(
        run_id, attempt, ("running",), progress=frac, stage=stage))

    def should_stop() -> bool:
        return STOPPING.is_set() or beat.superseded or cache.cancel_requested(run_id)

    failure, outcome = "", "failed"
    try:
        ref = resolve_model(spec["model"], settings)
        loaded = registry(settings).get(ref, spec["options"]["dtype"])
        inputs = _load_inputs(cache, spec, settings)
        options = {**spec["options"], "analyses": run_analyses(manifest)}  # + analyses added by extensions
        info = analyze(loaded, inputs, options, writer, progress, should_stop, settings)
        writer.flush()
        done = cache.update_attempt(run_id, attempt, ("running",), info=info.to_dict(), sizes=writer.sizes,
                                    status="done", stage="done", progress=1.0, finished=time.time())
        cache.release_running(run_id, attempt)
        CURRENT.clear()
        return "done" if done else "superseded"
    except Cancelled:
        failure, outcome = "cancelled by the user", "cancelled"
        if STOPPING.is_set() and not cache.cancel_requested(run_id):
            outcome = "stopped"
        elif beat.superseded:
            outcome = "superseded"
    except (ModelError, SpecError, UnsupportedArchitecture, ValueError) as exc:
        failure = str(exc)
    except BaseException as exc:  # noqa: BLE001  (the worker must go on serving)
        traceback.print_exc()
        failure = _failure_message(exc)
        if type(exc).__name__ == "JobTimeoutException" or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            _record_failure(cache, run_id, attempt, failure, "failed")
            CURRENT.clear()
            raise
    finally:
        beat.stop.set()
    # Here, after the except blocks, the exception, its frames and the job's tensors are released:
    # collect what cycles still hold before recording the failure, which then needs no memory that a
    # job over its cap used up. (A successful job skips this: a full collection costs ~0.2 s.)
    writer.buf.clear()
    release_memory()
    if outcome == "stopped":
        requeue_after_stop(cache, run_id, attempt, manifest.get("queue"))
    elif outcome != "superseded":
        _record_failure(cache, run_id, attempt, failure, outcome)
    CURRENT.clear()
    return outcome


def requeue_after_stop(cache: Cache, run_id: str, attempt: str, queue: str | None, enqueue_now: bool = False) -> bool:
    """The worker was asked to stop in the middle of ``run_id``: mark it queued again (this attempt does not
    count against its retry) and put it back on its queue, now or once RQ is done with the current job."""
    from backend import jobs

    m = cache.manifest(run_id) or {}
    events = list(m.get("events") or [])
    events.append(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC: its worker was stopped (SIGTERM) "
                  "during the run; it was queued again")
    ok = cache.update_attempt(
        run_id, attempt, ("running",), status="queued", progress=0.0, heartbeat=None, attempt=None,
        attempts=max(0, int(m.get("attempts") or 1) - 1), events=events,
        stage="queued again: its worker was stopped; the next free worker continues it",
    )
    cache.release_running(run_id, attempt)
    if ok:
        if enqueue_now:
            jobs.enqueue(cache, get_settings(), run_id, queue)
        else:
            TO_ENQUEUE.append((run_id, queue))
    return ok


def enqueue_stopped() -> None:
    """Put the runs interrupted by a stop back on their queues (after RQ finished with their old jobs)."""
    from backend import jobs

    settings = get_settings()
    cache = Cache(connect(settings, patient=True), settings)
    while TO_ENQUEUE:
        run_id, queue = TO_ENQUEUE.pop()
        jobs.enqueue(cache, settings, run_id, queue)


def abandon_current(reason: str) -> None:
    """Called by the stop watchdog when the job did not stop in time: requeue a run, fail a pruning or lab job."""
    job = dict(CURRENT)
    if not job:
        return
    settings = get_settings()
    cache = Cache(connect(settings, patient=True), settings)
    if job["kind"] == "run":
        requeue_after_stop(cache, job["id"], job["attempt"], job.get("queue"), enqueue_now=True)
    else:
        from backend.recovery import lost_prune

        lost_prune(cache, job["id"], job["attempt"], reason, job["kind"])


def _record_failure(cache: Cache, run_id: str, attempt: str, message: str, status: str) -> None:
    """Drop any partial arrays, then mark the run failed (or cancelled) with ``message``, if the run is
    still this attempt's.

    Waits for Redis if it is away (the worker can do nothing else meanwhile; the job timeout still
    applies), so the user reads this message rather than a generic "the worker stopped"."""
    while True:
        try:
            if cache.update_attempt(run_id, attempt, ("running",), status=status, stage=status, error=message,
                                    finished=time.time()):
                cache.delete_arrays(run_id)
            cache.release_running(run_id, attempt)
            return
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(1.0)


def run_extension(run_id: str, analyses: list[str]) -> str:
    """RQ entry point of :func:`backend.jobs.extend`: run ``analyses`` on a finished run and add their arrays
    under the same run id (no pattern store: the run has its patterns). The run stays ``done`` throughout;
    progress goes to the manifest's ``extension`` record, and ``sizes``, ``extra_analyses`` and the notices
    are merged only once every array is written, so a view never sees half an analysis."""
    from backend.engine.analyze import Cancelled, analyze

    settings = get_settings()
    cache = Cache(connect(settings, patient=True), settings)
    manifest = cache.manifest(run_id)
    if manifest is None or manifest.get("status") != "done":
        return "run not done"
    spec = manifest["spec"]
    ext = {**(manifest.get("extension") or {}), "analyses": analyses, "status": "running", "stage": "loading model",
           "progress": 0.0, "error": "", "heartbeat": time.time()}
    cache.update(run_id, extension=ext)
    writer = _Writer(cache, run_id)
    def write_extension(frac: float, stage: str, now: float) -> None:
        ext.update(progress=frac, stage=stage, heartbeat=now)
        cache.update(run_id, extension=ext)

    progress = throttled(write_extension)

    try:
        ref = resolve_model(spec["model"], settings)
        loaded = registry(settings).get(ref, spec["options"]["dtype"])
        inputs = _load_inputs(cache, spec, settings)
        options = {**spec["options"], "analyses": sorted(set(analyses) | {"attention"})}
        info = analyze(loaded, inputs, options, writer, progress, lambda: False, settings, store_patterns=False)
        writer.flush()
        fresh = cache.manifest(run_id) or manifest
        old_info = fresh.get("info") or {}
        notices = list(old_info.get("notices") or [])
        notices += [n for n in info.notices if n not in notices]
        cache.update(run_id, sizes={**(fresh.get("sizes") or {}), **writer.sizes},
                     extra_analyses=sorted(set(fresh.get("extra_analyses") or []) | set(analyses)),
                     info={**old_info, "notices": notices},
                     extension={**ext, "status": "done", "stage": "done", "progress": 1.0, "finished": time.time()})
        return "done"
    except BaseException as exc:  # noqa: BLE001  (the worker must go on serving)
        known = isinstance(exc, (ModelError, SpecError, ValueError, Cancelled))
        if not known:
            traceback.print_exc()
        msg = str(exc) if known else _failure_message(exc)
        failed = {**ext, "status": "failed", "stage": "failed", "error": msg, "finished": time.time()}
        if type(exc).__name__ == "JobTimeoutException" or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            cache.update(run_id, extension=failed)
            raise
    writer.buf.clear()
    release_memory()
    cache.update(run_id, extension=failed)
    return "failed"


def _start_derived(digest: str, kind: str) -> tuple[Settings, Cache, str]:
    """``(settings, cache, attempt id)`` of a derived job starting on this worker, registered as running."""
    settings = get_settings()
    cache = Cache(connect(settings, patient=True), settings)
    attempt = uuid.uuid4().hex
    cache.register_running(digest, attempt, worker_name(), kind)
    CURRENT.update(id=digest, attempt=attempt, kind=kind)
    return settings, cache, attempt


def _finished_run(cache: Cache, run_id: str, settings: Settings) -> tuple[dict, dict, Any]:
    """``(manifest, spec, loaded model)`` of the finished run a derived job works on (a clear error otherwise)."""
    manifest = cache.manifest(run_id)
    if manifest is None or manifest.get("status") != "done":
        raise SpecError("the run is unknown or not finished")
    spec = manifest["spec"]
    return manifest, spec, registry(settings).get(resolve_model(spec["model"], settings), spec["options"]["dtype"])


def _run_derived(base: dict, finish: Callable[[dict, int], None], work: Callable[[], tuple[dict, int]]) -> str:
    """Run a derived job's ``work`` (prune, lab, pattern: it returns the done record's fields and their TTL) and
    record how it ended through ``finish(record, ttl_s)``: done, or failed with a message (a known error's own; else
    the traceback is printed and the message says what kind of failure it was); a job timeout or an interrupt is
    recorded and raised again, for RQ and the worker's stop."""
    from backend.jobs import FAILURE_TTL_S

    try:
        fields, ttl_s = work()
        finish({**base, **fields, "status": "done", "stage": "done", "progress": 1.0}, ttl_s)
        return "done"
    except BaseException as exc:  # noqa: BLE001  (the worker must go on serving)
        known = isinstance(exc, (ModelError, SpecError, ValueError))
        if not known:
            traceback.print_exc()
        failed = {**base, "status": "failed", "stage": "failed", "error": str(exc) if known else _failure_message(exc)}
        if type(exc).__name__ == "JobTimeoutException" or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            finish(failed, FAILURE_TTL_S)
            raise
    release_memory()  # as run_analysis: after the except block, the job's tensors are no longer referenced
    finish(failed, FAILURE_TTL_S)
    return "failed"


def run_prune(digest: str, run_id: str, heads: list, prompt: int) -> str:
    """RQ entry point of a live pruning job (``backend.jobs.submit_prune``): metrics with every head and
    with ``heads`` switched off, top predictions for input ``prompt``; the record under ``keys.derived``
    goes running -> done (result TTL) or failed."""
    from backend.engine.importance_stage import prune_experiment
    from backend.jobs import put_prune

    settings, cache, attempt = _start_derived(digest, "prune")
    base = {"job": digest, "run_id": run_id, "heads": heads, "prompt": prompt, "created": time.time()}
    progress = throttled(lambda frac, stage, _now: put_prune(
        cache, digest, {**base, "status": "running", "stage": stage, "progress": frac}, settings.job_timeout_s + 600))

    def finish(record: dict, ttl_s: int) -> None:
        put_prune(cache, digest, {**record, "finished": time.time()}, ttl_s)
        cache.release_running(digest, attempt)
        CURRENT.clear()

    def work() -> tuple[dict, int]:
        progress(0.0, "loading model")
        manifest, spec, loaded = _finished_run(cache, run_id, settings)
        inputs = _load_inputs(cache, spec, settings)
        tokens = (manifest.get("info") or {}).get("tokens") if spec["kind"] == "text" else None
        return prune_experiment(loaded, inputs, tokens, spec["options"], heads, prompt, progress), settings.result_ttl_s

    return _run_derived(base, finish, work)


def run_lab(digest: str, run_id: str, spec: dict) -> str:
    """RQ entry point of an intervention-lab job (``backend.lab_jobs.submit_lab``): the request ``spec`` on
    the run's model and inputs; the record under ``keys.derived`` goes running -> done (result TTL, with
    its arrays) or failed."""
    from backend.engine.lab_job import lab_experiment
    from backend.lab_jobs import put_arrays, put_record

    settings, cache, attempt = _start_derived(digest, "lab")
    base = {"job": digest, "run_id": run_id, "spec": spec, "created": time.time()}
    progress = throttled(lambda frac, stage, _now: put_record(
        cache, digest, {**base, "status": "running", "stage": stage, "progress": frac}, settings.job_timeout_s + 600))

    def finish(record: dict, ttl_s: int) -> None:
        put_record(cache, digest, {**record, "finished": time.time()}, ttl_s)
        cache.release_running(digest, attempt)
        CURRENT.clear()

    def work() -> tuple[dict, int]:
        progress(0.0, "loading model")
        manifest, run_spec, loaded = _finished_run(cache, run_id, settings)
        tokens = (manifest.get("info") or {}).get("tokens") or []
        result, arrays = lab_experiment(loaded, list(run_spec["inputs"]), tokens, run_spec["options"], spec, progress)
        put_arrays(cache, digest, arrays, settings.result_ttl_s)
        return result, settings.result_ttl_s

    return _run_derived(base, finish, work)


def run_pattern(digest: str, run_id: str, prompt: int, layer: int) -> str:
    """RQ entry point of an on-request pattern job (``backend.pattern_jobs.submit_pattern``): the full pattern of
    input ``prompt`` in ``layer`` (every head), recomputed on the run's model and stored in ``ATLAS_PATTERN_DTYPE``
    with the result TTL; the record under ``keys.derived`` goes running -> done or failed."""
    from backend import patterns
    from backend.engine.pattern_job import layer_pattern
    from backend.pattern_jobs import put_pattern, stage_text

    settings, cache, attempt = _start_derived(digest, "pattern")
    base = {"job": digest, "run_id": run_id, "prompt": prompt, "layer": layer, "created": time.time()}

    def finish(record: dict, ttl_s: int) -> None:
        cache.put_record(digest, {**record, "finished": time.time()}, ttl_s)
        cache.release_running(digest, attempt)
        CURRENT.clear()

    def work() -> tuple[dict, int]:
        cache.put_record(digest, {**base, "status": "running", "stage": stage_text(prompt, layer), "progress": 0.0},
                         settings.job_timeout_s + 600)
        manifest, spec, loaded = _finished_run(cache, run_id, settings)
        inputs = _load_inputs(cache, spec, settings)
        tokens = ((manifest.get("info") or {}).get("tokens") or [None] * len(inputs))[prompt]
        pat = layer_pattern(loaded, inputs, prompt, layer, settings, tokens if spec["kind"] == "text" else None)
        put_pattern(cache, digest, patterns.for_storage(pat, settings.pattern_dtype), settings.result_ttl_s)
        return ({"n_heads": int(pat.shape[0]), "n_tokens": int(pat.shape[1]), "dtype": settings.pattern_dtype},
                settings.result_ttl_s)

    return _run_derived(base, finish, work)
