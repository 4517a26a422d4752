"""Fuzzed manifests: every mutation (type, value, shape, path, hash, structure) either opens or raises a typed
error with a message; nothing outside the artifact folder is opened; a refused load stays within 16 MB."""
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from runtime import InfiniRuntimeError, InfiniSession, Manifest
from runtime.backends.ort import check_graph_io
from runtime.manifest import sha256_file
from tests.guards import PEAK_RSS_RESETTABLE, opened_files, peak_rss_growth, reads_under
from tests.manifest_fuzz import apply, base_manifest, graph_io, make_trap_folder, mutations, path_values
from tests.no_program import NoProgram

RSS_BOUND = 16 << 20
BATCH = 20  # cases per hypothesis example: generation, not the case, dominates the cost of an example
FAST_CASES, FILE_CASES, OPEN_CASES = 6000, 1500, 40


def fuzz_settings(n):
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def traps(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest_fuzz")
    art, out = make_trap_folder(root)
    return root, art, out


def run_case(load, out, allowed_growth=RSS_BOUND):
    """Run ``load()``; return True if it was accepted. Refusals must be typed, explained, small, and nothing
    outside ``out`` may be opened either way."""
    with opened_files() as seen:
        if PEAK_RSS_RESETTABLE:
            error, growth = peak_rss_growth(load, collect=False)
        else:
            error, growth = None, 0
            try:
                load()
            except Exception as exc:  # noqa: BLE001
                error = exc
    assert not reads_under(seen, out), f"opened outside the artifact folder: {reads_under(seen, out)}"
    if error is None:
        return True
    if not isinstance(error, InfiniRuntimeError):
        raise AssertionError(f"raw {type(error).__name__} escaped: {error!r}") from error
    assert str(error).strip()
    assert growth <= allowed_growth, f"refused load grew the peak RSS by {growth / 2**20:.1f} MB: {error}"
    return False


def test_fuzzed_manifests_are_opened_or_refused_with_a_typed_error(traps, fuzz_counts):
    root, art, out = traps
    base = base_manifest()
    graph = graph_io(base)
    real_art = os.path.realpath(art)
    outcome = {"accepted": 0, "refused": 0}

    def load(doc):
        m = Manifest.from_dict(doc, art)
        m.verify_files()
        m.program_path()  # what a backend opens
        check_graph_io(m, *graph)
        InfiniSession(m, NoProgram())  # bounds, then allocates the state and reads an initial-state file if named
        for path in m.check_paths().values():
            assert os.path.realpath(path).startswith(real_art + os.sep)

    @fuzz_settings(FAST_CASES // BATCH)
    @given(batch=st.lists(st.lists(mutations(path_values(root)), min_size=1, max_size=3), min_size=BATCH,
                          max_size=BATCH))
    def case(batch):
        for edits in batch:
            doc = apply(base, edits)
            outcome["accepted" if run_case(lambda: load(doc), out) else "refused"] += 1

    case()
    fuzz_counts["manifests"] = fuzz_counts.get("manifests", 0) + sum(outcome.values())
    assert sum(outcome.values()) >= FAST_CASES * 0.9 and outcome["accepted"] >= 50 and outcome["refused"] >= 1000, \
        outcome


def _text_edit(text: str, op: str, pos: int, junk: str) -> str:
    pos = pos % (len(text) + 1)
    return {"cut": text[:pos], "insert": text[:pos] + junk + text[pos:], "replace": text[:pos] + junk +
            text[pos + len(junk):], "nest": "[" * 5000 + "]" * 5000, "number": text.replace("16", "1" * 5000, 1),
            "nan": text.replace("16", "NaN", 1), "bom": "\ufeff" + text, "none": text}[op]


def test_fuzzed_manifest_files_are_read_or_refused(traps, fuzz_counts):
    """Manifest.load on mutated JSON text (cut, spliced, deeply nested, huge numbers) in the trap folder."""
    root, art, out = traps
    base = base_manifest()
    count = {"n": 0}

    def load():
        m = Manifest.load(art)
        m.verify_files()

    edit = st.tuples(st.lists(mutations(path_values(root)), max_size=2),
                     st.sampled_from(["cut", "insert", "replace", "nest", "number", "nan", "bom", "none"]),
                     st.integers(0, 10_000), st.text(max_size=6) | st.sampled_from(['"', "{", "]", ",", "\\u0000"]),
                     st.booleans())

    @fuzz_settings(FILE_CASES // BATCH)
    @given(batch=st.lists(edit, min_size=BATCH, max_size=BATCH))
    def case(batch):
        for edits, op, pos, junk, raw in batch:
            text = _text_edit(json.dumps(apply(base, edits)), op, pos, junk)
            data = text.encode("utf-8", "surrogatepass")
            if raw:
                data = data[:pos % (len(data) + 1)] + b"\xff" + data[pos % (len(data) + 1):]
            (art / "manifest.json").write_bytes(data)
            count["n"] += 1
            run_case(load, out)

    try:
        case()
    finally:
        (art / "manifest.json").unlink(missing_ok=True)
    fuzz_counts["manifest files"] = fuzz_counts.get("manifest files", 0) + count["n"]
    assert count["n"] >= FILE_CASES * 0.9


def test_fuzzed_manifests_of_a_real_artifact(onnx_artifacts, tmp_path, fuzz_counts):
    """Fewer cases, each a full InfiniSession.open with onnxruntime: the graph checks the manifest's I/O; a
    copy of the program outside the folder (same bytes, same hash) is never opened (audit hook and atime)."""
    _, src = onnx_artifacts["delta"]
    art, out = tmp_path / "art", tmp_path / "outside"
    shutil.copytree(src, art)
    out.mkdir()
    shutil.copyfile(src / "model.onnx", out / "model.onnx")
    os.symlink("../outside/model.onnx", art / "link_out")
    base = json.loads((src / "manifest.json").read_text())
    sha, size = sha256_file(art / "model.onnx"), (art / "model.onnx").stat().st_size
    paths = path_values(tmp_path)
    st_out = os.stat(out / "model.onnx")
    os.utime(out / "model.onnx", ns=(st_out.st_mtime_ns - 10**12, st_out.st_mtime_ns))  # relatime: a read shows
    outcome = {"accepted": 0, "refused": 0}

    def load():
        s = InfiniSession.open(art)
        assert s.feed(np.arange(20) % 256).shape == (20, 256)

    @fuzz_settings(OPEN_CASES)
    @given(edits=st.lists(mutations(paths), min_size=1, max_size=2))
    @example(edits=[])  # the control: the artifact as exported opens
    @example(edits=[("add", ("format",), [1]), ("set", ("files", "decode", "path"), "sub/../model.onnx")])
    def case(edits):
        doc = apply(base, edits)
        files = doc.get("files")
        if isinstance(files, dict):  # new entries point at the real program, not the stand-in of the fast fuzz
            for entry in files.values():
                if isinstance(entry, dict) and entry.get("bytes") == 2048:
                    entry.update(sha256=sha, bytes=size)
        (art / "manifest.json").write_text(json.dumps(doc))
        ok = run_case(load, out, allowed_growth=RSS_BOUND)
        outcome["accepted" if ok else "refused"] += 1

    case()
    fuzz_counts["full opens"] = fuzz_counts.get("full opens", 0) + sum(outcome.values())
    assert os.stat(out / "model.onnx").st_atime_ns == st_out.st_mtime_ns - 10**12, "the outside copy was read"
    assert outcome["accepted"] >= 2 and outcome["refused"] >= OPEN_CASES // 2, outcome
