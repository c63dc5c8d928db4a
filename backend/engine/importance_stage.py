"""Head importance and pruning curves as a post-capture stage, and the live pruning experiment.

Michel, Levy, Neubig, NeurIPS 2019, "Are Sixteen Heads Really Better than One?" (docs/REFERENCES.md
section 2); the numbers come from :mod:`backend.engine.importance_gates`, the loss per model type from
:mod:`backend.engine.losses` (causal LM: next-token NLL; masked LM: NLL of 15 % seeded masked tokens;
classifier: cross-entropy on the run's ``labels`` option, else on the unpruned model's own predictions;
sentence encoder without a head, e.g. all-MiniLM-L6-v2: contrastive InfoNCE over the run's prompts).

The stage (``"importance"`` in the run's analyses) emits

* ``metrics.importance`` ``[L, H]`` float32: the importance over **all** the run's inputs by the run's
  ``importance_rule`` option (``per_token``, the authors' released code, default; or ``per_example``, the
  paper's eq. 2; :data:`backend.engine.importance_gates.REDUCTIONS`), and ``metrics.importance_normalised``: the
  same divided by its l2 norm within each layer (the paper's normalisation); both rules' raw scores, from
  the same backward pass, as ``metrics.importance_per_token`` and ``metrics.importance_per_example``;
* pruning curves on the **first** :data:`MAX_CURVE_PROMPTS` inputs, all orders in one batched call
  (:func:`backend.engine.importance_gates.pruning_curves`: one forward+backward pass per step carries both the
  importance and the reverse order's gate settings, and the ``3 seeds x steps`` random settings go in a few wide
  forward passes; the data set is capped to keep a CPU run short): ``pruning.{importance|reverse|random}``
  ``.fractions|.loss|.perplexity|.accuracy`` (+ ``_std`` for random: mean and population std over seeds
  0, 1, 2), ``.removed``; 10 % of the heads per step, importance (by the run's rule) recomputed after each step
  (but the one before the last, which removes every head left: no ranking needed, no gradient pass);
* ``importance.meta``: UTF-8 JSON (uint8) with the task, the objective in words, the label source, the
  prompts used and the baseline metrics (see :func:`describe`);

and adds a notice when the curves use a subset, when classifier labels come from the model itself, or
when the stage is skipped (no loss for this head, an encoder with one prompt).

:func:`prune_experiment` is the live pruning job (``workers.tasks.run_prune``): metrics of the curve
data set with all heads and with the chosen heads switched off (gate 0), and the top-5 predictions for
one prompt before and after.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np
import torch

from backend import names
from backend.engine.cancel import Cancelled
from backend.engine.inputs import text_batch
from backend.engine.importance_gates import (
    DEFAULT_REDUCTION,
    REDUCTIONS,
    check_reduction,
    GateEvaluator,
    evaluate_with_gates,
    importance_scores,
    model_shape,
    ones_gates,
    pruning_curves,
    top_predictions,
)
from backend.engine.losses import model_task, prepare_targets
from backend.engine.models import LoadedModel
from backend.prune_spec import check_heads

MAX_CURVE_PROMPTS = 32
"""Pruning curves and live pruning use the run's first inputs, at most this many."""
BATCH_SIZE = 8
STEP_FRACTION = 0.1
SEEDS = (0, 1, 2)
TOP_K = 5
SOURCE = "Michel, Levy, Neubig, NeurIPS 2019, 'Are Sixteen Heads Really Better than One?'"

OBJECTIVES = {
    "causal_lm": "next-token negative log-likelihood (mean over the predicted tokens of each prompt)",
    "masked_lm": "negative log-likelihood of masked tokens (15 % of each prompt's real tokens, chosen with the "
                 "run's seed, replaced by the mask token)",
    "classifier": "cross-entropy of the class labels",
    "encoder": "contrastive InfoNCE: each prompt's mean-pooled, normalised embedding must pick out its own "
               "unpruned embedding among those of all prompts (temperature 0.05; accuracy = top-1 retrieval)",
}
TASK_LABELS = {"causal_lm": "causal LM", "masked_lm": "masked LM", "classifier": "classifier",
               "encoder": "sentence encoder (no LM head)"}


# ------------------------------------------------------------------------------------ data


def _text_ids(loaded: LoadedModel, tokens: Sequence[Sequence[str]]) -> list[list[int]]:
    """Token ids from the tokens the capture pass recorded (exactly the captured, truncated prompts)."""
    tok = loaded.preprocessor
    return [list(tok.convert_tokens_to_ids(list(t))) for t in tokens]


