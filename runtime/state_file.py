"""State files of a session (``.npz``): version 1 (segment state + pending tokens) and version 2 (the decode
state: pending write, cache rows of the current segment, last logits). Written atomically from the session's
``snapshot()``; read as untrusted input (every member checked from its header first, see ``npz_reader``) and handed
to its ``restore`` / ``set_state``. ``session`` is the ``InfiniSession``: only its public API is used."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import InputError, StateError
from .npz_reader import read_npz
from .snapshot import Snapshot

STATE_FILE_FORMAT = "infini-export-state"
STATE_FILE_VERSION = 2  # 2: the decode state (pending write, cache rows); 1: segment state + pending tokens


def save(session, path: Path) -> Path:
    """Write state, pending tokens and provenance atomically (temp file, fsync, rename).

    With a decode program the file holds the decode state too (version 2: the pending write, the cache
    rows of the current segment and the last logits), so a resumed session continues bit for bit."""
    path = Path(path)
    snap = session.snapshot(copy=False)  # written out at once: no copy of the cache rows
    decoding = session.decoding
    meta = {"format": STATE_FILE_FORMAT, "version": STATE_FILE_VERSION if decoding else 1,
            "model_fingerprint": session.manifest.fingerprint, "tokens_consumed": snap.tokens_consumed,
            "batch_size": session.batch_size, "segment_len": session.segment_len, "names": list(snap.state)}
    arrays = {f"state/{name}": a for name, a in snap.state.items()}
    if decoding:
        meta["position"] = session.position
        arrays.update({f"cache/{name}": c for name, c in snap.cache.items()})
        meta["has_last_logits"] = snap.last_logits is not None
        arrays["last_logits"] = np.zeros((session.batch_size, session.vocab_size), np.float32) \
            if snap.last_logits is None else np.asarray(snap.last_logits, dtype=np.float32)
    arrays["pending"] = snap.pending
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
    if meta["version"] == 1:
        session.set_state(state, arrays["pending"], count)
        return
    cache = {k[len("cache/"):]: v for k, v in arrays.items() if k.startswith("cache/")}
    last = arrays["last_logits"] if meta.get("has_last_logits", True) else None
    session.restore(Snapshot(state, arrays["pending"], count, cache, last))

def _read(session, path: Path) -> tuple[dict, dict]:
    """Members checked from the headers before any data is read: a decode state (version 2) where this
    session decodes, else (or failing that) a segment state with pending tokens (version 1)."""
    v1 = {f"state/{e.name}": (e.shape, e.dtype) for e in session.manifest.state}
    v1["pending"] = (("batch", "pending"), "int64")
    if not session.decoding:
        try:
            return read_npz(path, v1, check_dims=lambda dims: _check_file_dims(session, dims))
        except StateError as exc:
            raise StateError(f"{exc} (a version-2 file holds a decode state: open the artifact with its decode "
                             "program)") from None
    dec = session.manifest.decode
    v2 = {f"state/{e.name}": (e.shape, e.dtype) for e in dec.state}
    v2.update({f"cache/{e.name}": (e.shape[:2] + ("pending",) + e.shape[3:], e.dtype) for e in dec.cache})
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
        session.check_batch(dims["batch"])
    except InputError as exc:
        raise StateError(f"the state file's {exc}") from None
    if dims["pending"] >= session.segment_len:
        raise StateError(f"the state file holds {dims['pending']} pending tokens, expected fewer than "
                         f"segment_len={session.segment_len}")
