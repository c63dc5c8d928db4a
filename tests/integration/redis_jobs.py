"""Job functions that only tests enqueue (the worker imports them by dotted path)."""

from __future__ import annotations

import os

import redis


def shut_redis_down() -> str:
    """Stop the Redis server this worker uses (it writes its append-only file first), then return:
    RQ's own bookkeeping of the finished job then finds Redis gone."""
    try:
        redis.Redis.from_url(os.environ["REDIS_URL"]).shutdown()
    except redis.ConnectionError:
        pass
    return "shut down"


def stubborn_run(run_id: str) -> str:
    """Hold run ``run_id`` as a running attempt and never reach a stop check (a long forward pass would
    look like this): only the stop watchdog can end it."""
    import time
    import uuid

    from backend.cache import Cache
    from backend.recovery import worker_name
    from backend.redis_conn import connect
    from backend.settings import get_settings
    from workers import tasks

    s = get_settings()
    cache = Cache(connect(s, patient=True), s)
    attempt = uuid.uuid4().hex
    cache.start_attempt(run_id, attempt, worker_name(), status="running", stage="stubborn")
    tasks.CURRENT.update(id=run_id, attempt=attempt, kind="run", queue=None)
    time.sleep(120)
    return "slept"
