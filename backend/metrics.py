"""Reference implementations of the per-head attention metrics, on full patterns (pure NumPy).

Every function takes ONE prompt's pattern ``A [head, query_pos, key_pos]`` (``[H, T, T]``, padding already
removed, rows summing to 1) and returns one number per head (``[H]``) unless said otherwise. They are the
plain definitions, written for clarity; the streaming reducers in ``backend.engine.metrics_reducer``
compute the same numbers chunk by chunk and are tested against these (``tests/unit/test_metrics.py``).
Sources: ``docs/REFERENCES.md`` sections 3 (sinks, massive activations) and 5 (head roles).

Conventions (applied the same way everywhere):
  * Positions are 0-based: the first token is ``k = 0``.
  * A metric that is undefined for a prompt (no special token, ``T < 2`` for the previous-token score,
    no earlier duplicate, no query at a given offset) is ``0`` for that prompt, not NaN, so that it can be
    averaged and drawn; this is documented on each function.
  * Aggregation over prompts (:func:`mean_over_prompts`): the plain mean of the per-prompt values, each
    prompt weighted equally (not each token), so one long prompt does not dominate.
  * Computation in float64; callers cast to float32 for storage.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from backend import vocab
from backend.vocab import SINK_EPS  # Gu et al. (ICLR 2025): a first-token sink when alpha(first) > SINK_EPS


def _check(A: np.ndarray) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 3 or A.shape[1] != A.shape[2]:
        raise ValueError(f"expected one prompt's pattern [H, T, T], got shape {A.shape}")
    return A


def unpad(pattern: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """``pattern [B, H, T, S]`` of a right-padded batch -> per-row ``[H, T_b, T_b]`` (real tokens only)."""
    pattern = np.asarray(pattern)
    return [pattern[b, :, :n, :n] for b, n in enumerate(lengths)]


# --- attention sinks (docs/REFERENCES.md section 3) ------------------------------------------------------


def received(A: np.ndarray, causal: bool) -> np.ndarray:
    """Mean attention each key receives from the queries that can see it -> ``[H, T]``.

    Gu et al. (ICLR 2025), ``alpha(k) = 1/(T-k+1) * sum_{t>=k} A[t, k]`` with 1-based ``k``; 0-based here:
    ``alpha(k) = 1/(T-k) * sum_{t>=k} A[t, k]`` for a causal model (queries ``t >= k`` see key ``k``), and
    ``alpha(k) = 1/T * sum_t A[t, k]`` for an encoder (every query sees every key).
    """
    A = _check(A)
    T = A.shape[-1]
    if causal:
        seen = np.tril(np.ones((T, T), dtype=bool))  # [t, k]: t >= k
        return np.where(seen, A, 0.0).sum(axis=1) / (T - np.arange(T))
    return A.sum(axis=1) / T


def sink_first(A: np.ndarray, causal: bool) -> np.ndarray:
    """``alpha(first token)`` per head -> ``[H]`` (for both kinds it is the mean over all ``T`` queries)."""
    return received(A, causal)[:, 0]


def sink_special(A: np.ndarray, special: np.ndarray | None, causal: bool) -> np.ndarray:
    """Mean of ``alpha(k)`` over the special keys (``special [T]`` bool: [CLS], [SEP], BOS, ...) -> ``[H]``.

    Clark et al. (2019): BERT heads put much attention on [CLS]/[SEP]. Each special key counts once
    (a mean over keys, not a sum). A prompt without special tokens (or ``special is None``) gives 0.
    """
    alpha = received(A, causal)
    if special is None:
        return np.zeros(alpha.shape[0])
    special = np.asarray(special, dtype=bool)
    if not special.any():
        return np.zeros(alpha.shape[0])
    return alpha[:, special].mean(axis=1)


def sink_flags(alpha_first: np.ndarray, eps: float = SINK_EPS) -> np.ndarray:
    """``alpha_first [..., L, H]`` -> bool of the same shape: first-token sink (``alpha > eps``).

    NaN (a layer never measured) counts as no sink.
    """
    with np.errstate(invalid="ignore"):
        return np.asarray(alpha_first, dtype=np.float64) > eps


SINK_RULES: dict[str, str] = {r.name: f"{r.label}: {r.source}" for r in vocab.SINK_RULES}
"""How a sink rate over several prompts is taken (declared in :data:`backend.vocab.SINK_RULES`); the first is the
default (the released evaluation)."""
DEFAULT_SINK_RULE = vocab.SINK_RULES[0].name


def check_sink_eps(eps: float) -> float:
    """``eps`` as a float in ``[0, 1]`` (alpha is a mean of attention weights); ValueError otherwise."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a number between 0 and 1, got {eps!r}") from None
    if not np.isfinite(e) or not 0.0 <= e <= 1.0:
        raise ValueError(f"eps must be between 0 and 1, got {eps!r}")
    return e


