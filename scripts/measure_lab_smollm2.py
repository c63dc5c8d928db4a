"""Measure the extreme-token and intervention-lab numbers on the real causal LM (SmolLM2-135M).

    .venv/bin/python scripts/measure_lab_smollm2.py      # ~2 min on 2 CPU cores; writes the JSON below

The README's intervention-lab example comes from this script's output, ``benchmarks/results/lab_smollm2.json``:
the same functions the worker's lab job runs (``backend.engine.lab_measures``), on the run's prompts below.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.engine import lab_measures  # noqa: E402
from backend.engine.models import load_model  # noqa: E402
from backend.model_refs import resolve_model  # noqa: E402
from backend.settings import get_settings  # noqa: E402

MODEL = "smollm2-135m"
OUT = REPO / "benchmarks" / "results" / "lab_smollm2.json"
PROMPTS = ["The capital of France is", "The capital of Italy is",
           "When Mary and John went to the store, John gave a drink to"]
FACTORS = (0.0, 0.25, 0.5, 1.0, 2.0)


def nll(logits: torch.Tensor, ids: list[int]) -> float:
    logp = torch.log_softmax(logits[0, :-1].double(), -1)
    return float(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())


def top(tok, logits: torch.Tensor, k: int = 5) -> list[list]:
    p = torch.softmax(logits[0, -1].double(), -1)
    v, i = torch.topk(p, k)
    return [[tok.decode([int(a)]), round(float(b), 4)] for a, b in zip(i, v)]


def main() -> None:
    t0 = time.time()
    s = get_settings()
    loaded = load_model(resolve_model(MODEL, s), s)
    model, tok = loaded.model, loaded.preprocessor
    n_layers, n_heads = lab_measures.model_shape(model)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    out: dict = {"model": MODEL, "prompts": PROMPTS, "tokens": [tok.convert_ids_to_tokens(x) for x in ids],
                 "machine": platform.platform(), "torch": torch.__version__}

    ext = lab_measures.extreme_tokens(model, ids[2], causal=True)
    rec, vn, rn = ext["received"], ext["value_norm"], ext["resid_norm"]
    later = rec[:, :, 1:]
    out["extremes"] = {
        "prompt": 2,
        "first_token_received_mean": round(float(rec[:, :, 0].mean()), 4),
        "other_tokens_received_mean": round(float(later.mean()), 4),
        "first_token_value_norm_mean": round(float(vn[:, :, 0].mean()), 4),
        "other_tokens_value_norm_mean": round(float(vn[:, :, 1:].mean()), 4),
        "first_token_resid_norm_by_layer": [round(float(x), 1) for x in rn[:, 0]],
        "median_other_resid_norm_by_layer": [round(float(np.median(x)), 1) for x in rn[:, 1:]],
        "heads_with_first_token_sink_eps_0.3": int((rec[:, :, 0] > 0.3).sum()), "n_heads_total": n_layers * n_heads,
    }

    batch = lab_measures.id_batch([ids[0]], tok.pad_token_id or 0)
    base_logits, _ = lab_measures.intervened_pass(model, batch, None, patterns=False)
    scaling = []
    for f in FACTORS:
        mods = lab_measures.mods_for("scale", None, n_layers, n_heads, keys=[0], factor=f)
        logits, pats = lab_measures.intervened_pass(model, batch, mods)
        share = float(np.mean([pats[l][:, 1:, 0].mean() for l in range(n_layers)]))
        scaling.append({"factor": f, "loss": round(nll(logits, ids[0]), 4), "first_token_share": round(share, 4),
                        "top5": top(tok, logits)})
    out["scale_first_token_all_heads"] = {"prompt": 0, "baseline_top5": top(tok, base_logits), "runs": scaling}

    good, bad = tok(" Paris", add_special_tokens=False)["input_ids"][0], tok(" Rome", add_special_tokens=False)["input_ids"][0]
    p = lab_measures.patching(model, ids[0], ids[1], good, bad)
    diff = [i for i, (a, b) in enumerate(zip(ids[0], ids[1])) if a != b]
    out["patching"] = {
        "clean": 0, "corrupted": 1, "answers": [" Paris", " Rome"], "ld_clean": round(p["ld_clean"], 4),
        "ld_corrupted": round(p["ld_corrupted"], 4), "differing_positions": diff,
        "resid_normalised_at_differing_position_by_layer": [round(float(x), 3) for x in p["resid_normalised"][:, diff[0]]],
        "resid_normalised_at_last_position_by_layer": [round(float(x), 3) for x in p["resid_normalised"][:, -1]],
        "top_heads": [{"layer": int(i // n_heads), "head": int(i % n_heads),
                       "restored": round(float(p["heads_normalised"].flat[i]), 3)}
                      for i in np.argsort(p["heads_normalised"], axis=None)[::-1][:5]],
    }
    out["seconds"] = round(time.time() - t0, 1)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
