"""Per-client rate limit and cap on unfinished jobs, against the real Redis (no worker: jobs stay queued)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from backend import jobs
from backend.settings import get_settings

pytestmark = [pytest.mark.integration]


def test_rate_limit_and_active_job_cap(cache) -> None:
    base = get_settings()
    # a queue no worker serves (named under the session tag, so the fixture's cleanup removes it)
    s = replace(base, rate_limit_per_minute=3, max_active_jobs_per_client=2, queue_name=f"{base.queue_name}-idle")
    jobs.submit(cache, s, "all-MiniLM-L6-v2", ["rate limit one"], client="client-a")
    jobs.submit(cache, s, "all-MiniLM-L6-v2", ["rate limit two"], client="client-a")
    with pytest.raises(jobs.RateLimited, match="still running"):
        jobs.submit(cache, s, "all-MiniLM-L6-v2", ["rate limit three"], client="client-a")
    # an identical request is the same run: no new job, so it is never limited
    run_id, queued = jobs.submit(cache, s, "all-MiniLM-L6-v2", ["rate limit one"], client="client-a")
    assert queued is False
    # another client is not affected by client-a's jobs
    jobs.submit(cache, s, "all-MiniLM-L6-v2", ["rate limit four"], client="client-b")
    tight = replace(s, rate_limit_per_minute=1, max_active_jobs_per_client=100)
    with pytest.raises(jobs.RateLimited, match="a minute"):
        jobs.submit(cache, tight, "all-MiniLM-L6-v2", ["rate limit five"], client="client-b")