def sink_rate(alpha_first: np.ndarray, eps: float = SINK_EPS, rule: str = DEFAULT_SINK_RULE) -> float:
    """Sink rate (Gu et al., ICLR 2025) from the per-prompt first-token alpha ``[P, L, H]`` (``[L, H]``: one prompt).

    ``rule="per_prompt"`` (default; the released ``compute_attention_sink``): threshold every prompt's
    ``alpha[l, h]`` at ``eps``, then average the indicator over prompts, layers and heads.
    ``rule="prompt_mean"``: average ``alpha`` over prompts first, then the fraction of heads above ``eps``.
    Both agree for a single prompt. Layers never measured (NaN) count as no sink, in the denominator.
    """
    if rule not in SINK_RULES:
        raise ValueError(f"sink rule must be one of {', '.join(SINK_RULES)}, got {rule!r}")
    a = np.asarray(alpha_first, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] == 0:
        raise ValueError(f"expected alpha_first [prompts, layers, heads], got shape {a.shape}")
    if rule == "prompt_mean":
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers stay NaN (no sink)
            a = np.nanmean(a, axis=0)
    return float(sink_flags(a, eps).mean())


def sink_share(alpha_first: np.ndarray, eps: float = SINK_EPS) -> np.ndarray:
    """``[P, L, H]`` -> ``[L, H]``: the fraction of prompts in which each head has a first-token sink."""
    a = np.asarray(alpha_first, dtype=np.float64)
    return sink_flags(a if a.ndim == 3 else a[None], eps).mean(axis=0)


# --- head roles (docs/REFERENCES.md section 5) -----------------------------------------------------------


def entropy(A: np.ndarray) -> np.ndarray:
    """Mean over queries of ``-sum_j A[t, j] log A[t, j]`` (natural log, ``0 log 0 = 0``) -> ``[H]``.

    Bounds per query: 0 (one-hot row) .. ``log(#keys the query sees)``.
    """
    A = _check(A)
    safe = np.where(A > 0, A, 1.0)
    return -(A * np.log(safe)).sum(axis=-1).mean(axis=-1)


def distance(A: np.ndarray) -> np.ndarray:
    """Mean attention distance: mean over queries of ``sum_j A[t, j] * |t - j|`` (in tokens) -> ``[H]``."""
    A = _check(A)
    T = A.shape[-1]
    pos = np.arange(T)
    return (A * np.abs(pos[:, None] - pos[None, :])).sum(axis=-1).mean(axis=-1)


def previous_token(A: np.ndarray) -> np.ndarray:
    """Previous-token score: mean over ``t >= 1`` of ``A[t, t-1]`` -> ``[H]``; 0 when ``T < 2``."""
    A = _check(A)
    T = A.shape[-1]
    if T < 2:
        return np.zeros(A.shape[0])
    t = np.arange(1, T)
    return A[:, t, t - 1].mean(axis=-1)


def induction_score(A: np.ndarray, L: int, offset: int = 0) -> np.ndarray:
    """Induction score (Olsson et al., 2022) on random tokens repeated twice -> ``[H]``.

    Index convention: positions ``0 .. offset-1`` hold a prefix (``offset=1`` for a BOS token), the first
    copy is at ``offset .. offset+L-1``, the second at ``offset+L .. offset+2L-1``. For every query ``t`` in
    the second copy, token ``t`` equals token ``t-L``, and the induction target is the token after that
    earlier occurrence, ``t - L + 1``. Score = mean over those ``L`` queries of ``A[t, t-L+1]``.
    Positions after the second copy (if any) are ignored.
    """
    A = _check(A)
    if L < 1 or A.shape[-1] < offset + 2 * L:
        raise ValueError(f"pattern of length {A.shape[-1]} cannot hold offset {offset} + 2 x {L} tokens")
    t = np.arange(offset + L, offset + 2 * L)
    return A[:, t, t - L + 1].mean(axis=-1)


