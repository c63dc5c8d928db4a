"""docker-compose.yml and Dockerfile: the three services, how they find Redis and the GPU, torch before the package."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    """`environment:` as a dict, whether written as a mapping or as a list of KEY=VALUE."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def test_services(compose):
    assert {"redis", "app", "worker", "worker-gpu"} <= set(compose["services"])


def test_redis_is_redis7_with_eviction_and_an_append_only_file_in_a_volume(compose):
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7"
    cmd = _command(redis)
    assert cmd[cmd.index("--maxmemory") + 1] == "2gb"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "volatile-lru"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"  # runs and shared URLs survive a restart
    data_dir = cmd[cmd.index("--dir") + 1]
    mounts = dict(m.split(":")[::-1] for m in redis["volumes"])
    assert mounts[data_dir] in compose["volumes"]


@pytest.mark.parametrize("name", ["app", "worker", "worker-gpu"])
def test_app_and_worker_point_redis_url_at_the_redis_service(compose, name):
    service = compose["services"][name]
    url = urlparse(_env(service)["REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname == "redis"
    assert (url.port or 6379) == 6379
    depends = service.get("depends_on") or []
    assert "redis" in depends


@pytest.mark.parametrize("name", ["app", "worker", "worker-gpu"])
def test_app_and_worker_use_the_repo_image_and_share_the_hf_cache(compose, name):
    service = compose["services"][name]
    build = service["build"]
    build = {"context": build} if isinstance(build, str) else build
    assert (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in service["volumes"]]
    named = [m.split(":")[0] for m in mounts if m.split(":")[1] == "/root/.cache/huggingface"]
    assert named and named[0] in compose["volumes"], mounts


def test_commands(compose):
    app = _command(compose["services"]["app"])
    assert app[:2] == ["attention-atlas", "serve"]
    assert app[app.index("--host") + 1] == "0.0.0.0"
    assert app[app.index("--port") + 1] == "8050"
    assert "--no-worker" in app  # the worker service does the analyses
    assert app[app.index("--server") + 1] == "waitress"  # a production WSGI server, not Flask's development one
    assert _command(compose["services"]["worker"])[:2] == ["attention-atlas", "worker"]
    gpu = _command(compose["services"]["worker-gpu"])
    assert gpu[:2] == ["attention-atlas", "worker"] and gpu[gpu.index("--queues") + 1].split(",") == ["atlas-gpu", "atlas"]


def test_app_publishes_8050(compose):
    ports = compose["services"]["app"]["ports"]
    published = set()
    for p in ports:
        if isinstance(p, dict):
            published.add((str(p.get("published")), str(p["target"])))
        else:
            host, _, container = str(p).rpartition(":")
            published.add((host.rpartition(":")[2], container.split("/")[0]))
    assert ("8050", "8050") in published, ports


def test_cpu_worker_scales_and_gpu_worker_is_a_profile(compose):
    worker = compose["services"]["worker"]
    # `--scale worker=N` needs no fixed container name and no published port
    assert "container_name" not in worker and "ports" not in worker
    assert "deploy" not in worker and _env(worker)["ATLAS_DEVICE"] == "cpu"
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and "container_name" not in gpu and "ports" not in gpu
    assert _env(gpu)["ATLAS_DEVICE"] == "cuda"


def test_gpu_worker_reserves_a_gpu(compose):
    deploy = compose["services"]["worker-gpu"]["deploy"]
    devices = deploy["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and (d.get("count") == "all" or d.get("count", 0) >= 1)
        for d in devices
    ), devices
    assert "deploy" not in compose["services"]["app"] or "resources" not in compose["services"]["app"]["deploy"]


def test_dockerfile_installs_torch_before_the_package():
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    stages = [ln for ln in lines if ln.startswith("FROM ")]
    assert stages[-1].startswith("FROM python:3.11-slim")  # the image; earlier stages only build files for it
    assert stages[:-1] == ["FROM node:22-slim AS plotly"]  # plotly.js with the app's traces (scripts/build_plotly.sh)
    assert "COPY --from=plotly /build/assets/vendor ./assets/vendor/" in lines
    lines = lines[lines.index(stages[-1]):]
    pip_lines = [i for i, ln in enumerate(lines) if re.match(r"RUN\b.*\bpip install\b", ln)]
    torch = [i for i in pip_lines if re.search(r"[\"']?torch==2\.13\.0\b", lines[i])]
    package = [i for i in pip_lines if re.search(r"pip install\b.*(?:\s-e)?\s+\.(?:\[[\w,]+\])?\s*$", lines[i])]
    assert torch, "Dockerfile must `pip install torch==2.13.0`"
    assert package, "Dockerfile must `pip install .` (the package)"
    assert torch[0] < package[0], "torch must be installed before the package"
    assert "torch" not in lines[package[0]]
    cmd = [ln for ln in lines if ln.startswith("CMD")]
    assert cmd and "attention-atlas" in cmd[-1] and "serve" in cmd[-1] and "0.0.0.0" in cmd[-1]


def _compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin), or None when this machine has no compose CLI."""
    if shutil.which("docker") is None:
        return None
    try:
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ["docker", "compose"] if r.returncode == 0 else None


def test_docker_compose_config_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` CLI here (`docker compose version` failed); YAML checks above still ran")
    r = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
