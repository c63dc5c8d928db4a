"""Run manifests and arrays in Redis under content-addressed keys (see ``backend.keys``).

Manifests are hashes without TTL (small; with ``volatile-lru`` they are never evicted, so a run can
always be recomputed from its spec). Arrays carry a TTL and may be evicted: a miss means recompute.
A run's arrays are only read once its manifest says ``done``: results become visible atomically.

Each run keeps the names of its arrays in a set (``keys.run_array_index``), so deleting them costs
O(arrays of the run), never a scan of the keyspace. Each execution of a run (an *attempt*) holds a
token in the manifest; the worker's writes to the manifest (heartbeat, progress, outcome) go through
``update_attempt``, a script that writes only while that token is still there. A run deleted or retried
meanwhile is therefore never touched by a late heartbeat, and never left as a partial manifest.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

import numpy as np
import redis

from backend import keys, patterns, tensor_io
from backend.settings import Settings

STATUSES = ("queued", "running", "done", "failed", "cancelled")

# KEYS[1] manifest; ARGV[1] JSON token, ARGV[2] comma-separated JSON statuses ('' = any), ARGV[3..] field, value...
_UPDATE_ATTEMPT = """
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then
  local st = redis.call('HGET', KEYS[1], 'status')
  local ok = false
  for s in string.gmatch(ARGV[2], '[^,]+') do if st == s then ok = true end end
  if not ok then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""
