"""Huge images and decompression bombs are refused from their declared size, before any decoding."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import pytest

from backend.settings import Settings
from backend.uploads import UploadError, check_image, open_image
from tests.conftest import ROOT

S = Settings()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bomb(width: int, height: int, with_pixels: bool = True) -> bytes:
    """A valid greyscale PNG of zeros: ``width * height`` bytes decoded, about 1,000x fewer stored.
    Without pixels it is just a header declaring the size."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = b""
    if with_pixels:
        z = zlib.compressobj(9)
        row = bytes(width + 1)  # filter byte + zeros
        idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is rewritten to declare ``width`` x ``height``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_real_decompression_bomb_is_refused_with_its_size() -> None:
    bomb = png_bomb(10_000, 10_000)  # 100 MB of pixels in under 100 KB
    assert len(bomb) < S.max_upload_bytes // 10
    with pytest.raises(UploadError, match=r"bomb\.png: the image declares 10,000 x 10,000 = 100,000,000 pixels; "
                                          r"the limit is 16,777,216 pixels"):
        check_image("bomb.png", bomb, S)


@pytest.mark.parametrize("data,name", [
    (png_bomb(40_000, 40_000, with_pixels=False), "huge.png"),  # over Pillow's own bomb limit too
    (jpeg_declaring(50_000, 50_000), "huge.jpg"),
    (png_bomb(4097, 4096, with_pixels=False), "just-over.png"),
])
def test_huge_declared_sizes_are_refused(data: bytes, name: str) -> None:
    with pytest.raises(UploadError, match=rf"{name}: the image declares .* pixels; the limit is 16,777,216"):
        check_image(name, data, S)


def test_the_pixel_limit_is_a_setting_and_small_images_pass() -> None:
    assert check_image("ok.png", png_bomb(64, 32), S) == (64, 32)
    assert check_image("ok.jpg", jpeg_declaring(16, 16), S) == (16, 16)
    small = Settings(max_image_pixels=1000)
    with pytest.raises(UploadError, match="64 x 32 = 2,048 pixels; the limit is 1,000 pixels"):
        check_image("ok.png", png_bomb(64, 32), small)
    with open_image("ok.png", png_bomb(30, 30), small) as img:  # the worker decodes through the same check
        assert img.convert("RGB").size == (30, 30)


@pytest.mark.parametrize("data,message", [
    (b"these are my notes, not an image", "not a valid PNG or JPEG image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a valid PNG or JPEG image"),
    (png_bomb(32, 32)[:-20], "damaged data"),  # the IEND chunk cut off
    (png_bomb(0, 10, with_pixels=False), "not a valid PNG or JPEG image"),
    (b"GIF89a" + b"\x00" * 20, "GIF images are not supported"),
    (b"BM" + b"\x00" * 60, "BMP images are not supported"),
])
def test_things_that_are_not_png_or_jpeg_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(UploadError, match=message):
        check_image("upload.png", data, S)


CHECK_UNDER_A_MEMORY_CAP = """
import sys
from PIL import Image
import io
from backend.settings import Settings
from backend.uploads import UploadError, check_image
from workers.memory import apply_memory_cap

bomb = sys.stdin.buffer.read()
apply_memory_cap(48)  # 48 MiB more than now: decoding the 100 MB bomb cannot fit
try:
    check_image("bomb.png", bomb, Settings())
    print("ACCEPTED")
except UploadError as exc:
    print("REFUSED:", exc)
Image.MAX_IMAGE_PIXELS = None
try:  # the control: decoding it does hit the cap, so the check above really did not decode
    Image.open(io.BytesIO(bomb)).load()
    print("DECODED")
except MemoryError:
    print("DECODING FAILED: MemoryError")
"""


def test_the_check_does_not_decode_the_pixels() -> None:
    """Under a 48 MiB memory cap the check refuses the bomb, while decoding it runs out of memory."""
    out = subprocess.run([sys.executable, "-c", CHECK_UNDER_A_MEMORY_CAP], input=png_bomb(10_000, 10_000),
                         capture_output=True, cwd=ROOT, timeout=120)
    lines = out.stdout.decode().splitlines()
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert lines[0].startswith("REFUSED: bomb.png: the image declares 10,000 x 10,000"), lines
    assert lines[1] == "DECODING FAILED: MemoryError", lines
