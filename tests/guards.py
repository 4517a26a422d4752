"""Test-side watchers: which files the process opens (audit hook) and its peak RSS growth (VmHWM reset)."""
import contextlib
import gc
import os
import re
import sys

_WATCHERS = []


def _hook(event, args):
    if _WATCHERS and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _WATCHERS[-1].append(args[0])


sys.addaudithook(_hook)  # once per process (this module is imported once); idle unless a watcher is active


@contextlib.contextmanager
def opened_files():
    """Collect the paths Python code opens inside the block (builtins.open, io, os.open, zipfile, numpy...)."""
    seen = []
    _WATCHERS.append(seen)
    try:
        yield seen
    finally:
        _WATCHERS.pop()


def reads_under(seen, folder) -> list[str]:
    """The opened paths that resolve inside ``folder``."""
    root = os.path.realpath(folder)
    real = (os.path.realpath(os.fsdecode(p)) for p in seen)
    return [p for p in real if p == root or p.startswith(root + os.sep)]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


PEAK_RSS_RESETTABLE = sys.platform.startswith("linux") and _can_reset_peak()


def peak_rss_growth(fn, collect: bool = True):
    """(exception or None, bytes the peak RSS rose above the RSS before calling ``fn``): Linux's VmHWM, reset
    through /proc/self/clear_refs first, so an earlier peak of the process does not hide this one."""
    if collect:
        gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kb("VmRSS")
    error = None
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - returned to the caller, which asserts on its type
        error = exc
    return error, (_status_kb("VmHWM") - base) * 1024
