"""Artifacts and state files from outside: paths that leave the folder, shapes that would exhaust memory,
and compressed state files are refused with a typed error before the file is read or the memory allocated."""
import json
import os
import shutil
import struct
import zipfile
import zlib

import numpy as np
import onnx
import pytest

from runtime import (ArtifactError, InfiniSession, InputError, Manifest, ManifestError, StateError,
                     UnsafePathError)
from runtime.manifest import sha256_file
from runtime.npz_reader import read_npz
from tests.guards import PEAK_RSS_RESETTABLE, opened_files, peak_rss_growth, reads_under
from tests.manifest_fuzz import base_manifest
from tests.statefile_fuzz import split
from tests.no_program import NoProgram

RSS_BOUND = 16 << 20
needs_rss = pytest.mark.skipif(not PEAK_RSS_RESETTABLE, reason="needs Linux /proc/self/clear_refs")


def _age_atime(path):
    """Set the access time before the modification time: with relatime, the next read moves it."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
    return st.st_mtime_ns - 10**12


def _atime_shows_reads(tmp_path) -> bool:
    probe = tmp_path / "atime_probe"
    probe.write_bytes(b"x")
    old = _age_atime(probe)
    probe.read_bytes()
    return os.stat(probe).st_atime_ns != old


@pytest.fixture
def art_and_outside(onnx_artifacts, tmp_path):
    _, src = onnx_artifacts["delta"]
    art, out = tmp_path / "art", tmp_path / "outside"
    shutil.copytree(src, art)
    out.mkdir()
    shutil.copyfile(src / "model.onnx", out / "model.onnx")  # same bytes, same hash: a breach would succeed
    return art, out


def _edit(art, edit):
    man = json.loads((art / "manifest.json").read_text())
    edit(man)
    (art / "manifest.json").write_text(json.dumps(man))


def test_paths_outside_the_artifact_folder_are_refused_before_any_read(art_and_outside, tmp_path):
    art, out = art_and_outside
    entry = json.loads((art / "manifest.json").read_text())["files"]["program"]
    atime = _age_atime(out / "model.onnx")
    cases = {
        "relative": ("program", "../outside/model.onnx"),
        "absolute": ("program", str(out / "model.onnx")),
        "symlink": ("program", "link"),
        "a later section": ("decode", "sub/../../outside/model.onnx"),  # any entry of files, used or not
    }
    os.symlink("../outside/model.onnx", art / "link")
    for what, (key, path) in cases.items():
        _edit(art, lambda m: m["files"].update({"program": entry, key: {**entry, "path": path}}))
        with opened_files() as seen, pytest.raises(UnsafePathError) as info:
            InfiniSession.open(art)
        assert f"files.{key}.path" in str(info.value), what
        assert not reads_under(seen, out), what
        _edit(art, lambda m: m["files"].pop("decode", None))
    if _atime_shows_reads(tmp_path):
        assert os.stat(out / "model.onnx").st_atime_ns == atime, "the program outside the folder was read"
    # a symlink that stays inside the folder is fine
    os.symlink("model.onnx", art / "alias.onnx")
    _edit(art, lambda m: m["files"].__setitem__("program", {**entry, "path": "alias.onnx"}))
    assert InfiniSession.open(art).feed(np.arange(20) % 256).shape == (20, 256)
    # manifest.json itself must not lead out either
    (art / "manifest.json").rename(out / "manifest.json")
    os.symlink("../outside/manifest.json", art / "manifest.json")
    with pytest.raises(UnsafePathError, match="manifest.json"):
        Manifest.load(art)


def test_onnx_external_data_outside_the_folder_is_refused(art_and_outside, tmp_path):
    """The runtime does not parse ONNX: onnxruntime's own check (which resolves symlinks) refuses external
    data that leaves the model's folder before reading it; this pins that behaviour of the installed version."""
    art, out = art_and_outside
    model = onnx.load(str(art / "model.onnx"))
    onnx.save_model(model, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.data", size_threshold=1024)
    atime = _age_atime(out / "w.data")
    locations = {"relative": "../outside/w.data", "absolute": str(out / "w.data"), "symlink": "w.data"}
    for what, location in locations.items():
        proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
        for tensor in proto.graph.initializer:
            for kv in tensor.external_data:
                if kv.key == "location":
                    kv.value = location
        onnx.save(proto, str(art / "model.onnx"))
        (art / "w.data").unlink(missing_ok=True)
        if what == "symlink":
            os.symlink("../outside/w.data", art / "w.data")
        _edit(art, lambda m: m["files"]["program"].update(sha256=sha256_file(art / "model.onnx"),
                                                          bytes=(art / "model.onnx").stat().st_size))
        with pytest.raises(ArtifactError, match="escapes model directory|Absolute path not allowed"):
            InfiniSession.open(art)
    if _atime_shows_reads(tmp_path):
        assert os.stat(out / "w.data").st_atime_ns == atime, "external data outside the folder was read"


def _huge_state(man):
    last = [man["last_logits"]["inputs"][1], man["last_logits"]["outputs"][1]] if "last_logits" in man else []
    for entry in (man["state"][0], man["inputs"][1], man["outputs"][1], *last):
        entry["shape"] = ["batch", 4, 32, 200_000_000]  # 95 GiB of float32 per batch row


@needs_rss
def test_a_huge_state_shape_is_refused_before_allocation(art_and_outside):
    art, _ = art_and_outside
    _edit(art, _huge_state)
    import onnxruntime  # noqa: F401 - imported before measuring: its import is not what is measured
    error, growth = peak_rss_growth(lambda: InfiniSession.open(art))
    assert isinstance(error, ArtifactError) and "max_state_bytes" in str(error) and "bytes per batch row" in str(error)
    assert growth <= RSS_BOUND, growth
    # above the bound on purpose: the program's own shapes refuse the manifest's
    error, growth = peak_rss_growth(lambda: InfiniSession.open(art, max_state_bytes=1 << 40))
    assert isinstance(error, ArtifactError), error
    assert "'past_memory.0' has shape ['batch', 2, 16, 16]" in str(error) and "200000000" in str(error)
    assert growth <= RSS_BOUND, growth


def test_max_state_bytes_bounds_open_and_reset(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    row = Manifest.load(art).state_bytes(1)
    with pytest.raises(ArtifactError, match="max_state_bytes"):
        InfiniSession.open(art, max_state_bytes=row - 1)
    s = InfiniSession.open(art, max_state_bytes=4 * row)
    with pytest.raises(InputError, match="max_state_bytes"):
        s.reset(batch_size=5)
    s.reset(batch_size=4)
    with pytest.raises(InputError, match="max_state_bytes"):
        InfiniSession.open(art, max_state_bytes=True)


def _zip(members) -> bytes:
    """A zip from (name, method, crc, uncompressed size, raw bytes) without compressing anything here."""
    body, directory = b"", b""
    for name, method, crc, usize, raw in members:
        n = name.encode()
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(raw), usize, len(n), 0)
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(raw), usize,
                                 len(n), 0, 0, 0, 0, 0, len(body)) + n
        body += local + n + raw
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), len(body), 0)
    return body + directory + end


