"""Per-head metrics without materialised patterns: attention with its log-sum-exp, then O(T)-memory statistics.

The capture path builds each chunk of the float32 pattern, hands it to the reducers and multiplies it by
the values. Here the layer's output comes from ``scaled_dot_product_attention`` (on CUDA the flash kernel,
which also returns each query row's log-sum-exp ``lse``); a second pass over chunks of query rows rebuilds
only the scores ``s = q.k * scale (+ mask)`` and reduces ``p = exp(s - lse)`` at once into the same
accumulators :class:`backend.engine.metrics_reducer.SinkMetricsReducer` keeps (column sums for the
attention each key receives, row sums for entropy ``sum_s p (lse - s)``, distance and previous-token).
No pattern is stored or handed on; the extra memory is ``[B, H, S]`` per layer plus one chunk of scores.

:func:`chunk_stats` is plain torch: it is the CPU path (the exactness tests compare it with the reference
reducer) and, compiled with ``torch.compile`` on CUDA, the fused kernel (one matrix product and one fused
reduction per chunk). Conditions for the fused path: no gradient, no dropout, no softcap, no score edits.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_BROKEN: set[str] = set()  # fast paths that failed once in this process


def chunk_stats(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, mask: torch.Tensor | None, real: torch.Tensor,
    q0: int, scale: float, causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Statistics of query rows ``q0 .. q0+c`` of one layer.

    ``q [B, H, c, d]``, ``k [B, H, S, d]`` (GQA-repeated), ``lse [B, H, c]`` float32, ``mask`` the layer's
    additive or boolean mask rows ``[B, 1, c, S]`` (or None), ``real [B]`` real lengths (padding on the
    right). Returns float32 ``received [B, H, S]`` (column sums over real query rows, for causal models
    only rows ``t >= s``), and ``entropy``, ``distance``, ``previous_token`` ``[B, H]`` sums over real rows.
    """
    c, s_len = q.shape[2], k.shape[2]
    dev = q.device
    s = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [B, H, c, S]
    if mask is not None:
        if mask.dtype == torch.bool:
            s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
        else:
            s = s + mask.float()
    qpos = torch.arange(c, device=dev) + q0  # q0 may be a 0-d tensor (one compiled graph for every chunk)
    kpos = torch.arange(s_len, device=dev)
    n = real.view(-1, 1, 1, 1)
    ok = (qpos[:, None] < n) & (kpos[None, :] < n)  # [B, 1, c, S]
    if causal:
        ok = ok & (kpos[None, :] <= qpos[:, None])
    p = torch.where(ok, torch.exp(s - lse[..., None]), 0.0)  # [B, H, c, S]
    received = p.sum(dim=2)
    entropy = torch.where(ok, p * (lse[..., None] - s), 0.0).sum(dim=(-1, -2))
    dist = (qpos[:, None] - kpos[None, :]).abs().float()
    distance = (p * dist).sum(dim=(-1, -2))
    prev = (kpos[None, :] == qpos[:, None] - 1).float()  # [c, S]
    previous = (p * prev).sum(dim=(-1, -2))
    return received, entropy, distance, previous


_COMPILED: dict[str, Callable] = {}


def _stats_fn(device: torch.device) -> Callable:
    """``chunk_stats`` compiled for CUDA (``ATLAS_FUSED_COMPILE=0``: eager); plain on the CPU."""
    if device.type != "cuda" or os.environ.get("ATLAS_FUSED_COMPILE", "1") == "0":
        return chunk_stats
    fn = _COMPILED.get("cuda")
    if fn is None:
        fn = _COMPILED["cuda"] = torch.compile(chunk_stats, dynamic=False)
    return fn


def _plain_causal(mask: torch.Tensor | None, t: int, s: int) -> bool:
    """True when the layer's mask is exactly causal with every key real (what the flash kernel computes)."""
    if mask is None:
        return True
    m = mask[..., :t, :s]
    allowed = m if m.dtype == torch.bool else (m == 0)
    want = torch.ones(t, s, dtype=torch.bool, device=m.device).tril(s - t)
    return bool((allowed == want).all())


