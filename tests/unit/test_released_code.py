"""The project's numbers against direct NumPy re-computations written from each paper's released code
(docs/REFERENCES.md), on inputs where the default (released) rule and the project's named variant differ,
so a test fails if the wrong one is wired in.

* sink rate: sail-sg/Attention-Sink ``eval_sink_open_source.py`` (``compute_attention_sink``);
* rollout discard: jacobgil/vit-explain ``vit_rollout.py`` (``rollout``);
* head importance: Michel et al.'s ``classifier_eval.py`` (``calculate_head_importance``) and fairseq ``prune.py``;
* retrieval heads: nightdessert/Retrieval_Head ``retrieval_head_detection.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import metrics as M
from backend import names
from backend.engine.capture import LayerView
from backend.engine.metrics_reducer import SinkMetricsReducer

# --- sink rate ------------------------------------------------------------------------------------


def released_sink_rate(attn: np.ndarray, eps: float) -> float:
    """``compute_attention_sink`` of eval_sink_open_source.py on ``attn [samples, layers, heads, T, T]``:
    divide column k by ``T - k`` (``ratios = arange(T, 0, -1)`` on the key axis), sum over queries,
    threshold at eps, mean over samples, layers and heads; the first token's entry (x 100 there)."""
    n, layers, heads, t, _ = attn.shape
    ratios = np.arange(t, 0, -1, dtype=np.float64)[None, None, None, None, :]
    importance = (attn.astype(np.float64) / ratios).sum(axis=-2)  # [N, L, H, T]
    metric1 = (importance > eps).astype(np.float64).mean(axis=(0, 1, 2))
    return float(metric1[0])


def causal_patterns(rng: np.random.Generator, n: int, layers: int, heads: int, t: int) -> np.ndarray:
    """Random causal attention ``[N, L, H, T, T]`` whose first-token mass varies a lot between samples."""
    logits = rng.normal(size=(n, layers, heads, t, t))
    logits[..., 0] += rng.uniform(-2.0, 4.0, size=(n, layers, heads, 1))  # per-sample sink strength
    logits = np.where(np.tril(np.ones((t, t), dtype=bool)), logits, -np.inf)
    a = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return a / a.sum(axis=-1, keepdims=True)


def reducer_results(attn: np.ndarray) -> dict[str, np.ndarray]:
    """Feed ``attn [N, L, H, T, T]`` (one batch of N equal-length prompts) to the streaming reducer."""
    n, layers, heads, t, _ = attn.shape
    red = SinkMetricsReducer(layers, heads, causal=True)
    q = torch.zeros(n, heads, t, 4)
    for layer in range(layers):
        view = LayerView(layer, q, q, 0.5, list(range(n)), [t] * n)
        red.begin_layer(view)
        for q0 in range(0, t, 5):  # in chunks of query rows, as the engine does
            red.chunk(view, q0, torch.as_tensor(attn[:, layer, :, q0 : q0 + 5], dtype=torch.float32))
        red.end_layer(view)
    return red.results()


def test_sink_rate_follows_the_released_evaluation_not_the_mean_alpha_threshold() -> None:
    rng = np.random.default_rng(0)
    attn = causal_patterns(rng, n=8, layers=3, heads=4, t=16)
    res = reducer_results(attn)
    alpha = res[names.SINK_ALPHA_FIRST]
    assert alpha.shape == (8, 3, 4) and alpha.dtype == np.float32
    released = released_sink_rate(attn, 0.3)
    mean_rule = float((attn[..., :, 0].mean(axis=-1).mean(axis=0) > 0.3).mean())  # threshold of the mean alpha
    assert abs(released - mean_rule) > 0.02, "the test input must separate the two rules"
    assert float(res[names.metric("sink_rate")]) == pytest.approx(released, abs=1e-9)
    assert M.sink_rate(alpha, 0.3) == pytest.approx(released, abs=1e-9)
    assert M.sink_rate(alpha, 0.3, "prompt_mean") == pytest.approx(mean_rule, abs=1e-9)
    # other thresholds from the stored per-prompt alpha, no recomputation
    for eps in (0.05, 0.1, 0.2, 0.5, 0.8):
        assert M.sink_rate(alpha, eps) == pytest.approx(released_sink_rate(attn, eps), abs=1e-9), eps
    share = M.sink_share(alpha, 0.3)
    assert share.shape == (3, 4) and float(share.mean()) == pytest.approx(released, abs=1e-9)


