"""Item 9 of issue 15: `attention-atlas analyze` without REDIS_URL finds the server `attention-atlas serve` started
on this machine (its private Redis, key prefix and web address), and says so clearly when there is none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, _free_port, _tail, log_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ATLAS_KEY_PREFIX", "ATLAS_QUEUE")}
    env.update(HF_HUB_OFFLINE="1", ATLAS_RUNTIME_DIR=str(tmp_path / "runtime"))
    return env


def test_analyze_without_redis_url_and_no_server(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "attention_atlas.cli", "analyze", "Hello."], cwd=ROOT,
                         env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "no running `attention-atlas serve` was found" in out.stderr


def test_analyze_finds_the_local_serve(tmp_path) -> None:
    port = _free_port()
    env = _env(tmp_path)
    log = log_file("serve-discovery")
    proc = subprocess.Popen([sys.executable, "-m", "attention_atlas.cli", "serve", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    record = tmp_path / "runtime" / f"serve-{port}.json"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, _tail(log)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, _tail(log)
                time.sleep(0.3)
        assert record.is_file() and oct(record.stat().st_mode & 0o777) == "0o600"
        out = subprocess.run([sys.executable, "-m", "attention_atlas.cli", "analyze", "Found it.", "--wait"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        run_id, url = out.stdout.split()[:2]
        assert url == f"http://127.0.0.1:{port}/runs/{run_id}"
        assert f"using the server at http://127.0.0.1:{port}" in out.stderr
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs/{run_id}", timeout=10).read().decode()
        assert '"status":"done"' in body.replace(" ", "")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert not record.exists()  # withdrawn when the server stops
