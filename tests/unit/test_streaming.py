"""StreamingLLM experiment: the one-pass masks equal the paper's token-by-token decoding with a pruned
KV cache, on a tiny random Llama (RoPE, GQA) and on the trained demo LM when it is present."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend import names
from backend.engine import streaming as S
from backend.engine.analyze import RunInfo
from backend.engine.capture import ATTN_IMPLEMENTATION
from tests.unit.tiny_models import VOCAB, build

DEMO_LM = Path(__file__).resolve().parents[2] / "assets" / "models" / "tiny-pydoc-lm"
N = 30  # tokens of the test text


def sharpened(model):
    """Scale the query/key projections so that the random model's attention is far from uniform (with the
    default init every curve differs from the others by ~1e-4 only, too little to tell them apart)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    return model


@pytest.fixture(scope="module")
def llama():
    return sharpened(build("llama", ATTN_IMPLEMENTATION))


@pytest.fixture(scope="module")
def llama_eager():
    return sharpened(build("llama", "eager"))  # same seed, same weights: an independent attention path


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, VOCAB, (N,), generator=torch.Generator().manual_seed(1))


def plain_nll(model, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, :-1]
    return F.cross_entropy(logits, ids[1:], reduction="none").numpy()


def _rerotate(model, k: torch.Tensor, shift: int) -> torch.Tensor:
    """Move a cached post-RoPE key ``[1, Hkv, 1, d]`` by ``shift`` positions with transformers' own RoPE."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = model.model.rotary_emb(k, torch.tensor([[shift]]))
    _, out = apply_rotary_pos_emb(k, k, cos, sin)
    return out


def token_by_token(model, ids: torch.Tensor, window: int, sinks: int, reassign: bool) -> np.ndarray:
    """The paper's evaluation loop, literally: one token per forward pass with a KV cache that keeps the
    ``sinks`` first tokens and the ``window - 1`` most recent ones. With ``reassign``, every token is
    processed at its slot in the cache and the cached keys are re-rotated to their current slots
    (StreamingLLM's positional shift); without, tokens keep their positions in the text."""
    from transformers import DynamicCache

    n_layers = model.config.num_hidden_layers
    keys: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]  # per token [1, Hkv, 1, d], post-RoPE
    values: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    processed_at: list[int] = []
    nll = []
    for t in range(len(ids) - 1):
        kept = [j for j in range(t) if j < sinks or j > t - window]
        cache = DynamicCache(config=model.config)
        if kept:
            for layer in range(n_layers):
                ks = [_rerotate(model, keys[layer][j], slot - processed_at[j]) if reassign else keys[layer][j]
                      for slot, j in enumerate(kept)]
                cache.update(torch.cat(ks, 2), torch.cat([values[layer][j] for j in kept], 2), layer)
        pos = len(kept) if reassign else t
        with torch.no_grad():
            out = model(input_ids=ids[None, t : t + 1], position_ids=torch.tensor([[pos]]),
                        past_key_values=cache, use_cache=True)
        for layer in range(n_layers):
            lay = out.past_key_values.layers[layer]
            keys[layer].append(lay.keys[:, :, -1:].clone())
            values[layer].append(lay.values[:, :, -1:].clone())
        processed_at.append(pos)
        nll.append(float(F.cross_entropy(out.logits[0, -1:], ids[t + 1 : t + 2])))
    return np.asarray(nll)


def test_mask_rows() -> None:
    m = S.streaming_mask(7, window=3, sinks=2).int().tolist()
    assert m[6] == [1, 1, 0, 0, 1, 1, 1]  # sinks 0,1 + the last 3 keys
    assert m[3] == [1, 1, 1, 1, 0, 0, 0]  # not yet evicting: plain causal
    assert S.streaming_mask(5, window=2).int().tolist()[4] == [0, 0, 0, 1, 1]
    assert S.sink_shift(8, window=3, sinks=2).tolist() == [0, 0, 0, 0, 0, -1, -2, -3]


@pytest.mark.parametrize("reassign", [False, True])
def test_window_covering_the_text_equals_full_attention(llama, llama_eager, ids, reassign) -> None:
    res = S.run_streaming(llama, ids, window=N, sinks=4, reassign=reassign)
    ref = plain_nll(llama_eager, ids)
    assert res["nll_full"].shape == (N - 1,) and res["nll_full"].dtype == np.float32
    for name in ("nll_full", "nll_window", "nll_sink"):
        np.testing.assert_allclose(res[name], ref, atol=1e-5, rtol=1e-5)


