"""The reference Infini-Transformer and its pure segment-step function.

Equation numbers follow Munkhdalai et al. 2024 (arXiv 2404.07143v2), summarised in ``docs/paper.md``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import cache_attention, causal_attention
from .config import InfiniConfig
from .state import (DecodeSpec, LayerCache, LayerDecodeState, LayerMemory, StepSpec, check_form, layer_decode_specs,
                    layer_state_specs)

STATE_DTYPE = torch.float32


def sigma(x: torch.Tensor) -> torch.Tensor:
    """ELU(x) + 1, written as ``clamp(x, 0) + exp(clamp(x, max=0))``: exact, and XNNPACK-friendly."""
    return torch.clamp(x, min=0.0) + torch.exp(torch.clamp(x, max=0.0))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        # mean over the last axis as a linear map with a constant 1/dim row: the XNNPACK delegate takes a
        # linear but not a mean over the channel axis, which would cut the graph into partitions
        self.register_buffer("mean_row", torch.full((1, dim), 1.0 / dim), persistent=False)  # (1, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        ms = F.linear(xf * xf, self.mean_row.float())  # (..., D) x (1, D)^T -> (..., 1): mean of squares
        xf = xf * torch.rsqrt(ms + self.eps)
        return xf.to(x.dtype) * self.weight


def rotate_half_matrix(dh: int) -> torch.Tensor:
    """(dh, dh) signed permutation R with ``x @ R == cat([-x2, x1])`` for ``x = cat([x1, x2])``.

    The model stores ``R.T`` and applies it as ``F.linear(x, R.T)`` (a linear layer delegates without
    the broadcast copies a batched matmul against a 2-D matrix brings)."""
    half = dh // 2
    r = torch.zeros(dh, dh)
    idx = torch.arange(half)
    r[idx + half, idx] = -1.0  # output j < half takes -x[j + half]
    r[idx, idx + half] = 1.0  # output j >= half takes x[j - half]
    return r


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot_t: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of ``x`` (B, H, T, dh) by position.

    cos/sin are full width (T, dh): ``cat([c, c])``; ``rot_t`` is ``rotate_half_matrix(dh).T``. Same as
    ``cat([x1 c - x2 s, x1 s + x2 c])``, written without slices (which the XNNPACK delegate leaves out).
    """
    return x * cos + F.linear(x, rot_t) * sin  # x @ R: (B, H, T, dh)


