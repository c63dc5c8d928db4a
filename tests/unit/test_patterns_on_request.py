"""Storage that scales with the model: a text run keeps thumbnails and top keys (``backend.engine.grid_reducer``),
not full patterns, and a full pattern recomputed on request (``backend.engine.pattern_job``) is the one the
capture pass computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import figures_heads, names
from backend.engine.analyze import PatternStore, analyze
from backend.engine.capture import CaptureSession
from backend.engine.grid_reducer import GridReducer, bin_matrix
from backend.engine.models import load_model
from backend.engine.pattern_job import layer_pattern
from backend.model_refs import resolve_model
from backend.settings import get_settings
from backend.spec import normalise_options
from tests.unit.tiny_models import build, sample_inputs
from backend.engine.capture import ATTN_IMPLEMENTATION

MODEL = "tiny-pydoc-lm"
PROMPTS = ["The list is a mutable sequence.",
           'The "if" statement is used for conditional execution, and ' * 6 + "the end."]


@pytest.fixture(scope="module")
def loaded():
    s = get_settings()
    return load_model(resolve_model(MODEL, s), s)


def test_bin_matrix_follows_position_bins() -> None:
    for n in (1, 5, 32, 33, 100):
        m = bin_matrix(n)
        groups = figures_heads.position_bins(n)
        assert m.shape == (n, len(groups)) and (m.sum(axis=1) == 1).all()
        assert [np.flatnonzero(m[:, b]).tolist() for b in range(m.shape[1])] == groups


@pytest.mark.parametrize("segmented", [True, False])
def test_run_sums_of_a_chunk_equal_the_one_hot_product(segmented: bool) -> None:
    """Both ways of summing a chunk's rows into their query runs (rows added in order on the CPU, the product with
    the run matrix elsewhere) give the float64 product, for chunks that cut across runs."""
    from backend.engine.grid_reducer import _Runs  # noqa: PLC0415

    n, heads = 9, 3  # 4 runs of 3, 2, 2, 2 positions
    runs = _Runs(n, 4, torch.device("cpu"))
    x = torch.rand(heads, n, n, generator=torch.Generator().manual_seed(0))
    pooled = torch.zeros(heads, 4, n)
    for q0 in range(0, n, 4):
        runs.add(pooled, q0, x[:, q0:q0 + 4], segmented=segmented)
    want = torch.from_numpy(bin_matrix(n, 4)).double().T @ x.double()
    np.testing.assert_allclose(pooled.double().numpy(), want.numpy(), atol=1e-6, rtol=0)
    assert runs.counts.tolist() == [3, 2, 2, 2]


@pytest.mark.parametrize("chunk,bins", [(None, 4), (3, 4), (None, 8), (3, 8)])
def test_thumbnails_equal_a_block_mean_of_the_full_pattern(chunk, bins) -> None:
    """Padded batch (lengths 9 and 6), optionally in query chunks of 3 rows that cut across the thumbnail runs:
    the reducer's thumbnails and top keys equal those of the full pattern (``figures_heads``). With 8 bins the rows
    have different numbers of runs (8 and 6) in the batch's one set of sums."""
    model = build("llama", ATTN_IMPLEMENTATION)
    full: dict = {}
    grid: dict = {}
    store = PatternStore(full.__setitem__, 100, 2)
    red = GridReducer(grid.__setitem__, 2, 4, max_bins=bins)  # 4 bins: 9 positions in runs of 3, 2, 2, 2
    with torch.no_grad(), CaptureSession(model, reducers=[store, red], prompts=[0, 1], lengths=[9, 6],
                                         chunk_size=chunk):
        model(**sample_inputs("llama"))
    for p, n in ((0, 9), (1, 6)):
        thumbs = grid[names.attn_thumbs(p)]
        nb = min(n, bins)
        assert thumbs.dtype == np.float16 and thumbs.shape == (2, 4, nb, nb)
        for layer in range(2):
            pat = full[names.attn_pattern(p, layer)]
            want = figures_heads.thumbnails(pat, figures_heads.position_bins(n, bins))
            np.testing.assert_allclose(thumbs[layer].astype(np.float64), want, atol=2.0**-11, rtol=0)
            np.testing.assert_allclose(thumbs[layer].astype(np.float64).sum(-1), 1.0, atol=4 * 2.0**-11)
            top, weight = figures_heads.top_keys(pat)
            np.testing.assert_array_equal(grid[names.attn_top_key(p)][layer], top)
            np.testing.assert_allclose(grid[names.attn_top_weight(p)][layer], weight, rtol=1e-6)


def test_a_text_run_stores_thumbnails_not_full_patterns(loaded) -> None:
    s = get_settings()
    arrays: dict = {}
    analyze(loaded, PROMPTS, normalise_options({"analyses": ["attention"]}), arrays.__setitem__, settings=s)
    assert not [k for k in arrays if k.endswith(".attn.pattern")]
    for p in range(len(PROMPTS)):
        assert arrays[names.attn_thumbs(p)].shape[:2] == (loaded.n_layers, loaded.n_heads)
        assert arrays[names.attn_top_key(p)].shape == (loaded.n_layers, loaded.n_heads)
    assert arrays[names.attn_thumbs(1)].shape[2:] == (32, 32)  # the long prompt: 32 runs of positions