def test_window_attention_matches_the_token_by_token_cache(llama, llama_eager, ids) -> None:
    res = S.run_streaming(llama, ids, window=5, sinks=4, reassign=True)
    # window attention with positions re-assigned in the cache == original positions (RoPE is relative)
    for reassign in (True, False):
        np.testing.assert_allclose(res["nll_window"], token_by_token(llama_eager, ids, 5, 0, reassign), atol=1e-5)
    assert np.abs(res["nll_window"] - res["nll_full"]).max() > 0.1  # the window does change the numbers


@pytest.mark.parametrize("reassign", [True, False])
def test_sink_attention_matches_the_token_by_token_cache(llama, llama_eager, ids, reassign) -> None:
    res = S.run_streaming(llama, ids, window=5, sinks=3, reassign=reassign)
    assert res["reassigned"] is reassign
    np.testing.assert_allclose(res["nll_sink"], token_by_token(llama_eager, ids, 5, 3, reassign), atol=1e-5)


def test_positions_matter_for_the_sink_curve(llama, ids) -> None:
    a = S.run_streaming(llama, ids, window=5, sinks=3, reassign=True)["nll_sink"]
    b = S.run_streaming(llama, ids, window=5, sinks=3, reassign=False)["nll_sink"]
    np.testing.assert_allclose(a[:7], b[:7], atol=1e-6)  # before the first eviction (t < k + W - 1)
    assert np.abs(a - b).max() > 1e-2


def test_rotation_check_accepts_rope_and_refuses_absolute_positions(llama, ids) -> None:
    assert S.rotation_holds(llama, ids[:12])
    gpt2 = build("gpt2", ATTN_IMPLEMENTATION)
    assert not S.rotation_holds(gpt2, ids[:12])
    res = S.run_streaming(gpt2, ids, window=5, sinks=3)  # falls back to original positions
    assert res["reassigned"] is False and np.isfinite(res["nll_sink"]).all()


class _Tok:
    def convert_tokens_to_ids(self, toks):
        return [int(t) for t in toks]


def _stage(model, causal: bool, tokens: list[str]):
    loaded = SimpleNamespace(kind="text", causal=causal, model=model, preprocessor=_Tok(), device=torch.device("cpu"))
    info = RunInfo(n_layers=2, n_heads=4, causal=causal, kind="text", model_class=type(model).__name__,
                   device="cpu", dtype="float32", tokens=[tokens])
    arrays: dict[str, np.ndarray] = {}
    seen: list[float] = []
    S.streaming_stage(loaded, ["x"], {"analyses": ["streaming"]}, [], arrays.__setitem__,
                      lambda f, s: seen.append(f), lambda: False, info)
    return arrays, info, seen


def test_stage_emits_the_named_arrays(llama, ids) -> None:
    tokens = [str(int(i)) for i in ids]
    arrays, info, seen = _stage(llama, True, tokens)
    from backend.engine.stages import post_stages

    assert [s.run for s in post_stages({"analyses": ["attention", "streaming"]})] == [S.streaming_stage]
    assert post_stages({"analyses": ["attention", "metrics"]}) == []
    for name in ("nll_full", "nll_window", "nll_sink"):
        assert arrays[names.streaming(name)].shape == (N - 1,) and arrays[names.streaming(name)].dtype == np.float32
    params = arrays[names.streaming("params")]
    assert params.dtype == np.int32 and params.tolist() == [S.default_window(N), 4]
    assert int(arrays[names.streaming("reassigned")]) == 1
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)


def test_stage_skips_encoders_with_a_notice() -> None:
    bert = build("bert", ATTN_IMPLEMENTATION)
    arrays, info, _ = _stage(bert, False, ["1", "2", "3", "4"])
    assert arrays == {}
    assert any("StreamingLLM" in n and "causal" in n for n in info.notices)


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_LM.is_dir(), reason="demo LM not built")
def test_demo_lm_one_pass_equals_token_by_token() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO_LM)
    model = AutoModelForCausalLM.from_pretrained(DEMO_LM, attn_implementation=ATTN_IMPLEMENTATION).eval()
    eager = AutoModelForCausalLM.from_pretrained(DEMO_LM, attn_implementation="eager").eval()
    text = 'The "for" statement is used to iterate over the elements of a sequence (such as a string, tuple or list).'
    ids = torch.tensor(tok(text)["input_ids"][:40])
    assert S.rotation_holds(model, ids[:16])
    res = S.run_streaming(model, ids, window=8, sinks=4)
    assert res["reassigned"]
    np.testing.assert_allclose(res["nll_full"], plain_nll(eager, ids), atol=1e-4)
    np.testing.assert_allclose(res["nll_window"], token_by_token(eager, ids, 8, 0, True), atol=1e-4)
    np.testing.assert_allclose(res["nll_sink"], token_by_token(eager, ids, 8, 4, True), atol=1e-4)
