"""What the all-heads view needs of a text prompt, kept in the capture pass instead of its full patterns.

Per prompt and layer, each head's thumbnail: the pattern pooled into at most ``MAX_BINS`` runs of consecutive
positions (:func:`backend.figures_heads.position_bins`; queries averaged and keys summed over each run, as
:func:`backend.figures_heads.thumbnails`), and each head's most-attended key at full resolution (the largest
attention received averaged over all queries, as :func:`backend.figures_heads.top_keys`). Stored per prompt as
``prompt.{p}.attn.thumbs [L, H, bins, bins]`` float16 and ``prompt.{p}.attn.top_key`` / ``.top_weight [L, H]``
(:mod:`backend.names`): SmolLM2's 270 heads take 553 kB a prompt at any length, where its full float16 patterns
at 1,024 tokens take 283 MB. Full patterns are recomputed on request (:mod:`backend.engine.pattern_job`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from backend import names
from backend.engine.capture import BaseReducer, LayerView, ReusedBuffer
from backend.engine.threads import one_thread
from backend.figures_heads import MAX_BINS, position_bins

Emit = Callable[[str, np.ndarray], None]


def bin_matrix(n: int, max_bins: int = MAX_BINS) -> np.ndarray:
    """``[n, bins]`` float32 one-hot: position -> its run of :func:`backend.figures_heads.position_bins`."""
    return _bin_matrix(n, max_bins).copy()


@lru_cache(maxsize=256)
def _bin_matrix(n: int, max_bins: int) -> np.ndarray:
    """:func:`bin_matrix`, built once per length (every layer of every prompt asks again); read-only."""
    groups = position_bins(n, max_bins)
    m = np.zeros((n, len(groups)), dtype=np.float32)
    for b, g in enumerate(groups):
        m[g, b] = 1.0
    m.flags.writeable = False
    return m


class _Runs:
    """One length's runs of positions on one device: ``runs [n]`` (each position's run), ``bins [n, nb]``
    (:func:`bin_matrix`) and ``counts [nb]`` float64 (positions per run)."""

    def __init__(self, n: int, max_bins: int, device: torch.device) -> None:
        m = _bin_matrix(n, max_bins)
        counts = m.sum(axis=0, dtype=np.float64)
        self.runs = torch.from_numpy(np.repeat(np.arange(m.shape[1]), counts.astype(np.int64))).to(device)
        self.bins = torch.from_numpy(m.copy()).to(device)
        self.counts = torch.from_numpy(counts).to(device)

    def add(self, pooled: torch.Tensor, q0: int, x: torch.Tensor, segmented: bool | None = None) -> None:
        """``pooled [H, nb, n] +=`` the rows of ``x [H, r, n]`` (positions ``q0 .. q0+r``) summed per run: on the
        CPU (``segmented``) each row added into its run in order, one pass over ``x``; elsewhere the product with
        the one-hot run matrix (``index_add_`` is atomic, and contended, on GPUs)."""
        q1 = q0 + x.shape[1]
        if x.device.type == "cpu" if segmented is None else segmented:
            pooled.index_add_(1, self.runs[q0:q1], x)
        else:
            pooled += torch.matmul(self.bins[q0:q1].T, x)


class _Row:
    """One batch row in the current layer: its prompt, length, runs, and its part ``[H, nb, n]`` of the layer's
    running sums (query runs summed, keys at full resolution)."""

    def __init__(self, prompt: int, n: int, runs: _Runs, pooled: torch.Tensor) -> None:
        self.prompt, self.n, self.runs, self.pooled = prompt, n, runs, pooled


class GridReducer(BaseReducer):
    """Thumbnails and top keys of every head of every prompt, emitted per prompt after its last layer.

    Per batch row and chunk, one segmented sum of the chunk's real rows into their query runs (``index_add_`` on
    the CPU, one pass over the pattern; a matrix product with the run matrix elsewhere) under one intra-op thread
    (:mod:`backend.engine.threads`), into the layer's sums of the whole batch ``[B, H, nb, S]``; at the layer's end,
    for the whole batch at once, the keys are summed per run (one batched product with every row's run matrix,
    zero on padding) and the column sums (the attention each key receives, for the top keys) are the sums over the
    query runs: two calls per layer instead of two per row, whose overhead was most of their cost.

    ``fused``: in a fused session (CUDA, :mod:`backend.engine.fused_metrics`) it rebuilds each chunk of the pattern
    from the scores and the layer's log-sum-exp instead of making the layer materialise it (``causal``: the
    mask to apply when the session hands none, i.e. a plain causal one)."""

    fused = True

    def __init__(self, emit: Emit, n_layers: int, n_heads: int, max_bins: int = MAX_BINS,
                 causal: bool = False) -> None:
        self.emit, self.n_layers, self.n_heads, self.max_bins = emit, n_layers, n_heads, max_bins
        self.causal = causal
        self._rows: list[_Row] = []
        self._pooled: torch.Tensor | None = None  # [B, H, nb, S]: the current layer's sums of the batch
        self._memory = ReusedBuffer()  # under _pooled, for every layer (see begin_layer)
        self._bins: tuple[tuple, torch.Tensor] | None = None  # the batch's run matrices [B, S, nb], per lengths
        self._runs: dict[tuple[int, torch.device], _Runs] = {}  # per length and device, for the whole run
        self._done: dict[int, dict[str, list]] = {}  # prompt -> per-layer thumbs / top keys / weights

    def begin_layer(self, view: LayerView) -> None:
        device = view.query.device
        b, h, _, _ = view.query.shape
        s = view.key.shape[2]
        runs = [self._runs_of(n, device) for n in view.lengths]
        nb = max((r.bins.shape[1] for r in runs), default=0)
        # zeroed in the previous layers' memory: a fresh [B, H, nb, S] per layer is fresh memory from the system
        # once the allocator has returned it (page faults: zeroing it took ~0.5 ms a layer on 2 cores, 3x the sums)
        self._pooled = self._memory.get((b, h, nb, s), torch.float32, device).zero_()
        self._rows = [_Row(p, n, r, self._pooled[i, :, : r.bins.shape[1], :n])
                      for i, (p, n, r) in enumerate(zip(view.prompts, view.lengths, runs))]

    def _runs_of(self, n: int, device: torch.device) -> _Runs:
        key = (n, device)
        if key not in self._runs:
            self._runs[key] = _Runs(n, self.max_bins, device)
        return self._runs[key]

    def _batch_bins(self, s: int, nb: int, device: torch.device) -> torch.Tensor:
        """``[B, S, nb]``: each row's run matrix, zero on padded keys and unused runs (built once per batch)."""
        key = (tuple(row.n for row in self._rows), s, nb, device)
        if self._bins is None or self._bins[0] != key:
            bins = torch.zeros(len(self._rows), s, nb, device=device)
            for i, row in enumerate(self._rows):
                bins[i, : row.n, : row.runs.bins.shape[1]] = row.runs.bins
            self._bins = key, bins
        return self._bins[1]

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        tq = pattern.shape[2]
        with one_thread():  # small ops per row (backend.engine.threads)
            for b, row in enumerate(self._rows):
                if q0 >= row.n:
                    continue
                q1 = min(row.n, q0 + tq)
                row.runs.add(row.pooled, q0, pattern[b, :, : q1 - q0, : row.n].float())  # [H, r, n]

    def lse_layer(self, view: LayerView, lse: torch.Tensor, mask: torch.Tensor | None, chunk: int) -> None:
        """The pattern's rows ``q0 .. q0+chunk`` as ``exp(scores - lse)`` (float32), fed to :meth:`chunk`."""
        q, k = view.query, view.key
        t, s_len = q.shape[2], k.shape[2]
        for q0 in range(0, t, chunk):
            q1 = min(t, q0 + chunk)
            s = torch.matmul(q[:, :, q0:q1], k.transpose(-1, -2)).float() * view.scaling  # [B, H, c, S]
            if mask is not None:
                m = mask[:, :, q0:q1, :s_len] if mask.shape[2] > 1 else mask[..., :s_len]
                s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
            elif self.causal:
                future = torch.arange(s_len, device=s.device)[None, :] > torch.arange(q0, q1, device=s.device)[:, None]
                s = s.masked_fill(future, float("-inf"))
            self.chunk(view, q0, torch.exp(s - lse[:, :, q0:q1, None].float()))

    def end_layer(self, view: LayerView) -> None:
        pooled = self._pooled  # [B, H, nb, S]
        with one_thread():
            bins = self._batch_bins(pooled.shape[3], pooled.shape[2], pooled.device)  # [B, S, nb]
            b, h, nb, s = pooled.shape
            keys = torch.bmm(pooled.view(b, h * nb, s), bins).view(b, h, nb, nb)  # keys summed per run
            # [B, H, S] column sums over at most nb runs: in float32 (a float64 sum over this strided dim is ~5x
            # slower), within ~1e-7 relative of a float64 sum; the top keys' means are taken in float64
            received = pooled.sum(dim=2).double()
            for i, row in enumerate(self._rows):
                d = self._done.setdefault(row.prompt, {"pooled": [], "received": []})
                nb = row.runs.bins.shape[1]
                d["pooled"].append(keys[i, :, :nb, :nb])
                d["received"].append(received[i, :, : row.n])
                if view.layer == self.n_layers - 1 and len(d["pooled"]) == self.n_layers:
                    self._emit(row, d)
                    del self._done[row.prompt]
        self._rows, self._pooled = [], None

    def _emit(self, row: _Row, d: dict[str, list]) -> None:
        """The prompt's thumbnails (queries averaged per run) and top keys of every layer at once."""
        thumbs = torch.stack(d["pooled"]).double() / row.runs.counts[:, None]  # [L, H, nb, nb]
        mean = torch.stack(d["received"]) / row.n  # [L, H, n]: attention received, averaged over queries
        weight, top = mean.max(dim=-1)  # first index on ties, as np.argmax
        self.emit(names.attn_thumbs(row.prompt), thumbs.to(torch.float16).cpu().numpy())
        self.emit(names.attn_top_key(row.prompt), top.to(torch.int32).cpu().numpy())
        self.emit(names.attn_top_weight(row.prompt), weight.float().cpu().numpy())
