"""The full-attention baseline: a plain causal transformer of a preset's shape with a growing KV cache."""
from __future__ import annotations

import math
import time

from runtime.measure import peak_rss_mb


def build_baseline(cfg):
    """A plain causal decoder of the same width, depth, heads, FFN and vocabulary as ``cfg``."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Norm(nn.Module):
        def __init__(self, d, eps):
            super().__init__()
            self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            inner = cfg.n_heads * cfg.d_head
            self.n1, self.n2 = Norm(cfg.d_model, cfg.norm_eps), Norm(cfg.d_model, cfg.norm_eps)
            self.wqkv = nn.Linear(cfg.d_model, 3 * inner, bias=False)
            self.wo = nn.Linear(inner, cfg.d_model, bias=False)
            self.w13 = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)
            self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    class Baseline(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.layers = nn.ModuleList(Layer() for _ in range(cfg.n_layers))
            self.norm = Norm(cfg.d_model, cfg.norm_eps)
            half = cfg.d_head // 2
            self.register_buffer("inv_freq", cfg.rope_base ** (-torch.arange(half, dtype=torch.float32) / half))
            for p in self.parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, std=0.02)

        def rope(self, x, pos):  # x (B, H, T, dh), pos (T,)
            ang = pos[:, None].double() * self.inv_freq[None, :].double()
            cos, sin = ang.cos().float(), ang.sin().float()
            half = x.shape[-1] // 2
            x1, x2 = x[..., :half], x[..., half:]
            return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

        def forward(self, ids, cache, start):
            """One chunk ``ids`` (B, T) at absolute position ``start``; ``cache`` grows in place."""
            B, T = ids.shape
            H, dh = cfg.n_heads, cfg.d_head
            pos = torch.arange(start, start + T)
            x = self.embed(ids)
            end = start + T
            # query i (absolute start+i) sees keys 0..start+i: a bool mask (T, end), None for the first chunk
            mask = None
            if start > 0:
                mask = torch.arange(end)[None, :] <= (start + torch.arange(T))[:, None]
            for i, layer in enumerate(self.layers):
                h = layer.n1(x)
                q, k, v = layer.wqkv(h).view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)  # (B, H, T, dh) each
                q, k = self.rope(q, pos), self.rope(k, pos)
                K, V = cache.append(i, k, v, start)  # views (B, H, end, dh)
                if mask is None:
                    a = F.scaled_dot_product_attention(q, K, V, is_causal=True)
                else:
                    a = F.scaled_dot_product_attention(q, K, V, attn_mask=mask)
                x = x + layer.wo(a.transpose(1, 2).reshape(B, T, H * dh))
                g, u = layer.w13(layer.n2(x)).chunk(2, dim=-1)
                x = x + layer.w2(F.silu(g) * u)
            return self.norm(x)[:, -1] @ self.embed.weight.T  # last-token logits (B, V), like session.stream

    return Baseline().eval()


class KVCache:
    """Per-layer K and V buffers (B, H, capacity, dh), grown by 1.5x when full (amortised, like a vector)."""

    def __init__(self, cfg, batch, growth=1.5):
        self.cfg, self.batch, self.growth = cfg, batch, growth
        self.k = [None] * cfg.n_layers
        self.v = [None] * cfg.n_layers
        self.capacity = 0

    def append(self, layer, k, v, start):
        import torch

        end = start + k.shape[2]
        if self.k[layer] is None or end > self.k[layer].shape[2]:
            cap = max(end, int(math.ceil((self.k[layer].shape[2] if self.k[layer] is not None else 0) * self.growth)))
            shape = (self.batch, self.cfg.n_heads, cap, self.cfg.d_head)
            nk, nv = torch.empty(shape), torch.empty(shape)
            if self.k[layer] is not None:
                nk[:, :, :start].copy_(self.k[layer][:, :, :start])
                nv[:, :, :start].copy_(self.v[layer][:, :, :start])
            self.k[layer], self.v[layer] = nk, nv
            self.capacity = cap
        self.k[layer][:, :, start:end].copy_(k)
        self.v[layer][:, :, start:end].copy_(v)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def used_bytes(self, tokens):
        c = self.cfg
        return 2 * c.n_layers * self.batch * c.n_heads * c.d_head * tokens * 4

    def allocated_bytes(self):
        return sum(t.numel() * 4 for t in self.k + self.v if t is not None)


def run_baseline(args) -> dict:
    """Stream ``args.tokens`` random tokens through the baseline (fields of the ``baseline`` worker command)."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from infini_export.config import InfiniConfig

    cfg = InfiniConfig.from_name(args.preset, segment_len=args.segment_len)
    torch.manual_seed(0)
    model = build_baseline(cfg)
    cache = KVCache(cfg, args.batch)
    N, B = cfg.segment_len, args.batch
    kv_limit = args.max_kv_gb * 1e9
    rng = np.random.default_rng(0)
    done, stopped, last_chunk_s = 0, None, None
    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    with torch.inference_mode():
        while done < args.tokens:
            T = min(N, args.tokens - done)
            if cache.used_bytes(done + T) > kv_limit:
                stopped = f"memory: the KV cache would exceed --max-kv-gb {args.max_kv_gb}"
                break
            ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, (B, T), dtype=np.int64))
            c0 = time.perf_counter()
            model(ids, cache, done)
            last_chunk_s = time.perf_counter() - c0
            done += T
            if time.perf_counter() - t0 > args.budget and done < args.tokens:
                stopped = f"time: over the {args.budget:g} s budget"
                break
    seconds = time.perf_counter() - t0
    return {"tokens_requested": args.tokens, "tokens": done, "batch": B, "seconds": round(seconds, 3),
            "tokens_per_second": round(done * B / seconds, 1) if seconds > 0 else None,
            "us_per_token": round(1e6 * seconds / (done * B), 3) if done else None,
            "last_chunk_us_per_token": round(1e6 * last_chunk_s / (T * B), 3) if last_chunk_s else None,
            "stopped": stopped, "kv_cache_bytes": cache.used_bytes(done),
            "kv_cache_allocated_bytes": cache.allocated_bytes(), "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_after_imports_mb": round(rss_start, 1), "threads": args.threads,
            "parameters": sum(p.numel() for p in model.parameters())}
