"""The grammar of captured and derived tensor names: the contract between worker and app.

Captured per prompt ``p`` and layer ``l`` (TransformerLens-style names):
    prompt.{p}.input_ids                  # [T] int64 token ids (padding removed)
    prompt.{p}.blocks.{l}.attn.pattern    # [head, query_pos, key_pos] rows sum to 1 (image runs and runs
                                          # made before ENGINE_VERSION 7; text runs recompute it on request)
    prompt.{p}.attn.thumbs                # [layer, head, bins, bins] float16 pooled patterns (text runs)
    prompt.{p}.attn.top_key|top_weight    # [layer, head] each head's most-attended key and its weight
    prompt.{p}.blocks.{l}.attn.received  # [head, key_pos] mean attention received (Gu et al. alpha)
    prompt.{p}.blocks.{l}.resid.absmax    # [T] largest |hidden activation| per token
    prompt.{p}.logits                     # [classes] class logits of an image classifier
Derived over the run:
    metrics.{name}                        # [layer, head] float32, e.g. metrics.sink_first
    sinks.alpha_first                     # [prompt, layer, head] float32 per-prompt alpha(first token)
    embedding.{l}.{h}.{method}            # [n_points, 2] float32 joint query/key map of one head
    embedding.{l}.{h}.meta                # [n_points, 3] int32 (kind 0=query 1=key, prompt, position)
    roles.{name}                          # head atlas extras, e.g. roles.dominant [layer, head] int32
"""

from __future__ import annotations


def prompt_input_ids(p: int) -> str:
    return f"prompt.{p}.input_ids"


def attn_pattern(p: int, layer: int) -> str:
    return f"prompt.{p}.blocks.{layer}.attn.pattern"


def attn_thumbs(p: int) -> str:
    """``[layer, head, bins, bins]`` float16: each head's pattern pooled into at most 32 runs of consecutive
    positions (queries averaged, keys summed; ``backend.engine.grid_reducer``), what the all-heads view draws."""
    return f"prompt.{p}.attn.thumbs"


def attn_top_key(p: int) -> str:
    """``[layer, head]`` int32: each head's most-attended key (largest mean attention over all queries)."""
    return f"prompt.{p}.attn.top_key"


def attn_top_weight(p: int) -> str:
    """``[layer, head]`` float32: that key's mean attention over all queries."""
    return f"prompt.{p}.attn.top_weight"


def pattern_job_array() -> str:
    """The array of an on-request pattern job (``backend.pattern_jobs``): ``[head, query_pos, key_pos]``
    float16 of one prompt and layer, under the job's digest (``keys.derived_array``)."""
    return "pattern"


def attn_received(p: int, layer: int) -> str:
    return f"prompt.{p}.blocks.{layer}.attn.received"


def resid_absmax(p: int, layer: int) -> str:
    return f"prompt.{p}.blocks.{layer}.resid.absmax"


def metric(name: str) -> str:
    return f"metrics.{name}"


SINK_ALPHA_FIRST = "sinks.alpha_first"
"""``[prompt, layer, head]`` float32: Gu et al.'s alpha of the first token per prompt (NaN: layer not seen), so
that the sink rate can be taken at any threshold and by either rule without recomputation
(``backend.metrics.sink_rate``)."""


def embedding(layer: int, head: int, method: str) -> str:
    return f"embedding.{layer}.{head}.{method}"


def embedding_meta(layer: int, head: int) -> str:
    return f"embedding.{layer}.{head}.meta"


def resid_absmax_dim(p: int, layer: int) -> str:
    """``[T]`` int64: the feature dimension where ``resid.absmax`` occurs, per token."""
    return f"prompt.{p}.blocks.{layer}.resid.absmax_dim"


STREAMING_KINDS = ("nll_full", "nll_window", "nll_sink", "params", "reassigned")


def streaming(kind: str) -> str:
    """StreamingLLM experiment on the run's first prompt (``backend.engine.streaming``):
    ``streaming.nll_full|nll_window|nll_sink`` ``[T-1]`` float32 per-token NLL (nats) of token ``t+1``,
    ``streaming.params`` ``[window, sinks]`` int32, ``streaming.reassigned`` ``[]`` int32 (1: the sink
    positions were re-assigned within the cache as in the paper, 0: original positions)."""
    if kind not in STREAMING_KINDS:
        raise ValueError(f"unknown streaming array {kind!r}")
    return f"streaming.{kind}"


def role_array(name: str) -> str:
    """Head-atlas arrays besides ``metrics.*``: ``roles.dominant`` [L, H] int32 (codes in
    ``backend.roles.ROLES``), ``roles.positional_profile`` [L, H, 2K+1], ``roles.retrieval_recall`` [trials]."""
    return f"roles.{name}"


def resid_norm(p: int, layer: int) -> str:
    """``[T]`` float32: L2 norm of each token's hidden state after block ``layer`` (image runs; high-norm
    tokens, Darcet et al. 2024)."""
    return f"prompt.{p}.blocks.{layer}.resid.norm"


def output_logits(p: int) -> str:
    """``[classes]`` float32: the class logits of an image classifier for image ``p`` (its predicted class is the
    argmax; labels from the model's ``id2label``). Runs made before this array existed do not have it."""
    return f"prompt.{p}.logits"


IMPORTANCE_META = "importance.meta"
"""``[n]`` uint8: UTF-8 JSON describing the importance stage (task, objective, label source, prompts used,
baseline metrics, pruning settings); see ``backend.engine.importance_stage``."""
PRUNING_ORDERS = ("importance", "random", "reverse")
PRUNING_KEYS = ("fractions", "loss", "perplexity", "accuracy", "loss_std", "perplexity_std", "accuracy_std",
                "removed")


def pruning(order: str, key: str) -> str:
    """Pruning curves (Michel et al. 2019; ``backend.engine.importance_stage``): ``pruning.{order}.fractions``
    ``[K]`` float32 fraction of heads removed, ``.loss|.perplexity|.accuracy`` ``[K]`` float32 (perplexity for
    LMs only; random order: the mean over seeds, with ``*_std``), ``.removed`` int32 ``[n, 2]`` (layer, head)
    in removal order (random: ``[seeds, n, 2]``). Head importance itself is ``metrics.importance`` and
    ``metrics.importance_normalised`` ``[layer, head]`` float32."""
    if order not in PRUNING_ORDERS or key not in PRUNING_KEYS:
        raise ValueError(f"unknown pruning array {order}.{key}")
    return f"pruning.{order}.{key}"


LAB_SIDES = ("before", "after")


def lab_pattern(side: str, layer: int) -> str:
    """Intervention lab (``backend.engine.lab_job``): ``lab.{before|after}.{l}`` ``[head, query_pos, key_pos]``
    float16, the chosen prompt's attention in layer ``l`` without and with the intervention (stored under
    the request's digest, ``keys.derived_array``)."""
    if side not in LAB_SIDES:
        raise ValueError(f"unknown lab side {side!r}")
    return f"lab.{side}.{int(layer)}"
