"""InfiniSession: the stateful loop over an exported segment step, for inputs of any length."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .backends import open_backend
from .errors import ArtifactError, InfiniRuntimeError, InputError, StateError
from .manifest import Manifest
from .statefile import read_npz

STATE_FILE_FORMAT = "infini-export-state"
STATE_FILE_VERSION = 1
DEFAULT_MAX_STATE_BYTES = 2 << 30  # a sanity bound on the state a manifest may ask for (override at open)


class InfiniSession:
    """Streams token ids through an exported Infini-Transformer in constant memory.

    The state is the per-layer compressive memory after the last *complete* segment, plus the
    tokens of a pending partial segment (fewer than ``segment_len``). A partial segment is run
    padded, its logits returned for the real tokens only, and its memory write deferred until
    the segment is complete: feeding a text in one call or in chunks of any sizes gives the same
    logits and the same final state. Failed calls leave the session exactly as it was.
    """

    def __init__(self, manifest: Manifest, backend, batch_size: int = 1, max_state_bytes: int | None = None):
        self.manifest = manifest
        self.backend = backend
        self._entries = manifest.state
        self.segment_len = manifest.segment_len
        self.vocab_size = manifest.vocab_size
        self.max_state_bytes = _check_state_budget(manifest, batch_size, max_state_bytes)
        self._initial = self._load_initial_state()
        self._reset(batch_size)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def open(cls, artifact_dir: str | os.PathLike, backend: str | None = None, batch_size: int = 1,
             verify: bool = True, max_state_bytes: int | None = None, **backend_options) -> "InfiniSession":
        """Open an artifact folder: read and check ``manifest.json`` (every path it names must stay inside the
        folder), bound the state it asks for (``max_state_bytes``, default 2 GiB, at ``batch_size``), verify file
        sizes and hashes, load the program and check its I/O against the manifest. Nothing is allocated for the
        state before all of that passed."""
        manifest = Manifest.load(artifact_dir)
        _check_state_budget(manifest, batch_size, max_state_bytes)
        if verify:
            manifest.verify_files()
        name = backend or manifest.backend
        return cls(manifest, open_backend(name, manifest, **backend_options), batch_size, max_state_bytes)

    def _load_initial_state(self) -> list[np.ndarray]:
        init = self.manifest.data.get("initial_state", "zeros")
        if init == "zeros":
            return [np.zeros(e.concrete_shape(1), dtype=e.dtype) for e in self._entries]
        arrays, _ = read_npz(self.manifest.file_path(init["file"]),
                             {e.name: (e.concrete_shape(1), e.dtype) for e in self._entries}, meta=None,
                             error=ArtifactError)
        return [arrays[e.name] for e in self._entries]

    def _reset(self, batch_size: int) -> None:
        self._check_batch(batch_size)
        self.batch_size = batch_size
        self._state = [np.ascontiguousarray(np.repeat(s, batch_size, axis=0)) for s in self._initial]
        self._pending = np.zeros((batch_size, 0), dtype=np.int64)
        self.tokens_consumed = 0

    def _check_batch(self, batch_size) -> None:
        _check_batch(self.manifest, batch_size, self.max_state_bytes)

    def reset(self, batch_size: int | None = None) -> None:
        """Back to the initial state (zeros), optionally with another batch size."""
        self._reset(self.batch_size if batch_size is None else batch_size)

    def fork(self) -> "InfiniSession":
        """An independent session at the same point: shares the loaded program, copies the state."""
        twin = object.__new__(InfiniSession)
        twin.__dict__.update(self.__dict__)
        twin._state = [s.copy() for s in self._state]
        twin._pending = self._pending.copy()
        return twin

    # ---- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, np.ndarray]:
        """Copies of the committed state tensors, by base name (``memory.0``, ``norm.0``, ...)."""
        return {e.name: s.copy() for e, s in zip(self._entries, self._state)}

    @property
    def pending_tokens(self) -> np.ndarray:
        """Tokens of the incomplete segment, not yet written to memory: (B, p), p < segment_len."""
        return self._pending.copy()

    def set_state(self, state: dict[str, np.ndarray], pending: np.ndarray | None = None,
                  tokens_consumed: int | None = None) -> None:
        """Replace the state (checked: names, shapes, dtypes, finiteness); nothing changes if it fails."""
        new, batch = self._checked_state(state)
        pend = np.zeros((batch, 0), dtype=np.int64) if pending is None else self._checked_ids(pending, batch)
        if pend.shape[1] >= self.segment_len:
            raise StateError(f"pending tokens must be fewer than segment_len={self.segment_len}, got {pend.shape[1]}")
        self._state, self._pending, self.batch_size = new, pend, batch
        self.tokens_consumed = int(tokens_consumed) if tokens_consumed is not None else pend.shape[1]

    def _checked_state(self, state) -> tuple[list[np.ndarray], int]:
        if not isinstance(state, dict):
            raise StateError(f"state must be a dict of arrays by name, got {type(state).__name__}")
        names = [e.name for e in self._entries]
        if sorted(state) != sorted(names):
            raise StateError(f"state has tensors {sorted(state)}, this model expects {sorted(names)}")
        first = np.asarray(state[names[0]])
        batch = first.shape[0] if first.ndim else 0
        self._check_batch(batch)
        out = []
        for e in self._entries:
            arr = state[e.name]
            if not isinstance(arr, np.ndarray):
                raise StateError(f"state tensor {e.name!r} must be a numpy array, got {type(arr).__name__}")
            want = e.concrete_shape(batch)
            if arr.shape != want:
                raise StateError(f"state tensor {e.name!r} has shape {arr.shape}, expected {want}")
            if arr.dtype != np.dtype(e.dtype):
                raise StateError(f"state tensor {e.name!r} has dtype {arr.dtype}, expected {e.dtype} "
                                 "(the state stays float32: z grows with every token and overflows float16)")
            if not np.isfinite(arr).all():
                raise StateError(f"state tensor {e.name!r} holds NaN or inf; refusing a corrupt state")
            out.append(np.ascontiguousarray(arr).copy())
        return out, batch

    def save_state(self, path: str | os.PathLike) -> Path:
        """Write state, pending tokens and provenance atomically (temp file, fsync, rename)."""
        path = Path(path)
        meta = {"format": STATE_FILE_FORMAT, "version": STATE_FILE_VERSION,
                "model_fingerprint": self.manifest.fingerprint, "tokens_consumed": self.tokens_consumed,
                "batch_size": self.batch_size, "segment_len": self.segment_len,
                "names": [e.name for e in self._entries]}
        arrays = {f"state/{e.name}": s for e, s in zip(self._entries, self._state)}
        arrays["pending"] = self._pending
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        return atomic_write(path, lambda f: np.savez(f, **arrays))

    def load_state(self, path: str | os.PathLike) -> None:
        """Load a file written by ``save_state`` of the *same model*; anything else raises ``StateError``."""
        path = Path(path)
        expected = {f"state/{e.name}": (e.shape, e.dtype) for e in self._entries}
        expected["pending"] = (("batch", "pending"), "int64")
        arrays, meta = read_npz(path, expected, check_dims=self._check_file_dims)
        if meta.get("format") != STATE_FILE_FORMAT or meta.get("version") != STATE_FILE_VERSION:
            raise StateError(f"{path} is not an infini-export state file of version {STATE_FILE_VERSION}")
        if meta.get("model_fingerprint") != self.manifest.fingerprint:
            raise StateError(f"{path} holds the state of another model (fingerprint "
                             f"{str(meta.get('model_fingerprint'))[:12]}...), this session's model is "
                             f"{self.manifest.fingerprint[:12]}...")
        count = meta.get("tokens_consumed")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise StateError(f"{path}: tokens_consumed is {count!r}, expected an integer >= 0")
        state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
        self.set_state(state, arrays.get("pending"), count)

    def _check_file_dims(self, dims: dict[str, int]) -> None:
        """A state file's batch and pending sizes, checked from its headers before its data is read."""
        try:
            self._check_batch(dims["batch"])
        except InputError as exc:
            raise StateError(f"the state file's {exc}") from None
        if dims["pending"] >= self.segment_len:
            raise StateError(f"the state file holds {dims['pending']} pending tokens, expected fewer than "
                             f"segment_len={self.segment_len}")

    # ---- streaming -----------------------------------------------------------------------------
    def _checked_ids(self, ids, batch: int | None) -> np.ndarray:
        if isinstance(ids, (list, tuple)):
            try:
                ids = np.asarray(ids)
            except Exception as exc:
                raise InputError(f"ids must be a rectangular array of integers: {exc}") from None
        if not isinstance(ids, np.ndarray):
            raise InputError(f"ids must be a numpy array of int64, got {type(ids).__name__}")
        if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"ids must have an integer dtype (int64), got {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2:
            raise InputError(f"ids must have shape (T,) or (batch, T), got shape {ids.shape}")
        if batch is not None and ids.shape[0] != batch:
            raise InputError(f"ids have batch size {ids.shape[0]}, the session's state has batch size {batch} "
                             "(reset(batch_size) to change it)")
        if ids.size:
            lo, hi = ids.min(), ids.max()
            if lo < 0 or hi >= self.vocab_size:
                raise InputError(f"token ids must lie in [0, {self.vocab_size}), got values in [{lo}, {hi}]")
        return np.ascontiguousarray(ids, dtype=np.int64)

    def _run(self, ids: np.ndarray, state: list[np.ndarray]):
        try:
            logits, new_state = self.backend.run(ids, state)
        except InfiniRuntimeError:
            raise
        except Exception as exc:  # a backend failure on checked input: never a raw library exception
            raise InfiniRuntimeError(f"the {self.backend.name} backend failed on a segment of shape "
                                     f"{ids.shape}: {str(exc).splitlines()[0][:300]}") from exc
        return logits, new_state

    def _advance(self, ids, keep: str):
        one_d = isinstance(ids, np.ndarray) and ids.ndim == 1
        ids = self._checked_ids(ids, self.batch_size)
        B, T, N = ids.shape[0], ids.shape[1], self.segment_len
        p = self._pending.shape[1]
        buf = np.concatenate([self._pending, ids], axis=1) if p else ids  # (B, p + T)
        state, kept, last = self._state, [], None
        n_full = buf.shape[1] // N
        for s in range(n_full):
            logits, state = self._run(buf[:, s * N:(s + 1) * N], state)  # (B, N, V)
            lo = max(p - s * N, 0)  # logits of tokens returned by an earlier call are dropped
            if keep == "all" and lo < N:
                kept.append(logits[:, lo:])
            last = logits[:, -1]
        rest = buf[:, n_full * N:]  # (B, r), r < N
        r = rest.shape[1]
        if r and T:
            padded = np.zeros((B, N), dtype=np.int64)
            padded[:, :r] = rest
            logits, _ = self._run(padded, state)  # memory write of a partial segment is not kept
            lo = max(p - n_full * N, 0)
            if keep == "all":
                kept.append(logits[:, lo:r])
            last = logits[:, r - 1]
        # commit: nothing above touched the session
        self._state, self._pending = state, np.ascontiguousarray(rest)
        self.tokens_consumed += T
        if keep == "all":
            V = self.vocab_size
            out = np.concatenate(kept, axis=1) if kept else np.zeros((B, 0, V), dtype=np.float32)
            return out[0] if one_d else out
        return last

    def feed(self, ids) -> np.ndarray:
        """Stream ``ids`` ((T,) or (B, T) integers); return their logits ((T, V) or (B, T, V), float32)."""
        return self._advance(ids, "all")

    def stream(self, ids) -> np.ndarray | None:
        """Like ``feed`` but keeps only the last token's logits (B, V): memory independent of len(ids)."""
        return self._advance(ids, "last")

    # ---- generation ----------------------------------------------------------------------------
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> np.ndarray:
        """Feed ``prompt_ids`` then sample ``max_new_tokens`` tokens (B, n); greedy when temperature is 0.

        The session continues from where it was: the prompt and the generated tokens are consumed.
        """
        if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float, np.floating)) or not np.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1):
            raise InputError(f"top_k must be None or an integer >= 1, got {top_k!r}")
        if top_p is not None and (not isinstance(top_p, (int, float, np.floating)) or not 0.0 < top_p <= 1.0):
            raise InputError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
        ids = self._checked_ids(prompt_ids, self.batch_size)
        if ids.shape[1] == 0 and self.tokens_consumed == 0:
            raise InputError("generate needs at least one prompt token on a fresh session")
        rng = np.random.default_rng(seed)
        saved = (self._state, self._pending, self.tokens_consumed)
        try:
            last = self.stream(ids) if ids.shape[1] else self._last_logits()
            out = np.zeros((self.batch_size, max_new_tokens), dtype=np.int64)
            for i in range(max_new_tokens):
                tok = _sample(last, temperature, top_k, top_p, rng)  # (B,)
                out[:, i] = tok
                if i + 1 < max_new_tokens:
                    last = self.stream(tok[:, None])
            if max_new_tokens:
                self.stream(out[:, -1:])
        except BaseException:
            self._state, self._pending, self.tokens_consumed = saved
            raise
        return out

    def _last_logits(self) -> np.ndarray:
        if self._pending.shape[1] == 0:
            raise InputError("generate with an empty prompt needs a pending token to continue from; "
                             "feed at least one token")
        twin = self.fork()
        pend = twin._pending
        twin._pending = np.zeros((self.batch_size, 0), dtype=np.int64)
        return twin.stream(pend)


