"""Bytes of an ONNX graph's initializers, read from the protobuf wire format (no ``onnx`` package on a device).

What ``onnx.load(path, load_external_data=True)`` would give summed over ``graph.initializer``: the length of
each tensor's raw data, inline or external (``location``/``offset``/``length``), or its element count times its
element size for the typed fields.
"""
from __future__ import annotations

import mmap
from pathlib import Path

from ..errors import ArtifactError

# TensorProto.DataType -> bytes per element (the packed 4-bit types count one byte per element, as numpy does)
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
             17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1, 24: 1, 25: 1}
_GRAPH, _INITIALIZER = 7, 5  # ModelProto.graph, GraphProto.initializer
_DIMS, _DATA_TYPE, _RAW, _EXTERNAL = 1, 2, 9, 13


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf, lo: int, hi: int):
    """(field number, wire type, value or (start, end) of a length-delimited field) of one message."""
    pos = lo
    while pos < hi:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = (pos, pos + n), pos + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > hi:
            raise ValueError("a field runs past its message")
        yield field, wire, value


def _tensor_bytes(buf, lo: int, hi: int, folder: Path) -> int:
    dims, dtype, raw, external = [], 0, None, {}
    for field, wire, value in _fields(buf, lo, hi):
        if field == _DIMS:
            if wire == 0:
                dims.append(value)
            else:  # packed
                pos, end = value
                while pos < end:
                    d, pos = _varint(buf, pos)
                    dims.append(d)
        elif field == _DATA_TYPE:
            dtype = value
        elif field == _RAW:
            raw = value[1] - value[0]
        elif field == _EXTERNAL:
            entry = dict((f, bytes(buf[v[0]:v[1]]).decode()) for f, _, v in _fields(buf, *value))
            external[entry.get(1, "")] = entry.get(2, "")
    if external:
        if "length" in external:
            return int(external["length"])
        return (folder / external["location"]).stat().st_size - int(external.get("offset", 0))
    if raw is not None:
        return raw
    count = 1
    for d in dims:
        count *= d
    return count * _ITEMSIZE.get(dtype, 4)


def onnx_weights_bytes(path: str | Path) -> int:
    """Bytes of the initializers of the ONNX model at ``path`` (external data resolved next to it)."""
    path = Path(path)
    total = 0
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for field, wire, value in _fields(buf, 0, len(buf)):
                if field == _GRAPH and wire == 2:
                    for f2, w2, v2 in _fields(buf, *value):
                        if f2 == _INITIALIZER and w2 == 2:
                            total += _tensor_bytes(buf, *v2, path.parent)
    except (ValueError, KeyError, UnicodeDecodeError, OSError) as exc:
        raise ArtifactError(f"{path} is not a readable ONNX model ({exc}); expected an ONNX ModelProto") from None
    return total
