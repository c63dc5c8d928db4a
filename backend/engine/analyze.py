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

from backend import names, patterns
from backend.engine import inputs as model_inputs
from backend.engine.cancel import Cancelled
from backend.engine.capture import BaseReducer, CaptureSession, LayerView, ReusedBuffer
from backend.engine.models import LoadedModel, load_model
from backend.engine.stages import capture_reducers, post_stages
from backend.model_refs import resolve_model
from backend.settings import Settings, get_settings
from backend.spec import normalise_options

__all__ = ["Cancelled", "PatternStore", "RunInfo", "analyze", "analyze_model", "make_reducers"]

Emit = Callable[[str, np.ndarray], None]
Progress = Callable[[float, str], None]


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

    A prompt's patterns are stored when it has at most ``max_tokens`` tokens and all its layers' patterns fit in
    ``max_bytes`` as counted by :func:`backend.patterns.stored_bytes` (in the stored ``dtype``, a causal model's
    lower triangle only): SmolLM2's 270 heads at 1,024 tokens would take 283 MB in float16 by that count (before
    compression), 1.1 GB as full float32 squares, which is why only image runs (and notebooks) keep them
    (:func:`keeps_full_patterns`). Patterns are emitted in float32; the cache casts them."""

    def __init__(self, emit: Emit, max_tokens: int, n_layers: int = 1, max_bytes: int | None = None,
                 dtype: str = "float16", causal: bool = False) -> None:
        self.emit = emit
        self.max_tokens = max_tokens
        self.n_layers = n_layers
        self.max_bytes = max_bytes
        self.dtype = dtype
        self.causal = causal
        self._rows: list[np.ndarray | None] = []

    @property
    def fused(self) -> bool:
        """True when this layer stores no prompt's pattern (the capture may then skip patterns altogether)."""
        return all(row is None for row in self._rows)

    def stores(self, n_tokens: int, n_heads: int) -> bool:
        fits = self.max_bytes is None or patterns.stored_bytes(
            self.n_layers, n_heads, n_tokens, self.dtype, self.causal) <= self.max_bytes
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


def keeps_full_patterns(loaded: LoadedModel, full_patterns: bool | None = None) -> bool:
    """Whether a run stores full patterns: image runs do (the ViT page's CLS->patch overlays and rollout read
    every layer; a 197-token ViT image is small), text runs do not (the views read thumbnails and top keys, and
    a full pattern is recomputed on request, :mod:`backend.engine.pattern_job`). ``full_patterns`` overrides."""
    return loaded.kind == "image" if full_patterns is None else bool(full_patterns)


