"""7B-class Llama (random weights, bfloat16) at T = 8192 on a GPU: sink metrics through the capture
engine (chunked streaming reducers) vs the plain eager ``output_attentions=True`` path.

Run on a GPU machine: ``python benchmarks/bench_gpu_llama7b.py [--layers 32] [--T 8192]``.
Prints time and peak GPU memory; writes benchmarks/results/gpu_llama7b.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from backend.engine.capture import ATTN_IMPLEMENTATION, CaptureSession
from backend.engine.metrics_reducer import SinkMetricsReducer


def build(layers: int, impl: str) -> LlamaForCausalLM:
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=32, max_position_embeddings=16384, vocab_size=32000)
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model


def run_ours(model, ids, chunk: int) -> tuple[float, float, float]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    red = SinkMetricsReducer(model.config.num_hidden_layers, 32, causal=True)
    t0 = time.perf_counter()
    with torch.no_grad(), CaptureSession(model, reducers=[red], chunk_size=chunk, prompts=[0], lengths=[ids.shape[1]]):
        model.model(input_ids=ids)  # the base model: the LM head's logits are not needed for sinks
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    res = red.results()
    return dt, (torch.cuda.max_memory_allocated() - base) / 2**30, float(res["metrics.sink_rate"])


def run_naive(model, ids) -> tuple[float, float] | str:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = model.model(input_ids=ids, output_attentions=True)
            first = torch.stack([a[0, :, :, 0].float().mean(-1) for a in out.attentions])  # noqa: F841
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        return "out of memory"
    finally:
        out = None
        torch.cuda.empty_cache()
    return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--chunk", type=int, default=1024)
    args = ap.parse_args()
    results = {"device": torch.cuda.get_device_name(), "layers": args.layers, "dtype": "bfloat16",
               "chunk": args.chunk, "torch": torch.__version__, "rows": []}
    ours = build(args.layers, ATTN_IMPLEMENTATION)
    for T in args.T:
        ids = torch.randint(0, 32000, (1, T), device="cuda")
        run_ours(ours, ids[:, :256], args.chunk)  # warm-up
        dt, peak, rate = run_ours(ours, ids, args.chunk)
        row = {"T": T, "ours_s": round(dt, 3), "ours_peak_gib": round(peak, 2), "sink_rate": rate}
        ours.config._attn_implementation = "eager"
        ours.set_attn_implementation("eager")
        naive = run_naive(ours, ids)
        ours.set_attn_implementation(ATTN_IMPLEMENTATION)
        if isinstance(naive, str):
            row["naive"] = naive
        else:
            row.update(naive_s=round(naive[0], 3), naive_peak_gib=round(naive[1], 2),
                       memory_ratio=round(peak / naive[1], 4), time_ratio=round(dt / naive[0], 3))
        results["rows"].append(row)
        print(row, flush=True)
    out = Path(__file__).resolve().parent / "results" / "gpu_llama7b.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
