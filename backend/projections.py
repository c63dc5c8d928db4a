"""Joint query-key maps of attention heads (AttentionViz, REFERENCES.md section 1). NumPy/sklearn/umap only.

Pipeline per head: query vectors ``q [n, d]`` and key vectors ``k [m, d]`` (scaled so that ``q_i . k_j`` is the
logit) -> :func:`normalise_qk` (translate keys onto the query centroid, equalise mean norms) -> one joint set
``[n + m, d]`` -> :func:`project` / :func:`project_heads` -> ``[n + m, 2]`` float32.

Speed (FEASIBILITY.md "Projections"; measured by ``benchmarks/bench_embeddings.py``): a default
``umap.UMAP(metric="cosine")`` per head spends its time in NN-descent, the spectral initialisation and 200
epochs of layout. :func:`project_heads` instead, per head: L2-normalises the rows (Euclidean distance on the unit
sphere ranks neighbours exactly as the cosine distance does), reduces them with PCA to ``FAST_PCA_DIMS`` dims
(used *only* for the neighbour search), finds the exact k nearest neighbours with blocked matrix products,
builds UMAP's fuzzy graph from them (``precomputed_knn``: no NN-descent) and lays it out from a PCA start with
``FAST_EPOCHS`` epochs. Heads are spread over worker processes when there is more than one core to use.
numba compiles UMAP's kernels once per process: call :func:`warm_up` when a worker process starts.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Sequence

import numpy as np

METHODS = ("umap", "tsne", "pca")
N_NEIGHBORS = 15  # UMAP's default
FAST_EPOCHS = 150  # UMAP's default is 200 above 10k points, 500 below
FAST_PCA_DIMS = 24  # dims kept for the neighbour search in the fast path (head dims are 32-128)
_KNN_BLOCK = 2048  # query rows per block of the exact neighbour search: [block, n] float32 at a time


class Cancelled(RuntimeError):
    """``should_cancel()`` returned true between two heads."""


# ----------------------------------------------------------------------------------------------------------
# Query/key normalisation


def normalise_qk(
    q: np.ndarray, k: np.ndarray, translate: bool = True, scale: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """AttentionViz normalisation of one head's queries ``q [n, d]`` and keys ``k [m, d]``.

    ``translate``: ``k <- k - mean(k) + mean(q)`` (adds ``q . c`` to every logit of query ``q``: the softmax,
    hence each query's order of keys, is unchanged). ``scale``: ``c = sqrt(mean|q| / mean|k|)``, keys times
    ``c``, queries divided by ``c`` (every dot product unchanged; afterwards both have the same mean norm).
    Returns float32 copies.
    """
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if translate and len(q) and len(k):
        k = k - k.mean(axis=0) + q.mean(axis=0)
    if scale and len(q) and len(k):
        nq = np.linalg.norm(q, axis=1).mean()
        nk = np.linalg.norm(k, axis=1).mean()
        if nq > 0 and nk > 0:
            c = np.sqrt(nq / nk)
            q, k = q / c, k * c
    return q.astype(np.float32), k.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Sampling


def allocate(counts: Sequence[int], cap: int) -> np.ndarray:
    """Even split of ``cap`` points over groups of sizes ``counts`` (water filling): every group gets
    ``min(count, L)`` or ``L + 1`` with the largest level ``L`` that fits; the leftover ``+1``s go to the
    first groups (in the given order) that still have points. Never more than a group has.

    Adding a group never increases any other group's share, which lets the QK reducer trim as it streams.
    """
    c = np.asarray(counts, dtype=np.int64)
    if c.size == 0 or c.sum() <= cap:
        return c.copy()
    lo, hi = 0, int(c.max())  # largest L with sum(min(c, L)) <= cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(c, mid).sum() <= cap:
            lo = mid
        else:
            hi = mid - 1
    out = np.minimum(c, lo)
    rest = int(cap - out.sum())
    if rest > 0:
        more = np.flatnonzero(c > lo)[:rest]
        out[more] += 1
    return out


def prompt_order(prompt: int, count: int, seed: int) -> np.ndarray:
    """Seeded priority order of a prompt's ``count`` positions: a sample of ``a`` of them is ``order[:a]``."""
    return np.random.default_rng([int(seed), int(prompt)]).permutation(int(count))


def sample_indices(counts_per_prompt: Sequence[int], cap: int, seed: int = 0) -> np.ndarray:
    """At most ``cap`` point indices spread evenly across prompts (see :func:`allocate`).

    Points are numbered prompt after prompt (prompt ``p`` owns ``offset[p] .. offset[p] + counts[p]``); the
    result is sorted int64 indices into that concatenation. Within a prompt, points are drawn with a seeded
    permutation that depends only on ``(seed, p)``.
    """
    counts = np.asarray(counts_per_prompt, dtype=np.int64)
    alloc = allocate(counts, max(int(cap), 0))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]) if counts.size else counts
    parts = [
        off + np.sort(prompt_order(p, n, seed)[:a]) for p, (n, a, off) in enumerate(zip(counts, alloc, offsets)) if a
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# Quality


def trustworthiness_score(X: np.ndarray, Y: np.ndarray, k: int = 10, metric: str = "euclidean") -> float:
    """``sklearn.manifold.trustworthiness`` of embedding ``Y [n, 2]`` of ``X [n, d]`` with ``k`` neighbours.

    It builds an ``[n, n]`` distance matrix: subsample large sets first (e.g. with :func:`sample_indices`).
    """
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(np.asarray(X, np.float64), np.asarray(Y, np.float64), n_neighbors=k, metric=metric))


def project_heads(points, method, seed, n_jobs=None, progress=None, should_cancel=None):  # placeholder
    raise NotImplementedError
