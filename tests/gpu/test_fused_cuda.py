"""Fused metrics on CUDA: the flash kernel's log-sum-exp and the compiled statistics against the reference
reducer (float32 within 1e-5, bfloat16 within 1e-3). Run on a lent GPU: ``pytest -m gpu tests/gpu``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unit.test_fused_metrics import assert_close, layer_pair, run_both

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert", "qwen2"])
def test_fused_equals_reference_fp32_cuda(arch: str) -> None:
    ref, got, ref_logits, got_logits = run_both(arch, torch.float32, device="cuda")
    assert_close(ref, got, 1e-5)
    assert (ref_logits - got_logits).abs().max() <= 1e-4


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t,chunk", [(1024, 256), (2048, 2048)])
def test_layer_flash_bf16_equals_reference(causal: bool, t: int, chunk: int) -> None:
    """bf16, causal, no padding: the flash kernel path (non-causal: the chunked path) on real sizes."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 8, t, 64, generator=g, device="cuda").to(torch.bfloat16) for _ in range(3))
    k[:, :, 0] *= 4
    ref, got, diff = layer_pair(q, k, v, causal, chunk)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-3, atol=1e-3, err_msg=name)
    assert diff <= 2e-2


def test_layer_fp32_cuda() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 32, generator=g, device="cuda") for _ in range(3))
    ref, got, diff = layer_pair(q, k, v, True, 128)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert diff <= 1e-5
