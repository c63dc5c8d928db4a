"""With all gates at 1, the capture engine reproduces eager attention exactly (patterns and outputs)."""

from __future__ import annotations

import pytest
import torch

from backend.engine.capture import ATTN_IMPLEMENTATION, BaseReducer, CaptureSession, UnsupportedArchitecture
from tests.unit.tiny_models import ALL_ARCHS, build, sample_inputs


class KeepPatterns(BaseReducer):
    """Test reducer: reassembles each layer's full pattern from its chunks."""

    def __init__(self) -> None:
        self.layers: dict[int, torch.Tensor] = {}
        self.rows: list[torch.Tensor] = []

    def begin_layer(self, view):
        self.rows = []

    def chunk(self, view, q0, pattern):
        assert q0 == sum(r.shape[2] for r in self.rows)
        self.rows.append(pattern.clone())

    def end_layer(self, view):
        assert view.layer not in self.layers, "two modules mapped to one layer"
        self.layers[view.layer] = torch.cat(self.rows, dim=2)


def _run(arch: str, chunk: int | None, gates: torch.Tensor | None = None):
    eager = build(arch, "eager")
    ours = build(arch, ATTN_IMPLEMENTATION)
    ours.load_state_dict(eager.state_dict())
    inputs = sample_inputs(arch)
    with torch.no_grad():
        ref = eager(**inputs, output_attentions=True)
        keep = KeepPatterns()
        with CaptureSession(ours, reducers=[keep], chunk_size=chunk, gates=gates) as session:
            got = ours(**inputs)
        session.check_captured()
    return ref, got, keep


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("chunk", [None, 4])
def test_patterns_and_outputs_equal_eager(arch: str, chunk: int | None) -> None:
    ref, got, keep = _run(arch, chunk)
    assert sorted(keep.layers) == list(range(len(ref.attentions)))
    for layer, ref_pattern in enumerate(ref.attentions):
        assert keep.layers[layer].shape == ref_pattern.shape
        assert (keep.layers[layer] - ref_pattern).abs().max().item() <= 1e-6
    assert (got.logits - ref.logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_padding_rows_are_masked(arch: str) -> None:
    """Keys beyond a sequence's real length get exactly zero attention (the mask trap)."""
    _, _, keep = _run(arch, None)
    for pattern in keep.layers.values():
        assert pattern[1, :, :6, 6:].abs().max().item() == 0.0
        assert torch.allclose(pattern[1, :, :6, :6].sum(-1), torch.ones(1))


def test_causal_models_attend_only_backwards() -> None:
    _, _, keep = _run("gpt2", None)
    upper = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
    for pattern in keep.layers.values():
        assert pattern[0][:, upper].abs().max().item() == 0.0


def test_gate_zero_equals_zeroing_output_projection_input() -> None:
    """Gate 0 on (layer 1, head 2) == zeroing that head's slice of the o_proj input (llama)."""
    gates = torch.ones(2, 4)
    gates[1, 2] = 0.0
    _, got, _ = _run("llama", None, gates=gates)
    model = build("llama", "eager")
    head_dim = 32 // 4

    def zero_head(module, args):
        (x,) = args
        x = x.clone()
        x[..., 2 * head_dim : 3 * head_dim] = 0
        return (x,)

    handle = model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            ref = model(**sample_inputs("llama"))
    finally:
        handle.remove()
    assert (got.logits - ref.logits).abs().max().item() <= 1e-5


def test_session_refuses_model_loaded_without_capture() -> None:
    model = build("bert", "eager")
    with pytest.raises(UnsupportedArchitecture):
        with CaptureSession(model):
            pass


def test_model_runs_normally_outside_a_session() -> None:
    eager = build("gpt2", "eager")
    ours = build("gpt2", ATTN_IMPLEMENTATION)
    ours.load_state_dict(eager.state_dict())
    inputs = sample_inputs("gpt2")
    with torch.no_grad():
        assert torch.allclose(ours(**inputs).logits, eager(**inputs).logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("chunk", [None, 4])
def test_a_shared_scores_buffer_gives_the_same_patterns_and_outputs(arch: str, chunk: int | None) -> None:
    """Scores computed into one buffer for every layer (and softmaxed in place): the patterns reducers see and the
    outputs equal a session without it, number for number; the layers then return no attention weights."""
    from backend.engine.capture import ReusedBuffer  # noqa: PLC0415

    model = build(arch, ATTN_IMPLEMENTATION)
    inputs = sample_inputs(arch)
    runs = []
    for shared in (None, ReusedBuffer()):
        keep = KeepPatterns()
        with torch.no_grad(), CaptureSession(model, reducers=[keep], chunk_size=chunk, scores_buffer=shared):
            out = model(**inputs, output_attentions=True)
        runs.append((keep.layers, out))
    (plain, out_plain), (buffered, out_buffered) = runs
    assert sorted(plain) == sorted(buffered)
    for layer in plain:
        assert torch.equal(plain[layer], buffered[layer])
    assert torch.equal(out_plain.logits, out_buffered.logits)
    assert all(a is None for a in (out_buffered.attentions or ()))


def test_layer_map_is_built_once_per_model_and_again_when_its_modules_change() -> None:
    import copy

    from backend.engine import capture

    model = build("llama", ATTN_IMPLEMENTATION)
    attn = [m for m in model.modules() if type(m).__name__.endswith("Attention")]
    assert [capture.layer_of_module(model, m) for m in attn] == list(range(len(attn)))
    kept = capture._LAYER_MAPS[model]
    assert capture.layer_of_module(model, attn[1]) == 1 and capture._LAYER_MAPS[model] is kept  # built once
    fresh = copy.deepcopy(attn[1])  # a replaced module: not in the map, so the map is built again
    model.model.layers[1].self_attn = fresh
    assert capture.layer_of_module(model, fresh) == 1 and capture._LAYER_MAPS[model] is not kept
    assert capture.layer_of_module(model, torch.nn.Linear(2, 2)) is None
