"""``attention-atlas`` command line: serve (one command: Redis + worker + web), worker, analyze."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from backend.settings import REPO_ROOT, get_settings


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the `finally` below: children and Redis are stopped


def _serve(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    embedded = None
    children: list[subprocess.Popen] = []
    if not os.environ.get("REDIS_URL"):
        from backend.embedded_redis import EmbeddedRedis

        embedded = EmbeddedRedis(maxmemory=get_settings().redis_maxmemory, workdir=REPO_ROOT / ".atlas" / "redis")
        os.environ["REDIS_URL"] = embedded.url
        print(f"started a private Redis at {embedded.url} (set REDIS_URL to use your own)", flush=True)
    try:
        if not args.no_worker:
            for _ in range(args.workers):
                children.append(subprocess.Popen([sys.executable, "-m", "workers.main"], env=os.environ.copy()))
            print(f"started {args.workers} worker(s); the first job waits for the model to load", flush=True)
        from app.main import create_app

        app = create_app()
        print(f"Attention Atlas on http://{args.host}:{args.port}/", flush=True)
        app.run(host=args.host, port=args.port, debug=False, threaded=True)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.stop()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.main import main as worker_main

    worker_main(burst=args.burst, preload=None if args.no_preload else args.preload)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from backend import jobs
    from backend.cache import Cache
    from backend.model_refs import ModelError
    from backend.redis_conn import RedisUnavailable, connect
    from backend.spec import SpecError

    prompts = list(args.prompts)
    if args.file:
        from backend.uploads import parse_upload

        prompts += parse_upload(Path(args.file).name, Path(args.file).read_bytes(), get_settings())
    settings = get_settings()
    try:
        cache = Cache(connect(settings), settings)
        options = json.loads(args.options) if args.options else None
        run_id, _ = jobs.submit(cache, settings, args.model, prompts, options, client="cli")
    except (SpecError, ModelError, RedisUnavailable, jobs.RateLimited, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run_id)
    print(f"{args.base_url.rstrip('/')}/runs/{run_id}")
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
    s.set_defaults(func=_serve)
    w = sub.add_parser("worker", help="serve the analysis queue (REDIS_URL must be set)")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.add_argument("--preload", default="all-MiniLM-L6-v2", help="model to load at start")
    w.add_argument("--no-preload", action="store_true")
    w.set_defaults(func=_worker)
    a = sub.add_parser("analyze", help="submit an analysis without the browser; prints run id and URL")
    a.add_argument("prompts", nargs="*", help="prompts (one argument each)")
    a.add_argument("--model", default="all-MiniLM-L6-v2")
    a.add_argument("--file", help=".txt (one prompt per line), .csv or .jsonl file of prompts")
    a.add_argument("--options", help='JSON object of options, e.g. \'{"analyses": ["metrics"]}\'')
    a.add_argument("--base-url", default="http://127.0.0.1:8050")
    a.add_argument("--wait", action="store_true", help="wait for the run to finish, showing progress")
    a.set_defaults(func=_analyze)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
