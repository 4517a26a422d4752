"""State files (``.npz``) read as untrusted input: every member's name, dtype and shape is checked against what
the caller expects, from the zip directory and the ``.npy`` headers, before any array data is read.

Refused: compressed or encrypted members (a small file could inflate to gigabytes), missing, extra or
duplicate members, dtypes or shapes other than expected (object arrays with them: no pickle), data sizes
other than the header announces, CRC mismatches, truncation. Every refusal is the caller's error type.
"""
from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
import zipfile
from typing import Callable, Mapping, Union

import numpy as np
from numpy.lib import format as npy

from .errors import InfiniRuntimeError, StateError

MAX_HEADER = 1 << 14  # bytes of a .npy header (numpy writes ~128)
MAX_META = 1 << 20  # bytes of the JSON meta member
_CD_BYTES_PER_MEMBER = 1024  # central directory bytes per member: 46 + name + extras, generously
_CHUNK = 1 << 20

# a member: (shape, dtype), a dim an int or a name ("batch") sized by the file, the same name the same size in
# every member; or a callable check(shape, dtype) that raises to refuse (then pass max_bytes)
Expected = Union[tuple, Callable[[tuple, np.dtype], None]]


def read_npz(source, members: Mapping[str, Expected], *, meta: str | None = "meta",
             check_dims: Callable[[dict[str, int]], None] | None = None, max_bytes: int | None = None,
             error: type[InfiniRuntimeError] = StateError) -> tuple[dict[str, np.ndarray], dict | None]:
    """Read an ``.npz`` holding exactly ``members`` (plus a ``meta`` JSON object unless ``meta`` is None).

    ``source`` is a path or a binary file object. Member names are given without ``.npy``. After every
    header is checked, ``check_dims({name: size})`` may refuse the sizes the file chose for named dims (raise
    from it); ``max_bytes`` bounds the total array bytes. Returns ``({member: array}, meta dict or None)``.
    """
    label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the state file"
    try:
        with _open(source, label, error) as f:
            return _read(f, label, members, meta, check_dims, max_bytes, error)
    except InfiniRuntimeError:
        raise
    except FileNotFoundError:
        raise error(f"state file {label} does not exist") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error,
            NotImplementedError, RuntimeError, OverflowError, RecursionError, MemoryError) as exc:
        raise error(f"{label} is not a readable state file (truncated or corrupt?): "
                    f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _open(source, label: str, error):
    if not isinstance(source, (str, os.PathLike)):
        return _Borrowed(source)
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block us
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"state file {label} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Borrowed:
    """A caller's file object: used, not closed."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


def _read(f, label, members, meta, check_dims, max_bytes, error):
    wanted = dict(members)
    if meta is not None:
        wanted[meta] = ((None,), "uint8")
    endrec = zipfile._EndRecData(f)  # the end record only: bounds what ZipFile parses next
    if endrec is None:
        raise error(f"{label} is not a zip (.npz) file: no end of central directory (truncated?)")
    if endrec[zipfile._ECD_SIZE] > _CD_BYTES_PER_MEMBER * len(wanted):
        raise error(f"{label} has a zip directory of {endrec[zipfile._ECD_SIZE]} bytes; {len(wanted)} members "
                    f"need at most {_CD_BYTES_PER_MEMBER * len(wanted)}")
    f.seek(0)
    zf = zipfile.ZipFile(f)
    infos = zf.infolist()
    names = [i.filename[:-4] if i.filename.endswith(".npy") else i.filename for i in infos]
    if len(set(names)) != len(names) or sorted(names) != sorted(wanted):
        raise error(f"{label} holds the members {sorted(names)[:20]}, expected {sorted(wanted)} (each once, "
                    "as .npy)")
    headers, dims = {}, {}
    for name, info in zip(names, infos):
        if info.flag_bits & 0x1 or info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise error(f"{label}: member {name!r} is compressed or encrypted (zip method {info.compress_type}); "
                        "expected it stored uncompressed, as save_state writes it (compressed members are "
                        "refused: a small file could inflate to gigabytes)")
        shape, fortran, dtype, offset = _header(zf, info, label, name, error)
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size - offset != nbytes:
            raise error(f"{label}: member {name!r} holds {info.file_size - offset} bytes of data, its header "
                        f"announces {dtype} {shape} = {nbytes} bytes (truncated or padded)")
        _check_member(wanted[name], name, shape, dtype, dims, label, error)
        headers[name] = (info, shape, fortran, dtype, offset)
    if meta is not None and headers[meta][0].file_size - headers[meta][4] > MAX_META:
        raise error(f"{label}: member {meta!r} is larger than {MAX_META} bytes")
    if check_dims is not None:
        check_dims(dict(dims))
    total = sum(math.prod(h[1]) * h[3].itemsize for h in headers.values())
    if max_bytes is not None and total > max_bytes:
        raise error(f"{label} holds {total} bytes of arrays, more than the {max_bytes} allowed")
    arrays = {name: _data(zf, *headers[name], label, name, error) for name in names}
    meta_dict = None
    if meta is not None:
        try:
            meta_dict = json.loads(arrays.pop(meta).tobytes().decode())
        except (ValueError, RecursionError) as exc:
            raise error(f"{label}: member {meta!r} is not UTF-8 JSON: {str(exc)[:100]}") from None
        if not isinstance(meta_dict, dict):
            raise error(f"{label}: member {meta!r} holds a JSON {type(meta_dict).__name__}, expected an object")
    return arrays, meta_dict


def _header(zf, info, label, name, error):
    with zf.open(info) as m:
        head = io.BytesIO(m.read(min(info.file_size, MAX_HEADER + 12)))
    try:
        version = npy.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(head, max_header_size=MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(head, max_header_size=MAX_HEADER)
        else:
            raise ValueError(f"npy format version {version}, expected 1.0 or 2.0")
    except Exception as exc:  # numpy parses the header text with tokenize and ast: any of their errors
        raise error(f"{label}: member {name!r} has no valid .npy header: {type(exc).__name__}: "
                    f"{str(exc)[:200]}") from None
    if not isinstance(fortran, bool) or dtype.hasobject or any(not isinstance(d, int) or d < 0 for d in shape):
        raise error(f"{label}: member {name!r} has an unusable header ({dtype}, shape {shape}); expected plain "
                    "numbers, no objects")
    return tuple(shape), fortran, dtype, head.tell()


def _check_member(spec, name, shape, dtype, dims, label, error) -> None:
    if callable(spec):
        spec(shape, dtype)
        return
    want_shape, want_dtype = spec
    bad = dtype != np.dtype(want_dtype) or len(shape) != len(want_shape)
    for want, got in zip(want_shape, shape):
        if isinstance(want, int):
            bad = bad or want != got
        elif want is not None:
            bad = bad or dims.setdefault(want, got) != got
    if bad:
        raise error(f"{label}: member {name!r} is {dtype} {shape}, expected {np.dtype(want_dtype)} "
                    f"{tuple(want_shape)}" + (f" with {dims}" if dims else ""))


def _data(zf, info, shape, fortran, dtype, offset, label, name, error) -> np.ndarray:
    nbytes = info.file_size - offset
    buf = np.empty(nbytes, dtype=np.uint8)
    with zf.open(info) as m:
        m.read(offset)
        pos = 0
        while pos < nbytes:
            chunk = m.read(min(_CHUNK, nbytes - pos))
            if not chunk:
                raise error(f"{label}: member {name!r} ends after {pos} of {nbytes} data bytes (truncated)")
            buf[pos:pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            pos += len(chunk)
        m.read()  # at the end: zipfile checks the CRC
    return buf.view(dtype).reshape(shape, order="F" if fortran else "C")
