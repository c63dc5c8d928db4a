"""The in-process analysis API: run a loaded model over inputs and emit named arrays.

The worker calls :func:`analyze` and stores what it emits in Redis; a notebook can call it directly
and keep the arrays in a dict::

    from backend.engine.analyze import analyze_model
    arrays, info = analyze_model("minilm", ["The cat sat.", "A dog ran."])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from backend import names
from backend.engine.capture import BaseReducer, CaptureSession, LayerView
from backend.engine.models import LoadedModel, load_model
from backend.model_refs import resolve_model
from backend.settings import Settings, get_settings
from backend.spec import normalise_options

Emit = Callable[[str, np.ndarray], None]
Progress = Callable[[float, str], None]


class Cancelled(RuntimeError):
    """The user cancelled the run; raised between batches or heads."""


@dataclass
class RunInfo:
    """What a run's manifest records besides its arrays."""

    n_layers: int
    n_heads: int
    causal: bool
    kind: str
    model_class: str
    device: str
    dtype: str
    tokens: list[list[str]] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PatternStore(BaseReducer):
    """Keeps each prompt's full pattern of one layer at a time and emits it per layer.

    A prompt's patterns are stored when it has at most ``max_tokens`` tokens and all its layers' patterns
    (``n_layers * heads * T * T`` float32) fit in ``max_bytes``: SmolLM2's 270 heads at 1,024 tokens would
    take 1.1 GB of Redis for one prompt."""

    def __init__(self, emit: Emit, max_tokens: int, n_layers: int = 1, max_bytes: int | None = None) -> None:
        self.emit = emit
        self.max_tokens = max_tokens
        self.n_layers = n_layers
        self.max_bytes = max_bytes
        self._rows: list[np.ndarray | None] = []

    def stores(self, n_tokens: int, n_heads: int) -> bool:
        fits = self.max_bytes is None or self.n_layers * n_heads * n_tokens * n_tokens * 4 <= self.max_bytes
        return n_tokens <= self.max_tokens and fits

    def begin_layer(self, view: LayerView) -> None:
        h = view.query.shape[1]
        self._rows = [
            np.zeros((h, n, n), dtype=np.float32) if self.stores(n, h) else None for n in view.lengths
        ]

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        tq = pattern.shape[2]
        for b, n in enumerate(view.lengths):
            buf = self._rows[b]
            if buf is None or q0 >= n:
                continue
            q1 = min(n, q0 + tq)
            buf[:, q0:q1, :] = pattern[b, :, : q1 - q0, :n].float().cpu().numpy()

    def end_layer(self, view: LayerView) -> None:
        for b, p in enumerate(view.prompts):
            if self._rows[b] is not None:
                self.emit(names.attn_pattern(p, view.layer), self._rows[b])
        self._rows = []


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _token_limit(loaded: LoadedModel, settings: Settings) -> int:
    limit = settings.max_tokens
    model_max = getattr(loaded.preprocessor, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limit = min(limit, model_max)
    pos = getattr(loaded.model.config, "max_position_embeddings", None)
    if isinstance(pos, int) and pos > 0:
        limit = min(limit, pos)
    return limit


def encode_text(loaded: LoadedModel, prompts: Sequence[str], settings: Settings) -> tuple[list[list[int]], list[int]]:
    """Token ids per prompt, truncated to the model's limit; returns (ids, truncated prompt indices)."""
    tok = loaded.preprocessor
    limit = _token_limit(loaded, settings)
    ids_all, truncated = [], []
    for i, text in enumerate(prompts):
        ids = tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) > limit:
            if not settings.truncate_long_prompts:
                raise ValueError(f"prompt {i + 1} has {len(ids)} tokens; the limit is {limit}")
            truncated.append(i)
            ids = ids[: limit - 1] + ids[-1:] if tok.sep_token_id is not None else ids[:limit]
        ids_all.append(ids)
    return ids_all, truncated


def _text_batch(loaded: LoadedModel, ids: list[list[int]]) -> tuple[dict, torch.Tensor]:
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


def make_reducers(loaded: LoadedModel, options: dict[str, Any], emit: Emit, settings: Settings) -> list:
    """The reducers a run's analyses ask for; each may have ``results() -> {name: array}``."""
    reducers: list = [PatternStore(emit, settings.max_pattern_tokens, loaded.n_layers, settings.max_pattern_mb << 20)]
    analyses = options.get("analyses", [])
    if "metrics" in analyses:
        from backend.engine.metric_reducers import MassiveActivationReducer, SinkMetricsReducer

        reducers.append(SinkMetricsReducer(loaded.n_layers, loaded.n_heads, loaded.causal))
        reducers.append(MassiveActivationReducer(loaded.n_layers))
    for factory in EXTRA_REDUCERS:
        r = factory(loaded, options)
        if r is not None:
            reducers.append(r)
    return reducers


EXTRA_REDUCERS: list[Callable[[LoadedModel, dict], Any]] = []
"""Factories of further reducers (each returns a reducer or None): the embedding stage adds one."""

POST_STAGES: list[Any] = []
"""Stages after the capture pass, each with ``wanted(options)`` and
``stage(loaded, inputs, options, reducers, emit, progress, should_cancel, info)``."""