def test_sink_rate_rules_and_eps_are_checked() -> None:
    alpha = np.array([[[0.5, 0.1]], [[0.05, 0.1]]])  # 2 prompts, 1 layer, 2 heads
    assert M.sink_rate(alpha, 0.3) == 0.25  # one (prompt, head) of four
    assert M.sink_rate(alpha, 0.3, "prompt_mean") == 0.0  # mean alpha 0.275 and 0.1
    assert M.sink_rate(alpha[0], 0.3) == M.sink_rate(alpha[0], 0.3, "prompt_mean") == 0.5
    with pytest.raises(ValueError, match="sink rule"):
        M.sink_rate(alpha, 0.3, "majority")
    for bad in (-0.1, 1.5, "x", float("nan")):
        with pytest.raises(ValueError, match="eps"):
            M.check_sink_eps(bad)
    nan_layer = np.array([[[0.5, 0.5], [np.nan, np.nan]]])
    assert M.sink_rate(nan_layer, 0.3) == 0.5 == M.sink_rate(nan_layer, 0.3, "prompt_mean")


# --- rollout discard --------------------------------------------------------------------------------


def released_rollout(attentions: list[np.ndarray], head_fusion: str, discard_ratio: float) -> np.ndarray:
    """``rollout`` of jacobgil/vit-explain vit_rollout.py in NumPy (one image, ``[H, T, T]`` per layer):
    drop the ``int(T*T*ratio)`` smallest entries of the fused matrix (``topk(..., largest=False)`` on the
    flattened matrix), except flat index 0 (CLS->CLS); add I, halve. The one documented difference kept by
    the project: rows are renormalised (Abnar & Zuidema) where vit-explain's ``a / a.sum(dim=-1)``
    broadcasts over columns."""
    n = attentions[0].shape[-1]
    result = np.eye(n)
    for attention in attentions:
        fused = {"mean": attention.mean(axis=0), "max": attention.max(axis=0),
                 "min": attention.min(axis=0)}[head_fusion].copy()
        flat = fused.reshape(-1)  # a view, as .view(...) in the released code
        indices = np.argsort(flat, kind="stable")[: int(flat.size * discard_ratio)]
        indices = indices[indices != 0]
        flat[indices] = 0
        a = (fused + 1.0 * np.eye(n)) / 2
        a = a / a.sum(axis=-1, keepdims=True)
        result = a @ result
    return result


@pytest.fixture(scope="module")
def vit_patterns() -> list[np.ndarray]:
    from tests.unit.tiny_models import build, sample_inputs

    model = build("vit", "eager")
    with torch.no_grad():
        out = model(**sample_inputs("vit"), output_attentions=True)
    return [a[0].numpy().astype(np.float64) for a in out.attentions]


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.5, 0.9])
def test_rollout_discard_follows_vit_explain(vit_patterns, fusion: str, discard: float) -> None:
    from backend import vit

    want = released_rollout(vit_patterns, fusion, discard)
    got = vit.rollout(vit_patterns, fusion, discard)  # default rule
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    layout = vit.TokenLayout(n_prefix=1, rows=4, cols=4)
    np.testing.assert_allclose(vit.rollout_grid(vit_patterns, layout, fusion, discard).ravel(), want[0, 1:],
                               rtol=1e-12, atol=1e-14)
    variant = vit.rollout(vit_patterns, fusion, discard, discard_rule="spare_cls")
    assert np.abs(variant[0, 1:] - want[0, 1:]).max() > 1e-3, "default and variant must differ on this input"