def make_batches(
    loaded: LoadedModel, inputs: Sequence[Any], tokens: Sequence[Sequence[str]] | None,
    labels: Sequence[int] | None = None, batch_size: int = BATCH_SIZE,
) -> list[dict]:
    """Batches for :mod:`backend.engine.importance_gates` in input order: text runs from the recorded tokens
    (right padding, ``special_tokens_mask``), image runs through the image processor; ``labels [B]``
    when given."""
    out = []
    ids = _text_ids(loaded, tokens) if loaded.kind == "text" else None
    dtype = next(loaded.model.parameters()).dtype
    for start in range(0, len(inputs), batch_size):
        rows = list(range(start, min(len(inputs), start + batch_size)))
        if loaded.kind == "text":
            batch, special = text_batch(loaded, [ids[i] for i in rows])
            batch["special_tokens_mask"] = special.long()
        else:
            pix = loaded.preprocessor(images=[inputs[i] for i in rows], return_tensors="pt")["pixel_values"]
            batch = {"pixel_values": pix.to(loaded.device, dtype=dtype)}
        if labels is not None:
            batch["labels"] = torch.tensor([int(labels[i]) for i in rows], dtype=torch.long, device=loaded.device)
        out.append(batch)
    return out


def _labels(loaded: LoadedModel, task: str, options: dict[str, Any], n_inputs: int) -> list[int] | None:
    labels = options.get("labels")
    if labels is None or task != "classifier":
        return None
    n_classes = int(loaded.model.config.num_labels)
    if len(labels) != n_inputs or max(labels) >= n_classes:
        raise ValueError(f"labels must be {n_inputs} class ids below {n_classes}")
    return list(labels)


def _targets(loaded: LoadedModel, task: str, batches: list[dict], options: dict[str, Any]) -> list[dict]:
    tok = loaded.preprocessor if loaded.kind == "text" else None
    return prepare_targets(task, loaded.model, batches, seed=int(options.get("seed", 0)), tokenizer=tok)


def _clean(metrics: dict) -> dict:
    """JSON-safe metrics (non-finite numbers become None)."""
    out = {}
    for k, v in metrics.items():
        if v is None or isinstance(v, int):
            out[k] = v
        else:
            v = float(v)
            out[k] = v if np.isfinite(v) else None
    return out


def describe(task: str, label_source: str | None, n_prompts: int, n_curve: int,
             rule: str = DEFAULT_REDUCTION) -> dict[str, Any]:
    """What the importance numbers mean, for the page and the API (JSON-able)."""
    objective = OBJECTIVES[task]
    if task == "classifier":
        objective += (" given with the run (option 'labels')" if label_source == "given" else
                      " predicted by the unpruned model itself (no labels given: its accuracy is 1 by construction)")
    return {"task": task, "task_label": TASK_LABELS[task], "objective": objective, "label_source": label_source,
            "n_prompts": n_prompts, "n_curve_prompts": n_curve, "max_curve_prompts": MAX_CURVE_PROMPTS,
            "step_fraction": STEP_FRACTION, "seeds": list(SEEDS), "source": SOURCE,
            "has_perplexity": task in ("causal_lm", "masked_lm"),
            "importance_rule": rule, "importance_rule_label": REDUCTIONS[rule]}


def _json_array(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8).copy()


def read_meta(arr: np.ndarray) -> dict[str, Any]:
    """Inverse of the ``importance.meta`` encoding."""
    return json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode())


# ----------------------------------------------------------------------------------- stage


class _Budget:
    """Progress over parts of known relative cost."""

    def __init__(self, progress: Callable[[float, str], None], costs: dict[str, float]) -> None:
        self.progress, self.total = progress, sum(costs.values())
        self.start, acc = {}, 0.0
        for k, c in costs.items():
            self.start[k], acc = acc, acc + c
        self.costs = costs

    def part(self, key: str) -> Callable[[float, str], None]:
        s, c = self.start[key], self.costs[key]
        return lambda frac, stage: self.progress((s + c * min(max(frac, 0.0), 1.0)) / self.total, stage)


def _emit_curve(emit, order: str, curve: dict) -> None:
    f32 = lambda xs: np.asarray(xs, dtype=np.float32)  # noqa: E731
    emit(names.pruning(order, "fractions"), f32(curve["fractions"]))
    keys = ("loss", "perplexity", "accuracy") + (("loss_std", "perplexity_std", "accuracy_std")
                                                  if order == "random" else ())
    for key in keys:
        if curve.get(key) is not None:
            emit(names.pruning(order, key), f32(curve[key]))
    emit(names.pruning(order, "removed"), np.asarray(curve["removed"], dtype=np.int32))


