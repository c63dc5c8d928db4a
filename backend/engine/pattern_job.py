"""An on-request pattern job on the worker: one prompt of a finished run, one layer, every head.

A text run stores no full patterns (:mod:`backend.engine.grid_reducer` keeps what the all-heads view needs); a
view or the API that needs one asks for it (:mod:`backend.pattern_jobs`) and this recomputes it: one forward
pass of that prompt alone through the capture engine, the same encoding as the run (the input adapter of
:mod:`backend.engine.inputs`), stopped once the layer is captured (later layers are not run).
``workers.tasks.run_pattern`` stores it float16, compressed, under the request's digest.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from backend.engine import inputs as model_inputs
from backend.engine.capture import BaseReducer, CaptureSession, LayerView
from backend.engine.models import LoadedModel
from backend.settings import Settings
from backend.spec import SpecError


class _Captured(Exception):
    """Raised once the wanted layer is captured: the forward pass stops there."""


class LayerCatcher(BaseReducer):
    """Keeps the full ``[head, query, key]`` pattern of one layer of a one-row batch."""

    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.pattern: np.ndarray | None = None
        self._buf: np.ndarray | None = None

    def begin_layer(self, view: LayerView) -> None:
        if view.layer == self.layer:
            n = view.lengths[0]
            self._buf = np.zeros((view.query.shape[1], n, n), dtype=np.float32)

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        if self._buf is None or view.layer != self.layer:
            return
        n = self._buf.shape[1]
        if q0 < n:
            q1 = min(n, q0 + pattern.shape[2])
            self._buf[:, q0:q1, :] = pattern[0, :, : q1 - q0, :n].float().cpu().numpy()

    def end_layer(self, view: LayerView) -> None:
        if view.layer == self.layer and self._buf is not None:
            self.pattern, self._buf = self._buf, None
            raise _Captured


class _Info:
    """What an input adapter fills in (tokens, truncation, notices)."""

    def __init__(self) -> None:
        self.tokens: list[list[str]] = []
        self.truncated: list[int] = []
        self.notices: list[str] = []


def layer_pattern(loaded: LoadedModel, inputs: Sequence[Any], prompt: int, layer: int, settings: Settings,
                  tokens: Sequence[str] | None = None) -> np.ndarray:
    """``[head, query, key]`` float32 attention of input ``prompt`` in ``layer``, computed alone (a one-row batch:
    no padding). ``tokens`` (the run's) are checked against this encoding: a changed tokenizer is an error, never
    a pattern of other tokens."""
    if not 0 <= layer < loaded.n_layers:
        raise SpecError(f"layer must be between 0 and {loaded.n_layers - 1}")
    adapter = model_inputs.adapter(loaded, settings)
    info = _Info()
    one = [inputs[prompt]]
    adapter.start(one, info, lambda name, arr: None)
    if tokens is not None and info.tokens and list(info.tokens[0]) != list(tokens):
        raise SpecError("the model's tokenizer now encodes this prompt differently from when the run was made; "
                        "submit the run again")
    batch, special, lengths = adapter.batch(one, [0], info)
    catcher = LayerCatcher(layer)
    session = CaptureSession(loaded.model, reducers=[catcher], chunk_size=256 if lengths[0] > 1024 else None,
                             prompts=[prompt], lengths=lengths, special=special)
    try:
        with torch.no_grad(), session:
            loaded.model(**batch)
    except _Captured:
        pass
    if catcher.pattern is None:
        session.check_captured()
        raise SpecError(f"layer {layer} was not captured")
    return catcher.pattern
