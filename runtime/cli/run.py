"""``run``: stream a file or random tokens through an artifact, with snapshots and resume; a JSON summary on stdout."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ..measure import peak_rss_mb

GEN_CHUNK = 4096  # random tokens are drawn per block of this size, so any offset can be regenerated


def random_tokens(n: int, vocab: int, seed: int, start: int = 0, chunk: int = 4096) -> Iterator[np.ndarray]:
    """Tokens ``start..n`` of a deterministic random stream, in chunks (never the whole stream in memory)."""
    pos = start
    while pos < n:
        block = pos // GEN_CHUNK
        data = np.random.default_rng([seed, block]).integers(0, vocab, GEN_CHUNK, dtype=np.int64)
        lo = pos - block * GEN_CHUNK
        hi = min(GEN_CHUNK, n - block * GEN_CHUNK, lo + chunk)
        yield data[lo:hi]
        pos += hi - lo


def file_tokens(path: str | Path, start: int = 0, chunk: int = 4096) -> Iterator[np.ndarray]:
    """The bytes of a file as token ids, from byte ``start``, in chunks."""
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(chunk):
            yield np.frombuffer(block, dtype=np.uint8).astype(np.int64)


def session_options(args) -> dict:
    """Backend options from the command line's ``--threads`` and ``--low-memory``."""
    return {**({"threads": args.threads} if args.threads else {}),
            **({"low_memory": True} if args.low_memory else {})}


def open_session(args):
    """The artifact of ``args.artifact`` opened with the command line's backend options."""
    from ..session import InfiniSession
    return InfiniSession.open(args.artifact, backend=args.backend, **session_options(args))


class _Progress:
    """A progress line on stderr where tqdm is not installed (it is not a runtime requirement)."""

    def __init__(self, total: int, initial: int):
        self.total, self.n, self._shown = total, initial, 0.0

    def update(self, n: int) -> None:
        self.n += n
        if time.monotonic() - self._shown >= 0.5 or self.n >= self.total:
            self._shown = time.monotonic()
            print(f"\rstreaming: {100 * self.n / max(self.total, 1):3.0f}% {self.n:,}/{self.total:,} tok",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr)


def _progress(total: int, initial: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return _Progress(total, initial)
    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc="streaming", file=sys.stderr)


def run_stream(args) -> int:
    """Run ``run`` for parsed arguments (``args.py``): prints the JSON summary, returns the exit code."""
    session = open_session(args)
    N = session.segment_len
    if args.resume:
        session.load_state(args.resume)
        print(f"resumed from {args.resume} at token {session.tokens_consumed:,}", file=sys.stderr)
    start = session.tokens_consumed
    chunk = args.chunk or 16 * N
    if args.text:
        total = Path(args.text).stat().st_size
        source = file_tokens(args.text, start, chunk)
    else:
        total = args.random_tokens
        source = random_tokens(total, session.vocab_size, args.seed, start, chunk)
    bar = None if args.quiet else _progress(total, start)
    t0, last, snaps = time.perf_counter(), None, 0
    every = args.snapshot_every
    for ids in source:
        seg_before = session.tokens_consumed // N
        out = session.stream(ids)
        last = out if out is not None else last
        seg_after = session.tokens_consumed // N
        if args.snapshot and every and seg_after // every > seg_before // every:
            session.save_state(args.snapshot)
            snaps += 1
        if bar is not None:
            bar.update(len(ids))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    fed = session.tokens_consumed - start
    if args.save_final:
        session.save_state(args.save_final)
    state_bytes = sum(s.nbytes for s in session.state.values())
    summary = {
        "tokens": session.tokens_consumed, "tokens_this_run": fed, "segments": session.tokens_consumed // N,
        "pending_tokens": int(session.pending_tokens.shape[1]), "seconds": round(seconds, 3),
        "tokens_per_second": round(fed / seconds, 1) if seconds > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 1), "state_bytes": state_bytes, "snapshots": snaps,
        "backend": session.backend.name,
        "last_logits_sha256": hashlib.sha256(np.ascontiguousarray(last).tobytes()).hexdigest() if last is not None
        else None,
    }
    print(json.dumps(summary))
    return 0
