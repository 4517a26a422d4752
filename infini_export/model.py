"""The reference Infini-Transformer and its pure segment-step function.

Equation numbers follow Munkhdalai et al. 2024 (arXiv 2404.07143v2), see ``shared/paper.md``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import InfiniConfig
from .state import LayerMemory, StepSpec, layer_state_specs

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

    def forward(self, x: torch.Tensor, mem: LayerMemory, cos: torch.Tensor, sin: torch.Tensor,
                rot_t: torch.Tensor, mask: torch.Tensor, ones: torch.Tensor) -> tuple[torch.Tensor, LayerMemory]:
        B, T, _ = x.shape
        H, dh = self.n_heads, self.d_head
        q = self.wq(x).view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dk)
        k = self.wk(x).view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dk)
        v = self.wv(x).view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dv)

        # memory path: un-rotated q/k, in the state dtype (float32) whatever the weights are
        M, z = mem.memory, mem.norm  # (B, H, dk, dv), (B, H, dk)
        sd = M.dtype  # the state dtype (float32)
        sq, sk, vf = sigma(q.to(sd)), sigma(k.to(sd)), v.to(sd)
        z_col = z.unsqueeze(-1)  # (B, H, dk, 1)
        a_mem = (sq @ M) / (sq @ z_col + self.eps)  # eq 7: (B, H, T, dv)
        if self.delta:
            v_old = (sk @ M) / (sk @ z_col + self.eps)  # (B, H, T, dv): what memory already holds
            new_M = M + sk.transpose(-1, -2) @ (vf - v_old)  # eq 9: (B, H, dk, dv)
        else:
            new_M = M + sk.transpose(-1, -2) @ vf  # eq 8: (B, H, dk, dv)
        # sum over t as a linear layer with a constant ones row (XNNPACK takes it; a sum over an axis it
        # does not). The full buffer, not a slice, when T == N: a sliced weight is not a constant to it
        ones_t = (ones if ones.shape[1] == T else ones[:, :T]).to(sd)  # (1, T)
        sk_rows = sk.transpose(-1, -2).reshape(B * H * dh, T)  # (B*H*dk, T)
        z_inc = F.linear(sk_rows, ones_t)  # (B*H*dk, T) x (1, T)^T -> (B*H*dk, 1)
        new_z = z + z_inc.view(B, H, dh)  # eq 8: (B, H, dk)

        # local path: causal softmax attention inside the segment, RoPE here only
        qr, kr = rope(q, cos[:T], sin[:T], rot_t), rope(k, cos[:T], sin[:T], rot_t)  # (B, H, T, dk)
        scores = (qr @ kr.transpose(-1, -2)) * (1.0 / math.sqrt(dh)) + mask[:T, :T].to(q.dtype)  # (B, H, T, T)
        a_dot = torch.softmax(scores, dim=-1) @ v  # eq 6: (B, H, T, dv)

        g = torch.sigmoid(self.beta).view(1, H, 1, 1).to(x.dtype)  # (1, H, 1, 1)
        a = g * a_mem.to(x.dtype) + (1.0 - g) * a_dot  # eq 10: (B, H, T, dv)
        out = self.wo(a.transpose(1, 2).reshape(B, T, H * dh))  # eq 11: (B, T, D)
        return out, LayerMemory(new_M, new_z)


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
        x = x + h
        x = x + self.ffn(self.ffn_norm(x))
        return x, new_mem


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
        if not torch.compiler.is_compiling():
            self.check_step_inputs(input_ids, state)
        x = self.embed(input_ids)  # (B, T, D)
        new_state = []
        for block, mem in zip(self.blocks, state):
            x, new_mem = block(x, mem, *self.layer_constants())
            new_state.append(new_mem)
        logits = self.lm_head(self.norm(x))  # (B, T, V)
        return logits, tuple(new_state)

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

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"tensor of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of length {len(obj)}"
    return type(obj).__name__
