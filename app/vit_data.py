"""Data of the ViT patch-attention view for pages and the API: validated parameters, a run's patterns,
token norms and image bytes (stored arrays of finished runs never change: runs are content-addressed,
so loaded patterns are memoised)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app import state
from app.memo import LRU
from backend import figures_vit, names, patterns, vit

_MEMO: LRU[np.ndarray] = LRU(32)


def _array(run_id: str, name: str) -> np.ndarray:
    return _MEMO.get((run_id, name), lambda: np.asarray(state.load_array(run_id, name)))


def image_run(run_id: str) -> tuple[dict[str, Any], vit.TokenLayout]:
    """The finished manifest of an image run and its token layout (ViewError for a text run)."""
    m = state.done_manifest(run_id)
    info = m.get("info") or {}
    if info.get("kind") != "image" or not info.get("tokens"):
        raise state.ViewError("this run is not an image run: the patch view needs a ViT run on images")
    try:
        layout = vit.token_layout(info["tokens"][0])
    except ValueError as exc:
        raise state.ViewError(str(exc)) from None
    return m, layout


def check_image(m: dict[str, Any], image: Any) -> int:
    return state.check_index("image", image, len(m["info"]["tokens"]))


def check_fusion(fusion: Any) -> str:
    if fusion not in vit.FUSIONS:
        raise state.ViewError(f"fusion must be one of {', '.join(vit.FUSIONS)}")
    return str(fusion)


def check_discard(discard: Any) -> float:
    try:
        d = float(discard)
    except (TypeError, ValueError):
        raise state.ViewError("discard must be a number in [0, 1)") from None
    if not 0.0 <= d < 1.0:  # also refuses nan
        raise state.ViewError("discard must be a number in [0, 1)")
    return d


def check_discard_rule(rule: Any) -> str:
    if rule in (None, ""):
        return vit.DEFAULT_DISCARD_RULE
    if rule not in vit.DISCARD_RULES:
        raise state.ViewError(f"discard_rule must be one of {', '.join(vit.DISCARD_RULES)}")
    return str(rule)


def layer_pattern(run_id: str, m: dict[str, Any], image: int, layer: int) -> np.ndarray:
    """``[H, T, T]`` of one image and layer."""
    name = names.attn_pattern(image, layer)
    if name not in (m.get("sizes") or {}):
        raise state.ViewError(f"image {image} has no stored pattern for layer {layer}")
    return _MEMO.get((run_id, name), lambda: patterns.as_view(state.load_array(run_id, name)))


def rollout(run_id: str, image: Any, fusion: Any = "mean", discard: Any = 0.0,
            discard_rule: Any = None) -> tuple[np.ndarray, vit.TokenLayout, str, float]:
    """Validated rollout of one image: ``(grid [rows, cols], layout, fusion, discard)``; ``discard_rule``
    one of :data:`backend.vit.DISCARD_RULES` (default: vit-explain's, all entries but CLS->CLS)."""
    m, layout = image_run(run_id)
    p = check_image(m, image)
    fusion, discard, rule = check_fusion(fusion), check_discard(discard), check_discard_rule(discard_rule)
    pats = [layer_pattern(run_id, m, p, l) for l in range(int(m["info"]["n_layers"]))]
    return vit.rollout_grid(pats, layout, fusion, discard, rule), layout, fusion, discard


def norms(run_id: str, m: dict[str, Any], image: int) -> np.ndarray | None:
    """``[L, T]`` token norms of one image, or None when the run has none (e.g. an older run)."""
    sizes = m.get("sizes") or {}
    n_layers = int(m["info"]["n_layers"])
    wanted = [names.resid_norm(image, l) for l in range(n_layers)]
    if not all(w in sizes for w in wanted):
        return None
    return np.stack([_array(run_id, w) for w in wanted])


def image_bytes(m: dict[str, Any], image: int) -> bytes | None:
    """The image as uploaded (None when its blob is gone)."""
    inputs = (m.get("spec") or {}).get("inputs") or []
    if not 0 <= image < len(inputs):
        return None
    return state.cache().get_blob(inputs[image])


_DISPLAY: LRU[tuple[str | None, int, int]] = LRU(32)


def display(run_id: str, image: int, rows: int, cols: int) -> tuple[str | None, int, int]:
    """The displayed image of a run's input ``image`` (data URI, width, height), memoised by blob digest
    (a missing blob is not memoised: it may come back)."""
    m = state.done_manifest(run_id)
    inputs = (m.get("spec") or {}).get("inputs") or []
    key = (str(inputs[image]) if 0 <= image < len(inputs) else "", rows, cols)
    layout = vit.TokenLayout(n_prefix=1, rows=rows, cols=cols)

    def make() -> tuple[str | None, int, int]:
        data = image_bytes(m, image)
        if data is None:
            raise LookupError("image blob missing")
        return figures_vit.display_image(data, layout)

    try:
        return _DISPLAY.get(key, make)
    except LookupError:
        return figures_vit.display_image(None, layout)


def image_names(m: dict[str, Any]) -> list[str]:
    """A name per input image: the file name it was uploaded under, else the start of its digest."""
    inputs = [str(d) for d in (m.get("spec") or {}).get("inputs") or []]
    try:
        names_ = state.cache().blob_names(inputs)
    except state.REDIS_ERRORS:
        names_ = [None] * len(inputs)
    return [n or f"image {d[:8]}…" for n, d in zip(names_, inputs)]


_LABELS: LRU[dict[int, str]] = LRU(8)


def class_labels(m: dict[str, Any]) -> dict[int, str]:
    """The model's ``id2label`` (from its config.json; empty when the folder or the field is missing)."""
    path = Path(str((m.get("model") or {}).get("path") or ""))

    def read() -> dict[int, str]:
        try:
            raw = json.loads((path / "config.json").read_text(encoding="utf-8")).get("id2label") or {}
            return {int(k): str(v) for k, v in raw.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    return _LABELS.get(str(path), read)


def prediction(run_id: str, m: dict[str, Any], image: int) -> tuple[str, float] | None:
    """The classifier's predicted class of ``image`` and its probability, from the stored logits; None when
    the run has no logits (runs made before they were stored, or a model without a classification head)."""
    name = names.output_logits(image)
    if name not in (m.get("sizes") or {}):
        return None
    logits = np.asarray(_array(run_id, name), dtype=np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    c = int(probs.argmax())
    return class_labels(m).get(c, f"class {c}"), float(probs[c])
