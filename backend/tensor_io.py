"""Arrays to bytes and back without pickle: a 4-byte header length, a JSON header, the raw buffer.

The header holds dtype, shape and compression. Reads are zero-copy (``np.frombuffer``) when the
payload is not compressed.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

_ALLOWED_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
MAGIC = b"AAT1"


def encode(array: np.ndarray, compress: bool = False) -> bytes:
    """Serialise one array. ``compress`` uses zlib (level 1: fast, worth it for sparse patterns)."""
    arr = np.asarray(array)
    arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
    if arr.dtype.name not in _ALLOWED_DTYPES:
        raise TypeError(f"dtype {arr.dtype} cannot be stored")
    payload = arr.tobytes()
    if compress:
        payload = zlib.compress(payload, 1)
    header = json.dumps(
        {"dtype": arr.dtype.name, "shape": list(arr.shape), "zlib": compress}, separators=(",", ":")
    ).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def decode(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode`; raises ``ValueError`` on anything else (never unpickles)."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise ValueError("not an Attention Atlas array")
    (hlen,) = struct.unpack("<I", blob[4:8])
    header = json.loads(blob[8 : 8 + hlen])
    dtype = header["dtype"]
    if dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"dtype {dtype!r} not allowed")
    payload = memoryview(blob)[8 + hlen :]
    if header.get("zlib"):
        payload = zlib.decompress(payload)
    shape = tuple(int(s) for s in header["shape"])
    arr = np.frombuffer(payload, dtype=np.dtype(dtype))
    return arr.reshape(shape)
