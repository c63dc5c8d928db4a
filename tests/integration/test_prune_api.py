"""Head importance through the real worker, and live pruning as a job on the JSON API, checked against a
direct computation with ``evaluate_with_gates`` / ``top_predictions`` in this process."""

from __future__ import annotations

import time

import numpy as np
import pytest

from backend import names
from tests.conftest import api_call, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-pydoc-lm"
PROMPTS = ['The "if" statement is used for conditional execution.',
           "A list is a mutable sequence of objects.",
           "Strings are immutable sequences of Unicode code points."]
HEADS = [[2, 0], [0, 1], [3, 3]]


_call = api_call

def _wait_prune(base: str, run_id: str, job: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, body = _call(base, f"/api/runs/{run_id}/prune/{job}")
        assert code in (200, 202), body
        if code == 200:
            return body
        assert body["status"] in ("queued", "running") and body["job"] == job
        time.sleep(0.2)
    raise TimeoutError(f"pruning job {job} did not finish")


@pytest.fixture(scope="module")
def run_id(live_app, worker) -> str:
    code, body = _call(live_app, "/api/runs", {"model": MODEL, "prompts": PROMPTS,
                                               "options": {"analyses": ["attention", "importance"]}})
    assert code in (200, 202), body
    done = wait_done(live_app, body["run_id"])
    assert done["status"] == "done", done
    return body["run_id"]


def test_importance_arrays_and_metrics_api(live_app, run_id, cache) -> None:
    code, body = _call(live_app, f"/api/runs/{run_id}/metrics")
    assert code == 200
    n_layers, n_heads = body["n_layers"], body["n_heads"]
    assert (n_layers, n_heads) == (4, 4)
    imp = np.asarray(body["metrics"]["importance"], dtype=np.float64)
    norm = np.asarray(body["metrics"]["importance_normalised"], dtype=np.float64)
    assert imp.shape == norm.shape == (n_layers, n_heads)
    assert (imp > 0).all() and np.isfinite(imp).all()
    np.testing.assert_allclose(np.linalg.norm(norm, axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(norm, imp / np.linalg.norm(imp, axis=1, keepdims=True), rtol=1e-3, atol=1e-6)
    # pruning curves: 16 heads, 10 % per step -> 2 heads per step -> 9 points from 0 to 1
    for order in ("importance", "reverse", "random"):
        frac = cache.get_array(run_id, names.pruning(order, "fractions"))
        loss = cache.get_array(run_id, names.pruning(order, "loss"))
        assert frac.tolist() == pytest.approx([i / 8 for i in range(9)], abs=1e-6)
        assert loss.shape == (9,) and np.isfinite(loss).all()
        assert loss[0] == pytest.approx(cache.get_array(run_id, names.pruning("importance", "loss"))[0])
    assert cache.get_array(run_id, names.pruning("random", "loss_std")).shape == (9,)
    removed = cache.get_array(run_id, names.pruning("importance", "removed"))
    assert sorted(map(tuple, removed.tolist())) == [(l, h) for l in range(4) for h in range(4)]


def test_prune_job_matches_a_direct_computation(live_app, run_id) -> None:
    code, first = _call(live_app, f"/api/runs/{run_id}/prune", {"heads": HEADS, "prompt": 1})
    assert code in (200, 202), first
    job = first["job"]
    assert len(job) == 64
    if code == 202:
        assert first["status"] in ("queued", "running")
    body = first if code == 200 else _wait_prune(live_app, run_id, job)
    assert body["status"] == "done", body
    assert body["run_id"] == run_id and body["heads"] == sorted(HEADS)
    for side in ("before", "after"):
        assert set(body[side]) >= {"loss", "perplexity", "accuracy"}
    assert len(body["predictions"]["before"]) == 5 and len(body["predictions"]["after"]) == 5

    # the same numbers computed here, from the prompts and the model, without the app
    import torch

    from backend.engine.importance_gates import evaluate_with_gates, top_predictions
    from backend.engine.models import load_model
    from backend.model_refs import resolve_model
    from backend.settings import get_settings

    s = get_settings()
    loaded = load_model(resolve_model(MODEL, s), s)
    tok = loaded.preprocessor
    batch = dict(tok(PROMPTS, padding=True, return_tensors="pt"))
    gates = torch.ones(4, 4)
    for layer, head in HEADS:
        gates[layer, head] = 0
    before = evaluate_with_gates(loaded.model, [batch], "causal_lm", None)
    after = evaluate_with_gates(loaded.model, [batch], "causal_lm", gates)
    for side, ref in (("before", before), ("after", after)):
        assert body[side]["loss"] == pytest.approx(ref["loss"], rel=1e-5), side
        assert body[side]["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-5), side
        assert body[side]["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12), side
    assert body["after"]["loss"] != pytest.approx(body["before"]["loss"], rel=1e-6)
    one = dict(tok([PROMPTS[1]], return_tensors="pt"))
    for side, g in (("before", None), ("after", gates)):
        ref = top_predictions(loaded.model, one, "causal_lm", g, k=5)
        got = body["predictions"][side]
        assert [p["id"] for p in got] == [i for i, _ in ref]
        assert [p["prob"] for p in got] == pytest.approx([p for _, p in ref], rel=1e-5)
        assert got[0]["token"] == tok.decode([ref[0][0]])

    # content-addressed: the same request in another order is a cache hit, answered at once
    code, again = _call(live_app, f"/api/runs/{run_id}/prune", {"heads": HEADS[::-1], "prompt": 1})
    assert code == 200 and again["job"] == job and again["after"] == body["after"]
    # another prompt is another job
    code, other = _call(live_app, f"/api/runs/{run_id}/prune", {"heads": HEADS})
    assert code in (200, 202) and other["job"] != job


@pytest.mark.parametrize("heads, message", [
    ([[4, 0]], "layer 4 is out of range"),
    ([[0, 4]], "head 4 is out of range"),
    ([[0, 1], [0, 1]], "listed twice"),
    ([[0]], "pair of integers"),
    ([[0, True]], "pair of integers"),
    ([[-1, 0]], "out of range"),
    ("0-1", "list of [layer, head] pairs"),
])
def test_bad_heads_are_400(live_app, run_id, heads, message) -> None:
    code, body = _call(live_app, f"/api/runs/{run_id}/prune", {"heads": heads})
    assert code == 400 and message in body["error"], body


def test_other_errors(live_app, run_id) -> None:
    assert _call(live_app, f"/api/runs/{run_id}/prune", {"heads": [], "prompt": 3})[0] == 400
    code, body = _call(live_app, f"/api/runs/{run_id}/prune", {"prompt": 0})
    assert code == 400 and "heads" in body["error"]
    assert _call(live_app, f"/api/runs/{'0' * 32}/prune", {"heads": []})[0] == 404
    assert _call(live_app, f"/api/runs/{run_id}/prune/{'0' * 64}")[0] == 404
    assert _call(live_app, f"/api/runs/{run_id}/prune/not-a-job")[0] == 404
