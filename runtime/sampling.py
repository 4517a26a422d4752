"""Next-token sampling from logits: greedy, temperature, top-k, top-p (nucleus), seeded."""
from __future__ import annotations

import numpy as np


def sample(logits: np.ndarray, temperature: float, top_k, top_p, rng) -> np.ndarray:
    """Greedy when ``temperature`` is 0, else a draw from the filtered softmax (B,), one per row."""
    logits = logits.astype(np.float64)  # (B, V)
    if temperature == 0:
        return logits.argmax(-1)
    # shifted before scaling (the same softmax): the largest logit is 0, so a tiny temperature cannot overflow
    with np.errstate(over="ignore"):  # a logit below the largest over a tiny temperature: -inf, probability 0
        logits = (logits - logits.max(-1, keepdims=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]  # (B, 1)
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits)  # the largest is 0 (and survives top-k): no overflow
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)  # (B, V)
        sorted_p = np.take_along_axis(probs, order, -1)
        drop = np.cumsum(sorted_p, -1) - sorted_p > top_p  # keep the smallest prefix reaching top_p
        sorted_p[drop] = 0.0
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_p, -1)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=p) for p in probs], dtype=np.int64)
