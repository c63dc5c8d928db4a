"""Joint query-key maps of attention heads (AttentionViz, docs/REFERENCES.md section 1). NumPy/sklearn/umap only.

Pipeline per head: query vectors ``q [n, d]`` and key vectors ``k [m, d]`` (scaled so that ``q_i . k_j`` is the
logit) -> :func:`normalise_qk` (translate keys onto the query centroid, equalise mean norms) -> one joint set
``[n + m, d]`` -> :func:`project` / :func:`project_heads` -> ``[n + m, 2]`` float32.

Speed (FEASIBILITY.md "Projections"; measured by ``benchmarks/bench_embeddings.py``): a default
``umap.UMAP(metric="cosine")`` per head spends most of its time in the spectral initialisation and in 200 epochs
of layout with 5 negative samples per edge. The fast path (:func:`project` with ``fast=True``, used by
:func:`project_heads`) keeps UMAP's model (cosine 15-NN graph, same fuzzy graph, same curve ``a, b``, same SGD)
and changes only its costs:

- neighbours: NN-descent with UMAP's own settings (exact below 4,096 points, as UMAP does), on the data
  projected to ``FAST_PCA_DIMS`` dims by an uncentred SVD when heads are wider (Llama-style 128 dims);
- start from the PCA map instead of the spectral embedding (seconds per head saved, and on attention heads it
  scored the same or better trustworthiness in our measurements);
- ``FAST_EPOCHS`` epochs with ``FAST_NEGATIVE_RATE`` negative samples per edge instead of 200 x 5 (on all 72
  MiniLM heads of the benchmark corpus, mean trustworthiness 0.885 against 0.887 for default UMAP and 0.891 at
  120 x 3, for a third of the layout time);
- BLAS on one thread while heads run in parallel (see :func:`_single_threaded_blas`);
- the SGD epoch is UMAP's own kernel compiled with ``nogil=True``, so heads run on threads at once (one per
  core) while each head stays single-threaded and seeded: the map does not depend on the thread count.
  UMAP's fuzzy-graph kernels likewise run serial and nogil (:func:`fuzzy_graph`, umap's values bit for bit):
  their ``parallel=True`` fork/join per call cost more than the work on a few hundred points.

numba compiles these kernels once per process (10-80 s): call :func:`warm_up` when a worker process starts.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Callable, Sequence

import numpy as np

from backend.vocab import METHOD_NAMES

METHODS = METHOD_NAMES
N_NEIGHBORS = 15  # UMAP's default
FAST_EPOCHS = 60  # UMAP's default is 200 above 10k points, 500 below
FAST_NEGATIVE_RATE = 2  # UMAP's default is 5
FAST_PCA_DIMS = 32  # dims kept for the neighbour search in the fast path (head dims are 32-128)


class Cancelled(RuntimeError):
    """``should_cancel()`` returned true between two heads."""


# ----------------------------------------------------------------------------------------------------------
# Query/key normalisation


def normalise_qk(
    q: np.ndarray, k: np.ndarray, translate: bool = True, scale: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """AttentionViz normalisation of one head's queries ``q [n, d]`` and keys ``k [m, d]``.

    ``translate``: ``k <- k - mean(k) + mean(q)`` (adds ``q . c`` to every logit of query ``q``: the softmax,
    hence each query's order of keys, is unchanged). ``scale``: ``c = sqrt(mean|q| / mean|k|)``, keys times
    ``c``, queries divided by ``c`` (every dot product unchanged; afterwards both have the same mean norm).
    Returns float32 copies.
    """
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if translate and len(q) and len(k):
        k = k - k.mean(axis=0) + q.mean(axis=0)
    if scale and len(q) and len(k):
        nq = np.linalg.norm(q, axis=1).mean()
        nk = np.linalg.norm(k, axis=1).mean()
        if nq > 0 and nk > 0:
            c = np.sqrt(nq / nk)
            q, k = q / c, k * c
    return q.astype(np.float32), k.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Sampling


def allocate(counts: Sequence[int], cap: int) -> np.ndarray:
    """Even split of ``cap`` points over groups of sizes ``counts`` (water filling): every group gets
    ``min(count, L)`` or ``L + 1`` with the largest level ``L`` that fits; the leftover ``+1``s go to the
    first groups (in the given order) that still have points. Never more than a group has.

    Adding a group never increases any other group's share, which lets the QK reducer trim as it streams.
    """
    c = np.asarray(counts, dtype=np.int64)
    if c.size == 0 or c.sum() <= cap:
        return c.copy()
    lo, hi = 0, int(c.max())  # largest L with sum(min(c, L)) <= cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(c, mid).sum() <= cap:
            lo = mid
        else:
            hi = mid - 1
    out = np.minimum(c, lo)
    rest = int(cap - out.sum())
    if rest > 0:
        more = np.flatnonzero(c > lo)[:rest]
        out[more] += 1
    return out


def prompt_order(prompt: int, count: int, seed: int) -> np.ndarray:
    """Seeded priority order of a prompt's ``count`` positions: a sample of ``a`` of them is ``order[:a]``."""
    return np.random.default_rng([int(seed), int(prompt)]).permutation(int(count))


def sample_indices(counts_per_prompt: Sequence[int], cap: int, seed: int = 0) -> np.ndarray:
    """At most ``cap`` point indices spread evenly across prompts (see :func:`allocate`).

    Points are numbered prompt after prompt (prompt ``p`` owns ``offset[p] .. offset[p] + counts[p]``); the
    result is sorted int64 indices into that concatenation. Within a prompt, points are drawn with a seeded
    permutation that depends only on ``(seed, p)``.
    """
    counts = np.asarray(counts_per_prompt, dtype=np.int64)
    alloc = allocate(counts, max(int(cap), 0))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]) if counts.size else counts
    parts = [
        off + np.sort(prompt_order(p, n, seed)[:a]) for p, (n, a, off) in enumerate(zip(counts, alloc, offsets)) if a
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# Quality


def trustworthiness_score(X: np.ndarray, Y: np.ndarray, k: int = 10, metric: str = "euclidean") -> float:
    """``sklearn.manifold.trustworthiness`` of embedding ``Y [n, 2]`` of ``X [n, d]`` with ``k`` neighbours.

    It builds an ``[n, n]`` distance matrix: subsample large sets first (e.g. with :func:`sample_indices`).
    """
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(np.asarray(X, np.float64), np.asarray(Y, np.float64), n_neighbors=k, metric=metric))


