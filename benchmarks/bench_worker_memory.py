"""Worker memory over 1,000 jobs: RSS per job through the real RQ worker, weights faulted in at load vs not.

Two ``workers.main`` processes run side by side against one private Redis (127.0.0.1, free port), each on its
own queue and key prefix, and get the same sequence of small MiniLM analyses (the soak's prompts: 6 to 60 words
of Python's help texts, half with metrics), one after the other, submitted with ``backend.jobs.submit``:

- ``fault_in``: the worker as shipped (``backend.engine.models.fault_in_weights`` at model load);
- ``lazy``: the same worker with ``fault_in_weights`` replaced by a no-op (the behaviour before the fix: the
  float32 safetensors weights stay memory-mapped and are faulted in page by page as jobs use new token ids).

Every ``--every`` jobs the benchmark reads each worker's ``/proc/PID/status`` (VmRSS), ``smaps_rollup``
(Anonymous) and ``smaps`` (resident kB of its ``*.safetensors`` mappings). The result is the least-squares slope
of each against the jobs run, in MB per 100 jobs, after ``--warm-up`` jobs (and over the whole run). Each run's
keys are deleted once it is checked done, so Redis stays small. Writes ``benchmarks/results/worker_memory.json``.

Run: ``python benchmarks/bench_worker_memory.py [--jobs 1000] [--warm-up 100]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from backend import jobs  # noqa: E402
from backend.cache import Cache  # noqa: E402
from backend.embedded_redis import EmbeddedRedis  # noqa: E402
from backend.settings import get_settings  # noqa: E402
from bench_soak import make_prompt, word_pool  # noqa: E402

VARIANTS = {
    "fault_in": "from workers.main import main; main()",
    "lazy": "import backend.engine.models as m; m.fault_in_weights = lambda model: 0\n"
            "from workers.main import main; main()",
}


def memory(pid: int) -> dict[str, float]:
    """RSS, anonymous and safetensors-mapped resident memory of ``pid``, in MB."""
    out = {"rss": 0.0, "anon": 0.0, "weights_file": 0.0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) / 1024
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                out["anon"] = int(line.split()[1]) / 1024
    current = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                current = head[5] if len(head) > 5 else ""
            elif head[0] == "Rss:" and current.endswith(".safetensors"):
                out["weights_file"] += int(head[1]) / 1024
    return out


def slope_per_100(points: list[tuple[int, dict[str, float]]], start: int) -> dict[str, float]:
    """Least-squares slope (MB per 100 jobs) of each memory figure over the samples from job ``start`` on."""
    pts = [(n, m) for n, m in points if n >= start]
    if len(pts) < 3:
        return {}
    x = np.array([n for n, _ in pts], dtype=float)
    return {k: float(np.polyfit(x, np.array([m[k] for _, m in pts]), 1)[0] * 100) for k in pts[0][1]}


def wait_ready(r: redis.Redis, queue: str, timeout: float = 300) -> None:
    from rq import Worker

    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(queue in w.queue_names() for w in Worker.all(connection=r)):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the worker for {queue} did not start")


def drive(name: str, pid: int, cache: Cache, settings, n_jobs: int, every: int, pool: list[str],
          result: dict) -> None:
    """Submit job after job to one worker; wait for each, check it, delete it; sample memory every ``every``."""
    samples: list[tuple[int, dict[str, float]]] = [(0, memory(pid))]
    failures: list[str] = []
    t0 = time.time()
    for n in range(n_jobs):
        options = {"analyses": ["metrics"] if n % 2 == 0 else []}
        run_id, _ = jobs.submit(cache, settings, "all-MiniLM-L6-v2", [make_prompt(n, pool)], options, client=name)
        deadline = time.time() + 300
        while True:
            m = cache.manifest(run_id) or {}
            if m.get("status") in ("done", "failed") or time.time() > deadline:
                break
            time.sleep(0.02)
        if m.get("status") != "done":
            failures.append(f"job {n}: {m.get('status')}: {m.get('error')}")
        cache.delete_run(run_id)
        if (n + 1) % every == 0:
            samples.append((n + 1, memory(pid)))
    result.update(samples=samples, failures=failures, wall_s=time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000, help="jobs per worker")
    ap.add_argument("--warm-up", type=int, default=100, help="jobs before the slope is fitted")
    ap.add_argument("--every", type=int, default=10, help="sample memory every N jobs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "worker_memory.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="atlas-wmem-"))
    server = EmbeddedRedis(maxmemory="1gb", workdir=tmp)
    r = redis.Redis.from_url(server.url)
    base = replace(get_settings(), redis_url=server.url, rate_limit_per_minute=10**6, max_active_jobs_per_client=10)
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    results: dict[str, dict] = {name: {} for name in VARIANTS}
    pool = word_pool()
    try:
        for name, code in VARIANTS.items():
            env = {**os.environ, "REDIS_URL": server.url, "ATLAS_KEY_PREFIX": f"wmem-{name}",
                   "ATLAS_QUEUE": f"wmem-{name}", "ATLAS_WARM_PROJECTIONS": "0", "HF_HUB_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            logs[name] = tmp / f"{name}.log"
            procs[name] = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                                           stdout=logs[name].open("w"), stderr=subprocess.STDOUT)
        for name in VARIANTS:
            wait_ready(r, f"wmem-{name}")
        threads = []
        for name in VARIANTS:
            s = replace(base, key_prefix=f"wmem-{name}", queue_name=f"wmem-{name}")
            cache = Cache(redis.Redis.from_url(server.url), s)
            threads.append(threading.Thread(target=drive, args=(name, procs[name].pid, cache, s, args.jobs,
                                                                 args.every, pool, results[name])))
        load0 = os.getloadavg()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load1 = os.getloadavg()
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        server.stop()
        kept = Path(tempfile.gettempdir())
        for name, log in logs.items():
            if log.exists():
                shutil.copy(log, kept / f"atlas-wmem-{name}.log")
        shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "what": "worker memory over many small MiniLM jobs through the real RQ worker (workers.main), two workers "
                "side by side on one private Redis: weights faulted in at load (as shipped) vs lazily mapped "
                "(fault_in_weights replaced by a no-op, the behaviour before the fix)",
        "jobs_per_worker": args.jobs, "warm_up_jobs": args.warm_up, "sample_every_jobs": args.every,
        "units": "MB; slopes in MB per 100 jobs (least squares over the samples after warm-up)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": load0,
                    "loadavg_end": load1},
        "variants": {},
    }
    for name, res in results.items():
        samples = res.get("samples", [])
        report["variants"][name] = {
            "failures": len(res.get("failures", [])), "failure_examples": res.get("failures", [])[:3],
            "wall_s": res.get("wall_s"),
            "mb_per_100_jobs_after_warm_up": slope_per_100(samples, args.warm_up),
            "mb_per_100_jobs_whole": slope_per_100(samples, 0),
            "first": samples[0][1] if samples else None,
            "after_warm_up": next((m for n, m in samples if n >= args.warm_up), None),
            "end": samples[-1][1] if samples else None,
            "samples": {"columns": ["jobs", "rss", "anon", "weights_file"],
                        "rows": [[n, round(m["rss"], 2), round(m["anon"], 2), round(m["weights_file"], 2)]
                                 for n, m in samples]},
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, v in report["variants"].items():
        s = v["mb_per_100_jobs_after_warm_up"]
        print(f"{name}: {args.jobs} jobs, failures {v['failures']}, {v['wall_s']:.0f} s; RSS "
              f"{v['after_warm_up']['rss']:.1f} -> {v['end']['rss']:.1f} MB after warm-up; MB per 100 jobs after "
              f"warm-up: RSS {s.get('rss', float('nan')):.2f}, anon {s.get('anon', float('nan')):.2f}, "
              f"weights file {s.get('weights_file', float('nan')):.2f}")
    print(f"wrote {args.out}")
    if any(v["failures"] for v in report["variants"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
