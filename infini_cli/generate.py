"""``infini-export generate``: a prompt in, tokens out as they come, with prefill and decode speed reported."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from runtime.measure import peak_rss_mb

from .run import session_options


def _prompt_ids(args, vocab: int) -> np.ndarray:
    if args.random_prompt is not None:
        return np.random.default_rng(args.seed).integers(0, vocab, args.random_prompt, dtype=np.int64)
    text = Path(args.prompt_file).read_bytes() if args.prompt_file else args.prompt.encode()
    if vocab < 256:
        raise ValueError(f"text prompts are bytes (ids 0..255); this model's vocabulary has {vocab} tokens")
    return np.frombuffer(text, dtype=np.uint8).astype(np.int64)


def main(args) -> int:
    from runtime.session import InfiniSession

    t0 = time.perf_counter()
    session = InfiniSession.open(args.artifact, backend=args.backend, **session_options(args))
    opened = time.perf_counter() - t0
    prompt = _prompt_ids(args, session.vocab_size)
    if prompt.size == 0:
        raise ValueError("the prompt is empty; give --prompt, --prompt-file or --random-prompt N")
    byte_level = session.vocab_size == 256 and args.random_prompt is None
    t1 = time.perf_counter()
    session.stream(prompt)
    prefill = time.perf_counter() - t1
    t2 = time.perf_counter()
    out = []
    for tok in session.generate_iter(prompt[:0], args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed):
        out.append(int(tok[0]))
        if not args.quiet:
            sys.stdout.write(bytes([out[-1]]).decode("latin-1") if byte_level else f"{out[-1]} ")
            sys.stdout.flush()
    decode = time.perf_counter() - t2
    n = len(out)
    print()
    print(f"prompt {prompt.size:,} tokens: prefill {prompt.size / prefill:,.0f} tok/s ({prefill:.2f} s); "
          f"{n} new tokens: decode {n / decode if decode > 0 else float('nan'):,.1f} tok/s "
          f"({1000 * decode / max(n, 1):.1f} ms/token, {'decode program' if session.decoding else 'segment re-run'}); "
          f"open {opened:.2f} s; peak RSS {peak_rss_mb():,.0f} MB", file=sys.stderr)
    return 0