def duplicate_token_score(A: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """Duplicate-token score -> ``[H]``.

    For each query ``t`` whose token occurred earlier (some ``j < t`` with ``tokens[j] == tokens[t]``), sum
    the attention to all those earlier occurrences; score = mean over such queries. 0 if there is none.
    """
    A = _check(A)
    tokens = np.asarray(tokens)
    T = A.shape[-1]
    if tokens.shape != (T,):
        raise ValueError(f"tokens must have shape [{T}], got {tokens.shape}")
    same = (tokens[:, None] == tokens[None, :]) & np.tril(np.ones((T, T), dtype=bool), k=-1)  # [t, j]: j < t
    has_dup = same.any(axis=1)
    if not has_dup.any():
        return np.zeros(A.shape[0])
    per_query = np.where(same, A, 0.0).sum(axis=-1)  # [H, T]
    return per_query[:, has_dup].mean(axis=-1)


def positional_profile(A: np.ndarray, max_offset: int) -> np.ndarray:
    """Mean attention by relative offset ``d = t - j`` -> ``[H, 2*max_offset + 1]``.

    Column ``i`` holds offset ``d = i - max_offset`` (so column ``max_offset`` is the diagonal, ``d = 1`` the
    previous token, negative ``d`` attention to later tokens, zero in causal models): the mean over the
    queries ``t`` with ``0 <= t - d < T`` of ``A[t, t-d]``; 0 where no query has that offset (``|d| >= T``).
    """
    A = _check(A)
    H, T, _ = A.shape
    out = np.zeros((H, 2 * max_offset + 1))
    for i, d in enumerate(range(-max_offset, max_offset + 1)):
        t = np.arange(max(d, 0), min(T, T + d))
        if t.size:
            out[:, i] = A[:, t, t - d].mean(axis=-1)
    return out


def prompt_metrics(A: np.ndarray, causal: bool, special: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The per-head numbers the run stores for one prompt (``metrics.*`` before averaging), each ``[H]``."""
    return {
        "sink_first": sink_first(A, causal),
        "sink_special": sink_special(A, special, causal),
        "entropy": entropy(A),
        "distance": distance(A),
        "previous_token": previous_token(A),
    }


def mean_over_prompts(values: Sequence[np.ndarray]) -> np.ndarray:
    """Aggregate per-prompt values (each ``[...]``, same shape): plain mean, every prompt weighted equally."""
    if len(values) == 0:
        raise ValueError("no prompts to average")
    return np.mean(np.stack([np.asarray(v, dtype=np.float64) for v in values]), axis=0)


# --- massive activations (docs/REFERENCES.md section 3, Sun et al. 2024) ---------------------------------


def massive_activation_stats(hidden: np.ndarray) -> dict[str, np.ndarray]:
    """One prompt's residual stream after one block, ``hidden [T, D]`` (real tokens only) ->

    ``top [T]``: largest ``|h|`` per token; ``dim [T]`` (int64): the feature where it occurs (first on ties);
    ``ratio [T]``: ``top / median(|h|)``, the median taken over all ``T x D`` entries of this prompt's layer
    (``inf`` where the median is 0). Sun et al. call activations ~100+ in magnitude and up to ~10,000x the
    median "massive"; the run stores ``max_t ratio`` per layer, averaged over prompts (``metrics.massive_ratio``).
    """
    h = np.abs(np.asarray(hidden, dtype=np.float64))
    if h.ndim != 2 or h.shape[0] == 0:
        raise ValueError(f"expected hidden [T, D] with T >= 1, got shape {h.shape}")
    top = h.max(axis=1)
    dim = h.argmax(axis=1).astype(np.int64)
    med = float(np.median(h))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = top / med if med > 0 else np.full_like(top, np.inf)
    return {"top": top, "dim": dim, "ratio": ratio}
