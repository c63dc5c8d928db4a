"""The README's one command: `attention-atlas serve` with REDIS_URL unset starts its own Redis, a worker
and the web server, serves a MiniLM analysis offline, and stops everything on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, _free_port, _tail, log_file, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def test_serve_starts_redis_worker_and_app_then_stops_them(tmp_path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ATLAS_KEY_PREFIX", "ATLAS_QUEUE")}
    env["HF_HUB_OFFLINE"] = "1"
    env["ATLAS_DATA_DIR"] = str(tmp_path / "data")  # the private Redis keeps its data here
    log = log_file("serve")
    proc = subprocess.Popen([sys.executable, "-m", "attention_atlas.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, _tail(log)
            try:
                urllib.request.urlopen(url + "/api/runs", timeout=2)
                break
            except OSError:
                assert time.time() < deadline
                time.sleep(0.3)
        kids = _children(proc.pid)
        assert len(kids) == 2  # the private redis-server and one worker
        req = urllib.request.Request(url + "/api/runs", data=json.dumps({"prompts": ["One command."]}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        run_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["run_id"]
        final = wait_done(url, run_id, timeout=300)
        assert final["status"] == "done" and final["tokens"] == [["[CLS]", "one", "command", ".", "[SEP]"]]
        html = urllib.request.urlopen(f"{url}/runs/{run_id}", timeout=10).read().decode()
        assert "_dash-renderer" in html or "DashRenderer" in html
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    time.sleep(0.5)
    for pid in kids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
