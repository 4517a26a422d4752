"""``generate``: a prompt in, the continuation out as it comes (stdout), prefill and decode speed (stderr).

With an artifact that has a tokenizer the prompt is text and the output is text (``generate_text_iter``);
otherwise the prompt's bytes are the ids of a byte-level vocabulary and the output is bytes or ids.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..measure import peak_rss_mb
from .run import open_session


def _prompt_ids(args, vocab: int) -> np.ndarray:
    if args.random_prompt is not None:
        return np.random.default_rng(args.seed).integers(0, vocab, args.random_prompt, dtype=np.int64)
    text = Path(args.prompt_file).read_bytes() if args.prompt_file else args.prompt.encode()
    if vocab < 256:
        raise ValueError(f"text prompts are bytes (ids 0..255); this model's vocabulary has {vocab} tokens")
    return np.frombuffer(text, dtype=np.uint8).astype(np.int64)


def _tokenizer(session):
    """The artifact's tokenizer, or None where it has none."""
    from ..errors import NoTokenizerError
    try:
        return session.tokenizer
    except NoTokenizerError:
        return None


def _speed_line(prompt_tokens: int, prefill: float, n: int, decode: float, decoding: bool, opened: float) -> str:
    return (f"prompt {prompt_tokens:,} tokens: prefill {prompt_tokens / prefill if prefill > 0 else float('nan'):,.0f} "
            f"tok/s ({prefill:.2f} s); {n} new tokens: decode {n / decode if decode > 0 else float('nan'):,.1f} tok/s "
            f"({1000 * decode / max(n, 1):.1f} ms/token, {'decode program' if decoding else 'segment re-run'}); "
            f"open {opened:.2f} s; peak RSS {peak_rss_mb():,.0f} MB")


def _generate_text(session, args, temperature: float) -> tuple[int, float, int, float]:
    """Text pieces through the artifact's tokenizer; (prompt tokens, prefill s, new tokens, decode s)."""
    prompt = Path(args.prompt_file).read_text(encoding="utf-8") if args.prompt_file else args.prompt
    pieces = session.generate_text_iter(prompt, args.max_new_tokens, temperature, args.top_k, args.top_p, args.seed)
    for piece in pieces:
        if not args.quiet:
            sys.stdout.write(piece)
            sys.stdout.flush()
    return pieces.prompt_tokens, pieces.prefill_seconds, len(pieces.ids), pieces.decode_seconds


def _generate_ids(session, args, temperature: float) -> tuple[int, float, int, float]:
    """Token ids (bytes for a byte-level vocabulary); (prompt tokens, prefill s, new tokens, decode s)."""
    prompt = _prompt_ids(args, session.vocab_size)
    if prompt.size == 0:
        raise ValueError("the prompt is empty; give --prompt, --prompt-file or --random-prompt N")
    byte_level = session.vocab_size == 256 and args.random_prompt is None
    t1 = time.perf_counter()
    session.stream(prompt)
    prefill = time.perf_counter() - t1
    t2 = time.perf_counter()
    n = 0
    for tok in session.generate_iter(prompt[:0], args.max_new_tokens, temperature, args.top_k, args.top_p, args.seed):
        n += 1
        if not args.quiet:
            sys.stdout.write(bytes([int(tok[0])]).decode("latin-1") if byte_level else f"{int(tok[0])} ")
            sys.stdout.flush()
    return prompt.size, prefill, n, time.perf_counter() - t2


def main(args) -> int:
    """Run ``generate`` for parsed arguments (``args.py``); greedy unless ``--temperature`` is given."""
    t0 = time.perf_counter()
    session = open_session(args)
    opened = time.perf_counter() - t0
    temperature = 0.0 if args.temperature is None else args.temperature
    text = args.random_prompt is None and _tokenizer(session) is not None
    prompt_tokens, prefill, n, decode = (_generate_text if text else _generate_ids)(session, args, temperature)
    print()
    print(_speed_line(prompt_tokens, prefill, n, decode, session.decoding, opened), file=sys.stderr)
    return 0
