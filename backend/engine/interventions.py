"""Interventions on attention, through the one capture engine (no per-model code).

* :class:`KeyScale` (``CaptureSession.weights_mod``): in chosen heads, multiply the attention weights
  to chosen key positions by a factor and renormalise each query row (ZeroTuning-style scaling of the
  first token's attention). A factor of 0 masks the keys: ``w_j / sum_{k not masked} w_k`` is exactly
  the softmax recomputed without them. A query row whose visible keys are all scaled to 0 (query 0
  of a causal model when key 0 is masked) cannot be renormalised and keeps its original weights.
* :class:`HeadMean` / :class:`HeadReplace` (``CaptureSession.head_mod``): record each head's output
  ``[B, H, T, d]`` (before the output projection) and replace chosen heads' outputs by a recorded
  value: the mean over the run's prompts (mean ablation) or another prompt's output (activation
  patching of one head at every position, TransformerLens' ``attn_head_out_all_pos``).
* :class:`ResidPatch`: forward pre-hooks on the transformer blocks replace the residual stream entering
  block ``l`` (TransformerLens' ``blocks.{l}.hook_resid_pre``) at chosen positions, per batch row, by a
  recorded one; :class:`ResidRecord` records it.

Hooks are removed in ``finally`` (context managers).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from backend.engine.capture import LayerView, UnsupportedArchitecture


def heads_by_layer(heads: Sequence[Sequence[int]] | None, n_layers: int, n_heads: int) -> dict[int, list[int]]:
    """``[[layer, head], ...]`` (None: every head) -> ``{layer: [heads]}``."""
    if heads is None:
        return {layer: list(range(n_heads)) for layer in range(n_layers)}
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return {k: sorted(set(v)) for k, v in out.items()}


class KeyScale:
    """``weights_mod``: attention to ``keys`` times ``factor`` in ``heads`` ({layer: [heads]}), rows renormalised."""

    def __init__(self, heads: dict[int, list[int]], keys: Sequence[int], factor: float) -> None:
        self.heads, self.keys, self.factor = heads, sorted(set(int(k) for k in keys)), float(factor)

    def __call__(self, view: LayerView, q0: int, weights: torch.Tensor) -> torch.Tensor:
        hs = self.heads.get(view.layer)
        s = weights.shape[-1]
        keys = [k for k in self.keys if 0 <= k < s]
        if not hs or not keys:
            return weights
        idx = torch.tensor(hs, device=weights.device)
        sel = weights.index_select(1, idx)  # [B, h, tq, S]
        scale = torch.ones(s, dtype=weights.dtype, device=weights.device)
        scale[keys] = self.factor
        new = sel * scale
        total = new.sum(-1, keepdim=True)  # [B, h, tq, 1]
        new = torch.where(total > 0, new / total.clamp_min(torch.finfo(new.dtype).tiny), sel)
        out = weights.clone()
        out[:, idx] = new
        return out


def _real_rows(view: LayerView, out: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: real (unpadded) query positions of each batch row."""
    b, _, t, _ = out.shape
    lengths = view.lengths if len(view.lengths) == b else [t] * b
    n = torch.tensor(lengths, device=out.device)[:, None]
    return torch.arange(t, device=out.device)[None, :] < n


class HeadMean:
    """``head_mod`` recording the mean of each head's output over every real token seen: ``mean[l]`` ``[H, d]``."""

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}

    def __call__(self, view: LayerView, out: torch.Tensor) -> torch.Tensor:
        real = _real_rows(view, out)  # [B, T]
        x = out.detach().double() * real[:, None, :, None]  # [B, H, T, d]
        s = x.sum(dim=(0, 2))  # [H, d]
        self.sums[view.layer] = self.sums.get(view.layer, 0) + s
        self.counts[view.layer] = self.counts.get(view.layer, 0) + int(real.sum())
        return out

    def means(self) -> dict[int, torch.Tensor]:
        return {layer: s / max(self.counts[layer], 1) for layer, s in self.sums.items()}


class HeadRecord:
    """``head_mod`` keeping each layer's head outputs ``[B, H, T, d]`` (detached)."""

    def __init__(self) -> None:
        self.outs: dict[int, torch.Tensor] = {}

    def __call__(self, view: LayerView, out: torch.Tensor) -> torch.Tensor:
        self.outs[view.layer] = out.detach().clone()
        return out


class HeadReplace:
    """``head_mod``: ``assign[layer]`` = ``[(row, head), ...]``; that row's head output becomes
    ``source[layer][head]`` (``[d]`` broadcast over positions, or ``[T, d]``)."""

    def __init__(self, assign: dict[int, list[tuple[int, int]]], source: dict[int, torch.Tensor]) -> None:
        self.assign, self.source = assign, source

    def __call__(self, view: LayerView, out: torch.Tensor) -> torch.Tensor:
        pairs = self.assign.get(view.layer)
        if not pairs:
            return out
        out = out.clone()
        src = self.source[view.layer]
        t = out.shape[2]
        for row, head in pairs:
            val = src[head].to(out.dtype)
            out[row, head] = val if val.dim() == 1 else val[:t]
        return out


def block_list(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The model's stack of transformer blocks: the first ``nn.ModuleList`` of ``n_layers`` modules
    that hold parameters (``model.layers``, ``transformer.h``, ``encoder.layer``...)."""
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and any(True for _ in module.parameters()):
            return module
    raise UnsupportedArchitecture(f"cannot find the {n_layers} transformer blocks of {type(model).__name__}")


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class ResidRecord:
    """Records the residual stream entering each block: ``resid[l]`` ``[B, T, D]``."""

    def __init__(self, model: nn.Module, n_layers: int) -> None:
        self.blocks, self.resid = block_list(model, n_layers), {}
        self._handles: list = []

    def __enter__(self) -> "ResidRecord":
        for layer, block in enumerate(self.blocks):
            def hook(module, args, kwargs, layer=layer):
                self.resid[layer] = _hidden_arg(args, kwargs).detach().clone()
            self._handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class ResidPatch:
    """Replaces the residual stream entering block ``l``: ``assign[l]`` = ``[(row, positions), ...]`` takes
    ``source[l][positions]`` (``source[l]`` ``[T, D]``) into that batch row at those positions."""

    def __init__(self, model: nn.Module, n_layers: int, assign: dict[int, list[tuple[int, list[int]]]],
                 source: dict[int, torch.Tensor]) -> None:
        self.blocks, self.assign, self.source = block_list(model, n_layers), assign, source
        self._handles: list = []

    def __enter__(self) -> "ResidPatch":
        for layer, pairs in self.assign.items():
            def hook(module, args, kwargs, layer=layer, pairs=pairs):
                hidden = _hidden_arg(args, kwargs).clone()
                src = self.source[layer].to(hidden.dtype)
                for row, positions in pairs:
                    pos = torch.as_tensor(positions, dtype=torch.long, device=hidden.device)
                    hidden[row, pos] = src[pos]
                return _with_hidden(args, kwargs, hidden)
            self._handles.append(self.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
