"""Step adapter for ``infini_transformer_pytorch.InfiniTransformer`` (lucidrains, 0.2.1).

``LucidrainsStep(their_model, segment_len)`` keeps the project's step protocol and reproduces
their ``InfiniTransformer.forward(segment, past_memories=..., return_new_memories=True)`` as driven
segment by segment by their ``InfiniTransformerWrapper``, weight for weight: their module is held
as the submodule ``model`` and its submodules and parameters are called as they are.

What their code does (read from ``infini_transformer.py`` and ``rotary_embedding_torch``), and what
the adapter therefore computes per layer on a segment of T tokens, x (B, T, D):

- ``x = RMSNorm(x)`` = ``F.normalize(x, dim=-1) * sqrt(D) * gamma`` (their own RMSNorm);
- ``q, k, v`` from one bias-free ``to_qkv`` projection, laid out ``(qkv h d)``;
- local attention: ``q`` is scaled by ``dim_head ** -0.5`` *before* rotary; rotary
  (``RotaryEmbedding(dim_head)``, theta 10000, interleaved pairs, positions 0..T-1 restarting in
  every segment) on scaled q and on k; causal mask filled with ``-finfo.max``; softmax; dropout;
- memory read with the *un-rotated, un-scaled* q: ``sigma(q) M / clamp(sigma(q) z, min=1e-10)``,
  ``sigma = elu + 1``; gate ``g = sigmoid(head_gates)`` (init 10) weights the LOCAL output:
  ``out = g * A_dot + (1 - g) * A_mem`` (the paper's convention inverted);
- on the first segment there is no memory at all: the read and the gate are skipped, ``out = A_dot``
  (not the same as zero memory, which gives ``g * A_dot``);
- memory write with the un-rotated k and v: ``M += sigma(k)^T dv``, ``z += sum_t sigma(k_t)``;
  ``dv = v`` (linear), or with ``use_mem_delta_rule`` and a past memory
  ``dv = v - sigma(k) M / clamp(sigma(k) z, min=1e-10)``; with ``learned_delta_update`` a per-token,
  per-head ``w = sigmoid(Linear(x_normed))`` turns ``v`` into ``v.lerp(delta_v, w)`` (delta rule with
  memory) or ``v * (1 - w)`` (otherwise, including the first segment of the delta rule);
- ``x = x + to_out(heads)``, ``x = x + FF(x)`` with ``FF = proj_out(gelu(gate) * value)``,
  ``value, gate = proj_in(RMSNorm(x)).chunk(2)``, hidden ``int(ff_mult * D * 2 / 3)``;
- ``logits = to_logits(RMSNorm(x))`` (with bias, no weight tying).

The "no memory yet" case is carried in the state as ``has_memory`` (B, 1) float32: 0 from
``init_state``, 1 after any step (computed as ``max(has_memory, 1)``: the same for 0 and 1, and it
keeps the output connected to the input for the validator's state-wiring check). ``step`` selects
with ``torch.where`` (no Python branch), so one traced graph serves the first and every later
segment, and rows of a batch can be at different stages. With ``has_memory`` <= 0.5 the incoming
``memory.i``/``norm.i`` are ignored (as their ``past_memories=None``).

Patched around for ``torch.export`` (their modules are not modified): their rotary embedding is
not called (its forward writes a cache buffer and a Python attribute, a side effect, and is wrapped
in an autocast context that appears in the graph); the adapter computes the same rotation from
their ``rotary_emb.freqs`` parameter, one cos/sin table per layer shared by q and k. ``chunk``/``unbind``
on activations (their feed-forward, head split and ``rotate_half``) are replaced by slicing/indexing,
their einops ``einsum`` contractions by the same contractions written as ``matmul`` (both reach
``bmm``; fewer permute/view nodes in the exported graph: 484 -> 378 aten ops for a depth-2 model), and
the ``None``-memory branch by the flag above. Every replacement computes the same values; on float32
CPU eager results match theirs bit for bit (max |difference| 0.0 over 21 segments in every
configuration of tests/test_adapter_lucidrains.py, random and trained; the tests allow 1e-5).

The decode program (``decode``, a chunk of tokens inside a segment) keeps the segment's rotated keys and values in a
cache. Eager, and wherever the fused form does not apply, each layer attends over all N cache slots with a mask
and returns the chunk's rows. For the ONNX export (``decode_spec("fused")``: float32 weights, ``dim_head`` a multiple
of 16) each layer's local attention is one ``infini::packed_cache_attention`` op on their packed ``to_qkv`` output,
which becomes onnxruntime's ``GroupQueryAttention``: their interleaved rotary inside (``rotary_interleaved=1``, cos
and sin tables precomputed per layer from their frequencies), only the p + T valid rows read, the new rows written
into the cache in place. The memory read, gate, write and feed-forward are the same code in both forms.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import packed_cache_attention
from ..state import (DecodeSpec, LayerCache, LayerDecodeState, LayerMemory, StateTensorSpec, StepSpec,
                     check_form, layer_decode_specs, layer_state_specs)

STATE_DTYPE = torch.float32
HAS_MEMORY = "has_memory"
MEMORY_EPS = 1e-10  # their retrieve_from_kv_memories default: denominator clamped, not offset
FUSED_HEAD_MULTIPLE = 16  # GroupQueryAttention's rotary: cos/sin tables of dim_head / 2 columns, a multiple of 8


def _their_package():
    try:
        import infini_transformer_pytorch
    except ImportError as exc:  # pragma: no cover - the package is a hard requirement of this adapter
        raise ImportError("the lucidrains adapter needs `pip install infini-transformer-pytorch`") from exc
    return infini_transformer_pytorch


def _their_version() -> str:
    try:
        from importlib.metadata import version
        return version("infini-transformer-pytorch")
    except Exception:  # pragma: no cover
        return "unknown"


class LucidrainsStep(nn.Module):
    """Pure segment step over a lucidrains ``InfiniTransformer``; their module is ``self.model``.

    State (nested as ``(LayerMemory(memory.0, norm.0), ..., has_memory)``, flattened in that order):
    ``memory.{i}`` (B, H, dim_head, dim_head), ``norm.{i}`` (B, H, dim_head) per layer, then
    ``has_memory`` (B, 1); all float32.
    """

    def __init__(self, their_model: nn.Module, segment_len: int):
        super().__init__()
        pkg = _their_package()
        if not isinstance(their_model, pkg.InfiniTransformer):
            raise TypeError(f"expected an infini_transformer_pytorch.InfiniTransformer, got {type(their_model).__name__}")
        if not isinstance(segment_len, int) or isinstance(segment_len, bool) or segment_len < 1:
            raise ValueError(f"segment_len must be an integer >= 1, got {segment_len!r}")
        self.model = their_model
        self.segment_len = segment_len

        first_attn = their_model.layers[0][0]
        self.vocab_size = their_model.token_emb.num_embeddings
        self.dim = their_model.token_emb.embedding_dim
        self.depth = len(their_model.layers)
        self.heads = first_attn.fastweight_mem.head_gates.numel()
        self.dim_head = first_attn.to_qkv.out_features // (3 * self.heads)
        self.use_mem_delta_rule = bool(first_attn.fastweight_mem.use_mem_delta_rule)
        self.learned_delta_update = first_attn.to_learned_delta_update_weights is not None
        for i, (attn, _ff) in enumerate(their_model.layers):
            rot = attn.rotary_emb
            if rot.use_xpos or rot.seq_before_head_dim or rot.freqs_for == "pixel":
                raise ValueError(f"layer {i}: rotary embedding options (xpos / seq_before_head_dim / pixel) "
                                 "that InfiniTransformer 0.2.1 never sets; not supported")
            if 2 * rot.freqs.numel() != self.dim_head:
                # odd dim_head: their RotaryEmbedding(dim_head) caches (T, dim_head - 1) frequencies into a
                # (8192, dim_head) buffer and raises on the first forward, so there is nothing to reproduce
                raise ValueError(f"layer {i}: dim_head={self.dim_head} with {rot.freqs.numel()} rotary frequencies; "
                                 "infini_transformer_pytorch only runs with an even dim_head")
        # their causal mask, a constant: ones((T, T)).triu(1), True = masked
        mask = torch.ones((segment_len, segment_len), dtype=torch.bool).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)
        # the decode program's rotary tables, cos and sin (N, dim_head / 2) per layer (``decode_spec("fused")``):
        # one buffer each, so that each is a constant of the exported graph rather than a slice of one
        for i, (cos, sin) in enumerate(self._decode_rotary_tables()):
            self.register_buffer(f"rotary_cos_{i}", cos, persistent=False)
            self.register_buffer(f"rotary_sin_{i}", sin, persistent=False)

    # ---- the step protocol ---------------------------------------------------------------------
    def step_spec(self) -> StepSpec:
        state = layer_state_specs(self.depth, self.heads, self.dim_head) + (
            StateTensorSpec(HAS_MEMORY, ("batch", 1)),)
        extra = {
            "model": "infini_transformer_pytorch.InfiniTransformer",
            "package_version": _their_version(),
            "adapter": "infini_export.adapters.lucidrains.LucidrainsStep",
            "dim": self.dim, "depth": self.depth, "heads": self.heads, "dim_head": self.dim_head,
            "ff_inner": self.model.layers[0][1].proj_out.in_features,
            "use_mem_delta_rule": self.use_mem_delta_rule,
            "learned_delta_update": self.learned_delta_update,
            "gate": "sigmoid(head_gates) weights the local attention (inverse of the paper)",
            "has_memory": "0 before the first segment (no memory read, no gate), 1 afterwards",
            "memory_eps": MEMORY_EPS,
        }
        return StepSpec(self.vocab_size, self.segment_len, state, extra=extra)

    def init_state(self, batch_size: int, device: torch.device | str | None = None):
        """No memory: zero ``memory.i``/``norm.i`` and ``has_memory`` = 0 (their ``past_memories=None``)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        device = device if device is not None else self.model.token_emb.weight.device
        H, d = self.heads, self.dim_head
        layers = tuple(
            LayerMemory(torch.zeros(batch_size, H, d, d, dtype=STATE_DTYPE, device=device),
                        torch.zeros(batch_size, H, d, dtype=STATE_DTYPE, device=device))
            for _ in range(self.depth))
        return (*layers, torch.zeros(batch_size, 1, dtype=STATE_DTYPE, device=device))

    def step(self, input_ids: torch.Tensor, state):
        """One segment: ``(input_ids (B, T) int64, state) -> (logits (B, T, V), new_state)``, 1 <= T <= segment_len.

        Pure. Equals their ``forward(input_ids, past_memories=None if has_memory == 0 else memories,
        return_new_memories=True)``, with ``new_state`` = their new memories and ``has_memory`` = 1.
        """
        x, new_state = self._trunk(input_ids, state)
        return self.model.to_logits(self.model.norm(x)), new_state  # (B, T, V)

    def step_last(self, input_ids: torch.Tensor, state):
        """``step`` returning only the last token's logits ``(B, 1, V)`` (their norm and ``to_logits`` on one row);
        the same new state."""
        x, new_state = self._trunk(input_ids, state)
        return self.model.to_logits(self.model.norm(x[:, -1:])), new_state  # (B, 1, V)

    def _trunk(self, input_ids: torch.Tensor, state):
        """Every layer: the hidden states (B, T, D) before their final norm, and the new state."""
        if not torch.compiler.is_compiling():
            self.check_step_inputs(input_ids, state)
        *layer_state, has_memory = state
        use_mem = (has_memory > 0.5)[:, :, None, None]  # (B, 1, 1, 1) bool

        x = self.model.token_emb(input_ids)  # (B, T, D)
        new_layers = []
        for (attn, ff), mem in zip(self.model.layers, layer_state):
            attn_out, new_mem = self._attention(attn, x, mem, use_mem)
            x = attn_out + x
            x = self._feed_forward(ff, x) + x
            new_layers.append(new_mem)
        # the flag's logical OR with "a segment was written": 1 for the valid inputs 0 and 1. Written as
        # max(has_memory, 1) rather than a constant 1 so the output depends on the input, which the
        # parity validator's state-wiring check (it scales every state input, 1 -> 1.75) needs to see
        # past_has_memory connected; a constant would make that check report it disconnected.
        return x, (*new_layers, torch.clamp(has_memory, min=1.0))

    # ---- their layers, re-expressed ------------------------------------------------------------
    @staticmethod
    def _rotary_tables(attn, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, dim_head) of ``rotary_emb`` at ``positions`` (T,), computed as their ``forward`` does
        but without its cache side effect; shared by q and k (one table per layer, not two)."""
        rot = attn.rotary_emb
        T = positions.shape[0]
        seq = positions.to(dtype) / rot.interpolate_factor  # get_seq_pos
        freqs = _cast(seq, rot.freqs.dtype)[:, None] * rot.freqs[None, :]  # einsum('n,f->nf'): one product each
        freqs = freqs[:, :, None].expand(T, freqs.shape[-1], 2).reshape(T, 2 * freqs.shape[-1])  # (T, 2F): (f r)
        return freqs.cos(), freqs.sin()

    @staticmethod
    def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``apply_rotary_emb``: ``t * cos + rotate_half(t) * sin`` on interleaved pairs (d r)."""
        pairs = t.reshape(*t.shape[:-1], t.shape[-1] // 2, 2)
        halved = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(t.shape)
        out = (t * cos) + (halved * sin)  # rotates all dim_head features (checked in __init__)
        return _cast(out, t.dtype)

    def _qkv(self, attn, x: torch.Tensor, positions: torch.Tensor):
        """Normed input, q, k, v (B, H, T, d) and the rotated, scaled q and rotated k (rotary after scaling)."""
        B, T, _ = x.shape
        x = attn.norm(x)  # (B, T, D)
        qkv = attn.to_qkv(x).reshape(B, T, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, d) each
        cos, sin = self._rotary_tables(attn, positions, q.dtype)
        return x, q, k, v, self._rotate(q * attn.scale, cos, sin), self._rotate(k, cos, sin)

    def _attention(self, attn, x: torch.Tensor, mem, use_mem: torch.Tensor):
        T = x.shape[1]
        x, q, k, v, q_rot, k_rot = self._qkv(attn, x, torch.arange(T, device=x.device))
        # local causal attention
        sim = q_rot @ k_rot.transpose(-1, -2)  # (B, H, T, T): einsum("... i d, ... j d -> ... i j")
        sim = sim.masked_fill(self.causal_mask[:T, :T], -torch.finfo(sim.dtype).max)
        out = attn.dropout(sim.softmax(dim=-1)) @ v  # (B, H, T, d): A_dot
        out, dkv, dnorm, past_kv, past_norm = self._memory(attn, x, q, k, v, out, mem.memory, mem.norm, use_mem)
        new_kv = dkv + past_kv  # eq (4): einsum("... n dk, ... n dv -> ... dk dv") + past
        return out, LayerMemory(new_kv, dnorm + past_norm)

    def _memory(self, attn, x, q, k, v, out, memory, norm, use_mem, heads_first: bool = True):
        """Memory read and gate on the local output ``out`` ((B, H, T, d), or (B, T, H, d) when not
        ``heads_first``), the heads merged; this chunk's write (not yet added) and the memory it reads."""
        B, _, T, _ = q.shape
        # compressive memory: with no memory, behave as past_memories=None
        past_kv = torch.where(use_mem, memory, 0.0)  # (B, H, d, d)
        past_norm = torch.where(use_mem[..., 0], norm, 0.0)  # (B, H, d)
        kf, vf = _cast(k, STATE_DTYPE), _cast(v, STATE_DTYPE)

        mem_out = _cast(_retrieve(F.elu(_cast(q, STATE_DTYPE)) + 1.0, past_kv, past_norm), out.dtype)  # A_mem
        gates = attn.fastweight_mem.head_gates.sigmoid()[:, None]  # (H, 1)
        if heads_first:
            gates = gates[:, None]  # (H, 1, 1)
        else:
            mem_out = mem_out.transpose(1, 2)  # (B, T, H, d), as out
        gated = out * gates + mem_out * (1.0 - gates)
        out = torch.where(use_mem, gated, out)  # first segment: no read, no gate

        if heads_first:
            out = out.permute(0, 2, 1, 3)
        out = attn.to_out(out.reshape(B, T, self.heads * self.dim_head))  # heads merged: (B, T, D)

        # write (create_new_memories)
        keys = F.elu(kf) + 1.0  # (B, H, T, d)
        weights = None
        if attn.to_learned_delta_update_weights is not None:
            lin, act = attn.to_learned_delta_update_weights[0], attn.to_learned_delta_update_weights[2]
            weights = _cast(act(lin(x).permute(0, 2, 1)[..., None]), STATE_DTYPE)  # (B, H, T, 1)
        if self.use_mem_delta_rule:
            delta_v = _retrieve(keys, past_kv, past_norm)  # exactly 0 with no memory
            if weights is not None:
                values = torch.where(use_mem, vf.lerp(delta_v, weights), vf * (1.0 - weights))
            else:
                values = vf
            diff_values = values - delta_v
        else:
            diff_values = vf * (1.0 - weights) if weights is not None else vf
        return out, keys.transpose(-1, -2) @ diff_values, keys.sum(dim=2), past_kv, past_norm

    # ---- the decode protocol -------------------------------------------------------------------
    def decode_forms(self) -> tuple[str, ...]:
        """``"rows"`` always; ``"fused"`` with float32 weights and ``dim_head`` a multiple of 16."""
        fits = self.model.token_emb.weight.dtype == torch.float32 and self.dim_head % FUSED_HEAD_MULTIPLE == 0
        return ("rows", "fused") if fits else ("rows",)

    def decode_spec(self, form: str = "rows") -> DecodeSpec:
        """The decode program's I/O. ``form="fused"``: each layer's local attention is one
        ``infini::packed_cache_attention`` op on their packed ``to_qkv`` output and the cache outputs are the whole
        caches with the new rows written in (``cache_output == "whole"``); the ONNX exporter maps the op to
        onnxruntime's ``GroupQueryAttention`` (``rotary_interleaved=1``: their rotary rotates adjacent pairs) that
        updates the cache in place. The op scales the rotated scores where their code scales q before rotating it:
        the same up to rounding. Asking for the fused spec takes the rotary tables from their frequencies as they
        are now (weights may have been loaded after wrapping)."""
        check_form(form, self.decode_forms())
        if form == "fused":
            with torch.no_grad():
                for i, (cos, sin) in enumerate(self._decode_rotary_tables()):
                    getattr(self, f"rotary_cos_{i}").copy_(cos)
                    getattr(self, f"rotary_sin_{i}").copy_(sin)
        dtype = str(self.model.token_emb.weight.dtype).replace("torch.", "")
        state, cache = layer_decode_specs(self.depth, self.heads, self.dim_head, self.segment_len, dtype)
        return DecodeSpec(self.segment_len, state + (StateTensorSpec(HAS_MEMORY, ("batch", 1)),), cache,
                          "whole" if form == "fused" else "rows")

    @torch.no_grad()
    def _decode_rotary_tables(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, cos and sin (N, dim_head / 2) of its rotary at positions 0..N-1 of a segment, one column per
        rotated pair, computed as their ``forward`` computes its angles (float32 products)."""
        tables = []
        for attn, _ff in self.model.layers:
            rot = attn.rotary_emb
            seq = torch.arange(self.segment_len, device=rot.freqs.device, dtype=torch.float32) / rot.interpolate_factor
            angles = _cast(seq, rot.freqs.dtype)[:, None] * rot.freqs[None, :]  # (N, dim_head / 2)
            tables.append((angles.cos().float(), angles.sin().float()))
        return tables

    def init_decode_state(self, batch_size: int, device=None):
        return self.decode_state_from(self.init_state(batch_size, device))

    def decode_state_from(self, state):
        """Position 0 after a segment: the memories, zero pending writes, ``has_memory``; an empty cache."""
        *layers, has_memory = state
        B, N = has_memory.shape[0], self.segment_len

        def empty():  # one buffer per cache tensor: a program that writes its caches in place may be bound to them
            return torch.zeros(B, self.heads, N, self.dim_head, dtype=self.model.token_emb.weight.dtype,
                               device=has_memory.device)

        dec = tuple(LayerDecodeState(m.memory, m.norm, torch.zeros_like(m.memory), torch.zeros_like(m.norm))
                    for m in layers)
        return (*dec, has_memory), tuple(LayerCache(empty(), empty()) for _ in layers)

    def decode(self, input_ids: torch.Tensor, position: torch.Tensor, state, cache, form: str = "rows"):
        """Tokens p..p+T-1 of the current segment (see ``infini_export.state.DecodeSpec``); pure."""
        if not torch.compiler.is_compiling():
            p, T = int(position[0]), input_ids.shape[-1]
            if not 0 <= p < self.segment_len or not 1 <= T <= self.segment_len - p:
                raise ValueError(f"decode at position {p} with {T} tokens: expected 0 <= position < "
                                 f"segment_len={self.segment_len} and 1 <= tokens <= segment_len - position")
            *layers, has = state
            self.check_step_inputs(input_ids, (*[LayerMemory(st.memory, st.norm) for st in layers], has))
        *layers, has_memory = state
        use_mem = (has_memory > 0.5)[:, :, None, None]  # (B, 1, 1, 1) bool
        (B, T), N = input_ids.shape, self.segment_len
        at_end = position + T == N  # (1,) bool: the segment's last chunk
        x = self.model.token_emb(input_ids)  # (B, T, D)
        fused = form == "fused"
        if fused:  # the fused form's last valid row, once for every layer
            last = (position + (T - 1)).to(torch.int32).expand(B)
        else:
            positions = position + torch.arange(T, device=input_ids.device)  # (T,)
            visible = (torch.arange(N, device=input_ids.device) >= position)  # (N,) True = masked (not yet written)
        new_layers, rows = [], []
        for i, ((attn, ff), st, c) in enumerate(zip(self.model.layers, layers, cache)):
            if fused:
                xn = attn.norm(x)  # (B, T, D)
                qkv = attn.to_qkv(xn)  # (B, T, 3 * H * d): (qkv h d), what GroupQueryAttention takes packed
                heads = qkv.reshape(B, T, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d)
                q, k, v = heads[0], heads[1], heads[2]
                cos, sin = getattr(self, f"rotary_cos_{i}"), getattr(self, f"rotary_sin_{i}")  # (N, d / 2)
                local, key, value = packed_cache_attention(qkv, c.key, c.value, last, cos, sin, attn.scale, True)
                local = local.view(B, T, self.heads, self.dim_head)  # (B, T, H, d)
                rows.append(LayerCache(key, value))  # the whole caches, the chunk's rows written in
            else:
                xn, q, k, v, q_rot, k_rot = self._qkv(attn, x, positions)
                neg = -torch.finfo(q_rot.dtype).max
                s_cache = (q_rot @ c.key.transpose(-1, -2)).masked_fill(visible, neg)  # (B, H, T, N)
                s_self = (q_rot @ k_rot.transpose(-1, -2)).masked_fill(self.causal_mask[:T, :T], neg)  # (B, H, T, T)
                a = attn.dropout(torch.cat([s_cache, s_self], dim=-1).softmax(dim=-1))
                local = a[..., :N] @ c.value + a[..., N:] @ v  # (B, H, T, d)
                rows.append(LayerCache(k_rot, v))
            out, dkv, dnorm, past_kv, past_norm = self._memory(attn, xn, q, k, v, local, st.memory, st.norm, use_mem,
                                                               heads_first=not fused)
            x = out + x
            x = self._feed_forward(ff, x) + x
            pend_kv, pend_norm = st.pending_memory + dkv, st.pending_norm + dnorm
            # at the segment's end the memory takes the write (their first segment has no memory: the memory after
            # it is the write alone, as use_mem zeroes the past) and the pending write starts again from zero
            new_layers.append(LayerDecodeState(torch.where(at_end, pend_kv + past_kv, st.memory),
                                               torch.where(at_end, pend_norm + past_norm, st.norm),
                                               torch.where(at_end, 0.0, pend_kv), torch.where(at_end, 0.0, pend_norm)))
        logits = self.model.to_logits(self.model.norm(x))  # (B, T, V)
        return logits, (*new_layers, torch.maximum(has_memory, at_end.to(STATE_DTYPE))), tuple(rows)

    @staticmethod
    def _feed_forward(ff, x: torch.Tensor) -> torch.Tensor:
        h = ff.proj_in(ff.norm(x))
        inner = ff.proj_out.in_features
        value, gate = h[..., :inner], h[..., inner:]  # = .chunk(2, dim=-1)
        return ff.proj_out(ff.dropout(F.gelu(gate) * value))

    # ---- input checks (eager only) -------------------------------------------------------------
    def check_step_inputs(self, input_ids, state) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.int64 or input_ids.dim() != 2:
            got = (f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, torch.Tensor)
                   else type(input_ids).__name__)
            raise ValueError(f"input_ids must be an int64 (batch, time) tensor, got {got}")
        B, T = input_ids.shape
        if B < 1 or not 1 <= T <= self.segment_len:
            raise ValueError(f"input_ids has shape {(B, T)}; a step takes batch >= 1 and 1 to "
                             f"segment_len={self.segment_len} tokens")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"input_ids must lie in [0, {self.vocab_size}), got values in [{lo}, {hi}]")
        if not isinstance(state, (tuple, list)) or len(state) != self.depth + 1:
            raise ValueError(f"state must be a tuple of {self.depth} LayerMemory then has_memory (B, 1), "
                             f"got {type(state).__name__}"
                             + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
        H, d = self.heads, self.dim_head
        named = []
        for i, mem in enumerate(state[:-1]):
            if not isinstance(mem, (tuple, list)) or len(mem) != 2:
                raise ValueError(f"state[{i}] must be LayerMemory(memory, norm)")
            named += [(f"memory.{i}", mem[0], (B, H, d, d)), (f"norm.{i}", mem[1], (B, H, d))]
        named.append((HAS_MEMORY, state[-1], (B, 1)))
        for name, t, shape in named:
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != STATE_DTYPE:
                got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"state tensor {name} is {got}, expected {shape} torch.float32")


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, left out of the graph when it would be a no-op."""
    return t if t.dtype == dtype else t.to(dtype)


def _retrieve(t: torch.Tensor, kv: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Their ``retrieve_from_kv_memories``: ``t M / clamp(t z, min=1e-10)`` (eq 3 of their comments)."""
    numer = t @ kv  # (B, H, n, dv)
    denom = t @ norm[..., None]  # (B, H, n, 1)
    return numer / denom.clamp(min=MEMORY_EPS)


# ---- loading ---------------------------------------------------------------------------------------
def build_lucidrains(kwargs: dict) -> nn.Module:
    """Their ``InfiniTransformer(**kwargs)``; unknown or missing keyword arguments raise ``ValueError``."""
    pkg = _their_package()
    if not isinstance(kwargs, dict):
        raise ValueError(f"InfiniTransformer kwargs must be a JSON object, got {type(kwargs).__name__}")
    params = inspect.signature(pkg.InfiniTransformer.__init__).parameters
    accepted = [n for n in params if n != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    required = [n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty]
    missing = [n for n in required if n not in kwargs]
    if unknown or missing:
        raise ValueError(f"InfiniTransformer kwargs: unknown={unknown}, missing={missing}; "
                         f"accepted: {accepted}")
    return pkg.InfiniTransformer(**kwargs)


def load_lucidrains(weights_path: str | Path, kwargs_json_path: str | Path, segment_len: int) -> LucidrainsStep:
    """Build their model from a kwargs JSON file, load a ``state_dict`` .pt strictly, wrap it (eval mode).

    Missing, unexpected or mis-shaped tensors raise ``ValueError`` listing every one of them.
    """
    weights_path, kwargs_json_path = Path(weights_path), Path(kwargs_json_path)
    for p in (weights_path, kwargs_json_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist")
    try:
        kwargs = json.loads(kwargs_json_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{kwargs_json_path} is not valid JSON: {exc}") from exc
    model = build_lucidrains(kwargs)
    try:
        sd = torch.load(str(weights_path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read {weights_path} as a torch state_dict: {exc}") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{weights_path} must hold a state_dict (a dict of name -> tensor), got "
                         f"{type(sd).__name__}" + (f" with keys {sorted(sd)[:10]}" if isinstance(sd, dict) else ""))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted(f"{k}: file {tuple(sd[k].shape)} vs kwargs {expected[k]}"
                       for k in set(expected) & set(sd) if tuple(sd[k].shape) != expected[k])
    if missing or unexpected or misshaped:
        hint = ""
        if unexpected and all(k.startswith("model.") for k in unexpected):
            hint = " (keys start with 'model.': save InfiniTransformerWrapper.model.state_dict(), not the wrapper's)"
        raise ValueError(f"{weights_path} does not match {kwargs_json_path}: missing={missing}, "
                         f"unexpected={unexpected}, misshaped={misshaped}{hint}")
    model.load_state_dict(sd, strict=True)
    return LucidrainsStep(model.eval(), segment_len).eval()
