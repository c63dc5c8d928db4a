"""Sink metrics on long prompts: streaming reducers vs the plain ``output_attentions=True`` path.

Model: a MiniLM-sized random BERT (6 layers, 12 heads, hidden 384, intermediate 1536,
``max_position_embeddings=8192``), one prompt of ``T`` random tokens between [CLS] and [SEP], T = 512,
2048, 8192. Two ways to get ``sink_first``, ``sink_special``, ``entropy`` and ``distance`` per head:

* ``streaming``: the capture engine with ``chunk_size=256`` and :class:`SinkMetricsReducer` (what a run
  does): at most ``256 x T`` of one layer's pattern exists at a time;
* ``naive``: eager attention with ``output_attentions=True``, then the metrics computed from the
  returned ``[1, H, T, T]`` tensors (vectorised torch, per layer). It holds all layers' patterns:
  ``6 x 12 x T^2 x 4`` bytes, 19.3 GB at T=8192.

Every (method, T) runs in a fresh subprocess. Peak memory: on CPU ``resource.getrusage`` max RSS of that
subprocess (tracemalloc does not see torch), reported in total and above the baseline measured after
the model was built and warmed up; on CUDA ``torch.cuda.max_memory_allocated``. On CPU the
subprocess runs under ``RLIMIT_AS`` (``--mem-limit-gb``, default 10) so that the naive path fails
cleanly instead of taking the machine down; a configuration that does not fit is reported as such. Times:
wall-clock minimum over ``--repeats`` (other processes only ever add time) and process CPU time, which
shared cores disturb less; ``--threads`` (default 1) torch threads on CPU.

Run: ``python benchmarks/bench_sinks_long.py [--device cuda] [--lengths 512 2048 8192]``; writes
``benchmarks/results/sinks_long.json`` (``sinks_long_cuda.json`` on CUDA) and prints a table.
Target at T=8192: streaming peak <= 1/10 of naive, and no slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_LAYERS, N_HEADS, HIDDEN = 6, 12, 384
CHUNK = 256
LENGTHS = (512, 2048, 4096, 8192)  # 4096: the largest the naive path fits on a 24 GB machine


# --- the measured child process -------------------------------------------------------------------


def _build(impl: str, device: str):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=HIDDEN, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                     intermediate_size=4 * HIDDEN, max_position_embeddings=8192, vocab_size=30522)
    cfg._attn_implementation = impl
    return BertModel(cfg).to(device).eval()


def _inputs(n: int, device: str):
    import torch

    g = torch.Generator().manual_seed(n)
    ids = torch.randint(1000, 30000, (1, n), generator=g)
    ids[0, 0], ids[0, -1] = 101, 102  # [CLS] ... [SEP]
    special = torch.zeros(1, n, dtype=torch.bool)
    special[0, 0] = special[0, -1] = True
    return ids.to(device), special.to(device)


def naive_metrics(attentions, special):
    """The four metrics from full patterns (encoder: alpha = mean over all queries) -> dict of [L, H]."""
    import torch

    out = {k: [] for k in ("sink_first", "sink_special", "entropy", "distance")}
    for att in attentions:  # [1, H, T, T] per layer
        a = att[0].float()
        n = a.shape[-1]
        alpha = a.sum(dim=1) / n  # [H, T]
        pos = torch.arange(n, device=a.device)
        dist = (pos[:, None] - pos[None, :]).abs().to(a.dtype)  # [T, T]
        out["sink_first"].append(alpha[:, 0])
        out["sink_special"].append(alpha[:, special[0]].mean(dim=1))
        out["entropy"].append(-torch.xlogy(a, a).sum(-1).mean(-1))
        out["distance"].append((a * dist).sum(-1).mean(-1))
    return {k: torch.stack(v).double().cpu().numpy() for k, v in out.items()}


def child(method: str, n: int, device: str, repeats: int, check: bool) -> dict:
    import numpy as np
    import torch

    import backend.engine.capture  # noqa: F401  (registers the capture attention)
    from backend.engine.capture import ATTN_IMPLEMENTATION, CaptureSession
    from backend.engine.metrics_reducer import SinkMetricsReducer

    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def streaming(ids, special, model):
        red = SinkMetricsReducer(N_LAYERS, N_HEADS, causal=False)
        with torch.no_grad(), CaptureSession(model, reducers=[red], chunk_size=CHUNK, prompts=[0],
                                             lengths=[ids.shape[1]], special=special):
            model(input_ids=ids)
        res = red.results()
        return {k: res[f"metrics.{k}"].astype(np.float64) for k in ("sink_first", "sink_special", "entropy", "distance")}

    def naive(ids, special, model):
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True)
            if not out.attentions:
                raise RuntimeError("no attentions returned")
            res = naive_metrics(out.attentions, special)
        del out
        return res

    fn = streaming if method == "streaming" else naive
    model = _build(ATTN_IMPLEMENTATION if method == "streaming" else "eager", device)
    small, small_sp = _inputs(16, device)
    fn(small, small_sp, model)  # warm-up: kernels, allocator, lazy imports
    sync()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    ids, special = _inputs(n, device)
    times, cpu_times = [], []
    for _ in range(repeats):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        res = fn(ids, special, model)
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    out = {"method": method, "T": n, "device": device, "ok": True, "threads": torch.get_num_threads(),
           "seconds": min(times), "seconds_all": times, "cpu_seconds": min(cpu_times),
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "baseline_rss_bytes": base_rss}
    if cuda:
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        out["baseline_cuda_bytes"] = base_cuda
    if check:  # the two paths agree (run only where naive fits)
        ref = naive(ids, special, _build("eager", device))
        out["max_abs_diff_vs_naive"] = max(float(np.abs(res[k] - ref[k]).max()) for k in res)
    return out


# --- the parent: one subprocess per configuration -------------------------------------------------


def run_config(method: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--T", str(n), "--device", args.device, "--threads", str(args.threads),
           "--repeats", str(args.repeats if n < 8192 else max(1, args.repeats - 1))]
    if n == min(args.lengths) and method == "streaming":  # the two paths agree (checked once)
        cmd.append("--check")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"method": method, "T": n, "device": args.device, "ok": False, "returncode": proc.returncode,
            "error": " | ".join(tail)[-400:], "wall_before_failure": time.perf_counter() - t0}


def _gb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:.2f}"


def summarise(results: list[dict], device: str, limit_gb: float | None) -> dict:
    cuda = device.startswith("cuda")
    rows = {}
    for n in sorted({r["T"] for r in results}):
        s = next(r for r in results if r["T"] == n and r["method"] == "streaming")
        v = next(r for r in results if r["T"] == n and r["method"] == "naive")
        key = "peak_cuda_bytes" if cuda else "peak_rss_bytes"
        row = {"T": n, "naive_attention_bytes": N_LAYERS * N_HEADS * n * n * 4,
               "streaming_peak_bytes": s.get(key), "naive_peak_bytes": v.get(key) if v["ok"] else None,
               "streaming_seconds": s.get("seconds"), "naive_seconds": v.get("seconds") if v["ok"] else None,
               "streaming_cpu_seconds": s.get("cpu_seconds"), "naive_cpu_seconds": v.get("cpu_seconds") if v["ok"] else None,
               "naive_ok": v["ok"], "streaming_ok": s["ok"]}
        if not cuda and s["ok"]:
            row["streaming_peak_above_baseline_bytes"] = s["peak_rss_bytes"] - s["baseline_rss_bytes"]
            if v["ok"]:
                row["naive_peak_above_baseline_bytes"] = v["peak_rss_bytes"] - v["baseline_rss_bytes"]
        if s["ok"] and v["ok"]:
            row["memory_ratio"] = s[key] / v[key]
            row["time_ratio"] = s["seconds"] / v["seconds"]
            row["cpu_time_ratio"] = s["cpu_seconds"] / v["cpu_seconds"] if v.get("cpu_seconds") else None
            if not cuda:
                row["memory_ratio_above_baseline"] = (row["streaming_peak_above_baseline_bytes"]
                                                      / max(1, row["naive_peak_above_baseline_bytes"]))
        elif not v["ok"]:
            row["naive_error"] = v.get("error")
            row["note"] = (f"naive path did not fit under RLIMIT_AS = {limit_gb:g} GB (its attentions alone need "
                           f"{row['naive_attention_bytes'] / 1e9:.1f} GB)" if not cuda else "naive path failed")
        rows[n] = row
    return rows


def print_table(rows: dict, device: str) -> None:
    cuda = device.startswith("cuda")
    print(f"\nsink metrics, MiniLM-sized random BERT, device {device}, chunk {CHUNK}; "
          + ("peak = torch.cuda.max_memory_allocated" if cuda else "peak = max RSS (in brackets: above the warmed-up baseline)"))
    print(f"{'T':>6} {'naive attn GB':>13} {'stream peak GB':>16} {'naive peak GB':>16} {'mem ratio':>15} "
          f"{'stream s':>9} {'naive s':>8} {'time ratio':>10} {'cpu-time ratio':>14}")
    fmt = lambda r, k, f: (f.format(r[k]) if r.get(k) is not None else "-")  # noqa: E731
    for n, r in rows.items():
        sp, vp = _gb(r["streaming_peak_bytes"]), _gb(r["naive_peak_bytes"])
        mr = fmt(r, "memory_ratio", "{:.3f}")
        if not cuda:
            sp += f" ({_gb(r.get('streaming_peak_above_baseline_bytes'))})"
            vp += f" ({_gb(r.get('naive_peak_above_baseline_bytes'))})" if r["naive_ok"] else ""
            mr += f" ({fmt(r, 'memory_ratio_above_baseline', '{:.3f}')})" if r["naive_ok"] else ""
        print(f"{n:>6} {_gb(r['naive_attention_bytes']):>13} {sp:>16} {vp:>16} {mr:>15} "
              f"{fmt(r, 'streaming_seconds', '{:.2f}'):>9} {fmt(r, 'naive_seconds', '{:.2f}'):>8} "
              f"{fmt(r, 'time_ratio', '{:.2f}'):>10} {fmt(r, 'cpu_time_ratio', '{:.2f}'):>14}")
        if "note" in r:
            print(f"{'':>6} {r['note']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=("streaming", "naive"))
    ap.add_argument("--T", type=int)
    ap.add_argument("--check", action="store_true", help="(child) also compare with the naive numbers")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    ap.add_argument("--mem-limit-gb", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1: steadier on shared cores)")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.child:
        if not args.device.startswith("cuda"):
            import torch

            torch.set_num_threads(args.threads)
        if not args.device.startswith("cuda") and args.mem_limit_gb > 0:  # CUDA reserves huge address space
            limit = int(args.mem_limit_gb * 1e9)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            print(json.dumps(child(args.child, args.T, args.device, args.repeats, args.check)))
        except (MemoryError, RuntimeError) as exc:
            print(f"failed: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
            sys.exit(3)
        return
    import torch

    results = []
    for n in args.lengths:
        for method in ("streaming", "naive"):
            r = run_config(method, n, args)
            print(json.dumps({k: v for k, v in r.items() if k != "seconds_all"}), flush=True)
            results.append(r)
    rows = summarise(results, args.device, args.mem_limit_gb)
    print_table(rows, args.device)
    cuda = args.device.startswith("cuda")
    doc = {
        "benchmark": "sink metrics (sink_first, sink_special, entropy, distance) on one long prompt",
        "model": f"random BertModel {N_LAYERS} layers x {N_HEADS} heads, hidden {HIDDEN}, max_position_embeddings 8192",
        "streaming": f"capture engine, chunk_size={CHUNK}, SinkMetricsReducer",
        "naive": "attn_implementation='eager', output_attentions=True, metrics from the returned tensors (torch)",
        "memory": "torch.cuda.max_memory_allocated" if cuda else
                  "max RSS (getrusage) of a fresh subprocess per configuration; *_above_baseline: minus the RSS "
                  "after building and warming up the model",
        "rlimit_as_gb": None if cuda else args.mem_limit_gb,
        "device": args.device if not cuda else torch.cuda.get_device_name(0) if torch.cuda.is_available() else args.device,
        "torch": torch.__version__, "threads": args.threads if not cuda else None, "machine": platform.machine(),
        "repeats": args.repeats, "time": "wall-clock minimum over repeats (8192: repeats - 1)",
        "target_T8192": "streaming peak <= 0.1 x naive and time ratio <= 1",
        "rows": {str(k): v for k, v in rows.items()}, "runs": results,
    }
    out = args.out or ROOT / "benchmarks" / "results" / ("sinks_long_cuda.json" if cuda else "sinks_long.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
