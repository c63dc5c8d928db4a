"""Models stay resident between jobs (one load per model and dtype), evicted LRU over the budget."""

from __future__ import annotations

from dataclasses import replace

import torch

from backend.engine.capture import ATTN_IMPLEMENTATION
from backend.engine.models import ModelRegistry, load_model, pick_device
from backend.model_refs import resolve_model
from backend.settings import get_settings


def test_registry_keeps_models_resident_and_evicts_lru(tmp_path, monkeypatch) -> None:
    from tests.unit.tiny_models import build

    for name, arch in (("tiny-a", "bert"), ("tiny-b", "gpt2")):
        model = build(arch, "eager")
        model.save_pretrained(tmp_path / name)
    monkeypatch.setenv("ATLAS_MODEL_ROOTS", str(tmp_path))
    s = get_settings()
    a, b = resolve_model("tiny-a", s), resolve_model("tiny-b", s)
    reg = ModelRegistry(s)
    first = reg.get(a, "float32")
    assert reg.get(a, "float32") is first and reg.loads == 1  # no reload for the next job
    assert first.model.config._attn_implementation == ATTN_IMPLEMENTATION
    tiny_budget = ModelRegistry(replace(s, model_memory_budget_mb=0))
    tiny_budget.get(a, "float32")
    tiny_budget.get(b, "float32")
    assert len(tiny_budget) == 1  # the least recently used one went
    tiny_budget.get(a, "float32")
    assert tiny_budget.loads == 3


def test_device_and_dtype_choice() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    s = get_settings()
    loaded = load_model(resolve_model("all-MiniLM-L6-v2", s), s, "bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert (loaded.n_layers, loaded.n_heads, loaded.causal, loaded.kind) == (6, 12, False, "text")
