"""Per-process access to settings and the Redis cache for pages and API handlers."""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np
import redis

from backend import jobs, names, patterns
from backend.cache import Cache
from backend.redis_conn import RedisUnavailable, connect
from backend.settings import Settings, get_settings

_lock = threading.Lock()
_cache: Cache | None = None
_url: str | None = None

REDIS_DOWN = (
    "The cache (Redis) is not reachable right now. Nothing you submitted is lost; "
    "this page retries on its own."
)
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, RedisUnavailable)


def settings() -> Settings:
    return get_settings()


def cache() -> Cache:
    """A cache bound to the current REDIS_URL (reconnects if it changed)."""
    global _cache, _url
    s = get_settings()
    with _lock:
        if _cache is None or _url != s.redis_url:
            _cache = Cache(connect(s), s)
            _url = s.redis_url
        return _cache


RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def run_status(run_id: str) -> dict[str, Any] | None:
    """The reconciled manifest, or None for an unknown (or malformed) run id."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        return None
    return jobs.status(cache(), settings(), run_id)


class ViewError(ValueError):
    """Bad view parameters (layer 999, unknown prompt...): a 4xx in the API, a message in pages."""


class NotReady(RuntimeError):
    """The run is not finished, or its arrays were evicted and are being recomputed."""


def check_index(name: str, value: Any, upper: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ViewError(f"{name} must be an integer") from None
    if not 0 <= v < upper:
        raise ViewError(f"{name} must be between 0 and {upper - 1}")
    return v


def done_manifest(run_id: str) -> dict[str, Any]:
    m = run_status(run_id)
    if m is None:
        raise LookupError(f"unknown run {run_id}")
    if m["status"] != "done":
        raise NotReady(f"run is {m['status']}")
    return m


def load_array(run_id: str, name: str) -> np.ndarray:
    """One array of a finished run; an evicted array triggers a recompute and raises NotReady."""
    arr = cache().get_array(run_id, name)
    if arr is None:
        if name not in (done_manifest(run_id).get("sizes") or {}):
            raise ViewError(f"this run has no {name} (was that analysis selected?)")
        jobs.recompute(cache(), settings(), run_id)
        raise NotReady("cached results had expired; recomputing")
    return arr


def load_arrays(run_id: str, names_: list[str]) -> list[np.ndarray]:
    """Several arrays of a finished run in one round trip; like :func:`load_array` when any is missing."""
    arrs = cache().get_arrays(run_id, names_)
    for i, (name, arr) in enumerate(zip(names_, arrs)):
        if arr is None:
            arrs[i] = load_array(run_id, name)  # raises ViewError or NotReady (and starts the recompute)
    return arrs  # type: ignore[return-value]


class PatternPending(NotReady):
    """A full pattern is being computed on request (``backend.pattern_jobs``); ``record`` is its job's record
    (``stage`` says "computing layer L of prompt P…"). Pages poll and draw once it is there; the API answers 202."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


def _job_pattern(run_id: str, p: int, l: int, wait_s: float) -> np.ndarray:
    """``[head, query, key]`` of prompt ``p`` in layer ``l`` from an on-request pattern job (submitted if needed);
    PatternPending while it runs, ViewError when it failed."""
    from backend import pattern_jobs  # noqa: PLC0415

    arr, rec = pattern_jobs.fetch(cache(), settings(), run_id, p, l, wait_s)
    if arr is not None:
        return arr
    if rec.get("status") == "failed":
        raise ViewError(f"computing layer {l} of prompt {p + 1} failed: {rec.get('error') or 'unknown error'}")
    raise PatternPending(str(rec.get("stage") or pattern_jobs.stage_text(p, l)), rec)


def layer_patterns(run_id: str, prompt: Any, layer: Any, wait_s: float = 0.0) -> tuple[list[str], np.ndarray]:
    """Tokens and the ``[head, query, key]`` patterns of one prompt and layer (validated indices; stored dtype):
    read as stored when the run stored full patterns (image runs, runs made before ``ENGINE_VERSION`` 7), else
    computed on request, waiting up to ``wait_s`` seconds (then PatternPending)."""
    m = done_manifest(run_id)
    info = m["info"]
    p = check_index("prompt", prompt, len(info["tokens"]))
    l = check_index("layer", layer, info["n_layers"])
    return _layer_patterns(run_id, m, p, l, wait_s)


