"""Per-point data of the joint query-key maps (AttentionViz views), from a head's stored arrays. Pure NumPy.

A head's map is ``xy [n, 2]`` float32 and ``meta [n, 3]`` int32 (kind 0=query 1=key, prompt, position; see
``backend.names.embedding_meta``). The worker samples the same tokens for every head of a run, so everything
derived from ``meta`` alone (token kinds, hover contexts, search matches) is the same for all heads.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

QUERY, KEY = 0, 1
KIND_NAMES = ("query", "key")

TEXT_TOKEN_KINDS = ("special", "punctuation", "word")
IMAGE_TOKEN_KINDS = ("special", "patch")
_SPECIAL = re.compile(r"^(\[[A-Za-z_]+[0-9]*\]|<\|?[A-Za-z_/]+[0-9]*\|?>)$")
_PIECE_MARKS = ("##", "Ġ", "▁", "Ċ")  # WordPiece continuation, byte-level BPE and SentencePiece space marks


def clean_token(token: str) -> str:
    """The token's text without subword marks (``##ing`` -> ``ing``, ``Ġthe`` -> ``the``), lower-cased."""
    t = token
    for mark in _PIECE_MARKS:
        t = t.replace(mark, "")
    return t.strip().lower()


def token_kind(token: str, image: bool = False) -> str:
    """``special`` ([CLS], <s>, <|endoftext|>, register tokens), ``patch`` (image runs), ``punctuation``
    (only punctuation or symbol characters) or ``word``."""
    if _SPECIAL.match(token.strip()):
        return "special"
    if image:
        return "patch"
    text = clean_token(token)
    if text and all(unicodedata.category(ch)[0] in "PS" for ch in text):
        return "punctuation"
    return "word"


def token_kinds(tokens: Sequence[Sequence[str]], meta: np.ndarray, image: bool = False) -> np.ndarray:
    """``[n]`` int8 index into ``IMAGE_TOKEN_KINDS`` / ``TEXT_TOKEN_KINDS`` for every point of ``meta``."""
    names = IMAGE_TOKEN_KINDS if image else TEXT_TOKEN_KINDS
    code = {k: i for i, k in enumerate(names)}
    return _per_point(tokens, meta, lambda t: code[token_kind(t, image)], np.int8)


def _per_point(tokens: Sequence[Sequence[str]], meta: np.ndarray, fn: Callable[[str], object],
               dtype: type) -> np.ndarray:
    """``fn`` of each point's token, computed once per token of the run (not once per point)."""
    table = [[fn(t) for t in toks] for toks in tokens]
    return np.array([table[p][pos] for p, pos in meta[:, 1:].tolist()], dtype=dtype)


def normalised_positions(lengths: Sequence[int], meta: np.ndarray) -> np.ndarray:
    """``[n]`` float32 position / (prompt length - 1), in [0, 1] (0 for one-token prompts)."""
    span = np.maximum(np.asarray(lengths, dtype=np.float32) - 1.0, 1.0)
    return (meta[:, 2].astype(np.float32) / span[meta[:, 1]]).astype(np.float32)


def context(tokens: Sequence[str], position: int, width: int = 5) -> str:
    """The token in brackets with up to ``width`` tokens either side: ``… the black [cat] sat on …``."""
    lo, hi = max(0, position - width), min(len(tokens), position + width + 1)
    words = [f"[{t}]" if i == position else t for i, t in enumerate(tokens[lo:hi], start=lo)]
    return ("… " if lo > 0 else "") + " ".join(words) + (" …" if hi < len(tokens) else "")


def search_mask(tokens: Sequence[Sequence[str]], meta: np.ndarray, query: str) -> np.ndarray:
    """``[n]`` bool: points whose token equals ``query`` (case-insensitive, subword marks ignored).

    A query wrapped in slashes is a regular expression on the cleaned token (``/^th/``)."""
    q = (query or "").strip()
    if not q:
        return np.zeros(len(meta), dtype=bool)
    if len(q) > 2 and q.startswith("/") and q.endswith("/"):
        try:
            rx = re.compile(q[1:-1], re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        match = lambda t: bool(rx.search(clean_token(t)))  # noqa: E731
    else:
        target = clean_token(q)
        match = lambda t: clean_token(t) == target  # noqa: E731
    return _per_point(tokens, meta, match, bool)


def find_point(meta: np.ndarray, kind: int, prompt: int, position: int) -> int | None:
    """Index of the point ``(kind, prompt, position)`` in ``meta``, or None when that token was not sampled."""
    hit = np.flatnonzero((meta[:, 0] == kind) & (meta[:, 1] == prompt) & (meta[:, 2] == position))
    return int(hit[0]) if hit.size else None


def nearest_point(xy: np.ndarray, x: float, y: float) -> int | None:
    """Index of the point of ``xy [n, 2]`` nearest to ``(x, y)`` (a click reports the point's own coordinates)."""
    if len(xy) == 0:
        return None
    return int(np.argmin(((xy - np.array([x, y], dtype=np.float32)) ** 2).sum(axis=1)))


# ----------------------------------------------------------------------------------------------------------
# Matrix of all heads


@dataclass(frozen=True)
class Thumbnail:
    """A subsample of one head's map, fitted into a unit cell centred on 0: ``xy [m, 2]`` in [-0.5, 0.5],
    ``kind [m]`` (0 query, 1 key), ``index [m]`` indices into the head's full point list."""

    xy: np.ndarray
    kind: np.ndarray
    index: np.ndarray


def thumbnail_indices(meta: np.ndarray, per_head: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``per_head`` points, half queries and half keys, seeded (the same for every head
    of a run since the heads share ``meta``)."""
    rng = np.random.default_rng(seed)
    parts = []
    for kind in (QUERY, KEY):
        idx = np.flatnonzero(meta[:, 0] == kind)
        take = min(len(idx), per_head // 2)
        parts.append(np.sort(rng.choice(idx, size=take, replace=False)) if take < len(idx) else idx)
    return np.sort(np.concatenate(parts)).astype(np.int64)


def fit_cell(xy: np.ndarray, margin: float = 0.06) -> np.ndarray:
    """Scale and centre a map into ``[-0.5 + margin, 0.5 - margin]`` keeping its aspect ratio; float32."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) == 0:
        return xy.astype(np.float32).reshape(0, 2)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = float((hi - lo).max())
    scale = (1.0 - 2 * margin) / span if span > 0 else 0.0
    return ((xy - (lo + hi) / 2.0) * scale).astype(np.float32)


def thumbnail(xy: np.ndarray, meta: np.ndarray, index: np.ndarray) -> Thumbnail:
    """The points ``index`` of a head's map, fitted into a unit cell (:func:`fit_cell` on the whole map, so
    the thumbnail keeps the full map's frame)."""
    cell = fit_cell(xy)
    return Thumbnail(xy=cell[index], kind=meta[index, 0].astype(np.int8), index=index)


def cell_of(x: float, y: float, n_layers: int, n_heads: int) -> tuple[int, int] | None:
    """The (layer, head) of a click at ``(x, y)`` in matrix coordinates (cell ``(l, h)`` is centred on
    ``x = h, y = l``), or None outside the grid."""
    layer, head = int(round(float(y))), int(round(float(x)))
    if 0 <= layer < n_layers and 0 <= head < n_heads:
        return layer, head
    return None
