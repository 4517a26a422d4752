"""Model FLOPs per token: what the exported step graph computes."""
from __future__ import annotations


def flops_per_token(cfg, last_only: bool = False, attention_rows: int = 0) -> dict:
    """Multiply-adds x 2 of what the exported graph computes per token (matmuls; elementwise not counted).

    Local attention is counted over the full N x N score matrix (the graph computes every score and masks
    half), the memory read is sigma(q) M and sigma(q) z, the delta rule adds sigma(k) M and sigma(k) z, and
    the write is sigma(k)^T (v - v_old), all per head. Embedding lookup: 0.

    ``attention_rows`` > 0: the local attention in query blocks of that many rows, each against the keys up to its
    own last row (what the blocked graph computes); ``last_only``: the LM head on one token per segment.
    """
    d, L, H, dh, ff, N, V = cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_ff, cfg.segment_len, cfg.vocab_size
    inner = H * dh
    per_layer = {
        "qkvo_projections": 2 * d * inner * 4,
        "swiglu_ffn": 2 * 3 * d * ff,
        "local_attention": 2 * 2 * _scores_per_segment(N, attention_rows) / N * dh * H,
        "memory_read": H * (2 * dh * dh + 2 * dh),
        "memory_update": H * ((2 * dh * dh + 2 * dh) if cfg.update == "delta" else 0) + H * 2 * dh * dh,
    }
    breakdown = {k: v * L for k, v in per_layer.items()}
    breakdown["lm_head"] = 2 * d * V / (N if last_only else 1)
    total = sum(breakdown.values())
    # elementwise work (norms, RoPE, softmax exp/sum, sigma, gates), not in the MFU count, for scale
    elementwise = L * (H * N * 5 + inner * 14 + d * 8 + ff * 4)
    return {"total": total, "breakdown": breakdown, "elementwise_not_counted": elementwise}


def _scores_per_segment(N: int, rows: int) -> int:
    """Attention scores one segment computes: N x N in one block, else each block of ``rows`` queries against the
    keys up to its last row."""
    if rows <= 0 or rows >= N:
        return N * N
    return sum(min(rows, N - i0) * min(i0 + rows, N) for i0 in range(0, N, rows))
