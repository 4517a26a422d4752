"""InfiniSession: the stateful loop over an exported segment step, for inputs of any length."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .backends import open_backend
from .backends.protocol import check_backend
from .errors import ArtifactError, InfiniRuntimeError, InputError, StateError
from .manifest import Manifest, ParityWarning
from . import state_file, text
from .npz_reader import read_npz
from .sampling import sample
from .snapshot import Snapshot, checked_decode_arrays

DEFAULT_MAX_STATE_BYTES = 2 << 30  # a sanity bound on the state a manifest may ask for (override at open)


class InfiniSession:
    """Streams token ids through an exported Infini-Transformer in constant memory.

    The state is the per-layer compressive memory after the last *complete* segment, plus the
    tokens of a pending partial segment (fewer than ``segment_len``). A partial segment is run
    padded, its logits returned for the real tokens only, and its memory write deferred until
    the segment is complete: feeding a text in one call or in chunks of any sizes gives the same
    logits and the same final state. Failed calls leave the session exactly as it was.
    """

    def __init__(self, manifest: Manifest, backend, batch_size: int = 1, use_decode: bool = True,
                 max_state_bytes: int | None = None, use_last: bool = True):
        self.manifest = manifest
        self.backend = backend
        self._entries = manifest.state
        self.segment_len = manifest.segment_len
        self.vocab_size = manifest.vocab_size
        check_backend(backend)
        dec = manifest.decode if use_decode and backend.has_decode else None
        self._decode = dec
        # the last-token program: whole segments whose logits only the last token needs (stream, prefill)
        self._use_last = bool(use_last and backend.has_last)
        # without the full-logits program (an ExecuTorch program's default), all logits come from decode calls
        self._full = backend.has_full
        if not self._full and dec is None:
            raise InputError(f"the {backend.name} artifact has no segment program with all logits, so a session "
                             "needs its decode program: open it with use_decode=True, or re-export with --full-logits")
        if dec is not None:  # where each segment-state tensor sits in the decode state
            names = [e.name for e in dec.state]
            self._seg_idx = [names.index(e.name) for e in self._entries]
            self._in_place = dec.cache_in_place  # read once: the property scans the program's outputs
        self.max_state_bytes = _check_state_budget(manifest, batch_size, max_state_bytes)
        self._tokenizer = None  # loaded on first use (``tokenizer``)
        self._initial = self._load_initial_state()
        self._reset(batch_size)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def open(cls, artifact_dir: str | os.PathLike, backend: str | None = None, batch_size: int = 1,
             verify: bool = True, use_decode: bool = True, max_state_bytes: int | None = None,
             use_last: bool = True, **backend_options) -> "InfiniSession":
        """Open an artifact folder: read and check ``manifest.json`` (every path it names must stay inside the
        folder), bound the state it asks for (``max_state_bytes``, default 2 GiB, at ``batch_size``), verify file
        sizes and hashes, load the program(s) and check their I/O against the manifest. Nothing is allocated for
        the state before all of that passed. ``use_decode=False`` ignores the artifact's decode program (a partial
        segment is then re-run padded); ``use_last=False`` ignores its last-token program (every segment then
        computes all its logits). An artifact whose parity run failed or never ran opens with a ``ParityWarning``."""
        manifest = Manifest.load(artifact_dir)
        _check_state_budget(manifest, batch_size, max_state_bytes)
        if verify:
            manifest.verify_files()
        if not manifest.validated:  # a user may be handed a folder whose export failed its check
            p = manifest.parity
            why = "its parity run never ran" if p is None else \
                f"its parity run failed ({(p.error or (p.failures[0] if p.failures else ''))[:200]})"
            warnings.warn(f"artifact {artifact_dir}: {why}; its outputs were not shown to match the model's "
                          "(infini-export validate checks it)", ParityWarning, stacklevel=2)
        name = backend or manifest.backend
        return cls(manifest, open_backend(name, manifest, **backend_options), batch_size, use_decode, max_state_bytes,
                   use_last)

    def _load_initial_state(self) -> list[np.ndarray]:
        init = self.manifest.initial_state_file
        if init is None:
            return [np.zeros(e.concrete_shape(1), dtype=e.dtype) for e in self._entries]
        arrays, _ = read_npz(self.manifest.file_path(init),
                             {e.name: (e.concrete_shape(1), e.dtype) for e in self._entries}, meta=None,
                             error=ArtifactError)
        return [arrays[e.name] for e in self._entries]

    @property
    def last_logits_program(self) -> bool:
        """Whether whole segments whose logits are not all needed (``stream``, prompt prefill, ``feed(...,
        last_only=True)``) go through the artifact's last-token program (the LM head on one row)."""
        return self._use_last

    @property
    def decoding(self) -> bool:
        """Whether tokens inside a segment go through the artifact's decode program (one call per chunk)."""
        return self._decode is not None

    def _reset(self, batch_size: int) -> None:
        self.check_batch(batch_size)
        self.batch_size = batch_size
        self._state = [np.ascontiguousarray(np.repeat(s, batch_size, axis=0)) for s in self._initial]
        self._pending = np.zeros((batch_size, 0), dtype=np.int64)
        self._last = None  # (B, V) logits of the last token consumed
        self.tokens_consumed = 0
        if self._decode is not None:
            self._state = self._decode_state_from(self._state)
            self._cache = [np.zeros(e.concrete_shape(batch_size), dtype=e.dtype) for e in self._decode.cache]

    def _decode_state_from(self, seg_state: list[np.ndarray]) -> list[np.ndarray]:
        """The decode state at position 0 continuing from a segment state: the pending write is zero."""
        B = seg_state[0].shape[0]
        out = [np.zeros(e.concrete_shape(B), dtype=e.dtype) for e in self._decode.state]
        for k, a in zip(self._seg_idx, seg_state):
            out[k] = a
        return out

    def _segment_state(self, state: list[np.ndarray]) -> list[np.ndarray]:
        return state if self._decode is None else [state[k] for k in self._seg_idx]

    def check_batch(self, batch_size) -> None:
        """``InputError`` unless ``batch_size`` is one this artifact and the state budget allow."""
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
        if self._decode is not None:
            twin._cache = [c.copy() for c in self._cache]
        return twin

    # ---- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, np.ndarray]:
        """Copies of the state after the last complete segment, by base name (``memory.0``, ``norm.0``, ...)."""
        return {e.name: s.copy() for e, s in zip(self._entries, self._segment_state(self._state))}

    @property
    def position(self) -> int:
        """Tokens of the current segment consumed so far (0 at a segment boundary)."""
        return self._pending.shape[1]

    @property
    def pending_tokens(self) -> np.ndarray:
        """Tokens of the incomplete segment, not yet written to memory: (B, p), p < segment_len."""
        return self._pending.copy()

    def set_state(self, state: dict[str, np.ndarray], pending: np.ndarray | None = None,
                  tokens_consumed: int | None = None) -> None:
        """Replace the state (checked: names, shapes, dtypes, finiteness); nothing changes if it fails."""
        new, batch = self._checked_state(state)
        pend = np.zeros((batch, 0), dtype=np.int64) if pending is None else self.checked_ids(pending, batch)
        if pend.shape[1] >= self.segment_len:
            raise StateError(f"pending tokens must be fewer than segment_len={self.segment_len}, got {pend.shape[1]}")
        consumed = int(tokens_consumed) if tokens_consumed is not None else pend.shape[1]
        if self._decode is None:
            self._state, self._pending, self.batch_size, self._last = new, pend, batch, None
            self.tokens_consumed = consumed
            return
        # decode: continue from the segment state by running the pending tokens (nothing changes if that fails)
        twin = self.fork()
        twin.batch_size, twin._state, twin._pending, twin._last = batch, self._decode_state_from(new), pend[:, :0], None
        twin._cache = [np.zeros(e.concrete_shape(batch), dtype=e.dtype) for e in self._decode.cache]
        if pend.shape[1]:
            twin._advance(pend, "last")
        self.__dict__.update(twin.__dict__)
        self.tokens_consumed = consumed

    def snapshot(self, copy: bool = True) -> Snapshot:
        """Everything the session holds between calls (what ``save_state`` writes, ``restore`` takes): copies, or
        with ``copy=False`` views valid until the next call (for writing them out at once)."""
        dec, p = self._decode, self.position
        own = np.array if copy else np.asarray
        names = [e.name for e in (self._entries if dec is None else dec.state)]
        cache = None if dec is None else {e.name: own(c[:, :, :p]) for e, c in zip(dec.cache, self._cache)}
        return Snapshot(dict(zip(names, map(own, self._state))), own(self._pending), self.tokens_consumed, cache,
                        None if self._last is None else np.array(self._last, dtype=np.float32))

    def restore(self, snap: Snapshot) -> None:
        """Back to a ``snapshot()`` of a session of this model (checked; nothing changes if it fails). A snapshot
        without the decode state (``cache`` None) continues through ``set_state``."""
        if self._decode is None or snap.cache is None:
            self.set_state(snap.state, snap.pending, snap.tokens_consumed)
            last = snap.last_logits
            if last is not None and isinstance(last, np.ndarray) and last.shape == (self.batch_size, self.vocab_size):
                self._last = last.astype(np.float32)
            return
        self._checked_state({e.name: snap.state.get(e.name) for e in self._entries})
        batch = np.asarray(snap.state[self._entries[0].name]).shape[0]
        pend = self.checked_ids(snap.pending, batch)
        if pend.shape[1] >= self.segment_len:
            raise StateError(f"pending tokens must be fewer than segment_len={self.segment_len}, got {pend.shape[1]}")
        state, cache = checked_decode_arrays(Snapshot(snap.state, pend, 0, snap.cache, snap.last_logits),
                                             self._decode, batch, self.vocab_size)
        self._state, self._cache, self._pending, self.batch_size = state, cache, pend, batch
        self._last = None if snap.last_logits is None else snap.last_logits.astype(np.float32)
        self.tokens_consumed = int(snap.tokens_consumed)

    def _checked_state(self, state) -> tuple[list[np.ndarray], int]:
        if not isinstance(state, dict):
            raise StateError(f"state must be a dict of arrays by name, got {type(state).__name__}")
        names = [e.name for e in self._entries]
        if sorted(state) != sorted(names):
            raise StateError(f"state has tensors {sorted(state)}, this model expects {sorted(names)}")
        first = np.asarray(state[names[0]])
        batch = first.shape[0] if first.ndim else 0
        self.check_batch(batch)
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
        """Write state, pending tokens and provenance atomically (temp file, fsync, rename).

        With a decode program the file holds the decode state too (version 2: the pending write, the cache
        rows of the current segment and the last logits), so a resumed session continues bit for bit."""
        return state_file.save(self, Path(path))

    def load_state(self, path: str | os.PathLike) -> None:
        """Load a file written by ``save_state`` of the *same model*; anything else raises ``StateError``, and the
        session is unchanged. Every member is checked from its header before any data is read. A version-1 file
        (segment state + pending tokens) opened with a decode program is continued by running its pending tokens
        through the decode program."""
        state_file.load(self, Path(path))

    # ---- streaming -----------------------------------------------------------------------------
    def checked_ids(self, ids, batch: int | None) -> np.ndarray:
        """``ids`` as a (B, T) int64 array of ids this model has rows for (at ``batch`` rows where given), or
        ``InputError`` naming what is wrong."""
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

    def _run(self, ids: np.ndarray, state: list[np.ndarray], last: bool = False):
        """One segment: all its logits (B, T, V), or with ``last`` (where the artifact has the program) (B, 1, V)."""
        try:
            if last and self._use_last:
                logits, new_state = self.backend.run_last(ids, state)
            else:
                logits, new_state = self.backend.run(ids, state)
        except InfiniRuntimeError:
            raise
        except Exception as exc:  # a backend failure on checked input: never a raw library exception
            raise InfiniRuntimeError(f"the {self.backend.name} backend failed on a segment of shape "
                                     f"{ids.shape}: {str(exc).splitlines()[0][:300]}") from exc
        return logits, new_state

    def _run_decode(self, ids: np.ndarray, position: int, state: list[np.ndarray]):
        try:
            return self.backend.run_decode(ids, position, state, self._cache)
        except InfiniRuntimeError:
            raise
        except Exception as exc:
            raise InfiniRuntimeError(f"the {self.backend.name} backend's decode program failed on {ids.shape[1]} "
                                     f"tokens at position {position}: {str(exc).splitlines()[0][:300]}") from exc

    def _advance_decode(self, ids: np.ndarray, keep: str):
        """Whole segments at a boundary through the segment step (the last-token program where only the last
        logits are kept; for all logits, only where the artifact has that program), everything else through the
        decode program (in calls of at most ``max_chunk`` tokens).

        Every decode call's cache rows are in the cache when the next call runs: a program that writes them itself
        (``cache_in_place``) does, the others' rows are written after their call. Those writes land past the rows
        the session's state uses, except after the feed starts a new segment: the rows in use are copied before
        that and put back if a later call fails, so a failed feed leaves the session as it was."""
        T, N, chunk = ids.shape[1], self.segment_len, self._decode.max_chunk
        state, p, i = self._state, self.position, 0
        kept, last, saved = [], self._last, None
        try:
            while i < T:
                if p == 0 and T - i >= N and (self._full or (keep != "all" and self._use_last)):
                    logits, seg = self._run(ids[:, i:i + N], self._segment_state(state), keep != "all")  # (B, N|1, V)
                    state = list(state)
                    for k, a in zip(self._seg_idx, seg):
                        state[k] = a
                    n = N
                else:
                    n = min(N - p, T - i, chunk)
                    if p == 0 and self.position and saved is None:
                        saved = [c[:, :, :self.position].copy() for c in self._cache]
                    logits, state, new_rows = self._run_decode(ids[:, i:i + n], p, state)  # (B, n, V)
                    if not self._in_place and p + n < N:
                        for cache, r in zip(self._cache, new_rows):
                            cache[:, :, p:p + n] = r
                if keep == "all":
                    kept.append(logits)
                last = logits[:, -1]
                p, i = (p + n) % N, i + n
        except BaseException:
            for c, r in zip(self._cache, saved or []):
                c[:, :, :r.shape[2]] = r
            raise
        pend = ids[:, T - p:] if p <= T else np.concatenate([self._pending, ids], axis=1)[:, -p:]  # (B, p)
        self._state, self._pending, self._last = state, np.ascontiguousarray(pend[:, pend.shape[1] - p:]), last
        self.tokens_consumed += T
        return kept, last

    def _advance(self, ids, keep: str):
        one_d = isinstance(ids, np.ndarray) and ids.ndim == 1
        ids = self.checked_ids(ids, self.batch_size)
        if self._decode is not None:
            kept, last = self._advance_decode(ids, keep)
            if keep != "all":
                return last
            out = np.concatenate(kept, axis=1) if kept else np.zeros((ids.shape[0], 0, self.vocab_size), np.float32)
            return out[0] if one_d else out
        B, T, N = ids.shape[0], ids.shape[1], self.segment_len
        p = self._pending.shape[1]
        buf = np.concatenate([self._pending, ids], axis=1) if p else ids  # (B, p + T)
        state, kept, last = self._state, [], None
        n_full = buf.shape[1] // N
        for s in range(n_full):
            logits, state = self._run(buf[:, s * N:(s + 1) * N], state, keep != "all")  # (B, N|1, V)
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
        self._last = last if last is not None else self._last
        self.tokens_consumed += T
        if keep == "all":
            V = self.vocab_size
            out = np.concatenate(kept, axis=1) if kept else np.zeros((B, 0, V), dtype=np.float32)
            return out[0] if one_d else out
        return last

    def feed(self, ids, last_only: bool = False) -> np.ndarray:
        """Stream ``ids`` ((T,) or (B, T) integers); return their logits ((T, V) or (B, T, V), float32).

        ``last_only``: the last token's logits only, ((1, V) or (B, 1, V); no rows for no tokens), computed
        with the artifact's last-token program where it has one."""
        if not last_only:
            return self._advance(ids, "all")
        one_d = isinstance(ids, np.ndarray) and ids.ndim == 1
        before = self.tokens_consumed
        last = self._advance(ids, "last")
        out = last[:, None] if self.tokens_consumed > before else np.zeros((self.batch_size, 0, self.vocab_size),
                                                                           np.float32)
        return out[0] if one_d else out

    def stream(self, ids) -> np.ndarray | None:
        """Like ``feed`` but keeps only the last token's logits (B, V): memory independent of len(ids)."""
        return self._advance(ids, "last")

    # ---- generation ----------------------------------------------------------------------------
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> np.ndarray:
        """Feed ``prompt_ids`` then sample ``max_new_tokens`` tokens (B, n); greedy when temperature is 0.

        The session continues from where it was: the prompt and the generated tokens are consumed. With a
        decode program each new token costs one decode call. If it fails, the session is as it was.
        """
        saved = self.snapshot()
        try:
            toks = list(self.generate_iter(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed))
        except BaseException:
            self.restore(saved)
            raise
        return np.stack(toks, axis=1) if toks else np.zeros((self.batch_size, 0), dtype=np.int64)

    def generate_iter(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, seed: int | None = None):
        """Like ``generate``, yielding each new token (B,) as soon as it is sampled (and consumed)."""
        if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float, np.floating)) or not np.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1):
            raise InputError(f"top_k must be None or an integer >= 1, got {top_k!r}")
        if top_p is not None and (not isinstance(top_p, (int, float, np.floating)) or not 0.0 < top_p <= 1.0):
            raise InputError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
        ids = self.checked_ids(prompt_ids, self.batch_size)
        if ids.shape[1] == 0 and self.tokens_consumed == 0:
            raise InputError("generate needs at least one prompt token on a fresh session")
        rng = np.random.default_rng(seed)
        last = self.stream(ids) if ids.shape[1] else self._last_logits()
        for _ in range(max_new_tokens):
            tok = sample(last, temperature, top_k, top_p, rng)  # (B,)
            last = self.stream(tok[:, None])
            yield tok

    # ---- text (runtime.text) ------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The artifact's ``runtime.tokenizer.Tokenizer`` (sha256-checked on first use); ``NoTokenizerError``
        where the artifact has none."""
        if self._tokenizer is None:
            self._tokenizer = text.load_tokenizer(self.manifest)
        return self._tokenizer

    def encode(self, prompt: str) -> np.ndarray:
        """Token ids (int64, 1-D) of ``prompt``, with the manifest's ``bos`` prepended when it says ``add_bos``."""
        return self.tokenizer.encode(prompt)

    def decode(self, ids) -> str:
        """The text of token ids (1-D)."""
        return self.tokenizer.decode(ids)

    def generate_text(self, prompt: str, max_new_tokens: int | None = None, temperature: float | None = None,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      stop=()) -> str:
        """Feed ``prompt`` (text) and return the generated text; None takes the manifest's ``generation`` default
        (top_k 0 / top_p 1: no filter). Stops at an end-of-text id, at a ``stop`` string (not included) or after
        ``max_new_tokens`` tokens. Batch size 1; if it fails, the session is as it was."""
        return "".join(self.generate_text_iter(prompt, max_new_tokens, temperature, top_k, top_p, seed, stop))

    def generate_text_iter(self, prompt: str, max_new_tokens: int | None = None, temperature: float | None = None,
                           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                           stop=()) -> "text.TextGeneration":
        """Like ``generate_text``, yielding text pieces as they become stable (never inside a character, never a
        possible beginning of a stop string); the iterator records the ids, why it stopped and the timings."""
        return text.generate_text_iter(self, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop)

    def _last_logits(self) -> np.ndarray:
        if self._last is not None:
            return self._last
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
