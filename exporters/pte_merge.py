"""Merge ExecuTorch programs that each hold other methods of one model into one ``.pte``.

Lowering a method to XNNPACK is single-threaded Python and costs minutes at 100M parameters, and the methods
of a program are lowered independently of each other. ``exporters.executorch_lower`` therefore lowers each
method in a process of its own and merges the results here, through ExecuTorch's own (de)serializer:

- the execution plans (one per method) are concatenated; a method name may appear once;
- each plan's inline delegate blobs are appended to the program's ``backend_delegate_data`` and its delegates'
  references moved by the offset;
- constant tensors (what the portable kernels read: e.g. the embedding table) are appended to
  ``constant_buffer`` once per distinct content, and each plan's tensors re-pointed; entry 0 stays the
  reserved empty entry;
- the named data (XNNPACK's packed weights, keyed by content) is merged by key; one key with two different
  contents is an error.

What the merge cannot reproduce is refused: mutable buffers (the state is passed in and out here, never held
by the program) and programs of different schema versions.
"""
from __future__ import annotations

import hashlib


class PteMergeError(ValueError):
    """The programs cannot be merged into one (named in the message)."""


def merge_programs(blobs: list[bytes], *, segment_alignment: int = 128) -> bytes:
    """One ``.pte`` holding every method of ``blobs`` (serialized programs of the same model).

    The delegate blobs and named data go to segments after the flatbuffer, as
    ``ExecutorchBackendConfig(extract_delegate_segments=True)`` writes them.
    """
    from executorch.exir._serialize._named_data_store import NamedDataStore
    from executorch.exir._serialize._program import PTEFile, deserialize_pte_binary, serialize_pte_binary
    from executorch.exir.schema import DataLocation, Tensor

    if not blobs:
        raise PteMergeError("no programs to merge")
    files = [deserialize_pte_binary(b) for b in blobs]
    merged = files[0].program
    for i, f in enumerate(files):
        if f.mutable_data:
            raise PteMergeError(f"program {i} holds mutable buffers; only programs whose state is passed in and "
                                "out can be merged")
        if f.program.version != merged.version:
            raise PteMergeError(f"program {i} has schema version {f.program.version}, program 0 has "
                                f"{merged.version}")
    names = [p.name for p in merged.execution_plan]
    constants = {_digest(b.storage): j for j, b in enumerate(merged.constant_buffer) if j > 0}
    store = NamedDataStore()
    for f in files:
        if f.named_data is None:
            continue
        for key, entry in f.named_data.pte_data.items():
            _add_named(store, key, f.named_data.buffers[entry.buffer_index], entry.alignment)
    for i, f in enumerate(files[1:], start=1):
        prog = f.program
        remap = {0: 0}
        for j, buf in enumerate(prog.constant_buffer):
            if j == 0:
                continue
            key = _digest(buf.storage)
            if key not in constants:
                constants[key] = len(merged.constant_buffer)
                merged.constant_buffer.append(buf)
            remap[j] = constants[key]
        delegate_offset = len(merged.backend_delegate_data)
        merged.backend_delegate_data.extend(prog.backend_delegate_data)
        for plan in prog.execution_plan:
            if plan.name in names:
                raise PteMergeError(f"method {plan.name!r} is in more than one program")
            names.append(plan.name)
            for value in plan.values:
                if isinstance(value.val, Tensor) and value.val.data_buffer_idx:
                    value.val.data_buffer_idx = remap[value.val.data_buffer_idx]
            for delegate in plan.delegates:
                if delegate.processed.location != DataLocation.INLINE:
                    raise PteMergeError(f"method {plan.name!r}: a delegate blob was not restored inline")
                delegate.processed.index += delegate_offset
            merged.execution_plan.append(plan)
    named = store.get_named_data_store_output() if any(f.named_data for f in files) else None
    out = serialize_pte_binary(PTEFile(program=merged, mutable_data=None, named_data=named),
                               extract_delegate_segments=True, segment_alignment=segment_alignment)
    return bytes(out)


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _add_named(store, key: str, data: bytes, alignment: int) -> None:
    """Add ``key``; the same key from another program must hold the same bytes (the store checks)."""
    try:
        store.add_named_data(key, data, alignment=alignment)
    except ValueError as exc:
        raise PteMergeError(f"named data {key!r} differs between the programs: {exc}") from exc
