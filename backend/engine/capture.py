"""One capture engine for every architecture, through ``transformers.AttentionInterface``.

Models loaded with ``attn_implementation=ATTN_IMPLEMENTATION`` call :func:`atlas_attention` in every
attention layer with per-head ``query [B, Hq, T, d]`` and ``key``/``value [B, Hkv, S, d]`` (keys after
RoPE, before the GQA repeat). It computes attention itself (mask-aware, GQA-aware, optionally chunked
over queries), multiplies each head's output by a gate (differentiable: head importance and pruning
need it) and hands each layer's queries, keys and pattern chunks to *reducers*. The engine never
holds more than one layer's pattern, and with chunking only ``chunk x S`` of it.

Interventions (``backend.engine.interventions``) use two optional edits of the session, applied here
for every architecture: ``weights_mod`` rewrites the attention weights after the softmax (scaling or
masking chosen keys, then renormalising; reducers see the edited pattern) and ``head_mod`` rewrites each
head's output before the output projection (mean ablation, activation patching, or recording).
"""

from __future__ import annotations

import contextvars
import re
import weakref
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

ATTN_IMPLEMENTATION = "atlas_capture"

_ACTIVE: contextvars.ContextVar["CaptureSession | None"] = contextvars.ContextVar(
    "atlas_capture_session", default=None
)


class UnsupportedArchitecture(RuntimeError):
    """The model does not route attention through the transformers attention interface."""


@dataclass
class LayerView:
    """What reducers see of one attention layer during one forward pass."""

    layer: int
    query: torch.Tensor  # [B, H, T, d] detached
    key: torch.Tensor  # [B, H, S, d] detached, repeated to query heads (GQA), after RoPE
    scaling: float
    prompts: list[int]  # global prompt index of each batch row
    lengths: list[int]  # real (unpadded) length of each batch row; padding is on the right
    special: torch.Tensor | None = None  # [B, S] bool: special tokens ([CLS], [SEP], BOS, ...)
    value: torch.Tensor | None = None  # [B, H, S, d] detached, repeated to query heads (GQA)


class Reducer(Protocol):
    """Receives one layer at a time; keeps only what it needs."""

    def begin_layer(self, view: LayerView) -> None: ...

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        """``pattern [B, H, tq, S]``: rows ``q0 .. q0+tq`` of the layer's attention (detached)."""

    def end_layer(self, view: LayerView) -> None: ...

    def hidden(self, layer: int, hidden: torch.Tensor, prompts: list[int], lengths: list[int]) -> None:
        """``hidden [B, T, D]``: the residual stream after block ``layer`` (from output_hidden_states)."""


class BaseReducer:
    """No-op defaults so reducers implement only the hooks they need.

    ``fused = True`` declares that the reducer needs no pattern chunks: in a session with ``fused=True``
    whose reducers all declare it, layers run without patterns (:mod:`backend.engine.fused_metrics`) and
    such reducers get ``lse_layer`` instead of ``chunk``."""

    fused = False

    def lse_layer(self, view: LayerView, lse: torch.Tensor, mask: torch.Tensor | None, chunk: int) -> None:
        """``lse [B, H, T]`` float32: each query row's log-sum-exp of its scores (fused sessions only)."""
        return None

    def begin_layer(self, view: LayerView) -> None:
        return None

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        return None

    def end_layer(self, view: LayerView) -> None:
        return None

    def hidden(self, layer: int, hidden: torch.Tensor, prompts: list[int], lengths: list[int]) -> None:
        return None


_FIRST_INT = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index_map(model: nn.Module) -> dict[int, int]:
    """``id(module) -> layer index`` for every module: ``layer_idx`` when the module has one,
    else the first integer in its qualified name (``vit.encoder.layer.3.attention`` -> 3)."""
    out: dict[int, int] = {}
    for name, module in model.named_modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int):
            out[id(module)] = idx
            continue
        m = _FIRST_INT.search(name)
        if m:
            out[id(module)] = int(m.group(1))
    return out


_LAYER_MAPS: "weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[weakref.ref, int]]]" = weakref.WeakKeyDictionary()


def layer_of_module(model: nn.Module, module: nn.Module) -> int | None:
    """``module``'s layer index in ``model`` (:func:`layer_index_map`), from a map built once per model (walking
    every module's qualified name took ~2 ms a capture session, one per batch, on MiniLM) and built again when
    ``module`` is not in it (the model's modules changed); None when it has none."""
    layers = _LAYER_MAPS.get(model)
    hit = layers.get(id(module)) if layers is not None else None
    if hit is None or hit[0]() is not module:
        modules = {id(m): m for m in model.modules()}
        layers = _LAYER_MAPS[model] = {k: (weakref.ref(modules[k]), v) for k, v in layer_index_map(model).items()}
        hit = layers.get(id(module))
    return hit[1] if hit is not None else None


