"""The loss behind head importance and pruning, one per model type (docs/REFERENCES.md section 2).

A *batch* is a dict of model inputs (``input_ids``, ``attention_mask``, ``pixel_values``, ...) that may
also carry two metadata keys that are never passed to the model: ``labels`` (classifiers: ``[B]`` class
ids) and ``special_tokens_mask`` (``[B, T]``, 1 on special tokens, as tokenizers return it with
``return_special_tokens_mask=True``). Padding is on the right (as in the capture engine).

Every loss is defined *per example* first, ``L(x)``, because Michel et al.'s importance is
``E_x |dL(x)/d xi|``; the batch/data-set figures are then:

``causal_lm`` (``*ForCausalLM``, ``GPT2LMHeadModel``: the auto causal-LM mapping)
    next-token NLL. ``L(x)`` = mean NLL over the example's real predicted tokens (position ``t``
    predicts ``t+1``, both real). Data-set loss = NLL summed over all predicted tokens / their number
    (token-weighted), perplexity = exp(loss), accuracy = top-1 next-token accuracy over the same tokens.
``masked_lm`` (``*ForMaskedLM``)
    NLL on masked tokens. :func:`prepare_targets` picks ``round(15 %)`` (at least one) of each example's
    real non-special tokens with a generator seeded by ``(seed, example index)``, so the choice does not
    depend on batching. Rule ``"mask"`` (default) replaces every picked token with the mask token: we
    *evaluate*, and BERT's 80/10/10 rule (``"bert"``: 80 % mask, 10 % random token, 10 % unchanged) is
    a pre-training device against the pretrain/fine-tune mismatch. Loss/perplexity/accuracy as above,
    over the picked positions.
``classifier`` (``*ForSequenceClassification``, ``*ForImageClassification``, single-label)
    cross-entropy on the batch's ``labels`` when given (``label_source="given"``), else on the
    *ungated* model's own argmax predictions, fixed before any gating (``label_source="model"``; the
    accuracy of the full model is then 1 by construction: the UI must say so). ``L(x)`` = the example's
    cross-entropy; loss = mean over examples; accuracy = top-1 on the labels; no perplexity.
``encoder`` (a base model without a head, e.g. ``BertModel`` as in all-MiniLM-L6-v2)
    a deterministic contrastive objective. Embedding ``z`` = mean of ``last_hidden_state`` over real
    tokens, L2-normalised (the sentence-transformers pooling of MiniLM). Targets ``t_j`` = the same
    embedding computed by the *ungated* model for every prompt ``j`` of the whole data set, detached.
    ``L(x_i) = -log softmax_j(z_i . t_j / 0.05)[i]`` (InfoNCE, temperature 0.05; positive = the prompt's
    own ungated embedding, negatives = every other prompt's). Because the candidates are fixed
    (detached, over all prompts, not just the batch), ``L(x_i)`` depends only on example ``i``'s own
    forward pass: per-example gates give exact per-example gradients and the value does not depend on
    batching. Accuracy = top-1 retrieval (``argmax_j z_i . t_j == i``); no perplexity. It needs at
    least two prompts (with one the loss is identically 0). SimCSE-style views would need dropout
    noise, hence not deterministic.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.auto import modeling_auto as auto

from backend.engine.capture import ATTN_IMPLEMENTATION, CaptureSession

TASKS = ("causal_lm", "masked_lm", "classifier", "encoder")
META_KEYS = ("labels", "special_tokens_mask")
ENCODER_TEMPERATURE = 0.05
MLM_PROBABILITY = 0.15
MLM_RULES = ("mask", "bert")


def _class_names(mapping: dict) -> set[str]:
    out: set[str] = set()
    for v in mapping.values():
        out.update(v if isinstance(v, (tuple, list)) else (v,))
    return out


_CAUSAL = _class_names(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
_MASKED = _class_names(auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
_CLASSIFIER = _class_names(auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES) | _class_names(
    auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
)
_BASE = _class_names(auto.MODEL_MAPPING_NAMES)


def model_task(model: nn.Module) -> str:
    """``"causal_lm" | "masked_lm" | "classifier" | "encoder"`` from the model's class (through the
    transformers auto mappings, then the class-name suffix for classes outside them; a base model
    with no head, ``model.base_model is model``, is an encoder). Raises
    ``ValueError`` for heads we have no loss for (QA, token classification, regression...)."""
    name = type(model).__name__
    if name in _CLASSIFIER or name.endswith(("ForSequenceClassification", "ForImageClassification")):
        cfg = model.config
        if getattr(cfg, "num_labels", 2) < 2 or getattr(cfg, "problem_type", None) in (
            "regression",
            "multi_label_classification",
        ):
            raise ValueError(f"{name}: only single-label classifiers are supported (not regression)")
        return "classifier"
    if name in _CAUSAL or name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal_lm"
    if name in _MASKED or name.endswith("ForMaskedLM"):
        return "masked_lm"
    if name in _BASE or getattr(model, "base_model", None) is model:  # no head on top
        return "encoder"
    raise ValueError(f"{name}: no importance loss for this model head")


def model_inputs(batch: dict) -> dict:
    """The batch without the metadata keys."""
    return {k: v for k, v in batch.items() if k not in META_KEYS}


def _ungated(model: nn.Module):
    """A capture session without gates (nested inside any outer gated session), or a no-op."""
    if getattr(model.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION:
        return CaptureSession(model)
    return contextlib.nullcontext()


def _real_mask(batch: dict) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    if mask is None and "input_ids" in batch:
        mask = torch.ones_like(batch["input_ids"])
    return None if mask is None else mask.bool()


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Compute losses in at least float32 (float64 models stay float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _pool(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings ``[B, D]``."""
    hidden = _wide(model(**model_inputs(batch)).last_hidden_state)  # [B, T, D]
    mask = _real_mask(batch)
    if mask is None:
        emb = hidden.mean(1)
    else:
        m = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
        emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return F.normalize(emb, dim=-1)


