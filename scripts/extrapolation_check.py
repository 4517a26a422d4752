#!/usr/bin/env python
"""How faithful is the training lever's first-order extrapolation of a long filler stream?

``train_passkey.py --extrapolate-frac`` trains the answer against ``M + k * dM, z + k * dz`` (``dM, dz``: what
one filler segment wrote) instead of the state a real long input leaves. This script streams real depth-0 passkey
prompts (key in the first segment, then filler) through the eager model and, at each checkpoint length, asks the
question: the prompt's last segment then the answer, teacher-forced. At ``--source`` tokens it also builds the
extrapolated state for the full length, asks the same question from it, and at the end compares that state with
the real one, layer by layer. Both of the lever's modes are measured: ``first-order`` (k times the source
segment's increment) and ``doubling`` (``grow_filler``: the increment re-measured from the growing state).

    python scripts/extrapolation_check.py --checkpoint models/passkey-small            # 1M tokens, 8 prompts
    python scripts/extrapolation_check.py --checkpoint models/passkey-small --length 128K --prompts 4
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # train_passkey: the lever's grow_filler


def extrapolate(state, prev, k: float):
    """``state + k * (state - prev)`` per layer: the training lever's first-order extrapolation."""
    from infini_export.state import LayerMemory
    return tuple(LayerMemory(s.memory + k * (s.memory - p.memory),  # (B, H, dk, dv)
                             s.norm + k * (s.norm - p.norm))  # (B, H, dk)
                 for s, p in zip(state, prev))


def rel_diff(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def run(checkpoint: str, length: int, prompts: int, source: int, seed: int, progress: bool = True,
        block: int = 1) -> dict:
    import torch
    from tqdm import tqdm

    from infini_export import load_checkpoint
    from infini_export.passkey_eval import LazyPrompt
    from infini_export.tasks import passkey as P
    model = load_checkpoint(checkpoint).eval()
    N = model.cfg.segment_len
    if length % N or source % N or not N <= source < length - N:
        raise SystemExit(f"--length ({length}) and --source ({source}) must be multiples of the segment length "
                         f"{N}, with {N} <= source < length - {N}")
    keys = P._random_keys(np.random.default_rng(seed), prompts)  # the keys of make_batch(prompts, length, 0, seed)
    prompt = LazyPrompt(length, 0.0)  # generated segment by segment: the 1M-token prompt is never held

    def seg(lo: int, hi: int) -> torch.Tensor:
        return torch.from_numpy(prompt.chunk(lo, hi, keys))  # (B, hi - lo)

    answer = torch.from_numpy(np.stack([P.encode(P.answer_text(k)) for k in keys]))  # (B, A)
    tail = seg(length - N, length)  # (B, N): the last prompt segment (filler, then the question)
    S = length // N - 1  # segments before the tail
    checks = sorted({c for c in (source // N * 4 ** i for i in range(32)) if c < S} | {source // N, S})
    from train_passkey import filler_block, grow_filler, teacher_forced_answer as ask
    real, extrapolated, doubled, prev = [], None, None, None
    state = model.init_state(prompts)
    with torch.no_grad():
        for s in tqdm(range(S), desc="filler segments", unit="seg", disable=not progress, mininterval=5):
            prev, state = state, model.step(seg(s * N, (s + 1) * N), state)[1]
            if s + 1 in checks:
                real.append({"tokens": (s + 2) * N, **ask(model, state, tail, answer)})
            if (s + 1) * N == source:
                ext_state = extrapolate(state, prev, S - (s + 1))
                extrapolated = {"tokens": length, "from_tokens": source + N, **ask(model, ext_state, tail, answer)}
                k = np.full(prompts, float(S - (s + 1)))  # (B,) segments still to come
                src = seg(s * N, (s + 1) * N).numpy()  # (B, N) the source segment, pure filler
                blk = torch.from_numpy(np.stack([filler_block(r, block) for r in src]))  # (B, block * N)
                dbl_state = grow_filler(model, state, blk, k)
                doubled = {"tokens": length, "from_tokens": source + N, "block": block, **ask(model, dbl_state, tail, answer)}
    layers = [{"layer": i, "memory_rel_diff": rel_diff(e.memory, r.memory), "norm_rel_diff": rel_diff(e.norm, r.norm),
               "doubling_memory_rel_diff": rel_diff(d.memory, r.memory),
               "doubling_norm_rel_diff": rel_diff(d.norm, r.norm),
               "memory_norm_real": r.memory.norm().item(), "norm_mean_real": r.norm.mean().item()}
              for i, (r, e, d) in enumerate(zip(state, ext_state, dbl_state))]
    return {"checkpoint": str(checkpoint), "length": length, "prompts": prompts, "seed": seed, "depth": 0.0,
            "real": real, "extrapolated": extrapolated, "doubling": doubled, "state_vs_real": layers}


def report(res: dict) -> str:
    lines = [f"depth-0 passkey, {res['prompts']} prompts, teacher-forced answer after the prompt's last segment",
             "| input tokens | state | exact match | mean p(correct) | mean of each prompt's lowest p |",
             "|---:|---|---:|---:|---:|"]
    for r in res["real"]:
        lines.append(f"| {r['tokens']:,} | real | {r['exact_match']:.2f} | {np.mean(r['p_correct_per_token']):.3f} "
                     f"| {r['p_correct_min_token']:.3f} |")
    e = res["extrapolated"]
    lines.append(f"| {e['tokens']:,} | first-order from {e['from_tokens']:,} | {e['exact_match']:.2f} | "
                 f"{np.mean(e['p_correct_per_token']):.3f} | {e['p_correct_min_token']:.3f} |")
    e = res.get("doubling")
    if e:
        lines.append(f"| {e['tokens']:,} | doubling ({e.get('block', 1)}-segment block) from {e['from_tokens']:,} | {e['exact_match']:.2f} | "
                     f"{np.mean(e['p_correct_per_token']):.3f} | {e['p_correct_min_token']:.3f} |")
    lines.append("first-order vs real state at the end: " + "; ".join(
        f"layer {x['layer']} M {100 * x['memory_rel_diff']:.1f}%, z {100 * x['norm_rel_diff']:.1f}%"
        for x in res["state_vs_real"]))
    if all("doubling_memory_rel_diff" in x for x in res["state_vs_real"]):
        lines.append("doubling vs real state at the end: " + "; ".join(
            f"layer {x['layer']} M {100 * x['doubling_memory_rel_diff']:.1f}%, z {100 * x['doubling_norm_rel_diff']:.1f}%"
            for x in res["state_vs_real"]))
    return "\n".join(lines)


def main() -> int:
    from infini_export.passkey_eval import parse_length
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "passkey-small"))
    p.add_argument("--length", default="1M", help="prompt length (a multiple of the segment length)")
    p.add_argument("--source", default="4K", help="input length whose last filler segment is extrapolated")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--seed", type=int, default=77)
    p.add_argument("--block", type=int, default=1, help="doubling mode's filler block, segments")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    res = run(args.checkpoint, parse_length(args.length), args.prompts, parse_length(args.source), args.seed,
              block=args.block)
    print(report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
