"""The "embedding" stage: sample each head's queries and keys during capture, then project them jointly
(AttentionViz normalisation; UMAP/t-SNE/PCA) per head; with the "embedding_raw" analysis, the maps without
normalisation (``*_raw``) too.

The maps without normalisation are computed on request: they double the stage's cost (one projection per head and
variant: 270 UMAP fits on SmolLM2) for a view few users open, so a run has them when it asks for "embedding_raw",
or once the maps page's normalisation switch extends the run with it (:func:`backend.jobs.extend`: the capture
pass samples the same queries and keys again, seeded, and only the raw maps are projected). Either way they are
the maps the earlier combined stage computed, bit for bit (tests/unit/test_projections.py).
"""

from __future__ import annotations

from typing import Any

from backend.engine.embedding_reducer import QKSampleReducer, compute_head_maps
from backend.vocab import RAW_MAPS


class EmbeddingSampler(QKSampleReducer):
    """The QK sampler as a run reducer: it emits nothing itself; the stage below projects its samples."""

    def samples(self) -> dict:
        return QKSampleReducer.results(self)

    def results(self) -> dict:
        return {}


def reducers(loaded, options: dict[str, Any]) -> list:
    """The sampler, when the run asks for "embedding" or "embedding_raw"."""
    analyses = options.get("analyses", [])
    if "embedding" not in analyses and RAW_MAPS not in analyses:
        return []
    return [EmbeddingSampler(loaded.n_layers, loaded.n_heads, int(options["max_points_per_head"]), int(options["seed"]))]


def embedding_stage(loaded, inputs, options, reducers, emit, progress, should_cancel, info) -> None:
    """The normalised maps ("embedding") and/or those without normalisation ("embedding_raw")."""
    sampler = next(r for r in reducers if isinstance(r, EmbeddingSampler))
    analyses = options.get("analyses", [])

    def report(done: int, total: int) -> None:
        progress(done / max(total, 1), f"query-key maps: {done}/{total}")

    maps = compute_head_maps(sampler.samples(), options["embedding_methods"], seed=int(options["seed"]),
                             normalise=True, raw=RAW_MAPS in analyses, normalised="embedding" in analyses,
                             progress=report, should_cancel=should_cancel)
    for name, arr in maps.items():
        emit(name, arr)
