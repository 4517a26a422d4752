"""Checks of one decode call's inputs against the manifest, made before any backend runs it."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def check_decode_call(dec, ids: np.ndarray, position, state: list, cache: list) -> None:
    """Raise ``InputError`` naming the first input that the decode program would not accept."""
    if not isinstance(ids, np.ndarray) or ids.ndim != 2 or ids.dtype != np.int64:
        raise InputError(f"decode ids must be an int64 array (batch, tokens), got {getattr(ids, 'dtype', type(ids))} "
                         f"{getattr(ids, 'shape', '')}")
    B, T = ids.shape
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or \
            not 0 <= position < dec.max_tokens or not 1 <= T <= dec.max_tokens - position:
        raise InputError(f"decode at position {position!r} with {T} tokens: expected 0 <= position < "
                         f"{dec.max_tokens} and 1 <= tokens <= {dec.max_tokens} - position")
    if T > dec.max_chunk:
        raise InputError(f"decode with {T} tokens: this program takes at most {dec.max_chunk} per call (its memory is "
                         "planned for that many); split the chunk")
    for kind, arrays, entries in (("state", state, dec.state), ("cache", cache, dec.cache)):
        if len(arrays) != len(entries):
            raise InputError(f"decode takes {len(entries)} {kind} tensors, got {len(arrays)}")
        for a, e in zip(arrays, entries):
            want = e.concrete_shape(B)
            if not isinstance(a, np.ndarray) or a.shape != want or a.dtype != np.dtype(e.dtype):
                raise InputError(f"decode {kind} tensor {e.name!r} is {getattr(a, 'dtype', type(a).__name__)} "
                                 f"{getattr(a, 'shape', '')}, the program takes {e.dtype} {want}")
