"""A minimal client of the app's JSON API (README "JSON API") for tests and benchmarks: stdlib only (not part of
the installed package)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def call(base: str, path: str, body: object | None = None, timeout: float = 30) -> tuple[int, dict]:
    """GET ``base + path``, or POST ``body`` as JSON; returns (HTTP status, decoded JSON), errors included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
