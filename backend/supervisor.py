"""``attention-atlas serve``'s worker supervisor: starts N worker processes, restarts one that exits
unexpectedly, and hands the jobs it held to ``backend.recovery`` (retried once, else failed with a
clear message). ``stop()`` ends them all within a deadline: SIGTERM, then SIGKILL for any straggler.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Callable

log = logging.getLogger("atlas.supervisor")

LostHandler = Callable[[int, int], None]
"""Called with (pid, returncode) of a worker that ended while it should have been running."""


def describe_exit(returncode: int) -> str:
    """Words for how a worker process ended (negative return codes are signals)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (often the system's out-of-memory killer)" if -returncode == signal.SIGKILL else ""
        return f"its worker process was killed by {name}{hint}"
    return f"its worker process exited with code {returncode}"


class Supervisor:
    """Keeps ``n`` copies of ``cmd`` running; ``on_lost(pid, returncode)`` is called for each one that ends
    unexpectedly, before it is replaced. A worker that keeps dying is restarted at most ``max_restarts``
    times a minute (then after a pause), so a broken setup does not spin. When ``on_lost`` fails (Redis away
    while the worker died), it is retried every ``handover_retry_s`` for up to ``handover_timeout_s`` in a
    thread of its own, so the run the worker held is handed over once Redis is back, polled or not."""

    def __init__(self, cmd: list[str], n: int, env: dict[str, str], on_lost: LostHandler,
                 poll_s: float = 0.2, max_restarts: int = 5, handover_retry_s: float = 2.0,
                 handover_timeout_s: float = 600.0) -> None:
        self.cmd, self.n, self.env, self.on_lost = cmd, n, env, on_lost
        self.poll_s, self.max_restarts = poll_s, max_restarts
        self.handover_retry_s, self.handover_timeout_s = handover_retry_s, handover_timeout_s
        self.procs: list[subprocess.Popen] = []
        self.restarts: deque[float] = deque()
        self.restart_count = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="atlas-supervisor", daemon=True)

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.cmd, env=self.env)

    def start(self) -> None:
        with self._lock:
            self.procs = [self._spawn() for _ in range(self.n)]
        self._thread.start()

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.procs]

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_s):
            with self._lock:
                dead = [(i, p) for i, p in enumerate(self.procs) if p.poll() is not None]
            for i, proc in dead:
                if self._stopping.is_set():
                    return
                log.warning("worker %d stopped: %s; restarting it", proc.pid, describe_exit(proc.returncode))
                try:
                    self.on_lost(proc.pid, proc.returncode)
                except Exception as exc:  # noqa: BLE001  (Redis away: retried until it is back)
                    log.warning("could not hand over the jobs of worker %d yet (%s); retrying every %.0f s",
                                proc.pid, exc, self.handover_retry_s)
                    threading.Thread(target=self._retry_hand_over, args=(proc.pid, proc.returncode),
                                     name=f"atlas-handover-{proc.pid}", daemon=True).start()
                now = time.monotonic()
                while self.restarts and now - self.restarts[0] > 60:
                    self.restarts.popleft()
                if len(self.restarts) >= self.max_restarts:
                    log.error("workers keep stopping (%d restarts in a minute); waiting 30 s", len(self.restarts))
                    if self._stopping.wait(30):
                        return
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self.procs[i] = self._spawn()
                    self.restarts.append(time.monotonic())
                    self.restart_count += 1

    def _retry_hand_over(self, pid: int, returncode: int) -> None:
        """``on_lost`` again until it succeeds, the supervisor stops or ``handover_timeout_s`` has passed (then
        the run's silent-heartbeat check in ``backend.jobs.status`` is what is left)."""
        deadline = time.monotonic() + self.handover_timeout_s
        while not self._stopping.wait(self.handover_retry_s):
            try:
                self.on_lost(pid, returncode)
            except Exception:  # noqa: BLE001
                if time.monotonic() >= deadline:
                    log.exception("gave up handing over the jobs of worker %d", pid)
                    return
                continue
            log.warning("handed over the jobs of worker %d", pid)
            return

    def stop(self, deadline_s: float = 3.5) -> list[tuple[int, int]]:
        """SIGTERM every worker (each requeues its job and exits), SIGKILL those still there after
        ``deadline_s``; returns (pid, returncode) of the ones that had to be killed."""
        self._stopping.set()
        with self._lock:
            procs = list(self.procs)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        killed = []
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(2)
                killed.append((p.pid, p.returncode))
        return killed
