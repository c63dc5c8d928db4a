"""Full patterns are stored float16 (or float32 by setting), byte-shuffled and compressed, and read back as float32."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backend import names, patterns, tensor_io
from backend.settings import Settings


def _causal_pattern(h: int, t: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(h, t, t)) * 3
    s[:, np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_float16_storage_error_is_within_the_documented_bound() -> None:
    a = _causal_pattern(4, 64)
    back = patterns.as_view(tensor_io.decode(tensor_io.encode(patterns.for_storage(a), compress=True, shuffle=True)))
    assert back.dtype == np.float32 and back.shape == a.shape
    err = np.abs(back - a).max()
    assert 0 < err <= patterns.FLOAT16_MAX_ABS_ERROR
    np.testing.assert_allclose(back.sum(-1), 1.0, atol=64 * patterns.FLOAT16_MAX_ABS_ERROR)
    assert (back[:, np.triu_indices(64, 1)[0], np.triu_indices(64, 1)[1]] == 0).all()  # masked stays exactly zero


def test_shuffle_makes_float_patterns_smaller() -> None:
    a = patterns.for_storage(_causal_pattern(4, 128))
    plain = tensor_io.encode(a, compress=True)
    shuffled = tensor_io.encode(a, compress=True, shuffle=True)
    assert len(shuffled) < len(plain) < a.nbytes
    np.testing.assert_array_equal(tensor_io.decode(shuffled), a)


def test_stored_bytes_counts_the_causal_triangle_and_the_dtype() -> None:
    assert patterns.stored_bytes(2, 3, 4, "float32") == 2 * 3 * 16 * 4
    assert patterns.stored_bytes(2, 3, 4, "float16", causal=True) == 2 * 3 * 10 * 2
    # SmolLM2 (30 layers x 9 heads) at 1,024 tokens fits the default budget; at 2,048 it does not
    budget = Settings().max_pattern_mb << 20
    assert patterns.stored_bytes(30, 9, 1024, "float16", causal=True) <= budget
    assert patterns.stored_bytes(30, 9, 2048, "float16", causal=True) > budget


def test_pattern_dtype_setting(monkeypatch) -> None:
    assert Settings.from_env().pattern_dtype == "float16"
    monkeypatch.setenv("ATLAS_PATTERN_DTYPE", "float32")
    assert Settings.from_env().pattern_dtype == "float32"
    monkeypatch.setenv("ATLAS_PATTERN_DTYPE", "bfloat16")
    with pytest.raises(ValueError, match="ATLAS_PATTERN_DTYPE must be one of float16, float32"):
        Settings.from_env()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cache_stores_patterns_in_the_chosen_dtype(cache, dtype, monkeypatch) -> None:
    from backend import keys
    from backend.cache import Cache

    c = Cache(cache.r, dataclasses.replace(cache.s, pattern_dtype=dtype))
    run = f"pattern-{dtype}"
    a = _causal_pattern(12, 96)
    other = np.linspace(0, 1, 20_000, dtype=np.float32)  # not a pattern: kept as it is
    sizes = c.put_arrays(run, [(names.attn_pattern(0, 0), a), ("metrics.other", other)])
    try:
        stored = c.get_array(run, names.attn_pattern(0, 0))
        assert stored.dtype == np.dtype(dtype)
        np.testing.assert_allclose(patterns.as_view(stored), a, atol=patterns.FLOAT16_MAX_ABS_ERROR if dtype ==
                                   "float16" else 0)
        assert sizes[names.attn_pattern(0, 0)] == len(c.r.get(keys.run_tensor(c.prefix, run, names.attn_pattern(0, 0))))
        assert sizes[names.attn_pattern(0, 0)] < a.nbytes / (2 if dtype == "float16" else 1)  # compressed
        np.testing.assert_array_equal(c.get_array(run, "metrics.other"), other)
    finally:
        c.delete_arrays(run)
