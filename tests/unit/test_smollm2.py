"""The real causal LM (SmolLM2-135M-Instruct, converted from the registry's GGUF): the engine's numbers equal a
direct eager computation on the same weights, and the phenomena of the literature show with margins that a broken
metric cannot meet (sinks, StreamingLLM collapse, previous-token and induction heads, pruning induction heads).

The model is fetched and converted by ``scripts/setup.sh`` (run by ``scripts/test.sh``); these tests fail, not skip,
when it is missing, since the offline causal-LM experience depends on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import corpora, offline_models
from backend.engine.analyze import analyze_model
from backend.engine.capture import BaseReducer, CaptureSession
from backend.engine.models import load_model
from backend.model_refs import ModelError, resolve_model
from backend.settings import get_settings

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
PROSE = list(corpora.PROSE[:2])
EPS = 0.3


@pytest.fixture(scope="module")
def loaded():
    assert offline_models.is_ready(offline_models.SMOLLM2), offline_models.missing_reason(offline_models.SMOLLM2)
    s = get_settings()
    return load_model(resolve_model(MODEL, s), s)


@pytest.fixture(scope="module")
def eager(loaded):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(loaded.ref.path), attn_implementation="eager", dtype=torch.float32,
                                             local_files_only=True, use_safetensors=True)
    return m.eval()


def _ids(loaded, text: str) -> torch.Tensor:
    return torch.tensor([loaded.preprocessor(text)["input_ids"]])


def test_model_is_the_real_smollm2(loaded):
    cfg = loaded.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert cfg.max_position_embeddings == 8192 and loaded.causal
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", get_settings()).fingerprint == loaded.ref.fingerprint
    # it is a trained LM: the continuation of a common phrase is predicted
    ids = _ids(loaded, "The capital of France is")
    with torch.no_grad():
        nxt = loaded.model(input_ids=ids).logits[0, -1].argmax().item()
    assert loaded.preprocessor.decode([nxt]).strip() == "Paris"


def test_patterns_and_sink_metric_equal_eager(loaded, eager):
    """Capture-engine patterns (GQA, RoPE) and sink_first equal eager attention on the same weights."""
    arrays, info = analyze_model(MODEL, PROSE[:1], {"analyses": ["metrics"]})
    ids = _ids(loaded, PROSE[0])
    with torch.no_grad():
        att = eager(input_ids=ids, output_attentions=True).attentions  # L x [1, H, T, T]
    assert len(info.tokens[0]) == ids.shape[1]
    alpha0 = np.stack([a[0, :, :, 0].mean(-1).numpy() for a in att])  # [L, H]: mean attention key 0 receives
    for layer in (0, 7, 15, 29):
        np.testing.assert_allclose(arrays[f"prompt.0.blocks.{layer}.attn.pattern"], att[layer][0].numpy(), atol=2e-5)
    np.testing.assert_allclose(arrays["metrics.sink_first"], alpha0, atol=2e-5)
    assert float(arrays["metrics.sink_rate"]) == pytest.approx(float((alpha0 > EPS).mean()), abs=1e-6)
    prev = np.stack([np.diagonal(a[0].numpy(), offset=-1, axis1=1, axis2=2).mean(-1) for a in att])
    np.testing.assert_allclose(arrays["metrics.previous_token"], prev, atol=2e-5)


class _FirstKey(BaseReducer):
    """Mean attention the first key receives, per layer and head (an independent reducer for the control)."""

    def __init__(self) -> None:
        self.alpha: dict[int, np.ndarray] = {}

    def chunk(self, view, q0, pattern):
        self.alpha.setdefault(view.layer, []).append(pattern[0, :, :, 0].float().sum(-1).numpy())

    def rate(self, n: int) -> float:
        a = np.stack([np.sum(v, axis=0) / n for _, v in sorted(self.alpha.items())])
        return float((a > EPS).mean())


def _first_key_rate(loaded, text: str, score_mod=None) -> float:
    ids = _ids(loaded, text)
    red = _FirstKey()
    with torch.no_grad(), CaptureSession(loaded.model, reducers=[red], score_mod=score_mod, prompts=[0],
                                         lengths=[ids.shape[1]]):
        loaded.model(input_ids=ids)
    return red.rate(ids.shape[1])


def first_key_made_ordinary(view, q0, scores):
    """``score_mod``: each query's logit for the first key becomes the mean of its logits for the other keys it
    can see (keys 1..t), as if the first token's key were an average key."""
    tq, s = scores.shape[-2:]
    t = torch.arange(q0, q0 + tq)[:, None]
    j = torch.arange(s)[None, :]
    visible = ((j >= 1) & (j <= t)).to(scores.dtype)  # [tq, S]
    mean = (scores * visible).sum(-1) / visible.sum(-1).clamp(min=1)  # [B, H, tq]
    out = scores.clone()
    rows = t[:, 0] >= 1
    out[..., rows, 0] = mean[..., rows]
    return out


