"""Per-head query/key samples for the joint query-key maps (AttentionViz), and the maps themselves.

:class:`QKSampleReducer` keeps, for every (layer, head), the query and key vectors of a sample of real
(unpadded) tokens, with ``sqrt(scaling)`` folded into both so that ``q_i . k_j`` equals the attention logit.
:func:`compute_head_maps` turns those samples into named arrays (``names.embedding`` / ``names.embedding_meta``).

Sampling choice: the number of prompts is not known while streaming, so the reducer keeps a *token* sample that
is trimmed as prompts arrive. Every kept token contributes its query and its key (the same token set), so at
most ``max_points_per_head // 2`` tokens are kept. The token budget is split evenly across prompts
(:func:`backend.embedding_projection.allocate`, water filling), and prompt ``p`` keeps the first ``a_p`` positions of a
seeded order that depends only on ``(seed, p)`` (:func:`backend.embedding_projection.prompt_order`). Adding a prompt never
raises another prompt's share, so trimming while streaming is exact: the final sample is the one
``backend.embedding_projection.sample_indices(lengths, max_points_per_head // 2, seed)`` picks offline, the same tokens for
every head and layer, independent of batch size and order. Memory stays below about twice the budget per head
(trimming happens when a layer's store exceeds ``2 x`` the token budget).

Logits: the engine computes ``scaling * q . k`` (then the mask, and for soft-capped models ``cap * tanh(logit /
cap)``); the stored vectors are ``sqrt(scaling) * q`` and ``sqrt(scaling) * k``, so their dot product is the logit
before any soft cap. Keys are those the engine hands over: after RoPE, repeated to query heads under GQA.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from typing import Callable, Sequence

import numpy as np
import torch

from backend import names
from backend.engine.capture import BaseReducer, LayerView
from backend.embedding_projection import Cancelled, allocate, normalise_qk, project_heads, prompt_order

# (layer, head) -> (q [n, d], k [n, d], q_meta [n, 2] (prompt, position), k_meta [n, 2]); float32 / int32
Samples = dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


class QKSampleReducer(BaseReducer):
    """Keeps each head's query and key vectors of an evenly spread token sample (see module docstring)."""

    def __init__(self, n_layers: int, n_heads: int, max_points_per_head: int = 20_000, seed: int = 0) -> None:
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.max_points_per_head = int(max_points_per_head)
        self.token_budget = self.max_points_per_head // 2
        self.seed = int(seed)
        self._lengths: dict[int, int] = {}  # prompt -> real length (first time seen)
        # layer -> prompt -> (positions [a] in priority order, q [H, a, d], k [H, a, d]) float32
        self._store: dict[int, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def _allocation(self) -> dict[int, int]:
        prompts = sorted(self._lengths)
        alloc = allocate([self._lengths[p] for p in prompts], self.token_budget)
        return dict(zip(prompts, alloc.tolist()))

    def begin_layer(self, view: LayerView) -> None:
        for p, n in zip(view.prompts, view.lengths):
            self._lengths.setdefault(int(p), int(n))
        alloc = self._allocation()
        store = self._store.setdefault(view.layer, {})
        if sum(len(pos) for pos, _, _ in store.values()) > 2 * max(self.token_budget, 1):
            for p, (pos, q, k) in list(store.items()):
                a = alloc[p]
                if a < len(pos):
                    store[p] = (pos[:a].copy(), q[:, :a].copy(), k[:, :a].copy())  # copies free the rest
        root = float(view.scaling) ** 0.5
        for b, p in enumerate(view.prompts):
            p = int(p)
            a = alloc[p]
            if p in store or a == 0:
                continue  # a prompt seen twice (e.g. a second pass) keeps its first capture
            pos = prompt_order(p, self._lengths[p], self.seed)[:a]
            idx = torch.as_tensor(pos, dtype=torch.long, device=view.query.device)
            # [H, a, d]: real positions only (padding is on the right, beyond lengths[b])
            q = (view.query[b].index_select(1, idx).float() * root).cpu().numpy()
            k = (view.key[b].index_select(1, idx).float() * root).cpu().numpy()
            store[p] = (pos, q, k)

    def results(self) -> Samples:
        """``(layer, head) -> (q [n, d], k [n, d], q_meta [n, 2], k_meta [n, 2])``, prompts in increasing
        order, positions increasing within a prompt; the key sample is the query sample's tokens."""
        alloc = self._allocation()
        out: Samples = {}
        for layer in sorted(self._store):
            store = self._store[layer]
            qs, ks, metas = [], [], []
            for p in sorted(store):
                pos, q, k = store[p]
                a = alloc[p]
                order = np.argsort(pos[:a], kind="stable")
                qs.append(q[:, :a][:, order])
                ks.append(k[:, :a][:, order])
                metas.append(np.stack([np.full(a, p), pos[:a][order]], axis=1))
            if not qs:
                continue
            q_all = np.concatenate(qs, axis=1)  # [H, n, d]
            k_all = np.concatenate(ks, axis=1)
            meta = np.concatenate(metas, axis=0).astype(np.int32)  # [n, 2]
            for h in range(q_all.shape[0]):
                out[(layer, h)] = (
                    np.ascontiguousarray(q_all[h], dtype=np.float32),
                    np.ascontiguousarray(k_all[h], dtype=np.float32),
                    meta,
                    meta.copy(),
                )
        return out


class _JointPoints(SequenceABC):
    """Each head's joint set ``[n_q + n_k, d]`` (queries first), built when asked: only the heads being
    projected are in memory twice, not all of them."""

    def __init__(self, samples: Samples, heads: list[tuple[int, int]], normalise: bool) -> None:
        self.samples, self.heads, self.normalise = samples, heads, normalise

    def __len__(self) -> int:
        return len(self.heads)

    def __getitem__(self, i):  # type: ignore[override]
        q, k = self.samples[self.heads[i]][:2]
        if self.normalise:
            q, k = normalise_qk(q, k)
        return np.concatenate([q, k]).astype(np.float32, copy=False)


def compute_head_maps(
    samples: Samples,
    methods: Sequence[str],
    seed: int = 0,
    normalise: bool = True,
    raw: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    n_jobs: int | None = None,
    normalised: bool = True,
) -> dict[str, np.ndarray]:
    """Joint query-key maps of every head in ``samples``, as named arrays.

    Per head ``(l, h)``: ``names.embedding(l, h, method)`` ``[n_q + n_k, 2]`` float32 (queries first, then keys)
    for each method, and ``names.embedding_meta(l, h)`` ``[n_q + n_k, 3]`` int32 (kind 0=query 1=key, prompt,
    position). ``normalise``: AttentionViz translation + scaling (:func:`backend.embedding_projection.normalise_qk`).
    ``raw=True`` adds the un-normalised map under method ``f"{method}_raw"``; ``normalised=False`` leaves out the
    ``method`` maps (with ``raw``: the raw maps alone, as a run extended with them computes them). ``progress(done, total)`` counts
    (head, variant) projections; ``should_cancel()`` is checked between heads and raises
    ``backend.engine.cancel.Cancelled``. Each variant runs :func:`backend.embedding_projection.project_heads` over all
    heads (``n_jobs`` threads); the numba kernels must be warm (``embedding_projection.warm_up()``) or the first head
    pays the compile.
    """
    heads = sorted(samples)
    out: dict[str, np.ndarray] = {}
    variants: list[tuple[str, bool]] = [(m, normalise) for m in methods] if normalised else []
    if raw:
        variants += [(f"{m}_raw", False) for m in methods]
    total = len(heads) * len(variants)
    done = 0
    for l, h in heads:
        q, k, qm, km = samples[(l, h)]
        kind = np.concatenate([np.zeros(len(q), np.int32), np.ones(len(k), np.int32)])[:, None]
        out[names.embedding_meta(l, h)] = np.concatenate([kind, np.concatenate([qm, km]).astype(np.int32)], axis=1)
    for name, norm in variants:
        method = name.removesuffix("_raw")
        points = _JointPoints(samples, heads, norm)

        def tick(i: int, done0: int = done) -> None:
            if progress is not None:
                progress(done0 + i, total)

        try:
            maps = project_heads(points, method, seed, n_jobs=n_jobs, progress=tick, should_cancel=should_cancel)
        except Cancelled as exc:
            from backend.engine.cancel import Cancelled as RunCancelled

            raise RunCancelled(str(exc)) from exc
        for (l, h), y in zip(heads, maps):
            out[names.embedding(l, h, name)] = y
        done += len(heads)
    return out
