"""Which HTTP server answers: waitress (a production WSGI server) whenever the app listens beyond
loopback, or when asked; Flask's threaded development server on loopback otherwise."""

from __future__ import annotations

import ipaddress
import os
import sys

from flask import Flask

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def choose(server: str, host: str) -> str:
    """``auto`` -> ``waitress`` beyond loopback, ``dev`` on loopback; ``waitress``/``dev`` as given."""
    if server not in ("auto", "waitress", "dev"):
        raise ValueError(f"unknown server {server!r} (auto, waitress, dev)")
    if server == "auto":
        return "dev" if is_loopback(host) else "waitress"
    return server


def run(flask_app: Flask, host: str, port: int, server: str = "auto") -> None:
    """Serve ``flask_app`` until the process is told to stop.

    waitress: ``ATLAS_WEB_THREADS`` threads (default 8). Behind a reverse proxy set ``ATLAS_TRUSTED_PROXY``
    to the proxy's address (or ``*``): its ``X-Forwarded-For``/``-Proto``/``-Host`` headers are then
    believed (the client address feeds the per-client rate limits); from anyone else they are dropped."""
    kind = choose(server, host)
    if kind == "dev":
        flask_app.run(host=host, port=port, debug=False, threaded=True)
        return
    import waitress

    proxy = os.environ.get("ATLAS_TRUSTED_PROXY", "")
    extra = {}
    if proxy:
        extra = {"trusted_proxy": proxy, "trusted_proxy_count": 1, "clear_untrusted_proxy_headers": True,
                 "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}}
    print(f"serving with waitress ({os.environ.get('ATLAS_WEB_THREADS', '8')} threads)", file=sys.stderr, flush=True)
    waitress.serve(flask_app, host=host, port=port, threads=int(os.environ.get("ATLAS_WEB_THREADS", "8")),
                   ident="attention-atlas (waitress)", **extra)
