"""Models stay resident between jobs (one load per model and dtype), evicted LRU over the budget."""

from __future__ import annotations

import os
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


def _mapping_rss_kb(address: int) -> tuple[str, int, int]:
    """(file, size kB, resident kB) of this process's memory mapping that holds ``address`` (/proc/self/smaps)."""
    hit, size = None, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                if hit is not None:
                    break
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                if lo <= address < hi:
                    hit, size = (head[5] if len(head) > 5 else ""), (hi - lo) // 1024
            elif hit is not None and head[0] == "Rss:":
                return hit, size, int(head[1])
    raise AssertionError(f"no mapping holds {address:#x}")


def test_weights_faulted_in_at_load_so_jobs_do_not_grow_rss() -> None:
    """MiniLM's float32 weights stay memory-mapped from model.safetensors; before the fault-in, each job with new
    token ids faulted in new embedding pages (RSS climbing job after job). Now all pages are resident after load
    and a job with rare tokens adds none."""
    import pytest

    from backend.engine.analyze import analyze, normalise_options
    from backend.engine.models import fault_in_weights

    if not os.path.exists("/proc/self/smaps"):
        pytest.skip("needs Linux /proc")
    s = get_settings()
    loaded = load_model(resolve_model("all-MiniLM-L6-v2", s), s, "float32")
    emb = loaded.model.get_input_embeddings().weight
    path, size_kb, rss_kb = _mapping_rss_kb(emb.data_ptr())
    assert path.endswith("model.safetensors")  # the cause: the weights are the file's pages, not copies
    assert rss_kb >= 0.97 * size_kb  # all of them resident once loaded
    assert fault_in_weights(loaded.model) == loaded.nbytes + sum(b.numel() * b.element_size()
                                                                 for b in loaded.model.buffers())
    ids = list(range(20000, 30000, 97))  # rare word pieces, spread over ~100 embedding pages
    prompt = " ".join(loaded.preprocessor.convert_ids_to_tokens(ids)).replace("##", "")
    analyze(loaded, [prompt], normalise_options({"analyses": ["metrics"]}), lambda k, v: None, settings=s)
    assert _mapping_rss_kb(emb.data_ptr())[2] - rss_kb <= 16  # a job faults in (almost) nothing more
