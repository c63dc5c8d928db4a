"""The importance stage and the live pruning experiment in-process (tiny models), plus what the web side
validates without torch: heads, prompts, digests, the ``labels`` option, CSV labels and the figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import names
from backend.prune_spec import check_heads, check_prompt, format_off, parse_off, prune_digest
from backend.settings import get_settings
from backend.spec import SpecError, build_spec, normalise_options

PROMPTS = ['The "if" statement is used for conditional execution.', "A list is a mutable sequence of objects.",
           "Strings are immutable sequences."]


# ------------------------------------------------------------------------- requests (no torch)


def test_check_heads() -> None:
    assert check_heads([[2, 1], [0, 3]], 4, 4) == [[0, 3], [2, 1]]
    assert check_heads([], 4, 4) == []
    for bad, msg in (([[4, 0]], "layer 4"), ([[0, 4]], "head 4"), ([[1, 1], [1, 1]], "twice"),
                     ([[1, 1.0]], "pair of integers"), ([[False, 1]], "pair of integers"), ({"0": 1}, "list")):
        with pytest.raises(SpecError, match=msg):
            check_heads(bad, 4, 4)
    assert check_prompt(None, 3) == 0 and check_prompt(2, 3) == 2
    for bad in (3, -1, "1", True):
        with pytest.raises(SpecError):
            check_prompt(bad, 3)


def test_digest_is_content_addressed_and_off_round_trips() -> None:
    a = prune_digest("r" * 32, [[2, 1], [0, 3]], 0)
    assert a == prune_digest("r" * 32, [[0, 3], [2, 1]], 0) and len(a) == 64
    assert a != prune_digest("r" * 32, [[0, 3]], 0) and a != prune_digest("r" * 32, [[2, 1], [0, 3]], 1)
    assert parse_off("2-1,0-3,junk,0-3,5") == [[0, 3], [2, 1]]
    assert format_off([[2, 1], [0, 3]]) == "0-3,2-1" and parse_off("") == []


def test_labels_option() -> None:
    assert "labels" not in normalise_options({}) and "labels" not in normalise_options({"labels": None})
    assert normalise_options({"labels": [0, 2]})["labels"] == [0, 2]
    for bad in ([], [0, -1], [0, 1.5], [True], "0,1"):
        with pytest.raises(SpecError, match="labels"):
            normalise_options({"labels": bad})
    s = get_settings()
    assert build_spec("m", ["a", "b"], {"labels": [1, 0]}, s).options["labels"] == [1, 0]
    with pytest.raises(SpecError, match="one class id per input"):
        build_spec("m", ["a", "", "b"], {"labels": [1, 0, 1]}, s)


def test_csv_labels() -> None:
    from backend.uploads import UploadError, parse_labels

    s = get_settings()
    assert parse_labels("x.csv", b"text,label\nfine,1\n,0\ngood ,2\n", s) == [1, 2]
    assert parse_labels("x.csv", b"text\nfine\n", s) is None and parse_labels("x.txt", b"fine\n", s) is None
    with pytest.raises(UploadError, match="row 2"):
        parse_labels("x.csv", b"prompt,label\nfine,pos\n", s)


def test_figures() -> None:
    from backend import figures_importance as fi

    fig = fi.importance_grid(np.arange(12).reshape(3, 4) / 10, False, off=[[0, 1]])
    assert fig.data[0].z.shape == (3, 4) and len(fig.layout.shapes) == 1
    curves = {o: {"fractions": [0, 0.5, 1], "loss": [1, 2, 3]} for o in ("importance", "reverse")}
    curves["random"] = {"fractions": [0, 0.5, 1], "loss": [1, 2.5, 3], "loss_std": [0, 0.2, 0]}
    fig = fi.pruning_curves(curves, "loss", baseline=1.0)
    assert [t.name for t in fig.data] == ["least important first", "most important first", "random ± std",
                                          "random order (mean ± std, 3 seeds)"]
    assert len(fi.pruning_curves(curves, "accuracy").data) == 0


# ----------------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def lm():
    from backend.engine.models import load_model
    from backend.model_refs import resolve_model

    s = get_settings()
    return load_model(resolve_model("tiny-pydoc-lm", s), s)


def _run(loaded, inputs, options):
    from backend.engine.analyze import analyze

    arrays: dict[str, np.ndarray] = {}
    info = analyze(loaded, inputs, normalise_options(options), arrays.__setitem__)
    return arrays, info


def test_stage_on_the_demo_lm_and_live_pruning(lm) -> None:
    from backend.engine.importance_gates import evaluate_with_gates, head_importance, pruning_curve
    from backend.engine.importance_stage import make_batches, prune_experiment, read_meta

    arrays, info = _run(lm, PROMPTS, {"analyses": ["attention", "importance"]})
    imp = arrays[names.metric("importance")]
    assert imp.shape == (4, 4) and imp.dtype == np.float32 and (imp > 0).all()
    np.testing.assert_allclose(np.linalg.norm(arrays[names.metric("importance_normalised")], axis=1), 1, rtol=1e-5)
    batches = make_batches(lm, PROMPTS, info.tokens)
    np.testing.assert_allclose(imp, head_importance(lm.model, batches, "causal_lm"), rtol=1e-5)
    for rule in ("per_token", "per_example"):  # both rules stored, the run's rule (default per_token) as importance
        np.testing.assert_allclose(arrays[names.metric(f"importance_{rule}")],
                                   head_importance(lm.model, batches, "causal_lm", reduction=rule), rtol=1e-5)
    np.testing.assert_array_equal(imp, arrays[names.metric("importance_per_token")])
    meta = read_meta(arrays[names.IMPORTANCE_META])
    assert meta["importance_rule"] == "per_token" and "released code" in meta["importance_rule_label"]
    assert meta["task"] == "causal_lm" and meta["n_curve_prompts"] == 3 and "next-token" in meta["objective"]
    base = evaluate_with_gates(lm.model, batches, "causal_lm", None)
    assert meta["baseline"]["loss"] == pytest.approx(base["loss"], rel=1e-6)
    assert arrays[names.pruning("importance", "loss")][0] == pytest.approx(base["loss"], rel=1e-5)
    assert arrays[names.pruning("random", "removed")].shape == (3, 16, 2)
    assert not info.notices
    for order in ("importance", "reverse", "random"):  # the stage's batched curves are the one-pass-per-point ones
        ref = pruning_curve(lm.model, batches, "causal_lm", order=order, step_fraction=0.1, batched=False)
        np.testing.assert_allclose(arrays[names.pruning(order, "loss")], ref["loss"], rtol=1e-5)
        np.testing.assert_array_equal(arrays[names.pruning(order, "removed")], np.asarray(ref["removed"]))

    res = prune_experiment(lm, PROMPTS, info.tokens, normalise_options({}), [[3, 3], [0, 1]], prompt=2)
    gates = torch.ones(4, 4)
    gates[0, 1] = gates[3, 3] = 0
    assert res["heads"] == [[0, 1], [3, 3]]
    assert res["before"]["loss"] == pytest.approx(base["loss"], rel=1e-6)
    assert res["after"]["loss"] == pytest.approx(evaluate_with_gates(lm.model, batches, "causal_lm", gates)["loss"],
                                                 rel=1e-6)
    assert len(res["predictions"]["before"]) == 5 and res["predictions"]["prompt"] == 2
    assert sum(p["prob"] for p in res["predictions"]["after"]) <= 1.0 + 1e-9


def test_stage_cancels(lm) -> None:
    from backend.engine.analyze import Cancelled, analyze
    from backend.engine.importance_stage import importance_stage

    calls = []

    def should_cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        analyze(lm, PROMPTS, normalise_options({"analyses": ["importance"]}), lambda n, a: None,
                should_cancel=should_cancel)
    from backend.engine.stages import post_stages

    assert [s.run for s in post_stages({"analyses": ["importance"]})] == [importance_stage]
    assert post_stages({"analyses": []}) == []


def _tiny_vit_classifier():
    from transformers import ViTImageProcessor

    from backend.engine.capture import ATTN_IMPLEMENTATION
    from backend.engine.models import LoadedModel
    from tests.unit.tiny_models import build

    model = build("vit", ATTN_IMPLEMENTATION)
    proc = ViTImageProcessor(size={"height": 16, "width": 16})
    return LoadedModel(ref=None, model=model, preprocessor=proc, device=torch.device("cpu"), dtype="float32",
                       n_layers=2, n_heads=4, kind="image", causal=False)


def test_image_classifier_with_given_and_model_labels() -> None:
    from PIL import Image

    from backend.engine.importance_stage import prune_experiment, read_meta

    loaded = _tiny_vit_classifier()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    arrays, info = _run(loaded, images, {"analyses": ["importance"], "labels": [0, 2, 1]})
    meta = read_meta(arrays[names.IMPORTANCE_META])
    assert meta["label_source"] == "given" and "given with the run" in meta["objective"]
    assert names.pruning("importance", "perplexity") not in arrays
    assert arrays[names.metric("importance")].shape == (2, 4)
    arrays, info = _run(loaded, images, {"analyses": ["importance"]})
    meta = read_meta(arrays[names.IMPORTANCE_META])
    assert meta["label_source"] == "model" and meta["baseline"]["accuracy"] == 1.0
    assert any("own predictions" in n for n in info.notices)
    res = prune_experiment(loaded, images, None, normalise_options({"labels": [0, 2, 1]}), [[1, 0]], prompt=0)
    assert res["label_source"] == "given" and res["before"]["perplexity"] is None
    assert [p["token"] for p in res["predictions"]["before"]][0].startswith("LABEL_")
    with pytest.raises(ValueError, match="class ids below 3"):
        _run(loaded, images, {"analyses": ["importance"], "labels": [0, 3, 1]})


def test_masked_lm_predictions_mask_the_last_word() -> None:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from backend.engine.capture import ATTN_IMPLEMENTATION
    from backend.engine.importance_stage import prune_experiment
    from backend.engine.models import LoadedModel
    from backend.model_refs import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model("minilm", get_settings()).path), local_files_only=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    cfg._attn_implementation = ATTN_IMPLEMENTATION
    loaded = LoadedModel(ref=None, model=BertForMaskedLM(cfg).eval(), preprocessor=tok, device=torch.device("cpu"),
                         dtype="float32", n_layers=2, n_heads=4, kind="text", causal=False)
    tokens = [tok.convert_ids_to_tokens(tok(p)["input_ids"]) for p in PROMPTS]
    res = prune_experiment(loaded, PROMPTS, tokens, normalise_options({}), [[0, 0]], prompt=1)
    assert res["task"] == "masked_lm" and res["predictions"]["position"] == len(tokens[1]) - 3  # not '.', [SEP]
    assert "objects" in res["predictions"]["what"] and len(res["predictions"]["after"]) == 5
    assert res["before"]["perplexity"] is not None
