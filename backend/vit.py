"""ViT patch attention, pure NumPy: CLS->patch maps, attention rollout, upsampling, high-norm tokens.

Token layout of an image run (``backend.engine.inputs.patch_tokens``): ``[CLS]``, then the register
tokens if the model has them (``[REG0]``, ...; ``config.num_register_tokens``), then the patches row by
row (``patch r{r} c{c}``). ``n_prefix`` is the number of tokens before the first patch.

Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers"), as
:func:`rollout` computes it, per layer ``l = 1..L``:

1. fuse the heads of ``A_l [H, T, T]``: mean (the paper), or the element-wise max / min over heads
   (offered by the common implementations, e.g. jacobgil/vit-explain);
2. optionally drop the lowest attentions (``discard_rule``, :data:`DISCARD_RULES`):

   * ``"all_entries"`` (default; jacobgil/vit-explain ``vit_rollout.py``): take the
     ``int(T*T*discard_ratio)`` smallest entries of the whole fused matrix and set them to 0, except the
     CLS->CLS entry (flat index 0), which is spared (so one entry fewer is zeroed when it is among them);
   * ``"spare_cls"`` (Attention Atlas variant, the rule of engine versions <= 4): entries in the CLS row
     and the CLS column are never dropped, and the fraction is taken of the other entries;
3. add the residual: ``0.5 * A + 0.5 * I``;
4. renormalise every row to sum to 1 (row-stochastic; vit-explain's ``a / a.sum(dim=-1)`` broadcasts
   over columns instead, which is a known quirk we do not copy);
5. multiply across layers: ``R = A_L ... A_2 A_1``.

The CLS row of ``R`` over the patch columns is the patch relevance (:func:`rollout_grid`; raw values,
vit-explain divides them by their max for display).

High-norm tokens (Darcet et al., ICLR 2024, "Vision Transformers Need Registers"): a few (background)
patches get output norms far above the rest. :func:`high_norm_tokens` flags a token when its norm is
above a threshold computed over the patch tokens of that layer: rule ``"sd"`` (default) ``mean + 3 sd``,
rule ``"median"`` ``2 x median``. Prefix tokens (CLS, registers) are shown but never flagged: their
norms differ by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from backend import vocab

FUSIONS = ("mean", "max", "min")
DISCARD_RULES = {r.name: f"{r.label}: {r.source}" for r in vocab.DISCARD_RULES}
DEFAULT_DISCARD_RULE = vocab.DISCARD_RULES[0].name
NORM_RULES = {"sd": "norm > mean + 3 sd of the layer's patch norms",
              "median": "norm > 2 x median of the layer's patch norms"}
_PATCH = re.compile(r"^patch r(\d+) c(\d+)$")


@dataclass(frozen=True)
class TokenLayout:
    """Where the patches sit in an image run's token sequence."""

    n_prefix: int  # tokens before the first patch (CLS + registers)
    rows: int
    cols: int
    registers: tuple[int, ...] = ()  # positions of register tokens

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    def patch_index(self, row: int, col: int) -> int:
        """Token position of the patch at (row, col)."""
        return self.n_prefix + row * self.cols + col

    def patch_at(self, position: int) -> tuple[int, int] | None:
        """(row, col) of the token at ``position``, or None for a prefix token."""
        i = position - self.n_prefix
        if not 0 <= i < self.n_patches:
            return None
        return divmod(i, self.cols)


def token_layout(tokens: Sequence[str]) -> TokenLayout:
    """Parse an image run's token names; ValueError when they are not CLS/registers + a patch grid."""
    first, cells = None, []
    for i, t in enumerate(tokens):
        m = _PATCH.match(t)
        if m:
            if first is None:
                first = i
            cells.append((int(m.group(1)), int(m.group(2))))
        elif first is not None:
            raise ValueError(f"token {i} ({t!r}) follows the patches; not a ViT token layout")
    if first is None:
        raise ValueError("no patch tokens: this is not an image run")
    rows = max(r for r, _ in cells) + 1
    cols = max(c for _, c in cells) + 1
    if cells != [(r, c) for r in range(rows) for c in range(cols)]:
        raise ValueError("patch tokens do not form a row-major grid")
    registers = tuple(i for i, t in enumerate(tokens[:first]) if t.upper().startswith("[REG"))
    return TokenLayout(n_prefix=first, rows=rows, cols=cols, registers=registers)


