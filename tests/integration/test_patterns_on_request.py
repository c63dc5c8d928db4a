"""Full patterns on request through real Redis, the real worker and the app's API: a text run stores none, the
first request answers 202 with the job's progress, the pattern then equals one computed in this process, a
repeated request is a cache hit, and a run that stored full patterns (made before ENGINE_VERSION 7) is read as
stored, with no job."""

from __future__ import annotations

import numpy as np
import pytest

from backend import names, pattern_jobs, patterns
from tests.conftest import api_call, submit_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-pydoc-lm"
PROMPTS = ["The list is a mutable sequence.", 'The "if" statement is used for conditional execution, twice: ' * 5]


@pytest.fixture(scope="module")
def run_id(live_app, worker) -> str:
    return submit_run(live_app, {"model": MODEL, "prompts": PROMPTS, "options": {"analyses": ["attention"]}})


@pytest.fixture(scope="module")
def loaded():
    from backend.engine.models import load_model
    from backend.model_refs import resolve_model
    from backend.settings import get_settings

    s = get_settings()
    return load_model(resolve_model(MODEL, s), s)


def test_a_pattern_is_computed_on_request(live_app, run_id, loaded, cache) -> None:
    from backend.engine.pattern_job import layer_pattern
    from backend.settings import get_settings

    m = cache.manifest(run_id)
    assert not [n for n in m["sizes"] if patterns.is_pattern(n)]  # no full pattern stored
    assert {names.attn_thumbs(1), names.attn_top_key(1), names.attn_top_weight(1)} <= set(m["sizes"])
    code, body = api_call(live_app, f"/api/runs/{run_id}/attention?prompt=1&layer=2&head=3")
    assert code == 202 and body["status"] in ("queued", "running"), body
    assert body["stage"].startswith("computing layer 2 of prompt 2") and len(body["job"]) == 64
    code, att = api_call(live_app, f"/api/runs/{run_id}/attention?prompt=1&layer=2&head=3&wait=60", timeout=90)
    assert code == 200, att
    want = layer_pattern(loaded, m["spec"]["inputs"], 1, 2, get_settings(), m["info"]["tokens"][1])[3]
    np.testing.assert_allclose(att["pattern"], want, atol=patterns.FLOAT16_MAX_ABS_ERROR + 1e-6)
    # stored once per (run, prompt, layer): every head of the layer, float16, under the job's digest
    stored = pattern_jobs.get_pattern(cache, pattern_jobs.pattern_digest(run_id, 1, 2))
    assert stored.dtype == np.float16 and stored.shape == (loaded.n_heads, len(want), len(want))
    # another head of the same layer is a cache hit: 200 at once
    code, other = api_call(live_app, f"/api/runs/{run_id}/attention?prompt=1&layer=2&head=0")
    assert code == 200 and np.allclose(other["pattern"], stored[0].astype(np.float32), atol=1e-6)


def test_pair_waits_for_both_patterns(live_app, run_id) -> None:
    code, pair = api_call(live_app, f"/api/runs/{run_id}/pair?a=0&b=1&layer=3&head=1&wait=60", timeout=90)
    assert code == 200, pair
    n = pair["n_common"]
    assert n == len(pair["tokens_a"]) < len(pair["tokens_b"]) and np.shape(pair["b"]) == (len(pair["tokens_b"]),) * 2
    want = np.asarray(pair["b"])[:n, :n] - np.asarray(pair["a"])
    np.testing.assert_allclose(pair["difference"], want, atol=2e-6)


def test_wait_is_validated(live_app, run_id) -> None:
    for bad in ("x", "-1", "61", "nan"):
        code, body = api_call(live_app, f"/api/runs/{run_id}/attention?prompt=0&layer=0&head=0&wait={bad}")
        assert code == 400 and "wait must be" in body["error"], (bad, body)


def test_a_run_that_stored_full_patterns_is_read_as_stored(live_app, run_id, cache, loaded) -> None:
    """Runs made before ENGINE_VERSION 7 kept every pattern: a stored one is served as it is, with no job."""
    n = len(cache.manifest(run_id)["info"]["tokens"][0])
    old = np.tril(np.ones((loaded.n_heads, n, n), dtype=np.float32))
    old /= old.sum(-1, keepdims=True)
    sizes = cache.put_arrays(run_id, [(names.attn_pattern(0, 1), old)])
    cache.update(run_id, sizes={**cache.manifest(run_id)["sizes"], **sizes})
    code, att = api_call(live_app, f"/api/runs/{run_id}/attention?prompt=0&layer=1&head=2")
    assert code == 200, att
    np.testing.assert_allclose(att["pattern"], old[2], atol=patterns.FLOAT16_MAX_ABS_ERROR)
    assert cache.get_record(pattern_jobs.pattern_digest(run_id, 0, 1)) is None  # no job was asked for
