"""Head roles (backend.roles, backend.engine.roles_stage): a GPT-2 with hand-set weights whose heads have known
roles gives the expected scores end to end; the stage's numbers equal direct computations (eager attention,
plain loops) on tiny random models; the counting, role and comparison rules on hand-made arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from backend import roles as hr
from backend import names
from backend.engine import analyze as an
from backend.engine import roles_stage
from backend.engine.capture import ATTN_IMPLEMENTATION
from backend.engine.models import LoadedModel, _is_causal
from backend.model_refs import ModelRef
from backend.spec import normalise_options
from tests.unit import handset_models as hs
from tests.unit.tiny_models import VOCAB, build


def _loaded(model, tok=None, n_layers=2, n_heads=4) -> LoadedModel:
    ref = ModelRef("test-model", Path("/nonexistent"), "0" * 16, {"model_type": "test"})
    return LoadedModel(ref, model, tok, torch.device("cpu"), "float32", n_layers, n_heads, "text", _is_causal(model))


def _prompts(seed: int, n: int = 3, length: int = 20) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"t{i}" for i in rng.integers(2, hs.V, size=length)) for _ in range(n)]


# --- the hand-set GPT-2: every head's role is known ----------------------------------------------------


@pytest.fixture(scope="module")
def handset_run():
    loaded = _loaded(hs.build(ATTN_IMPLEMENTATION), hs.tokenizer())
    arrays: dict[str, np.ndarray] = {}
    info = an.analyze(loaded, _prompts(1), normalise_options({"analyses": ["roles"], "retrieval_test": "synthetic"}),
                     arrays.__setitem__)
    return arrays, info


def test_handset_heads_get_their_scores(handset_run) -> None:
    arrays, info = handset_run
    m = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("metrics.")}
    for key in ("induction", "duplicate_token", "retrieval", "positional_peak", "positional_mass",
                "previous_token", "sink_first", "entropy"):
        assert m[key].shape == (2, 4) and m[key].dtype == np.float32, key
    assert m["previous_token"][0, 0] == pytest.approx(1.0, abs=1e-4)  # L0H0 attends t-1
    assert m["duplicate_token"][0, 1] == pytest.approx(1.0, abs=1e-4)  # L0H1 attends the earlier copy
    assert m["sink_first"][0, 2] == pytest.approx(1.0, abs=1e-4)  # L0H2 attends <bos>
    assert m["positional_peak"][0, 3] == 2 and m["positional_mass"][0, 3] == pytest.approx(1.0, abs=1e-4)
    assert m["positional_peak"][0, 0] == 1 and m["positional_mass"][0, 0] == pytest.approx(1.0, abs=1e-4)
    assert m["induction"][1, 0] == pytest.approx(1.0, abs=1e-4)  # L1H0: token after the earlier copy
    # the copying model reproduces every needle, and only the induction head is credited, for every token
    assert arrays["roles.retrieval_recall"].tolist() == [1.0, 1.0, 1.0]
    expected = np.zeros((2, 4))
    expected[1, 0] = 1.0
    np.testing.assert_array_equal(m["retrieval"], expected)
    # the other heads do not pass for those roles
    assert m["induction"][0].max() < 0.05 and m["induction"][1, 1:].max() < 0.05
    assert m["duplicate_token"][1].max() < 0.05
    assert info.notices == []


def test_handset_dominant_roles(handset_run) -> None:
    arrays, _ = handset_run
    dom = arrays[names.role_array("dominant")]
    assert dom.dtype == np.int32
    got = [[hr.ROLES[c] for c in row] for row in dom]
    assert got == [["previous_token", "duplicate_token", "sink", "positional"],
                   ["retrieval", "none", "none", "none"]]
    assert arrays[names.role_array("positional_profile")].shape == (2, 4, 2 * hr.POSITIONAL_MAX_OFFSET + 1)


# --- direct computations on tiny random models ----------------------------------------------------------


def _plain_scores(A: np.ndarray, tokens: list[int], L: int, offset: int, K: int) -> dict[str, list[float]]:
    """Loops over one head's pattern ``A [T, T]``."""
    T = len(tokens)
    ind = sum(A[t, t - L + 1] for t in range(offset + L, offset + 2 * L)) / L
    dups = [sum(A[t, j] for j in range(t) if tokens[j] == tokens[t]) for t in range(T)
            if any(tokens[j] == tokens[t] for j in range(t))]
    prof = []
    for d in range(-K, K + 1):
        vals = [A[t, t - d] for t in range(T) if 0 <= t - d < T]
        prof.append(sum(vals) / len(vals) if vals else 0.0)
    return {"induction": ind, "duplicate_token": sum(dups) / len(dups) if dups else 0.0, "profile": prof}


