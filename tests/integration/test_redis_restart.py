"""Redis restarted while a job runs: the job pauses and completes, or fails with a clear message; the
worker survives and serves the next job; nothing partial is ever shown as complete."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from backend import keys, patterns
from backend.embedded_redis import EmbeddedRedis
from tests.conftest import api_call, start_worker, stop_process, wait_done
from tests.integration.test_faults import _serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = [f"Prompt {i}: the restart of the cache must not lose or corrupt any of these attention rows."
           for i in range(200)]
RETRY_S = 10  # the worker retries Redis this long (ATLAS_REDIS_RETRY_S)
SHORT_OUTAGE_S = 6  # longer than redis-py's own retries (about 4 s), shorter than RETRY_S
LONG_OUTAGE_S = 16  # longer than RETRY_S


def _wait_running(url: str, run_id: str) -> None:
    deadline = time.time() + 120
    while api_call(url, f"/api/runs/{run_id}")[1]["status"] != "running":
        assert time.time() < deadline, "the job never started"
        time.sleep(0.05)


def _restart(server: EmbeddedRedis, workdir: Path, outage_s: float) -> tuple[EmbeddedRedis, float]:
    """Stop Redis cleanly (its append-only file is written out), wait, start it on the same port."""
    stopped_at = time.time()
    server.stop()
    time.sleep(outage_s)
    return EmbeddedRedis(workdir=workdir, port=server.port, persist=True), stopped_at


def _all_arrays_present(server: EmbeddedRedis, prefix: str, run_id: str, manifest_sizes: dict) -> bool:
    r = redis.Redis.from_url(server.url)
    pipe = r.pipeline(transaction=False)
    for name in manifest_sizes:
        pipe.exists(keys.run_tensor(prefix, run_id, name))
    return bool(manifest_sizes) and all(pipe.execute())


def _manifest(server: EmbeddedRedis, prefix: str, run_id: str) -> dict:
    import json

    raw = redis.Redis.from_url(server.url).hgetall(keys.run_manifest(prefix, run_id))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def test_redis_restarted_mid_job(tmp_path: Path) -> None:
    workdir = tmp_path / "redis"
    server = EmbeddedRedis(workdir=workdir, persist=True)
    tag = f"atlas-restart-{uuid.uuid4().hex[:6]}"
    env = {"REDIS_URL": server.url, "ATLAS_KEY_PREFIX": tag, "ATLAS_QUEUE": tag, "HF_HUB_OFFLINE": "1",
           "ATLAS_HEARTBEAT_S": "0.5", "ATLAS_REDIS_RETRY_S": str(RETRY_S), "ATLAS_WARM_PROJECTIONS": "0",
           "ATLAS_RATE_LIMIT": "1000", "ATLAS_MAX_ACTIVE_JOBS": "100"}
    app, url = _serve(env)
    worker = start_worker(env, preload=True)
    try:
        # 1. A short outage (longer than redis-py's own retries): the job pauses, then completes.
        code, body = api_call(url, "/api/runs", {"prompts": PROMPTS, "options": {"analyses": ["metrics"]}})
        assert code == 202
        run_a = body["run_id"]
        _wait_running(url, run_a)
        server, stopped_at = _restart(server, workdir, SHORT_OUTAGE_S)
        final = wait_done(url, run_a, timeout=300)
        assert final["status"] == "done", final
        m = _manifest(server, tag, run_a)
        assert m["finished"] > stopped_at, "the job had finished before Redis stopped: make it longer"
        assert _all_arrays_present(server, tag, run_a, m["sizes"])
        assert worker.poll() is None, "the worker died with Redis"

        # the results are right: the same analysis computed afterwards (another seed: another run id)
        code, body = api_call(url, "/api/runs", {"prompts": PROMPTS, "options": {"analyses": ["metrics"], "seed": 1}})
        assert code == 202 and body["run_id"] != run_a
        after = wait_done(url, body["run_id"], timeout=300)
        assert after["status"] == "done" and after["tokens"] == final["tokens"]
        for p in (0, 117, 199):
            for layer in range(6):
                _, a = api_call(url, f"/api/runs/{run_a}/attention?prompt={p}&layer={layer}&head={layer * 2}&wait=60", timeout=90)
                _, b = api_call(url, f"/api/runs/{body['run_id']}/attention?prompt={p}&layer={layer}&head={layer * 2}&wait=60", timeout=90)
                np.testing.assert_allclose(a["pattern"], b["pattern"], atol=1e-6)
                np.testing.assert_allclose(np.sum(a["pattern"], axis=1), 1.0, atol=patterns.FLOAT16_ROW_SUM_ERROR + 1e-5)
        code, metrics = api_call(url, f"/api/runs/{run_a}/metrics")
        assert code == 200 and len(metrics["metrics"]["sink_first"]) == 6

        # 2. An outage longer than the worker's retry window: the run fails with a clear message and
        #    shows nothing; the same worker serves the resubmission.
        code, body = api_call(url, "/api/runs", {"prompts": PROMPTS[:150], "options": {"analyses": ["metrics"]}})
        run_b = body["run_id"]
        _wait_running(url, run_b)
        server, stopped_at = _restart(server, workdir, LONG_OUTAGE_S)
        failed = wait_done(url, run_b, timeout=120)
        assert failed["status"] == "failed", failed
        assert "Redis" in failed["error"] or "worker stopped" in failed["error"], failed["error"]
        assert api_call(url, f"/api/runs/{run_b}/attention?prompt=0&layer=0&head=0")[0] == 409
        assert worker.poll() is None, "the worker died with Redis"
        code, again = api_call(url, "/api/runs", {"prompts": PROMPTS[:150], "options": {"analyses": ["metrics"]}})
        assert code == 202 and again["run_id"] == run_b
        done = wait_done(url, run_b, timeout=300)
        assert done["status"] == "done" and done["tokens"] == final["tokens"][:150]
        assert _all_arrays_present(server, tag, run_b, _manifest(server, tag, run_b)["sizes"])
        assert worker.poll() is None
        # and a submission of the first run again is answered from the cache
        code, body = api_call(url, "/api/runs", {"prompts": PROMPTS, "options": {"analyses": ["metrics"]}})
        assert code == 200 and body["run_id"] == run_a and body["queued"] is False
    finally:
        stop_process(worker)
        stop_process(app)
        server.stop()


def test_worker_serves_again_when_redis_vanishes_as_a_job_ends(tmp_path: Path) -> None:
    """Redis stops just as a job returns, for longer than the worker's retry window: RQ's loop gives
    up; the worker waits for Redis, registers again and serves the next analysis."""
    from datetime import datetime, timezone

    from rq import Worker
    from rq.serializers import JSONSerializer

    workdir = tmp_path / "redis"
    server = EmbeddedRedis(workdir=workdir, persist=True)
    tag = f"atlas-vanish-{uuid.uuid4().hex[:6]}"
    env = {"REDIS_URL": server.url, "ATLAS_KEY_PREFIX": tag, "ATLAS_QUEUE": tag, "HF_HUB_OFFLINE": "1",
           "ATLAS_REDIS_RETRY_S": "1", "ATLAS_WARM_PROJECTIONS": "0", "ATLAS_HEARTBEAT_S": "0.5"}
    app, url = _serve(env)
    worker = start_worker(env, preload=False)
    try:
        from rq import Queue

        Queue(tag, connection=redis.Redis.from_url(server.url), serializer=JSONSerializer).enqueue_call(
            "tests.integration.redis_jobs.shut_redis_down")
        server.proc.wait(60)  # the job stopped it
        time.sleep(5)  # well past the 1 s retry window
        back_at = datetime.now(timezone.utc)
        server = EmbeddedRedis(workdir=workdir, port=server.port, persist=True)
        code, body = api_call(url, "/api/runs", {"prompts": ["Served again after Redis came back."]})
        assert code == 202
        final = wait_done(url, body["run_id"], timeout=300)
        assert final["status"] == "done", final
        assert worker.poll() is None
        (me,) = [w for w in Worker.all(connection=redis.Redis.from_url(server.url)) if w.name.endswith(f"-{worker.pid}")]
        assert me.birth_date.replace(tzinfo=timezone.utc) >= back_at.replace(microsecond=0), (me.birth_date, back_at)
    finally:
        stop_process(worker)
        stop_process(app)
        server.stop()
