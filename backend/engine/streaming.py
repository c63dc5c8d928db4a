"""StreamingLLM experiment (Xiao et al., ICLR 2024; docs/REFERENCES.md section 3), a post-capture stage.

On the run's first prompt ``x_0 .. x_{T-1}`` (meant to be a long text) we compute the NLL of every next
token ``x_{t+1}`` (nats, ``[T-1]``) when the query at position ``t`` may see:

    (a) ``full``    keys ``0 .. t`` (plain causal attention, the model's own mask);
    (b) ``window``  the last ``W`` keys, ``max(0, t-W+1) .. t`` (itself included);
    (c) ``sink``    the window plus the first ``k`` keys ``0 .. k-1`` (attention sinks, ``k = 4``).

How. One forward pass per setting through the capture engine with a custom 4-D boolean mask
``[1, 1, T, T]`` (transformers hands a 4-D mask to the attention function as is). Row ``t`` of the mask is
exactly the set of tokens the paper's rolling KV cache holds when token ``t`` is processed (``k`` sink
tokens + the ``W-1`` most recent ones + the current token: its ``StartRecentKVCache`` with
``start_size=k, recent_size=W-1``). Every layer uses the same mask, so the keys/values of token ``j`` in
layer ``l`` come from ``j``'s own masked context: what the cache stored when ``j`` was processed. One
pass therefore equals the paper's token-by-token decoding with eviction (``tests/unit/test_streaming.py``
checks this against a literal token-by-token loop with a pruned KV cache), at the cost of one pass.

Positions. StreamingLLM gives tokens their slot *in the cache* (sink ``i`` at ``i``, the current token
at ``min(t, k+W-1)``, the window right before it) and re-rotates cached RoPE keys at every step. A window
key keeps its distance ``t - j`` either way, so for RoPE models (b) is exact with the original positions
(RoPE logits depend on positions only through the distance). For (c) only the query-sink distance
changes, from ``t - i`` to ``min(t, k+W-1) - i``; we re-assign it as the paper does by rotating the query
by ``delta_t = min(t, k+W-1) - t`` for the sink columns only (a ``score_mod`` on the capture engine).
The rotation (rotate-half convention, the model's ``inv_freq``) is first checked on the model itself:
shifting every position id by ``D`` must turn each layer's captured queries into ``R(D)`` of the
unshifted ones. Where the check fails (learned absolute positions as in GPT-2, another rotary
convention) the sinks keep their original positions, a notice says so, and ``streaming.reassigned``
is 0. Runs keep prompts within the model's trained length, so original positions stay in range too.

Window size: ``W = min(32, max(2, T // 4))`` (so that most tokens are predicted after the first token
left the window), ``k = 4`` (the paper's choice); both are stored in ``streaming.params``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from backend import names
from backend.engine.cancel import Cancelled
from backend.engine.capture import BaseReducer, CaptureSession, LayerView

DEFAULT_WINDOW = 32
DEFAULT_SINKS = 4
SOURCE = "Xiao et al., ICLR 2024, 'Efficient Streaming Language Models with Attention Sinks'"


def default_window(n_tokens: int) -> int:
    return min(DEFAULT_WINDOW, max(2, n_tokens // 4))


def streaming_mask(n: int, window: int | None = None, sinks: int = 0, device=None) -> torch.Tensor:
    """``[T, T]`` bool, True where query ``t`` (row) may attend to key ``j``: causal, and with ``window``
    only ``j > t - window`` or ``j < sinks``."""
    t = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    mask = j <= t
    if window is not None:
        mask &= (j > t - window) | (j < sinks)
    return mask


def sink_shift(n: int, window: int, sinks: int) -> torch.Tensor:
    """``[T]`` int64: ``delta_t = min(t, sinks + window - 1) - t`` (<= 0), the move of query ``t`` to its
    cache slot; 0 while the cache has not yet evicted anything."""
    t = torch.arange(n)
    return t.clamp(max=sinks + window - 1) - t


def rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., tq, d]`` by ``delta [tq]`` positions, RoPE rotate-half convention on the first
    ``2 * len(inv_freq)`` dims (the rest, if any, unrotated as in partial rotary)."""
    r = 2 * inv_freq.numel()
    if r > x.shape[-1]:
        raise ValueError(f"rotary dim {r} exceeds head dim {x.shape[-1]}")
    ang = delta.to(x.device, torch.float32)[:, None] * inv_freq.to(x.device, torch.float32)[None, :]
    emb = torch.cat([ang, ang], dim=-1)  # [tq, r]
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    xr, rest = x[..., :r], x[..., r:]
    half = r // 2
    rot = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
    return torch.cat([xr * cos + rot * sin, rest], dim=-1)


