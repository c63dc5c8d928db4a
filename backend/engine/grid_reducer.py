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
from backend.engine.capture import BaseReducer, LayerView
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


class _Row:
    """Running sums of one batch row in the current layer."""

    def __init__(self, prompt: int, n: int, n_heads: int, device: torch.device, max_bins: int) -> None:
        self.prompt, self.n = prompt, n
        self.bins = torch.from_numpy(bin_matrix(n, max_bins)).to(device)  # [n, nb]
        self.counts = self.bins.sum(dim=0).double().cpu().numpy()  # positions per run
        nb = self.bins.shape[1]
        self.pooled = np.zeros((n_heads, nb, nb), dtype=np.float64)  # sums over query and key runs
        self.received = np.zeros((n_heads, n), dtype=np.float64)  # column sums over queries


class GridReducer(BaseReducer):
    """Thumbnails and top keys of every head of every prompt, emitted per prompt after its last layer.

    ``fused``: in a fused session (CUDA, :mod:`backend.engine.fused_metrics`) it rebuilds each chunk of the pattern
    from the scores and the layer's log-sum-exp instead of making the layer materialise it (``causal``: the
    mask to apply when the session hands none, i.e. a plain causal one)."""

    fused = True

    def __init__(self, emit: Emit, n_layers: int, n_heads: int, max_bins: int = MAX_BINS,
                 causal: bool = False) -> None:
        self.emit, self.n_layers, self.n_heads, self.max_bins = emit, n_layers, n_heads, max_bins
        self.causal = causal
        self._rows: list[_Row] = []
        self._done: dict[int, dict[str, list]] = {}  # prompt -> per-layer thumbs / top keys / weights

    def begin_layer(self, view: LayerView) -> None:
        device = view.query.device
        h = view.query.shape[1]
        self._rows = [_Row(p, n, h, device, self.max_bins) for p, n in zip(view.prompts, view.lengths)]

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        tq = pattern.shape[2]
        for b, row in enumerate(self._rows):
            if q0 >= row.n:
                continue
            q1 = min(row.n, q0 + tq)
            x = pattern[b, :, : q1 - q0, : row.n].float()  # [H, r, n]
            keyed = torch.matmul(x, row.bins)  # [H, r, nb]: keys summed per run
            pooled = torch.matmul(row.bins[q0:q1].T, keyed)  # [H, nb, nb]: queries summed per run
            row.pooled += pooled.double().cpu().numpy()
            row.received += x.sum(dim=1).double().cpu().numpy()

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
        for row in self._rows:
            thumbs = row.pooled / row.counts[None, :, None]
            mean = row.received / row.n
            top = np.argmax(mean, axis=1)
            d = self._done.setdefault(row.prompt, {"thumbs": [], "top": [], "weight": []})
            d["thumbs"].append(thumbs.astype(np.float16))
            d["top"].append(top.astype(np.int32))
            d["weight"].append(mean[np.arange(mean.shape[0]), top].astype(np.float32))
            if view.layer == self.n_layers - 1 and len(d["thumbs"]) == self.n_layers:
                self.emit(names.attn_thumbs(row.prompt), np.stack(d["thumbs"]))
                self.emit(names.attn_top_key(row.prompt), np.stack(d["top"]))
                self.emit(names.attn_top_weight(row.prompt), np.stack(d["weight"]))
                del self._done[row.prompt]
        self._rows = []
