"""Worker entry point: connect, import the engine, serve the queue in-process; warm up (numba, default model)
in a background thread meanwhile, so that the first job never waits for work it does not need.

While it starts, the worker says what it is doing in Redis (:mod:`workers.startup`); the run page and the API
show it to a run that waits.

Uses RQ's ``SimpleWorker``: jobs run in this process, so models stay resident and nothing forks
after CUDA is initialised. Several workers on several machines can serve one queue.

Redis going away does not end the worker: commands retry for ``ATLAS_REDIS_RETRY_S`` (a restart
pauses a job), and if RQ's loop gives up anyway the worker waits for Redis and starts it again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from backend.cache import Cache
from backend.jobs import queue_for, served_queues
from backend.model_refs import DEFAULT_MODEL, ModelError, resolve_model
from backend.recovery import worker_name
from backend.redis_conn import connect
from backend.settings import get_settings
from workers.memory import apply_memory_cap
from workers.startup import StartupReporter

log = logging.getLogger("atlas.worker")
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def import_engine(report: StartupReporter | None = None) -> None:
    """Import torch and the engine (every job needs them)."""
    if report:
        report.phase("importing", "importing torch and the analysis engine")
    from backend.engine import capture  # noqa: F401  (registers the attention function)
    from workers import tasks  # noqa: F401


def warm_up(preload: str | None = DEFAULT_MODEL, report: StartupReporter | None = None) -> None:
    """Pay one-off costs of later jobs: torch import, UMAP's numba compile, the default model.

    ``ATLAS_WARM_PROJECTIONS=0`` skips the numba compile (the first map job pays it instead)."""
    settings = get_settings()
    if "workers.tasks" not in sys.modules:
        import_engine(report)
    from workers.tasks import registry

    if os.environ.get("ATLAS_WARM_PROJECTIONS", "1") != "0":
        if report:
            report.phase("warming", "compiling the projection kernels (numba; the query-key maps need them)")
        try:
            from backend import embedding_projection

            embedding_projection.warm_up()
        except (ImportError, AttributeError):
            pass
    if preload:
        if report:
            report.phase("preloading", f"preloading model {preload}")
        try:
            registry(settings).get(resolve_model(preload, settings), settings.dtype)
        except ModelError as exc:
            log.warning("could not preload %s: %s", preload, exc)
    if report:
        report.ready()


def _background_warm_up(preload: str | None, report: StartupReporter) -> threading.Thread:
    def run() -> None:
        try:
            warm_up(preload, report)
        except Exception as exc:  # noqa: BLE001  (a failed warm-up leaves the work to the jobs; never the worker)
            log.warning("warm-up failed (jobs will load what they need): %s", exc)
            report.phase("ready", f"ready; the warm-up failed: {exc}")

    t = threading.Thread(target=run, daemon=True, name="warm-up")
    t.start()
    return t


def preload_setting(raw: str | None) -> str | None:
    """``ATLAS_PRELOAD``: ``0`` none, ``1`` or unset the default model, anything else a model to preload."""
    raw = (raw or "1").strip()
    return None if raw == "0" else DEFAULT_MODEL if raw == "1" else raw


STOP_GRACE_S = float(os.environ.get("ATLAS_STOP_GRACE_S", "3"))
"""After SIGTERM, a running job has this long to stop at a check; then it is requeued and the process exits."""


def _watchdog(grace_s: float) -> None:
    """Give the running job ``grace_s`` to stop by itself; if it has not, requeue it and end the process now
    (so that a stop takes seconds, not the rest of a long job)."""
    from workers import tasks

    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not tasks.CURRENT:
            return
        time.sleep(0.05)
    if tasks.CURRENT:
        log.warning("the job did not stop within %.1f s of SIGTERM; requeueing it and exiting", grace_s)
        try:
            tasks.abandon_current("the worker was stopped (SIGTERM)")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


class AtlasWorker(SimpleWorker):
    """RQ's in-process worker that remembers whether it was asked to stop (SIGTERM / SIGINT); a job in
    flight stops at its next check and is queued again (``workers.tasks.STOPPING``)."""

    stop_asked = False

    def subscribe(self) -> None:
        """No pubsub thread: RQ's commands (stop-job, shutdown) do nothing on this worker anyway
        (cancellation is cooperative), and joining that thread at exit took up to a minute."""

    def unsubscribe(self) -> None:
        """Nothing to undo (see ``subscribe``)."""

    def execute_job(self, job, queue):  # noqa: ANN001  (RQ's signature)
        """Run the job in this process; right after RQ has recorded its end, put a run that a stop
        interrupted back on its queue (earlier, RQ's bookkeeping would overwrite the new job)."""
        from workers import tasks

        try:
            return super().execute_job(job, queue)
        finally:
            tasks.enqueue_stopped()

    def request_stop(self, signum, frame):  # noqa: ANN001  (RQ's signal handler signature)
        from workers import tasks

        self.stop_asked = True
        if not tasks.STOPPING.is_set():
            tasks.STOPPING.set()
            threading.Thread(target=_watchdog, args=(STOP_GRACE_S,), daemon=True).start()
        super().request_stop(signum, frame)


def _wait_for_redis(conn: redis.Redis) -> None:
    """Block until Redis answers again (checks once a second)."""
    while True:
        try:
            if conn.ping():
                return
        except REDIS_ERRORS:
            pass
        time.sleep(1.0)


def serve(conn: redis.Redis, name: str, burst: bool = False) -> None:
    """Run RQ's work loop; when it ends without a stop request (Redis lost for longer than the retry
    window, or an unexpected error), wait for Redis and run it again under the same name."""
    from rq.exceptions import StopRequested

    settings = get_settings()
    queues = [queue_for(conn, settings, q) for q in served_queues(settings)]
    while True:
        worker = AtlasWorker(queues, connection=conn, serializer=JSONSerializer, name=name)
        try:
            worker.work(burst=burst, with_scheduler=False, logging_level="INFO")
        except REDIS_ERRORS as exc:  # raised by RQ's teardown while Redis is still away
            log.warning("lost Redis (%s)", exc)
        except StopRequested:
            return
        if burst or worker.stop_asked:
            return
        log.warning("the work loop ended unexpectedly; waiting for Redis, then serving again")
        while not worker.stop_asked:
            try:
                time.sleep(1.0)
                _wait_for_redis(conn)
                worker.register_death()  # so the same name can register again
                break
            except REDIS_ERRORS:
                continue
            except StopRequested:
                return
        if worker.stop_asked:
            return


def _device_name(setting: str) -> str:
    from backend.engine.models import pick_device

    try:
        return str(pick_device(setting))
    except ModelError:
        return setting


def main(burst: bool = False, preload: str | None = DEFAULT_MODEL) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    settings = get_settings()
    conn = connect(settings, patient=True)
    name = worker_name()
    report = StartupReporter(Cache(conn, settings), name)
    report.start()
    env = os.environ.get("ATLAS_PRELOAD")
    if env is not None and (env.strip() == "0" or preload == DEFAULT_MODEL):
        preload = preload_setting(env)  # ATLAS_PRELOAD=0 always wins; a model name replaces the default
    if settings.worker_memory_mb > 0:
        # the memory cap is the start-up footprint plus ATLAS_WORKER_MEMORY_MB: warm up first, as before
        warm_up(preload, report)
        apply_memory_cap(settings.worker_memory_mb, _device_name(settings.device))
    else:
        import_engine(report)  # every job needs it; the rest runs beside the jobs
        _background_warm_up(preload, report)
    log.info("serving queue(s) %s", ", ".join(served_queues(settings)))
    try:
        serve(conn, name, burst)
    finally:
        report.close()
        from workers import tasks

        tasks.enqueue_stopped()  # runs interrupted by the stop go back on their queues
    # End now: the interpreter's teardown of torch and numba can take seconds, and nothing is left to save.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
