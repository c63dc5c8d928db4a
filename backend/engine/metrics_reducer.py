"""Streaming reducers for the sink / head-role metrics and massive activations.

They compute exactly the numbers of :mod:`backend.metrics` (the NumPy reference on full patterns; the
definitions and their sources are documented there) while the capture engine hands them one chunk of
query rows at a time: they keep per-row running sums over the chunk's query rows (``[B, H]``, plus the
column sums ``[B, H, S]`` for the attention each key receives), never a pattern. Padded query rows and
padded keys (``view.lengths``, padding on the right) are ignored. Running sums are float64, so the
result does not depend on the chunk size beyond rounding (~1e-7).

Aggregation over prompts: mean of the per-prompt values, each prompt weighted equally (as
:func:`backend.metrics.mean_over_prompts`). Per-prompt values are kept by global prompt index, so a
prompt seen twice is counted once (the last pass wins).
"""

from __future__ import annotations

import numpy as np
import torch

from backend import metrics as ref
from backend import names
from backend.engine.capture import BaseReducer, LayerView, ReusedBuffer
from backend.engine.fused_metrics import layer_stats
from backend.engine.threads import one_thread
from backend.vocab import HEAD_METRICS


_TINY = torch.finfo(torch.float32).tiny


def _rows(view_prompts: list[int], view_lengths: list[int], batch: int, width: int) -> tuple[list[int], list[int]]:
    """Prompt index and real length of each batch row (fallback: row index and full width)."""
    prompts = list(view_prompts) if view_prompts else list(range(batch))
    lengths = list(view_lengths) if view_lengths else [width] * batch
    if len(prompts) != batch or len(lengths) != batch:
        raise ValueError(f"batch of {batch} rows but {len(prompts)} prompt ids and {len(lengths)} lengths")
    return prompts, lengths


def _layer_mean(per_prompt: dict[tuple[int, int], np.ndarray], n_layers: int, shape: tuple[int, ...]) -> np.ndarray:
    """``{(prompt, layer): value}`` -> ``[L, *shape]`` float32 mean over prompts (NaN for unseen layers)."""
    out = np.full((n_layers, *shape), np.nan, dtype=np.float64)
    for layer in range(n_layers):
        vals = [v for (_, l), v in per_prompt.items() if l == layer]
        if vals:
            out[layer] = ref.mean_over_prompts(vals)
    return out.astype(np.float32)