# ----------------------------------------------------------------------------------- targets


def prepare_targets(
    task: str,
    model: nn.Module,
    batches: list[dict],
    *,
    seed: int = 0,
    tokenizer=None,
    mask_token_id: int | None = None,
    special_token_ids: list[int] | None = None,
    mlm_probability: float = MLM_PROBABILITY,
    mlm_rule: str = "mask",
    temperature: float = ENCODER_TEMPERATURE,
) -> list[dict]:
    """What must be fixed before gating, one dict per batch (pass it back to :func:`loss_fn`).

    ``masked_lm``: ``input_ids`` (masked) and ``labels [B, T]`` (-100 where not picked); the mask token
    and special ids come from ``tokenizer``, else the arguments, else the config. ``classifier``:
    ``labels [B]`` and ``label_source``. ``encoder``: ``targets [N, D]`` (ungated, all batches),
    ``index [B]`` (each row's prompt index) and ``temperature``. ``causal_lm``: nothing.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    if task == "causal_lm":
        return [{"task": task} for _ in batches]
    if task == "masked_lm":
        return _mlm_targets(
            model, batches, seed, tokenizer, mask_token_id, special_token_ids, mlm_probability, mlm_rule
        )
    if task == "classifier":
        out = []
        for batch in batches:
            if batch.get("labels") is not None:
                out.append({"task": task, "labels": batch["labels"].long(), "label_source": "given"})
                continue
            with torch.no_grad(), _ungated(model):
                out.append(targets_from_output(task, model_output(task, model, batch, {}), temperature)[0])
        return out
    with torch.no_grad(), _ungated(model):  # encoder
        embs = [model_output(task, model, b, {}) for b in batches]  # [B_i, D] each
    return targets_from_output(task, embs, temperature)


def targets_from_output(task: str, outputs, temperature: float = ENCODER_TEMPERATURE) -> list[dict]:
    """Targets from *ungated* outputs of :func:`model_output`: classifier ``logits [B, C]`` -> its
    argmax labels (one dict); encoder: a list of every batch's ``z [B_i, D]`` -> one dict per batch."""
    if task == "classifier":
        return [{"task": task, "labels": outputs.detach().argmax(-1), "label_source": "model"}]
    targets = torch.cat([e.detach() for e in outputs])  # [N, D]
    if targets.shape[0] < 2:
        raise ValueError("the encoder (contrastive) objective needs at least two prompts")
    out, start = [], 0
    for e in outputs:
        index = torch.arange(start, start + e.shape[0], device=e.device)
        out.append({"task": task, "targets": targets, "index": index, "temperature": temperature})
        start += e.shape[0]
    return out


