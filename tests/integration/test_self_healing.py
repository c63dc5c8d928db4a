"""`attention-atlas serve` heals itself: a worker SIGKILLed mid-job is restarted and its run retried (the
API and the run page say so); SIGTERM ends serve, its worker and its private Redis within 5 s with the job
in flight queued again; the private Redis keeps its data in ATLAS_DATA_DIR, so after a restart the finished
run is still there and the interrupted one completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, _free_port, _tail, api_call, log_file, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _children(pid: int) -> dict[int, str]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True)
    kids = {}
    for line in out.stdout.splitlines():
        k, _, cmd = line.strip().partition(" ")
        kids[int(k)] = cmd
    return kids


def _worker_pids(pid: int) -> list[int]:
    return [k for k, cmd in _children(pid).items() if "workers.main" in cmd]


def _start(env: dict[str, str], port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "attention_atlas.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, _tail(log)
        try:
            urllib.request.urlopen(url + "/api/runs", timeout=2)
            return proc
        except OSError:
            assert time.time() < deadline, _tail(log)
            time.sleep(0.3)


def _wait_running(url: str, run_id: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while True:
        body = api_call(url, f"/api/runs/{run_id}")[1]
        if body["status"] == "running" and body["progress"] > 0:
            return
        assert body["status"] in ("queued", "running") and time.time() < deadline, body
        time.sleep(0.05)


def _prompts(tag: str, n: int = 96) -> list[str]:
    return [f"{tag} sentence {i} says something about attention heads and the roles they play." for i in range(n)]


def test_killed_worker_restarted_sigterm_fast_data_kept(tmp_path: Path, browser) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ATLAS_KEY_PREFIX", "ATLAS_QUEUE")}
    env.update(HF_HUB_OFFLINE="1", ATLAS_DATA_DIR=str(tmp_path / "data"), ATLAS_WARM_PROJECTIONS="0")
    url = f"http://127.0.0.1:{port}"
    log = log_file("serve-heal")
    proc = _start(env, port, log)
    try:
        # 1. SIGKILL the worker mid-job: it is restarted and the run retried once
        code, body = api_call(url, "/api/runs", {"prompts": _prompts("first"), "options": {"analyses": ["metrics"]}})
        assert code == 202, body
        first = body["run_id"]
        _wait_running(url, first)
        [old] = _worker_pids(proc.pid)
        os.kill(old, signal.SIGKILL)
        deadline = time.time() + 30
        while not (st := api_call(url, f"/api/runs/{first}")[1])["events"]:
            assert time.time() < deadline, _tail(log)
            time.sleep(0.1)
        assert st["status"] in ("queued", "running") and "SIGKILL" in st["events"][0], st
        final = wait_done(url, first, timeout=400)
        assert final["status"] == "done" and final["attempts"] == 2, final
        new = _worker_pids(proc.pid)
        assert len(new) == 1 and new != [old]
        page = browser.new_page()
        page.goto(f"{url}/runs/{first}")
        page.wait_for_selector("text=killed by SIGKILL", timeout=60_000)  # the run page says what happened
        page.close()

        # 2. SIGTERM with a job in flight: everything gone within 5 s, the job queued again
        code, body = api_call(url, "/api/runs", {"prompts": _prompts("second", 240), "options": {"analyses": ["metrics"]}})
        second = body["run_id"]
        _wait_running(url, second)
        kids = list(_children(proc.pid))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        took = time.monotonic() - t0
        assert took < 5.0, f"serve took {took:.1f} s to stop\n{_tail(log)}"
        time.sleep(0.2)
        for pid in kids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        assert list((tmp_path / "data" / "redis").rglob("*.aof")), "no append-only file in the data folder"

        # 3. Restart on the same data folder: the finished run is still there, the interrupted one completes
        proc = _start(env, port, log)
        st = api_call(url, f"/api/runs/{first}")[1]
        assert st["status"] == "done" and st["tokens"] == final["tokens"]
        code, att = api_call(url, f"/api/runs/{first}/attention?prompt=3&layer=2&head=1&wait=60", timeout=90)
        assert code == 200 and len(att["pattern"]) == len(final["tokens"][3])
        again = wait_done(url, second, timeout=400)
        assert again["status"] == "done", again
        assert any("SIGTERM" in e for e in again["events"]), again["events"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_a_job_that_does_not_stop_is_requeued_and_the_worker_exits(redis_url) -> None:
    """SIGTERM while a job never reaches a stop check: after ATLAS_STOP_GRACE_S the watchdog queues the run
    again and ends the process (instead of waiting for the job)."""
    import uuid

    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from backend.cache import Cache
    from backend.redis_conn import connect
    from backend.settings import Settings
    from tests.conftest import purge_test_keys, start_worker

    tag = f"atlas-stop-{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": redis_url, "ATLAS_KEY_PREFIX": tag, "ATLAS_QUEUE": tag, "HF_HUB_OFFLINE": "1",
           "ATLAS_WARM_PROJECTIONS": "0", "ATLAS_STOP_GRACE_S": "1.0"}
    s = Settings(redis_url=redis_url, key_prefix=tag, queue_name=tag)
    cache = Cache(connect(s), s)
    run_id = uuid.uuid4().hex
    cache.create_run(run_id, {"model": "x", "kind": "text", "inputs": ["a"], "options": {}}, {"ref": "x"}, "t")
    worker = start_worker(env, preload=False)
    try:
        q = Queue(tag, connection=cache.r, serializer=JSONSerializer)
        q.enqueue_call("tests.integration.redis_jobs.stubborn_run", args=(run_id,), job_id=run_id, timeout=300)
        deadline = time.time() + 60
        while (cache.manifest(run_id) or {}).get("status") != "running":
            assert time.time() < deadline
            time.sleep(0.1)
        t0 = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)
        took = time.monotonic() - t0
        assert took < 4.0, f"worker took {took:.1f} s to exit"
        m = cache.manifest(run_id)
        assert m["status"] == "queued" and "SIGTERM" in m["events"][0] and m["attempts"] == 0, m
        assert run_id in q.job_ids  # back on its queue for the next worker
        assert cache.running_jobs() == {}
    finally:
        if worker.poll() is None:
            worker.kill()
        purge_test_keys(redis.Redis.from_url(redis_url), tag)
