"""Flush-to-zero for the duration of a backend call, without leaking the setting into the process.

Subnormal floats (|x| < 1.2e-38) cost a microcode assist per element on x86: onnxruntime's softmax over a
causally masked 128 x 128 block, where exp(-inf) and the far tail of exp() land in that range, runs 7x
slower than over an unmasked one. Setting FTZ/DAZ removes that cost and changes nothing above 1.2e-38.
But the SSE control register (MXCSR) is per thread and onnxruntime's own option sets it on the thread
that creates the session and leaves it there: numpy in the same thread would then flush its subnormals
too. So the setting is made here around each call and the caller's exact state is put back afterwards.

Linux x86-64 with glibc only (``fegetenv``/``fesetenv`` from libm, MXCSR at byte 28 of ``fenv_t``);
elsewhere :func:`flush_denormals` is a no-op and ``AVAILABLE`` is False.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import sys

_FTZ_DAZ = (1 << 15) | (1 << 6)  # MXCSR flush-to-zero | denormals-are-zero
_ENV_BYTES = 32  # sizeof(fenv_t) on x86-64 glibc: 28 bytes of x87 state, then the 4-byte MXCSR
_MXCSR_AT = 28


def _load_libm():
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        libm.fegetenv.argtypes = libm.fesetenv.argtypes = [ctypes.c_void_p]
        libm.fegetenv.restype = libm.fesetenv.restype = ctypes.c_int
        return libm
    except (OSError, AttributeError):
        return None


_libm = _load_libm()
AVAILABLE = _libm is not None


def _get() -> ctypes.Array:
    env = ctypes.create_string_buffer(_ENV_BYTES)
    if _libm.fegetenv(env) != 0:
        raise OSError("fegetenv failed")
    return env


def _set(env: ctypes.Array) -> None:
    if _libm.fesetenv(env) != 0:
        raise OSError("fesetenv failed")


def mxcsr() -> int | None:
    """The calling thread's MXCSR (None where unsupported); for tests and diagnostics."""
    if not AVAILABLE:
        return None
    return int.from_bytes(_get().raw[_MXCSR_AT:_MXCSR_AT + 4], "little")


@contextlib.contextmanager
def preserved():
    """Run the block, then restore the calling thread's floating-point environment exactly."""
    if not AVAILABLE:
        yield
        return
    saved = _get()
    try:
        yield
    finally:
        _set(saved)


def flush_denormals(enabled: bool = True):
    """FTZ/DAZ on the calling thread for the block; the previous environment is restored after it."""
    return _Flush() if enabled and AVAILABLE else contextlib.nullcontext()


_FLUSHED: dict[bytes, ctypes.Array] = {}  # an environment -> the same with FTZ/DAZ set (read-only buffers)


class _Flush:
    """The context of :func:`flush_denormals` (a class, not a generator: it runs around every backend call)."""

    __slots__ = ("_saved",)

    def __enter__(self):
        saved = _get()
        raw = saved.raw
        fast = _FLUSHED.get(raw)
        if fast is None:
            fast = ctypes.create_string_buffer(raw, _ENV_BYTES)
            value = int.from_bytes(raw[_MXCSR_AT:_MXCSR_AT + 4], "little") | _FTZ_DAZ
            ctypes.memmove(ctypes.addressof(fast) + _MXCSR_AT, value.to_bytes(4, "little"), 4)
            if len(_FLUSHED) >= 64:  # the sticky status flags make a few distinct environments; bounded anyway
                _FLUSHED.clear()
            _FLUSHED[raw] = fast
        _set(fast)
        self._saved = saved
        return None

    def __exit__(self, *exc) -> bool:
        _set(self._saved)
        return False
