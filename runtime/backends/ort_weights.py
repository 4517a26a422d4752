"""One copy of an ONNX artifact's weights for all its graphs: ``weights.bin`` mapped once, every graph handed the
same buffers (onnxruntime ``add_initializer`` uses the caller's memory; prepacking, which would copy each weight
per session, is turned off for those sessions)."""
from __future__ import annotations

import numpy as np

from ..errors import ArtifactError


def shared_initializers(manifest, ort) -> tuple[dict, object]:
    """``({files key: [(name, OrtValue), ...]}, the mapping to keep alive)``; empty without ``shared_weights``."""
    sw = manifest.shared_weights
    if not sw:
        return {}, None
    path = manifest.file_path(sw.file)
    size = path.stat().st_size
    buf = np.memmap(path, dtype=np.uint8, mode="c") if size else np.zeros(0, np.uint8)  # private, never written
    out = {}
    for key, entries in sw.graphs.items():
        values = []
        for entry in entries:
            try:
                name, offset, length, dtype, dims = entry
                dt = np.dtype(dtype)
                count = int(np.prod(dims)) if dims else 1
            except (TypeError, ValueError) as exc:
                raise ArtifactError(f"shared weight entry {entry!r} is malformed: {exc}") from None
            if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset and offset + length <= size
                    and count * dt.itemsize == length and offset % dt.itemsize == 0):
                raise ArtifactError(f"shared weight {name!r} at [{offset}, {offset}+{length}) of {dtype} {dims} does "
                                    f"not fit {path.name} ({size} bytes)")
            arr = buf[offset:offset + length].view(dt).reshape(dims)
            values.append((name, ort.OrtValue.ortvalue_from_numpy(arr)))
        out[key] = values
    return out, buf
