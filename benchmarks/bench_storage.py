"""Redis bytes per token of a run's full patterns: float32 as before vs the stored format now.

For all-MiniLM-L6-v2 (6 layers x 12 heads, encoder; 512 positions, so its long prompt is 512 tokens, its limit)
and SmolLM2-135M (30 layers x 9 heads, causal) at 128 and 1,024 tokens of real prose (``backend.corpora``),
one prompt each: the analysis runs once (``analyses: []``: patterns and input ids), then its arrays are written
to a real Redis three ways, side by side in one run, and each key's ``MEMORY USAGE`` is summed:

* ``before``: float32, zlib level 1 without shuffle (the format up to ENGINE_VERSION 5);
* ``float32``: float32, byte-shuffled and zlib-compressed (``ATLAS_PATTERN_DTYPE=float32`` now);
* ``after``: float16, byte-shuffled and zlib-compressed (the default now).

Also reported: the largest absolute difference of the float16 patterns read back (``backend.patterns.as_view``)
from the float32 ones, and the seconds to encode/decode one prompt's patterns.

    python benchmarks/bench_storage.py                # writes benchmarks/results/storage.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from backend import keys, patterns, tensor_io  # noqa: E402
from backend.cache import Cache  # noqa: E402
from backend.corpora import prose_paragraphs  # noqa: E402
from backend.redis_conn import connect  # noqa: E402
from backend.settings import get_settings  # noqa: E402

MODELS = (("all-MiniLM-L6-v2", (128, 512)), ("smollm2-135m", (128, 1024)))


def prompt_of(tok, n_tokens: int) -> str:
    """Prose of about ``n_tokens`` tokens (cut at a token boundary, special tokens not counted)."""
    text = " ".join(prose_paragraphs())
    ids = tok(text, add_special_tokens=False)["input_ids"][: n_tokens - 2 if tok.cls_token else n_tokens]
    return tok.decode(ids)


def _old_encode(name: str, arr: np.ndarray) -> bytes:
    return tensor_io.encode(arr, compress=arr.nbytes > 1 << 16)


def redis_bytes(cache: Cache, arrays: dict[str, np.ndarray], encoder) -> tuple[int, int, float]:
    """(MEMORY USAGE of all keys, of the pattern keys, seconds to encode) after writing ``arrays`` with
    ``encoder(name, arr) -> blob``; the keys are deleted again."""
    run = f"bench-storage-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    blobs = {n: encoder(n, a) for n, a in arrays.items()}
    seconds = time.perf_counter() - t0
    ks = {n: keys.run_tensor(cache.prefix, run, n) for n in arrays}
    pipe = cache.r.pipeline(transaction=False)
    for n, b in blobs.items():
        pipe.set(ks[n], b, ex=600)
    pipe.execute()
    usage = {n: int(cache.r.memory_usage(k, samples=0) or 0) for n, k in ks.items()}
    cache.r.delete(*ks.values())
    return sum(usage.values()), sum(u for n, u in usage.items() if patterns.is_pattern(n)), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "storage.json")
    args = ap.parse_args()
    from backend.engine.analyze import analyze  # noqa: PLC0415
    from backend.spec import normalise_options  # noqa: PLC0415
    from backend.engine.models import load_model  # noqa: PLC0415
    from backend.model_refs import resolve_model  # noqa: PLC0415

    settings = get_settings()
    cache = Cache(connect(settings), dataclasses.replace(settings, key_prefix=f"bench-{uuid.uuid4().hex[:6]}"))
    rows = []
    for model, lengths in MODELS:
        loaded = load_model(resolve_model(model, settings), settings, "float32")
        for n in lengths:
            arrays: dict[str, np.ndarray] = {}
            info = analyze(loaded, [prompt_of(loaded.preprocessor, n)], normalise_options({"analyses": []}),
                           arrays.__setitem__, settings=dataclasses.replace(settings, max_pattern_mb=4096))
            t = len(info.tokens[0])
            pats = {k: v for k, v in arrays.items() if patterns.is_pattern(k)}
            assert len(pats) == info.n_layers, f"{model} at {t} tokens: {len(pats)} of {info.n_layers} layers stored"
            row = {"model": model, "tokens": t, "layers": info.n_layers, "heads": info.n_heads,
                   "causal": info.causal, "raw_float32_bytes": int(sum(a.nbytes for a in pats.values()))}
            variants = {
                "before": _old_encode,
                "float32": lambda n_, a: tensor_io.encode(a, compress=True, shuffle=True),
                "after": lambda n_, a: tensor_io.encode(
                    patterns.for_storage(a, "float16") if patterns.is_pattern(n_) else a,
                    compress=a.nbytes > 1 << 16, shuffle=a.nbytes > 1 << 16),
            }
            for name, enc in variants.items():
                total, pat, secs = redis_bytes(cache, arrays, enc)
                row[name] = {"redis_bytes": total, "pattern_bytes": pat, "bytes_per_token": total / t,
                             "encode_s": round(secs, 3)}
            t0 = time.perf_counter()
            worst = 0.0
            for a in pats.values():
                back = patterns.as_view(tensor_io.decode(variants["after"]("prompt.0.blocks.0.attn.pattern", a)))
                worst = max(worst, float(np.abs(back - a).max()))
            row["after"]["decode_s"] = round(time.perf_counter() - t0, 3)
            row["after_max_abs_diff"] = worst
            row["ratio_before_to_after"] = row["before"]["redis_bytes"] / row["after"]["redis_bytes"]
            row["ratio_before_to_float32_shuffled"] = row["before"]["redis_bytes"] / row["float32"]["redis_bytes"]
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("model", "tokens", "ratio_before_to_after", "after_max_abs_diff")}
                             | {v: round(row[v]["bytes_per_token"]) for v in variants}), flush=True)
            del arrays, pats
        del loaded
    report = {"machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "budget": f"default ATLAS_MAX_PATTERN_MB={settings.max_pattern_mb} by backend.patterns.stored_bytes",
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