def test_first_token_sink_and_its_control(loaded):
    """Most heads sink on the first token of prose; when the first key is made an average key (the control), the
    first-token sink rate falls far below one half."""
    for text in PROSE:
        assert _first_key_rate(loaded, text) > 0.5
        assert _first_key_rate(loaded, text, first_key_made_ordinary) < 0.25


def test_streaming_collapse_without_sinks(loaded):
    """StreamingLLM: a window-only cache loses the first tokens and perplexity rises well above window + 4 sinks,
    which stays close to the dense cache."""
    from backend.engine.streaming import run_streaming
    from backend.corpora import long_prose

    tok = loaded.preprocessor
    ids = torch.tensor(tok(long_prose(tok, 400))["input_ids"][:400])
    res = run_streaming(loaded.model, ids, window=32, sinks=4)
    ppl = {k: float(np.exp(res[k][40:].mean())) for k in ("nll_full", "nll_window", "nll_sink")}
    assert ppl["nll_window"] > 2.0 * ppl["nll_sink"], ppl
    assert ppl["nll_sink"] < 1.5 * ppl["nll_full"], ppl


@pytest.fixture(scope="module")
def roles():
    arrays, _info = analyze_model(MODEL, PROSE[:1], {"analyses": ["roles"]})
    return arrays


def test_previous_token_and_induction_heads(roles):
    ind = roles["metrics.induction"]
    assert ind.shape == (30, 9)
    assert ind.max() > 0.6 and (ind > 0.3).sum() >= 5, np.sort(ind, axis=None)[-10:]
    assert np.median(ind) < 0.1  # induction is a property of a few heads, not of all
    assert roles["metrics.previous_token"].max() > 0.6


def test_retrieval_heads_with_the_released_needle_test(roles):
    """The released detector's protocol (chat form for this instruct model): SmolLM2 answers with the needle in
    every trial, and a minority of heads copy it (observed: recall 1.0 x 3, 24 of 270 heads above 0.1, the best
    L18H6 at 0.97)."""
    import json

    trials = json.loads(np.asarray(roles["roles.retrieval_trials"], dtype=np.uint8).tobytes().decode())
    assert trials["test"] == "text" and all(t["chat"] for t in trials["trials"])
    assert (roles["roles.retrieval_recall"] > 0.5).all(), trials
    r = roles["metrics.retrieval"]
    assert r.max() > 0.5 and 0 < (r > 0.1).mean() < 0.2, np.sort(r, axis=None)[-10:]


def test_pruning_induction_heads_breaks_copying(loaded, roles):
    """Switching off the 5 strongest induction heads raises the loss on a repeated random sequence far more than
    switching off 5 heads chosen at random."""
    from scripts.measure_smollm2 import live_pruning

    res = live_pruning(loaded, roles["metrics.induction"], k=5)
    assert res["loss_after"] > res["loss_before"] + 0.5, res
    assert res["loss_after"] - res["loss_before"] > 3 * max(res["loss_after_random_heads"] - res["loss_before"], 0.05), res


def test_missing_tokenizer_is_a_clear_error(loaded, tmp_path, monkeypatch):
    folder = tmp_path / "no-tokenizer-lm"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        (folder / f).symlink_to(loaded.ref.path / f)
    monkeypatch.setenv("ATLAS_MODEL_ROOTS", str(tmp_path))
    s = get_settings()
    with pytest.raises(ModelError, match="no usable tokenizer.*tokenizer.json"):
        load_model(resolve_model("no-tokenizer-lm", s), s)
