"""The attention layer against a deliberately naive per-head, per-token reference of eqs 6-10."""
import math

import pytest
import torch

from infini_export import InfiniConfig, LayerMemory
from infini_export.model import InfiniAttention, rotate_half_matrix


def naive_sigma(x):
    return x + 1.0 if x > 0 else math.exp(x)


def naive_layer(attn, x, M, z, cfg):
    """x: (T, D) one batch row in float64; M: (H, dk, dv); z: (H, dk). Pure Python loops."""
    T = x.shape[0]
    H, dh = cfg.n_heads, cfg.d_head
    Wq, Wk, Wv, Wo = (getattr(attn, n).weight.double() for n in ("wq", "wk", "wv", "wo"))
    q = (x @ Wq.T).view(T, H, dh)
    k = (x @ Wk.T).view(T, H, dh)
    v = (x @ Wv.T).view(T, H, dh)
    half = dh // 2
    out_heads = torch.zeros(T, H, dh, dtype=torch.float64)
    new_M, new_z = M.clone(), z.clone()
    for h in range(H):
        def rot(vec, pos):
            r = torch.zeros(dh, dtype=torch.float64)
            for i in range(half):
                theta = pos * cfg.rope_base ** (-i / half)
                r[i] = vec[i] * math.cos(theta) - vec[i + half] * math.sin(theta)
                r[i + half] = vec[i] * math.sin(theta) + vec[i + half] * math.cos(theta)
            return r
        g = 1.0 / (1.0 + math.exp(-float(attn.beta[h])))
        for t in range(T):
            # eq 6: causal softmax attention inside the segment, RoPE on this path only
            qt = rot(q[t, h], t)
            scores = [float(qt @ rot(k[s, h], s)) / math.sqrt(dh) for s in range(t + 1)]
            mx = max(scores)
            w = [math.exp(sc - mx) for sc in scores]
            a_dot = sum(w[s] * v[s, h] for s in range(t + 1)) / sum(w)
            # eq 7: memory read from the state before this segment, un-rotated q
            sq = torch.tensor([naive_sigma(float(e)) for e in q[t, h]], dtype=torch.float64)
            num = torch.zeros(dh, dtype=torch.float64)
            for i in range(dh):
                for j in range(dh):
                    num[j] += sq[i] * M[h, i, j]
            den = sum(float(sq[i] * z[h, i]) for i in range(dh)) + cfg.memory_eps
            a_mem = num / den
            out_heads[t, h] = g * a_mem + (1 - g) * a_dot  # eq 10
        # eq 8 / 9: the write, per token of the segment, all against M_{s-1}
        for t in range(T):
            sk = torch.tensor([naive_sigma(float(e)) for e in k[t, h]], dtype=torch.float64)
            if cfg.update == "delta":
                den = sum(float(sk[i] * z[h, i]) for i in range(dh)) + cfg.memory_eps
                retrieved = torch.tensor([sum(float(sk[i] * M[h, i, j]) for i in range(dh)) / den
                                          for j in range(dh)], dtype=torch.float64)
                delta = v[t, h] - retrieved
            else:
                delta = v[t, h]
            for i in range(dh):
                for j in range(dh):
                    new_M[h, i, j] += sk[i] * delta[j]
                new_z[h, i] += sk[i]
    out = out_heads.reshape(T, H * dh) @ Wo.T  # eq 11
    return out, new_M, new_z


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_attention_matches_naive_reference(update):
    cfg = InfiniConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_head=8, d_ff=32, segment_len=6,
                       update=update)
    torch.manual_seed(1)
    attn = InfiniAttention(cfg).double().eval()
    with torch.no_grad():
        attn.beta.copy_(torch.tensor([-0.7, 1.3]))
    N, half = cfg.segment_len, cfg.d_head // 2
    inv = cfg.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)
    ang = torch.arange(N, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = ang.cos(), ang.sin()
    mask = torch.full((N, N), float("-inf"), dtype=torch.float64).triu(1)
    B = 2
    mem = LayerMemory(torch.zeros(B, 2, 8, 8, dtype=torch.float64), torch.zeros(B, 2, 8, dtype=torch.float64))
    ref = [(torch.zeros(2, 8, 8, dtype=torch.float64), torch.zeros(2, 8, dtype=torch.float64)) for _ in range(B)]
    worst = 0.0
    for seg in range(4):
        x = torch.randn(B, N, cfg.d_model, dtype=torch.float64)
        with torch.no_grad():
            out, mem = attn(x, mem, cos.repeat(1, 2), sin.repeat(1, 2), rotate_half_matrix(cfg.d_head).T.double(), mask,
                            torch.ones(1, N, dtype=torch.float64))
        for b in range(B):
            r_out, r_M, r_z = naive_layer(attn, x[b], ref[b][0], ref[b][1], cfg)
            ref[b] = (r_M, r_z)
            for got, want in ((out[b], r_out), (mem.memory[b], r_M), (mem.norm[b], r_z)):
                err = float((got - want).abs().max() / (1.0 + want.abs().max()))
                worst = max(worst, err)
                assert err < 1e-5, f"segment {seg} batch {b}: error {err}"
    print(f"{update}: worst relative error vs naive reference over 4 segments = {worst:.2e}")


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_float32_layer_matches_naive_reference(update):
    """The float32 path (what is exported) against the float64 naive reference."""
    cfg = InfiniConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_head=8, d_ff=32, segment_len=5,
                       update=update)
    torch.manual_seed(2)
    attn = InfiniAttention(cfg).eval()
    N, half = cfg.segment_len, cfg.d_head // 2
    inv = cfg.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)
    ang = torch.arange(N, dtype=torch.float64)[:, None] * inv[None]
    mask = torch.full((N, N), float("-inf")).triu(1)
    mem = LayerMemory(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8))
    rM, rz = torch.zeros(2, 8, 8, dtype=torch.float64), torch.zeros(2, 8, dtype=torch.float64)
    for seg in range(3):
        x = torch.randn(1, N, cfg.d_model)
        with torch.no_grad():
            out, mem = attn(x, mem, ang.cos().float().repeat(1, 2), ang.sin().float().repeat(1, 2),
                            rotate_half_matrix(cfg.d_head).T, mask, torch.ones(1, N))
        r_out, rM, rz = naive_layer(attn, x[0].double(), rM, rz, cfg)
        assert float((out[0].double() - r_out).abs().max()) < 1e-5
        assert float(((mem.memory[0].double() - rM).abs().max()) / rM.abs().max()) < 1e-5
        assert float(((mem.norm[0].double() - rz).abs().max()) / rz.abs().max()) < 1e-5