def test_rollout_discard_spares_cls_to_cls_only() -> None:
    from backend import vit

    a = np.array([[0.01, 0.5, 0.49], [0.3, 0.3, 0.4], [0.2, 0.02, 0.78]])
    # 9 entries, ratio 0.34 -> the 3 smallest: (0,0) 0.01 spared, (2,1) 0.02 and (2,0) 0.2 zeroed
    got = vit._discard(a, 0.34, keep=(0,))
    want = a.copy()
    want[2, 1] = want[2, 0] = 0.0
    np.testing.assert_array_equal(got, want)
    # the variant never touches the CLS row or column: 4 candidates, int(4 * 0.34) = 1 -> (2,1) 0.02
    got = vit._discard(a, 0.34, keep=(0,), rule="spare_cls")
    want = a.copy()
    want[2, 1] = 0.0
    np.testing.assert_array_equal(got, want)


# --- head importance --------------------------------------------------------------------------------

PROJECTION = {  # the output projection of layer l: its input is the heads' concatenated outputs (context)
    "bert": "bert.encoder.layer.{}.attention.output.dense",
    "gpt2": "transformer.h.{}.attn.c_proj",
    "llama": "model.layers.{}.self_attn.o_proj",
    "vit": "vit.layers.{}.attention.o_proj",
}


def released_importance(model, arch: str, batch: dict, targets: dict, task: str) -> np.ndarray:
    """``calculate_head_importance`` (classifier_eval.py; fairseq prune.py) on the eager model: keep each
    layer's context (the heads' outputs, input of the output projection) with its gradient, ``loss =
    per-example losses .sum()``, ``dot = einsum("bhli,bhli->bhl", grad_ctx, ctx)``, ``|dot|`` summed over
    positions and examples, divided by the number of real tokens (``input_mask.sum()``)."""
    from backend.engine.losses import loss_terms
    from backend.engine.importance_gates import model_shape

    n_layers, n_heads = model_shape(model)
    ctx: dict[int, torch.Tensor] = {}
    hooks = []
    for layer in range(n_layers):
        module = model.get_submodule(PROJECTION[arch].format(layer))

        def keep(mod, args, layer=layer):
            x = args[0]
            x.retain_grad()
            ctx[layer] = x

        hooks.append(module.register_forward_pre_hook(keep))
    try:
        loss = loss_terms(task, model, batch, targets).per_example.sum()
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    imp = np.zeros((n_layers, n_heads))
    for layer in range(n_layers):
        c = ctx[layer].detach().double().numpy()
        g = ctx[layer].grad.double().numpy()
        b, t, _ = c.shape
        c, g = c.reshape(b, t, n_heads, -1).transpose(0, 2, 1, 3), g.reshape(b, t, n_heads, -1).transpose(0, 2, 1, 3)
        dot = np.einsum("bhli,bhli->bhl", g, c)
        imp[layer] = np.abs(dot).sum(-1).sum(0)
    mask = batch.get("attention_mask")
    tot_tokens = float(mask.sum()) if mask is not None else float(b * t)
    return imp / tot_tokens


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert", "vit"])
def test_head_importance_follows_the_released_code(arch: str) -> None:
    from backend.engine.capture import ATTN_IMPLEMENTATION
    from backend.engine.importance_gates import head_importance, head_importance_all
    from backend.engine.losses import model_task, prepare_targets
    from tests.unit.tiny_models import build, sample_inputs

    eager = build(arch, "eager", torch.float64)
    ours = build(arch, ATTN_IMPLEMENTATION, torch.float64)
    ours.load_state_dict(eager.state_dict())
    task, batch = model_task(ours), sample_inputs(arch)
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].double()
    targets = prepare_targets(task, ours, [batch], mask_token_id=4)
    want = released_importance(eager, arch, batch, targets[0], task)
    got = head_importance(ours, [batch], task, targets=targets)  # default rule
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)
    both = head_importance_all(ours, [batch], task, targets=targets)
    np.testing.assert_allclose(both["per_token"], got, rtol=1e-12)
    # the paper's eq. 2 (|.| per example) is another number: larger per-token sums, another ranking
    per_example = both["per_example"]
    n_tokens = float(batch["attention_mask"].sum()) if "attention_mask" in batch else 2 * 17.0
    assert np.all(per_example * 2 <= got * n_tokens * (1 + 1e-9))  # sum_x |sum_t g| <= sum_x sum_t |g|
    assert _spearman(per_example, got) < 0.999, "default and variant must differ on this input"
    assert not np.allclose(per_example / per_example.sum(), got / got.sum(), rtol=1e-3)


