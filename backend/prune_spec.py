"""What a live pruning request is: a finished run, heads to switch off, a prompt for the predictions.

Validated here (no torch: the web process imports it) and content-addressed: the same run, heads (in
any order) and prompt give the same digest, which is the RQ job id and the ``keys.derived`` key of the
result, so repeating a request is a cache hit.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from backend import ENGINE_VERSION
from backend.spec import SpecError, canonical_json

DIGEST = re.compile(r"^[0-9a-f]{64}$")


def check_heads(heads: Any, n_layers: int, n_heads: int) -> list[list[int]]:
    """``[[layer, head], ...]``: pairs of integers in range, no duplicates; returned sorted."""
    if not isinstance(heads, list):
        raise SpecError('heads must be a list of [layer, head] pairs, e.g. {"heads": [[0, 3], [2, 5]]}')
    out, seen = [], set()
    for i, pair in enumerate(heads):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)):
            raise SpecError(f"heads[{i}] must be a pair of integers [layer, head], got {pair!r}")
        layer, head = pair
        if not 0 <= layer < n_layers:
            raise SpecError(f"heads[{i}]: layer {layer} is out of range (the model has layers 0..{n_layers - 1})")
        if not 0 <= head < n_heads:
            raise SpecError(f"heads[{i}]: head {head} is out of range (each layer has heads 0..{n_heads - 1})")
        if (layer, head) in seen:
            raise SpecError(f"heads[{i}]: head [{layer}, {head}] is listed twice")
        seen.add((layer, head))
        out.append([layer, head])
    return sorted(out)


def check_prompt(prompt: Any, n_inputs: int) -> int:
    """The index of the run's input whose predictions are shown (default 0)."""
    if prompt is None:
        return 0
    if not isinstance(prompt, int) or isinstance(prompt, bool) or not 0 <= prompt < n_inputs:
        raise SpecError(f"prompt must be the index of one of the run's inputs, 0..{n_inputs - 1}")
    return prompt


def prune_digest(run_id: str, heads: list[list[int]], prompt: int) -> str:
    """SHA-256 of the canonical request (heads sorted)."""
    payload = canonical_json({"what": "prune", "engine": ENGINE_VERSION, "run_id": run_id,
                              "heads": sorted([int(l), int(h)] for l, h in heads), "prompt": int(prompt)})
    return hashlib.sha256(payload.encode()).hexdigest()


def parse_off(text: str | None) -> list[list[int]]:
    """The URL form of a set of heads, ``"0-3,2-5"`` -> ``[[0, 3], [2, 5]]`` (malformed parts dropped)."""
    out = []
    for part in (text or "").split(","):
        bits = part.strip().split("-")
        if len(bits) == 2 and all(b.isdigit() for b in bits):
            pair = [int(bits[0]), int(bits[1])]
            if pair not in out:
                out.append(pair)
    return sorted(out)


def format_off(heads: list[list[int]]) -> str:
    return ",".join(f"{l}-{h}" for l, h in sorted(heads))
