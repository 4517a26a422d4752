"""The state-extrapolation lever: train the answer against the memory a much longer filler stream would leave.

On a share of the rows, the state entering the answer's (or the needle's) segment gets ``k`` more segments' worth of
filler, ``k`` log-uniform up to a target length: ``first-order`` adds ``k`` times the (detached) increment that one
filler segment of the same row wrote (the linear rule's exact effect of repeating that segment; an approximation for
the delta rule); ``doubling`` (:func:`grow_filler`) re-runs a block of filler from the growing state in doubling
Euler steps. Back-propagation still covers only the real ~4K tokens; the exported model is unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from infini_export.state import LayerMemory
from tasks import passkey as P


def extrapolate_first_order(state, prev, k: float) -> tuple:
    """``state + k * (state - prev)`` per layer: the lever's first-order extrapolation of ``k`` more segments like
    the one that took ``prev`` to ``state``."""
    return tuple(LayerMemory(s.memory + k * (s.memory - p.memory),  # (B, H, dk, dv)
                             s.norm + k * (s.norm - p.norm))  # (B, H, dk)
                 for s, p in zip(state, prev))


@dataclass(frozen=True)
class Extrapolation:
    """Where extra filler goes in a batch: row ``b`` enters segment ``at[b]`` with ``k[b]`` more segments'
    worth of the state increment that pure-filler segment ``src[b]`` (< ``at[b]``) wrote."""
    k: np.ndarray  # (B,) float, extra filler segments; 0: row untouched
    at: np.ndarray  # (B,) int, segment whose entering state gets them
    src: np.ndarray  # (B,) int, pure-filler segment whose increment is repeated


def extrapolation_plan(rng: np.random.Generator, batch: P.PasskeyBatch, N: int, frac: float,
                       max_tokens: int, before_frac: float = 0.0) -> Extrapolation | None:
    """Pick rows (share ``frac`` of the eligible ones) and where their extra filler goes, or None for no row.

    Two placements. *After the needle*: the state entering the answer's segment ``s_a``, with the
    increment of segment ``s_a - 2``; eligible when that segment is pure filler (needle and instruction end
    before it). *Before the needle*: the state entering the needle's first segment ``n0``, with the increment
    of segment ``n0 - 1``; eligible when that segment is pure filler. The second is the only one open to rows
    whose needle sits in the last two segments (a depth-1 prompt at 1M tokens: a huge memory, then the
    needle, then the answer in a fresh segment); ``before_frac`` is the share of rows eligible for both that
    get it; ``before_frac = 0`` (after the needle only) draws no random numbers for the choice."""
    if frac <= 0:
        return None
    B, L = batch.ids.shape
    s_a = (L - 1) // N
    instr_end = len(P.INSTRUCTION) + 1
    after_ok = ((batch.needle_end <= (s_a - 2) * N) & (instr_end <= (s_a - 2) * N)
                if s_a >= 3 else np.zeros(B, dtype=bool))  # (B,) bool
    n0 = batch.needle_start // N  # (B,) the needle's first segment
    before_ok = (n0 >= 1) & ((n0 - 1) * N >= instr_end) & (before_frac > 0)  # (B,) bool
    pick = (after_ok | before_ok) & (rng.random(B) < frac)
    if not pick.any():
        return None
    k_max = max(2.0, max_tokens / N)
    k = np.exp(rng.uniform(0.0, math.log(k_max), B))  # log-uniform in [1, max_tokens / N] segments
    before = before_ok & (~after_ok | (rng.random(B) < before_frac)) if before_frac > 0 else before_ok
    return Extrapolation(k=np.where(pick, k, 0.0), at=np.where(before, n0, s_a),
                         src=np.where(before, n0 - 1, s_a - 2))


_FILLER_CYCLE = P.encode(P.FILLER_TEXT)  # (90,) one period of the filler text


def filler_block(seg: np.ndarray, m: int) -> np.ndarray:
    """(m * N,) the pure-filler segment ``seg`` (N,) followed by the m - 1 segments of filler that continue it
    (the filler is periodic: 90 bytes, 45 phases against a 128-token segment); ``seg`` repeated m times if it
    is not pure filler."""
    N, C = len(seg), len(_FILLER_CYCLE)
    cyc = np.tile(_FILLER_CYCLE, (m * N) // C + 2)  # (>= m * N + C,)
    for o in range(C):
        if np.array_equal(cyc[o:o + N], seg):
            return cyc[o:o + m * N]
    return np.tile(seg, m)


@torch.no_grad()
def grow_filler(model, state, filler: torch.Tensor, k) -> tuple:
    """The state after ``k[b]`` (>= 0, any real) more segments of filler from ``state``, by doubling Euler steps.

    ``filler`` (B, m * N) is a block of m segments (``filler_block``); each step runs the block once from the
    current state and applies its per-segment increment ``h`` times, ``h = min(k - done, max(done, m))`` (m at
    first), so the increment is re-measured as the state grows (``m * (1 + log2(k / m))`` segment runs). A block
    of several segments averages the filler's phases against the segment. For ``h == m`` a step is exactly the
    block run once, so k = m (or k <= 3 with m = 1) is exact. Detached."""
    B, T = filler.shape
    N = model.cfg.segment_len
    if T % N:
        raise ValueError(f"filler block of {T} tokens is not a whole number of {N}-token segments")
    m = T // N
    k = torch.as_tensor(np.asarray(k, dtype=np.float32))  # (B,)
    done = torch.zeros_like(k)  # (B,) segments applied so far
    cur = tuple(LayerMemory(m_.memory.detach(), m_.norm.detach()) for m_ in state)
    while bool((done < k).any()):
        h = torch.minimum(k - done, done.clamp(min=float(m)))  # (B,) segments this step; 0 for finished rows
        nxt = cur
        for j in range(m):
            nxt = model.step(filler[:, j * N:(j + 1) * N], nxt)[1]
        f = h / m  # (B,) block increments to apply
        cur = tuple(LayerMemory(c.memory + f.view(-1, 1, 1, 1) * (n.memory - c.memory),  # (B, H, dk, dv)
                                c.norm + f.view(-1, 1, 1) * (n.norm - c.norm))  # (B, H, dk)
                    for c, n in zip(cur, nxt))
        done = done + h
    return cur


def forward_extrapolated(model, inp: torch.Tensor, plan: Extrapolation, mode: str = "first-order",
                         block: int = 1) -> torch.Tensor:
    """``model(inp)`` with the extra filler of ``plan`` added to the state (see ``extrapolation_plan``).

    ``mode``: ``first-order`` adds ``k`` times what segment ``src`` wrote when it ran;
    ``doubling`` re-runs segment ``src`` (and the ``block - 1`` filler segments that would follow it) from the
    growing state (``grow_filler``), closer to what a real long input leaves. The extra is detached either way:
    gradients flow through the real segments only."""
    if mode not in ("first-order", "doubling"):
        raise ValueError(f"extrapolation mode must be 'first-order' or 'doubling', got {mode!r}")
    B, T = inp.shape
    N = model.cfg.segment_len
    state = model.init_state(B)
    entering = []  # entering[i]: the state entering segment i, before any extra filler
    outs = []
    for si, start in enumerate(range(0, T, N)):
        entering.append(state)
        here = (plan.k > 0) & (plan.at == si)  # (B,) rows whose extra filler goes in now
        if here.any():
            k = np.where(here, plan.k, 0.0)  # (B,)
            src = np.where(here, plan.src, si - 1)  # (B,) filler segment per row (others: any, scaled by 0)
            if mode == "doubling":
                rows = np.flatnonzero(here)  # (R,) only these rows are grown
                filler = torch.from_numpy(np.stack([filler_block(inp[b, src[b] * N:(src[b] + 1) * N].numpy(), block)
                                                    for b in rows]))  # (R, block * N)
                sub = tuple(LayerMemory(m.memory[rows], m.norm[rows]) for m in state)
                grown = grow_filler(model, sub, filler, k[rows])

                def added(full: torch.Tensor, g: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
                    extra = torch.zeros_like(full)  # (B, ...) zero for the rows left alone
                    extra[rows] = g - part.detach()
                    return full + extra
                state = tuple(LayerMemory(added(m.memory, g.memory, s_.memory),  # (B, H, dk, dv)
                                          added(m.norm, g.norm, s_.norm))  # (B, H, dk)
                              for m, g, s_ in zip(state, grown, sub))
            else:
                scale = torch.from_numpy(k).float()  # (B,)

                def wrote(li: int, field: str) -> torch.Tensor:  # (B, ...) what row b's segment src[b] wrote
                    return torch.stack([getattr(entering[s + 1][li], field)[b] - getattr(entering[s][li], field)[b]
                                        for b, s in enumerate(src)]).detach()

                state = tuple(LayerMemory(m.memory + scale.view(B, 1, 1, 1) * wrote(li, "memory"),  # (B, H, dk, dv)
                                          m.norm + scale.view(B, 1, 1) * wrote(li, "norm"))  # (B, H, dk)
                              for li, m in enumerate(state))
        logits, state = model.step(inp[:, start:start + N], state)
        outs.append(logits)
    return torch.cat(outs, dim=1)  # (B, T, V)
