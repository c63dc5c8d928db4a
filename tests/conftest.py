"""Shared fixtures: a real Redis (db 13 under a unique key prefix), a real worker process, the real
app served over HTTP, and headless Chromium through Playwright."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/13"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis: ATLAS_TEST_REDIS_URL (default local db 13), else a private redis-server."""
    url = os.environ.get("ATLAS_TEST_REDIS_URL", DEFAULT_TEST_REDIS)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except redis.ConnectionError:
        pass
    from backend.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(workdir=Path("/tmp/atlas-test-redis"))
    yield server.url
    server.stop()


def purge_test_keys(r: redis.Redis, tag: str) -> None:
    """Delete what a test session under key prefix and queue ``tag`` left in Redis: its own keys, RQ's keys
    that name the queue, and RQ's job and result keys of every job that was queued on it (runs and prune jobs)."""
    doomed = list(r.scan_iter(f"{tag}:*", count=1000)) + list(r.scan_iter(f"rq:*{tag}*", count=1000))
    for rid in r.zrange(f"{tag}:runs", 0, -1):  # run ids are job ids
        doomed += list(r.scan_iter(f"rq:*{rid.decode()}*", count=1000))
    for key in r.scan_iter("rq:job:*", count=1000):
        if r.type(key) == b"hash" and (r.hget(key, "origin") or b"").decode().startswith(tag):  # its interactive queue too
            job_id = key.decode().split(":", 2)[2]
            doomed += [key] + list(r.scan_iter(f"rq:*{job_id}*", count=1000))
    for i in range(0, len(doomed), 500):
        r.delete(*doomed[i : i + 500])
    gone = [q for q in r.smembers("rq:queues") if tag.encode() in q]  # RQ's set of queue names
    if gone:
        r.srem("rq:queues", *gone)


@pytest.fixture(scope="session")
def atlas_env(redis_url: str):
    """Process environment for this test session: unique key prefix and queue, offline hub."""
    tag = f"atlas-test-{uuid.uuid4().hex[:8]}"
    env = {
        "REDIS_URL": redis_url, "ATLAS_KEY_PREFIX": tag, "ATLAS_QUEUE": tag, "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "ATLAS_RATE_LIMIT": "1000", "ATLAS_MAX_ACTIVE_JOBS": "100",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    purge_test_keys(redis.Redis.from_url(redis_url), tag)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def cache(atlas_env):
    from backend.cache import Cache
    from backend.redis_conn import connect
    from backend.settings import get_settings

    s = get_settings()
    return Cache(connect(s), s)


LOG_DIR = Path(os.environ.get("ATLAS_TEST_LOG_DIR", "/tmp/atlas-test-logs"))


def log_file(name: str):
    """A log file for a child process (never a pipe: an unread pipe fills up and blocks the child)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return open(LOG_DIR / f"{name}-{uuid.uuid4().hex[:6]}.log", "w+")


def _tail(f) -> str:
    f.flush()
    f.seek(0)
    return f.read()[-4000:]


def start_worker(env: dict[str, str], preload: bool = True) -> subprocess.Popen:
    """Start ``python -m workers.main`` and wait until it listens on the queue."""
    full = {**os.environ, **env, "ATLAS_PRELOAD": "1" if preload else "0"}
    log = log_file("worker")
    proc = subprocess.Popen([sys.executable, "-m", "workers.main"], cwd=ROOT, env=full,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    r = redis.Redis.from_url(env["REDIS_URL"])
    deadline = time.time() + 300  # loading torch + MiniLM; generous for a loaded machine
    from rq import Worker

    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{_tail(log)}")
        if any(w.name.endswith(f"-{proc.pid}") for w in Worker.all(connection=r)):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("worker did not start within 300 s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def worker(atlas_env):
    proc = start_worker(atlas_env)
    yield proc
    stop_process(proc)


def serve_app(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start ``attention-atlas serve --no-worker`` with ``env`` on a free port; returns the process and its URL
    once the API answers."""
    port = _free_port()
    log = log_file("app")
    proc = subprocess.Popen(
        [sys.executable, "-m", "attention_atlas.cli", "serve", "--no-worker", "--port", str(port)],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early:\n{_tail(log)}")
        try:
            urllib.request.urlopen(url + "/api/runs", timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    return proc, url


@pytest.fixture(scope="session")
def live_app(atlas_env):
    """The real app served by ``attention-atlas serve --no-worker`` on a free port; yields its URL."""
    proc, url = serve_app(atlas_env)
    yield url
    stop_process(proc)


@pytest.fixture()
def fresh_env(atlas_env, redis_url):
    """A second key prefix and queue of its own (no runs, no worker listening), purged afterwards: for an app
    started with :func:`serve_app` that must see an empty store or keep its runs queued."""
    tag = f"{atlas_env['ATLAS_KEY_PREFIX']}-{uuid.uuid4().hex[:4]}"
    yield {**atlas_env, "ATLAS_KEY_PREFIX": tag, "ATLAS_QUEUE": tag}
    purge_test_keys(redis.Redis.from_url(redis_url), tag)


def pick_option(page, dropdown: str, text: str, exact: bool = False) -> None:
    """Open the ``dcc.Dropdown`` with id ``dropdown`` and click its option whose label contains ``text`` (is
    ``text`` when ``exact``)."""
    page.click(f"#{dropdown}")
    if exact:
        page.get_by_role("option", name=text, exact=True).click()
    else:
        page.get_by_role("option", name=re.compile(re.escape(text))).first.click()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian chromium (scripts/test.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def wait_done(base_url: str, run_id: str, timeout: float = 240) -> dict:
    """Poll the API until the run finishes; returns the final status body and the statuses seen."""
    import json
    import urllib.request

    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(f"{base_url}/api/runs/{run_id}", timeout=10) as resp:
            body = json.loads(resp.read())
        seen.append((body["status"], body["progress"]))
        if body["status"] in ("done", "failed", "cancelled"):
            body["_seen"] = seen
            return body
        time.sleep(0.1)
    raise TimeoutError(f"run {run_id} did not finish; last {seen[-3:]}")


def api_call(base: str, path: str, body: object | None = None, timeout: float = 30) -> tuple[int, dict]:
    """GET (or POST a JSON body) to the app's API; returns (HTTP status, decoded JSON), errors included."""
    from tests.api_client import call

    return call(base, path, body, timeout)


def submit_run(base: str, body: dict, timeout: float = 400) -> str:
    """Submit a run through the API, wait until it is done (asserting it did not fail) and return its id."""
    code, out = api_call(base, "/api/runs", body)
    assert code in (200, 202), out
    final = wait_done(base, out["run_id"], timeout=timeout)
    assert final["status"] == "done", final
    return out["run_id"]


def get_json(base: str, path: str) -> dict:
    """GET an API path that must answer 200; returns the decoded JSON."""
    code, out = api_call(base, path)
    assert code == 200, (path, code, out)
    return out


def digit_png(row: int) -> bytes:
    """Row ``row`` of scikit-learn's digits rendered as the demo ViT expects, as PNG bytes (32 x 32)."""
    import io

    from PIL import Image
    from sklearn.datasets import load_digits

    from backend.sample_images import render_digit

    buf = io.BytesIO()
    Image.fromarray(render_digit(load_digits().data[row]), "L").resize((32, 32)).save(buf, format="PNG")
    return buf.getvalue()
