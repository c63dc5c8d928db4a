"""serve's supervisor hands a dead worker's jobs over even when Redis is away at that moment."""

from __future__ import annotations

import sys
import threading
import time

import redis

from backend.supervisor import Supervisor


def test_hand_over_is_retried_until_redis_is_back() -> None:
    """A worker dies while Redis is away: the hand-over fails, is retried, and succeeds once Redis is back
    (before, it was logged and left to the run's heartbeat check, which only a poll of the run triggers)."""
    calls: dict[int, int] = {}
    handed: list[int] = []
    lock = threading.Lock()

    def on_lost(pid: int, returncode: int) -> None:
        with lock:
            calls[pid] = calls.get(pid, 0) + 1
            if calls[pid] <= 2:  # Redis away for the first two tries
                raise redis.ConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")
            handed.append(pid)

    sup = Supervisor([sys.executable, "-c", "import sys; sys.exit(3)"], 1, {}, on_lost, poll_s=0.05,
                     max_restarts=1, handover_retry_s=0.05, handover_timeout_s=30)
    sup.start()
    first = sup.pids()[0]
    try:
        deadline = time.time() + 20
        while first not in handed and time.time() < deadline:
            time.sleep(0.05)
    finally:
        sup.stop()
    assert first in handed and calls[first] == 3, calls


def test_hand_over_gives_up_after_its_timeout() -> None:
    calls: list[int] = []

    def on_lost(pid: int, returncode: int) -> None:
        calls.append(pid)
        raise redis.ConnectionError("Connection refused.")

    sup = Supervisor([sys.executable, "-c", "import sys; sys.exit(3)"], 1, {}, on_lost, poll_s=0.05,
                     max_restarts=1, handover_retry_s=0.05, handover_timeout_s=0.3)
    sup.start()
    first = sup.pids()[0]
    try:
        time.sleep(2.0)
        tries = calls.count(first)
        time.sleep(0.5)
        assert calls.count(first) == tries and 3 <= tries <= 12, calls  # a few tries, then no more
    finally:
        sup.stop()
