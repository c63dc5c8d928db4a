"""How ``attention-atlas analyze`` finds a server started by ``attention-atlas serve`` on the same machine.

``serve`` writes one small JSON file per port (its Redis URL, key prefix, queue, web address and process id) into
the runtime folder, readable by the same user only, and removes it when it stops. ``analyze`` without ``REDIS_URL``
reads the newest file whose process is alive and whose Redis answers, so no URL has to be copied from a log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def runtime_dir() -> Path:
    """``ATLAS_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/attention-atlas``, else ``~/.cache/attention-atlas/run``."""
    env = os.environ.get("ATLAS_RUNTIME_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "attention-atlas"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "attention-atlas" / "run"


def _file(port: int) -> Path:
    return runtime_dir() / f"serve-{int(port)}.json"


def announce(port: int, host: str, redis_url: str, key_prefix: str, queue: str) -> Path:
    """Record this server (called by ``serve`` once its Redis is up); returns the file written."""
    d = runtime_dir()
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    body = {"pid": os.getpid(), "url": f"http://{shown}:{port}", "redis_url": redis_url,
            "key_prefix": key_prefix, "queue": queue}
    path = _file(port)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)
    os.replace(tmp, path)
    return path


def withdraw(port: int) -> None:
    """Remove this server's record (only if it is still this process's)."""
    path = _file(port)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError, TypeError):
        return False


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def find_server() -> dict[str, Any] | None:
    """The newest running server's record (``url``, ``redis_url``, ``key_prefix``, ``queue``), or None."""
    d = runtime_dir()
    if not d.is_dir():
        return None
    files = sorted(d.glob("serve-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(rec.get("pid")) and rec.get("redis_url") and _redis_answers(rec["redis_url"]):
            return rec
    return None
