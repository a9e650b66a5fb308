"""Process-wide memory behaviour for long scans.

A scan with live analysis allocates and frees many large temporary arrays
(a tile's corrected channels, masks, region maps) on two threads. glibc's
allocator raises its mmap threshold after such frees, so later ones come
from per-thread heaps that fragment and are not returned to the system:
measured here, the peak resident memory of a 1,000-tile demo scan with
analysis was 1,010 MB with glibc's default and 626 MB with the threshold
held at 128 kB (``benchmarks/bench_scan_memory.py``). :func:`release_large_arrays`
holds it there; it is a no-op where glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["release_large_arrays"]

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 128 * 1024


def release_large_arrays() -> bool:
    """Serve allocations ≥ 128 kB by mmap (returned to the system when freed); True if set."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not ok:
        logger.debug("mallopt(M_MMAP_THRESHOLD) refused; allocator left as it is")
    return ok
