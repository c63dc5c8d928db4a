"""Lab jobs on RQ (extreme tokens, domains, interventions, patching), like live pruning's.

A request on a finished run (:mod:`backend.lab_spec`) is content-addressed: its digest is the RQ job id,
the ``keys.derived`` key of its JSON record (queued -> running -> done | failed) and the prefix of its
arrays (``keys.derived_array``). A done, queued or running twin is reused; a failed one is retried.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from backend.cache import Cache
from backend.jobs import _check_rate, derived_status, enqueue_derived
from backend.lab_spec import check_spec, lab_digest
from backend.settings import Settings
from backend.spec import SpecError

LAB_TASK = "workers.tasks.run_lab"


def put_record(cache: Cache, digest: str, record: dict[str, Any], ttl_s: int) -> None:
    """Write a lab job's record (queued / running / done / failed) under ``keys.derived``."""
    cache.put_record(digest, record, ttl_s)


def put_arrays(cache: Cache, digest: str, arrays: dict[str, np.ndarray], ttl_s: int) -> None:
    cache.put_derived_arrays(digest, arrays, ttl_s)


def get_array(cache: Cache, digest: str, name: str) -> np.ndarray | None:
    return cache.get_derived_array(digest, name)


def lab_status(cache: Cache, settings: Settings, digest: str) -> dict[str, Any] | None:
    """A lab job's record, reconciled with RQ (a job that died is reported failed); None if unknown."""
    return derived_status(cache, digest, "lab job")


def check_request(cache: Cache, run_id: str, raw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(manifest, canonical request)`` for a finished text run; LookupError / SpecError otherwise."""
    m = cache.manifest(run_id)
    if m is None:
        raise LookupError(f"unknown run {run_id}")
    if m["status"] != "done" or not m.get("info"):
        raise SpecError(f"the run is {m['status']}; the lab needs a finished run")
    if (m.get("spec") or {}).get("kind") != "text":
        raise SpecError("the intervention lab works on text runs")
    info = m["info"]
    return m, check_spec(raw, int(info["n_layers"]), int(info["n_heads"]), info.get("tokens") or [])


def submit_lab(cache: Cache, settings: Settings, run_id: str, raw: Any, client: str = "local",
               ) -> tuple[str, dict[str, Any]]:
    """Validate and enqueue a lab request; returns ``(digest, record)``."""
    _, spec = check_request(cache, run_id, raw)
    digest = lab_digest(run_id, spec)
    existing = lab_status(cache, settings, digest)
    if existing and existing.get("status") in ("done", "queued", "running"):
        return digest, existing
    _check_rate(cache, settings, client)
    record = {"job": digest, "run_id": run_id, "spec": spec, "status": "queued", "stage": "queued",
              "progress": 0.0, "created": time.time()}
    enqueue_derived(cache, settings, LAB_TASK, digest, record, (digest, run_id, spec), f"lab {spec['kind']} {run_id}")
    return digest, record
