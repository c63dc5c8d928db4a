"""Sink / head-role metrics and massive activations: reference (backend.metrics) and streaming reducers
(backend.engine.metrics_reducer) against plain loops written here, on eager patterns of tiny models and
on hand-built patterns whose answer is known."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend import metrics as M
from backend import names
from backend.engine.capture import ATTN_IMPLEMENTATION, CaptureSession, LayerView
from backend.engine.metrics_reducer import HEAD_METRICS, MassiveActivationReducer, SinkMetricsReducer
from tests.unit.tiny_models import build, sample_inputs

ARCHS = {"bert": False, "gpt2": True, "llama": True}  # arch -> causal
LENGTHS = [9, 6]  # sample_inputs: row 1 is padded after 6 tokens
N_LAYERS, N_HEADS = 2, 4


# --- plain definitions, loops on one head's [T, T] pattern ------------------------------------------


def plain_alpha(a, causal):
    T = len(a)
    out = []
    for k in range(T):
        queries = range(k, T) if causal else range(T)
        out.append(sum(a[t][k] for t in queries) / len(queries))
    return out


def plain_entropy(a):
    return sum(-sum(x * math.log(x) for x in row if x > 0) for row in a) / len(a)


def plain_distance(a):
    T = len(a)
    return sum(sum(a[t][j] * abs(t - j) for j in range(T)) for t in range(T)) / T


def plain_previous(a):
    T = len(a)
    return sum(a[t][t - 1] for t in range(1, T)) / (T - 1) if T > 1 else 0.0


def plain_prompt(A, causal, special):
    """One prompt ``A [H, T, T]`` -> {metric: [H]} by the loops above."""
    out = {m: [] for m in HEAD_METRICS}
    for a in np.asarray(A, dtype=np.float64).tolist():
        alpha = plain_alpha(a, causal)
        out["sink_first"].append(alpha[0])
        sp = [alpha[k] for k in range(len(a)) if special[k]]
        out["sink_special"].append(sum(sp) / len(sp) if sp else 0.0)
        out["entropy"].append(plain_entropy(a))
        out["distance"].append(plain_distance(a))
        out["previous_token"].append(plain_previous(a))
    return {m: np.array(v) for m, v in out.items()}


def special_mask(batch: int, width: int, lengths) -> torch.Tensor:
    """[B, S] bool: first and last real token; padding marked too (it must be ignored)."""
    sp = torch.zeros(batch, width, dtype=torch.bool)
    for b, n in enumerate(lengths):
        sp[b, 0] = sp[b, n - 1] = True
        sp[b, n:] = True
    return sp


# --- tiny models ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def model_run(arch: str, chunk: int | None):
    """Eager reference patterns/hidden states and reducer results for the padded sample batch."""
    eager = build(arch, "eager")
    ours = build(arch, ATTN_IMPLEMENTATION)
    ours.load_state_dict(eager.state_dict())
    inputs = sample_inputs(arch)
    special = special_mask(2, 9, LENGTHS)
    sinks = SinkMetricsReducer(N_LAYERS, N_HEADS, causal=ARCHS[arch])
    massive = MassiveActivationReducer(N_LAYERS)
    with torch.no_grad():
        ref = eager(**inputs, output_attentions=True, output_hidden_states=True)
        with CaptureSession(ours, reducers=[sinks, massive], chunk_size=chunk, prompts=[0, 1],
                            lengths=LENGTHS, special=special) as session:
            got = ours(**inputs, output_hidden_states=True)
            for layer in range(N_LAYERS):  # what the runner does: hidden_states[l + 1] is after block l
                for r in session.reducers:
                    r.hidden(layer, got.hidden_states[layer + 1], session.prompts, session.lengths)
    patterns = [a.numpy() for a in ref.attentions]  # L x [B, H, T, T]
    hiddens = [h.numpy() for h in ref.hidden_states[1:]]  # L x [B, T, D]
    return patterns, hiddens, special.numpy(), {**sinks.results(), **massive.results()}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_reducer_and_reference_equal_plain_loops_on_eager_patterns(arch: str) -> None:
    causal = ARCHS[arch]
    patterns, _, special, res = model_run(arch, None)
    firsts = np.zeros((len(LENGTHS), N_LAYERS, N_HEADS))  # [prompt, layer, head] alpha(first), plain loops
    for layer, P in enumerate(patterns):
        per_prompt = []
        for b, n in enumerate(LENGTHS):
            A = P[b, :, :n, :n]  # [H, T_p, T_p]
            plain = plain_prompt(A, causal, special[b, :n])
            per_prompt.append(plain)
            firsts[b, layer] = plain["sink_first"]
            # the NumPy reference, prompt by prompt
            ours = M.prompt_metrics(A, causal, special[b, :n])
            for m in HEAD_METRICS:
                np.testing.assert_allclose(ours[m], plain[m], atol=1e-10, err_msg=m)
            alpha = np.array([plain_alpha(a, causal) for a in A.astype(np.float64).tolist()])
            np.testing.assert_allclose(M.received(A, causal), alpha, atol=1e-10)
            # the reducer's per-prompt received
            got = res[names.attn_received(b, layer)]
            assert got.dtype == np.float32 and got.shape == (N_HEADS, n)
            np.testing.assert_allclose(got, alpha, atol=1e-6)
        for m in HEAD_METRICS:  # run-level: mean over the two prompts, equal weight
            want = (per_prompt[0][m] + per_prompt[1][m]) / 2
            np.testing.assert_allclose(res[names.metric(m)][layer], want, atol=1e-6, err_msg=m)
    np.testing.assert_allclose(res[names.SINK_ALPHA_FIRST], firsts, atol=1e-6)
    assert res[names.metric("sink_rate")].shape == ()
    # the released evaluation's rule: threshold each prompt's alpha, then average (docs/REFERENCES.md)
    assert res[names.metric("sink_rate")] == pytest.approx(float((firsts > 0.3).mean()))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_massive_activations_equal_plain_numpy(arch: str) -> None:
    _, hiddens, _, res = model_run(arch, None)
    for layer, H in enumerate(hiddens):
        ratios = []
        for b, n in enumerate(LENGTHS):
            h = np.abs(H[b, :n].astype(np.float64))  # [T_p, D]
            top = np.array([max(row) for row in h])
            dim = np.array([list(row).index(max(row)) for row in h])
            med = np.median(h)
            np.testing.assert_allclose(res[names.resid_absmax(b, layer)], top, rtol=1e-5)
            assert res[names.resid_absmax(b, layer)].dtype == np.float32
            np.testing.assert_array_equal(res[names.resid_absmax_dim(b, layer)], dim)
            assert res[names.resid_absmax_dim(b, layer)].dtype == np.int64
            ref = M.massive_activation_stats(H[b, :n])
            np.testing.assert_allclose(ref["ratio"], top / med, rtol=1e-9)
            ratios.append((top / med).max())
        np.testing.assert_allclose(res[names.metric("massive_ratio")][layer], np.mean(ratios), rtol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_chunked_and_unchunked_reducers_agree(arch: str) -> None:
    whole = model_run(arch, None)[3]
    chunked = model_run(arch, 3)[3]
    assert sorted(whole) == sorted(chunked)
    for key, value in whole.items():
        assert chunked[key].dtype == value.dtype and chunked[key].shape == value.shape, key
        np.testing.assert_allclose(chunked[key], value, atol=1e-6, rtol=0, err_msg=key)


def test_result_names_shapes_and_dtypes() -> None:
    res = model_run("llama", None)[3]
    expected = {names.metric(m) for m in (*HEAD_METRICS, "sink_rate", "massive_ratio")} | {names.SINK_ALPHA_FIRST}
    for p, n in enumerate(LENGTHS):
        for layer in range(N_LAYERS):
            expected |= {names.attn_received(p, layer), names.resid_absmax(p, layer),
                         names.resid_absmax_dim(p, layer)}
    assert set(res) == expected
    for m in HEAD_METRICS:
        assert res[names.metric(m)].shape == (N_LAYERS, N_HEADS)
        assert res[names.metric(m)].dtype == np.float32
    assert res[names.metric("sink_rate")].dtype == np.float32
    assert res[names.SINK_ALPHA_FIRST].shape == (len(LENGTHS), N_LAYERS, N_HEADS)
    assert res[names.SINK_ALPHA_FIRST].dtype == np.float32
    assert res[names.metric("massive_ratio")].shape == (N_LAYERS,)
    assert names.resid_absmax_dim(3, 1) == "prompt.3.blocks.1.resid.absmax_dim"


# --- driving the reducer with hand-built patterns ----------------------------------------------------


def drive(reducer, pattern: np.ndarray, lengths, chunk: int, layer: int = 0, prompts=None, special=None):
    """Feed ``pattern [B, H, T, T]`` to ``reducer`` as the engine would, ``chunk`` query rows at a time."""
    P = torch.as_tensor(np.asarray(pattern), dtype=torch.float32)
    b, h, t, _ = P.shape
    zeros = torch.zeros(b, h, t, 2)
    view = LayerView(layer, zeros, zeros, 1.0, list(prompts if prompts is not None else range(b)),
                     list(lengths), None if special is None else torch.as_tensor(special))
    reducer.begin_layer(view)
    for q0 in range(0, t, chunk):
        reducer.chunk(view, q0, P[:, :, q0 : q0 + chunk])
    reducer.end_layer(view)
    return reducer


def one_layer(pattern: np.ndarray, causal: bool, chunk: int = 2, **kw) -> dict[str, np.ndarray]:
    P = np.asarray(pattern)[None] if np.ndim(pattern) == 3 else np.asarray(pattern)
    lengths = kw.pop("lengths", [P.shape[-1]] * P.shape[0])
    r = drive(SinkMetricsReducer(1, P.shape[1], causal), P, lengths, chunk, **kw)
    return r.results()


def previous_token_pattern(T: int) -> np.ndarray:
    A = np.zeros((1, T, T))
    A[0, 0, 0] = 1.0
    for t in range(1, T):
        A[0, t, t - 1] = 1.0
    return A


def test_exact_previous_token_pattern() -> None:
    A = previous_token_pattern(7)
    assert M.previous_token(A)[0] == 1.0
    assert M.entropy(A)[0] == 0.0
    assert M.distance(A)[0] == pytest.approx(6 / 7)
    res = one_layer(A, causal=True, chunk=3)
    assert res["metrics.previous_token"][0, 0] == pytest.approx(1.0)
    assert res["metrics.entropy"][0, 0] == pytest.approx(0.0, abs=1e-7)
    profile = M.positional_profile(A, 2)  # offsets -2..2
    np.testing.assert_allclose(profile[0], [0, 0, 1 / 7, 1, 0])


@pytest.mark.parametrize("causal", [True, False])
def test_all_mass_on_first_token_is_a_sink(causal: bool) -> None:
    T = 6
    A = np.zeros((2, T, T))
    A[:, :, 0] = 1.0
    assert np.all(M.sink_first(A, causal) == 1.0)
    res = one_layer(A, causal)
    np.testing.assert_allclose(res["metrics.sink_first"], 1.0)
    assert M.sink_flags(res["metrics.sink_first"]).all()
    assert res["metrics.sink_rate"] == 1.0
    # a head spreading its attention over 6 keys of an encoder has alpha(first) = 1/6 < 0.3: no sink
    U = np.full((1, T, T), 1 / T)
    assert not M.sink_flags(M.sink_first(U, False)[None]).any()
    assert M.sink_rate(np.array([[1.0, 0.1], [0.31, 0.3]])) == 0.5


def test_sink_special_averages_over_special_keys_and_is_zero_without_them() -> None:
    T = 5
    A = np.zeros((1, T, T))
    A[0, :, 0] = 0.6
    A[0, :, T - 1] = 0.4
    special = np.array([True, False, False, False, True])
    assert M.sink_special(A, special, causal=False)[0] == pytest.approx(0.5)
    assert M.sink_special(A, np.zeros(T, bool), causal=False)[0] == 0.0
    res = one_layer(A, causal=False, special=special[None])
    assert res["metrics.sink_special"][0, 0] == pytest.approx(0.5)
    assert one_layer(A, causal=False)["metrics.sink_special"][0, 0] == 0.0


@pytest.mark.parametrize("n", [1, 4, 9])
def test_entropy_of_uniform_rows_is_log_n(n: int) -> None:
    U = np.full((3, n, n), 1 / n)
    np.testing.assert_allclose(M.entropy(U), math.log(n))
    np.testing.assert_allclose(one_layer(U, causal=False)["metrics.entropy"], math.log(n), atol=1e-6)
    C = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]  # causal: row t uniform over t+1 keys
    want = np.mean([math.log(t + 1) for t in range(n)])
    assert M.entropy(C[None])[0] == pytest.approx(want)
    assert one_layer(C[None], causal=True)["metrics.entropy"][0, 0] == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("offset", [0, 1])
def test_induction_score_on_hand_made_pattern(offset: int) -> None:
    L = 5
    T = offset + 2 * L
    A = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # uniform causal background
    for t in range(offset + L, T):  # second copy: 0.8 on the token after the earlier occurrence
        A[t] *= 0.2
        A[t, t - L + 1] += 0.8
    s = M.induction_score(A[None], L, offset)[0]
    want = np.mean([A[t, t - L + 1] for t in range(offset + L, T)])
    assert s == pytest.approx(want)
    assert 0.8 < s < 0.85
    with pytest.raises(ValueError):
        M.induction_score(A[None], L + 1, offset)
    # an exact previous-token head scores 0 on induction (target t-L+1 is never t-1 for L > 2)
    assert M.induction_score(previous_token_pattern(T), L, offset)[0] == 0.0


def test_duplicate_token_score() -> None:
    tokens = [7, 3, 7, 5, 3, 7]
    A = np.tril(np.ones((6, 6))) / np.arange(1, 7)[:, None]
    # queries with an earlier duplicate: t=2 (7 at 0), t=4 (3 at 1), t=5 (7 at 0 and 2)
    want = np.mean([A[2, 0], A[4, 1], A[5, 0] + A[5, 2]])
    assert M.duplicate_token_score(A[None], tokens)[0] == pytest.approx(want)
    assert M.duplicate_token_score(A[None], [1, 2, 3, 4, 5, 6])[0] == 0.0


def test_prompts_are_weighted_equally_across_batches() -> None:
    """Two batches (prompts 0,1 then 2): the run mean is the plain mean of the three prompts."""
    rng = np.random.default_rng(0)
    A = rng.dirichlet(np.ones(5), size=(2, 2, 5))  # [B=2, H=2, T=5, S=5], rows on the simplex
    A[1, :, :3, 3:] = 0.0  # row 1 has 3 real tokens
    A[1, :, :3, :3] /= A[1, :, :3, :3].sum(-1, keepdims=True)
    B = rng.dirichlet(np.ones(4), size=(1, 2, 4))
    r = SinkMetricsReducer(1, 2, causal=False)
    drive(r, A, [5, 3], chunk=2, prompts=[0, 1])
    drive(r, B, [4], chunk=3, prompts=[2])
    per = [M.entropy(A[0]), M.entropy(A[1, :, :3, :3]), M.entropy(B[0])]
    np.testing.assert_allclose(r.results()["metrics.entropy"][0], np.mean(per, axis=0), atol=1e-6)
    assert r.results()[names.attn_received(1, 0)].shape == (2, 3)


def test_reducer_rejects_a_layer_it_was_not_built_for() -> None:
    with pytest.raises(ValueError):
        drive(SinkMetricsReducer(1, 2, causal=True), np.full((1, 2, 3, 3), 1 / 3), [3], 2, layer=1)
    with pytest.raises(ValueError):
        MassiveActivationReducer(1).hidden(2, torch.zeros(1, 3, 4), [0], [3])


def test_massive_activation_on_planted_spike() -> None:
    rng = np.random.default_rng(1)
    h = rng.normal(size=(6, 16))
    h[2, 5] = -1000.0
    stats = M.massive_activation_stats(h)
    assert stats["dim"][2] == 5 and stats["top"][2] == 1000.0
    assert stats["ratio"][2] == pytest.approx(1000.0 / np.median(np.abs(h)))
    assert stats["ratio"][2] > 50 * stats["ratio"][np.arange(6) != 2].max()
    r = MassiveActivationReducer(1)
    r.hidden(0, torch.as_tensor(h[None], dtype=torch.float32), [4], [6])
    res = r.results()
    assert res[names.resid_absmax_dim(4, 0)][2] == 5
    assert res["metrics.massive_ratio"][0] == pytest.approx(stats["ratio"].max(), rel=1e-5)


# --- properties ---------------------------------------------------------------------------------------


@st.composite
def patterns(draw):
    """A random valid pattern [H, T, T] (softmax of random logits, causal or not) and a chunk size."""
    T = draw(st.integers(1, 8))
    H = draw(st.integers(1, 3))
    causal = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    sharp = draw(st.sampled_from([0.1, 1.0, 10.0]))
    logits = np.random.default_rng(seed).normal(size=(H, T, T)) * sharp
    if causal:
        logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
    A = np.exp(logits - logits.max(-1, keepdims=True))
    A /= A.sum(-1, keepdims=True)
    return A, causal, draw(st.integers(1, T + 1))


@settings(max_examples=40, deadline=None)
@given(patterns())
def test_invariants_and_reducer_equals_reference(case) -> None:
    A, causal, chunk = case
    H, T, _ = A.shape
    alpha = M.received(A, causal)
    denom = (T - np.arange(T)) if causal else np.full(T, T)
    np.testing.assert_allclose((alpha * denom).sum(-1), T)  # every query's unit of attention is received
    ent = M.entropy(A)
    assert np.all(ent >= -1e-12) and np.all(ent <= math.log(T) + 1e-9)
    assert np.all((M.distance(A) >= 0) & (M.distance(A) <= T - 1 + 1e-9))
    counts = T - np.abs(np.arange(-T + 1, T))  # queries at each offset
    np.testing.assert_allclose((M.positional_profile(A, T - 1) * counts).sum(-1), T)
    res = one_layer(A, causal, chunk=chunk)
    for m, v in M.prompt_metrics(A, causal).items():
        np.testing.assert_allclose(res[names.metric(m)][0], v, atol=1e-6, err_msg=m)
    np.testing.assert_allclose(res[names.attn_received(0, 0)], alpha, atol=1e-6)


def test_vocabulary_declares_every_stored_head_metric() -> None:
    """backend.vocab is the one list: each metric names an existing reference function, the reference's per-prompt
    dict and the reducer's stored metrics follow it, and SINK_EPS is the one threshold everywhere."""
    from backend import figures_sinks, roles, vocab

    for m in vocab.METRICS:
        assert callable(getattr(M, m.reference)), m.name
        assert m.label and m.unit and m.help and m.source
    A = np.full((2, 3, 3), 1 / 3)
    assert tuple(M.prompt_metrics(A, causal=False)) == vocab.HEAD_METRICS
    assert set(vocab.GRID_METRICS) <= set(vocab.HEAD_METRICS)
    assert M.SINK_EPS == vocab.SINK_EPS == vocab.METRIC_BY_NAME["sink_first"].threshold == roles.THRESHOLDS["sink"]
    assert f"eps = {vocab.SINK_EPS}" in figures_sinks.METRICS["sink_first"]["help"]