def _bomb_members(npy_header: bytes, zeros: int):
    """A deflate stream of ``npy_header`` + ``zeros`` zero bytes (a multiple of 1 MiB), built from one repeated
    block, and the CRC of what it inflates to."""
    c, mib = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(1 << 20)
    head = c.compress(npy_header) + c.flush(zlib.Z_FULL_FLUSH)
    first = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    n = zeros >> 20
    raw = head + first + block * (n - 1) + c.flush()
    crc = zlib.crc32(npy_header)
    for _ in range(n):
        crc = zlib.crc32(mib, crc)
    return raw, crc


@needs_rss
def test_a_decompression_bomb_state_file_is_refused_before_inflating(tmp_path, monkeypatch):
    s = InfiniSession(Manifest.from_dict(base_manifest()), NoProgram())
    s.set_state(s.state, np.array([[1, 2, 3]]), 3)
    s.save_state(tmp_path / "good.npz")
    members = [(name, zipfile.ZIP_STORED, zlib.crc32(data), len(data), data)
               for name, data in split((tmp_path / "good.npz").read_bytes()) if name != "pending.npy"]
    header = b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + \
        b"{'descr': '<i8', 'fortran_order': False, 'shape': (1, 268435456), }".ljust(117) + b"\n"
    raw, crc = _bomb_members(header, 2 << 30)  # 2 GiB of pending tokens
    (tmp_path / "bomb.npz").write_bytes(_zip(members + [("pending.npy", zipfile.ZIP_DEFLATED, crc,
                                                         len(header) + (2 << 30), raw)]))
    assert (tmp_path / "bomb.npz").stat().st_size < 3 << 20
    with zipfile.ZipFile(tmp_path / "bomb.npz") as zf:  # a well-formed file: numpy would inflate it all
        assert zf.getinfo("pending.npy").file_size > 2 << 30
    before = s.state, s.pending_tokens, s.tokens_consumed

    def no_inflating(*args, **kwargs):
        raise AssertionError("the state file reader started to inflate a member")
    monkeypatch.setattr(zlib, "decompressobj", no_inflating)
    error, growth = peak_rss_growth(lambda: s.load_state(tmp_path / "bomb.npz"))
    assert isinstance(error, StateError) and "'pending'" in str(error) and "compressed" in str(error), error
    assert growth <= RSS_BOUND, growth
    for k, v in before[0].items():
        np.testing.assert_array_equal(s.state[k], v)
    np.testing.assert_array_equal(s.pending_tokens, before[1])
    assert s.tokens_consumed == before[2]