# --- retrieval heads --------------------------------------------------------------------------------


def released_detect(model, tok, prompt_ids: list[int], answer: str, max_new: int, is_newline) -> tuple:
    """One trial of retrieval_head_detection.py on the eager model: ``find_needle_idx`` (first window holding
    > 90 % of the answer's distinct ids), prefill all but the last prompt token, then decode greedily feeding
    that token first, at most ``max_new`` tokens, scoring each step's top-1 attended position of every head
    (``retrieval_calculate``), stopping after a newline token; ROUGE-1 recall (stemmed words) x 100."""
    from rouge_score import rouge_scorer

    answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
    start = end = -1
    for i in range(len(prompt_ids)):
        span = set(prompt_ids[i : i + len(answer_ids)])
        if len(span & set(answer_ids)) / len(set(answer_ids)) > 0.9:
            start, end = i, i + len(answer_ids)
            break
    n_layers, n_heads = model.config.n_layer, model.config.n_head
    score = np.zeros((n_layers, n_heads))
    ids = torch.tensor([prompt_ids])
    output = []
    with torch.no_grad():
        past = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
        inp = ids[:, -1]
        for _ in range(max_new):
            out = model(input_ids=inp.view(1, 1), past_key_values=past, use_cache=True, output_attentions=True)
            past = out.past_key_values
            inp = out.logits[0, -1].argmax()
            output.append(int(inp))
            for layer in range(n_layers):
                for head in range(n_heads):
                    _, idx = out.attentions[layer][0][head][-1].topk(1)
                    i = int(idx[0])
                    if start <= i < end and int(inp) == prompt_ids[i]:
                        score[layer, head] += 1 / (end - start)
            if is_newline(int(inp)):
                break
    response = tok.decode(output, skip_special_tokens=True).strip()
    recall = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(answer, response)["rouge1"].recall
    return score, recall * 100, response


def _handset_loaded(model, tok):
    from pathlib import Path

    from backend.engine.models import LoadedModel, _is_causal
    from backend.model_refs import ModelRef

    ref = ModelRef("handset", Path("/nonexistent"), "0" * 16, {"model_type": "test"})
    return LoadedModel(ref, model, tok, torch.device("cpu"), "float32", 2, 4, "text", _is_causal(model))


