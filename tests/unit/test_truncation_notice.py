"""Item 4 of issue 15: the truncation notice names the prompt, its length and the chosen model's limit."""

from __future__ import annotations

import pytest

from backend.engine.inputs import encode_text, token_limit
from backend.engine.models import load_model
from backend.model_refs import resolve_model
from backend.settings import get_settings


def test_notice_names_prompt_length_and_limit(monkeypatch) -> None:
    monkeypatch.setenv("ATLAS_MAX_TOKENS", "16")
    s = get_settings()
    loaded = load_model(resolve_model("all-MiniLM-L6-v2", s), s, "float32")
    long = "The quick brown fox jumps over the lazy dog " * 5
    notices: list[str] = []
    ids, truncated = encode_text(loaded, ["short one", long], s, notices)
    assert truncated == [1] and len(ids[1]) == token_limit(loaded, s) == 16
    n_tokens = len(loaded.preprocessor(long)["input_ids"])
    assert len(notices) == 1
    note = notices[0]
    assert note.startswith("prompt 2 (\"The quick brown fox jumps over the lazy")
    assert f"has {n_tokens} tokens" in note and "limit of 16 tokens" in note and "all-MiniLM-L6-v2" in note

    monkeypatch.setenv("ATLAS_TRUNCATE", "0")
    with pytest.raises(ValueError, match=rf"prompt 2 .* has {n_tokens} tokens and is over the limit of 16"):
        encode_text(loaded, ["short one", long], get_settings())
