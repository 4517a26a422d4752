"""Process-level settings for the runtime's low-memory mode (``InfiniSession.open(..., low_memory=True)``).

With onnxruntime's arena and buffer reuse off, every activation is a malloc of its own and is freed after its last
use. glibc then keeps freed blocks below a threshold that rises with the largest block freed so far (up to 32 MB),
and in per-thread arenas, so the resident set stays near the run's peak. A fixed threshold returns every block
of at least that size to the system when it is freed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD = 64 * 1024


def return_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Set glibc's mmap threshold to ``threshold`` bytes (process-wide; also stops its dynamic adjustment).
    Returns whether it was set: False off Linux or without glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
