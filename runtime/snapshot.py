"""A session's whole state between calls, as arrays: what ``InfiniSession.snapshot`` gives and ``restore`` takes
(and what a state file holds)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import StateError


@dataclass(frozen=True)
class Snapshot:
    """Everything a session holds between calls. ``state`` is the decode state (the segment state and the pending
    write) where the session decodes, else the segment state; ``cache`` and ``last_logits`` only where it decodes."""

    state: dict  # name -> array, in the manifest's shapes at the batch size
    pending: np.ndarray  # (B, p) int64: the tokens of the current segment, p < segment_len
    tokens_consumed: int  # tokens fed since the start
    cache: dict | None = None  # name -> (B, H, p, dh): the cache rows of the current segment's tokens
    last_logits: np.ndarray | None = None  # (B, V) float32: the last token's logits (None before any token)


def checked_decode_arrays(snap: Snapshot, dec, batch: int, vocab_size: int) -> tuple[list, list]:
    """The decode state and whole caches (zero past the pending rows) of ``snap``, checked against the decode
    section ``dec`` at ``batch``; ``StateError`` naming the first tensor that does not fit."""
    names, cache_names = [e.name for e in dec.state], [e.name for e in dec.cache]
    cache = snap.cache or {}
    if sorted(snap.state) != sorted(names) or sorted(cache) != sorted(cache_names):
        raise StateError(f"decode state has tensors {sorted(snap.state)} and cache {sorted(cache)}, this model "
                         f"expects {sorted(names)} and {sorted(cache_names)}")
    p = snap.pending.shape[1]
    state = []
    for e in dec.state:
        arr = snap.state[e.name]
        if not isinstance(arr, np.ndarray) or arr.shape != e.concrete_shape(batch) or arr.dtype != np.dtype(e.dtype) \
                or not np.isfinite(arr).all():
            raise StateError(f"decode state tensor {e.name!r} must be finite {e.dtype} {e.concrete_shape(batch)}")
        state.append(np.ascontiguousarray(arr).copy())
    caches = []
    for e in dec.cache:
        full = e.concrete_shape(batch)
        want = full[:2] + (p,) + full[3:]
        arr = cache[e.name]
        if not isinstance(arr, np.ndarray) or arr.shape != want or arr.dtype != np.dtype(e.dtype):
            raise StateError(f"cache tensor {e.name!r} must be {e.dtype} {want} (the rows of the {p} pending "
                             f"tokens), got {getattr(arr, 'dtype', None)} {getattr(arr, 'shape', None)}")
        c = np.zeros(full, dtype=e.dtype)
        c[:, :, :p] = arr
        caches.append(c)
    last = snap.last_logits
    if last is not None and (not isinstance(last, np.ndarray) or last.shape != (batch, vocab_size)):
        raise StateError(f"last_logits must be ({batch}, {vocab_size}), got {getattr(last, 'shape', None)}")
    return state, caches
