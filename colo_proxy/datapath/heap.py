"""glibc heap tuning for a process that moves frames at a high rate.

A datapath allocates and frees frame-sized bytes objects continuously, plus one
large object per read (the received bytes) and per write (the joined output).
With glibc's defaults, blocks above the mmap threshold (128 KiB, raised only
dynamically) come from mmap and go back with munmap, and the top of the heap is
given back to the kernel whenever 128 KiB of it are free; either way the same
memory is faulted in again a moment later.  With 1400-byte frames that cost up
to tens of thousands of page faults per 50,000 frame pairs, a few hundred after
``tune_heap`` (bench/qemu_socket.py prints the datapath's faults per run).

``tune_heap`` fixes both thresholds: blocks below ``mmap_threshold`` always come
from the heap, and the heap keeps up to ``trim_threshold`` free bytes at its top
instead of returning them.  Process-wide, glibc only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""mallopt() parameters (glibc malloc.h)."""

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024


def tune_heap(mmap_threshold: int = MMAP_THRESHOLD,
              trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds; False if this libc has no mallopt (or refused)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold))
