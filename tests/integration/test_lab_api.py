"""The intervention lab and extreme tokens as jobs on the real worker through the JSON API, checked against
the run's stored arrays and a computation in this process."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import api_call, submit_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-pydoc-lm"
PROMPTS = ["The list is a mutable sequence.",  # 9 tokens
           'The "if" statement is used for conditional execution.',
           "A list is a mutable sequence."]  # 9 tokens: the corrupted twin of prompt 0


def _wait(base: str, run_id: str, job: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, body = api_call(base, f"/api/runs/{run_id}/lab/{job}")
        assert code in (200, 202), body
        if code == 200:
            return body
        assert body["status"] in ("queued", "running")
        time.sleep(0.2)
    raise TimeoutError(f"lab job {job} did not finish")


def _submit(base: str, run_id: str, spec: dict) -> dict:
    code, body = api_call(base, f"/api/runs/{run_id}/lab", spec)
    assert code in (200, 202), body
    done = body if code == 200 else _wait(base, run_id, body["job"])
    assert done["status"] == "done", done
    return done


@pytest.fixture(scope="module")
def run_id(live_app, worker) -> str:
    return submit_run(live_app, {"model": MODEL, "prompts": PROMPTS,
                                 "options": {"analyses": ["attention", "metrics"]}})


@pytest.fixture(scope="module")
def loaded():
    from backend.engine.models import load_model
    from backend.model_refs import resolve_model
    from backend.settings import get_settings

    s = get_settings()
    return load_model(resolve_model(MODEL, s), s)


def test_scaling_the_first_token_job(live_app, run_id, loaded) -> None:
    spec = {"kind": "intervene", "op": "scale", "factor": 0.25, "keys": [0], "heads": [[1, 2], [3, 0]], "prompt": 1}
    body = _submit(live_app, run_id, spec)
    assert body["spec"] == {**spec, "heads": [[1, 2], [3, 0]]}
    assert set(body["before"]) >= {"loss", "perplexity", "accuracy"} and body["after"]["loss"] != body["before"]["loss"]
    assert len(body["predictions"]["before"]) == 5 and len(body["predictions"]["after"]) == 5
    # the patterns before the intervention are the run's own (float16 in the lab)
    code, att = api_call(live_app, f"/api/runs/{run_id}/lab/{body['job']}/attention?layer=1&head=2")
    assert code == 200, att
    _, stored = api_call(live_app, f"/api/runs/{run_id}/attention?prompt=1&layer=1&head=2&wait=60", timeout=90)
    np.testing.assert_allclose(att["before"], stored["pattern"], atol=2e-3)
    # after: first column scaled by 0.25, rows renormalised (layer 1 is the first intervened layer)
    a = np.asarray(stored["pattern"], dtype=np.float64)
    a[:, 0] *= 0.25
    np.testing.assert_allclose(att["after"], a / a.sum(1, keepdims=True), atol=2e-3)
    np.testing.assert_allclose(att["difference"], np.subtract(att["after"], att["before"]), atol=1e-6)
    share = np.asarray(body["key_share"]["after"])[1, 2]
    assert share < np.asarray(body["key_share"]["before"])[1, 2]
    # the loss computed here with the engine's session and the same intervention
    from backend.engine import lab_measures
    from backend.engine.lab_job import _metrics
    from backend.engine.importance_stage import make_batches

    tokens = [loaded.preprocessor.convert_ids_to_tokens(loaded.preprocessor(p)["input_ids"]) for p in PROMPTS]
    batches = make_batches(loaded, PROMPTS, tokens)
    mods = lab_measures.mods_for("scale", spec["heads"], 4, 4, keys=[0], factor=0.25)
    after = _metrics(loaded.model, "causal_lm", batches, [{"task": "causal_lm"}] * len(batches), mods)
    assert body["after"]["loss"] == pytest.approx(after["loss"], rel=1e-5)
    # a repeat is a cache hit (the same digest, answered at once)
    code, again = api_call(live_app, f"/api/runs/{run_id}/lab", {**spec, "heads": spec["heads"][::-1]})
    assert code == 200 and again["job"] == body["job"] and again["after"] == body["after"]


def test_mask_and_mean_ablation_jobs(live_app, run_id) -> None:
    masked = _submit(live_app, run_id, {"kind": "intervene", "op": "mask", "keys": [0, 3], "heads": "all", "prompt": 0})
    # every query but the first loses keys 0 and 3; query 0 sees only key 0 and keeps its row: share 1/9
    np.testing.assert_allclose(masked["key_share"]["after"], 1 / 9, atol=1e-6)
    code, att = api_call(live_app, f"/api/runs/{run_id}/lab/{masked['job']}/attention?layer=2&head=1")
    after = np.asarray(att["after"])
    assert np.abs(after[1:, [0, 3]]).max() < 1e-3 and after[0, 0] == pytest.approx(1.0, abs=1e-3)
    mean = _submit(live_app, run_id, {"kind": "intervene", "op": "mean", "heads": [[0, 0], [2, 3]], "prompt": 2})
    assert "keys" not in mean["spec"] and mean["after"]["loss"] != mean["before"]["loss"]


def test_activation_patching_job(live_app, run_id, loaded) -> None:
    spec = {"kind": "patch", "clean": 0, "corrupted": 2, "answers": [" It", " A"]}
    body = _submit(live_app, run_id, spec)
    assert np.asarray(body["resid"]).shape == (4, 9) and np.asarray(body["heads"]).shape == (4, 4)
    from backend.engine import lab_measures

    tok = loaded.preprocessor
    good, bad = tok(" It", add_special_tokens=False)["input_ids"][0], tok(" A", add_special_tokens=False)["input_ids"][0]
    ref = lab_measures.patching(loaded.model, tok(PROMPTS[0])["input_ids"], tok(PROMPTS[2])["input_ids"], good, bad)
    assert body["ld_clean"] == pytest.approx(ref["ld_clean"], rel=1e-5)
    np.testing.assert_allclose(body["resid"], ref["resid"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(body["heads_normalised"], ref["heads_normalised"], rtol=1e-4, atol=1e-5)
    # the prompts differ only at position 1: patching it into block 0's input is the clean run
    assert body["resid_normalised"][0][1] == pytest.approx(1.0, abs=1e-5)


def test_extremes_domains_and_pair(live_app, run_id) -> None:
    code, body = api_call(live_app, f"/api/runs/{run_id}/extremes?prompt=1&eps=0.2")
    if code == 202:
        _wait(live_app, run_id, body["job"])
        code, body = api_call(live_app, f"/api/runs/{run_id}/extremes?prompt=1&eps=0.2")
    assert code == 200 and body["status"] == "done", body
    received = np.asarray(body["received"])
    assert received.shape == (4, 4, len(body["tokens"]))
    _, stored = api_call(live_app, f"/api/runs/{run_id}/received?prompt=1&layer=2")
    np.testing.assert_allclose(received[2], stored["received"], atol=1e-5)  # the sinks analysis' alpha
    np.testing.assert_allclose(body["contribution"], received * np.asarray(body["value_norm"]), atol=1e-5)
    assert all(s["alpha"] > 0.2 for s in body["sinks"])

    code, dom = api_call(live_app, f"/api/runs/{run_id}/domains?labels=prose,code,prose")
    if code == 202:
        _wait(live_app, run_id, dom["job"])
        code, dom = api_call(live_app, f"/api/runs/{run_id}/domains?labels=prose,code,prose")
    assert code == 200 and dom["status"] == "done", dom
    assert dom["domains"] == ["prose", "code", "numbers", "random tokens"]
    assert dom["counts"] == [10, 9, 8, 8]  # 8 built-in each, plus the run's inputs by their labels
    rates = np.asarray(dom["sink_rate"])
    assert rates.shape == (4, 4, 4) and ((rates >= 0) & (rates <= 1)).all()
    np.testing.assert_allclose(dom["switch"], rates.max(0) - rates.min(0))

    code, pair = api_call(live_app, f"/api/runs/{run_id}/pair?a=0&b=2&layer=1&head=3&wait=60", timeout=90)
    assert code == 200 and pair["n_common"] == 9
    np.testing.assert_allclose(pair["difference"], np.subtract(pair["b"], pair["a"]), atol=2e-6)  # (rounded to 1e-6)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "intervene", "op": "shrink"}, "op must be one of"),
    ({"kind": "intervene", "keys": [40]}, "outside the prompt"),
    ({"kind": "intervene", "factor": -1}, "factor must be"),
    ({"kind": "intervene", "heads": [[9, 0]]}, "layer 9 is out of range"),
    ({"kind": "intervene", "heads": []}, "heads is empty"),
    ({"kind": "patch", "clean": 0, "corrupted": 1, "answers": [" a", " b"]}, "same number of tokens"),
    ({"kind": "patch", "clean": 0, "corrupted": 2, "answers": [" a"]}, "two non-empty strings"),
    ({"kind": "extremes", "prompt": 7}, "prompt must be the index"),
    ({"kind": "nothing"}, "kind must be one of"),
    ({"kind": "domains", "x": 1}, "unknown field"),
])
def test_bad_requests_are_400(live_app, run_id, spec, message) -> None:
    code, body = api_call(live_app, f"/api/runs/{run_id}/lab", spec)
    assert code == 400 and message in body["error"], body


def test_unknown_jobs_and_runs(live_app, run_id) -> None:
    assert api_call(live_app, f"/api/runs/{run_id}/lab/{'0' * 64}")[0] == 404
    assert api_call(live_app, f"/api/runs/{run_id}/lab/nope")[0] == 404
    assert api_call(live_app, f"/api/runs/{'0' * 32}/lab", {"kind": "domains"})[0] == 404


def test_a_lab_job_whose_worker_died_is_failed_with_a_message(cache) -> None:
    """Recovery (``backend.recovery.lost_jobs``) treats lab jobs like pruning jobs: failed, to be asked for again."""
    from backend.recovery import lost_jobs
    from backend.settings import get_settings

    digest = "e" * 64
    cache.put_record(digest, {"job": digest, "run_id": "r" * 32, "status": "running", "created": time.time()}, 600)
    cache.register_running(digest, "attempt-1", "worker-x", "lab")
    assert lost_jobs(cache, get_settings(), "killed by the test", worker="worker-x") == {digest: "failed"}
    rec = cache.get_record(digest)
    assert rec["status"] == "failed" and "lab job (killed by the test)" in rec["error"]
    assert digest not in cache.running_jobs()
