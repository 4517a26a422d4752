"""ONNX export + the torch-free runtime, against the eager model."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from infini_export.parity import validate
from runtime import ArtifactError, InfiniSession, InputError, ManifestError, StateError
from tests.cli import run_cli
from tests.conftest import ROOT, make_model, rehash_manifest


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_runtime_matches_eager_every_segment(onnx_artifacts, update):
    model, art = onnx_artifacts[update]
    session = InfiniSession.open(art)
    report = validate(session.backend, model, segments=50, batch=2, manifest=session.manifest, progress=False)
    assert report.passed, report.failures
    assert len(report.per_segment) == 50
    for row in report.per_segment:
        assert row["logits"]["max_abs"] < 1e-4
        assert all(e["max_rel"] < 1e-4 for e in row["state"].values())
    assert report.wiring["passed"]


def test_denormals_flushed_by_default_and_results_unchanged(onnx_artifacts):
    """The onnxruntime session flushes denormals (a speed setting); outputs match the setting off."""
    _, art = onnx_artifacts["delta"]
    on = InfiniSession.open(art)
    off = InfiniSession.open(art, denormal_as_zero=False)
    key = "session.set_denormal_as_zero"
    assert on.backend.session.get_session_options().get_session_config_entry(key) == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # not set at all
        off.backend.session.get_session_options().get_session_config_entry(key)
    ids = np.random.default_rng(3).integers(0, 256, (1, 5 * on.segment_len), dtype=np.int64)
    a, b = on.feed(ids), off.feed(ids)
    assert np.abs(a - b).max() < 1e-5
    for name in on.state:
        assert np.allclose(on.state[name], off.state[name], rtol=1e-6, atol=0), name


def test_denormal_flush_does_not_leak_into_the_process(onnx_artifacts):
    """FTZ/DAZ is on only inside a run: numpy in the same thread keeps its subnormals afterwards."""
    from runtime import fpenv
    if not fpenv.AVAILABLE:
        pytest.skip("fpenv: not Linux x86-64 glibc")
    _, art = onnx_artifacts["linear"]
    tiny = np.array([1e-39], np.float32)  # a float32 subnormal
    before = fpenv.mxcsr() & ~0x3F  # control bits (the low 6 are sticky status flags)
    s = InfiniSession.open(art)
    assert fpenv.mxcsr() & ~0x3F == before
    s.feed(np.zeros((1, 3 * s.segment_len), np.int64))
    assert fpenv.mxcsr() & ~0x3F == before
    assert (tiny * np.float32(1.0))[0] != 0.0
    with fpenv.flush_denormals():
        assert (tiny * np.float32(1.0))[0] == 0.0  # the context does flush


def test_runtime_imports_and_runs_without_torch(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    code = f"""
import sys
sys.modules['torch'] = None  # any 'import torch' now fails
import numpy as np
import runtime
s = runtime.InfiniSession.open({str(art)!r})
out = s.feed(np.arange(40) % 256)
assert out.shape == (40, 256) and np.isfinite(out).all()
assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
print('ok')
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def _telemetry_files(code: str, home, **env) -> list[str]:
    """Run ``code`` with HOME / XDG_CACHE_HOME in ``home``; the files onnxruntime's telemetry left there."""
    clean = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    clean.update(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), **env)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def test_onnxruntime_telemetry_is_off_unless_the_user_turns_it_on(onnx_artifacts, tmp_path):
    """onnxruntime >= 1.29 starts a telemetry uploader at import (device id + event cache on disk, network
    threads ~9 s later: the RSS step of docs/design.md). Our runtime imports it with that off; a user's
    ORT_DISABLE_TELEMETRY=0 is respected."""
    _, art = onnx_artifacts["delta"]
    run = f"import numpy as np, runtime\nruntime.InfiniSession.open({str(art)!r}).feed(np.arange(40) % 256)\n"
    control = _telemetry_files("import onnxruntime", tmp_path / "control")
    if not control:
        pytest.skip("this onnxruntime build writes no telemetry files: nothing to turn off")
    assert _telemetry_files(run, tmp_path / "ours") == []
    assert _telemetry_files("import infini_export, onnxruntime", tmp_path / "pkg") == []
    assert _telemetry_files(run, tmp_path / "opt_in", ORT_DISABLE_TELEMETRY="0") == control


