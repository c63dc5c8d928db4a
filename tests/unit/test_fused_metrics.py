"""Fused metrics (no patterns: attention with its log-sum-exp, then O(T) statistics) against the reference
reducer on pattern chunks: every per-head metric within 1e-5 in float32 and 1e-3 in bfloat16, on padded
batches, GQA, sliding windows and encoders. On CUDA the same tests run through the flash kernel and the
compiled statistics (tests/gpu)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine.capture import ATTN_IMPLEMENTATION, CaptureSession
from backend.engine.fused_metrics import attention_lse, chunk_stats
from backend.engine.metrics_reducer import MassiveActivationReducer, SinkMetricsReducer
from tests.unit.tiny_models import TEXT_ARCHS, build, sample_inputs

CAUSAL = {"bert": False, "roberta": False}


def run_both(arch: str, dtype: torch.dtype, device: str = "cpu", chunk: int | None = None, inputs=None):
    """(reference results, fused results, reference logits, fused logits, fused session calls)."""
    model = build(arch, ATTN_IMPLEMENTATION, dtype=dtype).to(device)
    inputs = {k: v.to(device) for k, v in (inputs or sample_inputs(arch)).items()}
    lengths = inputs["attention_mask"].sum(1).tolist()
    special = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    special[:, 0] = True
    causal = CAUSAL.get(arch, True)
    out = []
    for fused in (False, True):
        red = SinkMetricsReducer(2, 4, causal=causal)
        session = CaptureSession(model, reducers=[red, MassiveActivationReducer(2)], chunk_size=chunk,
                                 prompts=list(range(len(lengths))), lengths=lengths, special=special, fused=fused)
        with torch.no_grad(), session:
            logits = model(**inputs).logits
        out.append((red.results(), logits.float()))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def assert_close(ref: dict, got: dict, tol: float) -> None:
    assert ref.keys() == got.keys()
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("arch", TEXT_ARCHS)
def test_fused_equals_reference_fp32(arch: str) -> None:
    ref, got, ref_logits, got_logits = run_both(arch, torch.float32)
    assert_close(ref, got, 1e-5)
    assert (ref_logits - got_logits).abs().max() <= 1e-5


def test_fused_equals_reference_in_chunks() -> None:
    ref, got, _, _ = run_both("llama", torch.float32, chunk=2)
    assert_close(ref, got, 1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_fused_equals_reference_bf16(arch: str) -> None:
    ref, got, _, _ = run_both(arch, torch.bfloat16)
    assert_close(ref, got, 1e-3)


def test_chunk_stats_is_the_reference_arithmetic() -> None:
    """One layer by hand: p = softmax(scores), sums as the reference reducer defines them."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(7, 7, dtype=torch.bool).tril()[None, None].expand(2, 1, 7, 7)
    out, lse, _ = attention_lse(q, k, v, mask, 0.5, True, chunk=3)
    scores = (q @ k.transpose(-1, -2) * 0.5).masked_fill(~mask, float("-inf"))
    p = scores.softmax(-1)
    torch.testing.assert_close(out, p @ v)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1).float())
    real = torch.tensor([7, 5])
    rec, ent, dist, prev = chunk_stats(q, k, lse, mask, real, 0, 0.5, True)
    ok = torch.zeros(2, 1, 7, 7, dtype=torch.bool)
    ok[0, :, :7, :7] = True
    ok[1, :, :5, :5] = True
    pr = torch.where(ok & mask, p, 0.0)
    torch.testing.assert_close(rec, pr.sum(2).float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent, (-torch.xlogy(pr, pr)).sum((-1, -2)).float(), atol=1e-6, rtol=1e-6)
    d = (torch.arange(7)[:, None] - torch.arange(7)[None, :]).abs()
    torch.testing.assert_close(dist, (pr * d).sum((-1, -2)).float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(prev, pr.diagonal(offset=-1, dim1=-2, dim2=-1).sum(-1).float(), atol=1e-6,
                               rtol=1e-6)


def test_sessions_with_pattern_reducers_do_not_fuse() -> None:
    from tests.unit.test_capture_equivalence import KeepPatterns

    model = build("llama", ATTN_IMPLEMENTATION)
    keep = KeepPatterns()
    with torch.no_grad(), CaptureSession(model, reducers=[keep], fused=True):
        model(**sample_inputs("llama"))
    assert len(keep.layers) == 2  # patterns still handed on


def layer_pair(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, chunk: int) -> tuple[dict, dict, float]:
    """One layer through the reference reducer (pattern chunks rounded to the model dtype, as the capture
    engine hands them) and through the fused path; (reference results, fused results, max |out diff|)."""
    from backend.engine.capture import LayerView

    b, h, t, d = q.shape
    scale = d**-0.5
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device)
    mask = (mask.tril() if causal else mask)[None, None].expand(b, 1, t, t)
    special = torch.zeros(b, t, dtype=torch.bool, device=q.device)
    special[:, 0] = True
    view = LayerView(0, q, k, scale, list(range(b)), [t] * b, special)
    ref, fused = SinkMetricsReducer(1, h, causal), SinkMetricsReducer(1, h, causal)
    ref.begin_layer(view)
    outs = []
    for q0 in range(0, t, chunk):
        sc = torch.matmul(q[:, :, q0:q0 + chunk], k.transpose(2, 3)) * scale
        sc = sc.masked_fill(~mask[:, :, q0:q0 + chunk], torch.finfo(sc.dtype).min)
        w = torch.softmax(sc, dim=-1, dtype=torch.float32).to(q.dtype)
        ref.chunk(view, q0, w)
        outs.append(w @ v)
    ref.end_layer(view)
    fused.begin_layer(view)
    out, lse, plain = attention_lse(q, k, v, mask, scale, causal, chunk)
    fused.lse_layer(view, lse, None if plain else mask, chunk)
    fused.end_layer(view)
    diff = float((out.float() - torch.cat(outs, dim=2).float()).abs().max())
    return ref.results(), fused.results(), diff


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-3)])
@pytest.mark.parametrize("causal", [True, False])
def test_layer_fused_equals_reference(dtype: torch.dtype, tol: float, causal: bool) -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 96, 16, generator=g).to(dtype) for _ in range(3))
    k[:, :, 0] *= 4  # a first-key sink, as real models have
    ref, got, diff = layer_pair(q, k, v, causal, chunk=40)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=tol, atol=tol, err_msg=name)
    assert diff <= (1e-5 if dtype == torch.float32 else 2e-2)


class CountingReducer(SinkMetricsReducer):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.fused_layers = 0

    def lse_layer(self, view, lse, mask, chunk) -> None:
        self.fused_layers += 1
        super().lse_layer(view, lse, mask, chunk)


@pytest.mark.parametrize("max_tokens,fused_layers", [(0, 2), (100, 0)])
def test_a_pattern_store_that_keeps_nothing_lets_layers_fuse(max_tokens: int, fused_layers: int) -> None:
    from backend.engine.analyze import PatternStore

    model = build("llama", ATTN_IMPLEMENTATION)
    emitted: dict = {}
    red = CountingReducer(2, 4, True)
    store = PatternStore(emitted.__setitem__, max_tokens, 2)
    with torch.no_grad(), CaptureSession(model, reducers=[store, red], prompts=[0, 1], lengths=[9, 6], fused=True):
        model(**sample_inputs("llama"))
    assert red.fused_layers == fused_layers
    assert len(emitted) == (0 if max_tokens == 0 else 4)
