"""Pruning curves batched vs one pass per gate setting, side by side in one run, same numbers.

The importance stage draws three curves (importance order and reverse order, recomputing importance
after every step, and random order with 3 seeds) at 11 points each. The reference path (what the stage
ran before: :func:`backend.engine.importance_gates.pruning_curve` with ``batched=False``, once per order)
runs one forward pass per point and seed, with a backward pass for every recomputed importance. The
batched path (:func:`backend.engine.importance_gates.pruning_curves`) evaluates every random setting in a
few wide passes, advances the deterministic orders in lock-step (both orders' step in one pass) and
computes the shared points once. Both are timed in one process, alternating, and their curves are
compared (same heads removed, metrics within 1e-5 relative).

Run: ``python benchmarks/bench_pruning.py [--model smollm2-135m] [--prompts 4] [--tokens 48]``.
Writes ``benchmarks/results/pruning.json``. Target: >= 5x.

``--ragged``: the landing page's four prose prompts at their own lengths (69, 20, 18 and 22 tokens on SmolLM2:
what a new user's first run prunes on) instead of equal-length ones, and a third row, ``padded``: the batched
path with the rows left in their padded batch (the evaluator before :func:`~backend.engine.importance_gates.
length_groups`). ``--no-reference`` skips the slow one-pass-per-point row.
``python benchmarks/bench_pruning.py --ragged --no-reference --out benchmarks/results/pruning_ragged.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend.corpora import prose_paragraphs  # noqa: E402
from backend.engine import importance_gates  # noqa: E402
from backend.engine.importance_gates import GateEvaluator, pruning_curve, pruning_curves  # noqa: E402
from backend.engine.importance_stage import STEP_FRACTION, SEEDS, make_batches  # noqa: E402
from backend.engine.losses import model_task, prepare_targets  # noqa: E402
from backend.engine.models import load_model  # noqa: E402
from backend.model_refs import resolve_model  # noqa: E402
from backend.settings import get_settings  # noqa: E402

TARGET = 5.0
ORDERS = ("importance", "reverse", "random")


def max_rel_diff(a: dict, b: dict) -> float:
    """Largest relative difference of the metric curves; inf if the removal orders differ."""
    worst = 0.0
    for order in ORDERS:
        if a[order]["removed"] != b[order]["removed"]:
            return float("inf")
        for key in ("loss", "accuracy"):
            x, y = np.asarray(a[order][key], dtype=float), np.asarray(b[order][key], dtype=float)
            worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12))))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=48, help="tokens per prompt (truncated prose paragraphs)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ragged", action="store_true", help="the landing prose prompts at their own lengths")
    ap.add_argument("--no-reference", action="store_true", help="skip the one-pass-per-point reference")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pruning.json")
    args = ap.parse_args()
    settings = get_settings()
    loaded = load_model(resolve_model(args.model, settings), settings)
    model, tok = loaded.model, loaded.preprocessor
    task = model_task(model)
    if args.ragged:
        from app.examples import _prose  # noqa: PLC0415
        texts = _prose(None)[: args.prompts]
        tokens = [tok.convert_ids_to_tokens(tok(t)["input_ids"]) for t in texts]
    else:
        texts = [p for p in prose_paragraphs() if len(p) > 400][: args.prompts]
        tokens = [tok.convert_ids_to_tokens(tok(t)["input_ids"][: args.tokens]) for t in texts]
    batches = make_batches(loaded, texts, tokens)
    targets = prepare_targets(task, model, batches, tokenizer=tok if loaded.kind == "text" else None)
    kw = {"step_fraction": STEP_FRACTION, "seeds": SEEDS, "targets": targets}

    def reference() -> dict:
        return {o: pruning_curve(model, batches, task, order=o, batched=False, **kw) for o in ORDERS}

    passes = {}

    def batched() -> dict:
        ev = GateEvaluator(model, batches, task, targets)
        out = pruning_curves(model, batches, task, ORDERS, STEP_FRACTION, SEEDS, evaluator=ev)
        passes["batched"] = ev.passes
        return out

    def padded() -> dict:
        with mock.patch.object(importance_gates, "length_groups", lambda task, b, t, slack=0.0: (b, t)):
            ev = GateEvaluator(model, batches, task, targets)
        out = pruning_curves(model, batches, task, ORDERS, STEP_FRACTION, SEEDS, evaluator=ev)
        passes["padded"] = ev.passes
        return out

    rows = [("reference", reference)] if not args.no_reference else []
    rows += [("padded", padded)] if args.ragged else []
    rows += [("batched", batched)]
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    results = {}
    for _ in range(args.repeats):  # alternating, so that load from other processes falls on both
        for name, fn in rows:
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    ref = results.get("reference") or results.get("padded") or results["batched"]
    n_ref = sum(len(ref[o]["n_removed"]) * (len(SEEDS) if o == "random" else 1) for o in ORDERS) * len(batches)
    report = {
        "model": args.model, "task": task, "n_prompts": len(texts), "tokens_per_prompt": [len(t) for t in tokens],
        "n_layers": ref["importance"]["n_layers"], "n_heads": ref["importance"]["n_heads"],
        "points_per_curve": len(ref["importance"]["n_removed"]), "seeds": list(SEEDS),
        "reference_passes": n_ref, "batched_passes": passes["batched"],
        "seconds": times, "seconds_min": best,
        "speedup": best["reference"] / best["batched"] if "reference" in best else None,
        "speedup_vs_padded": best["padded"] / best["batched"] if "padded" in best else None,
        "compared_with": "reference" if "reference" in results else ("padded" if "padded" in results else None),
        "max_rel_diff": max_rel_diff(results["batched"], ref), "target": TARGET,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    report["load_average"] = os.getloadavg()
    report["meets_target"] = (report["speedup"] is not None and report["speedup"] >= TARGET
                              and report["max_rel_diff"] <= 1e-5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "seconds"}, indent=1))


if __name__ == "__main__":
    main()