@pytest.mark.parametrize("stop_word,max_new", [("t24", 10), (None, 7)])
def test_retrieval_text_protocol_follows_the_released_detector(monkeypatch, stop_word, max_new) -> None:
    """The hand-set copying GPT-2 (tests/unit/handset_models.py) on a needle in a haystack of its own words:
    the same prompts through the released detector's loop (eager attention, output_attentions) and ours."""
    from backend import roles as hr
    from backend.engine import roles_stage as roles
    from backend.engine.capture import ATTN_IMPLEMENTATION
    from tests.unit import handset_models as hs

    tok = hs.tokenizer()
    eager, ours = hs.build("eager"), hs.build(ATTN_IMPLEMENTATION)
    stop_id = tok.convert_tokens_to_ids(stop_word) if stop_word else -1
    is_newline = lambda i: i == stop_id  # noqa: E731  (the vocabulary has no newline: a stand-in word)
    monkeypatch.setattr(roles, "newline_stop", lambda _tok: is_newline)
    monkeypatch.setattr(hr, "RETRIEVAL_MAX_NEW_TOKENS", max_new)
    texts = {"haystack": "t2 t3 t4 . t5 t6 t7 t8 . t9 t10 t11 . t12 t13 t14 t15 t16 . t17 t18 t19 .",
             "needle": "t20 t21 t22 t23 t24 t25", "question": "t20 t21", "answer": "t22 t23 t24 t25",
             "template": "{question}"}
    budget = hs.P - max_new
    got, recalls, trials = roles.text_retrieval_scores(_handset_loaded(ours, tok), texts, budget)
    counted, want_recalls = [], []
    for depth, trial in zip(roles.DEPTHS, trials):
        ids, start, end, _ = roles.text_needle_prompt(tok, texts["haystack"], texts["needle"], texts["question"],
                                                      texts["template"], texts["answer"], budget, depth)
        assert trial["answer_span"] == [start, end] and start > 0
        assert ids[start - 2 : start] == tok("t20 t21", add_special_tokens=False)["input_ids"]
        assert ids[start - 3] == tok.convert_tokens_to_ids(".") or start == 3  # after a period (or at the start)
        score, recall, response = released_detect(eager, tok, ids, texts["answer"], max_new, is_newline)
        assert trial["response"] == response
        want_recalls.append(recall / 100)
        if recall > 50:
            counted.append(score)
    np.testing.assert_allclose(recalls, want_recalls, atol=1e-6)
    want = np.mean(counted, axis=0) if counted else np.zeros((2, 4))
    np.testing.assert_allclose(got, want, atol=1e-6)
    if stop_word:  # stops after "t24": 3 of the 4 answer words, each copied by the induction head L1H0
        assert all(t["response"] == "t22 t23 t24" for t in trials)
        assert got[1, 0] == pytest.approx(0.75)
    else:
        assert got[1, 0] == pytest.approx(1.0)  # no stop: 7 tokens, the answer then the haystack after the needle
        assert all(t["response"].startswith("t22 t23 t24 t25 ") for t in trials)
    assert np.delete(got.ravel(), 4).max() < 0.2  # uniform heads hit only by topk's choice among ties


def test_retrieval_filter_is_rouge1_on_stemmed_words_not_token_ids() -> None:
    """The released filter (ROUGE-1 recall of the answer's words, Porter-stemmed, > 0.5) and the synthetic
    variant's (recall of token ids) disagree on a paraphrase."""
    from backend import roles as hr

    answer = "eat a sandwich and sit in Dolores Park on a sunny day"
    response = "Eating sandwiches and sitting in Dolores Park."
    # released: words lower-cased, non-alphanumerics dropped, words over 3 letters stemmed (Porter):
    # eat a sandwich and sit in dolor park on a sunni day / eat sandwich and sit in dolor park -> 7 of 12
    assert hr.rouge1_recall(answer, response) == pytest.approx(7 / 12)
    assert hr.rouge1_recall(answer, response) > hr.RETRIEVAL_MIN_RECALL
    ids = {w: i for i, w in enumerate(sorted(set((answer + " " + response).split())))}
    assert hr.copy_recall([ids[w] for w in response.split()], [ids[w] for w in answer.split()]) < 0.5
    assert hr.find_needle_span([5, 1, 2, 3, 4, 9], [1, 2, 3, 4]) == (1, 5)
    assert hr.find_needle_span([5, 1, 2, 3, 8, 9], [1, 2, 3, 4]) == (-1, -1)  # 3 of 4 distinct ids: not > 0.9