def test_a_pattern_on_request_equals_the_captured_one(loaded) -> None:
    """One prompt alone: the job's pattern is the capture pass's, number for number; in the run's padded batch
    (prompt 0 is padded next to the longer prompt 1) it agrees to float32 rounding."""
    s = get_settings()
    opts = normalise_options({"analyses": ["attention"]})
    batched: dict = {}
    info = analyze(loaded, PROMPTS, opts, batched.__setitem__, settings=s, full_patterns=True)
    for p in range(len(PROMPTS)):
        alone: dict = {}
        analyze(loaded, [PROMPTS[p]], opts, alone.__setitem__, settings=s, full_patterns=True)
        for layer in range(loaded.n_layers):
            got = layer_pattern(loaded, PROMPTS, p, layer, s, info.tokens[p])
            assert got.dtype == np.float32 and got.shape == (loaded.n_heads, len(info.tokens[p]), len(info.tokens[p]))
            np.testing.assert_array_equal(got, alone[names.attn_pattern(0, layer)])
            np.testing.assert_allclose(got, batched[names.attn_pattern(p, layer)], atol=1e-6, rtol=0)


def test_a_pattern_job_refuses_changed_tokens_and_bad_layers(loaded) -> None:
    from backend.spec import SpecError

    s = get_settings()
    with pytest.raises(SpecError, match="encodes this prompt differently"):
        layer_pattern(loaded, PROMPTS, 0, 0, s, ["not", "these", "tokens"])
    with pytest.raises(SpecError, match="layer must be between"):
        layer_pattern(loaded, PROMPTS, 0, loaded.n_layers, s)


@pytest.mark.parametrize("arch,causal", [("bert", False), ("llama", True), ("gpt2", True)])
def test_fused_thumbnails_equal_the_materialised_ones(arch, causal) -> None:
    """In a fused session (the CUDA path, here on the CPU) the reducer rebuilds the pattern from the scores and the
    log-sum-exp: the same thumbnails and top keys as from the materialised pattern (padded batch)."""
    class Counting(GridReducer):
        fused_layers = 0

        def lse_layer(self, *args) -> None:
            Counting.fused_layers += 1
            super().lse_layer(*args)

    model = build(arch, ATTN_IMPLEMENTATION)
    out = []
    for fused in (False, True):
        grid: dict = {}
        red = Counting(grid.__setitem__, 2, 4, max_bins=4, causal=causal)
        with torch.no_grad(), CaptureSession(model, reducers=[red], prompts=[0, 1], lengths=[9, 6], fused=fused,
                                             chunk_size=4 if fused else None):
            model(**sample_inputs(arch))
        out.append(grid)
    assert Counting.fused_layers == 2  # the fused session's two layers, none in the other
    assert set(out[0]) == set(out[1]) and len(out[0]) == 6
    for name in out[0]:
        np.testing.assert_allclose(out[1][name].astype(np.float64), out[0][name].astype(np.float64),
                                   atol=2.0**-11, rtol=1e-5)


@pytest.mark.slow
def test_smollm2_pattern_on_request_and_thumbnails() -> None:
    """SmolLM2-135M (GQA: 9 query heads on 3 key heads, 30 layers): the pattern on request is the captured one, and
    the run's thumbnails of a 64-token prompt are its 32 x 32 block means."""
    from backend import corpora, offline_models

    assert offline_models.is_ready(offline_models.SMOLLM2), offline_models.missing_reason(offline_models.SMOLLM2)
    s = get_settings()
    loaded = load_model(resolve_model("smollm2-135m", s), s)
    tok = loaded.preprocessor
    prompt = tok.decode(tok(" ".join(corpora.PROSE), add_special_tokens=False)["input_ids"][:64])
    arrays: dict = {}
    info = analyze(loaded, [prompt], normalise_options({"analyses": []}), arrays.__setitem__, settings=s,
                   full_patterns=True)
    n = len(info.tokens[0])
    assert n > 32 and arrays[names.attn_thumbs(0)].shape == (30, 9, 32, 32)
    for layer in (0, 17, 29):
        full = arrays[names.attn_pattern(0, layer)]
        np.testing.assert_array_equal(layer_pattern(loaded, [prompt], 0, layer, s, info.tokens[0]), full)
        want = figures_heads.thumbnails(full, figures_heads.position_bins(n))
        np.testing.assert_allclose(arrays[names.attn_thumbs(0)][layer].astype(np.float64), want, atol=2.0**-11)


def test_batches_by_length_keep_every_array_under_its_prompt(loaded) -> None:
    """The capture pass batches prompts by length (:func:`backend.engine.inputs.length_batches`); every array of
    the run stays under its own prompt: equal to the run of batches of one prompt each, in input order."""
    import dataclasses

    from backend.engine.inputs import length_batches

    assert length_batches([5, 3, 9, 3, 1], 2) == [[4, 1], [3, 0], [2]]
    assert length_batches([], 8) == []
    prompts = [PROMPTS[1], "x = 1", PROMPTS[0], "def f(a, b):\n    return a + b", "The end."]
    s = get_settings()
    opts = normalise_options({"analyses": ["attention", "metrics"]})
    batched: dict = {}
    analyze(loaded, prompts, opts, batched.__setitem__, settings=dataclasses.replace(s, batch_size=2))
    alone: dict = {}
    analyze(loaded, prompts, opts, alone.__setitem__, settings=dataclasses.replace(s, batch_size=1))
    assert batched.keys() == alone.keys()
    assert any(k.startswith("prompt.4.") for k in batched)
    for name, want in alone.items():
        got = batched[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), atol=2e-3 if got.dtype == np.float16
                                   else 1e-5, rtol=0, err_msg=name)
