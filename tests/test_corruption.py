"""Corrupt and mismatched artifacts are refused at open with a clear, typed error."""
import json
import shutil

import numpy as np
import onnx
import pytest

from runtime import ArtifactError, InfiniRuntimeError, InfiniSession, ManifestError
from runtime.manifest import sha256_file
from tests.conftest import FUZZ_COUNTS

TRIED = []  # what each refused artifact had wrong, printed in the terminal summary (tests/conftest.py)


@pytest.fixture(autouse=True, scope="module")
def _report_tried(pytestconfig):
    yield
    counts = pytestconfig.stash.setdefault(FUZZ_COUNTS, {})
    counts["corrupt artifacts"] = counts.get("corrupt artifacts", 0) + len(TRIED)


def _external(art, dst):
    """A copy of the artifact with its weights in an external data file, listed in the manifest."""
    shutil.copytree(art, dst)
    model = onnx.load(str(dst / "model.onnx"))
    onnx.save_model(model, str(dst / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    man = json.loads((dst / "manifest.json").read_text())
    for key, rel in (("program", "model.onnx"), ("program_data", "model.onnx.data")):
        man["files"][key] = {"path": rel, "sha256": sha256_file(dst / rel), "bytes": (dst / rel).stat().st_size}
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


@pytest.fixture(scope="module")
def ext_art(onnx_artifacts, tmp_path_factory):
    return _external(onnx_artifacts["delta"][1], tmp_path_factory.mktemp("ext") / "art")


def _expect(art, error, what):
    TRIED.append(what)
    with pytest.raises(error) as info:
        InfiniSession.open(art)
    assert str(info.value), what
    return str(info.value)


def test_external_data_artifact_runs(ext_art, onnx_artifacts):
    ref = InfiniSession.open(onnx_artifacts["delta"][1]).feed(np.arange(50) % 256)
    got = InfiniSession.open(ext_art).feed(np.arange(50) % 256)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("file", ["model.onnx", "model.onnx.data"])
def test_bit_flips_and_truncations_detected(ext_art, tmp_path, file):
    rng = np.random.default_rng(0)
    size = (ext_art / file).stat().st_size
    for i, pos in enumerate(rng.integers(0, size, 6)):
        art = tmp_path / f"flip{i}"
        shutil.copytree(ext_art, art)
        data = bytearray((art / file).read_bytes())
        data[pos] ^= 1 << int(rng.integers(0, 8))
        (art / file).write_bytes(bytes(data))
        assert "sha256" in _expect(art, ArtifactError, f"bit flip in {file} at byte {pos}")
    for i, cut in enumerate([0, 1, size // 3, size - 1]):
        art = tmp_path / f"cut{i}"
        shutil.copytree(ext_art, art)
        (art / file).write_bytes((art / file).read_bytes()[:cut])
        assert "bytes" in _expect(art, ArtifactError, f"{file} truncated to {cut} bytes")


def test_truncation_with_matching_hash_still_refused(ext_art, tmp_path):
    """An exporter that wrote a broken file and hashed it: parsing catches what the hash cannot."""
    for file in ("model.onnx", "model.onnx.data"):
        art = tmp_path / file
        shutil.copytree(ext_art, art)
        (art / file).write_bytes((art / file).read_bytes()[:100])
        man = json.loads((art / "manifest.json").read_text())
        key = "program" if file == "model.onnx" else "program_data"
        man["files"][key].update(sha256=sha256_file(art / file), bytes=100)
        (art / "manifest.json").write_text(json.dumps(man))
        _expect(art, ArtifactError, f"{file} truncated, hash updated")


def test_manifest_problems(onnx_artifacts, tmp_path):
    (_, delta), (_, linear) = onnx_artifacts["delta"], onnx_artifacts["linear"]

    def variant(name, edit):
        art = tmp_path / name
        shutil.copytree(delta, art)
        edit(art)
        return art

    def set_json(key, value):
        def edit(art):
            man = json.loads((art / "manifest.json").read_text())
            man[key] = value
            (art / "manifest.json").write_text(json.dumps(man))
        return edit

    assert "format_version" in _expect(variant("newer", set_json("format_version", 2)), ManifestError,
                                       "newer format version")
    _expect(variant("fmt", set_json("format", "other")), ManifestError, "another format")
    _expect(variant("nomanifest", lambda a: (a / "manifest.json").unlink()), ManifestError, "missing manifest")
    _expect(variant("garbage", lambda a: (a / "manifest.json").write_text("{not json")), ManifestError,
            "garbage manifest")
    _expect(variant("nokeys", lambda a: (a / "manifest.json").write_text("{}")), ManifestError, "empty manifest")
    _expect(variant("missingfile", lambda a: (a / "model.onnx").unlink()), ArtifactError, "missing model file")
    other = variant("other", lambda a: shutil.copyfile(linear / "model.onnx", a / "model.onnx"))
    _expect(other, ArtifactError, "another model's program under this manifest")

    def rename_io(art):
        man = json.loads((art / "manifest.json").read_text())
        man["inputs"][1]["name"] = man["state"][0]["input"] = "past_memory.7"
        if "last_logits" in man:  # the last-token program declares the step's inputs: renamed alike
            man["last_logits"]["inputs"][1]["name"] = "past_memory.7"
        (art / "manifest.json").write_text(json.dumps(man))
    assert "do not match" in _expect(variant("io", rename_io), ArtifactError, "manifest I/O differs from graph")
    _expect(tmp_path / "does-not-exist", InfiniRuntimeError, "missing folder")
