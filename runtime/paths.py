"""Confinement: every file an artifact names is a normalised relative path that stays inside its folder."""
from __future__ import annotations

import os
import posixpath
import reprlib
from pathlib import Path

from .errors import ManifestError, UnsafePathError

MAX_PATH_CHARS = 1024


def check_relative(what: str, value) -> str:
    """``value`` if it is a normalised relative POSIX path without '..' (no file system access).

    A non-string is a ``ManifestError``; a string that could leave the folder is an ``UnsafePathError``.
    """
    if not isinstance(value, str):
        raise ManifestError(f"{what} is {reprlib.repr(value)}; expected a relative path (a string)")
    problem = None
    if not value or len(value) > MAX_PATH_CHARS:
        problem = f"expected 1 to {MAX_PATH_CHARS} characters"
    elif "\0" in value or "\\" in value:
        problem = "it holds a NUL or a backslash"
    elif value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        problem = "it is absolute"
    elif ".." in value.split("/"):
        problem = "it climbs out with '..'"
    elif posixpath.normpath(value) != value or value == ".":
        problem = f"it is not normalised (expected {posixpath.normpath(value)!r}, a file below the folder)"
    if problem:
        raise UnsafePathError(f"{what} is {reprlib.repr(value)}: {problem}; expected a relative path inside "
                              "the artifact folder")
    return value


def confine(directory: str | os.PathLike, what: str, value) -> Path:
    """The real path of ``directory / value``, refused unless it lies inside ``directory`` once symlinks are
    resolved. Nothing is opened; ``what`` names the entry in the error."""
    rel = check_relative(what, value)
    try:
        root = os.path.realpath(directory)
        real = os.path.realpath(os.path.join(root, rel))
    except (OSError, ValueError) as exc:
        raise UnsafePathError(f"{what} ({rel!r}) cannot be resolved inside {directory}: {exc}") from None
    if real == root or os.path.commonpath([root, real]) != root:
        raise UnsafePathError(f"{what} is {rel!r}, which a symlink leads to {real}, outside the artifact folder "
                              f"{root}; expected a file inside it")
    return Path(real)
