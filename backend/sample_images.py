"""Sample images that ship offline with scikit-learn, as PNG bytes ready to store as upload blobs.

* ``china`` and ``flower``: the two photos of ``sklearn.datasets.load_sample_images()`` (427x640 RGB).
* ``digit-{i}``: rows of ``sklearn.datasets.load_digits()`` rendered exactly as the demo model
  ``digits-vit`` was trained on (``scripts/train_demo_vit.py``): an 8x8 grayscale image, value 0..16
  scaled by 255/16 and rounded (white digit on black). The model's own image processor resizes it.

PNG encoding is lossless and deterministic for a given Pillow, so a sample's digest (the blob key and
part of the run id) is stable.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DIGIT_ROWS = (0, 1, 2, 3, 7)  # load_digits rows 0..9 hold the digits 0..9


@dataclass(frozen=True)
class Sample:
    key: str
    label: str
    png: bytes


def _png(arr: np.ndarray, mode: str) -> bytes:
    from PIL import Image  # noqa: PLC0415

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _photos() -> list[Sample]:
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    data = load_sample_images()
    out = []
    for arr, fname in zip(data.images, data.filenames):
        name = fname.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]  # china, flower
        h, w = arr.shape[:2]
        out.append(Sample(name, f"Photo: {name} ({w}x{h}, scikit-learn sample)", _png(np.ascontiguousarray(arr), "RGB")))
    return out


def render_digit(row: np.ndarray) -> np.ndarray:
    """One ``load_digits`` row (64 values in 0..16) -> 8x8 uint8 (as scripts/train_demo_vit.py)."""
    arr = np.clip(np.round(np.asarray(row, dtype=np.float64).reshape(8, 8) * 255.0 / 16.0), 0, 255)
    return arr.astype(np.uint8)


def _digits() -> list[Sample]:
    from sklearn.datasets import load_digits  # noqa: PLC0415

    d = load_digits()
    return [Sample(f"digit-{i}", f"Digit {int(d.target[i])} (load_digits row {i}, 8x8)",
                   _png(render_digit(d.data[i]), "L")) for i in DIGIT_ROWS]


@lru_cache(maxsize=1)
def _all() -> tuple[Sample, ...]:
    return tuple(_digits() + _photos())


def sample_keys() -> list[str]:
    return [s.key for s in _all()]


def sample_options() -> list[dict[str, str]]:
    """``[{"label", "value"}]`` for a dropdown (without loading the images)."""
    digits = [{"label": f"Digit {i} (load_digits row {i}, 8x8)", "value": f"digit-{i}"} for i in DIGIT_ROWS]
    photos = [{"label": f"Photo: {n} (640x427, scikit-learn sample)", "value": n} for n in ("china", "flower")]
    return digits + photos


def get_sample(key: str) -> Sample:
    for s in _all():
        if s.key == key:
            return s
    raise KeyError(f"no sample image {key!r}; choose one of {', '.join(sample_keys())}")
