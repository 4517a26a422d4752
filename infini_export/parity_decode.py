"""Parity of an exported decode program against the eager model, call by call across segment boundaries.

The reference is the eager *segment step*: each decode call's logits must be the step's logits at the same
positions, the memory must pass through unchanged inside a segment, and at every boundary the state after the
segment's decode calls must be the state after one step. A wiring check fails by name on a decode
state or cache input that is disconnected, or a state output that passes its input through.
"""
from __future__ import annotations

import numpy as np
import torch

from .eager import EagerBackend
from .compare import errors, within
from .state import flatten_state


def _init(module, batch):
    state, cache = module.init_decode_state(batch)
    return [t.numpy() for t in flatten_state(state)], [t.numpy() for t in flatten_state(cache)]


def _write(cache: list, rows: list, p: int) -> list:
    """The rows written into ``cache`` in place (the cache arrays are this check's own: a copy per call would move
    the whole cache, 150 MB at 110M / N = 2048, twice a call)."""
    for c, r in zip(cache, rows):
        c[:, :, p:p + r.shape[2]] = r
    return cache


def decode_calls(tokens: int, segment_len: int, sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(start, length)`` of each call over ``tokens`` tokens: lengths cycle through ``sizes``, cut at segment
    boundaries (no call crosses one)."""
    calls, t = [], 0
    while t < tokens:
        n = min(sizes[len(calls) % len(sizes)], segment_len - t % segment_len)
        calls.append((t, n))
        t += n
    return calls


def validate_decode(backend, module: torch.nn.Module, tol, *, segments: int = 3, batch: int = 1,
                    seed: int = 0, chunk: int | tuple[int, ...] = 1, progress: bool = False, eager=None,
                    max_chunk: int | None = None) -> dict:
    """Drive ``backend.run_decode`` over ``segments`` segments in calls of ``chunk`` tokens (a tuple: call lengths
    taken in turn) against the eager *segment step*: each call's logits against the step's logits at the same
    positions, the memory unchanged inside a segment, and at each boundary the state against the step's (``eager``:
    the reference backend to use, by default an ``EagerBackend`` of ``module``; ``max_chunk``: the most tokens the
    program takes a call, from its manifest); return
    ``{"tokens", "calls", "chunk", "boundaries", "logits_max_abs", "state_max_rel", "top1", "wiring", "failures"}``."""
    spec, dspec = module.step_spec(), module.decode_spec()
    N, names = spec.segment_len, [s.name for s in dspec.state]
    sizes = (chunk,) if isinstance(chunk, int) else tuple(chunk)
    if not sizes or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in sizes):
        raise ValueError(f"chunk must be an integer >= 1 or a tuple of them, got {chunk!r}")
    if max_chunk is not None:  # a program planned for fewer tokens
        sizes = tuple(min(c, max_chunk) for c in sizes)
    seg_names = [s.name for s in spec.state]
    seg_at = [names.index(n) for n in seg_names]  # where each segment-state tensor sits in the decode state
    eager = EagerBackend(module) if eager is None else eager
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, spec.vocab_size, size=(batch, segments * N), dtype=np.int64)
    st_a, cache_a = _init(module, batch)
    seg_ref = [t.numpy() for t in flatten_state(module.init_state(batch))]
    failures, worst_logits, worst_state, agree, calls = [], 0.0, 0.0, [], 0
    positions = decode_calls(segments * N, N, sizes)
    if progress:
        from tqdm import tqdm
        positions = tqdm(positions, desc=f"decode parity {backend.name}", unit="call", leave=False, disable=None)
    for t, n in positions:
        p = t % N
        if p == 0:  # the reference: the eager segment step over this segment (all its logits, its new state)
            ref_logits, next_ref = eager.run(ids[:, t:t + N], seg_ref)
            start = [st_a[k].copy() for k in seg_at]
        la, st_a, rows_a = backend.run_decode(ids[:, t:t + n], p, st_a, cache_a)
        cache_a = _write(cache_a, rows_a, p)
        calls += 1
        lr = ref_logits[:, p:p + n]
        err = errors(la, lr)
        worst_logits = max(worst_logits, err["max_abs"])
        agree.append(float((la.argmax(-1) == lr.argmax(-1)).mean()))
        if not within(err, tol.logits_atol, tol.logits_rtol):
            failures.append(f"decode token {t} (position {p}): logits max abs error {err['max_abs']:.3e} against "
                            "the segment step's")
        if p + n < N:  # inside a segment the memory is read, not written
            for name, k, a0 in zip(seg_names, seg_at, start):
                e = errors(st_a[k], a0)
                if not within(e, tol.state_atol, tol.state_rtol):
                    failures.append(f"decode token {t}: state {name} changed by {e['max_abs']:.3e} inside the "
                                    "segment (the memory is written at the boundary only)")
            continue
        seg_ref = next_ref  # a boundary: N decode calls == one segment step
        for name, k, r in zip(seg_names, seg_at, seg_ref):
            e = errors(st_a[k], r)
            worst_state = max(worst_state, e["max_rel"])
            if not within(e, tol.state_atol, tol.state_rtol):
                failures.append(f"segment boundary at token {t + n}: decode state {name} differs from the "
                                f"segment step's by {e['max_abs']:.3e}")
        for name, a in zip(names, st_a):
            if name.startswith("pending_") and np.abs(a).max() != 0:
                failures.append(f"segment boundary at token {t + n}: {name} is not zero after the fold")
    wiring = check_decode_wiring(backend, module, st_a, cache_a, ids[:, :1])
    failures.extend(wiring["failures"])
    top1 = float(np.mean(agree)) if agree else float("nan")
    if top1 < tol.min_top1:
        failures.append(f"decode top-1 agreement {top1:.4f} is below the tolerance {tol.min_top1}")
    return {"tokens": segments * N, "calls": calls, "chunk": sizes[0] if len(sizes) == 1 else list(sizes),
            "boundaries": segments,
            "logits_max_abs": worst_logits, "state_max_rel": worst_state, "top1": top1, "wiring": wiring,
            "failures": failures}


def check_decode_wiring(backend, module, state: list, cache: list, ids: np.ndarray) -> dict:
    """Every decode state and cache input must reach an output; every state output must be able to change."""
    dspec = module.decode_spec()
    N, failures = dspec.max_tokens, []
    rng = np.random.default_rng(1)
    state = [s + 0.25 + 0.1 * rng.random(s.shape).astype(s.dtype) for s in state]  # pending non-zero
    cache = [c + 0.1 * rng.standard_normal(c.shape).astype(c.dtype) for c in cache]
    mid = max(N // 2, 1) if N > 1 else 0

    def outputs(st, ca, p):
        logits, new_st, rows = backend.run_decode(ids, p, st, ca)
        return [logits, *new_st, *rows], new_st

    base, mid_state = outputs(state, cache, mid)
    for i, s in enumerate(dspec.state):
        pert = [a.copy() for a in state]
        pert[i] = pert[i] * 1.5 + 0.25
        if not max(float(np.abs(a - b).max()) for a, b in zip(outputs(pert, cache, mid)[0], base)) > 0:
            failures.append(f"decode state input past_{s.name} is disconnected: perturbing it changed no output")
    for i, s in enumerate(dspec.cache):
        pert = [c.copy() for c in cache]
        pert[i][:, :, :mid] = pert[i][:, :, :mid] * 1.5 + 0.25
        if mid and not max(float(np.abs(a - b).max()) for a, b in zip(outputs(state, pert, mid)[0], base)) > 0:
            failures.append(f"decode cache input past_{s.name} is disconnected: its rows before the position "
                            "changed no output")
    # from the initial state at the segment's last position: memory, norm (and any flag) take the write
    init_state, init_cache = _init(module, ids.shape[0])
    _, end_state = outputs(init_state, init_cache, N - 1)
    for s, a, b, a0, c in zip(dspec.state, state, mid_state, init_state, end_state):
        if np.array_equal(b, a) and np.array_equal(c, a0):
            failures.append(f"decode state output present_{s.name} passes its input through unchanged")
    return {"passed": not failures, "failures": failures}