class ReusedBuffer:
    """One flat buffer handed out again for every layer and chunk: the scores of a capture pass that returns no
    attention weights (computed into it and softmaxed in place, :func:`backend.engine.analyze.analyze`), and the
    reducers' pattern-size temporaries and sums. On the CPU a fresh pattern-size tensor per layer is fresh memory from
    the system (page faults, about as much time as the product itself at MiniLM's sizes) once the allocator has
    returned the previous one."""

    def __init__(self) -> None:
        self._flat: torch.Tensor | None = None

    def get(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A tensor of ``shape`` viewing the buffer (grown when too small); its values are garbage."""
        numel = 1
        for n in shape:
            numel *= n
        flat = self._flat
        if flat is None or flat.numel() < numel or flat.dtype != dtype or flat.device != device:
            flat = self._flat = torch.empty(numel, dtype=dtype, device=device)
        return flat[:numel].view(shape)


@dataclass
class CaptureSession:
    """Context manager that activates capture for forward passes run inside it.

    ``gates [n_layers, n_heads]`` (may require grad) scale each head's output; ``chunk_size`` bounds
    the number of query rows whose pattern exists at once (``None``: whole layer at once).
    """

    model: nn.Module
    reducers: list = field(default_factory=list)
    gates: torch.Tensor | None = None
    # when a dict: every layer puts a per-token leaf gate ``[B, H, T, 1]`` (valued as ``gates``) in it
    token_gates: dict[int, torch.Tensor] | None = None
    chunk_size: int | None = None
    prompts: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    special: torch.Tensor | None = None  # [B, T] bool, set per batch by the runner
    # optional ``score_mod(view, q0, scores [B, H, tq, S]) -> scores``: edits the raw logits of query rows
    # q0.. before softcap and mask (StreamingLLM's re-assigned sink positions: backend.engine.streaming)
    score_mod: Callable[[LayerView, int, torch.Tensor], torch.Tensor] | None = None
    # optional ``weights_mod(view, q0, weights [B, H, tq, S]) -> weights``: edits the attention weights of
    # query rows q0.. after the softmax, before reducers see them and before they weight the values
    weights_mod: Callable[[LayerView, int, torch.Tensor], torch.Tensor] | None = None
    # optional ``head_mod(view, out [B, H, T, d]) -> out``: edits each head's output (after the gate,
    # before the output projection)
    head_mod: Callable[[LayerView, torch.Tensor], torch.Tensor] | None = None
    # no pattern chunks when every reducer declares ``fused`` (and no gradient, dropout or softcap is involved):
    # the output through scaled_dot_product_attention, reducers fed its log-sum-exp (backend.engine.fused_metrics)
    fused: bool = False
    # when set (and no gradient is recorded): every chunk's scores and weights live in this one buffer, so a layer
    # returns no attention weights (``output_attentions`` gets None); for passes that read patterns through reducers
    scores_buffer: ReusedBuffer | None = None
    calls: int = 0
    _token: contextvars.Token | None = None

    def layer_of(self, module: nn.Module) -> int:
        layer = layer_of_module(self.model, module)
        if layer is None:
            raise UnsupportedArchitecture(f"cannot tell which layer {type(module).__name__} belongs to")
        return layer

    def __enter__(self) -> "CaptureSession":
        impl = getattr(self.model.config, "_attn_implementation", None)
        if impl != ATTN_IMPLEMENTATION:
            raise UnsupportedArchitecture(
                f"model was loaded with attn_implementation={impl!r}; load it with "
                f"attn_implementation={ATTN_IMPLEMENTATION!r} (see backend.engine.models)"
            )
        self.calls = 0
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None

    def check_captured(self) -> None:
        """Raise when a forward pass ran but no layer called the interface."""
        if self.calls == 0:
            raise UnsupportedArchitecture(
                f"{type(self.model).__name__} does not use the transformers attention interface; "
                "Attention Atlas cannot capture its attention yet"
            )


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    # [B, Hkv, S, d] -> [B, Hkv * n_rep, S, d]; query head h uses key head h // n_rep
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def atlas_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager-equivalent attention with gates and reducers. Returns ``(out [B, T, Hq, d], weights)``."""
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise UnsupportedArchitecture("learned attention-sink logits (s_aux) are not supported yet")
    session = _ACTIVE.get()
    b, hq, t, d = query.shape
    n_rep = hq // key.shape[1]
    key_r = _repeat_kv(key, n_rep)  # [B, Hq, S, d]
    value_r = _repeat_kv(value, n_rep)  # [B, Hq, S, d]
    s = key_r.shape[2]
    scale = float(scaling) if scaling is not None else d**-0.5
    softcap = kwargs.get("softcap")
    chunk = t if session is None or not session.chunk_size else max(1, session.chunk_size)

    view = None
    gate = None
    if session is not None:
        session.calls += 1
        layer = session.layer_of(module)
        view = LayerView(
            layer, query.detach(), key_r.detach(), scale, session.prompts, session.lengths, session.special,
            value_r.detach(),
        )
        for r in session.reducers:
            r.begin_layer(view)
        if session.gates is not None:
            # gates [L, H] (shared by all rows) or [B, L, H] (one per batch row: per-example gradients)
            gate = session.gates[..., layer, :].to(device=query.device, dtype=query.dtype).reshape(-1, hq, 1, 1)  # [1|B, Hq, 1, 1]
        if session.token_gates is not None:
            # one leaf gate per row, head and query position, valued as the head's gate: its gradient is the
            # per-token dL/dxi (Michel et al.'s released code); the sum over positions is the per-row dL/dxi
            base = gate.detach() if gate is not None else torch.ones(1, hq, 1, 1, device=query.device, dtype=query.dtype)
            gate = base.expand(b, hq, t, 1).clone().requires_grad_(True)  # [B, Hq, T, 1]
            session.token_gates[layer] = gate

    if session is not None and _can_fuse(session, module, softcap, dropout, gate):
        out, weights_full = _fused_layer(session, module, view, query, key_r, value_r, attention_mask, scale)
        if gate is not None:
            out = out * gate
        for r in session.reducers:
            r.end_layer(view)
        return out.transpose(1, 2).contiguous(), weights_full

    outs = []
    weights_full = None
    shared = session.scores_buffer if session is not None and not torch.is_grad_enabled() else None
    for q0 in range(0, t, chunk):
        q1 = min(t, q0 + chunk)
        # scaling and masking in place: no further full-size temporaries (the matmul's output is not saved for
        # backward, so autograd allows it; the values are those of the out-of-place ops, bit for bit)
        k_t = key_r.transpose(2, 3)
        if shared is not None:
            buf = shared.get((b, hq, q1 - q0, s), torch.result_type(query, key_r), query.device)
            scores = torch.matmul(query[:, :, q0:q1], k_t, out=buf).mul_(scale)  # [B, Hq, tq, S]
        else:
            scores = torch.matmul(query[:, :, q0:q1], k_t).mul_(scale)  # [B, Hq, tq, S]
        if session is not None and session.score_mod is not None:
            scores = session.score_mod(view, q0, scores)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            # [B, 1, T, S] (or [B, 1, 1, S], broadcast over queries)
            mask = attention_mask[:, :, q0:q1, :s] if attention_mask.shape[2] > 1 else attention_mask[..., :s]
            if mask.dtype == torch.bool:
                scores = scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
            elif mask.dtype == scores.dtype:
                scores = scores.add_(mask)
            else:
                scores = scores + mask
        if scores.dtype == torch.float32 and scores.device.type == "cpu" and not scores.requires_grad and (
                session is None or session.score_mod is None):
            # in place over this chunk's own scores (bit for bit the same values): on the CPU a fresh pattern-size
            # output per layer is fresh memory from the system (page faults) once the allocator has returned it
            weights = torch.softmax(scores, dim=-1, out=scores).to(query.dtype)
        else:
            weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        if session is not None and session.weights_mod is not None:
            weights = session.weights_mod(view, q0, weights)
        if session is not None:
            detached = weights.detach()
            for r in session.reducers:
                r.chunk(view, q0, detached)
        weights_d = nn.functional.dropout(weights, p=dropout, training=module.training)
        out = torch.matmul(weights_d, value_r)  # [B, Hq, tq, d]
        if gate is not None:
            out = out * (gate[:, :, q0:q1] if gate.shape[2] > 1 else gate)
        outs.append(out)
        if chunk >= t and shared is None:
            weights_full = weights
    if session is not None:
        for r in session.reducers:
            r.end_layer(view)
    attn_output = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]  # [B, Hq, T, d]
    if session is not None and session.head_mod is not None:
        attn_output = session.head_mod(view, attn_output)
    return attn_output.transpose(1, 2).contiguous(), weights_full


def _can_fuse(session: CaptureSession, module: nn.Module, softcap, dropout: float, gate) -> bool:
    if not session.fused or session.score_mod is not None or session.weights_mod is not None or session.head_mod is not None or softcap is not None or session.token_gates is not None:
        return False
    if (dropout and module.training) or (torch.is_grad_enabled() and gate is not None and gate.requires_grad):
        return False
    return all(getattr(r, "fused", False) for r in session.reducers)


def _fused_layer(session, module, view, query, key_r, value_r, attention_mask, scale):
    from backend.engine.fused_metrics import attention_lse, stats_chunk  # noqa: PLC0415

    causal = bool(getattr(module, "is_causal", False))
    b, h, t, _ = query.shape
    s = key_r.shape[2]
    chunk = session.chunk_size or stats_chunk(b, h, s)
    out, lse, plain = attention_lse(query, key_r, value_r, attention_mask, scale, causal, chunk)
    mask = None if plain else attention_mask
    for r in session.reducers:
        r.lse_layer(view, lse, mask, chunk)
    return out, None


AttentionInterface.register(ATTN_IMPLEMENTATION, atlas_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
