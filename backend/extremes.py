"""Extreme tokens: tables and sink lists from the lab's arrays (pure NumPy, no torch, no Redis).

Inputs come from :func:`backend.engine.lab_measures.extreme_tokens` (``received``, ``value_norm``,
``contribution`` ``[L, H, T]``, ``resid_norm`` ``[L, T]``) and :func:`backend.engine.lab_measures.first_token_alpha`
(``alpha_first`` ``[N, L, H]``). ``received`` is Gu et al.'s ``alpha[l, h](k)``: the mean attention key ``k``
receives from the queries that can see it (all queries for encoders).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from backend.vocab import SINK_EPS

MIN_QUERIES = 4
"""A key counts as a sink only when at least this many queries can see it: in a causal prompt the last
keys' ``alpha`` rests on one or two queries (the very last key's is its own self-attention)."""
SWITCH = 0.5
"""A head *switches* when its sink rate differs by at least this much between two domains."""
COLUMNS = ("received", "value_norm", "contribution", "resid_norm")
COLUMN_LABELS = {
    "received": "attention received (mean over heads and seeing queries)",
    "value_norm": "value-vector norm (mean over heads)",
    "contribution": "value contribution = received x value norm (mean over heads)",
    "resid_norm": "residual-stream norm leaving the block",
}


def token_table(arrays: dict[str, np.ndarray], layer: int, tokens: Sequence[str]) -> list[dict[str, Any]]:
    """One row per token of ``layer``: position, token and the four columns (heads averaged)."""
    rows = []
    for t, tok in enumerate(tokens):
        rows.append({
            "position": t, "token": tok,
            "received": float(arrays["received"][layer, :, t].mean()),
            "value_norm": float(arrays["value_norm"][layer, :, t].mean()),
            "contribution": float(arrays["contribution"][layer, :, t].mean()),
            "resid_norm": float(arrays["resid_norm"][layer, t]),
        })
    return rows


def seeing_queries(n_tokens: int, causal: bool) -> np.ndarray:
    """``[T]``: how many queries can see each key."""
    return (n_tokens - np.arange(n_tokens)) if causal else np.full(n_tokens, n_tokens)


def sink_positions(received: np.ndarray, causal: bool, eps: float = SINK_EPS,
                   min_queries: int = MIN_QUERIES) -> list[dict[str, Any]]:
    """Every ``(layer, head, position)`` whose ``alpha`` exceeds ``eps`` among keys seen by at least
    ``min_queries`` queries, strongest first; ``first`` tells the first token from later sinks."""
    n_layers, n_heads, t = received.shape
    ok = seeing_queries(t, causal) >= min(min_queries, t)
    hits = np.argwhere((received > eps) & ok[None, None, :])
    out = [{"layer": int(l), "head": int(h), "position": int(k), "alpha": float(received[l, h, k]),
            "first": int(k) == 0} for l, h, k in hits]
    return sorted(out, key=lambda r: (-r["alpha"], r["layer"], r["head"], r["position"]))


def domain_rates(alpha_first: np.ndarray, domain_of: Sequence[str], eps: float = SINK_EPS,
                 ) -> tuple[list[str], np.ndarray, list[int]]:
    """Sink rate per domain and head: the fraction of the domain's inputs on which the head's first-token
    ``alpha`` exceeds ``eps`` (thresholded per input, then averaged, as sail-sg/Attention-Sink's evaluation).
    Returns ``(domains in first-seen order, rate [D, L, H], inputs per domain)``."""
    domains = list(dict.fromkeys(domain_of))
    labels = np.asarray(list(domain_of))
    sink = np.asarray(alpha_first) > eps  # [N, L, H]
    rates = np.stack([sink[labels == d].mean(axis=0) for d in domains]) if domains else np.zeros((0,) + sink.shape[1:])
    return domains, rates, [int((labels == d).sum()) for d in domains]


def switch_score(rates: np.ndarray) -> np.ndarray:
    """``[L, H]``: largest minus smallest sink rate over domains (1: dormant on one domain, active on another)."""
    return rates.max(axis=0) - rates.min(axis=0) if len(rates) else np.zeros(rates.shape[1:])


def switching_heads(rates: np.ndarray, domains: Sequence[str], threshold: float = SWITCH) -> list[dict[str, Any]]:
    """Heads whose switch score reaches ``threshold``, with the domains where they are most and least dormant."""
    score = switch_score(rates)
    out = []
    for l, h in np.argwhere(score >= threshold):
        col = rates[:, l, h]
        out.append({"layer": int(l), "head": int(h), "score": float(score[l, h]),
                    "dormant_on": domains[int(col.argmax())], "active_on": domains[int(col.argmin())]})
    return sorted(out, key=lambda r: (-r["score"], r["layer"], r["head"]))


def parse_labels(text: str | None, n_inputs: int, default: str) -> list[str]:
    """Domain labels of the run's inputs from ``"prose,code,,code"`` (blank or missing: ``default``)."""
    parts = [p.strip()[:40] for p in (text or "").split(",")]
    return [(parts[i] if i < len(parts) and parts[i] else default) for i in range(n_inputs)]
