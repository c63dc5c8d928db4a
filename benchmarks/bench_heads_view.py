"""The all-heads view (``/runs/<id>/heads``) on SmolLM2-135M's shape (30 layers x 9 heads): server-side time and
payload of the page's callback, against a naive model view (one full-resolution heatmap per head), in one run.

Run: prompts of 64, 128 and 512 tokens whose patterns (seeded random causal softmax rows, float32) are stored
in a real Redis exactly as the worker stores them (``Cache.put_arrays``: ``prompt.{p}.blocks.{l}.attn.pattern``
``[head, query, key]``); serving does not depend on how a pattern was computed.

Measured per prompt: the page callback ``render`` (read the 30 layers from Redis, bin to at most 32 positions,
top keys, figure with hover texts) plus Dash's JSON encoding, with the grid memo emptied before each call
(cold) and kept (warm: a colour switch). Baseline, in the same run: every head's full-resolution pattern as its
own heatmap in a 30 x 9 subplot grid (what drawing BertViz's model view directly would send), built and
encoded from the same arrays; at 512 tokens only its payload is computed (270 x 512 x 512 float32, ~283 MB
before base64), since building it does not fit the development machine.

    python benchmarks/bench_heads_view.py [--repeats 5] [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "heads_view.json"
N_LAYERS, N_HEADS = 30, 9
LENGTHS = (64, 128, 512)
NAIVE_BUILT_UP_TO = 128


def causal_patterns(rng: np.random.Generator, t: int) -> np.ndarray:
    logits = rng.normal(size=(N_HEADS, t, t)) * 2
    logits[:, :, 0] += 3  # a first-token sink, as in real LMs
    logits = np.where(np.tril(np.ones((t, t), dtype=bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


def store_run(cache, seed: int = 0) -> str:
    from backend import names

    rng = np.random.default_rng(seed)
    tokens = [[f"Ġw{i}" for i in range(t)] for t in LENGTHS]
    arrays = [(names.attn_pattern(p, l), causal_patterns(rng, t)) for p, t in enumerate(LENGTHS)
              for l in range(N_LAYERS)]
    run_id = uuid.uuid4().hex
    cache.create_run(run_id, {"inputs": [], "options": {}}, {"ref": "smollm2-135m"}, "bench")
    sizes = cache.put_arrays(run_id, arrays)
    cache.update(run_id, status="done", progress=1.0, stage="done",
                 info={"n_layers": N_LAYERS, "n_heads": N_HEADS, "tokens": tokens, "kind": "text"}, sizes=sizes)
    return run_id


def naive_figure(run_id: str, p: int):
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    from app import state
    from backend import names

    fig = make_subplots(rows=N_LAYERS, cols=N_HEADS, horizontal_spacing=0.005, vertical_spacing=0.002)
    for l in range(N_LAYERS):
        pat = state.load_array(run_id, names.attn_pattern(p, l))
        for h in range(N_HEADS):
            fig.add_trace(go.Heatmap(z=pat[h], showscale=False, colorscale="Blues"), row=l + 1, col=h + 1)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--redis", default=os.environ.get("ATLAS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    args = ap.parse_args()
    os.environ.update({"REDIS_URL": args.redis, "ATLAS_KEY_PREFIX": f"bench-heads-{uuid.uuid4().hex[:8]}"})

    from dash._utils import to_json

    from app import heads_data, state
    from app.main import create_app

    create_app()  # registers the pages
    page = sys.modules["pages.heads"]
    cache = state.cache()
    run_id = store_run(cache)
    run = heads_data.load_info(run_id)

    def call(p: int, cold: bool) -> int:
        if cold:
            heads_data._GRIDS.clear()
        out = page.render(page.ALL, "shared", p, [], run_id, run)
        return len(to_json(out[0]))

    rows = []
    try:
        call(0, True)  # imports, first Redis connection
        for p, t in enumerate(LENGTHS):
            row: dict = {"tokens": t}
            for name, cold in (("page_cold", True), ("page_warm", False)):
                times, size = [], 0
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    size = call(p, cold)
                    times.append(1000 * (time.perf_counter() - t0))
                row[name] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1),
                             "payload_mb": round(size / 1e6, 3)}
            if t <= NAIVE_BUILT_UP_TO:
                times, size = [], 0
                for _ in range(max(1, args.repeats // 2)):
                    t0 = time.perf_counter()
                    size = len(to_json(naive_figure(run_id, p)))
                    times.append(1000 * (time.perf_counter() - t0))
                row["naive"] = {"median_ms": round(statistics.median(times), 1), "payload_mb": round(size / 1e6, 3)}
                row["ratio_naive_over_page_cold_ms"] = round(row["naive"]["median_ms"] / row["page_cold"]["median_ms"], 2)
            else:
                row["naive"] = {"payload_mb_float32_base64": round(N_LAYERS * N_HEADS * t * t * 4 * 4 / 3 / 1e6, 1),
                                "built": False}
            row["ratio_naive_over_page_payload"] = round(
                row["naive"].get("payload_mb", row["naive"].get("payload_mb_float32_base64")) / row["page_cold"]["payload_mb"], 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        cache.delete_arrays(run_id)
        keys = cache.r.keys(f"{os.environ['ATLAS_KEY_PREFIX']}:*")
        if keys:
            cache.r.delete(*keys)
    result = {
        "benchmark": "all-heads view: page callback (cold: Redis reads; warm: memoised grid) vs a naive 270-heatmap model view",
        "run": {"layers": N_LAYERS, "heads": N_HEADS, "lengths": list(LENGTHS), "repeats": args.repeats},
        "machine": {"cpus_usable": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg(),
                    "python": platform.python_version()},
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
