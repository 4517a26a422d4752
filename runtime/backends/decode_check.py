"""Checks of one decode call's inputs against the manifest, made before any backend runs it."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


class DecodeCallCheck:
    """The checks of a decode call's inputs for one decode program (``InputError`` naming the first input the program
    would not accept), the expected shapes and dtypes worked out once per batch size
    (a decode call per token: the check runs as often as the program)."""

    _KEEP = 8  # batch sizes remembered

    def __init__(self, dec):
        self.max_tokens, self.max_chunk = dec.max_tokens, dec.max_chunk
        self._kinds = (("state", dec.state), ("cache", dec.cache))
        self._expected: dict[int, tuple] = {}

    def expected(self, batch: int) -> tuple:
        """Per kind (state, cache): (kind, count, ((entry, shape, dtype), ...)) at ``batch``."""
        want = self._expected.get(batch)
        if want is None:
            if len(self._expected) >= self._KEEP:
                self._expected.clear()
            want = tuple((kind, len(entries), tuple((e, e.concrete_shape(batch), np.dtype(e.dtype)) for e in entries))
                         for kind, entries in self._kinds)
            self._expected[batch] = want
        return want

    def __call__(self, ids: np.ndarray, position, state: list, cache: list) -> None:
        """Raise ``InputError`` naming the first input that the decode program would not accept."""
        if not isinstance(ids, np.ndarray) or ids.ndim != 2 or ids.dtype != np.int64:
            raise InputError(f"decode ids must be an int64 array (batch, tokens), got "
                             f"{getattr(ids, 'dtype', type(ids))} {getattr(ids, 'shape', '')}")
        B, T = ids.shape
        N = self.max_tokens
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or \
                not 0 <= position < N or not 1 <= T <= N - position:
            raise InputError(f"decode at position {position!r} with {T} tokens: expected 0 <= position < "
                             f"{N} and 1 <= tokens <= {N} - position")
        if T > self.max_chunk:
            raise InputError(f"decode with {T} tokens: this program takes at most {self.max_chunk} per call (its "
                             "memory is planned for that many); split the chunk")
        for (kind, count, want), arrays in zip(self.expected(B), (state, cache)):
            if len(arrays) != count:
                raise InputError(f"decode takes {count} {kind} tensors, got {len(arrays)}")
            for a, (e, shape, dtype) in zip(arrays, want):
                if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype:
                    raise InputError(f"decode {kind} tensor {e.name!r} is {getattr(a, 'dtype', type(a).__name__)} "
                                     f"{getattr(a, 'shape', '')}, the program takes {e.dtype} {shape}")

