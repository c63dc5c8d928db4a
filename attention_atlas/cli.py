"""``attention-atlas`` command line: serve (one command: Redis + worker + web), worker, analyze."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from backend.settings import get_settings


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the `finally` below: children and Redis are stopped


def _data_lock(folder: Path):
    """Hold an exclusive lock on ``folder`` (one private Redis per data folder) for the life of serve."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / "serve.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise SystemExit(f"error: another `attention-atlas serve` uses the data folder {folder}; stop it, or set "
                         "ATLAS_DATA_DIR to another folder (or REDIS_URL to a shared Redis)") from None
    return fh


def _recover(reason: str, worker: str | None = None) -> dict:
    """Hand the jobs of a lost worker (or of every worker) to ``backend.recovery``."""
    from backend.cache import Cache
    from backend.recovery import lost_jobs
    from backend.redis_conn import connect

    settings = get_settings()
    return lost_jobs(Cache(connect(settings), settings), settings, reason, worker)


def _serve(args: argparse.Namespace) -> int:
    from app import serving
    from backend.recovery import worker_name
    from backend.supervisor import Supervisor, describe_exit

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    kind = serving.choose(args.server, args.host)  # a bad --server fails before anything starts
    settings = get_settings()
    embedded = None
    lock = None
    supervisor = None
    if not os.environ.get("REDIS_URL"):
        from backend.embedded_redis import EmbeddedRedis

        lock = _data_lock(settings.data_dir)
        embedded = EmbeddedRedis(maxmemory=settings.redis_maxmemory, workdir=settings.data_dir / "redis", persist=True)
        os.environ["REDIS_URL"] = embedded.url
        print(f"started a private Redis at {embedded.url}, keeping its data in {settings.data_dir / 'redis'} "
              "(set REDIS_URL to use your own)", flush=True)
        # Whatever the saved data lists as running lost its worker with the previous serve: retry or fail it.
        for job_id, outcome in _recover("the app stopped while it ran").items():
            print(f"run {job_id}: {outcome or 'already settled'} (it was running when the app last stopped)",
                  flush=True)
    if not serving.is_loopback(args.host) and not settings.access_token:
        print(f"warning: listening on {args.host} without ATLAS_ACCESS_TOKEN: anyone who reaches this port can "
              "use the app (see the README, 'Serving beyond one machine')", file=sys.stderr, flush=True)
    try:
        if not args.no_worker:
            def on_lost(pid: int, returncode: int) -> None:
                outcomes = _recover(describe_exit(returncode), worker_name(pid))
                for job_id, outcome in outcomes.items():
                    print(f"worker {pid} stopped during job {job_id}: {outcome}", flush=True)

            supervisor = Supervisor([sys.executable, "-m", "workers.main"], args.workers, os.environ.copy(), on_lost)
            supervisor.start()
            print(f"started {args.workers} worker(s) (restarted if they stop); the first job waits for the model "
                  "to load", flush=True)
        from app.main import create_app

        from attention_atlas import discovery

        app = create_app()
        s = get_settings()
        discovery.announce(args.port, args.host, os.environ["REDIS_URL"], s.key_prefix, s.queue_name)
        print(f"Attention Atlas on http://{args.host}:{args.port}/", flush=True)
        serving.run(app.server, args.host, args.port, kind)
    finally:
        from attention_atlas import discovery

        discovery.withdraw(args.port)
        # Workers first (each requeues its job, with Redis still up), then Redis: all within ~5 s.
        if supervisor is not None:
            for pid, returncode in supervisor.stop(deadline_s=3.0):
                try:
                    _recover("the app was stopped and its worker did not stop in time", worker_name(pid))
                except Exception:  # noqa: BLE001  (Redis away: the next start recovers these jobs)
                    pass
        if embedded is not None:
            embedded.stop(timeout=1.5)
        if lock is not None:
            lock.close()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.main import main as worker_main

    if args.queues:
        os.environ["ATLAS_WORKER_QUEUES"] = args.queues
    worker_main(burst=args.burst, preload=None if args.no_preload else args.preload)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from backend import jobs
    from backend.cache import Cache
    from backend.model_refs import ModelError
    from backend.redis_conn import RedisUnavailable, connect
    from backend.spec import SpecError

    base_url = args.base_url
    if not os.environ.get("REDIS_URL"):  # find the server `attention-atlas serve` started on this machine
        from attention_atlas import discovery

        found = discovery.find_server()
        if found is None:
            print("error: REDIS_URL is not set and no running `attention-atlas serve` was found on this machine; "
                  "start one, or set REDIS_URL to the Redis your server uses", file=sys.stderr)
            return 2
        os.environ.update(REDIS_URL=found["redis_url"], ATLAS_KEY_PREFIX=found["key_prefix"],
                          ATLAS_QUEUE=found["queue"])
        base_url = base_url or found["url"]
        print(f"using the server at {found['url']}", file=sys.stderr)
    base_url = base_url or "http://127.0.0.1:8050"
    prompts = list(args.prompts)
    if args.file:
        from backend.uploads import parse_upload

        prompts += parse_upload(Path(args.file).name, Path(args.file).read_bytes(), get_settings())
    settings = get_settings()
    try:
        cache = Cache(connect(settings), settings)
        options = json.loads(args.options) if args.options else None
        run_id, _ = jobs.submit(cache, settings, args.model, prompts, options, client="cli", queue=args.queue)
    except (SpecError, ModelError, RedisUnavailable, jobs.RateLimited, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run_id)
    print(f"{base_url.rstrip('/')}/runs/{run_id}")
    if args.wait:
        while True:
            st = jobs.status(cache, settings, run_id)
            print(f"  {st['status']:9s} {100 * st['progress']:5.1f}%  {st['stage']}", file=sys.stderr)
            if st["status"] in ("done", "failed", "cancelled"):
                if st["status"] != "done":
                    print(f"error: {st['error']}", file=sys.stderr)
                    return 1
                return 0
            time.sleep(1.0)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attention-atlas", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="start the web app (+ a private Redis and a worker when REDIS_URL is unset)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8050)
    s.add_argument("--workers", type=int, default=1, help="worker processes to start (default 1)")
    s.add_argument("--no-worker", action="store_true", help="do not start a worker (run `attention-atlas worker`)")
    s.add_argument("--server", default="auto", choices=["auto", "waitress", "dev"],
                   help="HTTP server: auto (waitress beyond loopback, Flask's development server on loopback)")
    s.set_defaults(func=_serve)
    w = sub.add_parser("worker", help="serve the analysis queue (REDIS_URL must be set)")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.add_argument("--preload", default="all-MiniLM-L6-v2", help="model to load at start")
    w.add_argument("--no-preload", action="store_true")
    w.add_argument("--queues", help="comma-separated queues to serve, in priority order (default ATLAS_WORKER_QUEUES "
                   "or ATLAS_QUEUE), e.g. atlas-gpu,atlas")
    w.set_defaults(func=_worker)
    a = sub.add_parser("analyze", help="submit an analysis without the browser; prints run id and URL")
    a.add_argument("prompts", nargs="*", help="prompts (one argument each)")
    a.add_argument("--model", default="all-MiniLM-L6-v2")
    a.add_argument("--file", help=".txt (one prompt per line), .csv or .jsonl file of prompts")
    a.add_argument("--options", help='JSON object of options, e.g. \'{"analyses": ["metrics"]}\'')
    a.add_argument("--queue", help="queue to put the run on (default ATLAS_QUEUE), e.g. one only GPU workers serve")
    a.add_argument("--base-url", default=None,
                   help="the web address printed with the run id (default: the found server's, else port 8050)")
    a.add_argument("--wait", action="store_true", help="wait for the run to finish, showing progress")
    a.set_defaults(func=_analyze)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