def test_retrieval_stage_uses_the_run_texts_and_falls_back_when_the_context_is_too_small(monkeypatch) -> None:
    """Through the roles stage: the user's needle, question, answer, haystack and template reach the text test;
    a model whose context cannot hold them and 50 new tokens gets the synthetic test, said in a notice."""
    import json

    from backend import roles as hr
    from backend.engine import analyze as an
    from backend.engine.capture import ATTN_IMPLEMENTATION
    from backend.spec import normalise_options
    from tests.unit import handset_models as hs

    tok = hs.tokenizer()
    loaded = _handset_loaded(hs.build(ATTN_IMPLEMENTATION), tok)
    prompts = ["t3 t4 t5 t6 t7 t8 t9 t10"]
    texts = {"retrieval_haystack": "t2 t3 t4 . t5 t6 t7 t8 . t9 t10 t11 . t12 t13 t14 t15 t16 . t17 t18 t19 .",
             "retrieval_needle": "t20 t21 t22 t23 t24 t25", "retrieval_question": "t20 t21",
             "retrieval_answer": "t22 t23 t24 t25", "retrieval_template": "{question}"}

    def run(options):
        arrays: dict[str, np.ndarray] = {}
        info = an.analyze(loaded, prompts, normalise_options({"analyses": ["roles"], **options}), arrays.__setitem__)
        trials = json.loads(np.asarray(arrays["roles.retrieval_trials"], dtype=np.uint8).tobytes().decode())
        return arrays, trials, info.notices

    arrays, trials, notices = run(texts)  # 48 positions: no room for 50 new tokens
    assert trials["test"] == "synthetic" and any("synthetic copy test was used" in n for n in notices)
    synthetic, _, _ = run({"retrieval_test": "synthetic"})
    np.testing.assert_array_equal(arrays["metrics.retrieval"], synthetic["metrics.retrieval"])

    monkeypatch.setattr(hr, "RETRIEVAL_MAX_NEW_TOKENS", 8)
    arrays, trials, notices = run(texts)
    assert trials["test"] == "text" and trials["answer"] == "t22 t23 t24 t25" and trials["question"] == "t20 t21"
    assert [t["recall"] for t in trials["trials"]] == [1.0, 1.0, 1.0]
    assert arrays["roles.retrieval_recall"].tolist() == [1.0, 1.0, 1.0]
    assert arrays["metrics.retrieval"][1, 0] == pytest.approx(1.0)
    assert not [n for n in notices if "etrieval" in n]


def test_retrieval_chat_form_as_the_released_code_for_chat_models() -> None:
    """A tokenizer with a chat template gets the released chat prompt: one user turn
    ``<book>{context}</book>\\n`` + the question in the released format, then the generation prompt."""
    from backend import roles as hr
    from backend.engine import roles_stage as roles
    from tests.unit import handset_models as hs

    tok = hs.tokenizer()
    tok.chat_template = ("{% for m in messages %}t30 {{ m['content'] }} t31{% endfor %}"
                         "{% if add_generation_prompt %} t29{% endif %}")
    texts = {"haystack": "t2 t3 t4 . t5 t6 t7 t8 . t9 t10 t11 .", "needle": "t20 t21 t22 t23",
             "question": "t20", "answer": "t21 t22 t23", "template": hr.RETRIEVAL_TEMPLATE}
    assert roles.uses_chat(tok, texts) and not roles.uses_chat(tok, {**texts, "template": "{question}"})
    ids, start, end, text = roles.text_needle_prompt(tok, texts["haystack"], texts["needle"], texts["question"],
                                                     texts["template"], texts["answer"], 48, 0.5, chat=True)
    assert text.startswith("t30 <book>") and text.endswith(
        "</book>\nBased on the content of the book, Question: t20\nAnswer: t31 t29")
    assert ids == tok(text, add_special_tokens=False)["input_ids"] and ids[0] == tok.convert_tokens_to_ids("t30")
    assert [tok.convert_ids_to_tokens(i) for i in ids[start:end]] == ["t21", "t22", "t23"]
