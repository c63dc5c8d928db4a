"""Sanity checks for the two trained demo checkpoints in assets/models/.

They are produced by scripts/train_demo_lm.py and scripts/train_demo_vit.py.
Each test reloads a checkpoint with ``from_pretrained``, recomputes its held-out
metric on a small deterministic subset, checks it is far better than chance and
that it agrees with the number recorded in ``training_report.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
LM_DIR = ROOT / "assets" / "models" / "tiny-pydoc-lm"
VIT_DIR = ROOT / "assets" / "models" / "digits-vit"

CONTEXT = 128


def _report(folder: Path) -> dict:
    return json.loads((folder / "training_report.json").read_text())


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.mark.parametrize("folder", [LM_DIR, VIT_DIR], ids=["lm", "vit"])
def test_checkpoint_files(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    assert {"config.json", "training_report.json", "README.md"} <= names
    assert json.loads((folder / "config.json").read_text())["attn_implementation"] == "eager"
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 10_000_000


# ----------------------------------------------------------------------------- LM


def _training_script():
    """The LM training script as a module: the test uses its own split and digest, not copies."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "train_demo_lm.py"
    spec = importlib.util.spec_from_file_location("train_demo_lm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lm_heldout_loss() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = _report(LM_DIR)
    tok = AutoTokenizer.from_pretrained(LM_DIR)
    model = AutoModelForCausalLM.from_pretrained(LM_DIR).eval()
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert sum(p.numel() for p in model.parameters()) == report["params"]

    # The tokenizer prepends <|endoftext|> as BOS, as during training.
    enc = tok('The "for" statement')
    assert enc["input_ids"][0] == tok.bos_token_id == cfg.bos_token_id

    script = _training_script()
    docs = script.load_split()[1]
    ids: list[int] = []
    for _, text in docs:
        ids.extend(tok.backend_tokenizer.encode(text).ids)
    n_sub = report["metrics"]["heldout_subset_blocks"]
    blocks = torch.tensor(ids[: n_sub * CONTEXT]).view(n_sub, CONTEXT)
    with torch.no_grad():
        logits = model(input_ids=blocks).logits[:, :-1].float()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), blocks[:, 1:].reshape(-1)
    ).item()

    uniform = math.log(len(tok))
    assert loss < 0.65 * uniform, (loss, uniform)
    m = report["metrics"]
    assert m["heldout_loss"] < 0.65 * uniform
    assert m["heldout_perplexity"] == pytest.approx(math.exp(m["heldout_loss"]), rel=1e-3)
    if script.docs_sha256(docs) == report["dataset"]["heldout_sha256"]:
        # Same pydoc text as at training time -> must reproduce the number.
        assert loss == pytest.approx(m["heldout_subset_loss"], abs=2e-3)
    else:  # another Python version ships different help texts
        assert abs(loss - m["heldout_subset_loss"]) < 0.5


def test_lm_returns_attentions() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(LM_DIR)
    model = AutoModelForCausalLM.from_pretrained(LM_DIR).eval()
    enc = tok("x = [i for i in range(10)]", return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    t = enc["input_ids"].shape[1]
    assert len(out.attentions) == model.config.num_hidden_layers
    a = out.attentions[0]
    assert a.shape == (1, model.config.num_attention_heads, t, t)
    assert torch.allclose(a.sum(-1), torch.ones(1, a.shape[1], t), atol=1e-4)
    assert torch.all(a.triu(1) == 0)  # causal


# ---------------------------------------------------------------------------- ViT


def _render(row: np.ndarray):
    from PIL import Image

    arr = np.clip(np.round(row.reshape(8, 8) * 255.0 / 16.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def test_vit_heldout_accuracy() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    report = _report(VIT_DIR)
    proc = AutoImageProcessor.from_pretrained(VIT_DIR)
    model = AutoModelForImageClassification.from_pretrained(VIT_DIR).eval()
    assert model.config.id2label == {i: str(i) for i in range(10)}
    assert sum(p.numel() for p in model.parameters()) == report["params"]

    d = load_digits()
    _, te = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=0)
    assert len(te) == report["split"]["heldout"]
    images = [_render(d.data[i]) for i in te]
    inputs = proc(images=images, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (len(te), 3, 32, 32)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    pred = out.logits.argmax(-1).numpy()
    labels = [model.config.id2label[int(p)] for p in pred]
    acc = float(np.mean(pred == d.target[te]))

    assert acc > 0.8, acc
    assert all(lab == str(p) for lab, p in zip(labels, pred))
    assert abs(acc - report["metrics"]["heldout_accuracy"]) <= 1.5 / len(te)
    # 64 patches + CLS
    assert out.attentions[-1].shape == (len(te), model.config.num_attention_heads, 65, 65)
