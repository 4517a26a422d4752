"""Training batches and the length curriculum: what the model sees at each step, and the held-out prompts."""
from __future__ import annotations

import math

import numpy as np

from tasks import passkey as P


def next_length(cur: int, max_len: int) -> int:
    """Curriculum: 2 filler sentences (~40 tokens) at a time, or 6% once inputs are longer."""
    return min(max_len, cur + max(40, int(0.06 * cur)))


def make_train_batch(rng: np.random.Generator, cur_len: int, tc, segment_len: int) -> tuple[P.PasskeyBatch, str]:
    """(batch, kind) for settings ``tc`` (a ``TrainConfig``): a share ``no_filler_frac`` of no-filler batches
    ("nofill"); of the others, a share ``mix_frac`` at a shorter random length ("mixed") and the rest at about the
    current length ("filler")."""
    N = segment_len
    if rng.random() < tc.no_filler_frac:
        L = P.min_length(instruction=False)
        B = tc.max_batch
        depths = rng.random(B)
        return P.make_batch(B, L, depths, rng, instruction=False), "nofill"
    lo = P.min_length(instruction=True)
    kind, target = "filler", cur_len
    if cur_len > lo + 200 and rng.random() < tc.mix_frac:
        # a shorter input, log-uniform between 2 filler sentences and the current length: keeps every
        # length seen so far working (the memory read is diluted differently at every length)
        kind = "mixed"
        target = int(round(math.exp(rng.uniform(math.log(lo + 40), math.log(cur_len)))))
    if rng.random() < tc.boundary_frac and target >= 2 * N:
        # end the prompt within a few tokens of a segment boundary: the answer spills into a new segment
        L = (target // N) * N - int(rng.integers(0, 4))
    else:
        L = target - int(rng.integers(0, min(N, target - lo + 1)))
    L = max(lo, L)
    B = int(max(1, min(tc.max_batch, tc.tokens_per_step // (L + P.ANSWER_LEN))))
    depths = rng.random(B)
    return P.make_batch(B, L, depths, rng), kind


def heldout_sets(tc, segment_len: int) -> list[tuple[tuple[int, float], P.PasskeyBatch]]:
    """Fixed held-out prompts whose needle lies in an earlier segment than the prompt's last token."""
    sets = []
    for i, length in enumerate(tc.heldout_lengths):
        for j, depth in enumerate(tc.heldout_depths):
            batch = P.make_batch(tc.heldout_prompts, length, depth, [10 ** 6 + tc.seed, i, j])
            last_seg = (length - 1) // segment_len
            if not np.all(batch.needle_end // segment_len < last_seg):
                raise ValueError(f"held-out cell length={length} depth={depth} has the needle in the question's "
                                 "segment")
            sets.append(((length, depth), batch))
    return sets


def hard_rows(batch: P.PasskeyBatch, segment_len: int) -> np.ndarray:
    """(B,) bool: rows whose needle ends in an earlier segment than the prompt's last token, so only the memory can
    carry the key to the answer (the others are solved by local attention)."""
    N = segment_len
    return (batch.needle_end - 1) // N < (batch.ids.shape[1] - 1) // N
