"""One weight file for every graph of an ONNX artifact: initializers stored once, shared by content.

The segment step and the decode program are traced from the same module, so their large initializers
(the linear layers, the embedding, RoPE tables) are byte-identical. Each distinct one is written once
to ``weights.bin`` (aligned for memory mapping) and every graph refers to it as ONNX external data;
small initializers (shape constants, scalars) stay inside the graphs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from runtime.atomic import atomic_write

WEIGHTS_FILE = "weights.bin"
ALIGN = 4096  # page-aligned offsets: onnxruntime can map them instead of copying
MIN_EXTERNAL_BYTES = 1024


def _tensor_bytes(t: onnx.TensorProto) -> bytes:
    return t.raw_data if t.HasField("raw_data") else np.ascontiguousarray(numpy_helper.to_array(t)).tobytes()


def write_shared(models: dict[str, onnx.ModelProto], out_dir: Path) -> dict:
    """Write each ``{file name: model}`` into ``out_dir`` with its large initializers in one shared file.

    Returns ``{"file": ..., "bytes": ..., "tensors": n stored, "references": n referring}``.
    """
    blobs: dict[str, tuple[int, int]] = {}  # sha256 -> (offset, length)
    chunks: list[bytes] = []
    size = 0
    refs = 0
    for model in models.values():
        for t in model.graph.initializer:
            data = _tensor_bytes(t)
            if len(data) < MIN_EXTERNAL_BYTES:
                continue
            key = hashlib.sha256(f"{t.data_type}:{list(t.dims)}:".encode() + data).hexdigest()
            if key not in blobs:
                pad = (-size) % ALIGN
                chunks.append(b"\0" * pad)
                size += pad
                blobs[key] = (size, len(data))
                chunks.append(data)
                size += len(data)
            offset, length = blobs[key]
            _make_external(t, offset, length)
            refs += 1
    atomic_write(out_dir / WEIGHTS_FILE, lambda f: [f.write(c) for c in chunks])
    for name, model in models.items():
        text = model.SerializeToString()
        atomic_write(out_dir / name, lambda f: f.write(text))
        onnx.checker.check_model(str(out_dir / name))  # by path: its external data is read beside it
    return {"file": WEIGHTS_FILE, "bytes": size, "tensors": len(blobs), "references": refs}


def _make_external(t: onnx.TensorProto, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        t.ClearField(field)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = k, v
