"""What a session needs of a backend: one protocol, its capabilities declared as attributes."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """A loaded artifact's programs, numpy in and numpy out; state lists in manifest order, fresh arrays out (never
    views of the backend's own buffers). Implemented by the onnxruntime and ExecuTorch backends and by
    ``infini_export.eager.EagerBackend`` (the eager model, the reference every backend is held to)."""

    name: str  # "onnxruntime", "executorch", "eager"
    has_full: bool  # the segment step with all its logits (``run``)
    has_last: bool  # the segment step with the last token's logits only (``run_last``)
    has_decode: bool  # the decode program (``run_decode``)

    def run(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One segment: ``(logits (B, N, V), new state)``."""

    def run_last(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One segment, the last token's logits only: ``(logits (B, 1, V), new state)``."""

    def run_decode(self, ids: np.ndarray, position: int, state: list[np.ndarray],
                   cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Tokens at ``position`` of the current segment: ``(logits (B, T, V), new state, cache rows or caches)``."""


def check_backend(backend) -> Backend:
    """``backend`` if it keeps the protocol (every method, every capability a bool), else ``TypeError``."""
    missing = [a for a in ("name", "has_full", "has_last", "has_decode", "run", "run_last", "run_decode")
               if not hasattr(backend, a)]
    wrong = [a for a in ("has_full", "has_last", "has_decode") if a not in missing
             and not isinstance(getattr(backend, a), bool)]
    if missing or wrong:
        raise TypeError(f"{type(backend).__name__} does not keep the backend protocol: missing {missing}, "
                        f"capabilities that are not bools {wrong}")
    return backend
