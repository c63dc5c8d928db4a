"""Bounding a worker's memory and giving memory back after a failed job.

``ATLAS_WORKER_MEMORY_MB`` caps how much private memory (heap, tensors, thread stacks: Linux
``RLIMIT_DATA``) a worker's jobs may add to its footprint after start-up (torch, the preloaded model).
Past the cap an allocation fails inside the job (torch: "can't allocate memory", NumPy:
``MemoryError``); the job is reported failed with advice and the worker goes on, instead of the
kernel's OOM killer ending the whole worker (or a neighbour) with nothing said.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import resource
import sys

log = logging.getLogger("atlas.worker")

_CAP_MB: int = 0


def data_footprint_mb() -> float:
    """This process's private writable memory (``VmData``), in MiB; 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def apply_memory_cap(extra_mb: int, device: str = "cpu") -> int | None:
    """Limit private memory to the current footprint plus ``extra_mb``; returns the limit in MiB.

    Returns None (no cap) when ``extra_mb`` is 0, on CUDA devices (the driver maps large host
    ranges; GPU out-of-memory is raised by torch and handled the same way) and off Linux.
    """
    global _CAP_MB
    if extra_mb <= 0:
        return None
    if str(device).startswith("cuda"):
        log.warning("ATLAS_WORKER_MEMORY_MB is ignored on CUDA devices (GPU out-of-memory is caught anyway)")
        return None
    base = data_footprint_mb()
    if not sys.platform.startswith("linux") or base <= 0:
        log.warning("ATLAS_WORKER_MEMORY_MB needs Linux (RLIMIT_DATA); running without a memory cap")
        return None
    limit_mb = int(base + extra_mb)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    want = limit_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (want, hard))
    _CAP_MB = extra_mb
    log.info("memory cap: %d MiB of private memory (%d MiB at start-up + ATLAS_WORKER_MEMORY_MB=%d)",
             want // (1024 * 1024), int(base), extra_mb)
    return want // (1024 * 1024)


def cap_mb() -> int:
    """The ``ATLAS_WORKER_MEMORY_MB`` this process applied (0: none)."""
    return _CAP_MB


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (host or GPU), whatever library raised it."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def release_memory() -> None:
    """Free what a failed job left behind: reference cycles, torch's GPU cache, glibc's free heap."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim(0)
        except (OSError, AttributeError):
            pass
