"""The step protocol: what any exportable module provides, and its flat, graph-shaped form.

A step module is a ``torch.nn.Module`` with
- ``step_spec() -> StepSpec``: vocabulary, segment length, and the state tensors (names, shapes, dtypes);
- ``init_state(batch_size) -> state``: zeros (or the module's defined start), nested tuples of tensors;
- ``step(input_ids, state) -> (logits, new_state)``: pure, same nesting in and out.

Exporters, the manifest writer and the parity validator see only ``FlatStep``: ``forward(input_ids,
*state_tensors) -> (logits, *new_state_tensors)`` in ``StepSpec`` order.

Optionally, for token-level generation (``has_decode``), a module also provides
- ``decode_spec(form="rows") -> DecodeSpec`` and ``init_decode_state(batch_size) -> (state, cache)``;
- ``decode_state_from(step_state) -> (state, cache)``: the decode state at position 0 after a segment;
- ``decode(input_ids, position, state, cache, form="rows") -> (logits, new_state, cache_rows)`` (see
  ``DecodeSpec``), seen by exporters as ``FlatDecode``;
- ``decode_forms()``: the forms it takes (``state.DECODE_FORMS``: ``"rows"`` always, ``"fused"`` where it can).
A module without them exports the segment step alone.

Optionally (``has_step_last``), ``step_last(input_ids, state) -> (logits (B, 1, V), new_state)``: ``step`` with
the last token's logits only (prefill needs no more), seen by exporters as ``FlatStepLast``.
"""
from __future__ import annotations

import torch
from torch import nn

from .state import DecodeSpec, StepSpec, flatten_state, unflatten_like

DECODE_METHODS = ("decode_spec", "decode_forms", "init_decode_state", "decode_state_from", "decode")


def has_decode(module: nn.Module) -> bool:
    """Whether ``module`` provides the optional decode protocol."""
    return all(callable(getattr(module, attr, None)) for attr in DECODE_METHODS)


def has_step_last(module: nn.Module) -> bool:
    """Whether ``module`` provides ``step_last`` (the segment step with the last token's logits only)."""
    return callable(getattr(module, "step_last", None))


class ProtocolError(ValueError):
    """A module does not keep the step protocol (missing method, wrong state, impure step)."""