STAGE_MODULES = (
    # modules that append their stage to POST_STAGES (and reducer factories to EXTRA_REDUCERS) on import
    "backend.engine.streaming",
    "backend.engine.roles",
    "backend.engine.token_norms",
    "backend.engine.importance_stage",
    "backend.engine.embedding_stage",
)


def load_stages() -> None:
    """Import the stage modules once (they register themselves)."""
    import importlib

    for mod in STAGE_MODULES:
        importlib.import_module(mod)


def _capture_pass(
    loaded: LoadedModel,
    inputs: Sequence[Any],
    info: RunInfo,
    reducers: list,
    emit: Emit,
    settings: Settings,
    progress: Progress,
    should_cancel: Callable[[], bool],
) -> None:
    model = loaded.model
    batch_size = settings.batch_size
    if loaded.kind == "image":
        toks = patch_tokens(loaded)
        info.tokens = [toks for _ in inputs]
        chunks = _batches(len(inputs), batch_size)
    else:
        ids, info.truncated = encode_text(loaded, inputs, settings)
        tok = loaded.preprocessor
        info.tokens = [tok.convert_ids_to_tokens(x) for x in ids]
        for p, x in enumerate(ids):
            emit(names.prompt_input_ids(p), np.asarray(x, dtype=np.int64))
        # group prompts of similar length so padding stays small
        chunks = _batches(len(inputs), batch_size)
    for n, rows in enumerate(chunks):
        if should_cancel():
            raise Cancelled("cancelled by the user")
        rows = list(rows)
        if loaded.kind == "image":
            pix = loaded.preprocessor(images=[inputs[i] for i in rows], return_tensors="pt")["pixel_values"]
            if n == 0:  # the patch grid of the processed size (processors may crop or resize)
                toks = patch_tokens(loaded, tuple(pix.shape[-2:]))
                info.tokens = [toks for _ in inputs]
            batch = {"pixel_values": pix.to(loaded.device, dtype=next(model.parameters()).dtype)}
            lengths = [len(info.tokens[0])] * len(rows)
            special = torch.zeros((len(rows), lengths[0]), dtype=torch.bool, device=loaded.device)
            special[:, 0] = True
        else:
            batch, special = _text_batch(loaded, [ids[i] for i in rows])
            lengths = [len(ids[i]) for i in rows]
        width = max(lengths)
        session = CaptureSession(
            model, reducers=reducers, chunk_size=256 if width > 1024 else None,
            prompts=rows, lengths=lengths, special=special,
        )
        with torch.no_grad(), session:
            out = model(**batch, output_hidden_states=True)
        session.check_captured()
        hidden = getattr(out, "hidden_states", None)
        if hidden is not None:
            for layer, hs in enumerate(hidden[1:]):
                for r in reducers:
                    r.hidden(layer, hs.detach(), rows, lengths)
        progress((n + 1) / len(chunks), f"capture: batch {n + 1}/{len(chunks)}")


def analyze(
    loaded: LoadedModel,
    inputs: Sequence[Any],
    options: dict[str, Any],
    emit: Emit,
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    settings: Settings | None = None,
) -> RunInfo:
    """Run every analysis the options ask for; arrays go to ``emit`` as they are ready."""
    settings = settings or get_settings()
    progress = progress or (lambda frac, stage: None)
    should_cancel = should_cancel or (lambda: False)
    torch.manual_seed(int(options.get("seed", 0)))
    info = RunInfo(
        n_layers=loaded.n_layers, n_heads=loaded.n_heads, causal=loaded.causal, kind=loaded.kind,
        model_class=type(loaded.model).__name__, device=str(loaded.device), dtype=loaded.dtype,
    )
    load_stages()  # before make_reducers: stage modules register reducer factories on import
    reducers = make_reducers(loaded, options, emit, settings)
    stages = [s for s in POST_STAGES if s.wanted(options)]  # type: ignore[attr-defined]
    n_parts = 1 + len(stages)

    def part(i: int) -> Progress:
        return lambda frac, stage: progress((i + min(max(frac, 0.0), 1.0)) / n_parts, stage)

    _capture_pass(loaded, inputs, info, reducers, emit, settings, part(0), should_cancel)
    for r in reducers:
        if hasattr(r, "results"):
            for name, arr in r.results().items():
                emit(name, arr)
    for i, stage in enumerate(stages, start=1):
        stage(loaded, inputs, options, reducers, emit, part(i), should_cancel, info)
    if info.truncated:
        info.notices.append(
            f"{len(info.truncated)} prompt(s) were truncated to the model's token limit: "
            + ", ".join(str(i + 1) for i in info.truncated[:20])
        )
    progress(1.0, "done")
    return info


def analyze_model(
    model: str, inputs: Sequence[Any], options: dict[str, Any] | None = None, settings: Settings | None = None
) -> tuple[dict[str, np.ndarray], RunInfo]:
    """Notebook entry point: resolve and load ``model``, analyse ``inputs``, return arrays in a dict."""
    settings = settings or get_settings()
    opts = normalise_options(options)
    loaded = load_model(resolve_model(model, settings), settings, opts["dtype"])
    arrays: dict[str, np.ndarray] = {}
    info = analyze(loaded, inputs, opts, arrays.__setitem__, settings=settings)
    return arrays, info