def _layer_patterns(run_id: str, m: dict[str, Any], p: int, l: int, wait_s: float) -> tuple[list[str], np.ndarray]:
    """:func:`layer_patterns` of a done run's manifest ``m`` and indices already checked."""
    info = m["info"]
    name = names.attn_pattern(p, l)
    if name in (m.get("sizes") or {}):
        return info["tokens"][p], load_array(run_id, name)
    if info.get("kind", "text") != "text":
        raise ViewError(f"image {p} is too large for its full patterns to be stored (ATLAS_MAX_PATTERN_TOKENS, "
                        "ATLAS_MAX_PATTERN_MB); per-head metrics and the other views still cover it")
    return info["tokens"][p], _job_pattern(run_id, p, l, wait_s)


def pattern(run_id: str, prompt: Any, layer: Any, head: Any, wait_s: float = 0.0) -> tuple[list[str], np.ndarray]:
    """Tokens and the ``[query, key]`` pattern of one head for one prompt (validated indices), float32;
    see :func:`layer_patterns`."""
    m = done_manifest(run_id)
    info = m["info"]
    p = check_index("prompt", prompt, len(info["tokens"]))
    l = check_index("layer", layer, info["n_layers"])
    h = check_index("head", head, info["n_heads"])
    tokens, arr = _layer_patterns(run_id, m, p, l, wait_s)
    return tokens, patterns.as_view(arr[h])


def metrics(run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every ``metrics.*`` array of a finished run, as plain lists/numbers, plus the run info."""
    m = done_manifest(run_id)
    out: dict[str, Any] = {}
    for name in sorted(m.get("sizes") or {}):
        if name.startswith("metrics."):
            arr = load_array(run_id, name)
            out[name.split(".", 1)[1]] = float(arr) if arr.ndim == 0 else np.round(arr.astype(np.float64), 6).tolist()
    return out, m["info"]


def sink_summary(run_id: str, eps: Any = None, rule: Any = None) -> dict[str, Any]:
    """The sink rate of a finished run at threshold ``eps`` (default ``backend.vocab.SINK_EPS``) by ``rule`` (default ``per_prompt``,
    the released evaluation; ``prompt_mean`` the variant), from the stored per-prompt alpha: no recomputation.

    Returns ``{"sink_rate", "eps", "rule", "rule_label", "n_prompts", "share" [L, H]}`` (``share``: fraction of
    prompts in which each head has a sink). ViewError for a bad ``eps`` or ``rule``; runs stored before the
    per-prompt alpha existed give their stored rate only at the default threshold."""
    from backend import metrics as M  # noqa: PLC0415  (pure NumPy)

    try:
        e = M.SINK_EPS if eps in (None, "") else M.check_sink_eps(eps)
    except ValueError as exc:
        raise ViewError(str(exc)) from None
    r = M.DEFAULT_SINK_RULE if rule in (None, "") else str(rule)
    if r not in M.SINK_RULES:
        raise ViewError(f"sink_rule must be one of {', '.join(M.SINK_RULES)}, got {rule!r}")
    m = done_manifest(run_id)
    sizes = m.get("sizes") or {}
    out: dict[str, Any] = {"eps": e, "rule": r, "rule_label": M.SINK_RULES[r]}
    if names.SINK_ALPHA_FIRST in sizes:
        alpha = load_array(run_id, names.SINK_ALPHA_FIRST)
        out.update(sink_rate=M.sink_rate(alpha, e, r), n_prompts=int(alpha.shape[0]),
                   share=np.round(M.sink_share(alpha, e), 6).tolist())
        return out
    if names.metric("sink_rate") not in sizes:
        raise ViewError("this run has no sink metrics; submit it with the 'metrics' analysis")
    if e != M.SINK_EPS:
        raise ViewError(f"this run was stored without per-prompt alpha; its sink rate exists only at eps = {M.SINK_EPS:g} "
                        "(recompute the run for other thresholds)")
    out.update(sink_rate=float(load_array(run_id, names.metric("sink_rate"))), n_prompts=len(m["info"]["tokens"]),
               share=None)
    return out


def received(run_id: str, prompt: Any, layer: Any) -> tuple[list[str], np.ndarray]:
    """Tokens and ``[head, key_pos]`` attention received per position (Gu et al. alpha)."""
    m = done_manifest(run_id)
    info = m["info"]
    p = check_index("prompt", prompt, len(info["tokens"]))
    l = check_index("layer", layer, info["n_layers"])
    name = names.attn_received(p, l)
    if name not in (m.get("sizes") or {}):
        raise ViewError("this run has no sink metrics; submit it with the 'metrics' analysis")
    return info["tokens"][p], load_array(run_id, name)
