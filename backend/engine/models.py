"""Loading models for capture, and keeping them resident (LRU within a memory budget).

Rules: safetensors only (``use_safetensors=True``; pickle checkpoints are refused earlier by
``backend.model_refs.check_folder``), ``trust_remote_code`` only when the operator enables it, files
only from the resolved local folder (``local_files_only``), attention through the capture engine.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

from backend.engine.capture import ATTN_IMPLEMENTATION
from backend.engine.inputs import adapter_class
from backend.model_refs import ModelError, ModelRef
from backend.settings import Settings

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for capture plus what is needed to feed it."""

    ref: ModelRef
    model: nn.Module
    preprocessor: Any  # tokenizer for text models, image processor for vision models
    device: torch.device
    dtype: str
    n_layers: int
    n_heads: int
    kind: str  # "text" | "image"
    causal: bool

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def pick_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; an explicit ``cuda`` without a GPU is an error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(setting)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("ATLAS_DEVICE asks for CUDA but no GPU is available")
    return dev


def _model_class(ref: ModelRef, trust_remote_code: bool) -> type:
    archs = ref.config.get("architectures") or []
    for name in archs:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    if ref.config.get("auto_map") and not trust_remote_code:
        raise ModelError(
            f"{ref.ref} needs custom code from its repository; the operator must set "
            "ATLAS_TRUST_REMOTE_CODE=1 to allow it"
        )
    return transformers.AutoModel


def _is_causal(model: nn.Module) -> bool:
    """True when the attention modules are causal (decoders), from the modules themselves."""
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if flags:
        return any(flags)
    return bool(getattr(model.config, "is_decoder", False))


PAGE_BYTES = 4096


def fault_in_weights(model: nn.Module) -> int:
    """Read one element of every page of the model's CPU parameters and buffers; return the bytes covered.

    ``from_pretrained`` leaves float32 safetensors weights on CPU memory-mapped from the file, so pages are
    faulted in only when a job first reads them: each job with new token ids touches new embedding rows,
    and the worker's RSS (file-backed pages) climbs for hundreds of jobs until the whole file is resident.
    That is not a leak, but it hides one and makes the worker's memory unpredictable. Faulting everything
    in once, at load, makes the RSS after load the RSS in service. The pages stay file-backed (page cache,
    shared by the workers of one machine), nothing is copied; GPU tensors are skipped."""
    seen: set[int] = set()
    covered = 0
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type != "cpu" or t.numel() == 0 or t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            flat = t.detach().reshape(-1)  # a view for contiguous tensors (a copy, which reads all, otherwise)
            step = max(1, PAGE_BYTES // t.element_size())
            flat[::step].sum()
            flat[-1].item()  # the last page, when the tensor does not start on a page boundary
            covered += t.numel() * t.element_size()
    return covered


def load_model(ref: ModelRef, settings: Settings, dtype: str = "float32") -> LoadedModel:
    """Load ``ref`` from its folder onto the configured device with the capture attention."""
    if dtype not in TORCH_DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}")
    device = pick_device(settings.device)
    if device.type == "cpu" and dtype == "float16":
        dtype = "float32"  # fp16 matmuls are slow or missing on CPU; say so in the run info
    cls = _model_class(ref, settings.trust_remote_code)
    try:
        model = cls.from_pretrained(
            str(ref.path),
            attn_implementation=ATTN_IMPLEMENTATION,
            dtype=TORCH_DTYPES[dtype],
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=settings.trust_remote_code,
        )
    except (ValueError, OSError, KeyError) as exc:
        raise ModelError(f"could not load {ref.ref}: {exc}") from exc
    model.to(device).eval()
    fault_in_weights(model)  # once, here, rather than a few pages per job (see the docstring)
    pre = adapter_class(ref.kind).load_preprocessor(ref, settings)
    return LoadedModel(
        ref=ref,
        model=model,
        preprocessor=pre,
        device=device,
        dtype=dtype,
        n_layers=ref.n_layers,
        n_heads=ref.n_heads,
        kind=ref.kind,
        causal=_is_causal(model),
    )


class ModelRegistry:
    """Resident models keyed by (fingerprint, dtype); least recently used evicted over budget."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self.loads = 0

    def get(self, ref: ModelRef, dtype: str) -> LoadedModel:
        """The resident model, loading it once; a load holds only its own model's lock, so a job never waits
        for the load of another model (the worker's background preload)."""
        key = (ref.fingerprint, dtype)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._models:  # loaded by another thread meanwhile
                    self._models.move_to_end(key)
                    return self._models[key]
            loaded = load_model(ref, self.settings, dtype)
            with self._lock:
                self.loads += 1
                self._models[key] = loaded
                self._loading.pop(key, None)
                budget = self.settings.model_memory_budget_mb * 1024 * 1024
                while len(self._models) > 1 and sum(m.nbytes for m in self._models.values()) > budget:
                    self._models.popitem(last=False)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
            return loaded

    def __len__(self) -> int:
        return len(self._models)
