"""Run manifests and arrays in Redis under content-addressed keys (see ``backend.keys``).

Manifests are hashes without TTL (small; with ``volatile-lru`` they are never evicted, so a run can
always be recomputed from its spec). Arrays carry a TTL and may be evicted: a miss means recompute.
A run's arrays are only read once its manifest says ``done``: results become visible atomically.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

import numpy as np
import redis

from backend import keys, tensor_io
from backend.settings import Settings

STATUSES = ("queued", "running", "done", "failed", "cancelled")


class Cache:
    """Typed access to one Redis database for runs."""

    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r = r
        self.s = settings
        self.prefix = settings.key_prefix

    @property
    def connection(self) -> redis.Redis:
        """The Redis client, for RQ's queues and jobs (every other Redis command goes through a method here)."""
        return self.r

    # ---- manifests -------------------------------------------------------------------------
    def create_run(self, run_id: str, spec: dict[str, Any], model: dict[str, Any], client: str) -> None:
        now = time.time()
        fields = {
            "run_id": run_id,
            "status": "queued",
            "stage": "queued",
            "progress": 0.0,
            "error": "",
            "spec": spec,
            "model": model,
            "client": client,
            "created": now,
            "started": None,
            "finished": None,
            "info": None,
            "sizes": {},
        }
        pipe = self.r.pipeline()
        pipe.delete(keys.run_manifest(self.prefix, run_id), keys.run_cancel(self.prefix, run_id))
        pipe.hset(keys.run_manifest(self.prefix, run_id), mapping={k: json.dumps(v) for k, v in fields.items()})
        pipe.zadd(keys.runs_index(self.prefix), {run_id: now})
        pipe.execute()

    def manifest(self, run_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(keys.run_manifest(self.prefix, run_id))
        if not raw:
            return None
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def update(self, run_id: str, **fields: Any) -> None:
        self.r.hset(keys.run_manifest(self.prefix, run_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def recent_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.r.zrevrange(keys.runs_index(self.prefix), 0, limit - 1)
        pipe = self.r.pipeline()
        for rid in ids:
            pipe.hmget(keys.run_manifest(self.prefix, rid.decode()), ["run_id", "status", "spec", "model", "created"])
        out = []
        for vals in pipe.execute():
            if vals[0] is None:
                continue
            out.append(dict(zip(["run_id", "status", "spec", "model", "created"], (json.loads(v) for v in vals))))
        return out

    # ---- arrays ----------------------------------------------------------------------------
    def put_arrays(self, run_id: str, arrays: Iterable[tuple[str, np.ndarray]]) -> dict[str, int]:
        """Write arrays in one pipeline with the result TTL; returns their sizes in bytes."""
        sizes: dict[str, int] = {}
        pipe = self.r.pipeline(transaction=False)
        for name, arr in arrays:
            blob = tensor_io.encode(arr, compress=arr.nbytes > 1 << 16)
            sizes[name] = len(blob)
            pipe.set(keys.run_tensor(self.prefix, run_id, name), blob, ex=self.s.result_ttl_s)
        pipe.execute()
        return sizes

    def get_array(self, run_id: str, name: str) -> np.ndarray | None:
        blob = self.r.get(keys.run_tensor(self.prefix, run_id, name))
        return None if blob is None else tensor_io.decode(blob)

    def get_arrays(self, run_id: str, names: list[str]) -> list[np.ndarray | None]:
        """Several arrays in one round trip (MGET); None where one is missing."""
        if not names:
            return []
        blobs = self.r.mget([keys.run_tensor(self.prefix, run_id, n) for n in names])
        return [None if b is None else tensor_io.decode(b) for b in blobs]

    def has_arrays(self, run_id: str, names: list[str]) -> bool:
        if not names:
            return True
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.exists(keys.run_tensor(self.prefix, run_id, n))
        return all(pipe.execute())

    def delete_arrays(self, run_id: str) -> None:
        batch = []
        for k in self.r.scan_iter(keys.run_tensor_pattern(self.prefix, run_id), count=500):
            batch.append(k)
            if len(batch) >= 500:
                self.r.delete(*batch)
                batch = []
        if batch:
            self.r.delete(*batch)

    # ---- cancel ----------------------------------------------------------------------------
    def request_cancel(self, run_id: str) -> None:
        self.r.set(keys.run_cancel(self.prefix, run_id), b"1", ex=24 * 3600)

    def cancel_requested(self, run_id: str) -> bool:
        return bool(self.r.exists(keys.run_cancel(self.prefix, run_id)))

    # ---- blobs (uploaded images) ----------------------------------------------------------
    def put_blob(self, digest: str, data: bytes) -> None:
        self.r.set(keys.blob(self.prefix, digest), data)

    def missing_blobs(self, digests: list[str]) -> list[str]:
        """The digests among ``digests`` that have no stored blob (one round trip)."""
        pipe = self.r.pipeline(transaction=False)
        for d in digests:
            pipe.exists(keys.blob(self.prefix, d))
        return [d for d, found in zip(digests, pipe.execute()) if not found]

    def get_blob(self, digest: str) -> bytes | None:
        return self.r.get(keys.blob(self.prefix, digest))

    # ---- derived records (live pruning jobs) ----------------------------------------------
    def put_record(self, digest: str, record: dict[str, Any], ttl_s: int) -> None:
        """A small JSON record under ``keys.derived`` (at least one second of TTL)."""
        self.r.set(keys.derived(self.prefix, digest), json.dumps(record), ex=max(1, int(ttl_s)))

    def get_record(self, digest: str) -> dict[str, Any] | None:
        raw = self.r.get(keys.derived(self.prefix, digest))
        return None if raw is None else json.loads(raw)

    # ---- clients: rate limit and unfinished jobs --------------------------------------------
    def count_submission(self, client: str) -> int:
        """Count one submission of ``client`` in the current minute; returns the minute's count so far."""
        key = keys.rate(self.prefix, client, int(time.time() // 60))
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        return int(pipe.execute()[0])

    def active_runs(self, client: str) -> list[str]:
        return [rid.decode() for rid in self.r.smembers(keys.active_jobs(self.prefix, client))]

    def add_active_run(self, client: str, run_id: str) -> None:
        self.r.sadd(keys.active_jobs(self.prefix, client), run_id)

    def drop_active_run(self, client: str, run_id: str) -> None:
        self.r.srem(keys.active_jobs(self.prefix, client), run_id)

    # ---- server ------------------------------------------------------------------------------
    def server_uptime_s(self) -> float:
        """Seconds since the Redis server started (infinite when INFO is not allowed)."""
        try:
            return float(self.r.info("server")["uptime_in_seconds"])
        except (redis.ResponseError, KeyError, ValueError):
            return float("inf")
