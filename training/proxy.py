"""Long-input scores of a model without running the long input: the training proxy and the lever's check.

Both use depth-0 passkey prompts (key in the first segment, then filler) and ask the question teacher-forced: the
prompt's last segment, then the answer. :func:`long_proxy` runs the first ``source`` tokens for real and adds the
rest of the filler with the lever's doubling steps (~110 segment runs instead of 8,192 at 1M tokens);
:func:`extrapolation_check` runs the whole prompt for real as well and compares, answer and state, with both of the
lever's modes.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm import tqdm

from tasks import passkey as P
from .extrapolation import extrapolate_first_order, filler_block, grow_filler


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


class _Depth0:
    """``prompts`` depth-0 prompts of ``length`` tokens (the keys of ``make_batch(prompts, length, 0, seed)``),
    generated segment by segment: a 1M-token prompt is never held."""

    def __init__(self, length: int, prompts: int, seed: int, source: int, N: int):
        if length % N or source % N or not N <= source < length - N:
            raise ValueError(f"length ({length}) and source ({source}) must be multiples of the segment length "
                             f"{N}, with {N} <= source < length - {N}")
        self.layout = P.prompt_layout(length, 0.0)
        self.keys = P.draw_keys(seed, prompts)
        self.N, self.length = N, length
        self.answer = torch.from_numpy(P.answer_ids(self.keys))  # (B, A)

    def seg(self, lo: int, hi: int) -> torch.Tensor:
        return torch.from_numpy(self.layout.chunk(lo, hi, self.keys))  # (B, hi - lo)

    def tail(self) -> torch.Tensor:
        return self.seg(self.length - self.N, self.length)  # (B, N): the last segment (filler, then the question)

    def grown(self, model, state, s_done: int, block: int):
        """``state`` after ``s_done`` real segments, grown by doubling steps to the segment before the tail."""
        N = self.N
        src = self.seg((s_done - 1) * N, s_done * N).numpy()  # (B, N) the last real segment, pure filler
        blk = torch.from_numpy(np.stack([filler_block(r, block) for r in src]))  # (B, block * N)
        return grow_filler(model, state, blk, np.full(len(self.keys), float(self.length // N - 1 - s_done)))


@torch.no_grad()
def long_proxy(model, length: int, prompts: int, seed: int, source: int = 4096, block: int = 7) -> dict:
    """A cheap long-input score for choosing checkpoints: ``prompts`` depth-0 passkey prompts of ``length`` tokens
    answered teacher-forced from the lever's own state: the first ``source`` tokens run for real, the rest of the
    filler added by ``grow_filler`` with a ``block``-segment block. About ``source / N + block * (1 + log2(length /
    (block * N)))`` segment runs instead of ``length / N``. ``score`` is the mean over prompts of the lowest
    p(correct digit). Equals the ``doubling`` row of :func:`extrapolation_check` for the same arguments."""
    N = model.cfg.segment_len
    d0 = _Depth0(length, prompts, seed, source, N)
    if d0.layout.needle_start + P.NEEDLE_LEN > source:
        raise ValueError(f"proxy source ({source} tokens) must hold the whole needle (ends at token "
                         f"{d0.layout.needle_start + P.NEEDLE_LEN})")
    was_training = model.training
    model.eval()
    state = model.init_state(prompts)
    for s in range(source // N):
        state = model.step(d0.seg(s * N, (s + 1) * N), state)[1]
    res = teacher_forced_answer(model, d0.grown(model, state, source // N, block), d0.tail(), d0.answer)
    model.train(was_training)
    return {"length": length, "source": source, "block": block, "prompts": prompts, "seed": seed,
            "score": res["p_correct_min_token"], "mean_p": float(np.mean(res["p_correct_per_token"])),
            "exact_match": res["exact_match"], "p_per_token": res["p_correct_per_token"],
            "weakest_token_counts": res["weakest_token_counts"]}


def _rel_diff(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def extrapolation_check(model, length: int, prompts: int, source: int, seed: int, progress: bool = True,
                        block: int = 1) -> dict:
    """How faithful the lever is: stream ``prompts`` real depth-0 prompts of ``length`` tokens and ask the question
    (teacher-forced) at checkpoint lengths; at ``source`` tokens also build the state for the full length with both
    of the lever's modes, ask from it, and compare it at the end with the real state, layer by layer."""
    N = model.cfg.segment_len
    d0 = _Depth0(length, prompts, seed, source, N)
    tail, answer = d0.tail(), d0.answer
    S = length // N - 1  # segments before the tail
    checks = sorted({c for c in (source // N * 4 ** i for i in range(32)) if c < S} | {source // N, S})
    real, state = [], model.init_state(prompts)
    quiet = not (progress and sys.stderr.isatty())
    for s in tqdm(range(S), desc="filler segments", unit="seg", mininterval=5, disable=quiet):
        prev, state = state, model.step(d0.seg(s * N, (s + 1) * N), state)[1]
        if s + 1 in checks:
            real.append({"tokens": (s + 2) * N, **teacher_forced_answer(model, state, tail, answer)})
        if (s + 1) * N == source:
            ext_state = extrapolate_first_order(state, prev, S - (s + 1))
            extrapolated = {"tokens": length, "from_tokens": source + N,
                            **teacher_forced_answer(model, ext_state, tail, answer)}
            dbl_state = d0.grown(model, state, s + 1, block)
            doubled = {"tokens": length, "from_tokens": source + N, "block": block,
                       **teacher_forced_answer(model, dbl_state, tail, answer)}
    layers = [{"layer": i, "memory_rel_diff": _rel_diff(e.memory, r.memory), "norm_rel_diff": _rel_diff(e.norm, r.norm),
               "doubling_memory_rel_diff": _rel_diff(d.memory, r.memory),
               "doubling_norm_rel_diff": _rel_diff(d.norm, r.norm),
               "memory_norm_real": r.memory.norm().item(), "norm_mean_real": r.norm.mean().item()}
              for i, (r, e, d) in enumerate(zip(state, ext_state, dbl_state))]
    return {"length": length, "prompts": prompts, "seed": seed, "depth": 0.0,
            "real": real, "extrapolated": extrapolated, "doubling": doubled, "state_vs_real": layers}


def extrapolation_table(res: dict) -> str:
    """The markdown table and per-layer state differences of an :func:`extrapolation_check` result."""
    lines = [f"depth-0 passkey, {res['prompts']} prompts, teacher-forced answer after the prompt's last segment",
             "| input tokens | state | exact match | mean p(correct) | mean of each prompt's lowest p |",
             "|---:|---|---:|---:|---:|"]
    rows = [(r, "real") for r in res["real"]] + [(res["extrapolated"], "first-order from {from_tokens:,}")]
    if res.get("doubling"):
        rows.append((res["doubling"], "doubling ({block}-segment block) from {from_tokens:,}"))
    for r, label in rows:
        lines.append(f"| {r['tokens']:,} | {label.format(**r)} | {r['exact_match']:.2f} | "
                     f"{np.mean(r['p_correct_per_token']):.3f} | {r['p_correct_min_token']:.3f} |")
    for name, prefix in (("first-order", ""), ("doubling", "doubling_")):
        if all(prefix + "memory_rel_diff" in x for x in res["state_vs_real"]):
            lines.append(f"{name} vs real state at the end: " + "; ".join(
                f"layer {x['layer']} M {100 * x[prefix + 'memory_rel_diff']:.1f}%, "
                f"z {100 * x[prefix + 'norm_rel_diff']:.1f}%" for x in res["state_vs_real"]))
    return "\n".join(lines)
