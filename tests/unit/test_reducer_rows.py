"""SinkMetricsReducer's per-row sums (entropy through clamp + log into a reused scratch buffer, distance, previous
token, column sums, all under one intra-op thread) against a direct float64 computation on hand-built padded
patterns with exact zeros and subnormal weights on real keys, chunk by chunk and whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import names
from backend.engine.capture import LayerView
from backend.engine.metrics_reducer import SinkMetricsReducer
from backend.engine.threads import one_thread

LENGTHS = [7, 5, 2]
H, T = 3, 7


def padded_patterns(causal: bool, seed: int = 0) -> torch.Tensor:
    """``[B, H, T, T]`` float32 rows of a softmax over the real keys (zero on padded keys, and on future keys when
    causal), with an exact zero and a subnormal weight on real keys of some rows; padded query rows are noise."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(LENGTHS), H, T, T, generator=g) * 3
    keys = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]  # [B, S]
    allowed = keys[:, None, None, :].expand(-1, H, T, -1).clone()
    if causal:
        allowed &= torch.ones(T, T, dtype=torch.bool).tril()
    p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    p[0, 1, 4, 2] = 0.0  # a real key with exactly zero weight
    p[0, 2, 6, 3] = 1e-40  # a subnormal weight
    p[1, 0, 3, 1] = 0.0
    return p.contiguous()


def direct(a: np.ndarray, causal: bool, special: np.ndarray) -> dict[str, np.ndarray]:
    """One prompt ``[H, n, n]`` in float64, written out: the per-head metrics and the received alpha ``[H, n]``."""
    a = a.astype(np.float64)
    n = a.shape[-1]
    seeing = np.array([n - k if causal else n for k in range(n)], dtype=np.float64)
    alpha = a.sum(axis=1) / seeing
    logs = np.log(a, out=np.zeros_like(a), where=a > 0)
    dist = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    return {
        "received": alpha,
        "sink_first": alpha[:, 0],
        "sink_special": alpha[:, special].mean(axis=1),
        "entropy": -(a * logs).sum(-1).mean(-1),
        "distance": (a * dist).sum(-1).mean(-1),
        "previous_token": np.array([a[h, np.arange(1, n), np.arange(n - 1)].mean() for h in range(len(a))]),
    }


def run_reducer(p: torch.Tensor, causal: bool, chunk: int, special: torch.Tensor) -> dict[str, np.ndarray]:
    r = SinkMetricsReducer(1, H, causal=causal)
    qk = torch.zeros(len(LENGTHS), H, T, 4)
    view = LayerView(0, qk, qk, 1.0, list(range(len(LENGTHS))), list(LENGTHS), special)
    r.begin_layer(view)
    for q0 in range(0, T, chunk):
        r.chunk(view, q0, p[:, :, q0:q0 + chunk])
    r.end_layer(view)
    return r.results()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [T, 3])
def test_per_row_sums_equal_a_direct_computation(causal: bool, chunk: int) -> None:
    p = padded_patterns(causal)
    special = torch.zeros(len(LENGTHS), T, dtype=torch.bool)
    for b, n in enumerate(LENGTHS):
        special[b, 0] = special[b, n - 1] = True
    got = run_reducer(p, causal, chunk, special)
    want = [direct(p[b, :, :n, :n].numpy(), causal, special[b, :n].numpy()) for b, n in enumerate(LENGTHS)]
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(got[names.attn_received(b, 0)], want[b]["received"], atol=1e-6)
        np.testing.assert_allclose(got[names.SINK_ALPHA_FIRST][b, 0], want[b]["sink_first"], atol=1e-6)
    for m in ("sink_first", "sink_special", "entropy", "distance", "previous_token"):
        mean = np.mean([w[m] for w in want], axis=0)
        np.testing.assert_allclose(got[names.metric(m)][0], mean, atol=1e-6, err_msg=m)
    assert np.isfinite(got[names.metric("entropy")]).all()


def test_entropy_of_zero_and_subnormal_weights_is_finite_and_exact() -> None:
    """A one-hot row has entropy 0 (0 log 0 = 0); a subnormal weight adds ~1e-38, not NaN or -inf."""
    p = torch.zeros(1, 1, 2, 2)
    p[0, 0, 0, 0] = 1.0
    p[0, 0, 1] = torch.tensor([1.0, 1e-40])
    assert run_reducer_single(p) == pytest.approx(0.0, abs=1e-30)
    p[0, 0, 1] = torch.tensor([0.25, 0.75])
    assert run_reducer_single(p) == pytest.approx(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) / 2, rel=1e-6)


def run_reducer_single(p: torch.Tensor) -> float:
    r = SinkMetricsReducer(1, 1, causal=False)
    qk = torch.zeros(1, 1, 2, 4)
    view = LayerView(0, qk, qk, 1.0, [0], [2], None)
    r.begin_layer(view)
    r.chunk(view, 0, p)
    r.end_layer(view)
    return float(r.results()[names.metric("entropy")][0, 0])


def test_chunk_runs_on_one_thread_and_restores_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    original = SinkMetricsReducer._chunk_sums

    def spy(self, view, q0, pattern):
        seen.append(torch.get_num_threads())
        return original(self, view, q0, pattern)

    monkeypatch.setattr(SinkMetricsReducer, "_chunk_sums", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_reducer(padded_patterns(False), False, 3, None)
        assert seen == [1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_one_thread_restores_the_count_on_errors() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError), one_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
