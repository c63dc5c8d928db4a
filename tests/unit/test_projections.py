"""Joint query-key maps: normalisation keeps attention order, projections are reproducible, sampling is even,
and the QK reducer stores vectors whose dot products are the model's attention logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backend import embedding_projection, names
from backend.engine.capture import ATTN_IMPLEMENTATION, BaseReducer, CaptureSession
from backend.engine.embedding_reducer import QKSampleReducer, compute_head_maps
from tests.unit.tiny_models import VOCAB, build, sample_inputs

FAST = settings(max_examples=60, deadline=None)


def _vectors(rows: int, d: int):
    return arrays(np.float64, (rows, d), elements=st.floats(-10, 10, allow_nan=False, width=32))


@st.composite
def qk_pairs(draw):
    d = draw(st.integers(1, 6))
    q = draw(_vectors(draw(st.integers(1, 8)), d))
    k = draw(_vectors(draw(st.integers(1, 8)), d))
    return q, k


# ----------------------------------------------------------------------------------------------------------
# normalise_qk


@FAST
@given(qk_pairs(), st.booleans(), st.booleans())
def test_normalisation_keeps_each_querys_key_order(pair, translate, scale) -> None:
    q, k = pair
    qn, kn = embedding_projection.normalise_qk(q, k, translate=translate, scale=scale)
    assert qn.dtype == kn.dtype == np.float32 and qn.shape == q.shape and kn.shape == k.shape
    before = q @ k.T  # [n_q, n_k] logits (up to the model's scaling)
    after = qn.astype(np.float64) @ kn.astype(np.float64).T
    shift = after - before  # translation adds q_i . (mean q - mean k) to every key of query i
    tol = 1e-4 * (1.0 + np.abs(before).max() + np.abs(after).max())
    assert np.allclose(shift, shift[:, :1], atol=tol)
    for i in range(len(q)):
        for j in range(len(k)):
            for m in range(len(k)):
                if before[i, j] > before[i, m] + 2 * tol:
                    assert after[i, j] > after[i, m]


@FAST
@given(qk_pairs())
def test_scaling_alone_keeps_every_dot_product(pair) -> None:
    q, k = pair
    qn, kn = embedding_projection.normalise_qk(q, k, translate=False, scale=True)
    before = q @ k.T
    after = qn.astype(np.float64) @ kn.astype(np.float64).T
    assert np.allclose(after, before, rtol=1e-5, atol=1e-4 * (1 + np.abs(before).max()))
    nq, nk = np.linalg.norm(qn, axis=1).mean(), np.linalg.norm(kn, axis=1).mean()
    if np.linalg.norm(q, axis=1).mean() > 1e-3 and np.linalg.norm(k, axis=1).mean() > 1e-3:
        assert nq == pytest.approx(nk, rel=1e-4)


def test_translation_moves_key_centroid_onto_query_centroid() -> None:
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(40, 5)), rng.normal(loc=3.0, size=(30, 5))
    qn, kn = embedding_projection.normalise_qk(q, k, translate=True, scale=False)
    assert np.allclose(kn.mean(0), qn.mean(0), atol=1e-5)
    assert np.allclose(qn, q, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# sampling


@FAST
@given(st.lists(st.integers(0, 30), max_size=12), st.integers(0, 120), st.integers(0, 3))
def test_sample_indices_caps_and_spreads_evenly(counts, cap, seed) -> None:
    idx = embedding_projection.sample_indices(counts, cap, seed)
    total = sum(counts)
    assert idx.dtype == np.int64 and len(idx) == min(cap, total)
    assert np.all(np.diff(idx) > 0) and (len(idx) == 0 or (idx[0] >= 0 and idx[-1] < total))
    edges = np.concatenate([[0], np.cumsum(counts)])
    got = np.array([((idx >= a) & (idx < b)).sum() for a, b in zip(edges[:-1], edges[1:])], dtype=int)
    assert np.all(got <= np.asarray(counts, dtype=int))
    for p in range(len(counts)):  # nobody has fewer than another minus one, unless it has given all it has
        assert got[p] == counts[p] or got[p] >= got.max() - 1
    assert np.array_equal(idx, embedding_projection.sample_indices(counts, cap, seed))


@FAST
@given(st.lists(st.integers(0, 30), min_size=1, max_size=10), st.integers(0, 80))
def test_adding_a_prompt_never_raises_another_prompts_share(counts, cap) -> None:
    """What lets the reducer trim while streaming and still end with the offline sample."""
    before = embedding_projection.allocate(counts[:-1], cap)
    after = embedding_projection.allocate(counts, cap)
    assert np.all(after[:-1] <= before)


# ----------------------------------------------------------------------------------------------------------
# projections


def _blobs(n: int = 120, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(3, d))
    return (centres[rng.integers(0, 3, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_projection_shape_dtype_and_seed(method: str) -> None:
    x = _blobs(n=60 if method == "tsne" else 120)
    y = embedding_projection.project(x, method, seed=1)
    assert y.shape == (len(x), 2) and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.array_equal(y, embedding_projection.project(x, method, seed=1))
    if method != "pca":
        assert not np.allclose(y, embedding_projection.project(x, method, seed=2))


@pytest.mark.parametrize("n", [0, 1, 2, 5, 29])
def test_tiny_sets_get_a_map_too(n: int) -> None:
    y = embedding_projection.project(_blobs(n=max(n, 1))[:n], "umap", seed=0)
    assert y.shape == (n, 2) and y.dtype == np.float32 and np.isfinite(y).all()


def test_wide_heads_search_neighbours_in_a_subspace_that_keeps_dot_products() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 10)) @ rng.normal(size=(10, 96))).astype(np.float32)  # rank 10 in 96 dims
    z = embedding_projection._search_space(x)
    assert z.shape == (200, embedding_projection.FAST_PCA_DIMS)
    gram = x.astype(np.float64) @ x.T
    assert np.allclose(z.astype(np.float64) @ z.T, gram, atol=1e-3 * np.abs(gram).max())
    y = embedding_projection.project(x, "umap", seed=0)
    assert y.shape == (200, 2) and np.isfinite(y).all()


def test_project_rejects_unknown_method_and_nan() -> None:
    with pytest.raises(ValueError):
        embedding_projection.project(_blobs(), "mds")
    bad = _blobs()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError):
        embedding_projection.project(bad, "pca")


def test_umap_map_keeps_neighbourhoods() -> None:
    x = _blobs(n=300)
    y = embedding_projection.project(x, "umap", seed=0)
    assert embedding_projection.trustworthiness_score(x, y, k=10) > 0.85


def test_project_heads_is_independent_of_threads_and_reports_progress() -> None:
    heads = [_blobs(n=90 + 10 * i, seed=i) for i in range(3)]
    seen: list[int] = []
    one = embedding_projection.project_heads(heads, "umap", seed=3, n_jobs=1, progress=seen.append)
    seen2: list[int] = []
    two = embedding_projection.project_heads(heads, "umap", seed=3, n_jobs=2, progress=seen2.append)
    assert seen == seen2 == [1, 2, 3]
    for x, a, b in zip(heads, one, two):
        assert a.shape == (len(x), 2) and np.array_equal(a, b)
        assert np.array_equal(a, embedding_projection.project(x, "umap", seed=3))


def test_project_heads_cancels_between_heads() -> None:
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(embedding_projection.Cancelled):
        embedding_projection.project_heads([_blobs(), _blobs()], "pca", n_jobs=1, should_cancel=cancel)


# ----------------------------------------------------------------------------------------------------------
# the QK reducer on a tiny Llama (GQA: 4 query heads, 2 key/value heads, RoPE)


class KeepQK(BaseReducer):
    """Test reducer: the engine's full per-layer query/key/scaling."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def begin_layer(self, view) -> None:
        self.layers[view.layer] = (view.query.clone(), view.key.clone(), view.scaling)