def _mlm_targets(model, batches, seed, tokenizer, mask_token_id, special_ids, prob, rule) -> list[dict]:
    if rule not in MLM_RULES:
        raise ValueError(f"mlm_rule must be one of {MLM_RULES}")
    cfg = model.config
    if tokenizer is not None:
        mask_token_id = tokenizer.mask_token_id if mask_token_id is None else mask_token_id
        special_ids = list(tokenizer.all_special_ids) if special_ids is None else special_ids
    if mask_token_id is None:
        mask_token_id = getattr(cfg, "mask_token_id", None)
    if mask_token_id is None:
        raise ValueError("masked LM loss needs the mask token id (pass tokenizer= or mask_token_id=)")
    if special_ids is None:
        names = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
        special_ids = [getattr(cfg, n, None) for n in names]
    special_ids = sorted({int(i) for i in special_ids if i is not None} | {int(mask_token_id)})
    vocab = int(cfg.vocab_size)
    out, offset = [], 0
    for batch in batches:
        ids = batch["input_ids"].cpu()  # [B, T]; picked on the CPU (seeded CPU generators)
        eligible = _real_mask(batch).cpu() & ~torch.isin(ids, torch.tensor(special_ids))
        if batch.get("special_tokens_mask") is not None:
            eligible &= ~batch["special_tokens_mask"].cpu().bool()
        masked, labels = ids.clone(), torch.full_like(ids, -100)
        for row in range(ids.shape[0]):
            g = torch.Generator().manual_seed(seed * 1_000_003 + offset + row)
            pos = eligible[row].nonzero().flatten()
            if len(pos) == 0:
                continue
            k = max(1, int(round(prob * len(pos))))
            pick = pos[torch.randperm(len(pos), generator=g)[:k]].sort().values
            labels[row, pick] = ids[row, pick]
            if rule == "mask":
                masked[row, pick] = mask_token_id
                continue
            u = torch.rand(k, generator=g)
            rand_tok = torch.randint(0, vocab, (k,), generator=g)
            new = torch.where(u < 0.8, torch.full_like(rand_tok, mask_token_id), rand_tok)
            masked[row, pick] = torch.where(u < 0.9, new, ids[row, pick])
        device = batch["input_ids"].device
        out.append({"task": "masked_lm", "input_ids": masked.to(device), "labels": labels.to(device),
                    "rule": rule})
        offset += ids.shape[0]
    return out


# ------------------------------------------------------------------------------------ losses


@dataclass
class LossTerms:
    """One forward pass's loss, per example and as sums for data-set metrics."""

    per_example: torch.Tensor  # [B] L(x), differentiable
    weight: torch.Tensor  # [B] bool: example has at least one target (tokens / a label)
    total: torch.Tensor  # [] summed NLL over tokens (LMs) or examples, differentiable
    count: int  # number of tokens (LMs) or examples
    correct: int  # top-1 hits among them
    row_sum: torch.Tensor | None = None  # [B] float64 detached: each row's summed NLL (batched gate settings)
    row_count: torch.Tensor | None = None  # [B] int64: each row's tokens (LMs) or 1
    row_correct: torch.Tensor | None = None  # [B] int64: each row's top-1 hits

    @property
    def loss_sum(self) -> float:
        return float(self.total.detach())


