"""Import onnxruntime with its telemetry off, unless the user has chosen otherwise.

Since 1.29 the Linux / macOS / Android wheels start a telemetry uploader when onnxruntime is imported: a
thread that writes a device id and an SQLite event cache under ``~/.cache/Microsoft/DeveloperTools`` and,
about 9 s later, spawns threads that resolve the upload endpoint. Those threads get their own malloc arenas:
a one-off 0.6-1.7 MB step in resident memory that made a 1M-token stream look 1-2% bigger than a 4K one
(measured: docs/design.md). A device runtime should neither phone home nor write files the user did not
ask for, so ``ORT_DISABLE_TELEMETRY=1`` (onnxruntime's full opt-out, read once at import) is the default
here; set ``ORT_DISABLE_TELEMETRY=0`` to keep onnxruntime's own default.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings

TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def telemetry_off_by_default() -> None:
    """Set ``ORT_DISABLE_TELEMETRY=1`` unless it is set already or onnxruntime is loaded (then it is too late).

    Called when ``runtime`` or ``infini_export`` is imported, so that onnxruntime, whoever imports it next
    (torch.onnx, onnxscript, the quantizer, our backend), starts with its telemetry off."""
    if "onnxruntime" not in sys.modules:
        os.environ.setdefault(TELEMETRY_ENV, "1")


def import_onnxruntime():
    """The ``onnxruntime`` module, imported with ``ORT_DISABLE_TELEMETRY=1`` unless that is already set."""
    telemetry_off_by_default()
    if os.environ.get(TELEMETRY_ENV) is None:  # onnxruntime came first: too late to turn it off
        warnings.warn("onnxruntime was imported before infini-export's runtime, so its telemetry uploader is "
                      f"running (set {TELEMETRY_ENV}=1 before importing onnxruntime to turn it off)",
                      RuntimeWarning, stacklevel=3)
    import onnxruntime

    return onnxruntime


# one arena for every session that opts in (``session.use_env_allocators``): extended by exactly what a request
# needs (kSameAsRequested, not the next power of two), and shared, so the segment, last-token and decode programs
# hold the largest of their activations instead of the sum
ARENA_EXTEND_SAME_AS_REQUESTED = 1
_arena_lock = threading.Lock()
_arena: list[bool] = []


def shared_cpu_arena(ort) -> bool:
    """Register the runtime's CPU arena with onnxruntime's environment, once per process; whether sessions can use
    it (False where this onnxruntime cannot register one)."""
    with _arena_lock:
        if not _arena:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            try:  # max_mem (0: no limit), extend strategy, initial chunk and max dead bytes per chunk (-1: default)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, ARENA_EXTEND_SAME_AS_REQUESTED, -1, -1))
                _arena.append(True)
            except Exception:  # onnxruntime's own error types: each session then has an arena of its own
                _arena.append(False)
        return _arena[0]
