#!/usr/bin/env python
"""Train an Infini-Transformer on passkey retrieval (byte tokens), with a length curriculum.

Recipe (see shared/passkey.md): AdamW, warm-up + cosine to 0.1x, clip 1.0, a separate higher learning
rate for the gates (``*.beta``), full back-propagation through the memory across every segment, and
three helpers:
  1. a loss on the key's second mention inside the needle (a local copy learnt first);
  2. a quarter of the batches with no filler (and no instruction): the whole task fits in one segment;
  3. the input length grows only when the training exact match on the current length is > 0.8;
plus a small LM loss on every predictable byte.

Optional lever for lengths far beyond the training inputs (``--extrapolate-frac``): on a share of the rows
whose needle lies well before the answer, the state entering the answer's segment gets ``k`` more segments'
worth of filler added, ``k`` log-uniform up to ``--extrapolate-to`` tokens: ``M += k * dM``, ``z += k * dz``
with ``(dM, dz)`` the (detached) state increment of a filler segment of the same row. This is first-order
extrapolation of what a long filler stream does to the memory (the linear rule's exact effect of repeating
that segment; an approximation for the delta rule), so the answer must be read against the dilution of a
1M-token input while back-propagation still covers only ~4K tokens. The exported model is unchanged.
``--extrapolate-before-needle F`` also opens the lever to needles in the last segments: the extra filler then
goes into the state entering the needle's segment (a share F of the rows that could take either placement).
``--extrapolate-mode doubling`` replaces ``k * dM`` by doubling Euler steps that re-run the filler from the
growing state (``grow_filler``); with ``--extrapolate-block 7`` each step runs 7 segments of the row's filler, and
the state lands within ~1% of a real 1M-token stream's (``scripts/extrapolation_check.py --block 7``).

Choosing what ships: ``--ema D`` keeps an exponential moving average of the weights (``torch.optim.swa_utils``,
decay D per step); model.safetensors, the held-out evaluations and the proxy then use the averaged weights (the
raw ones stay in train_state.pt and go on training). ``--proxy-every MIN`` scores the weights every MIN minutes on
a cheap stand-in for a 1M-token input (``long_proxy``: depth-0 prompts, 4K tokens run for real, the rest of the
filler added by the lever's doubling steps; ~110 segment runs instead of 8,192) and keeps the best-scoring weights
in OUT/best/ (with proxy.json). The held-out evaluation (<= 16K tokens) saturates long before 1M does.

Examples::

    python scripts/train_passkey.py --out models/passkey-small --minutes 50
    python scripts/train_passkey.py --out models/passkey-small --minutes 60 --resume   # continue to 60 min in all
    python scripts/train_passkey.py --out models/passkey-small --evaluate --eval-lengths 8192,32768
    python scripts/train_passkey.py --out RUN --resume --minutes 620 --ema 0.998 --proxy-every 8   # + the lever's flags
    python scripts/train_passkey.py --out RUN --resume --init-weights SOUP --minutes 600 --ema 0.998   # RUN's schedule, SOUP's weights
    python scripts/train_passkey.py --out RUN2 --init-weights models/passkey-small --start-len 4096 --lr 1e-4 \
        --gate-lr 1e-3 --minutes 45 --ema 0.998 --answer-weights 1,1,1,1,2,2   # fine-tune the bundle, fresh optimizer

The output folder gets config.json + model.safetensors (``save_checkpoint``), train_report.json,
train_report.png and train_state.pt (optimizer, step, curriculum, RNG: for ``--resume``; do not commit it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from infini_export import InfiniConfig, InfiniTransformer, load_checkpoint, save_checkpoint  # noqa: E402
from infini_export.state import LayerMemory  # noqa: E402
from infini_export.tasks import passkey as P  # noqa: E402

STATE_FILE = "train_state.pt"
REPORT_JSON = "train_report.json"
REPORT_PNG = "train_report.png"


# ---- a small streaming session over the eager model (feed/reset, the task's session API) ---------
class EagerSession:
    """``feed(ids (B, T)) -> logits (B, T, V)`` over ``model.step``, any length, state kept across calls.

    Keeps the state committed at the last full-segment boundary plus the pending partial segment's
    tokens; each feed re-runs pending + new tokens, commits every complete segment and runs the
    trailing partial one without committing.
    """

    def __init__(self, model: InfiniTransformer):
        self.model = model
        self.N = model.cfg.segment_len
        self.reset()

    def reset(self) -> None:
        self.state = None
        self.pending = None  # (B, r) int64 tokens of the current, incomplete segment

    @torch.inference_mode()
    def feed(self, ids: np.ndarray) -> np.ndarray:
        new = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        if new.dim() != 2 or new.shape[1] < 1:
            raise ValueError(f"feed takes (batch, time) ids with time >= 1, got shape {tuple(new.shape)}")
        if self.state is None:
            self.state = self.model.init_state(new.shape[0])
            self.pending = new[:, :0]
        allt = torch.cat([self.pending, new], dim=1)
        outs = []
        n_full = allt.shape[1] // self.N
        for s in range(n_full):
            logits, self.state = self.model.step(allt[:, s * self.N:(s + 1) * self.N], self.state)
            outs.append(logits)
        rest = allt[:, n_full * self.N:]
        if rest.shape[1]:
            logits, _ = self.model.step(rest, self.state)  # not committed: the segment is incomplete
            outs.append(logits)
        self.pending = rest
        return torch.cat(outs, dim=1)[:, -new.shape[1]:].float().numpy()


# ---- helpers --------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def lr_factor(step: int, progress: float, warmup: int, final: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``final`` over progress in [0, 1]."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    p = min(1.0, max(0.0, progress))
    return warm * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p)))


def build_optimizer(model: InfiniTransformer, lr: float, gate_lr: float, weight_decay: float):
    gates, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.endswith(".beta"):
            gates.append(p)
        elif p.dim() == 2 and not name.startswith("embed"):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "base_lr": lr, "name": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "base_lr": lr, "name": "no_decay"},
        {"params": gates, "lr": gate_lr, "weight_decay": 0.0, "base_lr": gate_lr, "name": "gates"},
    ]
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8)


def heldout_sets(args, cfg: InfiniConfig):
    """Fixed held-out prompts whose needle lies in an earlier segment than the prompt's last token."""
    sets = []
    for i, length in enumerate(args.heldout_lengths):
        for j, depth in enumerate(args.heldout_depths):
            batch = P.make_batch(args.heldout_prompts, length, depth, [10 ** 6 + args.seed, i, j])
            last_seg = (length - 1) // cfg.segment_len
            if not np.all(batch.needle_end // cfg.segment_len < last_seg):
                raise ValueError(f"held-out cell length={length} depth={depth} has the needle in the question's segment")
            sets.append(((length, depth), batch))
    return sets


def evaluate_heldout(model, sets, batch_size: int) -> dict:
    was_training = model.training
    model.eval()
    session = EagerSession(model)
    cells, correct, total = {}, 0, 0
    for (length, depth), batch in sets:
        res = P.score_batch(session, batch, batch_size=batch_size)
        cells[f"{length}@{depth:g}"] = res.accuracy
        correct += sum(res.correct)
        total += len(res)
    model.train(was_training)
    return {"em": correct / max(1, total), "cells": cells, "n": total}


def next_length(cur: int, max_len: int) -> int:
    """Curriculum: 2 filler sentences (~40 tokens) at a time, or 6% once inputs are longer."""
    return min(max_len, cur + max(40, int(0.06 * cur)))


def make_train_batch(rng: np.random.Generator, cur_len: int, args, cfg: InfiniConfig):
    """(batch, kind): a quarter no-filler batches ("nofill"); of the others, a share ``mix_frac`` at a
    shorter random length ("mixed") and the rest at about the current length ("filler")."""
    N = cfg.segment_len
    if rng.random() < args.no_filler_frac:
        L = P.min_length(instruction=False)
        B = args.max_batch
        depths = rng.random(B)
        return P.make_batch(B, L, depths, rng, instruction=False), "nofill"
    lo = P.min_length(instruction=True)
    kind, target = "filler", cur_len
    if cur_len > lo + 200 and rng.random() < args.mix_frac:
        # a shorter input, log-uniform between 2 filler sentences and the current length: keeps every
        # length seen so far working (the memory read is diluted differently at every length)
        kind = "mixed"
        target = int(round(math.exp(rng.uniform(math.log(lo + 40), math.log(cur_len)))))
    if rng.random() < args.boundary_frac and target >= 2 * N:
        # end the prompt within a few tokens of a segment boundary: the answer spills into a new segment
        L = (target // N) * N - int(rng.integers(0, 4))
    else:
        L = target - int(rng.integers(0, min(N, target - lo + 1)))
    L = max(lo, L)
    B = int(max(1, min(args.max_batch, args.tokens_per_step // (L + P.ANSWER_LEN))))
    depths = rng.random(B)
    return P.make_batch(B, L, depths, rng), kind


@dataclasses.dataclass(frozen=True)
class Extrapolation:
    """Where extra filler goes in a batch: row ``b`` enters segment ``at[b]`` with ``k[b]`` more segments'
    worth of the state increment that pure-filler segment ``src[b]`` (< ``at[b]``) wrote."""
    k: np.ndarray  # (B,) float, extra filler segments; 0: row untouched
    at: np.ndarray  # (B,) int, segment whose entering state gets them
    src: np.ndarray  # (B,) int, pure-filler segment whose increment is repeated


def extrapolation_plan(rng: np.random.Generator, batch: P.PasskeyBatch, N: int, frac: float,
                       max_tokens: int, before_frac: float = 0.0) -> Extrapolation | None:
    """Pick rows (share ``frac`` of the eligible ones) and where their extra filler goes, or None for no row.

    Two placements. *After the needle* (stage 2's): the state entering the answer's segment ``s_a``, with the
    increment of segment ``s_a - 2``; eligible when that segment is pure filler (needle and instruction end
    before it). *Before the needle*: the state entering the needle's first segment ``n0``, with the increment
    of segment ``n0 - 1``; eligible when that segment is pure filler. The second is the only one open to rows
    whose needle sits in the last two segments (a depth-1 prompt at 1M tokens: a huge memory, then the
    needle, then the answer in a fresh segment); ``before_frac`` is the share of rows eligible for both that
    get it. ``before_frac = 0`` is stage 2's plan, with the same random draws."""
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


_FILLER_CYCLE = P.encode("".join(P._FILLER_UNITS))  # (90,) one period of the filler text


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


def teacher_forced_answer(model, state, tail: torch.Tensor, answer: torch.Tensor) -> dict:
    """Teacher-forced answer from ``state``: feed ``tail`` (B, N) then ``answer[:, :-1]``; p and EM of ``answer``."""
    with torch.no_grad():
        lg_tail, st = model.step(tail, state)  # (B, N, V)
        lg_ans, _ = model.step(answer[:, :-1], st)  # (B, A - 1, V)
    logits = torch.cat([lg_tail[:, -1:], lg_ans], 1)  # (B, A, V): predicts answer[:, 0..A-1]
    p = logits.softmax(-1).gather(-1, answer.unsqueeze(-1)).squeeze(-1)  # (B, A)
    em = (logits.argmax(-1) == answer).all(1).float()  # (B,)
    weakest = torch.bincount(p.argmin(1), minlength=p.shape[1])  # (A,): prompts whose lowest p is at each token
    return {"p_correct_per_token": p.mean(0).tolist(), "p_correct_min_token": p.min(1).values.mean().item(),
            "exact_match": em.mean().item(), "weakest_token_counts": weakest.tolist()}


@torch.no_grad()
def long_proxy(model, length: int, prompts: int, seed: int, source: int = 4096, block: int = 7) -> dict:
    """A cheap long-input score for choosing checkpoints: ``prompts`` depth-0 passkey prompts of ``length`` tokens
    (key in the first segment, then filler), answered teacher-forced from the lever's own state: the first
    ``source`` tokens run for real, the rest of the filler added by ``grow_filler`` with a ``block``-segment block.
    About ``source / N + block * (1 + log2(length / (block * N)))`` segment runs instead of ``length / N``
    (~110 instead of 8,192 at 1M). ``score`` is the mean over prompts of the lowest p(correct digit). Equals the
    ``doubling`` row of ``scripts/extrapolation_check.py`` for the same length, source, block and seed."""
    from infini_export.passkey_eval import LazyPrompt
    N = model.cfg.segment_len
    if length % N or source % N or not N <= source < length - N:
        raise ValueError(f"proxy length ({length}) and source ({source}) must be multiples of the segment length "
                         f"{N}, with {N} <= source < length - {N}")
    prompt = LazyPrompt(length, 0.0)
    if prompt.needle_start + P._NEEDLE_LEN > source:
        raise ValueError(f"proxy source ({source} tokens) must hold the whole needle (ends at token "
                         f"{prompt.needle_start + P._NEEDLE_LEN})")
    was_training = model.training
    model.eval()
    keys = P._random_keys(np.random.default_rng(seed), prompts)  # make_batch(prompts, length, 0, seed)'s keys

    def seg(lo: int, hi: int) -> torch.Tensor:
        return torch.from_numpy(prompt.chunk(lo, hi, keys))  # (B, hi - lo)

    s0, S = source // N, length // N - 1  # real segments; segments before the question's
    state = model.init_state(prompts)
    for s in range(s0):
        state = model.step(seg(s * N, (s + 1) * N), state)[1]
    blk = torch.from_numpy(np.stack([filler_block(r, block) for r in seg((s0 - 1) * N, s0 * N).numpy()]))  # (B, block * N)
    state = grow_filler(model, state, blk, np.full(prompts, float(S - s0)))
    answer = torch.from_numpy(np.stack([P.encode(P.answer_text(k)) for k in keys]))  # (B, A)
    res = teacher_forced_answer(model, state, seg(length - N, length), answer)
    model.train(was_training)
    return {"length": length, "source": source, "block": block, "prompts": prompts, "seed": seed,
            "score": res["p_correct_min_token"], "mean_p": float(np.mean(res["p_correct_per_token"])),
            "exact_match": res["exact_match"], "p_per_token": res["p_correct_per_token"],
            "weakest_token_counts": res["weakest_token_counts"]}


def forward_extrapolated(model, inp: torch.Tensor, plan: Extrapolation, mode: str = "first-order",
                         block: int = 1) -> torch.Tensor:
    """``model(inp)`` with the extra filler of ``plan`` added to the state (see ``extrapolation_plan``).

    ``mode``: ``first-order`` adds ``k`` times what segment ``src`` wrote when it ran (stages 2-4);
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


def train_step_losses(model, batch: P.PasskeyBatch, extra: Extrapolation | None = None,
                      extrapolate_mode: str = "first-order", extrapolate_block: int = 1):
    full = torch.from_numpy(batch.full_ids)  # (B, L + 6)
    inp, tgt = full[:, :-1], full[:, 1:]  # (B, L + 5)
    B, L = batch.ids.shape
    if extra is None:
        logits, _ = model(inp)  # (B, L + 5, V)
    else:
        logits = forward_extrapolated(model, inp, extra, extrapolate_mode, extrapolate_block)  # (B, L + 5, V)
    nll = F.cross_entropy(logits.float().transpose(1, 2), tgt, reduction="none")  # (B, L + 5)
    ar5 = torch.arange(P.KEY_DIGITS)
    ans_idx = (L - 1) + torch.arange(P.ANSWER_LEN)  # targets L .. L+5: " " + digits
    ans_nll = nll[:, ans_idx]  # (B, 6)
    kp = torch.from_numpy(batch.key_positions)  # (B, 2)
    needle_idx = kp[:, 1:2] - 1 + ar5[None, :]  # (B, 5): 2nd mention digits as targets
    needle_nll = nll.gather(1, needle_idx)
    mask = torch.ones_like(nll)
    mask.scatter_(1, kp[:, 0:1] - 1 + ar5[None, :], 0.0)  # 1st mention digits are random: no LM loss
    lm = (nll * mask).sum() / mask.sum()
    pred = logits[:, ans_idx[1:]].argmax(-1)  # (B, 5)
    em = (pred == tgt[:, ans_idx[1:]]).all(dim=-1).float()  # (B,)
    return ans_nll, needle_nll, lm, em


def weighted_answer_loss(ans_nll: torch.Tensor, weights) -> torch.Tensor:
    """Mean of the answer NLL (B, 6) with each target (the space, then the digits) weighted; weights normalised
    to mean 1, so all-equal weights give the plain mean."""
    w = torch.as_tensor(weights, dtype=ans_nll.dtype)  # (6,)
    return (ans_nll * (w * (w.numel() / w.sum()))).mean()


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_report(out: Path, report: dict) -> None:
    tmp = out / (REPORT_JSON + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out / REPORT_JSON)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # plotting is a nicety
        log(f"no plot: {exc}")
        return
    hist, evals = report["history"], report["evals"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    if hist:
        steps = [h["step"] for h in hist]
        ax1.plot(steps, [h["loss"] for h in hist], label="total loss")
        ax1.plot(steps, [h["answer_loss"] for h in hist], label="answer loss (digits)")
        ax1.plot(steps, [h["lm_loss"] for h in hist], label="LM loss", alpha=0.7)
        ax1.axhline(math.log(10), color="gray", ls=":", label="chance (ln 10)")
        ax1.set_ylabel("loss (nats)")
        ax1.set_yscale("log")
        ax1.legend(loc="upper right", fontsize=8)
        axl = ax2.twinx()
        axl.plot(steps, [h["length"] for h in hist], color="tab:gray", alpha=0.5, label="curriculum length")
        axl.set_ylabel("input length (tokens)")
        axl.legend(loc="lower right", fontsize=8)
    if evals:
        ax2.plot([e["step"] for e in evals], [e["em"] for e in evals], "o-", color="tab:green",
                 label="held-out EM (key in an earlier segment)")
    proxy = report.get("proxy") or []
    if proxy:
        ax2.plot([r["step"] for r in proxy], [r["score"] for r in proxy], "s-", color="tab:purple",
                 label=f"proxy at {proxy[-1]['length']:,} tokens: lowest p(correct digit)")
        if any("raw" in r for r in proxy):
            ax2.plot([r["step"] for r in proxy if "raw" in r], [r["raw"]["score"] for r in proxy if "raw" in r],
                     "s:", color="tab:purple", alpha=0.5, label="proxy, raw weights (before --ema)")
    ax2.set_ylim(-0.03, 1.03)
    ax2.set_xlabel("step")
    ax2.set_ylabel("exact match")
    ax2.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"passkey training: {report.get('preset')} ({report.get('parameters', 0):,} params)")
    fig.tight_layout()
    fig.savefig(out / REPORT_PNG, dpi=100)
    plt.close(fig)


# ---- evaluation only --------------------------------------------------------------------------------
def run_evaluate(args) -> int:
    model = load_checkpoint(args.out)
    session = EagerSession(model)
    lengths = [int(x) for x in args.eval_lengths.split(",")]
    depths = [float(x) for x in args.eval_depths.split(",")]
    rows = {}
    t0 = time.time()
    for length in lengths:
        for depth in depths:
            batch = P.make_batch(args.eval_prompts, length, depth, [2 * 10 ** 6 + args.seed, length, int(depth * 1000)])
            res = P.score_batch(session, batch)
            rows[(length, depth)] = res
            log(f"length {length} depth {depth:g}: EM {res.accuracy:.2f}  answers {res.answers} keys {res.keys}")
    print(f"\nExact match, {args.eval_prompts} prompts per cell, greedy, eager torch ({time.time() - t0:.0f} s)\n")
    print("| length | " + " | ".join(f"depth {d:g}" for d in depths) + " |")
    print("|---|" + "---|" * len(depths))
    for length in lengths:
        cells = [f"{sum(rows[(length, d)].correct)}/{len(rows[(length, d)])}" for d in depths]
        print(f"| {length:,} | " + " | ".join(cells) + " |")
    if args.eval_json:
        Path(args.eval_json).write_text(json.dumps(
            [{"length": k[0], "depth": k[1], "em": v.accuracy, "answers": v.answers, "keys": v.keys}
             for k, v in rows.items()], indent=1) + "\n")
    return 0


# ---- training -----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/passkey-small", help="output folder")
    ap.add_argument("--minutes", type=float, default=50.0, help="wall-time budget in minutes, all runs together (0: none)")
    ap.add_argument("--steps", type=int, default=0, help="step budget (0: none)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    ap.add_argument("--preset", default="small", help="InfiniConfig preset")
    ap.add_argument("--update", default=None, choices=("linear", "delta"), help="override the memory rule")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: small batches, short inputs, little eval")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; on a busy machine 1 can be several times faster than 2 (OpenMP spin-waits)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3; with --resume: the run's own "
                                                             "unless given)")
    ap.add_argument("--gate-lr", type=float, default=None,
                    help="peak learning rate of the gates (*.beta) (default 2e-2; with --resume: the run's own unless given)")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--tokens-per-step", type=int, default=16384)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=4096, help="longest prompt of the curriculum")
    ap.add_argument("--start-len", type=int, default=0, help="first prompt length (0: 2 filler sentences)")
    ap.add_argument("--no-filler-frac", type=float, default=0.25)
    ap.add_argument("--boundary-frac", type=float, default=0.4,
                    help="share of filler batches whose prompt ends 0-3 tokens before a segment boundary, so the "
                         "answer is generated in a fresh segment (as at lengths that are multiples of segment_len)")
    ap.add_argument("--mix-frac", type=float, default=0.5,
                    help="share of filler batches at a shorter, log-uniform random length (not used for promotion)")
    ap.add_argument("--extrapolate-frac", type=float, default=0.0,
                    help="share of eligible filler rows whose answer reads a state extrapolated to a longer input")
    ap.add_argument("--extrapolate-to", type=int, default=1 << 20, help="longest extrapolated input, tokens")
    ap.add_argument("--extrapolate-mode", choices=("first-order", "doubling"), default="first-order",
                    help="first-order: k times one filler segment's increment (stages 2-4); doubling: the "
                         "increment re-measured from the growing state, 1 + log2(k) segment runs")
    ap.add_argument("--extrapolate-block", type=int, default=1,
                    help="doubling mode: filler segments run per step (7 x 128 tokens ~ 10 periods of the filler)")
    ap.add_argument("--extrapolate-before-needle", type=float, default=0.0,
                    help="share of extrapolated rows whose extra filler goes before the needle rather than after it "
                         "(rows with the needle in the last two segments can only take it there; 0: stage 2's plan)")
    ap.add_argument("--needle-weight", type=float, default=1.0)
    ap.add_argument("--lm-weight", type=float, default=0.1)
    ap.add_argument("--promote-em", type=float, default=0.8)
    ap.add_argument("--promote-rows", type=int, default=32, help="training rows at the current length behind a promotion")
    ap.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes between held-out evaluations")
    ap.add_argument("--save-every", type=float, default=3.0, help="minutes between saves of train_state.pt")
    ap.add_argument("--heldout-lengths", default="1000,2048,4096")
    ap.add_argument("--heldout-depths", default="0,0.5")
    ap.add_argument("--heldout-prompts", type=int, default=4)
    ap.add_argument("--ema", type=float, default=0.0,
                    help="keep an exponential moving average of the weights with this decay per step (e.g. 0.998; "
                         "0: off); model.safetensors, the evaluations and best/ are then the averaged weights")
    ap.add_argument("--proxy-every", type=float, default=0.0,
                    help="minutes between long-input proxy scores (0: off); the best-scoring weights go to OUT/best/")
    ap.add_argument("--proxy-length", default="1M", help="the proxy's prompt length (a multiple of the segment length)")
    ap.add_argument("--proxy-prompts", type=int, default=16)
    ap.add_argument("--proxy-seed", type=int, default=31337,
                    help="keys of the proxy's prompts (keep it apart from the evaluation seeds: 77, 1234, 2468, 4321, 5555, 9876)")
    ap.add_argument("--init-weights", default=None, metavar="CHECKPOINT",
                    help="start from the weights of this checkpoint of the same config (e.g. an `infini-export "
                         "average` of several runs). With --resume: OUT's run goes on (optimizer, step, schedule, RNG) "
                         "from these weights; without: a fresh run (new optimizer, warm-up, schedule) fine-tunes them, "
                         "its curriculum starting at --start-len")
    ap.add_argument("--answer-weights", default="1,1,1,1,1,1", metavar="W0,...,W5",
                    help="relative loss weight of each answer target: the space, then the 5 digits (e.g. "
                         "1,1,1,1,2,2 to press on the 4th and 5th digits, where the long-input misses sit); "
                         "normalised to mean 1, so the default is the plain mean")
    ap.add_argument("--evaluate", action="store_true", help="only evaluate the checkpoint in OUT")
    ap.add_argument("--eval-lengths", default="8192,32768")
    ap.add_argument("--eval-depths", default="0,0.5,1")
    ap.add_argument("--eval-prompts", type=int, default=5)
    ap.add_argument("--eval-json", default=None)
    args = ap.parse_args(argv)
    if args.extrapolate_block < 1:
        ap.error(f"--extrapolate-block must be >= 1 segment, got {args.extrapolate_block}")
    if args.extrapolate_block != 1 and args.extrapolate_mode != "doubling":
        ap.error("--extrapolate-block applies to --extrapolate-mode doubling only")
    if not 0.0 <= args.ema < 1.0:
        ap.error(f"--ema must be a decay in [0, 1), got {args.ema}")
    try:
        args.answer_weights = [float(x) for x in str(args.answer_weights).split(",")]
    except ValueError:
        ap.error(f"--answer-weights must be {P.ANSWER_LEN} comma-separated numbers, got {args.answer_weights!r}")
    if len(args.answer_weights) != P.ANSWER_LEN or min(args.answer_weights) < 0 or sum(args.answer_weights) <= 0:
        ap.error(f"--answer-weights needs {P.ANSWER_LEN} weights >= 0 (the space, then the {P.KEY_DIGITS} digits), "
                 f"not all 0; got {args.answer_weights}")
    torch.set_num_threads(args.threads)
    if args.evaluate:
        return run_evaluate(args)

    overrides = {"update": args.update} if args.update else {}
    cfg = InfiniConfig.from_name(args.preset, **overrides)
    if args.quick:
        args.tokens_per_step, args.max_batch = 1024, 2
        args.max_len = min(args.max_len, P.min_length() + 120)
        args.heldout_lengths, args.heldout_depths, args.heldout_prompts = str(P.min_length() + 80), "0", 2
        args.log_every, args.warmup = 0.0, 2
        args.proxy_length, args.proxy_prompts = str(32 * cfg.segment_len), min(args.proxy_prompts, 2)
    args.heldout_lengths = [int(x) for x in str(args.heldout_lengths).split(",")]
    args.heldout_depths = [float(x) for x in str(args.heldout_depths).split(",")]
    from infini_export.passkey_eval import parse_length
    args.proxy_length = parse_length(str(args.proxy_length))
    proxy_source = min(4096, (args.proxy_length // 2) // cfg.segment_len * cfg.segment_len)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE

    torch.manual_seed(args.seed)
    model = InfiniTransformer(cfg)
    given_lr = {"lr": args.lr, "gate_lr": args.gate_lr}
    args.lr = 2e-3 if args.lr is None else args.lr
    args.gate_lr = 2e-2 if args.gate_lr is None else args.gate_lr
    opt = build_optimizer(model, args.lr, args.gate_lr, args.weight_decay)
    rng = np.random.default_rng(args.seed)
    random.seed(args.seed)
    start_len = args.start_len or (P.min_length() + 40)
    tr = {"step": 0, "elapsed": 0.0, "tokens": 0, "cur_len": start_len, "history": [], "evals": [],
          "promotions": [], "em_window": [], "runs": [], "proxy": [], "best_proxy": None}
    if args.resume:
        if not state_path.is_file():
            raise SystemExit(f"--resume: {state_path} does not exist")
        ck = torch.load(state_path, map_location="cpu", weights_only=False)
        if ck["config"] != cfg.to_dict():
            raise SystemExit(f"--resume: {state_path} was trained with another config: {ck['config']}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])  # restores each group's base_lr: the run's own learning rates
        for g in opt.param_groups:
            key = "gate_lr" if g["name"] == "gates" else "lr"
            if given_lr[key] is not None and given_lr[key] != g["base_lr"]:
                log(f"--{key.replace('_', '-')} {given_lr[key]:g} replaces the run's {g['base_lr']:g} ({g['name']} group)")
                g["base_lr"] = given_lr[key]
        args.lr = next(g["base_lr"] for g in opt.param_groups if g["name"] == "decay")
        args.gate_lr = next(g["base_lr"] for g in opt.param_groups if g["name"] == "gates")
        tr = ck["train"]
        rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
        random.setstate(ck["python_rng"])
        log(f"resumed from {state_path}: step {tr['step']}, {tr['elapsed'] / 60:.1f} min, length {tr['cur_len']}")
        tr.setdefault("proxy", [])
        tr.setdefault("best_proxy", None)
    if args.init_weights:  # a resumed run goes on from these weights; a fresh one fine-tunes them
        init = load_checkpoint(args.init_weights)
        if init.cfg.to_dict() != cfg.to_dict():
            against = state_path if args.resume else f"--preset {args.preset}"
            raise SystemExit(f"--init-weights: {args.init_weights} has another config than {against}: "
                             f"{init.cfg.to_dict()} vs {cfg.to_dict()}")
        model.load_state_dict(init.state_dict())
        tr["init_weights"] = str(args.init_weights)
        log(f"weights replaced by {args.init_weights} (optimizer state, step and schedule kept)" if args.resume else
            f"fresh run from the weights of {args.init_weights} (new optimizer and schedule; curriculum at {start_len})")
    model.train()
    # a saved average of the run's old weights would pull --init-weights' new ones back: not resumed then
    saved_ema = ck.get("ema") if args.resume and not args.init_weights else None
    ema = None  # the averaged copy (torch.optim.swa_utils); what ships when on
    if args.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema))
        if saved_ema is not None:
            ema.load_state_dict(saved_ema)
            log(f"resumed the weight average ({int(ema.n_averaged)} steps averaged)")
        else:
            log(f"weight average starts from the current weights, decay {args.ema}")
    elif saved_ema is not None:
        log(f"warning: {state_path} holds a weight average ({int(saved_ema['n_averaged'])} steps) but --ema is off: "
            "it is dropped and the raw weights ship; pass --ema to keep it")
    shipped = ema.module if ema is not None else model
    n_params = model.num_parameters()
    heldout = heldout_sets(args, cfg)
    em_window = deque(tr["em_window"], maxlen=10 ** 6)
    tr["runs"].append({"argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "start_step": tr["step"]})
    log(f"{args.preset}: {n_params:,} params, update={cfg.update}, segment_len={cfg.segment_len}, "
        f"threads={torch.get_num_threads()}, budget: {args.minutes} min / {args.steps or '-'} steps, out={out}")

    stop = {"flag": False}

    def on_signal(signum, frame):  # finish the step, save, exit
        stop["flag"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def save_state() -> None:
        tr["em_window"] = list(em_window)
        atomic_torch_save({"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "train": tr, "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                           "python_rng": random.getstate(), "args": {k: v for k, v in vars(args).items()},
                           "ema": ema.state_dict() if ema is not None else None},
                          state_path)

    def report(final: bool) -> dict:
        last_eval = tr["evals"][-1] if tr["evals"] else None
        rep = {"preset": args.preset, "config": cfg.to_dict(), "parameters": n_params,
               "steps": tr["step"], "tokens": tr["tokens"], "train_minutes": round(tr["elapsed"] / 60, 2),
               "final": final, "curriculum_length": tr["cur_len"], "max_len": args.max_len,
               "heldout_em": last_eval["em"] if last_eval else None,
               "heldout": {"lengths": args.heldout_lengths, "depths": args.heldout_depths,
                           "prompts_per_cell": args.heldout_prompts,
                           "note": "needle in an earlier segment than the prompt's last token; greedy, exact match"},
               "recipe": {k: getattr(args, k) for k in ("lr", "gate_lr", "weight_decay", "warmup", "tokens_per_step",
                                                         "max_batch", "max_len", "no_filler_frac", "mix_frac", "boundary_frac", "needle_weight",
                                                         "lm_weight", "promote_em", "promote_rows", "seed", "extrapolate_frac", "extrapolate_to",
                                                         "extrapolate_before_needle", "extrapolate_mode",
                                                         "extrapolate_block", "ema", "answer_weights")},
               "init_weights": tr.get("init_weights"),
               "proxy": tr["proxy"], "best_proxy": tr["best_proxy"],
               "runs": tr["runs"], "promotions": tr["promotions"], "evals": tr["evals"], "history": tr["history"]}
        write_report(out, rep)
        return rep

    def do_eval() -> dict:
        t = time.time()
        res = evaluate_heldout(shipped, heldout, batch_size=16)
        res.update(step=tr["step"], minutes=round(tr["elapsed"] / 60, 2), length=tr["cur_len"])
        tr["evals"].append(res)
        log(f"held-out EM {res['em']:.3f} over {res['n']} prompts at step {tr['step']} "
            f"({time.time() - t:.1f} s): {res['cells']}")
        return res

    def do_proxy() -> dict:
        """Score the shipped weights (and the raw ones, under --ema) on the long-input proxy; keep the best."""
        t = time.time()
        kw = dict(length=args.proxy_length, prompts=args.proxy_prompts, seed=args.proxy_seed, source=proxy_source,
                  block=max(1, args.extrapolate_block))
        res = long_proxy(shipped, **kw)
        rec = {"step": tr["step"], "minutes": round(tr["elapsed"] / 60, 2), **res}
        if ema is not None:
            raw = long_proxy(model, **kw)
            rec["raw"] = {k: raw[k] for k in ("score", "mean_p", "exact_match")}
        tr["proxy"].append(rec)
        best = tr["best_proxy"]
        if best is None or rec["score"] > best["score"]:
            save_checkpoint(shipped, out / "best")
            tr["best_proxy"] = {k: rec[k] for k in ("step", "minutes", "score", "mean_p", "exact_match")}
            tmp = out / "best" / "proxy.json.tmp"
            tmp.write_text(json.dumps(rec, indent=1) + "\n")
            os.replace(tmp, out / "best" / "proxy.json")
        raw_s = f" (raw weights {rec['raw']['score']:.3f})" if ema is not None else ""
        log(f"proxy at {args.proxy_length:,} tokens: lowest-p {rec['score']:.3f}{raw_s}, mean p {rec['mean_p']:.3f}, "
            f"EM {rec['exact_match']:.2f} over {args.proxy_prompts} prompts at step {tr['step']} "
            f"({time.time() - t:.1f} s); best {tr['best_proxy']['score']:.3f} at step {tr['best_proxy']['step']}")
        return rec

    budget_s = args.minutes * 60.0 if args.minutes > 0 else float("inf")
    t_last = time.time()
    t_eval = t_save = t_log = t_proxy = t_last
    acc = {"loss": 0.0, "ans": 0.0, "needle": 0.0, "lm": 0.0, "em_f": [], "em_e": [], "em_n": [], "em_x": [], "n": 0, "tok": 0}
    while not stop["flag"]:
        if args.steps and tr["step"] >= args.steps:
            break
        if tr["elapsed"] >= budget_s:
            break
        progress = max(tr["step"] / args.steps if args.steps else 0.0, tr["elapsed"] / budget_s)
        f = lr_factor(tr["step"], progress, args.warmup)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        batch, kind = make_train_batch(rng, tr["cur_len"], args, cfg)
        extra = (extrapolation_plan(rng, batch, cfg.segment_len, args.extrapolate_frac, args.extrapolate_to,
                                    args.extrapolate_before_needle) if kind != "nofill" else None)
        ans_nll, needle_nll, lm, em = train_step_losses(model, batch, extra, args.extrapolate_mode, args.extrapolate_block)
        loss = weighted_answer_loss(ans_nll, args.answer_weights) + args.needle_weight * needle_nll.mean() + args.lm_weight * lm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update_parameters(model)
        now = time.time()
        tr["elapsed"] += now - t_last
        t_last = now
        tr["step"] += 1
        ntok = int(batch.ids.shape[0] * (batch.ids.shape[1] + P.ANSWER_LEN - 1))
        tr["tokens"] += ntok
        acc["loss"] += float(loss.detach())
        acc["ans"] += float(ans_nll[:, 1:].detach().mean())
        acc["needle"] += float(needle_nll.detach().mean())
        acc["lm"] += float(lm.detach())
        acc["n"] += 1
        acc["tok"] += ntok
        # "hard" rows: the needle ends in an earlier segment than the prompt's last token, so only the
        # memory can carry the key to the answer; the others are solved by local attention
        N = cfg.segment_len
        hard = (batch.needle_end - 1) // N < (batch.ids.shape[1] - 1) // N  # (B,) bool
        em_rows = em.numpy().astype(bool)
        xr = extra.k > 0 if extra is not None else np.zeros_like(hard)  # (B,) extrapolated rows
        acc["em_x"].extend(em_rows[xr].tolist())  # their own EM, kept out of the curriculum's and "local"
        hard = hard & ~xr
        if kind in ("filler", "mixed"):
            acc["em_f"].extend(em_rows[hard].tolist())
            acc["em_e"].extend(em_rows[~hard & ~xr].tolist())
        else:
            acc["em_n"].extend(em_rows.tolist())
        # curriculum: promote on the training EM of the hard rows only
        if kind == "filler" and hard.any():
            em_window.extend(em_rows[hard].astype(float).tolist())
            if len(em_window) >= args.promote_rows and tr["cur_len"] < args.max_len:
                recent = list(em_window)[-args.promote_rows:]
                if float(np.mean(recent)) > args.promote_em:
                    new_len = next_length(tr["cur_len"], args.max_len)
                    tr["promotions"].append({"step": tr["step"], "minutes": round(tr["elapsed"] / 60, 2),
                                             "from": tr["cur_len"], "to": new_len})
                    log(f"step {tr['step']}: train EM {np.mean(recent):.2f} > {args.promote_em}: length "
                        f"{tr['cur_len']} -> {new_len}")
                    tr["cur_len"] = new_len
                    em_window.clear()
        if now - t_log >= args.log_every or args.quick:
            n = max(1, acc["n"])
            dt = max(1e-6, now - t_log)
            rec = {"step": tr["step"], "minutes": round(tr["elapsed"] / 60, 2), "loss": acc["loss"] / n,
                   "answer_loss": acc["ans"] / n, "needle_loss": acc["needle"] / n, "lm_loss": acc["lm"] / n,
                   "train_em": float(np.mean(acc["em_f"])) if acc["em_f"] else None,
                   "train_em_local": float(np.mean(acc["em_e"])) if acc["em_e"] else None,
                   "train_em_nofill": float(np.mean(acc["em_n"])) if acc["em_n"] else None,
                   "train_em_extrapolated": float(np.mean(acc["em_x"])) if acc["em_x"] else None,
                   "length": tr["cur_len"], "lr": opt.param_groups[0]["lr"], "tokens": tr["tokens"],
                   "tokens_per_s": acc["tok"] / dt,
                   "gates": [round(float(torch.sigmoid(b.attn.beta.detach()).mean()), 3) for b in model.blocks]}
            tr["history"].append(rec)
            def fmt(x):
                return "-" if x is None else f"{x:.2f}"
            em_s, em_e, em_n = fmt(rec["train_em"]), fmt(rec["train_em_local"]), fmt(rec["train_em_nofill"])
            em_n += f", extrapolated {fmt(rec['train_em_extrapolated'])}"
            log(f"step {rec['step']:5d} | {rec['minutes']:5.1f} min | loss {rec['loss']:.3f} | answer {rec['answer_loss']:.3f}"
                f" | needle {rec['needle_loss']:.3f} | lm {rec['lm_loss']:.3f} | train EM {em_s} (local {em_e}, no filler {em_n})"
                f" | len {tr['cur_len']} | lr {rec['lr']:.2e} | {rec['tokens_per_s']:.0f} tok/s | gates {rec['gates']}")
            acc = {"loss": 0.0, "ans": 0.0, "needle": 0.0, "lm": 0.0, "em_f": [], "em_e": [], "em_n": [], "em_x": [], "n": 0, "tok": 0}
            t_log = now
        if now - t_eval >= args.eval_every * 60:
            do_eval()
            t_eval = t_last = time.time()  # the wall-time budget includes evaluations
            tr["elapsed"] += t_eval - now
        if args.proxy_every and time.time() - t_proxy >= args.proxy_every * 60:
            t0 = time.time()
            do_proxy()
            t_proxy = t_last = time.time()  # counted in the budget too
            tr["elapsed"] += t_proxy - t0
        if now - t_save >= args.save_every * 60:
            save_state()
            save_checkpoint(shipped, out)
            report(final=False)
            t_save = time.time()

    model.eval()
    if not stop["flag"] and (not tr["evals"] or tr["evals"][-1]["step"] != tr["step"]):
        do_eval()  # (skipped when interrupted: save quickly)
        if args.proxy_every and (not tr["proxy"] or tr["proxy"][-1]["step"] != tr["step"]):
            do_proxy()
    save_checkpoint(shipped, out)
    save_state()
    rep = report(final=not stop["flag"])
    log(f"done: {tr['step']} steps, {tr['tokens']:,} tokens, {tr['elapsed'] / 60:.1f} min, length {tr['cur_len']}, "
        f"held-out EM {rep['heldout_em']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
