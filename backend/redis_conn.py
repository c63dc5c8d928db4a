"""Connections to Redis from settings (one place that knows the URL)."""

from __future__ import annotations

import math
import threading

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from backend.settings import Settings


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached; pages and the API say so and retry."""


def patient_retry(window_s: float) -> Retry:
    """Retry a failed command (reconnecting) for about ``window_s`` seconds: 0.1, 0.2, 0.4, 0.8 s, then
    every second. Workers use it so a Redis restart pauses a job instead of failing it."""
    warm_up = 0.1 + 0.2 + 0.4 + 0.8
    retries = 4 + max(0, math.ceil(window_s - warm_up))
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries)


_clients: dict[tuple[str, bool, float], redis.Redis] = {}
_lock = threading.Lock()


def connect(settings: Settings, patient: bool = False) -> redis.Redis:
    """A binary-safe client (no response decoding: arrays are raw bytes), one per process and URL.

    The client (and so its connection pool) is made once and shared by every caller in the process:
    a worker's jobs reuse the same connections instead of opening a pool each. (redis-py's pool is
    thread-safe and starts afresh in a forked child.)

    ``patient``: retry commands through a Redis outage of up to ``settings.redis_retry_s`` (workers);
    otherwise redis-py's short default retry (web requests answer 503 quickly instead)."""
    if not settings.redis_url:
        raise RedisUnavailable("REDIS_URL is not set (start the app with `attention-atlas serve`)")
    key = (settings.redis_url, patient, settings.redis_retry_s if patient else 0.0)
    with _lock:
        client = _clients.get(key)
        if client is None:
            extra = {"retry": patient_retry(settings.redis_retry_s)} if patient else {}
            client = redis.Redis.from_url(
                settings.redis_url, socket_connect_timeout=2, socket_timeout=30, health_check_interval=30, **extra
            )
            _clients[key] = client
        return client


def pool_count(url: str) -> int:
    """How many connection pools this process made for ``url`` (one per retry policy; tests check it)."""
    with _lock:
        return len({id(c.connection_pool) for k, c in _clients.items() if k[0] == url})
