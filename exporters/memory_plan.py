"""What an ExecuTorch program asks of a device's memory, for every method it holds.

Per method, the numbers ExecuTorch's ``MethodMeta`` reports:

- ``planned_buffers`` / ``planned_bytes``: ``num_memory_planned_buffers()`` and the sum of
  ``memory_planned_buffer_size(i)``: the arena(s) the caller allocates before ``load_method`` (activations,
  and the memory-planned inputs and outputs). ``MethodMeta`` reads them from the program's
  ``non_const_buffer_sizes`` (entry 0 is reserved for constants), which is read here directly: the Python
  bindings of ExecuTorch 1.4.1 do not expose those two calls.
- ``input_bytes`` / ``output_bytes``: the ``nbytes()`` of every input and output tensor (at the shapes it was
  planned for: the batch bound); ``planned_input_bytes``: those of the inputs the arena holds (a call copies them
  in; the others are read where the caller keeps them).

For the whole program, ``weights_bytes``: the constant data (the constant segment, XNNPACK's packed-weight
blobs and any inline constants), shared by all methods, mapped or loaded once.
"""
from __future__ import annotations

from pathlib import Path

# ExecuTorch ScalarType code -> bytes per element (runtime/core/portable_type/scalar_type.h)
_ELEMENT_BYTES = {0: 1, 1: 1, 2: 2, 3: 4, 4: 8, 5: 2, 6: 4, 7: 8, 11: 1, 15: 2}


def _program(data: bytes):
    """The program flatbuffer (ExecuTorch's own deserializer; segments are not copied in)."""
    from executorch.exir._serialize._flatbuffer_program import _flatbuffer_to_program
    from executorch.exir._serialize._program import _get_extended_header

    header = _get_extended_header(data)
    size = header.program_size if header else len(data)
    return _flatbuffer_to_program(data[:size])


def _tensor_bytes(value) -> int:
    tensor = value.val
    n = _ELEMENT_BYTES.get(int(tensor.scalar_type), 0)
    for d in tensor.sizes:
        n *= int(d)
    return n


def measure_memory(pte: bytes | str | Path) -> dict:
    """``{"methods": {name: {...}}, "weights_bytes": int, "program_bytes": int}`` for a ``.pte`` (bytes or path).

    Iterates over every method of the program (``forward`` and any other, e.g. a token-level ``decode``).
    """
    data = Path(pte).read_bytes() if isinstance(pte, (str, Path)) else bytes(pte)
    program = _program(data)
    methods = {}
    for plan in program.execution_plan:
        planned = [int(b) for b in plan.non_const_buffer_sizes[1:]]
        tensors = [plan.values[i] for i in plan.inputs if hasattr(plan.values[i].val, "sizes")]
        inputs = [_tensor_bytes(v) for v in tensors]
        planned_in = sum(b for b, v in zip(inputs, tensors) if v.val.allocation_info is not None)
        outputs = [_tensor_bytes(plan.values[i]) for i in plan.outputs if hasattr(plan.values[i].val, "sizes")]
        methods[plan.name] = {"planned_buffers": len(planned), "planned_buffer_bytes": planned,
                              "planned_bytes": sum(planned), "input_bytes": sum(inputs),
                              "planned_input_bytes": planned_in,
                              "output_bytes": sum(outputs)}
    weights = (sum(int(s.size) for s in program.segments)
               + sum(len(b.storage) for b in program.constant_buffer)
               + sum(len(d.data) for d in program.backend_delegate_data))
    return {"methods": methods, "weights_bytes": weights, "program_bytes": len(data)}
