"""The worker's start-up report in Redis: phases in order, "ready" at the end, gone when the worker ends, and a
stale entry (a worker killed while starting) ignored; the status line a waiting run shows."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import pytest

from backend import jobs, keys
from workers.startup import StartupReporter


@pytest.fixture()
def own_cache(cache):
    """A cache under a prefix of its own: the session's live workers report their state under the shared one."""
    from backend.cache import Cache

    c = Cache(cache.r, dataclasses.replace(cache.s, key_prefix=f"{cache.prefix}-startup-{uuid.uuid4().hex[:8]}"))
    yield c
    c.r.delete(keys.worker_states(c.prefix))


def test_phases_ready_close_and_stale_entries(own_cache) -> None:
    cache = own_cache
    rep = StartupReporter(cache, "atlas-test-host-1")
    rep.phase("importing", "importing torch and the analysis engine")
    [w] = jobs.starting_workers(cache)
    assert (w["name"], w["phase"], w["detail"]) == ("atlas-test-host-1", "importing", "importing torch and the analysis engine")
    assert jobs.start_message([w]).startswith("the worker is starting, ") and w["detail"] in jobs.start_message([w])
    rep.phase("preloading", "preloading model smollm2-135m")
    assert [x["phase"] for x in jobs.starting_workers(cache)] == ["preloading"]
    rep.ready()
    assert jobs.starting_workers(cache) == [] and jobs.start_message([]) == ""
    assert cache.worker_states()["atlas-test-host-1"]["phase"] == "ready"
    with pytest.raises(ValueError):
        rep.phase("dreaming", "x")
    rep.close()
    assert cache.worker_states() == {}
    # a worker killed while it started: its entry is no longer refreshed and is ignored after max_age_s
    cache.r.hset(keys.worker_states(cache.prefix), "atlas-test-host-2",
                 json.dumps({"phase": "importing", "detail": "x", "started": time.time() - 100,
                             "updated": time.time() - 100}))
    assert jobs.starting_workers(cache) == []
    cache.clear_worker_state("atlas-test-host-2")


def test_preload_setting() -> None:
    from backend.model_refs import DEFAULT_MODEL
    from workers.main import preload_setting

    assert preload_setting(None) == preload_setting("1") == DEFAULT_MODEL
    assert preload_setting("0") is None and preload_setting("smollm2-135m") == "smollm2-135m"