# ----------------------------------------------------------------------------------------------------------
# Projections


def _as_points(points: np.ndarray) -> np.ndarray:
    x = np.asarray(points, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"points must be [n, d], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("points contain NaN or infinite values")
    return np.ascontiguousarray(x)


def _tiny(x: np.ndarray) -> np.ndarray | None:
    """Maps for sets too small for neighbour graphs: the PCA map (zeros below 2 points)."""
    n = len(x)
    if n >= 2 * N_NEIGHBORS:
        return None
    return _pca(x, 0)


def _pca(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n, d = x.shape
    out = np.zeros((n, 2), dtype=np.float32)
    r = min(2, n, d)
    if n >= 2 and r > 0:
        out[:, :r] = PCA(n_components=r, random_state=seed).fit_transform(x)
    return out


def _tsne(x: np.ndarray, seed: int, fast: bool) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(x)
    if n < 5:
        return _pca(x, seed)
    # sklearn's PCA start (scaled to std 1e-4) is the same for every seed; a seeded jitter of 1 % of its spread
    # makes the seed mean something (another seed, another draw of the map) without losing the PCA start
    init = _pca(x, seed).astype(np.float64)
    init = init / max(float(np.std(init[:, 0])), 1e-12) * 1e-4
    init += np.random.default_rng(seed).normal(scale=1e-6, size=init.shape)
    tsne = TSNE(
        n_components=2,
        perplexity=min(50.0, (n - 1) / 3.0),
        metric="cosine",
        init=init,
        random_state=seed,
        max_iter=500 if fast else 1000,  # 250 of them with early exaggeration either way
    )
    return tsne.fit_transform(x).astype(np.float32)


def _umap_default(x: np.ndarray, seed: int) -> np.ndarray:
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return umap.UMAP(metric="cosine", random_state=seed).fit_transform(x).astype(np.float32)


def _search_space(x: np.ndarray) -> np.ndarray:
    """Rows for the neighbour search: projected on the top ``FAST_PCA_DIMS`` right singular vectors of the
    *uncentred* data when ``d`` is larger (best low-rank fit of all dot products, so cosines survive;
    centring, as sklearn's PCA does, would change them)."""
    if x.shape[1] <= FAST_PCA_DIMS:
        return x
    x64 = x.astype(np.float64)
    _, vecs = np.linalg.eigh(x64.T @ x64)  # ascending eigenvalues
    return np.ascontiguousarray(x64 @ vecs[:, ::-1][:, :FAST_PCA_DIMS], dtype=np.float32)


def _knn(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k nearest neighbours (self first): exact below 4,096 points, NN-descent above (as UMAP does)."""
    n = len(x)
    if n < 4096:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        dist = np.maximum(1.0 - unit @ unit.T, 0.0)
        np.fill_diagonal(dist, -1.0)  # self first, as NN-descent returns it
        k = min(k, n)
        idx = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (n, 1))
        d = np.take_along_axis(dist, idx, axis=1)
        order = np.lexsort((idx, d), axis=1)  # by distance, ties by index: deterministic
        idx, d = np.take_along_axis(idx, order, axis=1), np.take_along_axis(d, order, axis=1)
        return idx.astype(np.int32), np.maximum(d, 0.0).astype(np.float32)
    from pynndescent import NNDescent

    index = NNDescent(
        x,
        n_neighbors=k,
        metric="cosine",
        random_state=np.random.RandomState(seed),
        n_trees=min(64, 5 + int(round(n**0.5 / 20.0))),  # UMAP's choices
        n_iters=max(5, int(round(np.log2(n)))),
        max_candidates=60,
        low_memory=True,
        n_jobs=1,
        compressed=False,
    )
    idx, d = index.neighbor_graph
    return idx, d


_EPOCH = None  # UMAP's SGD epoch compiled with nogil=True, so threads can lay out several heads at once


UMAP_TESTED = "0.5.12"
"""The umap-learn version the fast path was tested with (requirements.lock pins it)."""
_EPOCH_ARGS = 27
"""Parameters of ``umap.layouts._optimize_layout_euclidean_single_epoch`` in the tested versions (0.5.6 .. 0.5.12)."""


def _private_epoch():
    """umap-learn's private per-epoch kernel, checked: a clear error when a umap-learn release moved or changed it."""
    import importlib.metadata
    import inspect

    version = importlib.metadata.version("umap-learn")
    try:
        from umap.layouts import _optimize_layout_euclidean_single_epoch as fn
    except ImportError:
        fn = None
    n_args = len(inspect.signature(getattr(fn, "py_func", fn)).parameters) if fn is not None else None
    if n_args != _EPOCH_ARGS:
        found = "is missing" if fn is None else f"takes {n_args} parameters instead of {_EPOCH_ARGS}"
        raise RuntimeError(
            f"umap-learn {version}: the private function umap.layouts._optimize_layout_euclidean_single_epoch, "
            f"which the fast UMAP path of the query-key maps calls, {found}. Install the tested version "
            f"(pip install umap-learn=={UMAP_TESTED}, or bash scripts/setup.sh, which installs requirements.lock)."
        )
    return fn


def _epoch_fn():
    global _EPOCH
    if _EPOCH is None:
        import numba

        _EPOCH = numba.njit(_private_epoch(), fastmath=True, parallel=False, nogil=True)
    return _EPOCH


def _layout(graph, init: np.ndarray, n_epochs: int, seed: int, negative_sample_rate: int) -> np.ndarray:
    """UMAP's layout (``simplicial_set_embedding`` + ``optimize_layout_euclidean``, single-threaded and seeded,
    no densMAP) with the per-epoch kernel compiled nogil."""
    from umap.umap_ import make_epochs_per_sample

    a, b = _ab()
    graph = graph.tocoo()
    graph.sum_duplicates()
    lo, hi = init.min(0), init.max(0)
    emb = (10.0 * (init - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32, order="C")
    if graph.nnz == 0:
        return emb
    graph.data[graph.data < graph.data.max() / float(n_epochs)] = 0.0
    graph.eliminate_zeros()
    eps = make_epochs_per_sample(graph.data, n_epochs)
    head, tail = graph.row, graph.col
    rng = np.random.RandomState(seed)
    rng_state = rng.randint(np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1, 3).astype(np.int64)
    rng_per_sample = np.full((len(emb), 3), rng_state, dtype=np.int64) + emb[:, 0].astype(np.float64).view(
        np.int64
    ).reshape(-1, 1)
    eps_neg = eps / negative_sample_rate
    next_neg = eps_neg.copy()
    next_sample = eps.copy()
    dummy = np.zeros(1, dtype=np.float32)
    epoch = _epoch_fn()
    for n in range(n_epochs):
        alpha = 1.0 * (1.0 - n / float(n_epochs))
        epoch(
            emb, emb, head, tail, len(emb), eps, a, b, rng_per_sample, 1.0, 2, True, alpha,
            eps_neg, next_neg, next_sample, n, False, dummy, dummy, 0, 0, 0, 0, dummy, dummy, 0,
        )
    return emb


@functools.lru_cache(maxsize=1)
def _ab() -> tuple[float, float]:
    """UMAP's curve parameters for its defaults ``spread=1.0, min_dist=0.1``."""
    from umap.umap_ import find_ab_params

    a, b = find_ab_params(1.0, 0.1)
    return float(a), float(b)


_FUZZY = None  # UMAP's two fuzzy-graph kernels compiled serial and nogil (see _fuzzy_fns)


def _fuzzy_fns():
    """``(smooth_knn_dist, compute_membership_strengths)`` of umap-learn compiled without ``parallel`` and with
    ``nogil``. umap compiles both with ``parallel=True``: on a few hundred points each call is a few microseconds
    of work and an OpenMP fork/join, and with heads already running on every core (or another process on the
    machine) the join waits for a descheduled thread (measured on 2 cores under load: 1.5-20 ms per head for the
    two calls, against 0.7-9 ms serial). The values are umap's bit for bit (checked on every head of a SmolLM2 run
    and in tests/unit/test_projections.py): its ``prange`` bodies are outlined by numba's parfor pass, which drops
    the ``locals`` float32 annotations, so the serial copies are compiled without them too."""
    global _FUZZY
    if _FUZZY is None:
        import numba
        from umap import umap_

        jit = numba.njit(parallel=False, nogil=True)
        _FUZZY = (jit(umap_.smooth_knn_dist.py_func), jit(umap_.compute_membership_strengths.py_func))
    return _FUZZY


def fuzzy_graph(n: int, knn_indices: np.ndarray, knn_dists: np.ndarray):
    """UMAP's fuzzy graph of ``n`` points from their ``k`` nearest neighbours (self first): what
    ``umap.umap_.fuzzy_simplicial_set(X, k, rng, metric, knn_indices=..., knn_dists=...)`` returns with its
    defaults (local connectivity 1, fuzzy union), step for step, with the serial kernels of :func:`_fuzzy_fns`."""
    import scipy.sparse

    smooth, membership = _fuzzy_fns()
    knn_dists = knn_dists.astype(np.float32)
    sigmas, rhos = smooth(knn_dists, float(knn_indices.shape[1]), local_connectivity=1.0)
    rows, cols, vals, _ = membership(knn_indices, knn_dists, sigmas, rhos, None)
    result = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(n, n))
    result.eliminate_zeros()
    transpose = result.transpose()
    prod_matrix = result.multiply(transpose)
    result = 1.0 * (result + transpose - prod_matrix) + (1.0 - 1.0) * prod_matrix  # set_op_mix_ratio = 1
    result.eliminate_zeros()
    return result


def _umap_fast(x: np.ndarray, seed: int) -> np.ndarray:
    from umap.umap_ import noisy_scale_coords

    rng = np.random.RandomState(seed)
    idx, dist = _knn(_search_space(x), N_NEIGHBORS, seed)
    graph = fuzzy_graph(len(x), idx, dist)
    init = noisy_scale_coords(_pca(x, seed), rng, max_coord=10, noise=0.0001)
    return _layout(graph, init, FAST_EPOCHS, seed, FAST_NEGATIVE_RATE).astype(np.float32)


def project(points: np.ndarray, method: str, seed: int = 0, fast: bool = True) -> np.ndarray:
    """2-D map ``[n, 2]`` float32 of ``points [n, d]``, the same for the same seed.

    ``umap``: cosine metric; ``fast`` uses the pipeline of the module docstring, else ``umap.UMAP(metric=
    "cosine", random_state=seed)`` with defaults. ``tsne``: sklearn, perplexity ``min(50, (n - 1) / 3)``,
    cosine, PCA start with a seeded 1 % jitter (``fast``: 500 iterations instead of 1,000). ``pca``: the first
    two principal components. Sets too small for a neighbour graph (fewer than ``2 * N_NEIGHBORS`` points) get the PCA map.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; expected one of {', '.join(METHODS)}")
    x = _as_points(points)
    if method == "pca":
        return _pca(x, seed)
    tiny = _tiny(x)
    if tiny is not None:
        return tiny
    if method == "tsne":
        return _tsne(x, seed, fast)
    return _umap_fast(x, seed) if fast else _umap_default(x, seed)


def project_heads(
    points: Sequence[np.ndarray],
    method: str,
    seed: int = 0,
    n_jobs: int | None = None,
    progress: Callable[[int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[np.ndarray]:
    """:func:`project` (``fast=True``) of every head's joint point set ``points[i] [n_i, d]`` -> ``[n_i, 2]``.

    Heads run on ``n_jobs`` threads (default :func:`default_jobs`: one per core this process may use); UMAP's
    heavy kernels release the GIL. Each head's map depends only on its points and ``seed``, not on the thread
    count or order. ``progress(done)`` is called as heads finish (in order); ``should_cancel()`` is checked
    before each head starts and raises :class:`Cancelled` (heads already running finish first).
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; expected one of {', '.join(METHODS)}")
    n = len(points)
    jobs = max(1, min(n_jobs or default_jobs(), n or 1))
    out: list[np.ndarray | None] = [None] * n
    should_cancel = should_cancel or (lambda: False)

    def one(i: int) -> np.ndarray:
        if should_cancel():
            raise Cancelled("projection cancelled")
        return project(points[i], method, seed, fast=True)

    start = 0
    if jobs > 1 and method == "umap" and not _numba_threadsafe():
        # the first head initialises numba's threading layer; with one that is not thread-safe (workqueue: no
        # OpenMP or TBB runtime), concurrent parallel kernels would abort the process, so go one at a time
        start = _serial(one, range(1), out, progress)
        if not _numba_threadsafe():
            jobs = 1
    with _single_threaded_blas():
        if jobs == 1 or n - start <= 1:
            _serial(one, range(start, n), out, progress)
        else:
            _epoch_fn()
            _fuzzy_fns()
            _pool(one, start, n, jobs, out, progress)
    return out  # type: ignore[return-value]


def _pool(one: Callable[[int], np.ndarray], start: int, n: int, jobs: int, out: list,
          progress: Callable[[int], None] | None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {i: pool.submit(one, i) for i in range(start, n)}
        try:
            for i, fut in futures.items():
                out[i] = fut.result()
                if progress is not None:
                    progress(i + 1)
        except BaseException:
            for fut in futures.values():
                fut.cancel()
            raise


def _single_threaded_blas():
    """BLAS on one thread while heads run in parallel: a multi-threaded BLAS call (the PCA start) right after
    numba's OpenMP regions (NN-descent, fuzzy graph) stalled ~0.5 s per head on spinning threads (measured on
    2 cores: 0.55 s -> 0.007 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _serial(one: Callable[[int], np.ndarray], idx: range, out: list, progress: Callable[[int], None] | None) -> int:
    for i in idx:
        out[i] = one(i)
        if progress is not None:
            progress(i + 1)
    return idx.stop


def _numba_threadsafe() -> bool:
    """Whether numba's parallel kernels may run from several threads at once (OpenMP or TBB layer);
    False while no parallel kernel has run yet (the layer is chosen then)."""
    import numba

    try:
        return numba.threading_layer() in ("omp", "tbb")
    except ValueError:
        return False


def default_jobs() -> int:
    """Threads for :func:`project_heads`: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def warm_up() -> float:
    """Compile UMAP's numba kernels (NN-descent, fuzzy graph, layout) on tiny inputs; returns seconds spent.

    Call once when a worker process starts: the first fit otherwise pays 10-80 s of compilation.
    """
    import time

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4200, 8)).astype(np.float32)  # >= 4,096 points: the NN-descent path
    idx, dist = _knn(x, N_NEIGHBORS, 0)
    _knn(x[:300], N_NEIGHBORS, 0)
    graph = fuzzy_graph(len(x), idx, dist)
    _layout(graph, _pca(x, 0), 2, 0, FAST_NEGATIVE_RATE)
    return time.perf_counter() - t0
