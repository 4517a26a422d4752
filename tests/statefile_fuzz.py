"""State-file fuzzing material: split a valid ``.npz`` into members, rebuild it with edited headers, data,
names, compression and meta, or damage its bytes."""
import ast
import io
import json
import struct
import zipfile

import numpy as np
from hypothesis import strategies as st
from numpy.lib import format as npy


def split(blob: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def join(members, methods=None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (name, data) in enumerate(members):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = (methods or {}).get(i, zipfile.ZIP_STORED)
            zf.writestr(info, data)
    return buf.getvalue()


def parse_npy(data: bytes) -> tuple[dict, bytes]:
    f = io.BytesIO(data)
    version = npy.read_magic(f)
    hlen = struct.unpack("<H" if version == (1, 0) else "<I", f.read(2 if version == (1, 0) else 4))[0]
    header = ast.literal_eval(f.read(hlen).decode("latin1"))
    return header, data[f.tell():]


def make_npy(header, payload: bytes, version=(1, 0), raw_header: bytes | None = None) -> bytes:
    text = raw_header if raw_header is not None else repr(header).encode("latin1")
    text = text + b" " * ((-(len(text) + 11)) % 64) + b"\n"
    if version[0] == 1:
        size = struct.pack("<H", min(len(text), 0xFFFF))
    else:
        size = struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes(version) + size + text + payload


DESCRS = ["<f4", ">f4", "<f8", "<f2", "|u1", "<i8", "<i4", "|O", "<c8", "|V8", "|b1", "<U4", [("a", "<f4")], 7, None]
DIMS = [0, 1, 2, 3, 5, 15, 16, 17, 256, -1, 2**31, 2**40, 2**62, "x", None, 1.5]
METAS = [{"format": "other"}, {"version": 2}, {"model_fingerprint": "0" * 64}, {"tokens_consumed": -1},
         {"tokens_consumed": "12"}, {"tokens_consumed": 1.5}, {"tokens_consumed": True}, {"tokens_consumed": 10**30},
         {"tokens_consumed": None}, {"batch_size": 7}, {"names": 3}]


def member_edit():
    """(op, member index, argument): an edit of one member of the file."""
    i = st.integers(0, 20)
    return st.one_of(
        st.tuples(st.just("drop"), i, st.none()),
        st.tuples(st.just("dup"), i, st.none()),
        st.tuples(st.just("rename"), i, st.sampled_from(["x.npy", "../pending.npy", "state/memory.9.npy", "meta",
                                                         "pending.npy", "state/norm.0", "/abs.npy", ""])),
        st.tuples(st.just("compress"), i, st.sampled_from([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                                           zipfile.ZIP_LZMA])),
        st.tuples(st.just("descr"), i, st.sampled_from(DESCRS)),
        st.tuples(st.just("shape"), i, st.tuples(st.integers(0, 4), st.sampled_from(DIMS))),
        st.tuples(st.just("rank"), i, st.integers(-2, 2)),
        st.tuples(st.just("fortran"), i, st.sampled_from([True, "yes", None])),
        st.tuples(st.just("version"), i, st.sampled_from([(2, 0), (3, 0), (9, 9), (0, 0)])),
        st.tuples(st.just("raw_header"), i, st.binary(max_size=40) | st.sampled_from(
            [b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"(" * 300 + b")}", b"{" * 100])),
        st.tuples(st.just("data"), i, st.tuples(st.sampled_from(["cut", "grow", "flip", "nan"]),
                                                st.integers(0, 10**6))),
        st.tuples(st.just("meta"), i, st.sampled_from(METAS) | st.sampled_from(
            [b"not json", b"\xff\xfe", b"[1, 2]", b'"x"', b"[" * 100_000, b" " * (2 << 20), b"{}"])),
        st.tuples(st.just("pending"), i, st.sampled_from([(1, 16), (1, 15), (2, 5), (1, 0), (0, 5)])
                  | st.sampled_from([300, -1, 255])),
    )


def apply_member_edit(members, methods, edit):
    try:
        return _apply_member_edit(members, methods, edit)
    except Exception:  # noqa: BLE001 - an earlier edit broke what this one parses: leave the member as it is
        return members


def _apply_member_edit(members, methods, edit):
    op, i, arg = edit
    if not members:
        return members
    i %= len(members)
    name, data = members[i]
    if op == "drop":
        del members[i]
    elif op == "dup":
        members.append((name, data))
    elif op == "rename":
        members[i] = (arg, data)
    elif op == "compress":
        methods[i] = arg
    elif op == "meta":
        k = next((j for j, (n, _) in enumerate(members) if n == "meta.npy"), None)
        if k is not None:
            header, payload = parse_npy(members[k][1])
            if isinstance(arg, dict):
                meta = {**json.loads(payload.decode()), **arg}
                payload = json.dumps(meta).encode()
            else:
                payload = arg
            header["shape"] = (len(payload),)
            members[k] = ("meta.npy", make_npy(header, payload))
    elif op == "pending":
        k = next((j for j, (n, _) in enumerate(members) if n == "pending.npy"), None)
        if k is not None:
            header, payload = parse_npy(members[k][1])
            if isinstance(arg, tuple):
                arr = np.full(arg, 7, dtype=np.int64)
            else:
                arr = np.frombuffer(payload, dtype=np.int64).reshape(header["shape"]).copy()
                arr.flat[:1] = arg
            header["shape"] = arr.shape
            members[k] = ("pending.npy", make_npy(header, arr.tobytes()))
    else:
        header, payload = parse_npy(data)
        version, raw = (1, 0), None
        if op == "descr":
            header["descr"] = arg
        elif op == "shape":
            shape = list(header["shape"]) or [1]
            shape[arg[0] % len(shape)] = arg[1]
            header["shape"] = tuple(shape)
        elif op == "rank":
            shape = list(header["shape"])
            header["shape"] = tuple(shape[:len(shape) + arg] if arg < 0 else shape + [1] * arg)
        elif op == "fortran":
            header["fortran_order"] = arg
        elif op == "version":
            version = arg
        elif op == "raw_header":
            raw = arg
        elif op == "data":
            how, pos = arg
            if how == "cut":
                payload = payload[:pos % (len(payload) + 1)]
            elif how == "grow":
                payload = payload + bytes(pos % 64 + 1)
            elif payload:
                b = bytearray(payload)
                if how == "flip":
                    b[pos % len(b)] ^= 0x40
                else:
                    b[:4] = np.float32(np.nan).tobytes()
                payload = bytes(b)
        members[i] = (name, make_npy(header, payload, version, raw))
    return members


byte_edit = st.tuples(st.sampled_from(["cut", "flip", "append", "zero", "insert"]), st.integers(0, 10**6),
                      st.integers(1, 64))


def apply_byte_edit(blob: bytes, edit) -> bytes:
    how, pos, n = edit
    pos %= len(blob) + 1
    if how == "cut":
        return blob[:pos]
    if how == "append":
        return blob + bytes(range(n))
    if how == "insert":
        return blob[:pos] + b"PK\x03\x04"[:n % 5] + blob[pos:]
    b = bytearray(blob)
    for j in range(pos, min(pos + n, len(b))):
        b[j] = 0 if how == "zero" else b[j] ^ 0xFF
    return bytes(b)