def _copy(art, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(art, dst)
    return dst



@pytest.fixture
def tiny_ckpt(onnx_artifacts, tmp_path):
    from infini_export import save_checkpoint
    model, _ = onnx_artifacts["delta"]
    return save_checkpoint(model, tmp_path / "ckpt")


def test_validate_cli_passes_then_fails_on_altered_weights(onnx_artifacts, tmp_path, tiny_ckpt):
    _, art = onnx_artifacts["delta"]
    ok = run_cli("validate", str(art), "--checkpoint", str(tiny_ckpt), "--segments", "12",
              "--report", str(tmp_path / "r.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    bad = _copy(art, tmp_path)  # the weights live in weights.bin, shared by both graphs: alter the largest there
    name, offset, length, dtype, dims = max(json.loads((bad / "manifest.json").read_text())["shared_weights"]
                                            ["graphs"]["program"], key=lambda e: e[2])
    weights = np.fromfile(bad / "weights.bin", dtype=np.uint8)
    arr = weights[offset:offset + length].view(dtype)
    arr[0] += 0.5
    weights.tofile(bad / "weights.bin")
    rehash_manifest(bad)
    res = run_cli("validate", str(bad), "--checkpoint", str(tiny_ckpt), "--segments", "12")
    assert res.returncode == 1
    assert "FAILED" in res.stdout and "logits max abs error" in res.stdout


def test_validate_fails_on_passthrough_state(onnx_artifacts, tmp_path, tiny_ckpt):
    import onnx
    _, art = onnx_artifacts["delta"]
    bad = _copy(art, tmp_path)
    m = onnx.load(str(bad / "model.onnx"))
    g = m.graph
    for node in g.node:  # the node producing present_norm.1 now writes elsewhere
        for i, o in enumerate(node.output):
            if o == "present_norm.1":
                node.output[i] = "orphan_norm_1"
    g.node.append(onnx.helper.make_node("Identity", ["past_norm.1"], ["present_norm.1"]))
    onnx.save(m, str(bad / "model.onnx"))
    rehash_manifest(bad)
    res = run_cli("validate", str(bad), "--checkpoint", str(tiny_ckpt), "--segments", "6")
    assert res.returncode == 1
    assert "present_norm.1 passes its input through" in res.stdout


def test_bad_artifacts_are_refused(onnx_artifacts, tmp_path):
    _, art = onnx_artifacts["delta"]
    missing = _copy(art, tmp_path / "m")
    (missing / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        InfiniSession.open(missing)
    trunc = _copy(art, tmp_path / "t")
    data = (trunc / "model.onnx").read_bytes()
    (trunc / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="bytes"):
        InfiniSession.open(trunc)
    rehash_manifest(trunc)  # even with a matching hash, the loader refuses it cleanly
    with pytest.raises(ArtifactError, match="cannot load"):
        InfiniSession.open(trunc)
    flipped = _copy(art, tmp_path / "f")
    data = bytearray((flipped / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        InfiniSession.open(flipped)
    newer = _copy(art, tmp_path / "n")
    man = json.loads((newer / "manifest.json").read_text())
    man["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ManifestError, match="format_version 99"):
        InfiniSession.open(newer)


def test_bad_input_leaves_state_unchanged(onnx_artifacts, tmp_path):
    _, art = onnx_artifacts["delta"]
    s = InfiniSession.open(art)
    s.feed(np.arange(21) % 256)
    before, pend, count = s.state, s.pending_tokens, s.tokens_consumed
    for bad, match in [(np.arange(5, dtype=np.float32), "integer dtype"), (np.array([1, 300]), r"\[0, 256\)"),
                       (np.array([-1]), r"\[0, 256\)"), (np.zeros((2, 3), dtype=np.int64), "batch size 2"),
                       (np.zeros((1, 1, 3), dtype=np.int64), "shape")]:
        with pytest.raises(InputError, match=match):
            s.feed(bad)
    with pytest.raises(InputError, match="temperature"):
        s.generate(np.array([1]), 3, temperature=-1)
    o = InfiniSession.open(onnx_artifacts["linear"][1])  # another model, its state of the same shapes
    o.feed(np.arange(40) % 256)
    o.save_state(tmp_path / "other.npz")
    with pytest.raises(StateError, match="another model"):
        s.load_state(tmp_path / "other.npz")
    with pytest.raises(StateError, match="NaN"):
        bad_state = s.state
        bad_state["norm.0"][0, 0, 0] = np.nan
        s.set_state(bad_state)
    after = s.state
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    np.testing.assert_array_equal(s.pending_tokens, pend)
    assert s.tokens_consumed == count
