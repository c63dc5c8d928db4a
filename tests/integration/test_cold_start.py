"""Cold start: a run submitted before the worker is up says what the starting worker is doing (API and run page),
and the worker's warm-up (numba compile, preloading a model) does not hold up the first job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import redis

from tests.conftest import ROOT, _free_port, _tail, api_call, log_file, purge_test_keys, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _serve_app(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = log_file("cold-app")
    proc = subprocess.Popen([sys.executable, "-m", "attention_atlas.cli", "serve", "--no-worker", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        assert proc.poll() is None, _tail(log)
        try:
            urllib.request.urlopen(url + "/api/runs", timeout=2)
            return proc, url
        except OSError:
            assert time.time() < deadline, "the app did not start"
            time.sleep(0.2)


def test_status_says_what_the_starting_worker_does_and_warm_up_does_not_block(atlas_env, monkeypatch) -> None:
    from app import run_gate, state
    from backend.cache import Cache
    from backend.redis_conn import connect
    from backend.settings import Settings

    tag = atlas_env["ATLAS_KEY_PREFIX"] + "-cold"
    env = {**os.environ, **atlas_env, "ATLAS_KEY_PREFIX": tag, "ATLAS_QUEUE": tag,
           "ATLAS_PRELOAD": "smollm2-135m", "ATLAS_WARM_PROJECTIONS": "1", "ATLAS_WORKER_MEMORY_MB": "0"}
    s = Settings(redis_url=atlas_env["REDIS_URL"], key_prefix=tag, queue_name=tag)
    cache = Cache(connect(s), s)
    app, url = _serve_app(env)
    worker = None
    try:
        code, body = api_call(url, "/api/runs", {"model": "all-MiniLM-L6-v2", "prompts": ["A cold start."],
                                                 "options": {"analyses": ["metrics"]}})
        assert code == 202, body
        run_id = body["run_id"]
        code, st = api_call(url, f"/api/runs/{run_id}")
        assert st["status"] == "queued" and st["workers_starting"] == []  # no worker yet: nothing claimed

        worker = subprocess.Popen([sys.executable, "-m", "workers.main"], cwd=ROOT, env=env,
                                  stdout=log_file("cold-worker"), stderr=subprocess.STDOUT, text=True)
        monkeypatch.setattr(state, "_cache", cache)  # the run page's gate, reading the same Redis as the app
        monkeypatch.setattr(state, "_url", atlas_env["REDIS_URL"])
        monkeypatch.setenv("ATLAS_KEY_PREFIX", tag)
        monkeypatch.setenv("ATLAS_QUEUE", tag)
        seen_api, seen_page, phase_when_started = [], [], None
        deadline = time.time() + 400
        while time.time() < deadline:
            code, st = api_call(url, f"/api/runs/{run_id}")
            assert code == 200, st
            if st["status"] == "queued":
                seen_api += [(w["phase"], w["detail"]) for w in st["workers_starting"]]
                if st["workers_starting"] and not seen_page:
                    label = str(run_gate.wait_for_run(run_id, lambda r: None).status)
                    seen_page.append(label)
            elif phase_when_started is None:
                phase_when_started = [w["phase"] for w in cache.worker_states().values()]
            if st["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert st["status"] == "done", st
        assert any(p == "importing" and "torch" in d for p, d in seen_api), seen_api
        assert seen_page and "the worker is starting" in seen_page[0] and "importing torch" in seen_page[0], seen_page
        # the job ran while the worker was still warming up (numba compile) or preloading SmolLM2: not after it
        assert phase_when_started and set(phase_when_started) <= {"warming", "preloading"}, phase_when_started
        code, st = api_call(url, f"/api/runs/{run_id}")
        assert st["workers_starting"] == []  # a finished run shows no start-up line

        # (the numba compile goes on: minutes on a loaded 2-core machine; tests/unit/test_worker_startup.py
        # follows the phases to "ready")
        assert [w["phase"] for w in cache.worker_states().values()] in (["warming"], ["preloading"], ["ready"])
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        assert cache.worker_states() == {}  # a stopped worker leaves no entry
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(app)
        purge_test_keys(redis.Redis.from_url(atlas_env["REDIS_URL"]), tag)
