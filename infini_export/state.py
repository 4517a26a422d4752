"""Recurrent state: its per-layer container, its spec, and the graph I/O names.

The names returned here are the only ones used anywhere: by both exporters, the manifest and
(through the manifest) the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch

INPUT_IDS = "input_ids"
LOGITS = "logits"
POSITION = "position"  # decode program: tokens of the current segment already in the cache, int64 (1,)


class LayerMemory(NamedTuple):
    """Compressive memory of one layer. Always float32."""

    memory: torch.Tensor  # (B, H, dk, dv): M, the associative matrix
    norm: torch.Tensor  # (B, H, dk): z, the running sum of sigma(K)


class LayerDecodeState(NamedTuple):
    """One layer's state inside a segment: the memory left by earlier segments and this segment's pending
    write (both float32)."""

    memory: torch.Tensor  # (B, H, dk, dv): M after the last complete segment
    norm: torch.Tensor  # (B, H, dk): z after the last complete segment
    pending_memory: torch.Tensor  # (B, H, dk, dv): the write of this segment's tokens so far (eq 8 / eq 9)
    pending_norm: torch.Tensor  # (B, H, dk): sum of sigma(K) over this segment's tokens so far


class LayerCache(NamedTuple):
    """One layer's local keys (rotated) and values of the current segment."""

    key: torch.Tensor  # (B, H, N, dh), or (B, H, T, dh) rows
    value: torch.Tensor  # (B, H, N, dh), or (B, H, T, dh) rows


def past_name(name: str) -> str:
    """Graph input carrying state tensor ``name`` into a step (``memory.0`` -> ``past_memory.0``)."""
    return f"past_{name}"


def present_name(name: str) -> str:
    """Graph output carrying state tensor ``name`` out of a step (``present_memory.0``)."""
    return f"present_{name}"


@dataclass(frozen=True)
class StateTensorSpec:
    """One state tensor: its base name, shape ("batch" is the symbolic leading axis), dtype."""

    name: str
    shape: tuple  # ("batch", d1, d2, ...)
    dtype: str = "float32"


@dataclass(frozen=True)
class StepSpec:
    """What a step module exposes to exporters, manifest and parity: its I/O, in graph order.

    Any ``torch.nn.Module`` with ``step_spec() -> StepSpec``, ``init_state(batch)`` and a pure
    ``step(input_ids, state) -> (logits, new_state)`` can be exported; ``state`` is any nesting of
    tuples whose flattening (depth-first) follows ``state`` here.
    """

    vocab_size: int
    segment_len: int
    state: tuple[StateTensorSpec, ...]
    extra: dict = field(default_factory=dict)  # model-specific facts for the manifest

    def input_names(self) -> list[str]:
        return [INPUT_IDS] + [past_name(s.name) for s in self.state]

    def output_names(self) -> list[str]:
        return [LOGITS] + [present_name(s.name) for s in self.state]

    def state_map(self) -> dict[str, str]:
        """Which output feeds which input at the next step."""
        return {present_name(s.name): past_name(s.name) for s in self.state}


DECODE_FORMS = ("rows", "fused")  # how a decode program's local attention is written (``decode_spec(form)``)


def check_form(form: str, supported: tuple[str, ...]) -> None:
    """``ValueError`` unless ``form`` is one of the decode forms a module ``supported``."""
    if form not in supported:
        raise ValueError(f"decode form {form!r} is not one this model takes; expected one of {supported}")


@dataclass(frozen=True)
class DecodeSpec:
    """The decode program's I/O, in graph order: a chunk of 1..N-p tokens at position p of a segment.

    ``decode(input_ids (B, T), position (1,), state, cache) -> (logits (B, T, V), new_state, cache_rows)``.
    ``state`` holds the segment state's tensors under the same names (``memory.i``, ``norm.i``) plus the
    pending write of the segment so far; ``cache`` the local keys/values (B, H, N, dh) of the segment's
    first p tokens (slots >= p are ignored). ``cache_rows`` are the T new rows, written by the caller at
    ``[:, :, p:p+T]``. When ``p + T == segment_len`` the program folds the pending write into memory and
    returns it zeroed: the state is then the segment step's state and the next call starts at position 0.
    """

    max_tokens: int
    state: tuple[StateTensorSpec, ...]
    cache: tuple[StateTensorSpec, ...]
    # "rows": the cache outputs are the T new rows (B, H, T, dh); "whole": the whole caches (B, H, N, dh) with those
    # rows written at [:, :, p:p+T] and every other row as given (a runtime may bind them to the inputs' buffers)
    cache_output: str = "rows"

    def input_names(self) -> list[str]:
        return [INPUT_IDS, POSITION] + [past_name(s.name) for s in self.state + self.cache]

    def output_names(self) -> list[str]:
        return [LOGITS] + [present_name(s.name) for s in self.state + self.cache]


def layer_decode_specs(n_layers: int, n_heads: int, d_head: int, segment_len: int,
                       cache_dtype: str = "float32") -> tuple[tuple[StateTensorSpec, ...], tuple[StateTensorSpec, ...]]:
    """Per layer state ``memory.i``, ``norm.i``, ``pending_memory.i``, ``pending_norm.i`` (float32) and
    cache ``key.i``, ``value.i`` (B, H, N, dh)."""
    state, cache = [], []
    for i in range(n_layers):
        state += [StateTensorSpec(f"memory.{i}", ("batch", n_heads, d_head, d_head)),
                  StateTensorSpec(f"norm.{i}", ("batch", n_heads, d_head)),
                  StateTensorSpec(f"pending_memory.{i}", ("batch", n_heads, d_head, d_head)),
                  StateTensorSpec(f"pending_norm.{i}", ("batch", n_heads, d_head))]
        cache += [StateTensorSpec(f"key.{i}", ("batch", n_heads, segment_len, d_head), cache_dtype),
                  StateTensorSpec(f"value.{i}", ("batch", n_heads, segment_len, d_head), cache_dtype)]
    return tuple(state), tuple(cache)


def layer_state_specs(n_layers: int, n_heads: int, d_head: int) -> tuple[StateTensorSpec, ...]:
    """Per layer ``memory.{i}`` (B, H, dk, dv) then ``norm.{i}`` (B, H, dk)."""
    specs = []
    for i in range(n_layers):
        specs.append(StateTensorSpec(f"memory.{i}", ("batch", n_heads, d_head, d_head)))
        specs.append(StateTensorSpec(f"norm.{i}", ("batch", n_heads, d_head)))
    return tuple(specs)


def flatten_state(state) -> list[torch.Tensor]:
    """Depth-first flattening of nested tuples (NamedTuples included) of tensors."""
    if isinstance(state, torch.Tensor):
        return [state]
    out: list[torch.Tensor] = []
    for item in state:
        out.extend(flatten_state(item))
    return out


def unflatten_like(template, flat: Sequence[torch.Tensor]):
    """Inverse of ``flatten_state`` with the nesting of ``template``."""
    it = iter(flat)

    def build(node):
        if isinstance(node, torch.Tensor):
            return next(it)
        items = [build(x) for x in node]
        return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)

    result = build(template)
    rest = list(it)
    if rest:
        raise ValueError(f"{len(rest)} state tensors left over after unflattening")
    return result