def _grid_shape(grid: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(grid, (int, np.integer)):
        return int(grid), int(grid)
    rows, cols = grid
    return int(rows), int(cols)


def cls_patch_attention(pattern: np.ndarray, grid: int | tuple[int, int], n_prefix: int = 1,
                        query: int = 0) -> np.ndarray:
    """``pattern [H, T, T]`` -> ``[H, rows, cols]``: the attention row of token ``query`` (default CLS)
    over the patch keys, reshaped to the patch grid (row-major). A ``[T, T]`` pattern gives ``[rows, cols]``."""
    pat = np.asarray(pattern)
    single = pat.ndim == 2
    if single:
        pat = pat[None]
    if pat.ndim != 3 or pat.shape[1] != pat.shape[2]:
        raise ValueError(f"pattern must be [H, T, T], got {pattern.shape}")
    rows, cols = _grid_shape(grid)
    if n_prefix + rows * cols != pat.shape[-1]:
        raise ValueError(f"{n_prefix} prefix tokens + {rows}x{cols} patches != {pat.shape[-1]} tokens")
    if not 0 <= query < pat.shape[1]:
        raise ValueError(f"query {query} outside 0..{pat.shape[1] - 1}")
    out = pat[:, query, n_prefix:].reshape(pat.shape[0], rows, cols)
    return out[0] if single else out


def fuse_heads(pattern: np.ndarray, fusion: str = "mean") -> np.ndarray:
    """``[H, T, T]`` -> ``[T, T]``: mean, max or min over heads."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}")
    pat = np.asarray(pattern, dtype=np.float64)
    return {"mean": np.mean, "max": np.max, "min": np.min}[fusion](pat, axis=0)


def _discard(a: np.ndarray, ratio: float, keep: Sequence[int], rule: str = DEFAULT_DISCARD_RULE) -> np.ndarray:
    """Zero the ``ratio`` fraction of the smallest entries by ``rule`` (:data:`DISCARD_RULES`).

    ``all_entries``: the ``int(size * ratio)`` smallest of all entries, then the entries ``(k, k)`` for ``k``
    in ``keep`` (CLS->CLS) are left as they were. ``spare_cls``: the fraction of the entries outside the
    rows and columns ``keep``. Ties: the lower flat index is dropped first (stable order)."""
    if rule not in DISCARD_RULES:
        raise ValueError(f"discard rule must be one of {', '.join(DISCARD_RULES)}")
    keep = list(keep)
    cand = np.ones(a.shape, dtype=bool)
    if rule == "spare_cls":
        cand[keep, :] = False
        cand[:, keep] = False
    flat_idx = np.flatnonzero(cand)
    k = int(flat_idx.size * ratio)
    if k <= 0:
        return a
    order = np.argsort(a.ravel()[flat_idx], kind="stable")[:k]
    drop = np.zeros(a.size, dtype=bool)
    drop[flat_idx[order]] = True
    if rule == "all_entries":
        drop[[k_ * a.shape[1] + k_ for k_ in keep]] = False
    out = a.copy()
    out.ravel()[drop] = 0.0
    return out


def rollout(patterns: Sequence[np.ndarray], fusion: str = "mean", discard_ratio: float = 0.0,
            keep: Sequence[int] = (0,), discard_rule: str = DEFAULT_DISCARD_RULE) -> np.ndarray:
    """Attention rollout over ``patterns`` (first layer first, each ``[H, T, T]``) -> ``[T, T]`` float64.

    See the module docstring for the steps; ``keep`` are the token positions (default: CLS) that the
    discard spares (``all_entries``: their diagonal entries; ``spare_cls``: their rows and columns)."""
    if not patterns:
        raise ValueError("rollout needs at least one layer")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}")
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise ValueError("discard_ratio must be in [0, 1)")
    if discard_rule not in DISCARD_RULES:
        raise ValueError(f"discard rule must be one of {', '.join(DISCARD_RULES)}")
    n = np.asarray(patterns[0]).shape[-1]
    eye = np.eye(n)
    result = eye.copy()
    for pat in patterns:
        a = fuse_heads(pat, fusion)
        if a.shape != (n, n):
            raise ValueError(f"every layer must be [H, {n}, {n}], got {np.asarray(pat).shape}")
        if discard_ratio > 0:
            a = _discard(a, float(discard_ratio), keep, discard_rule)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(axis=-1, keepdims=True)
        result = a @ result
    return result


def rollout_grid(patterns: Sequence[np.ndarray], layout: TokenLayout, fusion: str = "mean",
                 discard_ratio: float = 0.0, discard_rule: str = DEFAULT_DISCARD_RULE) -> np.ndarray:
    """Patch relevance ``[rows, cols]``: the CLS row of :func:`rollout` over the patch columns."""
    r = rollout(patterns, fusion, discard_ratio, keep=(0,), discard_rule=discard_rule)
    return r[0, layout.n_prefix:].reshape(layout.rows, layout.cols)


def upsample_bilinear(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of ``grid [h, w]`` to ``size = (height, width)``.

    Each grid value sits at the centre of its cell (half-pixel centres, edges clamped): the same as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``."""
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError(f"grid must be 2-D, got shape {g.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError("size must be positive")
    h, w = g.shape

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, x - lo

    y0, y1, fy = coords(out_h, h)
    x0, x1, fx = coords(out_w, w)
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x1] * fx
    bottom = g[y1][:, x0] * (1 - fx) + g[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def norm_threshold(norms: np.ndarray, rule: str = "sd", among: np.ndarray | None = None) -> float:
    """The outlier threshold of one layer's token norms ``[T]`` (statistics over ``among``, a bool mask)."""
    if rule not in NORM_RULES:
        raise ValueError(f"rule must be one of {', '.join(NORM_RULES)}")
    x = np.asarray(norms, dtype=np.float64)
    vals = x[among] if among is not None else x
    if vals.size == 0:
        return float("inf")
    if rule == "sd":
        return float(vals.mean() + 3.0 * vals.std())
    return float(2.0 * np.median(vals))


def high_norm_tokens(norms: np.ndarray, rule: str = "sd", among: np.ndarray | None = None) -> np.ndarray:
    """Bool mask ``[T]`` (or ``[L, T]`` for ``[L, T]`` norms): tokens in ``among`` (default all) whose norm
    is above :func:`norm_threshold` (rules in ``NORM_RULES``)."""
    x = np.asarray(norms, dtype=np.float64)
    if x.ndim == 2:
        return np.stack([high_norm_tokens(row, rule, among) for row in x])
    mask = np.ones(x.shape, dtype=bool) if among is None else np.asarray(among, dtype=bool)
    return (x > norm_threshold(x, rule, mask)) & mask


def patch_mask(layout: TokenLayout) -> np.ndarray:
    """Bool ``[T]``: True at the patch tokens."""
    m = np.zeros(layout.n_tokens, dtype=bool)
    m[layout.n_prefix:] = True
    return m