@pytest.mark.parametrize("arch,prefix,suffix", [("llama", [1], []), ("bert", [2], [3]), ("gpt2", [], [])])
def test_repeated_token_scores_equal_plain_loops_on_eager_attention(arch, prefix, suffix) -> None:
    captured = _loaded(build(arch, ATTN_IMPLEMENTATION))
    eager = build(arch, "eager")
    rng = np.random.default_rng(3)
    seqs = roles_stage.repeated_sequences(rng, np.arange(4, VOCAB), 2, 9)
    got = roles_stage.repeated_token_scores(captured, seqs, prefix, suffix)
    K = hr.POSITIONAL_MAX_OFFSET
    per = {"induction": [], "duplicate_token": [], "profile": []}
    for seq in seqs:
        tokens = prefix + seq.tolist() + seq.tolist() + suffix
        with torch.no_grad():
            att = eager(input_ids=torch.tensor([tokens]), output_attentions=True).attentions
        rows = [[_plain_scores(a[0, h].double().numpy(), tokens, 9, len(prefix), K) for h in range(4)] for a in att]
        for key in per:
            per[key].append([[r[key] for r in layer] for layer in rows])
    np.testing.assert_allclose(got["induction"], np.mean(per["induction"], axis=0), atol=1e-5)
    np.testing.assert_allclose(got["duplicate_token"], np.mean(per["duplicate_token"], axis=0), atol=1e-5)
    profile = np.mean(per["profile"], axis=0)  # [L, H, 2K+1]
    np.testing.assert_allclose(got["positional_profile"], profile, atol=1e-5)
    np.testing.assert_array_equal(got["positional_peak"], profile.argmax(-1) - K)
    np.testing.assert_allclose(got["positional_mass"], profile.max(-1), atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_top_keys_equal_recomputation_without_cache(arch) -> None:
    """KV-cache generation under capture == greedy by full eager forwards, top positions by argmax."""
    captured = _loaded(build(arch, ATTN_IMPLEMENTATION))
    eager = build(arch, "eager")
    prompt = np.random.default_rng(5).integers(3, VOCAB, size=17).tolist()
    generated, top = roles_stage.greedy_with_top_keys(captured, prompt, 5)
    ids = list(prompt)
    for step in range(5):
        with torch.no_grad():
            out = eager(input_ids=torch.tensor([ids]), output_attentions=True)
        nxt = int(out.logits[0, -1].argmax())
        assert generated[step] == nxt
        want = np.stack([a[0, :, -1, :].argmax(-1).numpy() for a in out.attentions])  # [layers, heads]
        np.testing.assert_array_equal(top[step], want)
        ids.append(nxt)


def test_needle_prompt_layout() -> None:
    pool = np.arange(2, 32)
    ids, start, end, needle = roles_stage.needle_prompt(np.random.default_rng(0), pool, [0], 40, 0.5)
    assert len(ids) == 40 and ids[0] == 0 and end - start == roles_stage.NEEDLE_LEN
    assert ids[start:end] == needle
    cue = ids[start - roles_stage.CUE_LEN : start]
    assert ids[-roles_stage.CUE_LEN :] == cue  # the prompt ends with the cue
    hay = ids[1 : start - roles_stage.CUE_LEN] + ids[end:-roles_stage.CUE_LEN]
    assert not set(hay) & set(cue + needle)  # needle tokens never occur in the haystack


def test_frame_and_candidates_of_the_handset_tokenizer() -> None:
    tok = hs.tokenizer()
    assert roles_stage.special_frame(tok) == ([hs.BOS], [])
    cand = roles_stage.candidate_ids(tok, hs.V)
    assert cand.tolist() == list(range(2, hs.V))


def _bert_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[unused0]": 4,
             **{f"w{i}": i for i in range(5, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def test_encoder_run_has_roles_but_no_retrieval() -> None:
    tok = _bert_tokenizer()
    assert roles_stage.special_frame(tok) == ([2], [3])
    assert 4 not in roles_stage.candidate_ids(tok, VOCAB)  # [unused0] is excluded
    loaded = _loaded(build("bert", ATTN_IMPLEMENTATION), tok)
    assert not loaded.causal
    arrays: dict[str, np.ndarray] = {}
    an.analyze(loaded, ["w5 w6 w7 w8", "w9 w10"], normalise_options({"analyses": ["metrics", "roles"]}),
               arrays.__setitem__)
    assert "metrics.retrieval" not in arrays and "roles.retrieval_recall" not in arrays
    for key in ("induction", "duplicate_token", "positional_peak", "positional_mass"):
        assert arrays[names.metric(key)].shape == (2, 4)
    assert arrays[names.role_array("dominant")].shape == (2, 4)


def test_stage_is_wanted_only_with_roles_and_cancels() -> None:
    from backend.engine import stages

    (stage,) = [s for s in stages.STAGES if s.run is roles_stage.roles_stage]
    assert stage.wanted({"analyses": ["attention", "roles"]})
    assert not stage.wanted({"analyses": ["attention", "metrics"]})
    assert stages.post_stages({"analyses": ["attention", "roles"]}) == [stage]
    loaded = _loaded(hs.build(ATTN_IMPLEMENTATION), hs.tokenizer())
    with pytest.raises(an.Cancelled):
        an.analyze(loaded, _prompts(2, 1), normalise_options({"analyses": ["roles"]}), lambda n, a: None,
                   should_cancel=iter([False, False, True, True, True, True]).__next__)


# --- rules on hand-made arrays ------------------------------------------------------------------------


def test_retrieval_hits_counts_only_copied_needle_tokens() -> None:
    context = [0, 7, 8, 9, 5, 6, 8, 9]  # needle = positions 2..3 (tokens 8, 9); generated 8, 9 at 6, 7
    generated = [8, 9]
    top = np.array([  # [steps, layers=1, heads=4]
        [[2, 2, 1, 3]],  # head 0: the needle's 8 (hit); head 1 same; head 2 outside; head 3 the needle's 9 != 8
        [[3, 6, 3, 0]],  # head 0: the needle's 9 (hit); head 1: a generated 8 (outside); head 2: hit
    ])
    got = hr.retrieval_hits(top, generated, context, 2, 4)
    np.testing.assert_allclose(got, [[1.0, 0.5, 0.5, 0.0]])


def test_copy_recall_is_rouge1_recall_on_ids() -> None:
    assert hr.copy_recall([1, 2, 3], [1, 2, 3, 4]) == 0.75
    assert hr.copy_recall([1, 1, 1], [1, 2]) == 0.5  # clipped counts
    assert hr.copy_recall([], [1]) == 0.0


def test_dominant_role_follows_priority_and_thresholds() -> None:
    z = np.zeros((1, 6))
    scores = {k: z.copy() for k in ("retrieval", "induction", "duplicate_token", "previous_token",
                                    "positional_mass", "positional_peak", "sink_first")}
    scores["sink_first"][0] = [0.9, 0.9, 0.3, 0.9, 0.9, 0.31]  # 0.3 is not > 0.3
    scores["induction"][0, 0] = 0.3
    scores["retrieval"][0, 0] = 0.1  # retrieval outranks induction
    scores["previous_token"][0, 1] = 0.5
    scores["positional_mass"][0, 3], scores["positional_peak"][0, 3] = 0.8, 1  # offset +1: not positional
    scores["positional_mass"][0, 4], scores["positional_peak"][0, 4] = 0.8, -1
    got = [hr.ROLES[c] for c in hr.dominant_roles(scores)[0]]
    assert got == ["retrieval", "previous_token", "none", "sink", "positional", "sink"]
    no_retrieval = {k: v for k, v in scores.items() if k != "retrieval"}
    assert hr.ROLES[hr.dominant_roles(no_retrieval)[0, 0]] == "induction"
    nan = {**scores, "sink_first": np.full((1, 6), np.nan)}
    assert hr.ROLES[hr.dominant_roles(nan)[0, 5]] == "none"


def test_compare_roles_matched_heads() -> None:
    C = hr.ROLE_CODE
    a = np.array([[C["previous_token"], C["sink"]], [C["induction"], C["none"]]])
    b = np.array([[C["previous_token"], C["none"]], [C["none"], C["induction"]]])
    out = hr.compare_roles(a, b)
    assert out["matched"]
    by = {r["role"]: r for r in out["roles"]}
    assert by["previous_token"]["status"] == "stays" and by["previous_token"]["kept"] == 1
    assert by["induction"]["status"] == "moves" and (by["induction"]["gained"], by["induction"]["lost"]) == (1, 1)
    assert by["sink"]["status"] == "vanishes"
    assert {(h["layer"], h["head"], h["change"]) for h in out["heads"]} == {(0, 1, "vanishes"), (1, 0, "vanishes"),
                                                                           (1, 1, "appears")}
    np.testing.assert_array_equal(hr.change_codes(a, b), [[0, 2], [2, 1]])
    appears = hr.compare_roles(np.zeros((2, 2), int), a)
    assert {r["role"]: r["status"] for r in appears["roles"]} == {
        "previous_token": "appears", "sink": "appears", "induction": "appears"}


def test_compare_roles_by_relative_depth_when_shapes_differ() -> None:
    C = hr.ROLE_CODE
    a = np.zeros((4, 2), int)
    a[0, 0] = C["induction"]  # depth 0 in a 4-layer model
    b = np.zeros((8, 3), int)
    b[7, 1] = C["induction"]  # depth 1 in an 8-layer model
    b[3, 0] = C["sink"]
    out = hr.compare_roles(a, b)
    assert not out["matched"] and out["heads"] == []
    by = {r["role"]: r for r in out["roles"]}
    assert by["induction"]["status"] == "moves"
    assert by["induction"]["by_depth_a"] == [1, 0, 0, 0] and by["induction"]["by_depth_b"] == [0, 0, 0, 1]
    assert by["sink"]["status"] == "appears" and by["sink"]["by_depth_b"] == [0, 1, 0, 0]
    same = hr.compare_roles(a, np.kron(a, np.ones((2, 1), int)))  # the same layer share, twice as deep
    assert {r["role"]: r["status"] for r in same["roles"]} == {"induction": "stays"}


def test_table_rows_and_csv() -> None:
    dom = np.array([[hr.ROLE_CODE["induction"], 0]], dtype=np.int32)
    scores = {"induction": np.array([[0.9, 0.0]]), "sink_first": np.array([[0.5, np.nan]]),
              "positional_peak": np.array([[-1.0, 2.0]])}
    rows = hr.head_rows(scores, dom)
    assert rows[0] == {"layer": 0, "head": 0, "role": "induction", "roles": "induction sink",
                       "induction": 0.9, "sink_first": 0.5, "positional_peak": -1}
    assert rows[1]["sink_first"] is None and rows[1]["roles"] == ""
    lines = hr.rows_to_csv(rows).splitlines()
    assert lines[0] == "layer,head,role,roles,induction,positional_peak,sink_first"
    assert lines[2] == "0,1,none,,0.0,2,"


def test_figures_carry_roles_glyphs_and_scores() -> None:
    from backend import figures_atlas as fa

    dom = np.array([[hr.ROLE_CODE["induction"], 0], [hr.ROLE_CODE["sink"], hr.ROLE_CODE["previous_token"]]])
    scores = {"induction": np.array([[0.9, 0.0], [0.1, 0.0]]), "sink_first": np.array([[0.1, 0.2], [0.8, np.nan]])}
    trace = fa.role_grid(dom, scores).data[0]
    np.testing.assert_array_equal(trace.z, dom)
    assert trace.text[0][0] == hr.ROLE_GLYPHS["induction"] and trace.text[1][1] == hr.ROLE_GLYPHS["previous_token"]
    assert list(trace.customdata[0][0]) == ["induction", "0.900", "0.100"] and trace.customdata[1][1][2] == "n/a"
    assert "first-token sink" in trace.hovertemplate
    by_score = fa.role_grid(dom, scores, colour_by="induction").data[0]
    np.testing.assert_allclose(by_score.z, scores["induction"])
    assert len(fa.compare_grids(dom, dom, scores, scores).data) == 3  # A, B and the change panel
    assert len(fa.compare_grids(dom, np.zeros((3, 2), int), scores, {}).data) == 2
    bars = fa.role_depth_bars(hr.compare_roles(dom, np.zeros((3, 2), int)))
    assert {t.name for t in bars.data} == {"A", "B"}
    legend = [t for t in bars.data if t.showlegend is not False]  # one neutral swatch per run: solid A, hatched B
    assert [(t.name, t.marker.color, t.marker.pattern.shape) for t in legend] == [
        ("A", fa.LEGEND_GREY, ""), ("B", fa.LEGEND_GREY, "/")]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_trials_equal_one_by_one(arch) -> None:
    """Trials decoded together (prompts of equal length in one batch, the odd one alone; rows stop at their own
    stop token) give each trial's tokens and top keys of its own run."""
    captured = _loaded(build(arch, ATTN_IMPLEMENTATION))
    rng = np.random.default_rng(11)
    prompts = [rng.integers(3, VOCAB, size=n).tolist() for n in (15, 15, 12, 15)]
    ref = [roles_stage.greedy_with_top_keys(captured, p, 6) for p in prompts]
    stop_id = ref[1][0][2]  # row 1 stops at its third token at the latest; others may stop on it too
    stop = lambda i: i == stop_id  # noqa: E731
    ref = [roles_stage.greedy_with_top_keys(captured, p, 6, stop=stop) for p in prompts]
    got = roles_stage.greedy_batch_with_top_keys(captured, prompts, 6, stop=stop)
    assert len(ref[1][0]) <= 3 and len({len(r[0]) for r in ref} | {6}) >= 2  # some rows stop early
    for (g_ids, g_top), (r_ids, r_top) in zip(got, ref):
        assert g_ids == r_ids
        np.testing.assert_array_equal(g_top, r_top)


def test_the_comparison_tables_are_plain_tables_of_every_row() -> None:
    """The atlas comparison's tables: one header cell and one cell per row for each column, marked with the column's
    key; floats printed short, missing values blank."""
    from app.components import plain_table

    columns = [("role", "role"), ("count_a", "heads in A"), ("depth_a", "mean depth A")]
    rows = [{"role": "⚓ first-token sink", "count_a": 56, "depth_a": 0.58333}, {"role": "R retrieval", "count_a": 0}]
    head, body = plain_table(columns, rows)
    assert [th.children for th in head.children.children] == ["role", "heads in A", "mean depth A"]
    cells = [[(td.children, getattr(td, "data-column")) for td in tr.children] for tr in body.children]
    assert cells == [[("⚓ first-token sink", "role"), ("56", "count_a"), ("0.58333", "depth_a")],
                     [("R retrieval", "role"), ("0", "count_a"), ("", "depth_a")]]
    assert plain_table(columns, None)[1].children == []
