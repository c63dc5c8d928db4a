"""Token norms per layer for image runs (high-norm tokens, Darcet et al., ICLR 2024).

Its reducer factory is listed in ``backend.engine.stages.REDUCERS``: for image models it emits ``prompt.{p}.blocks.{l}.resid.norm [T]`` float32, the L2
norm of every token's output hidden state of block ``l`` (``output_hidden_states``, before any final
layer norm). Text runs are unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from backend import names
from backend.engine.capture import BaseReducer


class TokenNormReducer(BaseReducer):
    """``hidden [B, T, D]`` per layer -> ``resid.norm [T_p]`` per prompt and layer (padding dropped)."""

    def __init__(self) -> None:
        self._norms: dict[tuple[int, int], np.ndarray] = {}

    def hidden(self, layer: int, hidden: torch.Tensor, prompts: list[int], lengths: list[int]) -> None:
        norms = hidden.detach().float().norm(dim=-1).cpu().numpy()  # [B, T]
        for row, (p, n) in enumerate(zip(prompts, lengths)):
            self._norms[(p, layer)] = norms[row, :n].astype(np.float32)

    def results(self) -> dict[str, np.ndarray]:
        return {names.resid_norm(p, layer): v for (p, layer), v in sorted(self._norms.items())}


def reducers(loaded: Any, options: dict) -> list[TokenNormReducer]:
    """A token-norm reducer for image models; none for text."""
    return [TokenNormReducer()] if getattr(loaded, "kind", "text") == "image" else []