def check_protocol(module: nn.Module, batch_size: int = 2) -> StepSpec:
    """Check ``module`` against the protocol on one real step; return its spec or raise ``ProtocolError``."""
    for attr in ("step_spec", "init_state", "step"):
        if not callable(getattr(module, attr, None)):
            raise ProtocolError(f"{type(module).__name__} has no {attr}(); a step module needs step_spec(), "
                                "init_state(batch_size) and step(input_ids, state)")
    spec = module.step_spec()
    if not isinstance(spec, StepSpec):
        raise ProtocolError(f"step_spec() returned {type(spec).__name__}, expected StepSpec")
    state = module.init_state(batch_size)
    flat = flatten_state(state)
    _check_state(spec, flat, batch_size, "init_state()")
    before_buffers = {k: v.detach().clone() for k, v in _tensors(module).items()}
    flat_in = [t + 0.25 for t in flat]  # non-zero so a pass-through is visible
    state_in = unflatten_like(state, flat_in)
    flat_copy = [t.clone() for t in flat_in]
    ids = torch.randint(0, spec.vocab_size, (batch_size, spec.segment_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = module.step(ids, state_in)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ProtocolError(f"step() must return (logits, new_state), got {type(out).__name__}")
    logits, new_state = out
    expected_logits = (batch_size, spec.segment_len, spec.vocab_size)
    if tuple(logits.shape) != expected_logits:
        raise ProtocolError(f"step() returned logits of shape {tuple(logits.shape)}, expected {expected_logits}")
    _check_state(spec, flatten_state(new_state), batch_size, "step()")
    for name, (a, b) in zip([s.name for s in spec.state], zip(flat_in, flat_copy)):
        if not torch.equal(a, b):
            raise ProtocolError(f"step() mutated its input state tensor {name!r}; updates must be out of place")
    for key, value in _tensors(module).items():
        if not torch.equal(value, before_buffers[key]):
            raise ProtocolError(f"step() mutated parameter or buffer {key!r}; a step must be pure")
    return spec


def _tensors(module: nn.Module) -> dict:
    """Every parameter and buffer by name; ``state_dict()`` would leave out buffers with ``persistent=False``."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _check_state(spec: StepSpec, flat: list, batch_size: int, where: str) -> None:
    if len(flat) != len(spec.state):
        raise ProtocolError(f"{where} gave {len(flat)} state tensors, but step_spec() declares {len(spec.state)}: "
                            f"{[s.name for s in spec.state]}")
    for s, t in zip(spec.state, flat):
        shape = tuple(batch_size if d == "batch" else d for d in s.shape)
        if tuple(t.shape) != shape or str(t.dtype).replace("torch.", "") != s.dtype:
            raise ProtocolError(f"{where} state tensor {s.name!r} is {tuple(t.shape)} {t.dtype}, "
                                f"spec says {shape} {s.dtype}")


def _jitter(tensors, g: torch.Generator) -> list[torch.Tensor]:
    """A small non-zero copy of each (zero) state tensor: zeros would let a tracer fold the memory away."""
    return [t + 0.1 * torch.rand(t.shape, generator=g).to(t.dtype) for t in tensors]


class FlatStep(nn.Module):
    """``forward(input_ids, *state) -> (logits, *new_state)``: the graph that exporters trace."""

    method = "step"  # the module's method this graph runs

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.spec: StepSpec = module.step_spec()
        self._template = module.init_state(1)

    def forward(self, input_ids: torch.Tensor, *state: torch.Tensor):
        logits, new_state = getattr(self.module, self.method)(input_ids, unflatten_like(self._template, state))
        return (logits, *flatten_state(new_state))

    def example_inputs(self, batch_size: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random ids and a small non-zero state: zeros would let a tracer fold the memory away."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.spec.vocab_size, (batch_size, self.spec.segment_len), generator=g)
        flat = _jitter(flatten_state(self.module.init_state(batch_size)), g)
        return (ids, *flat)

    def dynamic_shapes(self, max_batch: int = 64) -> dict:
        """Batch is the one dynamic axis (an upper bound, as ExecuTorch needs one)."""
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        return {"input_ids": {0: batch}, "state": tuple({0: batch} for _ in self.spec.state)}


class FlatStepLast(FlatStep):
    """``forward(input_ids, *state) -> (logits (B, 1, V), *new_state)``: ``step_last``, same I/O names as the step."""

    method = "step_last"


class FlatDecode(nn.Module):
    """``forward(input_ids, position, *state, *cache) -> (logits, *new_state, *cache_rows)``: the decode graph in
    ``form`` (``"rows"`` or ``"fused"``, see ``decode_forms``)."""

    def __init__(self, module: nn.Module, form: str = "rows"):
        super().__init__()
        self.module = module
        self.form = form
        self.spec: DecodeSpec = module.decode_spec(form)
        self._template = module.init_decode_state(1)

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor, *tensors: torch.Tensor):
        n = len(self.spec.state)
        state, cache = unflatten_like(self._template[0], tensors[:n]), unflatten_like(self._template[1], tensors[n:])
        logits, new_state, rows = self.module.decode(input_ids, position, state, cache, form=self.form)
        return (logits, *flatten_state(new_state), *flatten_state(rows))

    def max_chunk(self, limit: int | None = None) -> int:
        """The most tokens one call takes: segment_len - 1, or ``limit`` if smaller."""
        return min(self.spec.max_tokens - 1, limit) if limit else self.spec.max_tokens - 1

    def example_inputs(self, batch_size: int = 2, tokens: int = 3, position: int = 2, seed: int = 0):
        """Random ids, a small non-zero state and cache, a position inside the segment."""
        g = torch.Generator().manual_seed(seed)
        spec = self.spec
        ids = torch.randint(0, self.module.step_spec().vocab_size, (batch_size, tokens), generator=g)
        state, cache = self.module.init_decode_state(batch_size)
        flat = _jitter(flatten_state((state, cache)), g)
        assert len(flat) == len(spec.state) + len(spec.cache)
        return (ids, torch.tensor([position], dtype=torch.int64), *flat)

    def dynamic_shapes(self, max_batch: int = 64, max_chunk: int | None = None) -> dict:
        """Batch (``max_batch == 1``: static) and the chunk length, 1..segment_len - 1 (a whole segment goes
        through the segment step), or 1..``max_chunk``."""
        tokens = torch.export.Dim("tokens", min=1, max=max(self.max_chunk(max_chunk), 2))
        batch = None if max_batch == 1 else torch.export.Dim("batch", min=1, max=max_batch)
        ids = {1: tokens} if batch is None else {0: batch, 1: tokens}
        rest = tuple(None if batch is None else {0: batch} for _ in self.spec.state + self.spec.cache)
        return {"input_ids": ids, "position": None, "tensors": rest}
