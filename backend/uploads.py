"""Parsing user uploads (prompt files and images) into validated inputs, with clear errors.

Nothing is unpickled; an image's declared size is checked against a pixel cap before any of it is
decoded (decompression bombs are refused with the size they declare).
"""

from __future__ import annotations

import csv
import io
import json
import struct
from contextlib import contextmanager
from typing import Any, Iterator

from backend.settings import Settings
from backend.spec import SpecError

TEXT_EXTENSIONS = (".txt", ".csv", ".jsonl")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


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
    shown = ", ".join(repr(c) for c in rows[0][:6]) + (", …" if len(rows[0]) > 6 else "")
    raise UploadError(
        f"{name}: no 'prompt' or 'text' column (the first row is {shown}); add a header row naming the prompt "
        "column 'prompt' or 'text', or upload a .txt file with one prompt per line"
    )


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


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WEBP"),
)


def _sniff(data: bytes) -> str | None:
    """The image format named by the file's first bytes (never by its name), or None."""
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


@contextmanager
def open_image(name: str, data: bytes, settings: Settings) -> Iterator[Any]:
    """Open a PNG or JPEG lazily (header only) after checking its declared size against
    ``settings.max_image_pixels``, so a decompression bomb is refused before any pixel is decoded.

    Pillow's own plugins are used directly: ``Image.open`` would apply Pillow's global bomb check
    (a vague error, and a process-wide setting) before ours could name the size."""
    from PIL import JpegImagePlugin, PngImagePlugin  # noqa: PLC0415

    fmt = _sniff(data)
    if fmt not in ("PNG", "JPEG"):
        what = f"{fmt} images are not supported" if fmt else "not a valid PNG or JPEG image"
        raise UploadError(f"{name}: {what}; use PNG or JPEG" if fmt else f"{name}: {what}")
    cls = PngImagePlugin.PngImageFile if fmt == "PNG" else JpegImagePlugin.JpegImageFile
    try:
        img = cls(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError):
        raise UploadError(f"{name}: not a valid PNG or JPEG image") from None
    try:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise UploadError(f"{name}: not a valid PNG or JPEG image (it declares {w}x{h} pixels)")
        if w * h > settings.max_image_pixels:
            raise UploadError(
                f"{name}: the image declares {w:,} x {h:,} = {w * h:,} pixels; the limit is "
                f"{settings.max_image_pixels:,} pixels (ATLAS_MAX_IMAGE_PIXELS). Scale it down and upload it again"
            )
        yield img
    finally:
        img.close()


def check_image(name: str, data: bytes, settings: Settings) -> tuple[int, int]:
    """Validate an uploaded image without decoding its pixels; returns its (width, height)."""
    if len(data) > settings.max_upload_bytes:
        raise UploadError(f"{name}: {len(data):,} bytes; the upload limit is {settings.max_upload_bytes:,} bytes")
    with open_image(name, data, settings) as img:
        w, h = img.size
        try:
            img.verify()  # chunk structure and checksums, without decompressing the pixels
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError):
            raise UploadError(f"{name}: not a valid PNG or JPEG image (damaged data)") from None
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
