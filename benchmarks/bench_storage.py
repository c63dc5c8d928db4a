"""Redis bytes per token of what a text run stores of its patterns: every full pattern (before) vs thumbnails and
top keys with full patterns on request (after, ENGINE_VERSION 7).

For all-MiniLM-L6-v2 (6 layers x 12 heads, encoder; 512 positions, so its long prompt is 512 tokens, its limit)
and SmolLM2-135M (30 layers x 9 heads, causal) at 128 and 1,024 tokens of real prose (``backend.corpora``), one
prompt each: the analysis runs once (``analyses: []``: input ids, full patterns and thumbnails), then the run's
arrays are written to a real Redis the two ways, side by side in one run, through ``Cache.put_arrays`` (the
format a worker writes), and each key's ``MEMORY USAGE`` is summed:

* ``before``: every layer's full pattern (float16, byte-shuffled, zlib; the default up to ENGINE_VERSION 6) and
  the input ids: what a run stored;
* ``after``: the thumbnails (``[L, H, <=32, <=32]`` float16) and top keys (``backend.engine.grid_reducer``) and
  the input ids: what a run stores now.

Also reported, for the cost moved to view time: the bytes of one on-request pattern (one layer, every head, as
``backend.pattern_jobs`` stores it) and the seconds to compute it on this machine (``backend.engine.pattern_job``,
the last layer: the whole forward pass; median of 3 on a warm model), with ``OMP_NUM_THREADS`` and the load.

    OMP_NUM_THREADS=2 python benchmarks/bench_storage.py   # writes benchmarks/results/storage.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from backend import keys, names, patterns, tensor_io  # noqa: E402
from backend.cache import Cache  # noqa: E402
from backend.corpora import prose_paragraphs  # noqa: E402
from backend.redis_conn import connect  # noqa: E402
from backend.settings import get_settings  # noqa: E402

MODELS = (("all-MiniLM-L6-v2", (128, 512)), ("smollm2-135m", (128, 1024)))
GRID = (".attn.thumbs", ".attn.top_key", ".attn.top_weight")


def prompt_of(tok, n_tokens: int) -> str:
    """Prose of about ``n_tokens`` tokens (cut at a token boundary, special tokens not counted)."""
    text = " ".join(prose_paragraphs())
    ids = tok(text, add_special_tokens=False)["input_ids"][: n_tokens - 2 if tok.cls_token else n_tokens]
    return tok.decode(ids)


def redis_bytes(cache: Cache, arrays: dict[str, np.ndarray]) -> tuple[int, float]:
    """(MEMORY USAGE of the keys, seconds to encode and write) after ``Cache.put_arrays``; keys deleted again."""
    run = f"bench-storage-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    cache.put_arrays(run, list(arrays.items()))
    seconds = time.perf_counter() - t0
    usage = sum(int(cache.r.memory_usage(keys.run_tensor(cache.prefix, run, n), samples=0) or 0) for n in arrays)
    cache.delete_arrays(run)
    return usage, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "storage.json")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from backend.engine.analyze import analyze  # noqa: PLC0415
    from backend.engine.models import load_model  # noqa: PLC0415
    from backend.engine.pattern_job import layer_pattern  # noqa: PLC0415
    from backend.model_refs import resolve_model  # noqa: PLC0415
    from backend.spec import normalise_options  # noqa: PLC0415

    settings = dataclasses.replace(get_settings(), max_pattern_mb=4096, pattern_dtype="float16")
    cache = Cache(connect(settings), dataclasses.replace(settings, key_prefix=f"bench-{uuid.uuid4().hex[:6]}"))
    rows = []
    for model, lengths in MODELS:
        loaded = load_model(resolve_model(model, settings), settings, "float32")
        for n in lengths:
            prompt = prompt_of(loaded.preprocessor, n)
            arrays: dict[str, np.ndarray] = {}
            info = analyze(loaded, [prompt], normalise_options({"analyses": []}), arrays.__setitem__,
                           settings=settings, full_patterns=True)
            t = len(info.tokens[0])
            pats = {k: v for k, v in arrays.items() if patterns.is_pattern(k)}
            assert len(pats) == info.n_layers, f"{model} at {t} tokens: {len(pats)} of {info.n_layers} layers stored"
            ids = {names.prompt_input_ids(0): arrays[names.prompt_input_ids(0)]}
            before = {**ids, **pats}
            after = {**ids, **{k: v for k, v in arrays.items() if k.endswith(GRID)}}
            assert len(after) == 1 + len(GRID), sorted(after)
            row = {"model": model, "tokens": t, "layers": info.n_layers, "heads": info.n_heads, "causal": info.causal}
            for side, arrs in (("before", before), ("after", after)):
                total, secs = redis_bytes(cache, arrs)
                row[side] = {"arrays": sorted({k.split(".", 2)[-1] if k.startswith("prompt.") else k for k in arrs}),
                             "redis_bytes": total, "bytes_per_token": total / t, "kb_per_token": round(total / t / 1000, 2),
                             "write_s": round(secs, 3)}
            row["ratio_before_to_after"] = round(row["before"]["redis_bytes"] / row["after"]["redis_bytes"], 1)
            last = info.n_layers - 1
            one = patterns.for_storage(pats[names.attn_pattern(0, last)], "float16")
            row["on_request_layer_bytes"] = len(tensor_io.encode(one, compress=True, shuffle=True))
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                got = layer_pattern(loaded, [prompt], 0, last, settings, info.tokens[0])
                times.append(time.perf_counter() - t0)
            assert np.array_equal(got, pats[names.attn_pattern(0, last)])  # the capture pass's pattern, exactly
            row["on_request_last_layer_s"] = {"min": round(min(times), 3), "median": round(statistics.median(times), 3)}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("model", "tokens", "ratio_before_to_after", "on_request_last_layer_s")}
                             | {s: row[s]["kb_per_token"] for s in ("before", "after")}), flush=True)
            del arrays, pats, before
        del loaded
    report = {"machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_end": os.getloadavg()[0],
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
