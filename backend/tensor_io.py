"""Arrays to bytes and back without pickle: a 4-byte header length, a JSON header, the raw buffer.

The header holds dtype, shape and compression. Reads are zero-copy (``np.frombuffer``) when the
payload is not compressed. Compressed payloads may be byte-shuffled first (the bytes of each element
regrouped by significance, as Blosc and HDF5's shuffle filter do): the high bytes of float16/float32
attention weights repeat, so zlib finds them.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

_ALLOWED_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
MAGIC = b"AAT1"


def _shuffle(payload: bytes, itemsize: int) -> bytes:
    return np.frombuffer(payload, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(payload: bytes, itemsize: int) -> bytes:
    return np.frombuffer(payload, dtype=np.uint8).reshape(itemsize, -1).T.tobytes()


def encode(array: np.ndarray, compress: bool = False, shuffle: bool = False, level: int = 1) -> bytes:
    """Serialise one array. ``compress`` uses zlib (``level`` 1: fast, worth it for sparse patterns);
    ``shuffle`` (with ``compress`` only) byte-shuffles multi-byte elements before compressing."""
    arr = np.asarray(array)
    arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
    if arr.dtype.name not in _ALLOWED_DTYPES:
        raise TypeError(f"dtype {arr.dtype} cannot be stored")
    payload = arr.tobytes()
    shuffle = bool(compress and shuffle and arr.dtype.itemsize > 1 and arr.size > 0)
    if shuffle:
        payload = _shuffle(payload, arr.dtype.itemsize)
    if compress:
        payload = zlib.compress(payload, level)
    head: dict = {"dtype": arr.dtype.name, "shape": list(arr.shape), "zlib": compress}
    if shuffle:
        head["shuffle"] = True
    header = json.dumps(head, separators=(",", ":")).encode()
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
    if header.get("shuffle"):
        payload = _unshuffle(payload, np.dtype(dtype).itemsize)
    shape = tuple(int(s) for s in header["shape"])
    arr = np.frombuffer(payload, dtype=np.dtype(dtype))
    return arr.reshape(shape)
