"""Job orchestration only: read the run's spec, run the analysis, store arrays, record the outcome.

Runs inside an RQ ``SimpleWorker`` (same process for every job), so the model registry below keeps
models resident between jobs.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

import numpy as np
import redis

from backend.cache import Cache
from backend.jobs import HEARTBEAT_S
from backend.model_refs import ModelError, resolve_model
from backend.redis_conn import connect
from backend.settings import Settings, get_settings
from backend.spec import SpecError
from workers.memory import cap_mb, is_out_of_memory, release_memory

_REGISTRY = None
FLUSH_BYTES = 8 * 1024 * 1024


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
    """Marks the run alive every HEARTBEAT_S seconds so a killed worker is noticed."""

    def __init__(self, cache: Cache, run_id: str) -> None:
        super().__init__(daemon=True)
        self.cache, self.run_id = cache, run_id
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.cache.update(self.run_id, heartbeat=time.time())
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
    if manifest is None:
        return "unknown run"
    spec = manifest["spec"]
    cache.delete_arrays(run_id)  # a retry never mixes with a crashed attempt's partial arrays
    cache.update(run_id, status="running", stage="loading model", progress=0.0, started=time.time(),
                 heartbeat=time.time(), error="")
    beat = _Heartbeat(cache, run_id)
    beat.start()
    writer = _Writer(cache, run_id)
    last = [0.0]

    def progress(frac: float, stage: str) -> None:
        now = time.time()
        if now - last[0] > 0.25 or frac >= 1.0:
            last[0] = now
            cache.update(run_id, progress=round(float(frac), 4), stage=stage)

    failure, outcome = "", "failed"
    try:
        ref = resolve_model(spec["model"], settings)
        loaded = registry(settings).get(ref, spec["options"]["dtype"])
        inputs = _load_inputs(cache, spec, settings)
        info = analyze(loaded, inputs, spec["options"], writer, progress,
                       lambda: cache.cancel_requested(run_id), settings)
        writer.flush()
        cache.update(run_id, info=info.to_dict(), sizes=writer.sizes, status="done", stage="done",
                     progress=1.0, finished=time.time())
        return "done"
    except Cancelled:
        failure, outcome = "cancelled by the user", "cancelled"
    except (ModelError, SpecError, UnsupportedArchitecture, ValueError) as exc:
        failure = str(exc)
    except BaseException as exc:  # noqa: BLE001  (the worker must go on serving)
        traceback.print_exc()
        failure = _failure_message(exc)
        if type(exc).__name__ == "JobTimeoutException" or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            _record_failure(cache, run_id, failure, "failed")
            raise
    finally:
        beat.stop.set()
    # Here, after the except blocks, the exception, its frames and the job's tensors are released:
    # collect what cycles still hold before recording the failure, which then needs no memory that a
    # job over its cap used up. (A successful job skips this: a full collection costs ~0.2 s.)
    writer.buf.clear()
    release_memory()
    _record_failure(cache, run_id, failure, outcome)
    return outcome


def _record_failure(cache: Cache, run_id: str, message: str, status: str) -> None:
    """Drop any partial arrays, then mark the run failed (or cancelled) with ``message``.

    Waits for Redis if it is away (the worker can do nothing else meanwhile; the job timeout still
    applies), so the user reads this message rather than a generic "the worker stopped"."""
    while True:
        try:
            cache.delete_arrays(run_id)
            cache.update(run_id, status=status, stage=status, error=message, finished=time.time())
            return
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(1.0)


def run_prune(digest: str, run_id: str, heads: list, prompt: int) -> str:
    """RQ entry point of a live pruning job (``backend.jobs.submit_prune``): metrics with every head and
    with ``heads`` switched off, top predictions for input ``prompt``; the record under ``keys.derived``
    goes running -> done (result TTL) or failed."""
    from backend.engine.importance_stage import prune_experiment
    from backend.jobs import FAILURE_TTL_S, put_prune

    settings = get_settings()
    cache = Cache(connect(settings, patient=True), settings)
    base = {"job": digest, "run_id": run_id, "heads": heads, "prompt": prompt, "created": time.time()}
    last = [0.0]

    def progress(frac: float, stage: str) -> None:
        now = time.time()
        if now - last[0] > 0.25 or frac >= 1.0:
            last[0] = now
            put_prune(cache, digest, {**base, "status": "running", "stage": stage, "progress": round(float(frac), 4)},
                      settings.job_timeout_s + 600)

    try:
        progress(0.0, "loading model")
        manifest = cache.manifest(run_id)
        if manifest is None or manifest.get("status") != "done":
            raise SpecError("the run is unknown or not finished")
        spec = manifest["spec"]
        loaded = registry(settings).get(resolve_model(spec["model"], settings), spec["options"]["dtype"])
        inputs = _load_inputs(cache, spec, settings)
        tokens = (manifest.get("info") or {}).get("tokens") if spec["kind"] == "text" else None
        result = prune_experiment(loaded, inputs, tokens, spec["options"], heads, prompt, progress)
        put_prune(cache, digest, {**base, **result, "status": "done", "stage": "done", "progress": 1.0,
                                  "finished": time.time()}, settings.result_ttl_s)
        return "done"
    except BaseException as exc:  # noqa: BLE001  (the worker must go on serving)
        if not isinstance(exc, (ModelError, SpecError, ValueError)):
            traceback.print_exc()
        msg = str(exc) if isinstance(exc, (ModelError, SpecError, ValueError)) else _failure_message(exc)
        failed = {**base, "status": "failed", "stage": "failed", "error": msg}
        if type(exc).__name__ == "JobTimeoutException" or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            put_prune(cache, digest, {**failed, "finished": time.time()}, FAILURE_TTL_S)
            raise
    release_memory()  # as run_analysis: after the except block, the job's tensors are no longer referenced
    put_prune(cache, digest, {**failed, "finished": time.time()}, FAILURE_TTL_S)
    return "failed"