@needs_rss
def test_large_manifests_are_refused_within_the_memory_bound(tmp_path):
    """The size cap on manifest.json keeps even the costliest JSON (many tiny objects) small once parsed."""
    for n in (87_000, 88_000):  # just under and over the 256 KB cap, at 3 bytes per object
        (tmp_path / "manifest.json").write_text("[" + "{}," * (n - 1) + "{}]")
        error, growth = peak_rss_growth(lambda: Manifest.load(tmp_path))
        assert isinstance(error, ManifestError), error
        assert growth <= RSS_BOUND, (n, growth)


@pytest.mark.parametrize("edit", [
    ("segment_len", "16"), ("vocab_size", 256.0), ("format_version", True), ("state", {"memory.0": {}}),
    ("inputs", "input_ids"), ("batch", [1, 64]), ("batch", {"max": -3}), ("files", [{"path": "model.onnx"}]),
    ("program", {"format": "onnx", "file": 3}), ("initial_state", {"file": "nowhere"}), ("model_fingerprint", None),
    ("state.0.shape", ["batch", 2, "16", 16]), ("state.0.shape", ["batch", 2, -16, 16]),
    ("inputs.1.shape", ["batch", 2, 16, True]), ("inputs.1.dtype", ["float32"]), ("outputs.0.role", "state-out"),
    ("files.program.bytes", "2048"), ("files.program.sha256", 12), ("files.program.path", ["model.onnx"]),
    ("state.1.name", "memory.0"), ("state.0", "memory.0"), ("inputs.0.shape", ["batch", 17])])
def test_wrong_types_and_values_in_a_manifest_give_manifest_error(edit):
    key, value = edit
    man = base_manifest()
    *parents, last = key.split(".")
    node = man
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[int(last) if isinstance(node, list) else last] = value
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(man)
    assert str(info.value)


# ---- the state file reader's own API -------------------------------------------------------------
def test_statefile_reader_api(tmp_path):
    a = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    with open(tmp_path / "f.npz", "wb") as f:
        np.savez(f, x=a, n=np.arange(3), meta=np.frombuffer(b'{"k": 1}', dtype=np.uint8))
    arrays, meta = read_npz(tmp_path / "f.npz", {"x": (("rows", 4), "float32"), "n": (("rows",), "int64")})
    np.testing.assert_array_equal(arrays["x"], a)
    assert meta == {"k": 1}
    seen = []
    read_npz(tmp_path / "f.npz", {"x": lambda shape, dtype: seen.append((shape, dtype)), "n": ((3,), "int64")})
    assert seen == [((3, 4), np.dtype("float32"))]
    def at_most_two_rows(dims):
        if dims["rows"] > 2:
            raise StateError(f"too many rows: {dims}")
    with pytest.raises(StateError, match="too many rows"):
        read_npz(tmp_path / "f.npz", {"x": (("rows", 4), "float32"), "n": (("rows",), "int64")},
                 check_dims=at_most_two_rows)
    with pytest.raises(StateError, match="expected float64"):
        read_npz(tmp_path / "f.npz", {"x": ((3, 4), "float64"), "n": ((3,), "int64")})
    with pytest.raises(ArtifactError, match="more than the 10 allowed"):
        read_npz(tmp_path / "f.npz", {"x": ((3, 4), "float32"), "n": ((3,), "int64")}, max_bytes=10,
                 error=ArtifactError)
    data = (tmp_path / "f.npz").read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(StateError):
            read_npz(tmp_path / "cut.npz", {"x": ((3, 4), "float32"), "n": ((3,), "int64")})
    os.mkfifo(tmp_path / "fifo")  # must be refused, not waited on
    with pytest.raises(StateError, match="not a regular file"):
        read_npz(tmp_path / "fifo", {})
