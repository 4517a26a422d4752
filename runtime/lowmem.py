"""glibc's mmap threshold, set by the onnxruntime backend (``runtime/backends/ort.py``).

glibc serves a block below its mmap threshold from its heaps and keeps it there once freed; the threshold starts
at 128 KB and rises with the largest block freed so far (up to 32 MB), so the resident set stays near a run's
peak. A fixed threshold returns every block of at least that size to the system when it is freed. The default
session fixes it at ``THRESHOLD`` (its activations live in onnxruntime's arena: what is mapped afresh is the arena's
own regions and the large arrays handed back per call); low-memory mode, where every activation is a malloc of its
own, at ``LOW_MEMORY_THRESHOLD``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD = 1 << 20
LOW_MEMORY_THRESHOLD = 64 * 1024
_lock = threading.Lock()
_set: list[int] = []  # the threshold this process was given, once given


def return_large_blocks(threshold: int = LOW_MEMORY_THRESHOLD) -> bool:
    """Set glibc's mmap threshold to ``threshold`` bytes (process-wide; also stops its dynamic adjustment), unless
    a lower one was set here already. Returns whether the threshold is now at most ``threshold``: False off Linux
    or without glibc."""
    if not sys.platform.startswith("linux"):
        return False
    with _lock:
        if _set and _set[0] <= threshold:
            return True
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            done = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
        except (OSError, AttributeError):
            return False
        if done:
            _set[:] = [threshold]
        return done
