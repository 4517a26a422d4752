"""Decode cost across a segment and after long contexts, for one or more ONNX artifacts side by side.

A decode call's cost can depend on the position p inside the segment (a program that reads only the p valid cache
rows gets dearer along the segment), so one position says little: this measures tokens generated from positions
spread over the segment, alternating between artifacts so that every one sees the same machine load, and averages
over the positions (a long generation visits them all equally).

Latency after a long context is measured at the same in-segment position for every context (``at``), so that only
the context length differs: ``S`` complete segments then ``at`` tokens, with S real segments fed for the short
contexts. For a context beyond ``real_limit`` tokens the state is built, not fed: the memory and norm after the last
real context (S0 segments) are scaled by S / S0 (both grow linearly with the tokens written: growth exponent 1.00 over
10M tokens, docs/long_stream), then ``at`` tokens are fed through the decode program on top of that state.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from runtime.measure import current_rss_mb

from .decode import _decode_ms as _ms_per_token  # per-token wall times of a greedy generation
from .decode import _state_bytes


def _tokens(n: int, vocab: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n, dtype=np.int64)


def positions(artifacts: list[Path], spots: list[int], *, tokens: int = 8, rounds: int = 3,
              threads: int | None = None, log=print) -> list[dict]:
    """ms/token of ``tokens`` greedy tokens generated from each in-segment position in ``spots``, per artifact,
    round-robin; the mean over the positions is the segment average."""
    from runtime.session import InfiniSession

    opts = {"threads": threads} if threads else {}
    sessions = [InfiniSession.open(a, **opts) for a in artifacts]
    at = []  # (artifact index, position, session at that position)
    for k, s in enumerate(sessions):
        for p in spots:
            f = s.fork()
            f.reset()
            f.stream(_tokens(max(p, 1), s.vocab_size, p))
            at.append((k, max(p, 1), f))
    ms = {(k, p): [] for k, p, _ in at}
    for r in range(rounds):
        for k, p, f in at:
            ms[(k, p)] += _ms_per_token(f.fork(), tokens, r)
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{Path(artifacts[k]).name}@{p} {np.median(ms[(k, p)]):.1f} ms"
                                                    for k, p, _ in at))
    out = []
    for k, a in enumerate(artifacts):
        per = {p: float(np.median(ms[(kk, p)])) for kk, p, _ in at if kk == k}
        mean = float(np.mean(list(per.values())))
        out.append({"artifact": str(a), "ms_at_position": per, "segment_mean_ms": mean, "tok_s": 1000 / mean,
                    "in_place_cache": bool(sessions[k].manifest.decode.cache_in_place)})
    return out


def contexts(artifact: Path, segments: list[int], *, at: int = 1024, real_limit: int = 64, tokens: int = 8,
             rounds: int = 3, threads: int | None = None, log=print) -> list[dict]:
    """ms/token after ``S`` segments + ``at`` tokens for each S in ``segments`` (see the module's docstring)."""
    from runtime.session import InfiniSession

    s0 = InfiniSession.open(artifact, **({"threads": threads} if threads else {}))
    N, V = s0.segment_len, s0.vocab_size
    built, last_real = [], None
    for S in sorted(segments):
        f = s0.fork()
        f.reset()
        t = time.perf_counter()
        if S <= real_limit:
            for i in range(S):
                f.stream(_tokens(N, V, i))
            last_real, how = (S, f.state), "fed"
        else:
            S0, state = last_real
            f.set_state({k: v * np.float32(S / S0) for k, v in state.items()})
            how = f"memory and norm of {S0} real segments scaled by {S / S0:.2f}"
        f.stream(_tokens(at, V, 10_000 + S))
        norms = {k: float(np.linalg.norm(v)) for k, v in f.state.items() if k in ("memory.0", "norm.0")}
        built.append((S, f, how, time.perf_counter() - t, norms))
        log(f"context {S * N + at:,} tokens ({how}) ready in {built[-1][3]:.0f} s; layer 0 norms {norms}")
    ms = {S: [] for S, *_ in built}
    for r in range(rounds):
        for S, f, *_ in built:
            ms[S] += _ms_per_token(f.fork(), tokens, r)
    out = [{"context": S * N + at, "segments": S, "position": at, "state": how, "seconds_to_build": secs,
            "layer0_norms": norms, "decode_ms_median": float(np.median(ms[S])),
            "state_bytes": _state_bytes(f)}
           for S, f, how, secs, norms in built]
    for o in out:
        log(f"context {o['context']:,}: {o['decode_ms_median']:.1f} ms/token ({o['state']})")
    return out + [{"rss_mb_after": current_rss_mb()}]
