"""Parsing user uploads (prompt files and images) into validated inputs, with clear errors.

Nothing is unpickled; images are decoded by Pillow with a pixel cap (decompression bombs refused).
"""

from __future__ import annotations

import csv
import io
import json

from backend.settings import Settings
from backend.spec import SpecError

TEXT_EXTENSIONS = (".txt", ".csv", ".jsonl")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MAX_IMAGE_PIXELS = 4096 * 4096


class UploadError(SpecError):
    """An upload that cannot be used; the message names the file and the problem."""


def _decode_text(name: str, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise UploadError(f"{name}: looks like a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UploadError(f"{name}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None


def _from_csv(name: str, text: str) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as exc:
        raise UploadError(f"{name}: malformed CSV ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    for col in ("prompt", "text", "sentence"):
        if col in header:
            i = header.index(col)
            body = rows[1:]
            bad = [n + 2 for n, r in enumerate(body) if len(r) <= i]
            if bad:
                raise UploadError(f"{name}: row {bad[0]} has no '{col}' column")
            return [r[i] for r in body]
    return [r[0] for r in rows]


def _from_jsonl(name: str, text: str) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UploadError(f"{name}: line {n} is not valid JSON ({exc.msg})") from None
        if isinstance(obj, str):
            out.append(obj)
        elif isinstance(obj, dict) and isinstance(obj.get("prompt", obj.get("text")), str):
            out.append(obj.get("prompt", obj.get("text")))
        else:
            raise UploadError(f'{name}: line {n} must be a string or an object with a "prompt" or "text" string')
    return out


def parse_upload(name: str, data: bytes, settings: Settings) -> list[str]:
    """Prompts from a ``.txt`` (one per line), ``.csv`` (a prompt/text column) or ``.jsonl`` file."""
    lower = name.lower()
    if len(data) > settings.max_upload_bytes:
        raise UploadError(
            f"{name}: {len(data):,} bytes; the upload limit is {settings.max_upload_bytes:,} bytes"
        )
    if not lower.endswith(TEXT_EXTENSIONS):
        raise UploadError(f"{name}: unsupported file type; use one of {', '.join(TEXT_EXTENSIONS)}")
    text = _decode_text(name, data)
    if lower.endswith(".csv"):
        prompts = _from_csv(name, text)
    elif lower.endswith(".jsonl"):
        prompts = _from_jsonl(name, text)
    else:
        prompts = text.splitlines()
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise UploadError(f"{name}: no prompts found in the file")
    return prompts


def check_image(name: str, data: bytes, settings: Settings) -> tuple[int, int]:
    """Validate an uploaded image; returns its (width, height)."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    if len(data) > settings.max_upload_bytes:
        raise UploadError(f"{name}: {len(data):,} bytes; the upload limit is {settings.max_upload_bytes:,} bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("PNG", "JPEG"):
                raise UploadError(f"{name}: {img.format} images are not supported; use PNG or JPEG")
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise UploadError(f"{name}: {w}x{h} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels")
            img.verify()
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise UploadError(f"{name}: not a valid PNG or JPEG image") from None
    return w, h


def parse_labels(name: str, data: bytes, settings: Settings) -> list[int] | None:
    """Class ids from the ``label`` column of a ``.csv`` upload, one per prompt that
    :func:`parse_upload` returns (rows with an empty prompt are skipped there and here), or None when
    the file has no such column. They feed the run option ``labels`` (a classifier's head-importance
    targets, ``backend.engine.losses``); labels must be non-negative integers."""
    if not name.lower().endswith(".csv"):
        return None
    prompts = parse_upload(name, data, settings)  # same checks and errors as the prompts themselves
    rows = [r for r in csv.reader(io.StringIO(_decode_text(name, data)), strict=True) if any(c.strip() for c in r)]
    header = [c.strip().lower() for c in rows[0]]
    col = next((c for c in ("prompt", "text", "sentence") if c in header), None)
    if col is None or "label" not in header:
        return None
    i, j = header.index(col), header.index("label")
    labels = []
    for n, r in enumerate(rows[1:], start=2):
        if not r[i].strip():
            continue
        raw = r[j].strip() if len(r) > j else ""
        if not raw.isdigit():
            raise UploadError(f"{name}: row {n} has label {raw!r}; labels must be non-negative integers (class ids)")
        labels.append(int(raw))
    assert len(labels) == len(prompts)
    return labels