class InfiniAttention(nn.Module):
    """Multi-head Infini-attention: local causal softmax attention + compressive memory."""

    def __init__(self, cfg: InfiniConfig):
        super().__init__()
        self.n_heads, self.d_head, self.eps = cfg.n_heads, cfg.d_head, cfg.memory_eps
        self.delta = cfg.update == "delta"
        inner = cfg.n_heads * cfg.d_head
        self.wq = nn.Linear(cfg.d_model, inner, bias=False)
        self.wk = nn.Linear(cfg.d_model, inner, bias=False)
        self.wv = nn.Linear(cfg.d_model, inner, bias=False)
        self.wo = nn.Linear(inner, cfg.d_model, bias=False)
        # beta: one gate per head; 0 gives sigmoid(beta) = 0.5, far from saturation
        self.beta = nn.Parameter(torch.zeros(cfg.n_heads))

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._heads(self.wq(x)), self._heads(self.wk(x)), self._heads(self.wv(x))  # (B, H, T, dh) each

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, T, H*dh) -> (B, H, T, dh)

    def _memory(self, q, k, v, M, z, ones):
        """Read of the memory left by earlier segments, and this chunk's write to it (not yet added).

        Un-rotated q/k, in the state dtype (float32) whatever the weights are. ``ones`` (1, N) sums over t
        as a linear layer (XNNPACK takes it; a sum over an axis it does not); ``None`` sums directly.
        """
        B, H, T, dh = q.shape
        sd = M.dtype  # the state dtype (float32)
        sq, sk, vf = sigma(q.to(sd)), sigma(k.to(sd)), v.to(sd)
        z_col = z.unsqueeze(-1)  # (B, H, dk, 1)
        a_mem = (sq @ M) / (sq @ z_col + self.eps)  # eq 7: (B, H, T, dv)
        if self.delta:
            v_old = (sk @ M) / (sk @ z_col + self.eps)  # (B, H, T, dv): what memory already holds
            dM = sk.transpose(-1, -2) @ (vf - v_old)  # eq 9: (B, H, dk, dv)
        else:
            dM = sk.transpose(-1, -2) @ vf  # eq 8: (B, H, dk, dv)
        if ones is None:
            dz = sk.sum(dim=2)  # eq 8: (B, H, dk)
        else:  # the full buffer, not a slice, when T == N: a sliced weight is not a constant to XNNPACK
            ones_t = (ones if ones.shape[1] == T else ones[:, :T]).to(sd)  # (1, T)
            dz = F.linear(sk.transpose(-1, -2).reshape(B * H * dh, T), ones_t).view(B, H, dh)  # eq 8
        return a_mem, dM, dz

    def _mix(self, a_mem: torch.Tensor, a_dot: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        B, H, T, dh = a_dot.shape
        g = torch.sigmoid(self.beta).view(1, H, 1, 1).to(dtype)  # (1, H, 1, 1)
        a = g * a_mem.to(dtype) + (1.0 - g) * a_dot  # eq 10: (B, H, T, dv)
        return self.wo(a.transpose(1, 2).reshape(B, T, H * dh))  # eq 11: (B, T, D)

    def forward(self, x: torch.Tensor, mem: LayerMemory, cos: torch.Tensor, sin: torch.Tensor,
                rot_t: torch.Tensor, mask: torch.Tensor, ones: torch.Tensor) -> tuple[torch.Tensor, LayerMemory]:
        """One segment (or its first T tokens) from the memory of the segments before it."""
        T = x.shape[1]
        q, k, v = self._project(x)
        a_mem, dM, dz = self._memory(q, k, v, mem.memory, mem.norm, ones)
        # local path: causal softmax attention inside the segment, RoPE here only
        qr, kr = rope(q, cos[:T], sin[:T], rot_t), rope(k, cos[:T], sin[:T], rot_t)  # (B, H, T, dk)
        a_dot = causal_attention(qr, kr, v, mask)  # eq 6: (B, H, T, dv)
        return self._mix(a_mem, a_dot, x.dtype), LayerMemory(mem.memory + dM, mem.norm + dz)  # eq 8 / eq 9

    def decode(self, x: torch.Tensor, position: torch.Tensor, st: LayerDecodeState, cache: LayerCache,
               cos: torch.Tensor, sin: torch.Tensor, rot_t: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor,
               last: torch.Tensor | None = None):
        """T tokens at positions p..p+T-1 of the current segment, p = ``position`` (1,): the same numbers as
        those positions of ``forward`` on the whole segment. Returns (out, new state, the T new cache rows), or
        given ``last`` ((B,) int32 p + T - 1: the local attention as one ``cache_attention`` op) the whole caches
        with those rows in."""
        T, N = x.shape[1], cos.shape[0]
        lin = self.wq(x), self.wk(x), self.wv(x)  # (B, T, H*dh)
        q, k, v = (self._heads(t) for t in lin)  # (B, H, T, dh)
        a_mem, dM, dz = self._memory(q, k, v, st.memory, st.norm, None)  # every token reads M_{s-1}
        pend_M, pend_z = st.pending_memory + dM, st.pending_norm + dz  # the segment's write so far
        # at the segment's end fold the write in (eq 8 / eq 9) and start the next one empty: arithmetic, no branch
        fold = (position + T == N).to(pend_M.dtype)  # (1,): 1.0 on the segment's last chunk
        new = LayerDecodeState(st.memory + fold * pend_M, st.norm + fold * pend_z,
                               pend_M - fold * pend_M, pend_z - fold * pend_z)
        if last is not None:
            out, key, value = cache_attention(*lin, cache.key, cache.value, last, cos, sin)  # (B, T, H*dh)
            return self._mix(a_mem, self._heads(out), x.dtype), new, LayerCache(key, value)
        # local path: the cached rows 0..p-1 of this segment, then the chunk itself, causally
        pos = position + torch.arange(T, device=x.device)  # (T,)
        cos_p, sin_p = cos.index_select(0, pos), sin.index_select(0, pos)  # (T, dh)
        qr, kr = rope(q, cos_p, sin_p, rot_t), rope(k, cos_p, sin_p, rot_t)  # (B, H, T, dk)
        scale = 1.0 / math.sqrt(self.d_head)
        visible = torch.where(slots < position, 0.0, float("-inf")).to(q.dtype)  # (N,): slots before p
        s_cache = (qr @ cache.key.transpose(-1, -2)) * scale + visible  # (B, H, T, N)
        s_self = (qr @ kr.transpose(-1, -2)) * scale + mask[:T, :T].to(q.dtype)  # (B, H, T, T)
        p = torch.softmax(torch.cat([s_cache, s_self], dim=-1), dim=-1)  # (B, H, T, N + T)
        a_dot = p[..., :N] @ cache.value + p[..., N:] @ v  # eq 6: (B, H, T, dv)
        return self._mix(a_mem, a_dot, x.dtype), new, LayerCache(kr, v)


class SwiGLU(nn.Module):
    def __init__(self, cfg: InfiniConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: InfiniConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = InfiniAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x, mem, cos, sin, rot_t, mask, ones):
        h, new_mem = self.attn(self.attn_norm(x), mem, cos, sin, rot_t, mask, ones)
        return self._ffn(x + h), new_mem

    def decode(self, x, position, st, cache, cos, sin, rot_t, mask, slots, last=None):
        h, new_st, rows = self.attn.decode(self.attn_norm(x), position, st, cache, cos, sin, rot_t, mask, slots, last)
        return self._ffn(x + h), new_st, rows

    def _ffn(self, x):
        return x + self.ffn(self.ffn_norm(x))


class InfiniTransformer(nn.Module):
    """Decoder-only LM of Infini-attention blocks, driven one segment at a time by ``step``."""

    def __init__(self, cfg: InfiniConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        N, half = cfg.segment_len, cfg.d_head // 2
        inv_freq = cfg.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)  # (dh/2,)
        angles = torch.arange(N, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (N, dh/2)
        self.register_buffer("rope_cos", angles.cos().float().repeat(1, 2), persistent=False)  # (N, dh)
        self.register_buffer("rope_sin", angles.sin().float().repeat(1, 2), persistent=False)  # (N, dh)
        self.register_buffer("rope_rot_t", rotate_half_matrix(cfg.d_head).T.contiguous(), persistent=False)  # (dh, dh)
        self.register_buffer("seg_ones", torch.ones(1, N), persistent=False)  # (1, N): sums over t as linears
        # constant additive causal mask: delegates well (no arange/where in the graph)
        causal = torch.full((N, N), float("-inf")).triu(1)  # (N, N)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.register_buffer("cache_slots", torch.arange(N), persistent=False)  # (N,): decode's visible slots
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("beta"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                scale = std / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else std
                nn.init.normal_(p, mean=0.0, std=scale)

    # ---- the step protocol ---------------------------------------------------------------------
    def step_spec(self) -> StepSpec:
        cfg = self.cfg
        return StepSpec(cfg.vocab_size, cfg.segment_len, layer_state_specs(cfg.n_layers, cfg.n_heads, cfg.d_head),
                        extra={"model": "InfiniTransformer", "config": cfg.to_dict()})

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple[LayerMemory, ...]:
        """Zero memory for every layer: ``memory`` (B, H, dk, dv) and ``norm`` (B, H, dk), float32."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        cfg = self.cfg
        device = device if device is not None else self.embed.weight.device
        return tuple(
            LayerMemory(torch.zeros(batch_size, cfg.n_heads, cfg.d_head, cfg.d_head, dtype=STATE_DTYPE, device=device),
                        torch.zeros(batch_size, cfg.n_heads, cfg.d_head, dtype=STATE_DTYPE, device=device))
            for _ in range(cfg.n_layers))

    def layer_constants(self) -> tuple[torch.Tensor, ...]:
        """What every block (and ``InfiniAttention``) takes after ``mem``: cos, sin, rot_t, mask, ones."""
        return self.rope_cos, self.rope_sin, self.rope_rot_t, self.causal_mask, self.seg_ones

    def step(self, input_ids: torch.Tensor, state: tuple[LayerMemory, ...]):
        """Run one segment: ``(input_ids (B, T) int64, state) -> (logits (B, T, V), new_state)``.

        Pure: parameters, buffers and the input state are never modified. ``1 <= T <= segment_len``.
        For ``T < segment_len`` the logits are exactly those of the first T positions of a full
        segment (attention is causal), and ``new_state`` is the memory after writing those T tokens,
        i.e. the state as if the segment ended there. A caller that will later complete the segment
        must keep the *input* state and re-run the whole segment (the runtime does).
        """
        x, new_state = self._trunk(input_ids, state)
        return self.lm_head(self.norm(x)), new_state  # (B, T, V)

    def step_last(self, input_ids: torch.Tensor, state: tuple[LayerMemory, ...]):
        """``step`` returning only the last token's logits ``(B, 1, V)``: the LM head is applied to one row.

        Same new state as ``step``; what prefill needs (the next token after a prompt) at a fraction of the
        head's cost and without the ``(B, T, V)`` buffer."""
        x, new_state = self._trunk(input_ids, state)
        return self.lm_head(self.norm(x[:, -1:])), new_state  # (B, 1, V)

    def _trunk(self, input_ids: torch.Tensor, state: tuple[LayerMemory, ...]):
        """Embedding and every block: the hidden states (B, T, D) before the final norm, and the new state."""
        if not torch.compiler.is_compiling():
            self.check_step_inputs(input_ids, state)
        x = self.embed(input_ids)  # (B, T, D)
        new_state = []
        for block, mem in zip(self.blocks, state):
            x, new_mem = block(x, mem, *self.layer_constants())
            new_state.append(new_mem)
        return x, tuple(new_state)

    # ---- the decode protocol: token-level generation inside a segment ---------------------------
    def decode_forms(self) -> tuple[str, ...]:
        """The decode forms this model can take: ``"rows"`` always; ``"fused"`` with float32 weights."""
        return ("rows", "fused") if self.embed.weight.dtype == torch.float32 else ("rows",)

    def decode_spec(self, form: str = "rows") -> DecodeSpec:
        """The decode program's I/O. ``form="fused"``: each layer's local attention is one
        ``infini::cache_attention`` op and the cache outputs are the whole caches with the new rows written in
        (``cache_output == "whole"``), which the ONNX exporter maps to onnxruntime's ``GroupQueryAttention`` that
        updates a cache in place; ``"rows"``: the chunk's rows. Everything else is the same program."""
        check_form(form, self.decode_forms())
        cfg = self.cfg
        cache_dtype = str(self.embed.weight.dtype).replace("torch.", "")
        state, cache = layer_decode_specs(cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.segment_len, cache_dtype)
        return DecodeSpec(cfg.segment_len, state, cache, "whole" if form == "fused" else "rows")

    def init_decode_state(self, batch_size: int, device=None) -> tuple[tuple[LayerDecodeState, ...], tuple[LayerCache, ...]]:
        """The decode state at the start of a segment (zero pending write) and an empty cache."""
        return self.decode_state_from(self.init_state(batch_size, device))

    def decode_state_from(self, state: tuple[LayerMemory, ...]):
        """The decode state at position 0 that continues from a segment state: (state, cache)."""
        cfg, dtype = self.cfg, self.embed.weight.dtype
        dec, cache = [], []
        for mem in state:
            B = mem.memory.shape[0]
            dec.append(LayerDecodeState(mem.memory, mem.norm, torch.zeros_like(mem.memory), torch.zeros_like(mem.norm)))
            kv = torch.zeros(B, cfg.n_heads, cfg.segment_len, cfg.d_head, dtype=dtype, device=mem.memory.device)
            cache.append(LayerCache(kv, kv.clone()))
        return tuple(dec), tuple(cache)

    def decode(self, input_ids: torch.Tensor, position: torch.Tensor, state: tuple[LayerDecodeState, ...],
               cache: tuple[LayerCache, ...], form: str = "rows"):
        """Tokens p..p+T-1 of the current segment: ``(input_ids (B, T), position (1,) int64, state, cache) ->
        (logits (B, T, V), new_state, cache_rows)`` with ``T <= segment_len - p``.

        Pure. The caller writes ``cache_rows[i]`` (B, H, T, dh) into ``cache[i]`` at ``[:, :, p:p+T]`` and
        moves to ``p + T``, or to 0 when that is ``segment_len``: the returned state has then folded the
        segment's write into memory, equal (to rounding) to what ``step`` returns for the whole segment.
        ``form``: as in ``decode_spec`` (``"fused"`` returns the whole caches instead of the rows).
        """
        if not torch.compiler.is_compiling():
            self.check_decode_inputs(input_ids, position, state, cache)
        x = self.embed(input_ids)  # (B, T, D)
        new_state, rows = [], []
        consts = (self.rope_cos, self.rope_sin, self.rope_rot_t, self.causal_mask, self.cache_slots)
        B, T = input_ids.shape  # the fused form's last valid row, once for every layer
        last = (position + (T - 1)).to(torch.int32).expand(B) if form == "fused" else None
        for block, st, c in zip(self.blocks, state, cache):
            x, st, r = block.decode(x, position, st, c, *consts, last)
            new_state.append(st)
            rows.append(r)
        return self.lm_head(self.norm(x)), tuple(new_state), tuple(rows)

    def forward(self, input_ids: torch.Tensor, state: tuple[LayerMemory, ...] | None = None):
        """Any length: cuts ``input_ids`` (B, T) into segments and chains ``step`` (differentiable)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, time) tensor, got {_describe(input_ids)}")
        if state is None:
            state = self.init_state(input_ids.shape[0])
        N = self.cfg.segment_len
        outs = []
        for start in range(0, input_ids.shape[1], N):
            logits, state = self.step(input_ids[:, start:start + N], state)
            outs.append(logits)
        if not outs:
            raise ValueError("input_ids has 0 tokens; expected at least 1")
        return torch.cat(outs, dim=1), state

    # ---- input checks (eager only) -------------------------------------------------------------
    def check_step_inputs(self, input_ids, state) -> None:
        cfg = self.cfg
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(f"input_ids must be a torch.Tensor of int64, got {type(input_ids).__name__}")
        if input_ids.dtype != torch.int64:
            raise ValueError(f"input_ids must have dtype torch.int64, got {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have rank 2 (batch, time), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if not 1 <= T <= cfg.segment_len:
            raise ValueError(f"input_ids has {T} tokens; a step takes 1 to segment_len={cfg.segment_len}")
        if B < 1:
            raise ValueError("input_ids has batch size 0; expected at least 1")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"input_ids must lie in [0, {cfg.vocab_size}), got values in [{lo}, {hi}]")
        if not isinstance(state, (tuple, list)) or len(state) != cfg.n_layers:
            raise ValueError(f"state must be a tuple of {cfg.n_layers} LayerMemory (one per layer), "
                             f"got {_describe(state)}")
        for i, mem in enumerate(state):
            if not isinstance(mem, (tuple, list)) or len(mem) != 2:
                raise ValueError(f"state[{i}] must be LayerMemory(memory, norm), got {_describe(mem)}")
            expect = {"memory": (B, cfg.n_heads, cfg.d_head, cfg.d_head), "norm": (B, cfg.n_heads, cfg.d_head)}
            for field_name, tensor in zip(("memory", "norm"), mem):
                if not isinstance(tensor, torch.Tensor):
                    raise ValueError(f"state[{i}].{field_name} must be a tensor, got {type(tensor).__name__}")
                if tuple(tensor.shape) != expect[field_name]:
                    raise ValueError(f"state[{i}].{field_name} has shape {tuple(tensor.shape)}, "
                                     f"expected {expect[field_name]} for batch {B}")
                if tensor.dtype != STATE_DTYPE:
                    raise ValueError(f"state[{i}].{field_name} has dtype {tensor.dtype}, expected torch.float32 "
                                     "(the state stays float32: z grows with every token)")

    def check_decode_inputs(self, input_ids, position, state, cache) -> None:
        cfg = self.cfg
        if not isinstance(position, torch.Tensor) or position.dtype != torch.int64 or tuple(position.shape) != (1,):
            raise ValueError(f"position must be an int64 tensor of shape (1,), got {_describe(position)}")
        p = int(position[0])
        T = input_ids.shape[-1] if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 else 0
        if not 0 <= p < cfg.segment_len or not 1 <= T <= cfg.segment_len - p:
            raise ValueError(f"decode at position {p} with {T} tokens: expected 0 <= position < "
                             f"segment_len={cfg.segment_len} and 1 <= tokens <= segment_len - position")
        self.check_step_inputs(input_ids, [LayerMemory(st.memory, st.norm) for st in state])
        if not isinstance(cache, (tuple, list)) or len(cache) != cfg.n_layers:
            raise ValueError(f"cache must be a tuple of {cfg.n_layers} LayerCache (one per layer), got {_describe(cache)}")
        B = input_ids.shape[0]
        for i, (st, c) in enumerate(zip(state, cache)):
            want = {"pending_memory": ((B, cfg.n_heads, cfg.d_head, cfg.d_head), STATE_DTYPE),
                    "pending_norm": ((B, cfg.n_heads, cfg.d_head), STATE_DTYPE),
                    "key": ((B, cfg.n_heads, cfg.segment_len, cfg.d_head), self.embed.weight.dtype),
                    "value": ((B, cfg.n_heads, cfg.segment_len, cfg.d_head), self.embed.weight.dtype)}
            for name, tensor in (("pending_memory", st.pending_memory), ("pending_norm", st.pending_norm),
                                 ("key", c.key), ("value", c.value)):
                shape, dtype = want[name]
                if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape or tensor.dtype != dtype:
                    raise ValueError(f"decode state[{i}].{name} is {_describe(tensor)}, expected {shape} {dtype}")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"tensor of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of length {len(obj)}"
    return type(obj).__name__