def _llama_run(reducer, batches):
    """``batches``: list of (prompt ids, token id lists); right padding, as the app does."""
    model = build("llama", ATTN_IMPLEMENTATION)
    keep = KeepQK()
    with torch.no_grad():
        for prompts, seqs in batches:
            width = max(len(s) for s in seqs)
            ids = torch.zeros((len(seqs), width), dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for b, s in enumerate(seqs):
                ids[b, : len(s)] = torch.tensor(s)
                mask[b, : len(s)] = 1
            lengths = [len(s) for s in seqs]
            with CaptureSession(model, reducers=[reducer, keep], prompts=prompts, lengths=lengths):
                model(input_ids=ids, attention_mask=mask)
    return model, keep


def test_reducer_dot_products_are_the_attention_logits() -> None:
    inputs = sample_inputs("llama")
    seqs = [inputs["input_ids"][0].tolist(), inputs["input_ids"][1, :6].tolist()]
    red = QKSampleReducer(n_layers=2, n_heads=4, max_points_per_head=10_000, seed=0)
    _, keep = _llama_run(red, [([0, 1], seqs)])
    out = red.results()
    assert sorted(out) == [(l, h) for l in range(2) for h in range(4)]
    eager = build("llama", "eager")
    with torch.no_grad():
        ref = eager(**inputs, output_attentions=True).attentions  # [B, H, T, T] per layer
    for (layer, head), (q, k, qm, km) in out.items():
        assert q.dtype == k.dtype == np.float32 and qm.dtype == km.dtype == np.int32
        assert len(q) == len(k) == 15  # 9 + 6 real tokens: padding skipped
        assert np.array_equal(qm, km)
        query, key, scaling = keep.layers[layer]
        for b, n in enumerate([9, 6]):
            rows = qm[:, 0] == b
            assert np.array_equal(qm[rows, 1], np.arange(n))
            logits = q[rows] @ k[rows].T  # [n, n]
            direct = (query[b, head, :n] @ key[b, head, :n].T * scaling).numpy()
            assert np.allclose(logits, direct, atol=1e-5)
            # and softmax of them under the causal mask is the eager model's attention
            causal = np.tril(np.ones((n, n), dtype=bool))
            z = np.where(causal, logits.astype(np.float64), -np.inf)
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            assert np.allclose(p, ref[layer][b, head, :n, :n].numpy(), atol=1e-5)
    # GQA: query heads 0, 1 share key/value head 0
    for layer in range(2):
        assert np.array_equal(out[(layer, 0)][1], out[(layer, 1)][1])
        assert not np.array_equal(out[(layer, 0)][1], out[(layer, 2)][1])


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = np.random.default_rng(seed)
    return [g.integers(3, VOCAB, int(g.integers(2, 13))).tolist() for _ in range(n)]


@pytest.mark.parametrize("cap", [6, 14, 41])
def test_reducer_respects_cap_and_streams_to_the_offline_sample(cap: int) -> None:
    seqs = _prompts(10)
    lengths = [len(s) for s in seqs]
    streamed = QKSampleReducer(2, 4, max_points_per_head=cap, seed=5)
    _llama_run(streamed, [([p, p + 1], seqs[p : p + 2]) for p in range(0, 10, 2)])
    at_once = QKSampleReducer(2, 4, max_points_per_head=cap, seed=5)
    _llama_run(at_once, [(list(range(10)), seqs)])
    backwards = QKSampleReducer(2, 4, max_points_per_head=cap, seed=5)
    _llama_run(backwards, [([p + 1, p], [seqs[p + 1], seqs[p]]) for p in range(8, -1, -2)])
    expected = embedding_projection.sample_indices(lengths, cap // 2, seed=5)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    a, b, c = streamed.results(), at_once.results(), backwards.results()
    assert sorted(a) == sorted(b) == sorted(c) == [(l, h) for l in range(2) for h in range(4)]
    for key in a:
        q, k, qm, km = a[key]
        assert len(q) + len(k) <= cap and len(q) == min(cap // 2, sum(lengths))
        assert np.array_equal(offsets[qm[:, 0]] + qm[:, 1], expected)
        assert np.all(qm[:, 1] < np.asarray(lengths)[qm[:, 0]])
        assert np.array_equal(qm, b[key][2])
        assert np.allclose(q, b[key][0], atol=1e-5) and np.allclose(k, b[key][1], atol=1e-5)
        assert np.array_equal(qm, c[key][2]) and np.allclose(q, c[key][0], atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# compute_head_maps


def _samples(n_heads: int = 2, n: int = 40):
    rng = np.random.default_rng(0)
    meta = np.stack([np.repeat([0, 1], n // 2), np.tile(np.arange(n // 2), 2)], axis=1).astype(np.int32)
    return {
        (0, h): (
            rng.normal(size=(n, 6)).astype(np.float32),
            rng.normal(loc=2.0, size=(n, 6)).astype(np.float32),
            meta,
            meta.copy(),
        )
        for h in range(n_heads)
    }


def test_compute_head_maps_names_shapes_and_meta() -> None:
    samples = _samples()
    done: list[tuple[int, int]] = []
    out = compute_head_maps(samples, ["pca", "umap"], seed=0, raw=True, progress=lambda d, t: done.append((d, t)))
    for h in range(2):
        meta = out[names.embedding_meta(0, h)]
        assert meta.dtype == np.int32 and meta.shape == (80, 3)
        assert np.array_equal(meta[:, 0], np.repeat([0, 1], 40))  # queries first, then keys
        assert np.array_equal(meta[:40, 1:], samples[(0, h)][2])
        for method in ("pca", "umap", "pca_raw", "umap_raw"):
            y = out[names.embedding(0, h, method)]
            assert y.shape == (80, 2) and y.dtype == np.float32
    assert done[-1] == (8, 8) and [d for d, _ in done] == list(range(1, 9))
    # the normalised and raw maps differ (the keys were translated), the raw one is the plain projection
    q, k = samples[(0, 0)][:2]
    assert np.array_equal(out[names.embedding(0, 0, "pca_raw")], embedding_projection.project(np.concatenate([q, k]), "pca"))
    assert not np.allclose(out[names.embedding(0, 0, "pca")], out[names.embedding(0, 0, "pca_raw")])


def test_compute_head_maps_cancel_raises_the_run_cancel() -> None:
    from backend.engine.analyze import Cancelled

    with pytest.raises(Cancelled):
        compute_head_maps(_samples(), ["pca"], should_cancel=lambda: True)


def test_umap_private_kernel_is_checked(monkeypatch) -> None:
    """The fast UMAP path calls a private umap-learn function: a release that moves or changes it gives a clear
    error naming the tested version, not a numba traceback."""
    import umap.layouts

    assert embedding_projection._private_epoch() is umap.layouts._optimize_layout_euclidean_single_epoch
    monkeypatch.delattr(umap.layouts, "_optimize_layout_euclidean_single_epoch")
    with pytest.raises(RuntimeError, match=r"_optimize_layout_euclidean_single_epoch.*is missing.*umap-learn==0\.5\.12"):
        embedding_projection._private_epoch()
    monkeypatch.setattr(umap.layouts, "_optimize_layout_euclidean_single_epoch", lambda a, b: None, raising=False)
    with pytest.raises(RuntimeError, match="takes 2 parameters instead of 27"):
        embedding_projection._private_epoch()


def test_umap_range_is_the_tested_minor_version() -> None:
    """pyproject.toml lets installs into other environments take only the umap-learn minor version whose private
    kernel was checked: the locked (tested) version, not the next minor release."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    from packaging.specifiers import SpecifierSet

    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = SpecifierSet(next(d for d in deps if d.startswith("umap-learn"))[len("umap-learn"):])
    locked = next(l.split("==")[1].strip() for l in (root / "requirements.lock").read_text().splitlines()
                  if l.startswith("umap-learn=="))
    assert locked == embedding_projection.UMAP_TESTED
    assert locked in spec
    major, minor = (int(x) for x in locked.split(".")[:2])
    assert f"{major}.{minor + 1}.0" not in spec


@pytest.mark.parametrize("n, d, dup", [(60, 8, 0), (258, 64, 0), (120, 16, 10)])
def test_fuzzy_graph_is_umaps_bit_for_bit(n: int, d: int, dup: int) -> None:
    """The serial, nogil fuzzy-graph kernels give exactly umap's ``fuzzy_simplicial_set`` (same sparse structure,
    same float32 memberships), duplicated points (zero distances) included."""
    from umap.umap_ import fuzzy_simplicial_set

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:dup] = x[dup: 2 * dup]  # exact duplicates
    idx, dist = embedding_projection._knn(x, embedding_projection.N_NEIGHBORS, 0)
    want, _, _ = fuzzy_simplicial_set(x, embedding_projection.N_NEIGHBORS, np.random.RandomState(0), "cosine",
                                      knn_indices=idx, knn_dists=dist)
    got = embedding_projection.fuzzy_graph(n, idx, dist)
    want, got = want.tocsr(), got.tocsr()
    want.sort_indices()
    got.sort_indices()
    assert got.dtype == want.dtype
    assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
    assert np.array_equal(got.data, want.data)


def test_raw_maps_are_on_request_and_equal_the_combined_stage() -> None:
    """A run with "embedding" projects the normalised maps only; extending it with "embedding_raw" (the capture
    pass samples the same queries and keys again) gives exactly the raw maps a run asking for both computes, and
    the same point tables."""
    from backend.engine.analyze import analyze
    from backend.engine.models import load_model
    from backend.model_refs import resolve_model
    from backend.settings import get_settings
    from backend.spec import normalise_options

    s = get_settings()
    loaded = load_model(resolve_model("tiny-pydoc-lm", s), s)
    prompts = ["The list is a mutable sequence.", "A tuple is an immutable sequence of values."]
    runs = {}
    for key, analyses in (("default", ["embedding"]), ("both", ["embedding_raw"]),
                          ("extension", ["attention", "embedding_raw"])):
        opts = normalise_options({"analyses": analyses, "embedding_methods": ["umap", "pca"]})
        if key == "extension":  # as workers.tasks.run_extension: the spec's options, the added analyses only
            opts = {**opts, "analyses": analyses}
        arrays: dict = {}
        analyze(loaded, prompts, opts, arrays.__setitem__, settings=s, store_patterns=key != "extension")
        runs[key] = {k: v for k, v in arrays.items() if k.startswith("embedding.")}
    assert normalise_options({"analyses": ["embedding_raw"]})["analyses"] == ["attention", "embedding", "embedding_raw"]
    raw = {k for k in runs["both"] if k.endswith("_raw")}
    assert raw and len(raw) == 2 * loaded.n_layers * loaded.n_heads
    assert not [k for k in runs["default"] if k.endswith("_raw")]
    assert set(runs["extension"]) == raw | {k for k in runs["both"] if k.endswith(".meta")}
    for k, v in runs["extension"].items():
        assert np.array_equal(v, runs["both"][k]), k
    for k, v in runs["default"].items():
        assert np.array_equal(v, runs["both"][k]), k
