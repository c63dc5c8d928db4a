"""The "embedding" stage: sample each head's queries and keys during capture, then project them jointly
(AttentionViz normalisation; UMAP/t-SNE/PCA) per head, with and without normalisation (``*_raw``)."""

from __future__ import annotations

from typing import Any

from backend.engine.embedding_reducer import QKSampleReducer, compute_head_maps


class EmbeddingSampler(QKSampleReducer):
    """The QK sampler as a run reducer: it emits nothing itself; the stage below projects its samples."""

    def samples(self) -> dict:
        return QKSampleReducer.results(self)

    def results(self) -> dict:
        return {}


def reducers(loaded, options: dict[str, Any]) -> list:
    """The sampler, when the run asks for "embedding"."""
    if "embedding" not in options.get("analyses", []):
        return []
    return [EmbeddingSampler(loaded.n_layers, loaded.n_heads, int(options["max_points_per_head"]), int(options["seed"]))]


def embedding_stage(loaded, inputs, options, reducers, emit, progress, should_cancel, info) -> None:
    sampler = next(r for r in reducers if isinstance(r, EmbeddingSampler))

    def report(done: int, total: int) -> None:
        progress(done / max(total, 1), f"query-key maps: {done}/{total}")

    maps = compute_head_maps(sampler.samples(), options["embedding_methods"], seed=int(options["seed"]),
                             normalise=True, raw=True, progress=report, should_cancel=should_cancel)
    for name, arr in maps.items():
        emit(name, arr)