def _token_terms(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> LossTerms:
    # logits [B, T, V], labels [B, T], valid [B, T] bool; only the valid positions are scored
    picked = _wide(logits[valid])  # [n, V]
    gold = labels[valid]  # [n]
    nll = F.cross_entropy(picked, gold, reduction="none")  # [n]
    rows = valid.nonzero()[:, 0]  # [n] batch row of each scored token
    n = valid.sum(1)  # [B]
    row_sum = nll.new_zeros(valid.shape[0]).index_add(0, rows, nll)  # [B]
    per_example = row_sum / n.clamp(min=1)
    hit = picked.argmax(-1) == gold  # [n]
    row_correct = torch.zeros(valid.shape[0], dtype=torch.int64, device=hit.device).index_add(0, rows, hit.long())
    return LossTerms(per_example, n > 0, nll.sum(), int(n.sum()), int(hit.sum()),
                     row_sum.detach().double(), n.long(), row_correct)


def model_output(task: str, model: nn.Module, batch: dict, targets: dict) -> torch.Tensor:
    """Run the model (inside whatever gated session is active): logits ``[B, T, V]`` for LMs (on the
    masked ids for MLM), ``[B, C]`` for classifiers, pooled normalised ``z [B, D]`` for encoders."""
    if task == "encoder":
        return _pool(model, batch)
    if task == "masked_lm":
        return model(**{**model_inputs(batch), "input_ids": targets["input_ids"]}).logits
    if task in TASKS:
        return model(**model_inputs(batch)).logits
    raise ValueError(f"unknown task {task!r}")


def terms_from_output(task: str, out: torch.Tensor, batch: dict, targets: dict) -> LossTerms:
    """The loss of :func:`model_output`'s ``out``."""
    if task == "causal_lm":
        ids, mask = batch["input_ids"], _real_mask(batch)
        return _token_terms(out[:, :-1], ids[:, 1:], mask[:, :-1] & mask[:, 1:])
    if task == "masked_lm":
        labels = targets["labels"]
        return _token_terms(out, labels, labels != -100)
    if task == "classifier":
        logits, labels = _wide(out), targets["labels"]  # [B, C], [B]
    else:  # encoder: similarities to every prompt's ungated embedding
        logits = out @ targets["targets"].to(out.dtype).T / targets["temperature"]  # [B, N]
        labels = targets["index"]  # [B]
    per_example = F.cross_entropy(logits, labels, reduction="none")
    hit = (logits.argmax(-1) == labels).long()
    ones = torch.ones_like(labels, dtype=torch.bool)
    return LossTerms(per_example, ones, per_example.sum(), len(labels), int(hit.sum()),
                     per_example.detach().double(), ones.long(), hit)


def loss_terms(task: str, model: nn.Module, batch: dict, targets: dict) -> LossTerms:
    """Run the model on ``batch`` (inside whatever gated session is active) and compute the loss."""
    return terms_from_output(task, model_output(task, model, batch, targets), batch, targets)


def loss_fn(task: str, model: nn.Module, batch: dict, targets: dict) -> torch.Tensor:
    """Scalar batch loss: token-weighted mean NLL for LMs, mean over examples otherwise."""
    terms = loss_terms(task, model, batch, targets)
    return terms.total / max(terms.count, 1)


def metrics_from(task: str, loss_sum: float, count: int, correct: int) -> dict:
    """``loss``, ``perplexity`` (LMs only, else None), ``accuracy`` and ``count`` from summed terms."""
    loss = loss_sum / count if count else float("nan")
    ppl = math.exp(min(loss, 700.0)) if task in ("causal_lm", "masked_lm") and count else None
    return {"loss": loss, "perplexity": ppl, "accuracy": correct / count if count else float("nan"),
            "count": count}


def batch_metrics(task: str, model: nn.Module, batch: dict, targets: dict) -> dict:
    """Per-batch ``loss``, ``perplexity``, ``accuracy`` (no gradient)."""
    with torch.no_grad():
        t = loss_terms(task, model, batch, targets)
    return metrics_from(task, t.loss_sum, t.count, t.correct)
