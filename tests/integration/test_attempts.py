"""Run bookkeeping against a real Redis: arrays deleted through the per-run index (no keyspace scan),
one connection pool per process, the heartbeat/delete race, and the retry-once recovery of a lost worker."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from backend import jobs, keys, names
from backend.cache import Cache
from backend.recovery import MAX_ATTEMPTS, lost_jobs, lost_run
from workers.tasks import _Heartbeat

pytestmark = pytest.mark.integration

SPEC = {"model": "x", "kind": "text", "inputs": ["a"], "options": {"dtype": "float32"}}


def _run(cache: Cache) -> str:
    run_id = uuid.uuid4().hex
    cache.create_run(run_id, SPEC, {"ref": "x"}, "test")
    return run_id


def _scans(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_scan", "cmdstat_keys"))


def test_delete_arrays_uses_the_run_index_not_a_keyspace_scan(tmp_path: Path) -> None:
    from backend.embedded_redis import EmbeddedRedis
    from backend.settings import Settings

    server = EmbeddedRedis(workdir=tmp_path)  # a server of our own: its command counters are ours alone
    try:
        r = redis.Redis.from_url(server.url)
        cache = Cache(r, Settings(redis_url=server.url, key_prefix="idx"))
        a, b = _run(cache), _run(cache)
        arrays = [(names.attn_pattern(0, l), np.full((2, 3, 3), l, np.float32)) for l in range(40)]
        cache.put_arrays(a, arrays)
        cache.put_arrays(a, [("metrics.sink_first", np.ones((2, 2), np.float32))])
        cache.put_arrays(b, arrays[:3])
        for i in range(2000):  # unrelated keys that a scan would have to walk past
            r.set(f"other:{i}", b"x")
        before = _scans(r)
        assert cache.delete_arrays(a) == 41
        assert _scans(r) == before, "delete_arrays scanned the keyspace"
        assert list(r.scan_iter(keys.run_tensor_pattern("idx", a))) == []
        assert not r.exists(keys.run_array_index("idx", a))
        assert len(list(r.scan_iter(keys.run_tensor_pattern("idx", b)))) == 3  # another run's arrays stay
        cache.delete_run(b)
        assert list(r.scan_iter("idx:run:*")) == [keys.run_manifest("idx", a).encode()]
    finally:
        server.stop()


def test_one_connection_pool_per_process(atlas_env) -> None:
    from backend.redis_conn import connect, pool_count
    from backend.settings import get_settings

    s = get_settings()
    first = connect(s, patient=True)
    assert all(connect(s, patient=True) is first for _ in range(50))
    assert connect(s) is connect(s)
    assert pool_count(s.redis_url) == 2  # one patient (workers), one impatient (web requests)


def test_heartbeat_after_delete_writes_nothing(cache: Cache) -> None:
    run_id = _run(cache)
    attempt = uuid.uuid4().hex
    assert cache.start_attempt(run_id, attempt, "w1", status="running") == 1
    beat = _Heartbeat(cache, run_id, attempt)
    assert beat.beat()
    cache.delete_run(run_id)
    assert not beat.beat() and beat.superseded
    assert cache.r.exists(keys.run_manifest(cache.prefix, run_id)) == 0  # no partial manifest
    assert cache.manifest(run_id) is None


def test_heartbeat_in_flight_while_the_run_is_deleted(cache: Cache) -> None:
    """Interleave deterministically: the heartbeat thread has decided to beat and is held just before its
    write reaches Redis; the run is deleted; the write is released. The old unconditional HSET recreated a
    manifest holding only ``heartbeat``; the fenced write must leave nothing."""
    run_id = _run(cache)
    attempt = uuid.uuid4().hex
    cache.start_attempt(run_id, attempt, "w1", status="running")
    arrived, release = threading.Event(), threading.Event()
    real = cache.update_attempt

    def held(*args, **kwargs):
        arrived.set()
        assert release.wait(10)
        return real(*args, **kwargs)

    cache.update_attempt = held  # type: ignore[method-assign]
    beat = _Heartbeat(cache, run_id, attempt)
    beat.start()
    assert arrived.wait(10)
    cache.delete_run(run_id)  # while the beat is in flight
    release.set()
    beat.join(10)
    assert not beat.is_alive() and beat.superseded  # the thread noticed and ended
    assert cache.r.exists(keys.run_manifest(cache.prefix, run_id)) == 0

    # the unconditional write this replaces does leave a partial manifest (so the test above can fail)
    cache.update(run_id, heartbeat=1.0)
    assert set(cache.manifest(run_id)) == {"heartbeat"}
    cache.delete_run(run_id)


def test_late_writes_of_a_retried_attempt_are_dropped(cache: Cache, atlas_env) -> None:
    from backend.settings import get_settings

    run_id = _run(cache)
    old = uuid.uuid4().hex
    cache.start_attempt(run_id, old, "w1", status="running")
    assert lost_run(cache, get_settings(), run_id, old, "test: worker gone") == "requeued"
    new = uuid.uuid4().hex
    assert cache.start_attempt(run_id, new, "w2", status="running", heartbeat=5.0) == 2
    assert not cache.update_attempt(run_id, old, ("running",), heartbeat=99.0, status="done")
    m = cache.manifest(run_id)
    assert (m["attempt"], m["worker"], m["heartbeat"], m["status"]) == (new, "w2", 5.0, "running")


def test_lost_worker_is_retried_once_then_failed_with_a_message(cache: Cache, atlas_env) -> None:
    from backend.settings import get_settings

    s = get_settings()
    run_id = _run(cache)
    first = uuid.uuid4().hex
    cache.start_attempt(run_id, first, "atlas-h-1", status="running")
    cache.put_arrays(run_id, [("metrics.sink_first", np.ones((1, 1), np.float32))])
    # two observers notice the same loss at once: exactly one requeues
    outcomes = [lost_run(cache, s, run_id, first, "its worker process was killed by SIGKILL") for _ in range(2)]
    assert outcomes == ["requeued", None]
    m = cache.manifest(run_id)
    assert m["status"] == "queued" and "attempt 2 of 2" in m["stage"] and "SIGKILL" in m["events"][0]
    job = Job.fetch(run_id, connection=cache.r, serializer=JSONSerializer)
    assert job.get_status() == "queued" and job.origin == s.queue_name
    assert run_id not in cache.running_jobs()

    second = uuid.uuid4().hex
    assert cache.start_attempt(run_id, second, "atlas-h-2", status="running") == MAX_ATTEMPTS
    assert lost_jobs(cache, s, "its worker process was killed by SIGKILL", worker="atlas-h-1") == {}
    assert lost_jobs(cache, s, "its worker process was killed by SIGKILL", worker="atlas-h-2") == {run_id: "failed"}
    m = cache.manifest(run_id)
    assert m["status"] == "failed" and "on the retry too" in m["error"] and "SIGKILL" in m["error"]
    assert len(m["events"]) == 2 and not cache.r.exists(keys.run_array_index(cache.prefix, run_id))

    from app.api import status_body

    body = status_body(m)
    assert body["status"] == "failed" and body["attempts"] == 2 and len(body["events"]) == 2
    jobs.cancel(cache, s, run_id)


def test_silent_heartbeat_requeues_through_status(cache: Cache, atlas_env) -> None:
    """A worker on another machine that goes silent: the status check requeues its run (no supervisor)."""
    from backend.settings import get_settings

    s = get_settings()
    run_id = _run(cache)
    jobs.enqueue(cache, s, run_id)
    attempt = uuid.uuid4().hex
    cache.start_attempt(run_id, attempt, "remote-1", status="running", heartbeat=1.0)  # silent since 1970
    st = jobs.status(cache, s, run_id)
    assert st["status"] == "queued" and "heartbeat stopped" in st["events"][0]
    jobs.cancel(cache, s, run_id)


def test_a_requeue_whose_job_never_reached_the_queue_is_enqueued_once(cache: Cache, atlas_env) -> None:
    """A stopped worker marked its run queued but died before putting the new job on the queue (RQ still
    holds the old, finished job): the status check puts it there, exactly once."""
    from rq.job import JobStatus

    from backend.settings import get_settings
    from workers.tasks import requeue_after_stop

    s = get_settings()
    run_id = _run(cache)
    jobs.enqueue(cache, s, run_id)
    attempt = uuid.uuid4().hex
    cache.start_attempt(run_id, attempt, "w1", status="running")
    assert requeue_after_stop(cache, run_id, attempt, None)  # enqueue deferred ...
    job = Job.fetch(run_id, connection=cache.r, serializer=JSONSerializer)
    job.set_status(JobStatus.FINISHED)  # ... and RQ recorded the old job's end; then the process died
    st = jobs.status(cache, s, run_id)
    assert st["status"] == "queued" and st["attempts"] == 0 and "SIGTERM" in st["events"][0]
    assert Job.fetch(run_id, connection=cache.r, serializer=JSONSerializer).get_status() == "queued"
    token = cache.manifest(run_id)["attempt"]
    jobs.status(cache, s, run_id)
    assert cache.manifest(run_id)["attempt"] == token  # not enqueued a second time
    from rq import Queue

    assert Queue(s.queue_name, connection=cache.r).job_ids.count(run_id) == 1
    jobs.cancel(cache, s, run_id)
