"""State files of a session (``.npz``): version 1 (segment state + pending tokens) and version 2 (the decode
state: pending write, cache rows of the current segment, last logits). Written atomically; read as untrusted input
(every member checked from its header first, see ``statefile``). ``session`` is the ``InfiniSession``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import InputError, StateError
from .statefile import read_npz

STATE_FILE_FORMAT = "infini-export-state"
STATE_FILE_VERSION = 2  # 2: the decode state (pending write, cache rows); 1: segment state + pending tokens


def save(session, path: Path) -> Path:
    """Write state, pending tokens and provenance atomically (temp file, fsync, rename).

    With a decode program the file holds the decode state too (version 2: the pending write, the cache
    rows of the current segment and the last logits), so a resumed session continues bit for bit."""
    path = Path(path)
    meta = {"format": STATE_FILE_FORMAT, "version": 1 if session._decode is None else STATE_FILE_VERSION,
            "model_fingerprint": session.manifest.fingerprint, "tokens_consumed": session.tokens_consumed,
            "batch_size": session.batch_size, "segment_len": session.segment_len}
    if session._decode is None:
        meta["names"] = [e.name for e in session._entries]
        arrays = {f"state/{e.name}": s for e, s in zip(session._entries, session._state)}
    else:
        meta["names"] = [e.name for e in session._decode.state]
        meta["position"] = session.position
        arrays = {f"state/{e.name}": s for e, s in zip(session._decode.state, session._state)}
        arrays.update({f"cache/{e.name}": c[:, :, :session.position] for e, c in zip(session._decode.cache, session._cache)})
        meta["has_last_logits"] = session._last is not None
        arrays["last_logits"] = np.zeros((session.batch_size, session.vocab_size), np.float32) if session._last is None \
            else np.asarray(session._last, dtype=np.float32)
    arrays["pending"] = session._pending
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays))

def load(session, path: Path) -> None:
    """Load a file written by ``save_state`` of the *same model*; anything else raises ``StateError``.

    A version-1 file (segment state + pending tokens) opened with a decode program is continued by running
    its pending tokens through the decode program."""
    path = Path(path)
    arrays, meta = _read(session, path)
    if meta.get("format") != STATE_FILE_FORMAT or meta.get("version") not in (1, STATE_FILE_VERSION):
        raise StateError(f"{path} is not an infini-export state file of version 1 or {STATE_FILE_VERSION}")
    if meta.get("model_fingerprint") != session.manifest.fingerprint:
        raise StateError(f"{path} holds the state of another model (fingerprint "
                         f"{str(meta.get('model_fingerprint'))[:12]}...), this session's model is "
                         f"{session.manifest.fingerprint[:12]}...")
    count = meta.get("tokens_consumed")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise StateError(f"{path}: tokens_consumed is {count!r}, expected an integer >= 0")
    state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    count = meta.get("tokens_consumed")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise StateError(f"{path}: tokens_consumed is {count!r}, expected an integer >= 0")
    state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    if meta["version"] == 1:
        session.set_state(state, arrays["pending"], count)
        return
    cache = {k[len("cache/"):]: v for k, v in arrays.items() if k.startswith("cache/")}
    last = arrays["last_logits"] if meta.get("has_last_logits", True) else None
    _set_decode_state(session, state, cache, arrays["pending"], last, count)

def _read(session, path: Path) -> tuple[dict, dict]:
    """Members checked from the headers before any data is read: a decode state (version 2) where this
    session decodes, else (or failing that) a segment state with pending tokens (version 1)."""
    v1 = {f"state/{e.name}": (e.shape, e.dtype) for e in session._entries}
    v1["pending"] = (("batch", "pending"), "int64")
    if session._decode is None:
        try:
            return read_npz(path, v1, check_dims=lambda dims: _check_file_dims(session, dims))
        except StateError as exc:
            raise StateError(f"{exc} (a version-2 file holds a decode state: open the artifact with its decode "
                             "program)") from None
    v2 = {f"state/{e.name}": (e.shape, e.dtype) for e in session._decode.state}
    v2.update({f"cache/{e.name}": (e.shape[:2] + ("pending",) + e.shape[3:], e.dtype) for e in session._decode.cache})
    v2["pending"] = (("batch", "pending"), "int64")
    v2["last_logits"] = (("batch", session.vocab_size), "float32")
    try:
        return read_npz(path, v2, check_dims=lambda dims: _check_file_dims(session, dims))
    except StateError as exc2:
        try:
            return read_npz(path, v1, check_dims=lambda dims: _check_file_dims(session, dims))
        except StateError:
            raise exc2 from None

def _check_file_dims(session, dims: dict[str, int]) -> None:
    """A state file's batch and pending sizes, checked from its headers before its data is read."""
    try:
        session._check_batch(dims["batch"])
    except InputError as exc:
        raise StateError(f"the state file's {exc}") from None
    if dims["pending"] >= session.segment_len:
        raise StateError(f"the state file holds {dims['pending']} pending tokens, expected fewer than "
                         f"segment_len={session.segment_len}")

def _set_decode_state(session, state: dict, cache: dict, pending, last, tokens_consumed) -> None:
    """Restore a saved decode state exactly (checked; nothing changes if it fails)."""
    dec = session._decode
    names = [e.name for e in dec.state]
    if sorted(state) != sorted(names) or sorted(cache) != sorted(e.name for e in dec.cache):
        raise StateError(f"decode state has tensors {sorted(state)} and cache {sorted(cache)}, this model "
                         f"expects {sorted(names)} and {sorted(e.name for e in dec.cache)}")
    seg, batch = session._checked_state({e.name: state[e.name] for e in session._entries})
    pend = session._checked_ids(pending if pending is not None else np.zeros((batch, 0), np.int64), batch)
    p = pend.shape[1]
    if p >= session.segment_len:
        raise StateError(f"pending tokens must be fewer than segment_len={session.segment_len}, got {p}")
    new_state = []
    for e in dec.state:
        arr = state[e.name]
        if not isinstance(arr, np.ndarray) or arr.shape != e.concrete_shape(batch) or arr.dtype != np.dtype(e.dtype) \
                or not np.isfinite(arr).all():
            raise StateError(f"decode state tensor {e.name!r} must be finite {e.dtype} {e.concrete_shape(batch)}")
        new_state.append(np.ascontiguousarray(arr).copy())
    new_cache = []
    for e in dec.cache:
        full = e.concrete_shape(batch)
        want = full[:2] + (p,) + full[3:]
        arr = cache[e.name]
        if not isinstance(arr, np.ndarray) or arr.shape != want or arr.dtype != np.dtype(e.dtype):
            raise StateError(f"cache tensor {e.name!r} must be {e.dtype} {want} (the rows of the {p} pending "
                             f"tokens), got {getattr(arr, 'dtype', None)} {getattr(arr, 'shape', None)}")
        c = np.zeros(full, dtype=e.dtype)
        c[:, :, :p] = arr
        new_cache.append(c)
    if last is not None and (not isinstance(last, np.ndarray) or last.shape != (batch, session.vocab_size)):
        raise StateError(f"last_logits must be ({batch}, {session.vocab_size}), got {getattr(last, 'shape', None)}")
    session._state, session._cache, session._pending, session.batch_size = new_state, new_cache, pend, batch
    session._last = None if last is None else last.astype(np.float32)
    session.tokens_consumed = int(tokens_consumed) if tokens_consumed is not None else p

