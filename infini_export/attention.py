"""Local causal attention inside a segment (the paper's eq. 6): the segment form, and the decode form over a K/V
cache as one custom op."""
from __future__ import annotations

import math

import torch


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(dh) + causal) v`` over one segment's T tokens: q, k, v (B, H, T, dh) -> (B, H, T, dh).

    ``mask`` is the additive causal mask (N, N), N >= T. The ONNX exporter computes the same in blocks of query
    rows (``exporters/onnx_attention_blocks.py``)."""
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])) + mask[:T, :T].to(q.dtype)  # (B, H, T, T)
    return torch.softmax(scores, dim=-1) @ v


@torch.library.custom_op("infini::cache_attention", mutates_args=())
def cache_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_cache: torch.Tensor,
                    value_cache: torch.Tensor, last: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local causal attention of T tokens at positions p..p+T-1 of a segment over the cached rows 0..p-1 and
    themselves, as one op (the ONNX exporter maps it to onnxruntime's ``GroupQueryAttention``, which reads only the
    p + T valid rows and writes the new ones in place).

    q, k, v (B, T, H*dh), un-rotated (RoPE from the full-width ``cos``/``sin`` tables (N, dh) is applied here);
    caches (B, H, N, dh); last (B,) int32: p + T - 1, the last row written (the same for every batch row). Returns (out (B, T, H*dh), key cache, value cache): the caches with
    the rotated keys / values of the T tokens written at ``[:, :, p:p+T]``, every other row as given."""
    B, T, _ = q.shape
    H, N, dh = key_cache.shape[1], key_cache.shape[2], key_cache.shape[3]
    p = int(last[0]) - T + 1
    c, s = cos[p:p + T], sin[p:p + T]  # (T, dh)

    def heads(x, rotate):
        x = x.view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dh)
        return x * c + torch.cat([-x[..., dh // 2:], x[..., :dh // 2]], dim=-1) * s if rotate else x

    key, value = key_cache.clone(), value_cache.clone()
    key[:, :, p:p + T], value[:, :, p:p + T] = heads(k, True), heads(v, False)
    scores = heads(q, True) @ key[:, :, :p + T].transpose(-1, -2) * (1.0 / math.sqrt(dh))  # (B, H, T, p + T)
    causal = torch.full((T, p + T), float("-inf"), dtype=q.dtype, device=q.device).triu(p + 1)
    out = torch.softmax(scores + causal, dim=-1) @ value[:, :, :p + T]  # (B, H, T, dh)
    return out.transpose(1, 2).reshape(B, T, H * dh), key, value


@cache_attention.register_fake
def _(q, k, v, key_cache, value_cache, last, cos, sin):
    return torch.empty_like(q), torch.empty_like(key_cache), torch.empty_like(value_cache)


@torch.library.custom_op("infini::packed_cache_attention", mutates_args=())
def packed_cache_attention(qkv: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, last: torch.Tensor,
                           cos: torch.Tensor, sin: torch.Tensor, scale: float,
                           interleaved: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local causal attention of T tokens at positions p..p+T-1 of a segment over the cached rows 0..p-1 and
    themselves, as one op (the ONNX exporter maps it to onnxruntime's ``GroupQueryAttention`` with packed q/k/v,
    which reads only the p + T valid rows and writes the new ones in place).

    qkv (B, T, 3*H*dh), laid out ``(qkv h d)``, un-rotated; caches (B, H, N, dh); last (B,) int32: p + T - 1;
    cos/sin (N, dh/2): one column per rotated pair, pairs adjacent (``interleaved``, features 2i and 2i+1) or the
    two halves (i and i + dh/2). ``scale`` multiplies the scores. Returns (out (B, T, H*dh), key cache, value
    cache): the caches with the rotated keys / the values of the T tokens written at ``[:, :, p:p+T]``."""
    B, T, _ = qkv.shape
    H, dh = key_cache.shape[1], key_cache.shape[3]
    p = int(last[0]) - T + 1
    heads = qkv.view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)  # (3, B, H, T, dh)
    q, k, v = heads[0], heads[1], heads[2]
    c, s = cos[p:p + T], sin[p:p + T]  # (T, dh/2)

    def rotate(x):
        if interleaved:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).reshape(x.shape)
        x1, x2 = x[..., :dh // 2], x[..., dh // 2:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    key, value = key_cache.clone(), value_cache.clone()
    key[:, :, p:p + T], value[:, :, p:p + T] = rotate(k), v
    scores = rotate(q) @ key[:, :, :p + T].transpose(-1, -2) * scale  # (B, H, T, p + T)
    causal = torch.full((T, p + T), float("-inf"), dtype=qkv.dtype, device=qkv.device).triu(p + 1)
    out = torch.softmax(scores + causal, dim=-1) @ value[:, :, :p + T]  # (B, H, T, dh)
    return out.transpose(1, 2).reshape(B, T, H * dh), key, value


@packed_cache_attention.register_fake
def _(qkv, key_cache, value_cache, last, cos, sin, scale, interleaved):
    B, T, _ = qkv.shape
    return qkv.new_empty(B, T, key_cache.shape[1] * key_cache.shape[3]), torch.empty_like(key_cache), \
        torch.empty_like(value_cache)