def stats_chunk(b: int, h: int, s: int, budget: int = 1 << 27) -> int:
    """Query rows per statistics chunk: about ``budget`` scores (float32: 512 MiB) at once."""
    return max(16, budget // max(b * h * s, 1))


def attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float, causal: bool,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(out [B, H, T, d], lse [B, H, T] float32, plain)`` of softmax attention with ``mask``; ``plain``:
    the mask was exactly causal over real keys, so statistics may use ``causal`` instead of it.

    CUDA, half precision and a plain causal mask: the flash kernel (its log-sum-exp comes free). Else
    chunks of query rows with the eager arithmetic of the capture engine (float32 softmax), ``lse`` from
    the same scores."""
    t, s = q.shape[2], k.shape[2]
    if q.is_cuda and q.dtype in _FLASH_DTYPES and causal and t == s and not _BROKEN and _plain_causal(mask, t, s):
        try:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False,
                                                                          scale=scale)[:2]
            return out, lse.float(), True
        except RuntimeError as exc:  # a build or device without the flash kernel: the chunked path below
            _BROKEN.add("flash")
            warnings.warn(f"flash attention with log-sum-exp unavailable ({exc}); using chunked attention")
    outs, lses = [], []
    for q0 in range(0, t, chunk):
        q1 = min(t, q0 + chunk)
        sc = torch.matmul(q[:, :, q0:q1], k.transpose(2, 3)) * scale
        if mask is not None:
            mk = mask[:, :, q0:q1, :s] if mask.shape[2] > 1 else mask[..., :s]
            sc = sc.masked_fill(~mk, torch.finfo(sc.dtype).min) if mk.dtype == torch.bool else sc + mk
        lses.append(torch.logsumexp(sc.float(), dim=-1))
        w = F.softmax(sc, dim=-1, dtype=torch.float32).to(q.dtype)
        outs.append(torch.matmul(w, v))
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2), False


def layer_stats(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, mask: torch.Tensor | None, lengths: list[int],
    scale: float, causal: bool, chunk: int,
) -> dict[str, torch.Tensor]:
    """The accumulators of one layer (float64, as the reference reducer keeps them), chunk by chunk."""
    b, h, t, _ = q.shape
    s = k.shape[2]
    real = torch.tensor(lengths if lengths else [t] * b, device=q.device)
    fn = _stats_fn(q.device)
    acc = {"received": torch.zeros(b, h, s, dtype=torch.float64, device=q.device)}
    for name in ("entropy", "distance", "previous_token"):
        acc[name] = torch.zeros(b, h, dtype=torch.float64, device=q.device)
    for q0 in range(0, t, chunk):
        q1 = min(t, q0 + chunk)
        mk = None
        if mask is not None:
            mk = mask[:, :, q0:q1, :s] if mask.shape[2] > 1 else mask[..., :s]
        start = torch.tensor(q0, device=q.device) if fn is not chunk_stats else q0
        args = (q[:, :, q0:q1], k, lse[:, :, q0:q1], mk, real, start, scale, causal)
        try:
            rec, ent, dist, prev = fn(*args)
        except Exception as exc:  # noqa: BLE001  (a compiler failure must not fail the run: eager is exact too)
            if fn is chunk_stats:
                raise
            warnings.warn(f"compiled attention statistics failed ({type(exc).__name__}: {exc}); running eager")
            os.environ["ATLAS_FUSED_COMPILE"] = "0"
            fn = chunk_stats
            rec, ent, dist, prev = fn(*args[:5], q0, *args[6:])
        acc["received"] += rec.double()
        acc["entropy"] += ent.double()
        acc["distance"] += dist.double()
        acc["previous_token"] += prev.double()
    return acc
