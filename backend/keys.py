"""Every Redis key the project uses, built here and nowhere else.

Layout (``P`` is the configured prefix, ``R`` a run id):

- ``P:run:R``            hash: the run manifest (JSON-encoded field values)
- ``P:run:R:t:NAME``     bytes: one array (see ``backend.tensor_io``), NAME from ``backend.names``
- ``P:run:R:keys``       set: the names of the run's arrays (deletion reads it: no keyspace scan)
- ``P:run:R:cancel``     string: present when a cancel was asked for
- ``P:running``          hash: run or prune job id -> JSON {worker, attempt, kind} while a worker runs it
- ``P:runs``             sorted set: run ids by creation time (the "recent runs" list)
- ``P:derived:D``        bytes/JSON: a result derived from a run (e.g. a pruning experiment), D its digest
- ``P:derived:D:t:NAME`` bytes: one array of a derived result (NAME from ``backend.names``)
- ``P:blob:D``           bytes: an uploaded file (image) addressed by its SHA-256
- ``P:blob:D:name``      string: the file name it was last uploaded under (views name images by it)
- ``P:rate:C:M``         counter: requests of client C in minute M
- ``P:active:C``         set: unfinished run ids submitted by client C
- ``P:workers:state``    hash: worker name -> JSON {phase, detail, started, updated} of its start-up (cold start)
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"^[A-Za-z0-9_.\-\[\],]+$")


def _check(part: str) -> str:
    if not _SAFE.match(part):
        raise ValueError(f"unsafe key component: {part!r}")
    return part


def run_manifest(prefix: str, run_id: str) -> str:
    return f"{prefix}:run:{_check(run_id)}"


def run_tensor(prefix: str, run_id: str, name: str) -> str:
    return f"{prefix}:run:{_check(run_id)}:t:{_check(name)}"


def run_tensor_pattern(prefix: str, run_id: str) -> str:
    """Only for tests that check nothing of a run is left; the product never scans the keyspace."""
    return f"{prefix}:run:{_check(run_id)}:t:*"


def run_array_index(prefix: str, run_id: str) -> str:
    return f"{prefix}:run:{_check(run_id)}:keys"


def running(prefix: str) -> str:
    return f"{prefix}:running"


def run_cancel(prefix: str, run_id: str) -> str:
    return f"{prefix}:run:{_check(run_id)}:cancel"


def runs_index(prefix: str) -> str:
    return f"{prefix}:runs"


def derived(prefix: str, digest: str) -> str:
    return f"{prefix}:derived:{_check(digest)}"


def blob(prefix: str, digest: str) -> str:
    return f"{prefix}:blob:{_check(digest)}"


def blob_name(prefix: str, digest: str) -> str:
    return f"{prefix}:blob:{_check(digest)}:name"


def rate(prefix: str, client: str, minute: int) -> str:
    return f"{prefix}:rate:{_check(client)}:{minute}"


def active_jobs(prefix: str, client: str) -> str:
    return f"{prefix}:active:{_check(client)}"


def derived_array(prefix: str, digest: str, name: str) -> str:
    """bytes: one array of a derived result (e.g. the lab's patterns), ``P:derived:D:t:NAME``."""
    return f"{prefix}:derived:{_check(digest)}:t:{_check(name)}"


def worker_states(prefix: str) -> str:
    """hash: worker name -> JSON {phase, detail, started, updated} written by each worker while it starts."""
    return f"{prefix}:workers:state"
