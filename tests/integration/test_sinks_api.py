"""The sink metrics and the StreamingLLM arrays through the real worker and the JSON API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from backend import names
from tests.conftest import wait_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = ["The cat sat on the mat.", "Attention heads often look at separators, commas and periods."]
GRID = ("sink_first", "sink_special", "entropy", "distance")


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as resp:
        return json.loads(resp.read())


def _post(base: str, body: dict) -> dict:
    req = urllib.request.Request(base + "/api/runs", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_metrics_api_returns_grids_and_a_consistent_sink_rate(live_app, worker) -> None:
    run = _post(live_app, {"model": "all-MiniLM-L6-v2", "prompts": PROMPTS,
                           "options": {"analyses": ["attention", "metrics"]}})
    assert wait_done(live_app, run["run_id"])["status"] == "done"
    body = _get(live_app, f"/api/runs/{run['run_id']}/metrics")
    n_layers, n_heads = body["n_layers"], body["n_heads"]
    assert (n_layers, n_heads) == (6, 12)
    m = body["metrics"]
    for name in GRID:
        grid = np.asarray(m[name], dtype=np.float64)
        assert grid.shape == (n_layers, n_heads), name
        assert np.isfinite(grid).all()
    assert isinstance(m["sink_rate"], float)
    assert body["sink_eps"] == 0.3 and body["sink_rule"] == "per_prompt"
    first = np.asarray(m["sink_first"])
    # the default rule thresholds each prompt's alpha (released code); the variant thresholds the mean alpha
    alpha = np.stack([[np.asarray(_get(live_app, f"/api/runs/{run['run_id']}/received?prompt={p}&layer={l}")
                                  ["received"])[:, 0] for l in range(n_layers)] for p in range(len(PROMPTS))])
    assert m["sink_rate"] == pytest.approx(float(np.mean(alpha > 0.3)), abs=1e-6)
    for eps in (0.2, 0.45):
        got = _get(live_app, f"/api/runs/{run['run_id']}/metrics?eps={eps}")
        assert got["sink_eps"] == eps
        assert got["metrics"]["sink_rate"] == pytest.approx(float(np.mean(alpha > eps)), abs=1e-6)
    variant = _get(live_app, f"/api/runs/{run['run_id']}/metrics?sink_rule=prompt_mean")
    assert variant["metrics"]["sink_rate"] == pytest.approx(float(np.mean(first > 0.3)), abs=1e-6)
    for bad in ("eps=2", "eps=abc", "sink_rule=majority"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(live_app, f"/api/runs/{run['run_id']}/metrics?{bad}")
        assert err.value.code == 400
    assert ((first >= 0) & (first <= 1)).all()

    # the per-position view agrees with the grid: alpha(first token) of every head of layer 2, averaged
    firsts = [np.asarray(_get(live_app, f"/api/runs/{run['run_id']}/received?prompt={p}&layer=2")["received"])[:, 0]
              for p in range(len(PROMPTS))]
    np.testing.assert_allclose(np.mean(firsts, axis=0), first[2], atol=2e-6)


def test_streaming_stage_runs_on_the_demo_lm_and_skips_encoders(live_app, worker, cache) -> None:
    text = ('The "for" statement is used to iterate over the elements of a sequence (such as a string, '
            "tuple or list) or other iterable object. The expression list is evaluated once.")
    lm = _post(live_app, {"model": "tiny-pydoc-lm", "prompts": [text],
                          "options": {"analyses": ["attention", "metrics", "streaming"]}})
    enc = _post(live_app, {"model": "all-MiniLM-L6-v2", "prompts": ["An encoder has no next token."],
                           "options": {"analyses": ["attention", "streaming"]}})
    done = wait_done(live_app, lm["run_id"])
    assert done["status"] == "done", done
    n = len(done["tokens"][0])
    arrays = {k: cache.get_array(lm["run_id"], names.streaming(k)) for k in ("nll_full", "nll_window", "nll_sink", "params")}
    for k in ("nll_full", "nll_window", "nll_sink"):
        assert arrays[k].shape == (n - 1,) and arrays[k].dtype == np.float32 and np.isfinite(arrays[k]).all()
    assert arrays["params"].dtype == np.int32 and arrays["params"].tolist()[1] == 4
    assert int(cache.get_array(lm["run_id"], names.streaming("reassigned"))) == 1
    skipped = wait_done(live_app, enc["run_id"])
    assert skipped["status"] == "done"
    assert any("StreamingLLM" in n for n in skipped["notices"])
    assert cache.get_array(enc["run_id"], names.streaming("nll_full")) is None