def rotary_inv_freq(model: torch.nn.Module) -> torch.Tensor | None:
    """The model's RoPE frequencies when all its rotary modules share one set, else None."""
    found = [m.inv_freq for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    if not found or any(f.shape != found[0].shape or not torch.equal(f, found[0]) for f in found[1:]):
        return None
    return found[0]


class _Queries(BaseReducer):
    """Keeps every layer's captured queries ``[B, H, T, d]`` (for the rotation check only)."""

    def __init__(self) -> None:
        self.q: dict[int, torch.Tensor] = {}

    def begin_layer(self, view: LayerView) -> None:
        self.q[view.layer] = view.query.clone()


def rotation_holds(model: torch.nn.Module, ids: torch.Tensor, shift: int = 7) -> bool:
    """True when shifting all position ids by ``shift`` rotates every layer's queries by ``R(shift)``
    (``ids [n]`` a short prefix). False for absolute positions, other conventions, or no RoPE."""
    inv_freq = rotary_inv_freq(model)
    if inv_freq is None:
        return False
    n = int(ids.shape[0])
    pos = torch.arange(n, device=ids.device)[None]
    caught = []
    try:
        for p in (pos, pos + shift):
            red = _Queries()
            with torch.no_grad(), CaptureSession(model, reducers=[red], prompts=[0], lengths=[n]):
                model(input_ids=ids[None], position_ids=p, use_cache=False)
            caught.append(red.q)
    except (TypeError, ValueError, IndexError, RuntimeError):
        return False
    base, moved = caught
    if not base or base.keys() != moved.keys():
        return False
    tol = 2e-3 if base[0].dtype == torch.float32 else 5e-2
    delta = torch.full((n,), shift, dtype=torch.long)
    for layer, q in base.items():
        try:
            want = rotate(q.float(), delta, inv_freq)
        except ValueError:
            return False
        got = moved[layer].float()
        scale = float(got.abs().max()) or 1.0
        if float((want - got).abs().max()) > tol * scale:
            return False
    return True


def sink_score_mod(model: torch.nn.Module, window: int, sinks: int, n: int) -> Callable:
    """Capture-engine ``score_mod`` that re-assigns the sink keys' positions as StreamingLLM's cache does:
    the logits of sink columns are recomputed with the query rotated by ``delta_t`` (:func:`sink_shift`)."""
    delta = sink_shift(n, window, sinks)

    def mod(view: LayerView, q0: int, scores: torch.Tensor) -> torch.Tensor:
        tq = scores.shape[2]
        d = delta[q0 : q0 + tq]
        k = min(sinks, scores.shape[-1])
        if k == 0 or not bool((d != 0).any()):
            return scores
        inv_freq = rotary_inv_freq(model)  # read at call time: dynamic RoPE may update it per forward
        q = rotate(view.query[:, :, q0 : q0 + tq], d, inv_freq)  # [B, H, tq, d] at the cache slot
        s_sink = torch.matmul(q, view.key[:, :, :k].transpose(2, 3)) * view.scaling  # [B, H, tq, k]
        return torch.cat([s_sink.to(scores.dtype), scores[..., k:]], dim=-1)

    return mod


def token_nll(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None,
              score_mod: Callable | None = None) -> np.ndarray:
    """``[T-1]`` float32 NLL (nats) of ``ids[t+1]`` given the context ``mask [T, T]`` allows (None: the
    model's own causal mask)."""
    n = int(ids.shape[0])
    if mask is None:
        am = torch.ones((1, n), dtype=torch.long, device=ids.device)
    else:
        am = mask.to(ids.device)[None, None]  # [1, 1, T, T] bool, used as is by transformers
    session = CaptureSession(model, reducers=[], score_mod=score_mod, chunk_size=256 if n > 1024 else None,
                             prompts=[0], lengths=[n])
    with torch.no_grad(), session:
        out = model(input_ids=ids[None], attention_mask=am, use_cache=False)
    session.check_captured()
    logits = getattr(out, "logits", None)
    if logits is None:
        raise ValueError("the model has no language-model head (no logits)")
    nll = F.cross_entropy(logits[0, :-1].float(), ids[1:], reduction="none")  # [T-1]
    return nll.cpu().numpy().astype(np.float32)


def run_streaming(model: torch.nn.Module, ids: torch.Tensor, window: int, sinks: int = DEFAULT_SINKS,
                  reassign: bool | None = None, progress: Callable[[float, str], None] | None = None,
                  should_cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The three NLL curves on ``ids [T]``. ``reassign=None`` re-assigns the sink positions when
    :func:`rotation_holds`; True forces it (raises without RoPE), False keeps original positions."""
    progress = progress or (lambda frac, stage: None)
    should_cancel = should_cancel or (lambda: False)
    n = int(ids.shape[0])
    if reassign is None:
        reassign = rotation_holds(model, ids[: min(n, 16)])
    elif reassign and rotary_inv_freq(model) is None:
        raise ValueError("re-assigning positions needs a RoPE model")
    steps = (
        ("nll_full", None, None),
        ("nll_window", streaming_mask(n, window, 0), None),
        ("nll_sink", streaming_mask(n, window, sinks), sink_score_mod(model, window, sinks, n) if reassign else None),
    )
    out: dict[str, Any] = {"reassigned": bool(reassign)}
    for i, (name, mask, mod) in enumerate(steps):
        if should_cancel():
            raise Cancelled("cancelled by the user")
        progress(i / len(steps), f"streaming: {name.split('_')[1]} attention")
        out[name] = token_nll(model, ids, mask, mod)
    progress(1.0, "streaming: done")
    return out


def streaming_stage(loaded, inputs, options, reducers, emit, progress, should_cancel, info) -> None:
    """Post-capture stage: the experiment on the first prompt of a causal text LM; notices otherwise."""
    if loaded.kind != "text" or not loaded.causal:
        info.notices.append(
            "StreamingLLM experiment skipped: it needs a causal language model "
            f"({info.model_class} is {'an image model' if loaded.kind != 'text' else 'not causal'})."
        )
        return
    tokens = info.tokens[0] if info.tokens else []
    n = len(tokens)
    if n < 3:
        info.notices.append("StreamingLLM experiment skipped: the first prompt has fewer than 3 tokens.")
        return
    ids = torch.tensor(loaded.preprocessor.convert_tokens_to_ids(tokens), dtype=torch.long, device=loaded.device)
    window, sinks = default_window(n), min(DEFAULT_SINKS, n)
    try:
        res = run_streaming(loaded.model, ids, window, sinks, None, progress, should_cancel)
    except ValueError as exc:
        info.notices.append(f"StreamingLLM experiment skipped: {exc}.")
        return
    for name in ("nll_full", "nll_window", "nll_sink"):
        emit(names.streaming(name), res[name])
    emit(names.streaming("params"), np.asarray([window, sinks], dtype=np.int32))
    emit(names.streaming("reassigned"), np.asarray(int(res["reassigned"]), dtype=np.int32))
    if not res["reassigned"]:
        info.notices.append(
            "StreamingLLM: this model's positions could not be re-assigned within the cache (no rotary "
            "embedding the engine can verify); the sink tokens keep their original positions."
        )
    sw = getattr(loaded.model.config, "sliding_window", None)
    if isinstance(sw, int) and sw < n:
        info.notices.append(
            f"StreamingLLM: the model's own sliding window ({sw}) is replaced by the experiment's masks in the "
            "window and sink curves."
        )
    if window + sinks >= n:
        info.notices.append(f"StreamingLLM: the first prompt ({n} tokens) fits in the window; use a longer text.")