def importance_stage(loaded, inputs, options, reducers, emit, progress, should_cancel, info) -> None:
    """Post-capture stage: importance over all inputs, pruning curves over the first few."""
    model = loaded.model
    try:
        task = model_task(model)
    except ValueError as exc:
        info.notices.append(f"Head importance skipped: {exc}.")
        return
    if task == "encoder" and len(inputs) < 2:
        info.notices.append("Head importance skipped: the contrastive objective of a sentence encoder needs at "
                            "least two prompts.")
        return
    if options.get("labels") is not None and task != "classifier":
        info.notices.append(f"Head importance: the labels were ignored ({info.model_class} is not a classifier).")
    labels = _labels(loaded, task, options, len(inputs))
    tokens = info.tokens if loaded.kind == "text" else None
    batches = make_batches(loaded, inputs, tokens, labels)
    n_curve = min(len(inputs), MAX_CURVE_PROMPTS)
    if task == "encoder" and n_curve < 2:
        n_curve = 0
    n_layers, n_heads = model_shape(model)
    n_steps = int(np.ceil(1 / STEP_FRACTION)) + 1
    units = len(inputs) / max(n_curve, 1)  # cost of a pass over all inputs, in curve passes
    budget = _Budget(progress, {"importance": 3 * units, "curves": (4 + len(SEEDS)) * n_steps})
    rule = check_reduction(options.get("importance_rule", DEFAULT_REDUCTION))
    targets = _targets(loaded, task, batches, options)
    label_source = targets[0].get("label_source")
    # one gradient pass at all-one gates gives both importance rules and the baseline metrics; the pruning
    # curves reuse it as their first point when they run on the same inputs (the evaluator's memo)
    evaluator = GateEvaluator(model, batches, task, targets, should_cancel)
    part, passes = budget.part("importance"), [0]

    def on_pass(_: int) -> None:  # one call per batch (a single setting per pass)
        passes[0] += 1
        part(passes[0] / len(evaluator.batches), f"head importance: batch {passes[0]}/{len(evaluator.batches)}")

    (sums, counts, baseline), = evaluator.run([ones_gates(model)], True, progress=on_pass)
    both = {r: importance_scores(sums, counts, r) for r in REDUCTIONS}
    imp = both[rule]
    normalised = imp / (np.linalg.norm(imp, axis=1, keepdims=True) + 1e-20)  # as head_importance(normalise_layers)
    emit(names.metric("importance"), imp.astype(np.float32))
    emit(names.metric("importance_normalised"), normalised.astype(np.float32))
    for r, arr in both.items():
        emit(names.metric(f"importance_{r}"), arr.astype(np.float32))
    if should_cancel():
        raise Cancelled("cancelled by the user")
    meta = describe(task, label_source, len(inputs), n_curve, rule)
    meta.update(baseline=_clean(baseline), n_layers=n_layers, n_heads=n_heads)
    if n_curve:
        if n_curve < len(inputs):
            info.notices.append(f"Pruning curves and live pruning use the first {n_curve} of the {len(inputs)} "
                                "inputs (head importance uses all of them).")
            curve_batches = make_batches(loaded, inputs[:n_curve], tokens[:n_curve] if tokens else None,
                                         labels[:n_curve] if labels else None)
            curve_targets = _targets(loaded, task, curve_batches, options)
            evaluator = GateEvaluator(model, curve_batches, task, curve_targets, should_cancel)
        else:
            curve_batches, curve_targets = batches, targets
        # all three orders at once: importance and reverse order advance in lock-step (one pass per step holds
        # both settings), the random settings go in a few wide passes, shared points are computed once
        curves = pruning_curves(model, curve_batches, task, ("importance", "reverse", "random"),
                                step_fraction=STEP_FRACTION, seeds=SEEDS, progress=budget.part("curves"),
                                should_cancel=should_cancel, targets=curve_targets, reduction=rule,
                                evaluator=evaluator)
        for order, curve in curves.items():
            _emit_curve(emit, order, curve)
        meta["curve_baseline"] = _clean({k: curves["importance"][k][0] if curves["importance"][k] is not None
                                         else None for k in ("loss", "perplexity", "accuracy")})
    emit(names.IMPORTANCE_META, _json_array(meta))
    if label_source == "model":
        info.notices.append("Head importance: no labels were given, so the classifier's loss and accuracy use the "
                            "unpruned model's own predictions as labels (its accuracy is 1 by construction).")
    progress(1.0, "head importance: done")




# ---------------------------------------------------------------------------- live pruning


def gates_for(n_layers: int, n_heads: int, heads: Sequence[Sequence[int]]) -> np.ndarray:
    """``[L, H]`` ones with zeros at the switched-off heads."""
    g = np.ones((n_layers, n_heads), dtype=np.float64)
    for layer, head in heads:
        g[layer, head] = 0.0
    return g


