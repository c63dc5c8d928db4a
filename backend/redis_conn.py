"""Connections to Redis from settings (one place that knows the URL)."""

from __future__ import annotations

import redis

from backend.settings import Settings


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached; pages and the API say so and retry."""


def connect(settings: Settings) -> redis.Redis:
    """A binary-safe client (no response decoding: arrays are raw bytes)."""
    if not settings.redis_url:
        raise RedisUnavailable("REDIS_URL is not set (start the app with `attention-atlas serve`)")
    return redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=30, health_check_interval=30
    )
