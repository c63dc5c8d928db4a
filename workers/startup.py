"""What a starting worker is doing, written to Redis (``Cache.set_worker_state``) so that the run page and the
API can say it: "importing torch and the analysis engine", "compiling the projection kernels", "preloading
model X", then "ready". A thread refreshes the entry every few seconds while a phase lasts; readers ignore an
entry that stopped being refreshed (a worker killed while starting)."""

from __future__ import annotations

import logging
import threading
import time

import redis

from backend.cache import Cache

log = logging.getLogger("atlas.worker")
REFRESH_S = 5.0
PHASES = ("importing", "warming", "preloading", "ready")


class StartupReporter(threading.Thread):
    """Writes this worker's start-up phase; :meth:`phase` to change it, :meth:`close` when the worker ends."""

    def __init__(self, cache: Cache, name: str) -> None:
        super().__init__(daemon=True, name="startup-reporter")
        self.cache, self.name = cache, name
        self.started = time.time()
        self.state: dict = {"phase": "importing", "detail": "starting", "started": self.started,
                            "phase_started": self.started}
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _write(self) -> None:
        try:
            with self._lock:
                self.cache.set_worker_state(self.name, self.state)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # reporting never stops a worker
            log.debug("could not write the start-up state: %s", exc)

    def phase(self, phase: str, detail: str) -> None:
        """Enter ``phase`` (one of :data:`PHASES`) described by ``detail``; written at once."""
        if phase not in PHASES:
            raise ValueError(f"unknown start-up phase {phase!r}")
        with self._lock:
            self.state = {**self.state, "phase": phase, "detail": detail, "phase_started": time.time()}
        log.info("start-up: %s", detail)
        self._write()

    def ready(self) -> None:
        self.phase("ready", f"ready ({time.time() - self.started:.0f} s after start)")

    def run(self) -> None:
        self._write()
        while not self._stop.wait(REFRESH_S):
            self._write()

    def close(self) -> None:
        """Stop refreshing and remove this worker's entry."""
        self._stop.set()
        try:
            self.cache.clear_worker_state(self.name)
        except (redis.ConnectionError, redis.TimeoutError):
            pass
