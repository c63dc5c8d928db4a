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