def make_reducers(
    loaded: LoadedModel, options: dict[str, Any], emit: Emit, settings: Settings, store_patterns: bool = True,
    full_patterns: bool | None = None,
) -> list:
    """The capture pass's reducers: what a run stores of its patterns (unless ``store_patterns`` is off: a run
    being extended has them): full patterns (:func:`keeps_full_patterns`) or, for text, the all-heads view's
    thumbnails and top keys (:class:`backend.engine.grid_reducer.GridReducer`); then those the run's analyses
    ask for (:data:`backend.engine.stages.REDUCERS`); each may have ``results() -> {name: array}``."""
    from backend.engine.grid_reducer import GridReducer  # noqa: PLC0415

    stores: list = []
    if store_patterns and keeps_full_patterns(loaded, full_patterns):
        stores.append(PatternStore(emit, settings.max_pattern_tokens, loaded.n_layers, settings.max_pattern_mb << 20,
                                   settings.pattern_dtype, loaded.causal))
    if store_patterns and loaded.kind == "text":
        stores.append(GridReducer(emit, loaded.n_layers, loaded.n_heads, causal=loaded.causal))
    return [*stores, *capture_reducers(loaded, options)]


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
    adapter = model_inputs.adapter(loaded, settings)
    adapter.start(inputs, info, emit)
    chunks = model_inputs.length_batches([len(t) for t in info.tokens], settings.batch_size)
    scores = ReusedBuffer()  # one buffer for every layer's scores (the pass returns no attention weights)
    for n, rows in enumerate(chunks):
        if should_cancel():
            raise Cancelled("cancelled by the user")
        batch, special, lengths = adapter.batch(inputs, rows, info)
        width = max(lengths)
        session = CaptureSession(
            model, reducers=reducers, chunk_size=256 if width > 1024 else None,
            prompts=rows, lengths=lengths, special=special,
            fused=loaded.device.type == "cuda",  # metrics from log-sum-exp statistics where no pattern is kept
            scores_buffer=scores,
        )
        with torch.no_grad(), session:
            # a text model's logits are never read here: an LM head on the last position only
            keep = model_inputs.last_logits_only(model) if loaded.kind == "text" else {}
            out = model(**batch, output_hidden_states=True, **keep)
        session.check_captured()
        hidden = getattr(out, "hidden_states", None)
        if hidden is not None:
            for layer, hs in enumerate(hidden[1:]):
                for r in reducers:
                    r.hidden(layer, hs.detach(), rows, lengths)
        logits = getattr(out, "logits", None)
        if loaded.kind == "image" and logits is not None and logits.dim() == 2:  # a classifier: [B, classes]
            for row, p in enumerate(rows):
                emit(names.output_logits(p), logits[row].detach().float().cpu().numpy())
        progress((n + 1) / len(chunks), f"capture: batch {n + 1}/{len(chunks)}")


def analyze(
    loaded: LoadedModel,
    inputs: Sequence[Any],
    options: dict[str, Any],
    emit: Emit,
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    settings: Settings | None = None,
    store_patterns: bool = True,
    full_patterns: bool | None = None,
) -> RunInfo:
    """Run every analysis the options ask for; arrays go to ``emit`` as they are ready (``store_patterns``
    off: nothing of the patterns, for :func:`workers.tasks.run_extension`; ``full_patterns``: see
    :func:`keeps_full_patterns`)."""
    settings = settings or get_settings()
    progress = progress or (lambda frac, stage: None)
    should_cancel = should_cancel or (lambda: False)
    torch.manual_seed(int(options.get("seed", 0)))
    info = RunInfo(
        n_layers=loaded.n_layers, n_heads=loaded.n_heads, causal=loaded.causal, kind=loaded.kind,
        model_class=type(loaded.model).__name__, device=str(loaded.device), dtype=loaded.dtype,
    )
    reducers = make_reducers(loaded, options, emit, settings, store_patterns, full_patterns)
    stages = post_stages(options)
    n_parts = 1 + len(stages)

    def part(i: int) -> Progress:
        return lambda frac, stage: progress((i + min(max(frac, 0.0), 1.0)) / n_parts, stage)

    _capture_pass(loaded, inputs, info, reducers, emit, settings, part(0), should_cancel)
    for r in reducers:
        if hasattr(r, "results"):
            for name, arr in r.results().items():
                emit(name, arr)
    for i, stage in enumerate(stages, start=1):
        stage.run(loaded, inputs, options, reducers, emit, part(i), should_cancel, info)
    progress(1.0, "done")
    return info


def analyze_model(
    model: str, inputs: Sequence[Any], options: dict[str, Any] | None = None, settings: Settings | None = None
) -> tuple[dict[str, np.ndarray], RunInfo]:
    """Notebook entry point: resolve and load ``model``, analyse ``inputs``, return arrays in a dict (with
    every prompt's full patterns, within ``ATLAS_MAX_PATTERN_*``: a notebook keeps them in memory)."""
    settings = settings or get_settings()
    opts = normalise_options(options)
    loaded = load_model(resolve_model(model, settings), settings, opts["dtype"])
    arrays: dict[str, np.ndarray] = {}
    info = analyze(loaded, inputs, opts, arrays.__setitem__, settings=settings, full_patterns=True)
    return arrays, info
