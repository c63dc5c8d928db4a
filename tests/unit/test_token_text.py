"""Readable tokens and word merging (backend.token_text), on real tokenizers' output."""

from __future__ import annotations

import numpy as np
import pytest

from backend import token_text


def test_byte_level_marks_become_spaces_newlines_and_characters() -> None:
    toks = ["<|im_start|>", "The", "Ġcat", "Ċ", "ĊĊ", "def", "Ġfoo", "ĉ", "Ġdon", "âĢĻt"]
    assert token_text.readable_tokens(toks) == ["<|im_start|>", "The", " cat", "\n", "\n\n", "def", " foo", "\t",
                                                " don", "’t"]
    assert token_text.labels(toks)[3] == "↵" and token_text.labels(["Ġ", "Ġx"]) == ["␣", " x"]


def test_wordpiece_and_sentencepiece_tokens() -> None:
    assert token_text.readable_tokens(["[CLS]", "play", "##ing", "[SEP]"]) == ["[CLS]", "play", "##ing", "[SEP]"]
    assert token_text.readable_tokens(["▁The", "▁play", "ing"]) == [" The", " play", "ing"]


@pytest.mark.parametrize("tokens, words", [
    (["[CLS]", "the", "play", "##ing", "cat", ".", "[SEP]"], ["[CLS]", "the", "playing", "cat", ".", "[SEP]"]),
    (["<|im_start|>", "The", "Ġunbeliev", "able", "Ġcat", ",", "Ġsat", "Ċ", "def"],
     ["<|im_start|>", "The", " unbelievable", " cat", ",", " sat", "\n", "def"]),
])
def test_word_groups(tokens, words) -> None:
    groups = token_text.word_groups(tokens)
    assert token_text.word_text(tokens, groups) == words
    assert sorted(i for g in groups for i in g) == list(range(len(tokens)))


def test_merge_sums_keys_and_averages_queries() -> None:
    rng = np.random.default_rng(0)
    pat = rng.random((3, 5, 5))
    pat /= pat.sum(-1, keepdims=True)
    groups = [[0], [1, 2], [3, 4]]
    merged = token_text.merge_words(pat, groups)
    assert merged.shape == (3, 3, 3)
    np.testing.assert_allclose(merged.sum(-1), 1.0, atol=1e-12)  # rows still sum to 1
    # word 1 (pieces 1, 2) -> word 2 (pieces 3, 4): mean over queries 1, 2 of the sum over keys 3, 4
    expect = (pat[:, 1, 3] + pat[:, 1, 4] + pat[:, 2, 3] + pat[:, 2, 4]) / 2
    np.testing.assert_allclose(merged[:, 1, 2], expect)
    np.testing.assert_allclose(merged[:, 0, 0], pat[:, 0, 0])


def test_real_smollm2_tokens_are_readable() -> None:
    from backend.model_refs import resolve_model
    from backend.settings import get_settings

    try:
        ref = resolve_model("smollm2-135m", get_settings())
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"smollm2-135m is not available here: {exc}")
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(ref.path), local_files_only=True)
    text = "def f(x):\n    return x  # don’t"
    toks = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    assert "".join(token_text.readable_tokens(toks)) == text


def test_merge_of_consecutive_runs_equals_the_general_path() -> None:
    """Words and thumbnail bins are runs of consecutive positions (the fast path); any grouping is the matmul
    path: both equal the direct sum over keys / mean over queries."""
    rng = np.random.default_rng(4)
    pat = rng.random((2, 9, 9)).astype(np.float32)
    runs = [[0], [1, 2, 3], [4], [5, 6], [7, 8]]
    merged = token_text.merge_words(pat, runs)
    assert merged.dtype == np.float32 and merged.shape == (2, 5, 5)
    for a, qa in enumerate(runs):
        for b, kb in enumerate(runs):
            direct = pat[:, qa][:, :, kb].astype(np.float64).sum(-1).mean(-1)
            np.testing.assert_allclose(merged[:, a, b], direct, rtol=1e-6)
    shuffled = [[0, 4], [1, 2, 3], [5, 6], [7, 8]]  # not consecutive: the general path
    general = token_text.merge_words(pat, shuffled)
    np.testing.assert_allclose(general[:, 0, 1], pat[:, [0, 4]][:, :, [1, 2, 3]].sum(-1).mean(-1), rtol=1e-6)


def test_prompt_previews() -> None:
    assert token_text.text_of(["[CLS]", "paris", "is", "play", "##ing", "[SEP]"]) == "[CLS] paris is playing [SEP]"
    assert token_text.text_of(["<|im_start|>", "The", "Ġcat", "Ċ", "def"]) == "<|im_start|>The cat\ndef"
    assert token_text.text_of(["▁The", "▁play", "ing"]) == " The playing"
    assert token_text.preview(["The", "Ġcat", "Ċ", "def"]) == "The cat↵def"
    assert token_text.preview(["[CLS]"] + ["word"] * 40, limit=20) == "[CLS] word word word"