# KEYS[1] manifest, KEYS[2] running hash; ARGV[1] run id, ARGV[2] running entry, ARGV[3..] field, value...
_START_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return n
"""
# KEYS[1] running hash; ARGV[1] job id, ARGV[2] the attempt token: drop the entry only if it is this attempt's.
_RELEASE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.find(cur, ARGV[2], 1, true) then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


class Cache:
    """Typed access to one Redis database for runs."""

    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r = r
        self.s = settings
        self.prefix = settings.key_prefix
        self._update_attempt = r.register_script(_UPDATE_ATTEMPT)
        self._start_attempt = r.register_script(_START_ATTEMPT)
        self._release = r.register_script(_RELEASE)

    @property
    def connection(self) -> redis.Redis:
        """The Redis client, for RQ's queues and jobs (every other Redis command goes through a method here)."""
        return self.r

    # ---- manifests -------------------------------------------------------------------------
    def create_run(
        self, run_id: str, spec: dict[str, Any], model: dict[str, Any], client: str, queue: str | None = None
    ) -> None:
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
            "queue": queue,
            "attempts": 0,
            "events": [],
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
        """Unconditional write (submission, cancel, tests); a worker writes through ``update_attempt``."""
        self.r.hset(keys.run_manifest(self.prefix, run_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    # ---- attempts (one execution of a run by a worker) --------------------------------------
    def start_attempt(self, run_id: str, attempt: str, worker: str, **fields: Any) -> int | None:
        """Mark ``run_id`` running under token ``attempt`` by ``worker`` and list it in ``keys.running``;
        returns the number of attempts so far (this one included), None if the run is unknown."""
        fields = {**fields, "attempt": attempt, "worker": worker}
        entry = json.dumps({"worker": worker, "attempt": attempt, "kind": "run"})
        args = [run_id, entry] + [x for k, v in fields.items() for x in (k, json.dumps(v))]
        n = self._start_attempt(keys=[keys.run_manifest(self.prefix, run_id), keys.running(self.prefix)], args=args)
        return None if int(n) < 0 else int(n)

    def update_attempt(self, run_id: str, token: str, statuses: tuple[str, ...] = (), /, **fields: Any) -> bool:
        """Write ``fields`` only while the manifest still holds attempt ``token`` (and, if given, one of
        ``statuses``), atomically; False (nothing written) for a deleted, retried or finished run."""
        if not fields:
            return False
        args = [json.dumps(token), ",".join(json.dumps(s) for s in statuses)]
        args += [x for k, v in fields.items() for x in (k, json.dumps(v))]
        return bool(self._update_attempt(keys=[keys.run_manifest(self.prefix, run_id)], args=args))

    def register_running(self, job_id: str, attempt: str, worker: str, kind: str) -> None:
        """List a job that is not a run (a pruning job) in ``keys.running`` while ``worker`` runs it."""
        entry = json.dumps({"worker": worker, "attempt": attempt, "kind": kind})
        self.r.hset(keys.running(self.prefix), job_id, entry)

    def release_running(self, job_id: str, attempt: str) -> None:
        """Drop ``job_id`` from ``keys.running`` if the entry is still this attempt's."""
        self._release(keys=[keys.running(self.prefix)], args=[job_id, attempt])

    def running_jobs(self) -> dict[str, dict[str, Any]]:
        """Every job a worker has said it runs: id -> {worker, attempt, kind} (O(running jobs))."""
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(keys.running(self.prefix)).items()}

    def recent_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.r.zrevrange(keys.runs_index(self.prefix), 0, limit - 1)
        fields = ["run_id", "status", "spec", "model", "created", "progress", "extra_analyses"]
        pipe = self.r.pipeline()
        for rid in ids:
            pipe.hmget(keys.run_manifest(self.prefix, rid.decode()), fields)
        out = []
        for vals in pipe.execute():
            if vals[0] is None:
                continue
            out.append(dict(zip(fields, (None if v is None else json.loads(v) for v in vals))))
        return out

    # ---- worker start-up (cold start) ------------------------------------------------------
    def set_worker_state(self, name: str, state: dict[str, Any]) -> None:
        """Record what worker ``name`` is doing while it starts (``state`` gets ``updated`` = now)."""
        self.r.hset(keys.worker_states(self.prefix), name, json.dumps({**state, "updated": time.time()}))

    def clear_worker_state(self, name: str) -> None:
        self.r.hdel(keys.worker_states(self.prefix), name)

    def worker_states(self, max_age_s: float = 30.0) -> dict[str, dict[str, Any]]:
        """Worker name -> its start-up state, for states refreshed within ``max_age_s`` (a worker killed while
        starting leaves a stale entry, which is dropped here)."""
        now = time.time()
        out = {}
        for k, v in self.r.hgetall(keys.worker_states(self.prefix)).items():
            try:
                state = json.loads(v)
            except ValueError:
                continue
            if now - float(state.get("updated", 0)) <= max_age_s:
                out[k.decode()] = state
        return out

    # ---- arrays ----------------------------------------------------------------------------
    def put_arrays(self, run_id: str, arrays: Iterable[tuple[str, np.ndarray]]) -> dict[str, int]:
        """Write arrays in one pipeline with the result TTL; returns their sizes in bytes (as stored). Full
        patterns are stored in ``pattern_dtype`` (:mod:`backend.patterns`); arrays over 64 KiB are byte-shuffled
        and compressed."""
        sizes: dict[str, int] = {}
        pipe = self.r.pipeline(transaction=False)
        for name, arr in arrays:
            if patterns.is_pattern(name):
                arr = patterns.for_storage(arr, self.s.pattern_dtype)
            big = arr.nbytes > 1 << 16
            blob = tensor_io.encode(arr, compress=big, shuffle=big)
            sizes[name] = len(blob)
            pipe.set(keys.run_tensor(self.prefix, run_id, name), blob, ex=self.s.result_ttl_s)
        if sizes:  # the index keeps no TTL, like the manifest: names of evicted arrays cost a no-op DEL
            pipe.sadd(keys.run_array_index(self.prefix, run_id), *sizes)
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

    def delete_arrays(self, run_id: str) -> int:
        """Delete the run's arrays through its index (O(arrays of the run)); returns how many names it held."""
        index = keys.run_array_index(self.prefix, run_id)
        names = [n.decode() for n in self.r.smembers(index)]
        for i in range(0, len(names), 500):
            self.r.delete(*(keys.run_tensor(self.prefix, run_id, n) for n in names[i : i + 500]))
        self.r.delete(index)
        return len(names)

    def delete_run(self, run_id: str) -> None:
        """Remove a run entirely: arrays, manifest, cancel flag, its place in the recent-runs list."""
        self.delete_arrays(run_id)
        pipe = self.r.pipeline()
        pipe.delete(keys.run_manifest(self.prefix, run_id), keys.run_cancel(self.prefix, run_id))
        pipe.zrem(keys.runs_index(self.prefix), run_id)
        pipe.hdel(keys.running(self.prefix), run_id)
        pipe.execute()

    # ---- cancel ----------------------------------------------------------------------------
    def request_cancel(self, run_id: str) -> None:
        self.r.set(keys.run_cancel(self.prefix, run_id), b"1", ex=24 * 3600)

    def cancel_requested(self, run_id: str) -> bool:
        return bool(self.r.exists(keys.run_cancel(self.prefix, run_id)))

    # ---- blobs (uploaded images) ----------------------------------------------------------
    def put_blob(self, digest: str, data: bytes, name: str | None = None) -> None:
        """Store an uploaded file by digest, and the file name it came with (the latest upload's name wins)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(keys.blob(self.prefix, digest), data)
        if name:
            pipe.set(keys.blob_name(self.prefix, digest), name[:200].encode("utf-8"))
        pipe.execute()

    def blob_names(self, digests: list[str]) -> list[str | None]:
        """The file names the blobs ``digests`` were uploaded under (None where none was given)."""
        if not digests:
            return []
        got = self.r.mget([keys.blob_name(self.prefix, d) for d in digests])
        return [None if v is None else v.decode("utf-8", "replace") for v in got]

    def missing_blobs(self, digests: list[str]) -> list[str]:
        """The digests among ``digests`` that have no stored blob (one round trip)."""
        pipe = self.r.pipeline(transaction=False)
        for d in digests:
            pipe.exists(keys.blob(self.prefix, d))
        return [d for d, found in zip(digests, pipe.execute()) if not found]

    def get_blob(self, digest: str) -> bytes | None:
        return self.r.get(keys.blob(self.prefix, digest))

    # ---- derived records (live pruning and lab jobs) ----------------------------------------------
    def put_record(self, digest: str, record: dict[str, Any], ttl_s: int) -> None:
        """A small JSON record under ``keys.derived`` (at least one second of TTL)."""
        self.r.set(keys.derived(self.prefix, digest), json.dumps(record), ex=max(1, int(ttl_s)))

    def get_record(self, digest: str) -> dict[str, Any] | None:
        raw = self.r.get(keys.derived(self.prefix, digest))
        return None if raw is None else json.loads(raw)

    def put_derived_arrays(self, digest: str, arrays: dict[str, np.ndarray], ttl_s: int, shuffle: bool = False) -> None:
        """Arrays of a derived result (the lab's patterns, an on-request pattern) under ``keys.derived_array``,
        zlib-compressed (``shuffle``: byte-shuffled first, as run arrays are)."""
        pipe = self.r.pipeline()
        for name, arr in arrays.items():
            blob = tensor_io.encode(arr, compress=True, shuffle=shuffle)
            pipe.set(keys.derived_array(self.prefix, digest, name), blob, ex=max(1, int(ttl_s)))
        pipe.execute()

    def get_derived_array_exists(self, digest: str, name: str) -> bool:
        return bool(self.r.exists(keys.derived_array(self.prefix, digest, name)))

    def get_derived_array(self, digest: str, name: str) -> np.ndarray | None:
        blob = self.r.get(keys.derived_array(self.prefix, digest, name))
        return None if blob is None else tensor_io.decode(blob)

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
