"""The intervention lab's job on the worker: one validated request (:mod:`backend.lab_spec`) on a finished
text run's model and inputs -> a JSON-able result and named arrays (the attention patterns before and
after an intervention). ``workers.tasks.run_lab`` stores both under the request's digest.

Losses and predictions follow the live pruning job (:mod:`backend.engine.importance_stage`): the loss of
the model's type (:mod:`backend.engine.losses`) on the run's first ``MAX_CURVE_PROMPTS`` inputs and on
the chosen prompt alone, and the top-5 predictions for the chosen prompt.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from backend import domains, names
from backend.engine import lab_measures
from backend.engine.capture import CaptureSession
from backend.engine.importance_stage import (
    MAX_CURVE_PROMPTS,
    OBJECTIVES,
    TOP_K,
    _clean,
    _named,
    _prediction_batch,
    _targets,
    make_batches,
)
from backend.engine.losses import metrics_from, model_inputs, model_output, model_task, terms_from_output
from backend.engine.models import LoadedModel

Progress = Callable[[float, str], None]
MAX_PATTERN_ENTRIES = 4_000_000
"""Patterns before and after are kept and stored (float16) for every layer while ``L x H x T x T`` stays under
this; past it only for the layers that hold intervened heads (layer 0 when every head is), and the per-head
summaries (``pattern_change``, ``key_share``) are None for the other layers."""


def _ids(loaded: LoadedModel, tokens: Sequence[str]) -> list[int]:
    return list(loaded.preprocessor.convert_tokens_to_ids(list(tokens)))


def _metrics(model, task: str, batches: list[dict], targets: list[dict], mods: dict | None) -> dict:
    """Loss / perplexity / accuracy of ``batches`` under ``mods`` (no gradient)."""
    loss_sum, count, correct = 0.0, 0, 0
    for batch, tgt in zip(batches, targets):
        with torch.no_grad(), CaptureSession(model, **(mods or {})):
            out = model_output(task, model, batch, tgt)
        terms = terms_from_output(task, out, batch, tgt)
        loss_sum, count, correct = loss_sum + terms.loss_sum, count + terms.count, correct + terms.correct
    return _clean(metrics_from(task, loss_sum, count, correct))


def _top(loaded: LoadedModel, task: str, logits: torch.Tensor, pos: int | None) -> list[dict]:
    x = logits[0] if task == "classifier" else logits[0, pos]
    probs = torch.softmax(x.double(), dim=-1)
    top = torch.topk(probs, min(TOP_K, probs.shape[-1]))
    return _named(loaded, task, [(int(i), float(p)) for i, p in zip(top.indices, top.values)])


def extremes(loaded: LoadedModel, tokens: list[list[str]], spec: dict) -> tuple[dict, dict]:
    p = spec["prompt"]
    arrays = lab_measures.extreme_tokens(loaded.model, _ids(loaded, tokens[p]), loaded.causal)
    result = {"tokens": list(tokens[p]), "causal": loaded.causal,
              **{k: np.round(v.astype(np.float64), 6).tolist() for k, v in arrays.items()}}
    return result, {}


def _random_ids(loaded: LoadedModel) -> list[list[int]]:
    tok = loaded.preprocessor
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    rng = np.random.default_rng(domains.RANDOM_SEED)
    # the special tokens the tokenizer puts around any text: around "a" with them, minus "a" without
    bare, full = tok("a", add_special_tokens=False)["input_ids"], tok("a", add_special_tokens=True)["input_ids"]
    at = next((i for i in range(len(full)) if full[i:i + len(bare)] == bare), len(full))
    prefix, suffix = full[:at], full[at + len(bare):]
    out = []
    for _ in range(domains.RANDOM_COUNT):
        body = [vocab[i] for i in rng.integers(0, len(vocab), domains.RANDOM_LENGTH)]
        out.append(list(prefix) + body + list(suffix))
    return out


def domain_sinks(loaded: LoadedModel, tokens: list[list[str]], progress: Progress) -> tuple[dict, dict]:
    tok = loaded.preprocessor
    ids, domain_of, texts = [], [], []
    for name, items in domains.TEXT_DOMAINS.items():
        for text in items:
            ids.append(tok(text, add_special_tokens=True)["input_ids"][: domains.MAX_TOKENS])
            domain_of.append(name)
            texts.append(text)
    for x in _random_ids(loaded):
        ids.append(x)
        domain_of.append(domains.RANDOM_DOMAIN)
        texts.append(tok.decode(x))
    n_builtin = len(ids)
    ids += [_ids(loaded, t) for t in tokens]
    progress(0.1, "domains: first-token attention")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    alpha = lab_measures.first_token_alpha(loaded.model, ids, pad)  # [N, L, H]
    return {"builtin_domains": domain_of, "builtin_texts": texts, "n_builtin": n_builtin,
            "alpha_first": np.round(alpha.astype(np.float64), 6).tolist()}, {}


def _per_layer(n_layers: int, layers: list[int], fn, digits: int) -> list:
    """``[L][H]`` lists: ``fn(layer)`` rounded for the layers in ``layers``, None for the others."""
    return [np.round(fn(l).astype(np.float64), digits).tolist() if l in layers else None for l in range(n_layers)]


def _layers_to_store(n_layers: int, n_heads: int, t: int, heads) -> list[int]:
    """Every layer when they fit :data:`MAX_PATTERN_ENTRIES`, else the intervened layers (first first) that fit,
    at least one."""
    per_layer = n_heads * t * t
    if n_layers * per_layer <= MAX_PATTERN_ENTRIES:
        return list(range(n_layers))
    wanted = sorted({l for l, _ in heads}) if heads != "all" else list(range(n_layers))
    return wanted[: max(1, MAX_PATTERN_ENTRIES // per_layer)]


def intervene(loaded: LoadedModel, inputs: Sequence[str], tokens: list[list[str]], options: dict, spec: dict,
              progress: Progress) -> tuple[dict, dict]:
    model = loaded.model
    task = model_task(model)
    n_layers, n_heads = lab_measures.model_shape(model)
    heads = None if spec["heads"] == "all" else spec["heads"]
    p = spec["prompt"]
    n = min(len(inputs), MAX_CURVE_PROMPTS)
    batches = make_batches(loaded, inputs[:n], tokens[:n])
    progress(0.1, "lab: targets")
    targets = _targets(loaded, task, batches, options) if not (task == "encoder" and n < 2) else None
    means = None
    if spec["op"] == "mean":
        progress(0.2, "lab: mean head outputs over the run's inputs")
        means = lab_measures.head_means(model, [model_inputs(b) for b in make_batches(loaded, inputs, tokens)])
    mods = lab_measures.mods_for(spec["op"], heads, n_layers, n_heads, keys=spec.get("keys", (0,)),
                        factor=spec.get("factor", 1.0), means=means)
    result: dict[str, Any] = {"task": task, "objective": OBJECTIVES[task], "n_prompts": n,
                              "tokens": list(tokens[p]), "n_layers": n_layers, "n_heads": n_heads}
    if targets is not None:
        progress(0.35, "lab: loss before")
        result["before"] = _metrics(model, task, batches, targets, None)
        progress(0.5, "lab: loss after")
        result["after"] = _metrics(model, task, batches, targets, mods)
    progress(0.7, "lab: the prompt before and after")
    batch, where = _prediction_batch(loaded, task, inputs[p], tokens[p])
    layers = _layers_to_store(n_layers, n_heads, len(tokens[p]), spec["heads"])
    logits_b, pats_b = lab_measures.intervened_pass(model, model_inputs(batch), None, keep=set(layers))
    logits_a, pats_a = lab_measures.intervened_pass(model, model_inputs(batch), mods, keep=set(layers))
    if task != "encoder":
        result["predictions"] = {"prompt": p, "what": where["what"], "position": where["position"],
                                 "before": _top(loaded, task, logits_b, where["position"]),
                                 "after": _top(loaded, task, logits_a, where["position"])}
    if task == "causal_lm":
        one = make_batches(loaded, [inputs[p]], [tokens[p]])
        result["prompt_loss"] = {"before": _metrics(model, task, one, [{"task": task}], None)["loss"],
                                 "after": _metrics(model, task, one, [{"task": task}], mods)["loss"]}
    # per layer and head (layers whose patterns were kept; None elsewhere): mean |after - before|, and the share
    # of attention on the chosen keys (mean over all queries)
    result["pattern_change"] = _per_layer(n_layers, layers, lambda l: np.abs(pats_a[l] - pats_b[l]).mean(axis=(1, 2)), 7)
    keys = spec.get("keys")
    if keys:
        result["key_share"] = {side: _per_layer(n_layers, layers, lambda l, pats=pats: pats[l][:, :, keys].sum(-1).mean(-1), 6)
                               for side, pats in (("before", pats_b), ("after", pats_a))}
    result["pattern_layers"] = layers
    arrays = {}
    for l in layers:
        arrays[names.lab_pattern("before", l)] = pats_b[l].astype(np.float16)
        arrays[names.lab_pattern("after", l)] = pats_a[l].astype(np.float16)
    return result, arrays


def patch(loaded: LoadedModel, tokens: list[list[str]], spec: dict, progress: Progress) -> tuple[dict, dict]:
    if model_task(loaded.model) != "causal_lm":
        raise ValueError("activation patching with a next-token logit difference needs a causal LM")
    tok = loaded.preprocessor
    answer_ids = []
    for a in spec["answers"]:
        ids = tok(a, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the answer {a!r} has no token")
        answer_ids.append(int(ids[0]))
    if answer_ids[0] == answer_ids[1]:
        raise ValueError(f"both answers start with the same token {tok.convert_ids_to_tokens(answer_ids[0])!r}")
    clean, corrupted = _ids(loaded, tokens[spec["clean"]]), _ids(loaded, tokens[spec["corrupted"]])
    out = lab_measures.patching(loaded.model, clean, corrupted, answer_ids[0], answer_ids[1], progress)
    r6 = lambda a: np.round(np.asarray(a, dtype=np.float64), 6).tolist()  # noqa: E731
    top = lambda logits: _named(loaded, "causal_lm", [  # noqa: E731
        (int(i), float(p)) for p, i in zip(*torch.topk(torch.softmax(torch.as_tensor(logits), -1), TOP_K))])
    return {"clean_tokens": list(tokens[spec["clean"]]), "corrupted_tokens": list(tokens[spec["corrupted"]]),
            "answer_tokens": [tok.convert_ids_to_tokens(i) for i in answer_ids], "answer_ids": answer_ids,
            "ld_clean": out["ld_clean"], "ld_corrupted": out["ld_corrupted"],
            "resid": r6(out["resid"]), "heads": r6(out["heads"]),
            "resid_normalised": r6(out["resid_normalised"]), "heads_normalised": r6(out["heads_normalised"]),
            "predictions": {"clean": top(out["clean_logits"]), "corrupted": top(out["corrupted_logits"])}}, {}


def lab_experiment(loaded: LoadedModel, inputs: Sequence[str], tokens: list[list[str]], options: dict,
                   spec: dict, progress: Progress | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Run one validated lab request; returns ``(result, arrays)``."""
    progress = progress or (lambda frac, stage: None)
    if loaded.kind != "text":
        raise ValueError("the intervention lab works on text runs")
    kind = spec["kind"]
    if kind == "extremes":
        return extremes(loaded, tokens, spec)
    if kind == "domains":
        return domain_sinks(loaded, tokens, progress)
    if kind == "intervene":
        return intervene(loaded, inputs, tokens, options, spec, progress)
    if kind == "patch":
        return patch(loaded, tokens, spec, progress)
    raise ValueError(f"unknown lab request {kind!r}")
