"""How full attention patterns (``prompt.{p}.blocks.{l}.attn.pattern``) are stored and read back.

Full patterns grow as ``layers x heads x T x T`` per prompt, so only image runs store them (and runs made before
ENGINE_VERSION 7); a text run stores thumbnails (``backend.engine.grid_reducer``) and computes a full pattern on
request (``backend.pattern_jobs``), stored the same way. They are stored in
``ATLAS_PATTERN_DTYPE`` (default float16: attention weights lie in [0, 1], where float16's rounding error is at
most 2**-12 ~ 2.4e-4 absolute and 2**-11 relative; float32 keeps them as computed), byte-shuffled and
zlib-compressed (:mod:`backend.tensor_io`). Every reader goes through :func:`as_view`, which returns float32.
"""

from __future__ import annotations

import numpy as np

STORED_DTYPES = ("float16", "float32")
DEFAULT_DTYPE = "float16"
FLOAT16_MAX_ABS_ERROR = 2.0**-12
"""Largest absolute rounding error of a weight in [0, 1] stored as float16 (half a unit in the last place at 1)."""
FLOAT16_ROW_SUM_ERROR = 2.0**-11
"""Bound on how far a stored row's sum is from 1: each weight rounds by at most 2^-11 of itself, and they sum to 1."""


def is_pattern(name: str) -> bool:
    """True for a stored full pattern's array name (see :func:`backend.names.attn_pattern`)."""
    return name.startswith("prompt.") and name.endswith(".attn.pattern")


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one a pattern may be stored in; a clear ``ValueError`` otherwise."""
    if dtype not in STORED_DTYPES:
        raise ValueError(f"ATLAS_PATTERN_DTYPE must be one of {', '.join(STORED_DTYPES)}, not {dtype!r}")
    return dtype


def for_storage(pattern: np.ndarray, dtype: str = DEFAULT_DTYPE) -> np.ndarray:
    """The pattern as it is stored: cast to ``dtype`` (float16 or float32)."""
    return np.asarray(pattern).astype(check_dtype(dtype), copy=False)


def as_view(pattern: np.ndarray) -> np.ndarray:
    """A stored pattern (float16 or float32) as float32, for figures and the API."""
    return np.asarray(pattern, dtype=np.float32)


def stored_bytes(n_layers: int, n_heads: int, n_tokens: int, dtype: str = DEFAULT_DTYPE,
                 causal: bool = False) -> int:
    """Bytes of one prompt's patterns (all layers and heads) in ``dtype`` before compression, counting only the
    entries that can be non-zero (a causal pattern's lower triangle: its upper one compresses to almost nothing)."""
    cells = n_tokens * (n_tokens + 1) // 2 if causal else n_tokens * n_tokens
    return n_layers * n_heads * cells * np.dtype(check_dtype(dtype)).itemsize
