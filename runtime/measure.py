"""Small torch-free measuring helpers shared by the runtime, the command line, the benchmarks and the scripts."""
from __future__ import annotations

import re
import resource
import sys

from .errors import InputError

_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
_LENGTH = re.compile(r"(\d+(?:\.\d+)?)([KMG]?)")


def parse_length(text: str | int) -> int:
    """A token count from ``"4096"``, ``"4K"`` (4,096), ``"1M"`` (1,048,576) or ``"0.5K"`` (512); binary units.

    Raises ``InputError`` (a ``ValueError``) naming the text when it is not a positive whole number of tokens.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _LENGTH.fullmatch(str(text).strip().upper())
        if m is None:
            raise InputError(f"bad length {text!r}: expected a number of tokens such as 4096, 4K or 1M")
        exact = float(m.group(1)) * _UNITS[m.group(2)]
        if exact != int(exact):
            raise InputError(f"bad length {text!r}: it is {exact:g} tokens, expected a whole number")
        value = int(exact)
    if value <= 0:
        raise InputError(f"bad length {text!r}: expected a positive number of tokens")
    return value


def format_length(n: int) -> str:
    """The shortest exact spelling of ``n`` that :func:`parse_length` reads back: 4096 -> "4K", 1048576 -> "1M"."""
    for unit in ("G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (MiB).

    Read from ``VmHWM`` in ``/proc/self/status``: the high-water mark of this process's own address space,
    which starts afresh at ``exec`` (so a child's number is its own, whatever its parent used). Where there
    is no ``/proc`` (not Linux) it falls back to ``getrusage(RUSAGE_SELF).ru_maxrss``, which Linux carries
    over fork + exec from the parent and which macOS reports in bytes rather than KiB.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB (MiB): ``VmRSS`` from ``/proc/self/status`` (Linux only)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmRSS:"))
