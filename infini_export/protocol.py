"""The step protocol: what any exportable module provides, and its flat, graph-shaped form.

A step module is a ``torch.nn.Module`` with
- ``step_spec() -> StepSpec``: vocabulary, segment length, and the state tensors (names, shapes, dtypes);
- ``init_state(batch_size) -> state``: zeros (or the module's defined start), nested tuples of tensors;
- ``step(input_ids, state) -> (logits, new_state)``: pure, same nesting in and out.

Exporters, the manifest writer and the parity validator see only ``FlatStep``: ``forward(input_ids,
*state_tensors) -> (logits, *new_state_tensors)`` in ``StepSpec`` order.
"""
from __future__ import annotations

import torch
from torch import nn

from .state import StepSpec, flatten_state, unflatten_like


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


class FlatStep(nn.Module):
    """``forward(input_ids, *state) -> (logits, *new_state)``: the graph that exporters trace."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.spec: StepSpec = module.step_spec()
        self._template = module.init_state(1)

    def forward(self, input_ids: torch.Tensor, *state: torch.Tensor):
        logits, new_state = self.module.step(input_ids, unflatten_like(self._template, state))
        return (logits, *flatten_state(new_state))

    def example_inputs(self, batch_size: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random ids and a small non-zero state: zeros would let a tracer fold the memory away."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.spec.vocab_size, (batch_size, self.spec.segment_len), generator=g)
        flat = [t + 0.1 * torch.rand(t.shape, generator=g).to(t.dtype)
                for t in flatten_state(self.module.init_state(batch_size))]
        return (ids, *flat)

    def dynamic_shapes(self, max_batch: int = 64) -> dict:
        """Batch is the one dynamic axis (an upper bound, as ExecuTorch needs one)."""
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        return {"input_ids": {0: batch}, "state": tuple({0: batch} for _ in self.spec.state)}
