"""The short jobs a page waits for (a clicked token's pattern, pruning, the lab) go on an interactive queue that
workers serve first: through real Redis and RQ's own dequeue, a pattern requested after two queued analyses is
taken before them."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from backend import jobs, pattern_jobs
from tests.conftest import purge_test_keys

pytestmark = pytest.mark.integration


@pytest.fixture()
def queue_settings(atlas_env, redis_url):
    """Settings with a queue of their own that no worker serves (the session's worker would take the jobs)."""
    from backend.settings import get_settings

    tag = f"{atlas_env['ATLAS_KEY_PREFIX']}-q{uuid.uuid4().hex[:4]}"
    yield dataclasses.replace(get_settings(), queue_name=tag, worker_queues=(tag,))
    purge_test_keys(redis.Redis.from_url(redis_url), tag)


def test_a_pattern_job_is_served_before_queued_analyses(cache, queue_settings) -> None:
    s = queue_settings
    assert jobs.served_queues(s) == [s.queue_name + "-interactive", s.queue_name]
    runs = [uuid.uuid4().hex for _ in range(2)]
    for run_id in runs:
        jobs.enqueue(cache, s, run_id)
    digest, record = pattern_jobs.submit_pattern(cache, s, runs[0], 0, 1)
    assert record["status"] == "queued"
    conn = cache.connection
    queues = [Queue(q, connection=conn, serializer=JSONSerializer) for q in jobs.served_queues(s)]
    assert [q.count for q in queues] == [1, 2]
    order = []
    for _ in range(3):
        job, _queue = Queue.dequeue_any(queues, None, connection=conn, serializer=JSONSerializer)
        order.append(job.id)
    assert order == [digest, *runs]
