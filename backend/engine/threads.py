"""One intra-op thread for a block of small tensor operations.

The reducers' per-chunk sums are small, memory-bound operations: with several OpenMP threads each one pays a
fork/join, and on a loaded machine a thread that was descheduled stalls the others at every barrier (measured on
2 cores at load ~7: ``max(dim=-1)`` of a ``[8, 157, 384]`` batch took 12.6 ms with 2 threads, 0.5 ms with 1). The
model's own matrix products keep every thread. ``torch.set_num_threads`` is process-wide, which
is fine in a worker (one job per process at a time); the previous count is restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one intra-op thread, then restore the previous count."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
