"""MassiveActivationReducer's medians: numpy's partition per prompt (CPU), one sort for the batch or one kthvalue
per prompt (GPU paths): all give numpy's median of each prompt's real entries (odd and even counts, padding)."""

from __future__ import annotations

import numpy as np
import torch

from backend import names
from backend.engine.metrics_reducer import MassiveActivationReducer


def test_every_median_path_equals_numpy() -> None:
    rng = np.random.default_rng(3)
    lengths = [7, 4, 1, 0, 6]  # with D = 5: 35 (odd), 20 (even), 5, nothing, 30 entries
    h = torch.as_tensor(rng.normal(size=(5, 7, 5)), dtype=torch.float32).abs()
    h[1, 4:] = 1e6  # padding that must not count
    want = [float(np.median(h[p, :n].numpy().astype(np.float32))) for p, n in enumerate(lengths) if n]
    r = MassiveActivationReducer(1)
    for method in ("numpy", "sort", "kthvalue", "auto"):
        got = [m for m, n in zip(r._medians(h, lengths, method), lengths) if n]
        assert got == want, method


def test_reducer_results_on_a_padded_batch() -> None:
    rng = np.random.default_rng(4)
    lengths = [7, 4, 0]
    h = torch.as_tensor(rng.normal(size=(3, 7, 5)), dtype=torch.float32)
    r = MassiveActivationReducer(1)
    r.hidden(0, h, [0, 1, 2], lengths)
    res = r.results()
    assert names.resid_absmax(2, 0) not in res
    ratios = []
    for p, n in enumerate(lengths[:2]):
        a = np.abs(h[p, :n].numpy())
        np.testing.assert_array_equal(res[names.resid_absmax(p, 0)], a.max(-1))
        np.testing.assert_array_equal(res[names.resid_absmax_dim(p, 0)], a.argmax(-1))
        ratios.append(a.max() / np.median(a))
    np.testing.assert_allclose(res["metrics.massive_ratio"], [np.mean(ratios)], rtol=1e-6)


def test_one_selection_median_equals_torch_median_per_prompt() -> None:
    """The CPU path (one partition per prompt, then the largest entry left of the upper middle for even counts)
    against torch.median per prompt: odd counts its value, even counts the mean of it (the lower middle) and the
    upper middle; with many ties (values drawn from a few integers) and padding that must not count."""
    rng = np.random.default_rng(5)
    lengths = [9, 8, 3, 2, 1, 0]  # with D = 3: 27 (odd), 24 (even), 9, 6, 3, nothing
    for h in (rng.normal(size=(6, 9, 3)), rng.integers(0, 4, size=(6, 9, 3))):
        h = torch.as_tensor(h, dtype=torch.float32).abs()
        h[2, 3:] = 1e6
        got = MassiveActivationReducer(1)._medians(h, lengths, "numpy")
        for p, n in enumerate(lengths):
            if not n:
                assert np.isnan(got[p])
                continue
            flat = h[p, :n].flatten()
            lower = torch.median(flat)
            want = lower if flat.numel() % 2 else (lower + flat.kthvalue(flat.numel() // 2 + 1).values) / 2
            assert got[p] == float(want), (p, n)


def test_hidden_top_and_dim_equal_torch_max_with_ties_and_one_thread_after() -> None:
    """The CPU path's numpy argmax gives torch.max's values and first indices on ties; the thread count is
    restored afterwards."""
    h = torch.as_tensor(np.random.default_rng(6).integers(-3, 4, size=(2, 5, 6)), dtype=torch.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = MassiveActivationReducer(1)
        r.hidden(0, h, [0, 1], [5, 3])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    res = r.results()
    top, dim = h.abs().max(dim=-1)
    for p, n in enumerate([5, 3]):
        np.testing.assert_array_equal(res[names.resid_absmax(p, 0)], top[p, :n].numpy())
        np.testing.assert_array_equal(res[names.resid_absmax_dim(p, 0)], dim[p, :n].numpy())
