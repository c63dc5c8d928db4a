"""The sinks page's gate: a run with the StreamingLLM experiment opens without sink metrics (the page holds the
StreamingLLM card), any other run waits for (or offers) the metrics analysis. Real Redis manifests."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.integration


def _run(cache, analyses: list[str]) -> str:
    run_id = uuid.uuid4().hex
    cache.create_run(run_id, {"model": "x", "options": {"analyses": analyses}}, {"ref": "x"}, "test")
    cache.update(run_id, status="done", stage="done", progress=1.0)
    return run_id


def test_streaming_runs_open_the_sinks_page_without_metrics(cache) -> None:
    from app import sinks_data

    assert sinks_data.gate_analysis(_run(cache, ["attention", "streaming"])) is None
    assert sinks_data.gate_analysis(_run(cache, ["attention"])) == "metrics"
    assert sinks_data.gate_analysis(_run(cache, ["attention", "metrics"])) == "metrics"
    assert sinks_data.gate_analysis("0" * 32) == "metrics"  # unknown run: the gate says so as before
