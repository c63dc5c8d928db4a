"""Extreme tokens and interventions on one model (the intervention lab's numbers; torch side).

Functions here take a model and token ids (tiny models in tests, the worker's loaded model in
:mod:`backend.engine.lab_job`) and return NumPy arrays / plain values:

* :func:`extreme_tokens`: per layer, head and token of one prompt: the attention the token receives
  (Gu et al.'s ``alpha``, mean over the queries that can see it), the norm of its value vector, the
  value contribution ``alpha * |v|`` (= the mean over queries of ``|A[t, k] v_k|``), and per layer and
  token the norm of the residual stream leaving the block ("Active-Dormant Attention Heads", "When
  Attention Sink Emerges": sinks receive much attention but carry small values).
* :func:`first_token_alpha`: ``alpha(first token)`` per input, layer and head (the sink rate per domain
  is computed from it in :mod:`backend.extremes`).
* :func:`intervened_pass`: logits and every layer's pattern of one batch under an intervention.
* :func:`patching`: activation patching clean -> corrupted with the logit difference of two answer
  tokens as the metric, per (layer, position) of the residual stream and per (layer, head) output.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from backend import names
from backend.engine.capture import BaseReducer, CaptureSession, LayerView
from backend.engine.interventions import (
    HeadMean,
    HeadRecord,
    HeadReplace,
    KeyScale,
    ResidPatch,
    ResidRecord,
    block_list,
    heads_by_layer,
)
from backend.engine.metrics_reducer import SinkMetricsReducer


def model_shape(model: nn.Module) -> tuple[int, int]:
    cfg = model.config.get_text_config()
    return int(cfg.num_hidden_layers), int(cfg.num_attention_heads)


def id_batch(ids: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> dict:
    """Right-padded ``input_ids`` / ``attention_mask`` ``[B, T]`` for lists of token ids."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, x in enumerate(ids):
        input_ids[b, : len(x)] = torch.tensor(list(x), dtype=torch.long)
        mask[b, : len(x)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


class _ValueNorms(BaseReducer):
    """``|v|`` per layer: ``[H, T]`` for batch row 0 (one prompt)."""

    def __init__(self) -> None:
        self.norms: dict[int, np.ndarray] = {}

    def begin_layer(self, view: LayerView) -> None:
        n = view.lengths[0] if view.lengths else view.value.shape[2]
        self.norms[view.layer] = view.value[0, :, :n].float().norm(dim=-1).cpu().numpy()  # [H, T]


class _BlockOutputs:
    """Forward hooks keeping the residual stream leaving each block, row 0: ``[T, D]``."""

    def __init__(self, model: nn.Module, n_layers: int) -> None:
        self.blocks, self.out, self._handles = block_list(model, n_layers), {}, []

    def __enter__(self) -> "_BlockOutputs":
        for layer, block in enumerate(self.blocks):
            def hook(module, args, output, layer=layer):
                h = output[0] if isinstance(output, (tuple, list)) else output
                self.out[layer] = h[0].detach()
            self._handles.append(block.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()


def extreme_tokens(model: nn.Module, ids: Sequence[int], causal: bool) -> dict[str, np.ndarray]:
    """One prompt's ``received``, ``value_norm``, ``contribution`` ``[L, H, T]`` and ``resid_norm``
    ``[L, T]`` float32 (value norms per query head: GQA heads that share a key-value head share it)."""
    n_layers, n_heads = model_shape(model)
    t = len(ids)
    dev = next(model.parameters()).device
    sinks = SinkMetricsReducer(n_layers, n_heads, causal)
    values = _ValueNorms()
    session = CaptureSession(model, reducers=[sinks, values], prompts=[0], lengths=[t])
    with torch.no_grad(), session, _BlockOutputs(model, n_layers) as blocks:
        model(**id_batch([ids], 0, dev))
    session.check_captured()
    res = sinks.results()
    received = np.stack([res[names.attn_received(0, layer)] for layer in range(n_layers)])  # [L, H, T]
    value_norm = np.stack([values.norms[layer] for layer in range(n_layers)])  # [L, H, T]
    resid = np.stack([blocks.out[layer][:t].float().norm(dim=-1).cpu().numpy() for layer in range(n_layers)])
    return {"received": received.astype(np.float32), "value_norm": value_norm.astype(np.float32),
            "contribution": (received * value_norm).astype(np.float32), "resid_norm": resid.astype(np.float32)}


class _FirstAlpha(BaseReducer):
    """``alpha(first token)`` per batch row: mean over real queries of ``A[t, 0]``, ``[B, H]`` per layer."""

    def __init__(self) -> None:
        self.rows: dict[int, np.ndarray] = {}
        self._acc: torch.Tensor | None = None

    def begin_layer(self, view: LayerView) -> None:
        b, h = view.query.shape[:2]
        self._acc = torch.zeros(b, h, dtype=torch.float64, device=view.query.device)

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        b, _, tq, _ = pattern.shape
        q = torch.arange(q0, q0 + tq, device=pattern.device)
        n = torch.tensor(view.lengths, device=pattern.device)[:, None]  # [B, 1]
        real = (q[None, :] < n).to(torch.float64)  # [B, tq]
        self._acc += (pattern[..., 0].double() * real[:, None, :]).sum(-1)

    def end_layer(self, view: LayerView) -> None:
        n = torch.tensor(view.lengths, dtype=torch.float64, device=self._acc.device)[:, None]
        self.rows[view.layer] = (self._acc / n).cpu().numpy()


def first_token_alpha(model: nn.Module, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 8,
                      ) -> np.ndarray:
    """``[N, L, H]`` float32: the attention each input's first token receives, per layer and head (for the
    first token every query sees it, causal or not: the mean over all real queries)."""
    n_layers, n_heads = model_shape(model)
    dev = next(model.parameters()).device
    out = np.zeros((len(ids), n_layers, n_heads), dtype=np.float32)
    for start in range(0, len(ids), batch_size):
        rows = list(ids[start:start + batch_size])
        red = _FirstAlpha()
        lengths = [len(x) for x in rows]
        session = CaptureSession(model, reducers=[red], prompts=list(range(len(rows))), lengths=lengths)
        with torch.no_grad(), session:
            model(**id_batch(rows, pad_id, dev))
        session.check_captured()
        for layer in range(n_layers):
            out[start:start + len(rows), layer] = red.rows[layer]
    return out


# ------------------------------------------------------------------------------ interventions


class _Patterns(BaseReducer):
    """The pattern of batch row 0, ``[H, T, T]``, of every layer in ``keep`` (None: all layers)."""

    def __init__(self, keep: set[int] | None = None) -> None:
        self.keep = keep
        self.layers: dict[int, np.ndarray] = {}
        self._buf: torch.Tensor | None = None

    def begin_layer(self, view: LayerView) -> None:
        _, h, t, _ = view.query.shape
        keep = self.keep is None or view.layer in self.keep
        self._buf = torch.zeros(h, t, view.key.shape[2]) if keep else None

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        if self._buf is not None:
            self._buf[:, q0:q0 + pattern.shape[2]] = pattern[0].float().cpu()

    def end_layer(self, view: LayerView) -> None:
        if self._buf is None:
            return
        n = view.lengths[0] if view.lengths else self._buf.shape[1]
        self.layers[view.layer] = self._buf[:, :n, :n].numpy()
        self._buf = None


def mods_for(op: str, heads: Sequence[Sequence[int]] | None, n_layers: int, n_heads: int, *,
             keys: Sequence[int] = (0,), factor: float = 1.0, means: dict[int, torch.Tensor] | None = None,
             ) -> dict[str, Any]:
    """``CaptureSession`` keyword arguments for an intervention: ``op`` ``"scale"`` (attention to ``keys``
    times ``factor``, renormalised), ``"mask"`` (factor 0), ``"mean"`` (heads' outputs replaced by
    ``means[layer] [H, d]``; batch rows are all replaced). ``heads`` None: every head."""
    by_layer = heads_by_layer(heads, n_layers, n_heads)
    if op in ("scale", "mask"):
        return {"weights_mod": KeyScale(by_layer, keys, 0.0 if op == "mask" else factor)}
    if op == "mean":
        if means is None:
            raise ValueError("mean ablation needs the heads' mean outputs")
        return {"head_mod": _AllRows(by_layer, means)}
    raise ValueError(f"unknown intervention {op!r}")


class _AllRows:
    """``head_mod`` replacing ``heads`` of every batch row by ``means[layer][head]`` ``[d]``."""

    def __init__(self, by_layer: dict[int, list[int]], means: dict[int, torch.Tensor]) -> None:
        self.by_layer, self.means = by_layer, means

    def __call__(self, view: LayerView, out: torch.Tensor) -> torch.Tensor:
        hs = self.by_layer.get(view.layer)
        if not hs:
            return out
        assign = {view.layer: [(row, h) for row in range(out.shape[0]) for h in hs]}
        return HeadReplace(assign, self.means)(view, out)


def head_means(model: nn.Module, batches: Sequence[dict]) -> dict[int, torch.Tensor]:
    """Each head's output averaged over every real token of ``batches`` (mean ablation): ``{l: [H, d]}``."""
    rec = HeadMean()
    for batch in batches:
        mask = batch.get("attention_mask")
        lengths = mask.sum(1).tolist() if mask is not None else [batch["input_ids"].shape[1]] * len(batch["input_ids"])
        session = CaptureSession(model, head_mod=rec, prompts=list(range(len(lengths))), lengths=lengths)
        with torch.no_grad(), session:
            model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")})
        session.check_captured()
    return rec.means()


def intervened_pass(model: nn.Module, batch: dict, mods: dict[str, Any] | None = None, patterns: bool = True,
                    keep: set[int] | None = None) -> tuple[torch.Tensor, dict[int, np.ndarray]]:
    """``(logits [B, T, V] or [B, C] or None, {layer: pattern [H, T, T] of row 0})`` under ``mods`` (None: none), with the
    patterns of the layers in ``keep`` (None: every layer)."""
    red = _Patterns(keep)
    mask = batch.get("attention_mask")
    t = batch["input_ids"].shape[1]
    lengths = mask.sum(1).tolist() if mask is not None else [t] * batch["input_ids"].shape[0]
    session = CaptureSession(model, reducers=[red] if patterns else [], prompts=list(range(len(lengths))),
                             lengths=lengths, **(mods or {}))
    with torch.no_grad(), session:
        out = model(**batch)
    session.check_captured()
    return getattr(out, "logits", None), red.layers  # (None for an encoder without a head)


# ----------------------------------------------------------------------------- patching


def _logit_diff(logits: torch.Tensor, pos: int, good: int, bad: int) -> torch.Tensor:
    """``[B]``: ``logits[:, pos, good] - logits[:, pos, bad]``."""
    x = logits[:, pos].double()
    return x[:, good] - x[:, bad]


def patching(model: nn.Module, clean: Sequence[int], corrupted: Sequence[int], good: int, bad: int,
             progress=None) -> dict[str, Any]:
    """Activation patching clean -> corrupted (same length ``T``), metric ``LD = logit[good] - logit[bad]``
    at the last position. Returns ``ld_clean``, ``ld_corrupted``, ``resid`` ``[L, T]`` (LD of the corrupted
    run with the residual stream entering block ``l`` at position ``t`` taken from the clean run) and
    ``heads`` ``[L, H]`` (head ``h`` of layer ``l`` at every position from the clean run), and both
    normalised: ``(LD - LD_corrupted) / (LD_clean - LD_corrupted)`` (1: the patch restores the clean run)."""
    if len(clean) != len(corrupted):
        raise ValueError(f"activation patching needs two prompts of the same length in tokens "
                         f"(clean {len(clean)}, corrupted {len(corrupted)})")
    progress = progress or (lambda frac, stage: None)
    n_layers, n_heads = model_shape(model)
    t = len(clean)
    dev = next(model.parameters()).device
    last = t - 1
    heads = HeadRecord()
    with torch.no_grad(), ResidRecord(model, n_layers) as resid, CaptureSession(model, head_mod=heads):
        clean_logits = model(**id_batch([clean], 0, dev)).logits
    with torch.no_grad(), CaptureSession(model):
        corr_logits = model(**id_batch([corrupted], 0, dev)).logits
    ld_clean = float(_logit_diff(clean_logits, last, good, bad)[0])
    ld_corr = float(_logit_diff(corr_logits, last, good, bad)[0])
    grid_resid = np.zeros((n_layers, t))
    grid_heads = np.zeros((n_layers, n_heads))
    for layer in range(n_layers):
        batch = id_batch([corrupted] * t, 0, dev)
        patch = ResidPatch(model, n_layers, {layer: [(row, [row]) for row in range(t)]},
                           {layer: resid.resid[layer][0]})
        with torch.no_grad(), patch, CaptureSession(model):
            grid_resid[layer] = _logit_diff(model(**batch).logits, last, good, bad).cpu().numpy()
        batch = id_batch([corrupted] * n_heads, 0, dev)
        replace = HeadReplace({layer: [(h, h) for h in range(n_heads)]}, {layer: heads.outs[layer][0]})
        with torch.no_grad(), CaptureSession(model, head_mod=replace):
            grid_heads[layer] = _logit_diff(model(**batch).logits, last, good, bad).cpu().numpy()
        progress((layer + 1) / n_layers, f"patching: layer {layer + 1}/{n_layers}")
    denom = ld_clean - ld_corr
    norm = (lambda g: (g - ld_corr) / denom) if abs(denom) > 1e-9 else (lambda g: np.full_like(g, np.nan))
    return {"ld_clean": ld_clean, "ld_corrupted": ld_corr, "resid": grid_resid, "heads": grid_heads,
            "resid_normalised": norm(grid_resid), "heads_normalised": norm(grid_heads),
            "clean_logits": clean_logits[0, last].double().cpu().numpy(),
            "corrupted_logits": corr_logits[0, last].double().cpu().numpy()}
