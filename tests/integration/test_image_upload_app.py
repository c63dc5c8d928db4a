"""The app's image upload (the new-analysis page's upload callback, over HTTP as the browser sends it):
a decompression bomb is refused with its size and nothing is stored; a real image is stored."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request

import pytest
import redis

from backend import keys
from tests.unit.test_image_bombs import jpeg_declaring, png_bomb

pytestmark = [pytest.mark.integration]


def _upload(base_url: str, name: str, data: bytes) -> dict:
    """What the browser posts when a file is dropped on the upload box; returns the callback's outputs."""
    mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
    body = {
        "output": "..new-prompts.value...new-images.data...new-upload-status.children...new-labels.data..",
        "outputs": [{"id": "new-prompts", "property": "value"}, {"id": "new-images", "property": "data"},
                    {"id": "new-upload-status", "property": "children"}, {"id": "new-labels", "property": "data"}],
        "inputs": [{"id": "new-upload", "property": "contents",
                    "value": [f"data:{mime};base64," + base64.b64encode(data).decode()]}],
        "changedPropIds": ["new-upload.contents"],
        "state": [{"id": "new-upload", "property": "filename", "value": [name]},
                  {"id": "new-prompts", "property": "value", "value": ""},
                  {"id": "new-images", "property": "data", "value": []},
                  {"id": "new-model", "property": "value", "value": "digits-vit"},
                  {"id": "new-model-custom", "property": "value", "value": None}],
    }
    req = urllib.request.Request(base_url + "/_dash-update-component", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["response"]


@pytest.mark.parametrize("name,data", [
    ("bomb.png", png_bomb(10_000, 10_000)),
    ("huge.png", png_bomb(40_000, 40_000, with_pixels=False)),
    ("huge.jpg", jpeg_declaring(50_000, 50_000)),
])
def test_a_huge_image_upload_is_refused_and_not_stored(live_app: str, atlas_env: dict, name: str, data: bytes) -> None:
    out = _upload(live_app, name, data)
    status = out["new-upload-status"]["children"]["props"]
    assert status["role"] == "alert" and "alert-info" not in status["className"]
    assert status["children"].startswith(f"{name}: the image declares ") and "the limit is 16,777,216" in status["children"]
    assert "new-images" not in out  # the list of stored images is left as it was
    r = redis.Redis.from_url(atlas_env["REDIS_URL"])
    assert not r.exists(keys.blob(atlas_env["ATLAS_KEY_PREFIX"], hashlib.sha256(data).hexdigest()))


def test_a_small_image_upload_is_stored(live_app: str, atlas_env: dict) -> None:
    data = png_bomb(64, 48)
    out = _upload(live_app, "small.png", data)
    digest = hashlib.sha256(data).hexdigest()
    assert out["new-upload-status"]["children"]["props"]["children"] == "small.png: image stored"
    assert out["new-images"]["data"] == [{"name": "small.png", "digest": digest}]
    r = redis.Redis.from_url(atlas_env["REDIS_URL"])
    assert r.get(keys.blob(atlas_env["ATLAS_KEY_PREFIX"], digest)) == data


def test_an_image_run_of_unstored_digests_is_refused_at_submit(live_app: str) -> None:
    from tests.conftest import api_call

    code, err = api_call(live_app, "/api/runs", {"model": "digits-vit", "kind": "image", "prompts": ["0" * 64]})
    assert code == 400 and "not stored" in err["error"] and "upload them first" in err["error"]
    code, err = api_call(live_app, "/api/runs", {"model": "digits-vit", "kind": "image", "prompts": ["x/../y"]})
    assert code == 400 and "SHA-256 digests" in err["error"]
    code, body = api_call(live_app, "/api/runs", {"model": "digits-vit", "kind": "image", "prompts": ["0" * 64,
                                                                                                    "1" * 64]})
    assert code == 400 and "2 image(s)" in body["error"]