def _prediction_batch(loaded: LoadedModel, task: str, inp: Any, tokens: Sequence[str] | None) -> tuple[dict, dict]:
    """One prompt's batch for :func:`top_predictions` and what is predicted where."""
    batch = make_batches(loaded, [inp], [tokens] if tokens is not None else None)[0]
    batch.pop("special_tokens_mask", None)
    if task == "causal_lm":
        return batch, {"position": len(tokens) - 1, "what": f"next token after {tokens[-1]!r}", "kwargs": {}}
    if task == "masked_lm":
        tok = loaded.preprocessor
        ids = batch["input_ids"][0]
        hits = (ids == tok.mask_token_id).nonzero().flatten().tolist()
        if hits:
            pos = hits[0]
            what = f"the first {tok.mask_token} token (position {pos})"
        else:  # mask the last real non-special token, preferring one with a letter or digit (not '.')
            special = set(tok.all_special_ids)
            cand = [i for i, t in enumerate(ids.tolist()) if t not in special]
            if not cand:
                raise ValueError("the prompt has no token to mask")
            wordy = [i for i in cand if any(ch.isalnum() for ch in tokens[i])]
            pos = (wordy or cand)[-1]
            what = f"masked token {tokens[pos]!r} (position {pos}, replaced by {tok.mask_token})"
            batch["input_ids"] = batch["input_ids"].clone()
            batch["input_ids"][0, pos] = tok.mask_token_id
        return batch, {"position": pos, "what": what, "kwargs": {"position": pos}}
    return batch, {"position": None, "what": "class", "kwargs": {}}


def _named(loaded: LoadedModel, task: str, preds: list[tuple[int, float]]) -> list[dict]:
    out = []
    for i, p in preds:
        if task == "classifier":
            name = (getattr(loaded.model.config, "id2label", None) or {}).get(i, f"class {i}")
        else:
            name = loaded.preprocessor.decode([i])
        out.append({"id": int(i), "token": str(name), "prob": float(p)})
    return out


def prune_experiment(
    loaded: LoadedModel, inputs: Sequence[Any], tokens: Sequence[Sequence[str]] | None, options: dict[str, Any],
    heads: list[list[int]], prompt: int = 0, progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Metrics on the run's first :data:`MAX_CURVE_PROMPTS` inputs with every head (``before``) and with
    ``heads`` switched off (``after``), and the top-:data:`TOP_K` predictions for input ``prompt``."""
    progress = progress or (lambda frac, stage: None)
    model = loaded.model
    task = model_task(model)
    n_layers, n_heads = model_shape(model)
    heads = check_heads([list(h) for h in heads], n_layers, n_heads)
    if not 0 <= prompt < len(inputs):
        raise ValueError(f"prompt must be between 0 and {len(inputs) - 1}")
    n = min(len(inputs), MAX_CURVE_PROMPTS)
    if task == "encoder" and n < 2:
        raise ValueError("the contrastive objective of a sentence encoder needs at least two prompts")
    labels = _labels(loaded, task, options, len(inputs))
    batches = make_batches(loaded, inputs[:n], tokens[:n] if tokens else None, labels[:n] if labels else None)
    progress(0.05, "pruning: targets")
    targets = _targets(loaded, task, batches, options)
    gates = gates_for(n_layers, n_heads, heads)
    progress(0.2, "pruning: all heads")
    before = evaluate_with_gates(model, batches, task, None, targets=targets)
    progress(0.5, f"pruning: {len(heads)} head(s) off")
    after = evaluate_with_gates(model, batches, task, gates, targets=targets)
    progress(0.8, "pruning: predictions")
    preds: dict[str, Any] = {"prompt": prompt, "before": [], "after": []}
    if task == "encoder":
        preds["what"] = "a sentence encoder has no output distribution to rank"
    else:
        batch, where = _prediction_batch(loaded, task, inputs[prompt], tokens[prompt] if tokens else None)
        preds.update(position=where["position"], what=where["what"])
        for key, g in (("before", None), ("after", gates)):
            preds[key] = _named(loaded, task, top_predictions(model, batch, task, g, k=TOP_K, **where["kwargs"]))
    progress(1.0, "pruning: done")
    meta = describe(task, targets[0].get("label_source"), len(inputs), n)
    return {"heads": heads, "before": _clean(before), "after": _clean(after), "predictions": preds,
            "task": task, "objective": meta["objective"], "label_source": meta["label_source"],
            "n_prompts": n, "n_layers": n_layers, "n_heads": n_heads, "source": SOURCE}
