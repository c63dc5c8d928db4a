"""CUDA paths: capture equals eager on the GPU, gates work with CPU-made gate tensors, bf16 runs.

Skipped where no GPU is present (CI); run on a lent GPU machine with ``pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import pytest
import torch

from backend.engine.capture import ATTN_IMPLEMENTATION, CaptureSession
from backend.engine.metrics_reducer import SinkMetricsReducer
from tests.unit.test_capture_equivalence import KeepPatterns
from tests.unit.tiny_models import build, sample_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "qwen2", "vit"])
def test_capture_equals_eager_on_cuda(arch: str) -> None:
    eager = build(arch, "eager").cuda()
    ours = build(arch, ATTN_IMPLEMENTATION).cuda()
    ours.load_state_dict(eager.state_dict())
    inputs = {k: v.cuda() for k, v in sample_inputs(arch).items()}
    keep = KeepPatterns()
    with torch.no_grad():
        ref = eager(**inputs, output_attentions=True)
        with CaptureSession(ours, reducers=[keep], chunk_size=4):
            got = ours(**inputs)
    for layer, pattern in enumerate(ref.attentions):
        assert (keep.layers[layer] - pattern).abs().max().item() <= 1e-5
    assert (got.logits - ref.logits).abs().max().item() <= 1e-4


def test_cpu_gates_on_cuda_model_and_gradients() -> None:
    model = build("llama", ATTN_IMPLEMENTATION).cuda()
    gates = torch.ones(2, 4, requires_grad=True)  # made on the CPU
    inputs = {k: v.cuda() for k, v in sample_inputs("llama").items()}
    with CaptureSession(model, gates=gates):
        out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    assert gates.grad is not None and torch.isfinite(gates.grad).all() and gates.grad.abs().sum() > 0


def test_bf16_patterns_close_to_fp32() -> None:
    fp32 = build("llama", ATTN_IMPLEMENTATION).cuda()
    bf16 = build("llama", ATTN_IMPLEMENTATION, dtype=torch.bfloat16).cuda()
    bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in fp32.state_dict().items()})
    inputs = {k: v.cuda() for k, v in sample_inputs("llama").items()}
    r32, r16 = SinkMetricsReducer(2, 4, causal=True), SinkMetricsReducer(2, 4, causal=True)
    for model, red in ((fp32, r32), (bf16, r16)):
        with torch.no_grad(), CaptureSession(model, reducers=[red], prompts=[0, 1], lengths=[9, 6]):
            model(**inputs)
    a, b = r32.results(), r16.results()
    assert torch.allclose(torch.tensor(a["metrics.sink_first"]), torch.tensor(b["metrics.sink_first"]), atol=2e-2)