class SinkMetricsReducer(BaseReducer):
    """Per layer x head: ``sink_first``, ``sink_special``, ``entropy``, ``distance``, ``previous_token``
    (mean over prompts), every prompt's first-token alpha (``sinks.alpha_first [P, L, H]``), the sink rate
    (per-prompt rule of the released evaluation, :func:`backend.metrics.sink_rate`), and every prompt's
    ``received`` (Gu et al. alpha) per layer.

    ``causal`` selects the alpha denominator (queries ``t >= k`` for decoders, all queries for encoders);
    the runner knows it from the model config. ``eps`` is the first-token sink threshold of the stored
    ``metrics.sink_rate`` (the app recomputes the rate at other thresholds from ``sinks.alpha_first``).
    """

    fused = True  # also fed by log-sum-exp statistics instead of patterns (backend.engine.fused_metrics)

    def __init__(self, n_layers: int, n_heads: int, causal: bool, eps: float = ref.SINK_EPS) -> None:
        self.n_layers, self.n_heads, self.causal, self.eps = n_layers, n_heads, causal, eps
        self._values: dict[str, dict[tuple[int, int], np.ndarray]] = {m: {} for m in HEAD_METRICS}
        self._received: dict[tuple[int, int], np.ndarray] = {}  # (prompt, layer) -> [H, T_p] float32
        self._acc: dict[str, torch.Tensor] = {}
        self._scratch = ReusedBuffer()  # one temporary of the chunk sums, for every chunk and layer

    # --- engine hooks -----------------------------------------------------------------------------

    def begin_layer(self, view: LayerView) -> None:
        b, h, t, _ = view.query.shape
        s = view.key.shape[2]
        if not 0 <= view.layer < self.n_layers or h != self.n_heads:
            raise ValueError(
                f"layer {view.layer} with {h} heads does not fit a reducer for {self.n_layers} x {self.n_heads}"
            )
        if t != s:
            raise ValueError(f"sink metrics need self-attention without a cache (T={t}, S={s})")
        dev, f64 = view.query.device, torch.float64
        self._acc = {
            "received": torch.zeros(b, h, s, dtype=f64, device=dev),  # column sums over seeing queries
            "entropy": torch.zeros(b, h, dtype=f64, device=dev),  # sums over real query rows
            "distance": torch.zeros(b, h, dtype=f64, device=dev),
            "previous_token": torch.zeros(b, h, dtype=f64, device=dev),
        }

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        with one_thread():  # small memory-bound ops: no fork/join per op (backend.engine.threads)
            self._chunk_sums(view, q0, pattern)

    def _chunk_sums(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        """Each row's sums over its own real query rows and keys only (``p[b, :, :rows, :n]``): the padding of a
        batch is often most of its pattern (32 MiniLM prompts in batches of 8: 37 % of the area is real). Each
        sum is one call writing into this chunk's float32 sums (``out=``), added to the float64 accumulators once
        per chunk: few calls per row (the rows are small, the calls' overhead is a large part of their cost)."""
        b, h, tq, s = pattern.shape  # [B, H, tq, S]
        dev = pattern.device
        _, lengths = _rows(view.prompts, view.lengths, b, s)
        q = torch.arange(q0, q0 + tq, device=dev)  # [tq] query positions
        k = torch.arange(s, device=dev)  # [S] key positions
        pattern = pattern.float()  # [B, H, tq, S]; never written
        dist = (q[:, None] - k[None, :]).abs().float()  # [tq, S] |t - j|
        seen = (k[None, :] <= q[:, None]).float() if self.causal else None  # [tq, S] alpha's queries t >= k
        buf = self._scratch.get((h * tq * s,), torch.float32, dev)  # reused by the entropy and distance of every row
        sums = torch.zeros(4, b, h, dtype=torch.float32, device=dev)  # entropy, distance, previous token, spare
        received = torch.zeros(b, h, s, dtype=torch.float32, device=dev)
        # distance as p[i, :, :rows, :] (viewed [H, rows * S]) times |t - j| (viewed [rows * S]): one call, no
        # temporary. Keys past a row's length add nothing: the engine's mask gives them exactly zero weight
        whole_rows = pattern.is_contiguous() and dev.type == "cpu"
        for i, n in enumerate(lengths):
            rows = min(tq, n - q0)  # this chunk's real query rows of batch row i
            if rows <= 0:
                continue
            p = pattern[i, :, :rows, :n]  # [H, rows, n]
            tmp = buf[: h * rows * n].view(h, rows, n)
            # column sums in float32 within the chunk, float64 across chunks: a float64 sum over the query dim is
            # ~14x slower on CPU (benchmarks/bench_sinks_long.py); the difference is ~1e-7
            if seen is not None:  # causal: alpha counts only the queries t >= k, as the reference (whatever the mask)
                torch.sum(torch.mul(p, seen[:rows, :n], out=tmp), dim=1, out=received[i, :, :n])
            else:
                torch.sum(p, dim=1, out=received[i, :, :n])
            # entropy: p * log(max(p, tiny)) equals xlogy(p, p) (0 for p = 0) without its NaN/zero branches, which
            # made xlogy ~3x slower on the CPU
            torch.clamp(p, min=_TINY, out=tmp).log_().mul_(p)
            torch.sum(tmp, dim=(1, 2), out=sums[0, i])
            if whole_rows:  # one matrix-vector product over the rows' full width (zero weight on padded keys)
                torch.mv(pattern[i, :, :rows].reshape(h, rows * s), dist[:rows].reshape(-1), out=sums[1, i])
            else:
                torch.sum(torch.mul(p, dist[:rows, :n], out=tmp), dim=(1, 2), out=sums[1, i])
            # A[t, t-1] for this chunk's queries t = q0 + j >= 1: the diagonal at offset q0 - 1 of [rows, n]
            torch.sum(torch.diagonal(p, offset=q0 - 1, dim1=-2, dim2=-1), dim=-1, out=sums[2, i])  # [H]
        acc, sums = self._acc, sums.double()
        acc["received"] += received.double()
        acc["entropy"] -= sums[0]
        acc["distance"] += sums[1]
        acc["previous_token"] += sums[2]

    def lse_layer(self, view: LayerView, lse: torch.Tensor, mask: torch.Tensor | None, chunk: int) -> None:
        """The same sums as :meth:`chunk`, from the scores and their log-sum-exp (no pattern)."""
        _, lengths = _rows(view.prompts, view.lengths, view.key.shape[0], view.key.shape[2])
        acc = layer_stats(view.query, view.key, lse, mask, lengths, view.scaling, self.causal, chunk)
        for name, value in acc.items():
            self._acc[name] += value

    def end_layer(self, view: LayerView) -> None:
        """The layer's values of every batch row at once (per-row numpy calls were most of this step's cost),
        then kept per prompt."""
        acc = {name: t.cpu().numpy() for name, t in self._acc.items()}
        self._acc = {}
        b, _, s = acc["received"].shape
        prompts, lengths = _rows(view.prompts, view.lengths, b, s)
        n = np.asarray(lengths, dtype=np.int64)[:, None]  # [B, 1]
        real = np.arange(s)[None, :] < n  # [B, S]
        # alpha's denominator: the queries that see key k (t >= k when causal); 1 on padding, never read
        denom = np.where(real, n - np.arange(s)[None, :] if self.causal else n, 1)
        alpha = acc["received"] / denom[:, None, :]  # [B, H, S]
        n_real = np.maximum(n, 1)
        vals = {
            "sink_first": alpha[:, :, 0],
            "entropy": acc["entropy"] / n_real,
            "distance": acc["distance"] / n_real,
            "previous_token": np.where(n > 1, acc["previous_token"] / np.maximum(n - 1, 1), 0.0),
        }
        if view.special is not None:
            sp = view.special.detach().bool().cpu().numpy()[:, :s] & real  # [B, S]
            count = sp.sum(axis=1)[:, None]
            vals["sink_special"] = np.where(count > 0, np.einsum("bhs,bs->bh", alpha, sp.astype(np.float64))
                                            / np.maximum(count, 1), 0.0)
        else:
            vals["sink_special"] = np.zeros(alpha.shape[:2])
        for row, (p, k) in enumerate(zip(prompts, lengths)):
            if k < 1:
                continue
            self._received[(p, view.layer)] = alpha[row, :, :k].astype(np.float32)  # [H, T_p]
            for name, v in vals.items():
                self._values[name][(p, view.layer)] = v[row]

    # --- results ----------------------------------------------------------------------------------

    def results(self) -> dict[str, np.ndarray]:
        """``metrics.{name}`` [L, H] float32 (NaN rows: layer never seen), ``metrics.sink_rate`` [] float32,
        ``sinks.alpha_first`` [P, L, H] float32 (prompts in index order) and
        ``prompt.{p}.blocks.{l}.attn.received`` [H, T_p] float32."""
        out: dict[str, np.ndarray] = {}
        for name in HEAD_METRICS:
            out[names.metric(name)] = _layer_mean(self._values[name], self.n_layers, (self.n_heads,))
        first = self._values["sink_first"]
        prompts = sorted({p for p, _ in first})
        row = {p: i for i, p in enumerate(prompts)}
        alpha = np.full((len(prompts), self.n_layers, self.n_heads), np.nan, dtype=np.float32)
        for (p, layer), v in first.items():
            alpha[row[p], layer] = v
        if prompts:
            out[names.SINK_ALPHA_FIRST] = alpha
            rate = ref.sink_rate(alpha, self.eps, "per_prompt")
        else:
            rate = float("nan")
        out[names.metric("sink_rate")] = np.asarray(rate, dtype=np.float32)
        for (p, layer), alpha in sorted(self._received.items()):
            out[names.attn_received(p, layer)] = alpha
        return out


def _median_in_place(flat: np.ndarray) -> float:
    """numpy's median of ``flat`` (the mean of the two middle values when their number is even), reordering it:
    one selection; after partitioning at the upper middle, the lower middle is the largest entry left of it (a
    linear max instead of a second selection)."""
    m = flat.size
    hi = m // 2
    flat.partition(hi)
    c = flat[hi]
    return float((flat[:hi].max() + c) / np.float32(2)) if m % 2 == 0 else float(c)


class MassiveActivationReducer(BaseReducer):
    """Massive activations (Sun et al., 2024) from the residual stream after each block.

    Per prompt and layer: ``resid.absmax [T_p]`` float32 (largest |h| per token), ``resid.absmax_dim
    [T_p]`` int64 (its feature); per layer ``metrics.massive_ratio [L]`` float32: ``max_t top / median|h|``
    (median over all of the prompt's ``T_p x D`` entries in that layer), mean over prompts.
    """

    fused = True  # reads hidden states only

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self._top: dict[tuple[int, int], np.ndarray] = {}
        self._dim: dict[tuple[int, int], np.ndarray] = {}
        self._ratio: dict[tuple[int, int], np.ndarray] = {}

    SORT_MAX_ELEMENTS = 1 << 22
    """On GPUs, batches up to this many ``B x T x D`` entries take every prompt's median in one sort; larger ones
    (long prompts) one ``kthvalue`` per prompt (a sort of millions of entries costs more than a selection). On the
    CPU, numpy's ``partition`` per prompt (linear time, no thread-pool round trips)."""

    def hidden(self, layer: int, hidden: torch.Tensor, prompts: list[int], lengths: list[int]) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} outside 0..{self.n_layers - 1}")
        b, t, d = hidden.shape  # [B, T, D]
        prompts, lengths = _rows(prompts, lengths, b, t)
        if hidden.device.type == "cpu":
            self._hidden_numpy(layer, hidden.detach().float().numpy(), prompts, lengths)
            return
        with one_thread():  # small ops (backend.engine.threads)
            h = hidden.detach().float().abs()  # [B, T, D]
            top, dim = h.max(dim=-1)  # [B, T]; first index on ties, like np.argmax
            top_np, dim_np = top.cpu().numpy(), dim.cpu().numpy()
            meds = self._medians(h, lengths)
        for row, (p, n) in enumerate(zip(prompts, lengths)):
            if n >= 1:
                self._keep(p, layer, top_np[row, :n], dim_np[row, :n], float(meds[row]))

    def _hidden_numpy(self, layer: int, hn: np.ndarray, prompts: list[int], lengths: list[int]) -> None:
        """The CPU path, in numpy (its argmax is ~4x faster than torch's max with indices here, and its selection
        runs without torch's thread pool): per row, ``|h|`` of the real tokens only into a scratch buffer, each
        token's largest entry, then the median by one selection in place (no copy of the row)."""
        d = hn.shape[-1]
        scratch = np.empty(max(lengths, default=0) * d, dtype=np.float32)
        for row, (p, n) in enumerate(zip(prompts, lengths)):
            if n < 1:
                continue
            a = np.abs(hn[row, :n], out=scratch[: n * d].reshape(n, d))  # [n, D]
            dim = a.argmax(axis=-1)  # first index on ties (and on NaN), as torch.max
            top = a[np.arange(n), dim]
            self._keep(p, layer, top, dim, _median_in_place(scratch[: n * d]))

    def _keep(self, p: int, layer: int, top: np.ndarray, dim: np.ndarray, med: float) -> None:
        ratio = top.astype(np.float64) / med if med > 0 else np.full(len(top), np.inf)
        self._top[(p, layer)] = top.astype(np.float32)
        self._dim[(p, layer)] = dim.astype(np.int64)
        self._ratio[(p, layer)] = np.asarray(ratio.max())

    def _medians(self, h: torch.Tensor, lengths: list[int], method: str = "auto") -> list[float]:
        """Median of each row's real ``T_p x D`` entries of ``|h|``, as numpy defines it (the mean of the two
        middle values when their number is even). ``method``: ``numpy``, ``sort``, ``kthvalue`` or ``auto``."""
        b, t, d = h.shape
        if method == "auto":
            method = ("numpy" if h.device.type == "cpu"
                      else "sort" if b > 1 and h.numel() <= self.SORT_MAX_ELEMENTS else "kthvalue")
        if method == "numpy":  # numpy's linear-time selection, row by row, without torch's thread pool
            hn = h.numpy()
            return [_median_in_place(hn[row, :n].reshape(-1).copy()) if n >= 1 else float("nan")
                    for row, n in enumerate(lengths)]
        if method == "sort":  # one sort for the batch; padding sorts last
            n = torch.tensor(lengths, device=h.device)
            pad = torch.arange(t, device=h.device)[None, :] >= n[:, None]  # [B, T]
            srt = h.masked_fill(pad[..., None], float("inf")).reshape(b, t * d).sort(dim=-1).values
            m = (n * d).clamp(min=1)
            lo, hi = ((m + 1) // 2 - 1)[:, None], (m // 2)[:, None]
            a, c = srt.gather(1, lo)[:, 0], srt.gather(1, hi)[:, 0]
            return torch.where(m % 2 == 0, (a + c) / 2, a).cpu().tolist()
        out = []
        for row, n in enumerate(lengths):
            if n < 1:
                out.append(float("nan"))
                continue
            flat = h[row, :n].flatten()
            m = flat.numel()
            med = flat.kthvalue((m + 1) // 2).values
            if m % 2 == 0:
                med = (med + flat.kthvalue(m // 2 + 1).values) / 2
            out.append(float(med))
        return out

    def results(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {names.metric("massive_ratio"): _layer_mean(self._ratio, self.n_layers, ())}
        for (p, layer) in sorted(self._top):
            out[names.resid_absmax(p, layer)] = self._top[(p, layer)]
            out[names.resid_absmax_dim(p, layer)] = self._dim[(p, layer)]
        return out
