"""MassiveActivationReducer takes every prompt's median in one sort for small batches, one kthvalue per prompt
for large ones: both give numpy's median of each prompt's real entries (odd and even counts, padded rows)."""

from __future__ import annotations

import numpy as np
import torch

from backend import names
from backend.engine.metrics_reducer import MassiveActivationReducer


def test_sort_and_kthvalue_paths_agree_with_numpy(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    lengths = [7, 4, 1, 0, 6]  # with D = 5: 35 (odd), 20 (even), 5, nothing, 30 entries
    h = torch.as_tensor(rng.normal(size=(5, 7, 5)), dtype=torch.float32)
    h[1, 4:] = 1e6  # padding that must not count
    results = []
    for limit in (1 << 22, 0):  # the batched sort, then the per-prompt kthvalue
        monkeypatch.setattr(MassiveActivationReducer, "SORT_MAX_ELEMENTS", limit)
        r = MassiveActivationReducer(1)
        r.hidden(0, h, [0, 1, 2, 3, 4], lengths)
        results.append(r.results())
    for p, n in enumerate(lengths):
        if n == 0:
            assert names.resid_absmax(p, 0) not in results[0]
            continue
        a = np.abs(h[p, :n].numpy())
        for res in results:
            np.testing.assert_array_equal(res[names.resid_absmax(p, 0)], a.max(-1))
            np.testing.assert_array_equal(res[names.resid_absmax_dim(p, 0)], a.argmax(-1))
    ratios = [np.mean([np.abs(h[p, :n].numpy()).max() / np.median(np.abs(h[p, :n].numpy()))
                       for p, n in enumerate(lengths) if n])]
    for res in results:
        np.testing.assert_allclose(res["metrics.massive_ratio"], ratios, rtol=1e-6)
