"""Scale-out on RQ: two worker processes on different queues (as a CPU worker and a GPU worker would be),
one Redis; every job runs exactly once, and a queue only one worker serves is served by that one."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from backend import jobs
from backend.cache import Cache
from backend.redis_conn import connect
from backend.settings import get_settings
from tests.conftest import purge_test_keys, start_worker, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_on_different_queues_run_each_job_once(redis_url, monkeypatch) -> None:
    tag = f"atlas-scale-{uuid.uuid4().hex[:8]}"
    general, gpu = tag, f"{tag}-gpu"
    base = {"REDIS_URL": redis_url, "ATLAS_KEY_PREFIX": tag, "ATLAS_QUEUE": general, "HF_HUB_OFFLINE": "1",
            "ATLAS_RATE_LIMIT": "1000", "ATLAS_MAX_ACTIVE_JOBS": "100", "ATLAS_WARM_PROJECTIONS": "0"}
    for k, v in base.items():
        monkeypatch.setenv(k, v)
    # "cpu" serves the general queue; "gpu" serves its own queue first, then helps with the general one
    # (both run on the CPU here: the device is a setting of the worker, the routing is by queue)
    cpu_w = start_worker({**base, "ATLAS_WORKER_QUEUES": general, "ATLAS_DEVICE": "cpu"}, preload=False)
    gpu_w = start_worker({**base, "ATLAS_WORKER_QUEUES": f"{gpu},{general}", "ATLAS_DEVICE": "cpu"}, preload=False)
    try:
        s = get_settings()
        cache = Cache(connect(s), s)
        submitted: dict[str, str | None] = {}
        lock = threading.Lock()

        def client(c: int) -> None:
            for j in range(6):
                queue = gpu if j % 3 == 0 else None
                prompt = f"client {c} job {j} on {'gpu' if queue else 'general'}"
                for _ in range(2):  # the same analysis twice at once: one run, one job
                    run_id, _queued = jobs.submit(cache, s, "all-MiniLM-L6-v2", [prompt], {"analyses": ["metrics"]},
                                                  client=f"c{c}", queue=queue)
                    with lock:
                        submitted[run_id] = queue

        threads = [threading.Thread(target=client, args=(c,)) for c in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(submitted) == 18
        import time

        deadline = time.time() + 600
        pending = set(submitted)
        while pending:
            assert time.time() < deadline, f"{len(pending)} runs unfinished"
            for run_id in list(pending):
                st = jobs.status(cache, s, run_id)
                assert st["status"] in ("queued", "running", "done"), st
                if st["status"] == "done":
                    pending.discard(run_id)
            time.sleep(0.5)
        by_worker: dict[str, int] = {}
        for run_id, queue in submitted.items():
            m = cache.manifest(run_id)
            assert m["attempts"] == 1, (run_id, m["attempts"])  # started exactly once
            assert m["queue"] == queue
            if queue == gpu:
                assert m["worker"].endswith(f"-{gpu_w.pid}"), m["worker"]
            by_worker[m["worker"]] = by_worker.get(m["worker"], 0) + 1
        assert sum(by_worker.values()) == 18 and len(by_worker) == 2, by_worker  # both took part
        assert cache.running_jobs() == {}
    finally:
        stop_process(cpu_w)
        stop_process(gpu_w)
        purge_test_keys(redis.Redis.from_url(redis_url), tag)
        purge_test_keys(redis.Redis.from_url(redis_url), gpu)
