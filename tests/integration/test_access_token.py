"""Serving beyond one machine: waitress answers, and with ATLAS_ACCESS_TOKEN set every page, API call and
upload without the token is refused (401) while one with it (header, or the cookie a ?token= link sets) works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT, _free_port, _tail, log_file

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-for-tests"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None


def _request(url: str, data: bytes | None = None, headers: dict | None = None, redirect: bool = True):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    opener = urllib.request.build_opener() if redirect else urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def guarded_app(atlas_env):
    port = _free_port()
    log = log_file("app-token")
    env = {**os.environ, **atlas_env, "ATLAS_ACCESS_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "attention_atlas.cli", "serve", "--no-worker", "--server", "waitress", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    try:
        while True:
            assert proc.poll() is None and time.time() < deadline, _tail(log)
            try:
                if _request(url + "/api/runs")[0] == 401:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def test_requests_without_the_token_are_refused(guarded_app) -> None:
    url = guarded_app
    code, headers, body = _request(url + "/api/runs")
    assert code == 401 and "access token" in json.loads(body)["error"]
    assert "waitress" in headers.get("Server", "")  # the production server answers, not Flask's dev server
    code, _, body = _request(url + "/runs")
    assert code == 401 and b"Access token needed" in body
    post = json.dumps({"prompts": ["no token"]}).encode()
    assert _request(url + "/api/runs", post, {"Content-Type": "application/json"})[0] == 401
    assert _request(url + "/_dash-update-component", b"{}", {"Content-Type": "application/json"})[0] == 401
    assert _request(url + "/_dash-layout")[0] == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert _request(url + "/api/runs", headers=wrong)[0] == 401


def test_requests_with_the_token_are_served(guarded_app) -> None:
    url = guarded_app
    auth = {"Authorization": f"Bearer {TOKEN}"}
    code, _, body = _request(url + "/api/runs", headers=auth)
    assert code == 200 and "runs" in json.loads(body)
    post = json.dumps({"prompts": ["with a token"], "options": {"analyses": ["metrics"]}}).encode()
    code, _, body = _request(url + "/api/runs", post, {**auth, "Content-Type": "application/json"})
    assert code in (200, 202), body
    # a link with ?token= sets a cookie and redirects to the same page without the token
    code, headers, _ = _request(url + "/runs?token=" + TOKEN + "&x=1", redirect=False)
    assert code == 303 and headers["Location"].endswith("/runs?x=1")
    cookie = headers["Set-Cookie"].split(";")[0]
    assert TOKEN not in cookie and "HttpOnly" in headers["Set-Cookie"]
    code, _, body = _request(url + "/runs", headers={"Cookie": cookie})
    assert code == 200 and (b"_dash-renderer" in body or b"DashRenderer" in body)
    assert _request(url + "/_dash-layout", headers={"Cookie": cookie})[0] == 200


def test_serving_choice() -> None:
    from app.serving import choose, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")
    assert choose("auto", "0.0.0.0") == "waitress" and choose("auto", "127.0.0.1") == "dev"
    assert choose("waitress", "127.0.0.1") == "waitress"
    with pytest.raises(ValueError):
        choose("flask", "0.0.0.0")
