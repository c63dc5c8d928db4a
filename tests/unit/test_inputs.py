"""Uploads and model references: every bad input gets a clear message."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.model_refs import ModelError, resolve_model
from backend.settings import Settings, get_settings
from backend.uploads import UploadError, check_image, parse_upload

S = Settings(max_upload_bytes=10_000)


def test_text_csv_jsonl_uploads_parse() -> None:
    assert parse_upload("a.txt", b"one\n\n two \n", S) == ["one", "two"]
    assert parse_upload("a.csv", b"id,prompt\n1,hello there\n2,\"a, b\"\n", S) == ["hello there", "a, b"]
    assert parse_upload("a.jsonl", b'{"prompt": "x y"}\n"plain"\n', S) == ["x y", "plain"]


@pytest.mark.parametrize("name,data,message", [
    ("a.txt", b"\xff\xfe\xfa bad", "not UTF-8"),
    ("a.txt", b"\x00\x01\x02binary", "binary"),
    ("a.jsonl", b'{"prompt": "ok"}\n{broken\n', "line 2 is not valid JSON"),
    ("a.jsonl", b'{"other": 1}\n', "line 1 must be"),
    ("a.csv", b'prompt\n"unclosed\n', "malformed CSV"),
    ("a.csv", b"id,body\n1,hello there\n", "no 'prompt' or 'text' column"),
    ("a.csv", b"hello there\nsecond prompt\n", "no 'prompt' or 'text' column"),
    ("a.txt", b"x" * 10_001, "upload limit"),
    ("a.exe", b"MZ", "unsupported file type"),
    ("a.txt", b"\n \n", "no prompts"),
])
def test_bad_uploads_are_refused(name: str, data: bytes, message: str) -> None:
    with pytest.raises(UploadError, match=message):
        parse_upload(name, data, S)


def test_images_are_checked() -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10)).save(buf, format="PNG")
    assert check_image("x.png", buf.getvalue(), S) == (20, 10)
    with pytest.raises(UploadError, match="not a valid PNG or JPEG"):
        check_image("x.png", b"this is text, not an image", S)


def test_model_references() -> None:
    s = get_settings()
    ref = resolve_model("all-MiniLM-L6-v2", s)
    assert (ref.n_layers, ref.n_heads, ref.kind, ref.model_type) == (6, 12, "text", "bert")
    assert resolve_model("minilm", s).fingerprint == ref.fingerprint
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model("no-such-model", s)
    with pytest.raises(ModelError, match="model root"):
        resolve_model("/etc", s)
    with pytest.raises(ModelError, match="model root"):
        resolve_model(str(ref.path) + "/../../../../..", s)


def test_hub_id_while_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="offline"):
        resolve_model("some-org/some-model-that-is-not-cached", get_settings())


def test_pickle_only_checkpoint_is_refused(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "pytorch_model.bin").write_bytes(b"not really")
    monkeypatch.setenv("ATLAS_MODEL_ROOTS", str(tmp_path))
    with pytest.raises(ModelError, match="safetensors"):
        resolve_model("pickled", get_settings())


def test_web_process_does_not_import_torch() -> None:
    code = "import sys, app.main; app.main.create_app(); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False False"


def test_one_input_adapter_per_kind() -> None:
    """Every input kind a run spec accepts has an adapter in the engine, and an unknown kind is refused clearly."""
    from backend import vocab
    from backend.engine import inputs

    assert tuple(inputs.ADAPTERS) == vocab.INPUT_KINDS
    with pytest.raises(ValueError, match="no input adapter for model kind 'audio'"):
        inputs.adapter_class("audio")
