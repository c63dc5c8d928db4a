"""A new user's first full analysis on a warm worker: 4 prompts with metrics + maps + importance + roles.

Issue 19 measured this first run at 215 s (40 s waiting for the worker, then 60 pruning-curve steps of 2-4 s);
its goal is <= 30 s of work once the worker is warm. This benchmark runs the worker's own job function
(:func:`workers.tasks.run_analysis`: the model from the worker's registry, arrays written to a real Redis) in
this process after the worker's warm-up (:func:`workers.main.warm_up`: numba, the model preloaded), and times the
run and each of its stages (the capture pass and each post-capture stage timed around its function, the pruning
curves inside head importance likewise; "other" is loading the model, the inputs and writing to Redis). Beside it, one plain forward of the same prompts (the ratio says what the analyses
cost on top of reading the model once).

Run: ``python benchmarks/bench_first_run.py [--models all-MiniLM-L6-v2 smollm2-135m]``.
Writes ``benchmarks/results/first_run.json``. Redis: ``REDIS_URL`` or ``redis://127.0.0.1:6379/7``; a key prefix
of its own, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_S = 30.0
OPTIONS = {"analyses": ["attention", "metrics", "embedding", "importance", "roles"]}


STAGE_NAMES = {"roles": "roles", "importance": "head importance", "embedding": "query-key maps",
               "streaming": "streaming"}


class StageTimer:
    """Seconds spent in the capture pass, each post-capture stage and the pruning curves, timed around the
    functions themselves (installed for the benchmark, removed afterwards)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list = []

    def _timed(self, name: str, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return run

    def _patch(self, obj, attr: str, value) -> None:
        self._undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    def install(self) -> None:
        import dataclasses

        from backend.engine import analyze, importance_stage, stages

        self._patch(analyze, "_capture_pass", self._timed("capture", analyze._capture_pass))
        self._patch(importance_stage, "pruning_curves", self._timed("pruning curves", importance_stage.pruning_curves))
        self._patch(stages, "STAGES", tuple(dataclasses.replace(s, run=self._timed(STAGE_NAMES.get(s.analysis, s.analysis), s.run))
                                            for s in stages.STAGES))

    def remove(self) -> None:
        for obj, attr, value in reversed(self._undo):
            setattr(obj, attr, value)
        self._undo.clear()

    def breakdown(self, total_s: float) -> dict[str, float]:
        """Stage seconds, head importance without its curves, and "other" (the rest of the run)."""
        out = dict(self.seconds)
        if "pruning curves" in out and "head importance" in out:
            out["head importance"] -= out["pruning curves"]
        out["other (loading, writing)"] = total_s - sum(self.seconds.get(k, 0.0) for k in
                                                        ("capture", *STAGE_NAMES.values()))
        return {k: round(v, 2) for k, v in out.items()}


def run(models: list[str], redis_url: str) -> dict:
    prefix = f"bench-first-{uuid.uuid4().hex[:8]}"
    os.environ.update(REDIS_URL=redis_url, ATLAS_KEY_PREFIX=prefix, ATLAS_QUEUE=prefix,
                      ATLAS_RATE_LIMIT="1000", ATLAS_MAX_ACTIVE_JOBS="1000")
    import redis
    import torch

    from app.examples import _prose
    from backend import jobs
    from backend.cache import Cache
    from backend.engine.inputs import encode_text, text_batch
    from backend.model_refs import resolve_model
    from backend.redis_conn import connect
    from backend.settings import get_settings
    from workers import main as worker_main
    from workers import tasks

    settings = get_settings()
    cache = Cache(connect(settings), settings)
    prompts = _prose(cache)
    timer = StageTimer()
    rows = []
    try:
        timer.install()
        for model in models:
            t0 = time.perf_counter()
            worker_main.warm_up(model)
            warm_s = time.perf_counter() - t0
            loaded = tasks.registry(settings).get(resolve_model(model, settings), settings.dtype)
            ids, _ = encode_text(loaded, prompts, settings)
            n_tokens = [len(x) for x in ids]
            with torch.inference_mode():  # the baseline: one plain forward of the prompts, as one batch
                batch, _ = text_batch(loaded, ids)
                loaded.model(**batch)  # first call: allocator and kernels warm
                t0 = time.perf_counter()
                loaded.model(**batch)
                plain_s = time.perf_counter() - t0
            run_id, queued = jobs.submit(cache, settings, model, prompts, dict(OPTIONS))
            assert queued, "the run existed already"
            timer.seconds.clear()
            load_before = os.getloadavg()
            t0 = time.perf_counter()
            outcome = tasks.run_analysis(run_id)
            total_s = time.perf_counter() - t0
            assert outcome == "done", (outcome, cache.manifest(run_id).get("error"))
            row = {"model": model, "n_prompts": len(prompts), "tokens": n_tokens, "analyses": OPTIONS["analyses"],
                   "warm_up_s": round(warm_s, 2), "plain_forward_s": round(plain_s, 3), "run_s": round(total_s, 2),
                   "ratio_to_plain_forward": round(total_s / plain_s, 1),
                   "stages_s": timer.breakdown(total_s), "threads": torch.get_num_threads(),
                   "load_average_before": load_before, "load_average_after": os.getloadavg(),
                   "meets_target": total_s <= TARGET_S}
            print(json.dumps(row))
            rows.append(row)
    finally:
        timer.remove()
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(f"{prefix}*", count=1000):
            r.delete(key)
        for key in r.scan_iter(f"rq:*{prefix}*", count=1000):
            r.delete(key)
    return {"target_s": TARGET_S, "rows": rows, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2", "smollm2-135m"])
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/7"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/first_run.json"))
    args = ap.parse_args()
    result = run(args.models, args.redis)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