def _check_batch(manifest: Manifest, batch_size, max_state_bytes: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or \
            not 1 <= batch_size <= manifest.max_batch:
        raise InputError(f"batch size must be an integer in [1, {manifest.max_batch}], got {batch_size!r}")
    need = manifest.state_bytes(int(batch_size))
    if need > max_state_bytes:
        raise InputError(f"batch size {batch_size} needs {need:,} bytes of state, more than max_state_bytes="
                         f"{max_state_bytes:,}")


def _check_state_budget(manifest: Manifest, batch_size, max_state_bytes) -> int:
    """The bound on state bytes (default or given), checked against the manifest's state before any allocation."""
    limit = DEFAULT_MAX_STATE_BYTES if max_state_bytes is None else max_state_bytes
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InputError(f"max_state_bytes must be None or an integer >= 1, got {max_state_bytes!r}")
    row = manifest.state_bytes(1)
    if row > limit:
        raise ArtifactError(f"the manifest's state needs {row:,} bytes per batch row ({len(manifest.state)} tensors, "
                            f"the largest {max(manifest.state, key=lambda e: e.nbytes(1)).shape}), more than "
                            f"max_state_bytes={limit:,}; pass a larger max_state_bytes to open it if it is genuine")
    _check_batch(manifest, batch_size, limit)
    return limit


def _sample(logits: np.ndarray, temperature: float, top_k, top_p, rng) -> np.ndarray:
    logits = logits.astype(np.float64)  # (B, V)
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]  # (B, 1)
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)  # (B, V)
        sorted_p = np.take_along_axis(probs, order, -1)
        drop = np.cumsum(sorted_p, -1) - sorted_p > top_p  # keep the smallest prefix reaching top_p
        sorted_p[drop] = 0.0
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_p, -1)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=p) for p in probs], dtype=np.int64)
