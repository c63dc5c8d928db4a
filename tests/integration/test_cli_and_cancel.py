"""The CLI's analyze command and cancelling a running job, against a real Redis and worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from backend import jobs
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_cli_analyze_prints_run_id_and_url_and_waits(atlas_env, worker, cache) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "attention_atlas.cli", "analyze", "A prompt from the command line.", "--wait",
         "--base-url", "http://atlas.example:8050"],
        cwd=ROOT, env={**os.environ, **atlas_env}, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    run_id, url = out.stdout.split()
    assert url == f"http://atlas.example:8050/runs/{run_id}"
    m = cache.manifest(run_id)
    assert m["status"] == "done" and m["info"]["tokens"][0][:3] == ["[CLS]", "a", "prompt"]
    assert "100.0%" in out.stderr


def test_cli_analyze_reports_bad_input(atlas_env) -> None:
    out = subprocess.run([sys.executable, "-m", "attention_atlas.cli", "analyze", "x", "--model", "nope/nope"],
                         cwd=ROOT, env={**os.environ, **atlas_env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "error:" in out.stderr and "offline" in out.stderr


def test_cancel_a_running_job(atlas_env, worker, cache) -> None:
    from backend.settings import get_settings

    s = get_settings()
    prompts = [f"Long enough prompt number {i} for the job to take a while to finish." for i in range(200)]
    run_id, queued = jobs.submit(cache, s, "all-MiniLM-L6-v2", prompts, {"analyses": ["metrics"]})
    assert queued
    deadline = time.time() + 120
    while cache.manifest(run_id)["status"] == "queued":
        assert time.time() < deadline
        time.sleep(0.05)
    assert jobs.cancel(cache, s, run_id)
    while cache.manifest(run_id)["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.1)
    m = jobs.status(cache, s, run_id)
    assert m["status"] == "cancelled" and "cancelled" in m["error"]
    assert not cache.has_arrays(run_id, ["prompt.0.input_ids"])  # partial results removed
    # the worker goes on serving
    rid2, _ = jobs.submit(cache, s, "all-MiniLM-L6-v2", ["after a cancel"], None)
    while jobs.status(cache, s, rid2)["status"] in ("queued", "running"):
        assert time.time() < deadline + 60
        time.sleep(0.1)
    assert cache.manifest(rid2)["status"] == "done"
