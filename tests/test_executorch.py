"""ExecuTorch export (XNNPACK and portable, float32, int8 and int4) + its runtime backend, against the eager model.

The artifacts (``tests/et_artifacts.py``) are exported once per test run, each with the pipeline's own parity check
(50 segments), which is part of each test.
"""
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from exporters.artifact import build_manifest
from exporters.variants import get_variant
from infini_export.parity import validate
from runtime import ArtifactError, InfiniRuntimeError, InfiniSession, InputError, ManifestError
from tests.cli import run_cli
from tests.conftest import ROOT, make_model, rehash_manifest
from tests.et_artifacts import FP32, INT4_JOB, INT8_JOB, PORTABLE, SEGMENTS, get

ROOT_PATH = Path(ROOT)
# what may stay outside XNNPACK and the partition count on tiny: a regression guard. The model writes
# RMSNorm's mean, RoPE's rotate-half and the z sum as linear layers with constant weights, so the whole step
# is ONE partition with the embedding lookup alone outside (before that: 8 partitions on tiny).
ALLOWED_OUTSIDE = {"embedding.default"}  # the token lookup; everything else is delegated
INT8_LOOKUP = "quantized_decomposed.embedding_byte.default"  # int4's token lookup: its table int8, a scale per row
MAX_PARTITIONS = 1
# int8 (dynamic activations, per-channel weights) on the tiny preset, the static batch-1 program: measured top-1
# agreement with float eager 1.000 on the last token of 50 segments and on every token of 3 segments through the
# decode method (a dynamic-batch program: 1.000 over 50 segments' logits at batch 2); 0.97 leaves room for other seeds
INT8_MIN_TOP1 = 0.97




# ---- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("update,variant", [("delta", FP32), ("delta", PORTABLE)])
def test_runtime_matches_eager_every_segment(et_artifacts, update, variant):
    model, art, manifest, pipeline_report = get(et_artifacts, (update, variant))
    delegate = get_variant(variant).delegate
    assert pipeline_report["passed"] and len(pipeline_report["per_segment"]) == SEGMENTS
    assert manifest["backend"] == "executorch" and manifest["program"] == {
        "format": "pte", "file": "program", "method": "forward", "delegate": delegate}
    session = InfiniSession.open(art)
    assert session.backend.name == "executorch"
    report = validate(session.backend, model, segments=SEGMENTS, batch=2, seed=3, manifest=session.manifest,
                      progress=False)
    assert report.passed, report.failures
    assert len(report.per_segment) == SEGMENTS
    for row in report.per_segment:
        assert row["logits"]["max_abs"] < 1e-4
        assert all(e["max_rel"] < 1e-4 for e in row["state"].values())
        assert row["top1"] == 1.0
    assert report.wiring["passed"]


def test_static_batch_one_program(et_artifacts):
    """max_batch=1: a static program (least memory) with the last-token and decode methods and no full-logits one;
    parity through those, all logits of a feed from decode calls equal to the model's forward, batch 2 refused."""
    model, art, manifest, pipeline_report = get(et_artifacts, ("linear", FP32, 1))
    assert pipeline_report["passed"] and manifest["batch"]["max"] == 1
    assert manifest["exporter"]["methods"] == ["step_last", "decode"] and manifest["program"]["method"] is None
    assert pipeline_report["logits"] == "last" and pipeline_report["decode"]["boundaries"] == 3
    session = InfiniSession.open(art)
    assert session.backend.max_batch == 1 and not session.backend.has_full and not session.manifest.full_logits
    report = validate(session.backend, model, segments=SEGMENTS, seed=4, manifest=session.manifest, progress=False)
    assert report.passed, report.failures
    state = [np.zeros(e.concrete_shape(1), np.float32) for e in session.manifest.state]
    with pytest.raises(InputError, match="no segment program with all logits"):
        session.backend.run(np.zeros((1, 16), np.int64), state)
    with pytest.raises(InputError, match="1 to 1"):
        session.backend.run_last(np.zeros((2, 16), np.int64), [np.repeat(s, 2, axis=0) for s in state])
    with pytest.raises(InputError, match=r"\[1, 1\]"):
        session.reset(2)
    N = model.cfg.segment_len
    ids = torch.randint(0, 256, (1, 3 * N + 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_logits, _ = model(ids)
    logits = session.feed(ids.numpy())
    assert logits.shape == tuple(ref_logits.shape)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=1e-4)
    assert session.tokens_consumed == 3 * N + 5


@pytest.mark.parametrize("job", [("delta", FP32), ("linear", FP32, 1)])
def test_delegation_report(et_artifacts, job):
    _, _, manifest, _ = get(et_artifacts, job)
    ex = manifest["exporter"]
    assert 1 <= ex["delegate_partitions"] <= MAX_PARTITIONS, ex
    assert "embedding.default" in ex["non_delegated_ops"]
    assert set(ex["non_delegated_ops"]) <= ALLOWED_OUTSIDE, ex["non_delegated_ops"]
    assert ex["untied_weights"] == ["lm_head"]  # the tied head gets its own copy: no partition of its own
    if job[0] == "delta":
        _, _, portable, _ = get(et_artifacts, ("delta", PORTABLE))
        assert portable["exporter"]["delegate_partitions"] == 0
        _, _, int8, _ = get(et_artifacts, INT8_JOB)
        assert 1 <= int8["exporter"]["delegate_partitions"] <= MAX_PARTITIONS, int8["exporter"]
        assert set(int8["exporter"]["non_delegated_ops"]) <= ALLOWED_OUTSIDE


# ---- int8 ---------------------------------------------------------------------------------------
def test_int8_top1_agreement_and_state_drift(et_artifacts):
    model, art, manifest, pipeline_report = get(et_artifacts, INT8_JOB)
    assert manifest["quantization"] == "int8" and manifest["exporter"]["methods"] == ["step_last", "decode"]
    ex = manifest["exporter"]
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    # only the nn.Linear layers are quantized (7 a layer and the head): the memory and attention matmuls stay float32
    assert ex["quantized_linears"] == n_linear == 7 * model.cfg.n_layers + 1
    assert ex["quantized_op_types"] == {"linear.default": n_linear}
    assert pipeline_report["passed"], pipeline_report["failures"][:5]
    assert pipeline_report["summary"]["top1"] >= INT8_MIN_TOP1
    session = InfiniSession.open(art)
    report = validate(session.backend, model, precision="int8", segments=24, seed=5, manifest=session.manifest,
                      progress=False)
    print(report.table(rows=4))
    assert len(report.per_segment) >= 20 and report.logits == "last"  # a segment's last token, then every token:
    assert report.summary["top1"] >= INT8_MIN_TOP1, report.summary
    assert report.decode["top1"] >= INT8_MIN_TOP1 and report.decode["boundaries"] == 3, report.decode
    assert report.passed, report.failures[:5]  # state drift within the (backend, int8) tolerance
    assert 0 < report.summary["logits_max_abs"] < 0.05  # quantized: not bit-exact, but close
    assert report.summary["logits_trend"] < 2.0  # the error does not grow along the stream


# int4 (8da4w: int8 dynamic activations, int4 weights in groups of 32) on tiny, the static batch-1 program: measured
# top-1 agreement 1.000 (the last token of 50 segments; every token of 3 through decode), worst state rel 0.14 (int4
# weights move q, k, v a little at every segment)
INT4_MIN_TOP1 = 0.95


def test_int4_linears_and_int8_lookup_state_float32(et_artifacts):
    model, art, manifest, pipeline_report = get(et_artifacts, INT4_JOB)
    assert manifest["quantization"] == "int4"
    ex = manifest["exporter"]
    assert ex["quantized_linears"] == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) \
        == 7 * model.cfg.n_layers + 1
    assert ex["int4_block_size"] == 32 and "8da4w" in ex["quantization_scheme"]
    assert ex["delegate_partitions"] == 1 and ex["non_delegated_ops"] == {INT8_LOOKUP: 1}  # all else in XNNPACK
    assert "fuse_int8_lookup" in ex["transform_passes"]
    V, D = model.cfg.vocab_size, model.cfg.d_model
    lookup = manifest["embedding_lookup"]
    assert (lookup["dtype"], lookup["bits"], lookup["shape"], lookup["bytes"]) == ("int8", 8, [V, D], V * D + 4 * V)
    assert lookup["kernels"] == {"step_last": 1, "decode": 1}  # in each method
    _, _, fp32_manifest, _ = get(et_artifacts, ("delta", FP32))
    assert fp32_manifest["embedding_lookup"]["dtype"] == "float32"
    assert pipeline_report["passed"], pipeline_report["failures"][:5]
    assert pipeline_report["tolerance"]["min_top1"] > 0  # a measured int4 tolerance, not a placeholder
    # the program's own signature: every state output float32 (as the manifest says)
    assert all(o["dtype"] == "float32" for o in manifest["outputs"])
    session = InfiniSession.open(art)
    assert [code for code, _ in session.backend._last_program.outputs] == [6] * len(manifest["outputs"])  # 6: float32
    report = validate(session.backend, model, precision="int4", segments=20, seed=6, manifest=session.manifest,
                      progress=False)
    assert report.summary["top1"] >= INT4_MIN_TOP1, report.summary
    assert report.decode["top1"] >= INT4_MIN_TOP1, report.decode  # every token of three segments
    assert report.passed, report.failures[:5]
    assert 0 < report.summary["logits_max_abs"]  # quantized: not bit-exact
    # smaller than the float32 program's weights (the head untied: V x D more): 54% of them at this size, where the
    # int8 lookup table and the group scales weigh most; the 4-bit linears alone are 1/8 of their float32 bytes
    assert manifest["memory"]["weights_bytes"] < 0.6 * 4 * (model.num_parameters() + V * D)


# ---- planned memory -------------------------------------------------------------------------------
def test_manifest_memory_is_what_the_program_reports(et_artifacts):
    """The manifest's memory entry = a fresh measurement of the file; I/O bytes = ExecuTorch's method_meta."""
    from executorch.extension.pybindings import _portable_lib as pl

    from exporters.memory_plan import measure_memory
    planned = {}
    for job in (("delta", FP32), ("linear", FP32, 1)):
        model, art, manifest, _ = get(et_artifacts, job)
        memory = manifest["memory"]
        on_disk = json.loads((art / "manifest.json").read_text())["memory"]
        assert memory == on_disk == measure_memory(art / "model.pte")
        program = pl._load_program_from_buffer((art / "model.pte").read_bytes())
        names = [program.get_method_name(i) for i in range(program.num_methods())]
        assert sorted(memory["methods"]) == sorted(names)  # every method of the program
        for name in names:
            meta, m = program.method_meta(name), memory["methods"][name]
            assert m["input_bytes"] == sum(meta.input_tensor_meta(i).nbytes() for i in range(meta.num_inputs()))
            assert m["output_bytes"] == sum(meta.output_tensor_meta(i).nbytes() for i in range(meta.num_outputs()))
            assert m["planned_buffers"] >= 1 and m["planned_bytes"] == sum(m["planned_buffer_bytes"]) > 0
            planned_io = sum(t.nbytes() for t in map(meta.output_tensor_meta, range(meta.num_outputs()))
                             if t.is_memory_planned())
            assert m["planned_bytes"] >= planned_io  # the planned outputs live in the planned arena
        assert 0 < memory["weights_bytes"] < memory["program_bytes"] == (art / "model.pte").stat().st_size
        planned[job] = memory["methods"]["step_last"]["planned_bytes"] / model.cfg.n_layers
    # planned for the batch bound: batch 1 needs less than batch 64 (a layer's worth)
    assert planned[("linear", FP32, 1)] < planned[("delta", FP32)] / 8


def test_info_prints_the_planned_memory_of_every_method(et_artifacts):
    _, art, manifest, _ = get(et_artifacts, ("linear", FP32, 1))
    r = run_cli("info", art)
    assert r.returncode == 0, r.stderr
    for name, m in manifest["memory"]["methods"].items():
        assert f"method {name!r}: planned {m['planned_bytes']:,} bytes" in r.stdout
    assert f"{manifest['memory']['weights_bytes']:,}" in r.stdout and "batch <= 1" in r.stdout


# ---- the backend --------------------------------------------------------------------------------
def test_floating_point_state_of_the_process_is_left_alone(et_artifacts):
    """Like the onnxruntime backend: no FTZ/DAZ (or other MXCSR change) leaks out of open or run."""
    from runtime import fpenv
    if not fpenv.AVAILABLE:
        pytest.skip("fpenv: not Linux x86-64 glibc")
    _, art, _, _ = get(et_artifacts, ("delta", FP32))
    before = fpenv.mxcsr() & ~0x3F  # control bits (the low 6 are sticky status flags)
    session = InfiniSession.open(art)
    session.feed(np.zeros((1, 40), np.int64))
    assert fpenv.mxcsr() & ~0x3F == before
    assert (np.array([1e-39], np.float32) * np.float32(1.0))[0] != 0.0  # subnormals survive


def test_backend_outputs_are_copies_and_calls_are_serialised(et_artifacts):
    _, art, _, _ = get(et_artifacts, ("delta", FP32))
    backend = InfiniSession.open(art).backend
    rng = np.random.default_rng(4)
    state = [np.zeros(e.concrete_shape(2), np.float32) for e in backend.manifest.state]
    ids_a, ids_b = (rng.integers(0, 256, (2, 16)) for _ in range(2))
    la, sa = backend.run(ids_a, state)
    keep = la.copy(), [s.copy() for s in sa]
    lb, _ = backend.run(ids_b, state)  # reuses the program's output buffers
    np.testing.assert_array_equal(la, keep[0])
    for x, y in zip(sa, keep[1]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(la, lb)
    results = {}

    def worker(i):
        ids = np.full((2, 16), i * 7 % 256)
        results[i] = [backend.run(ids, state)[0] for _ in range(5)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        ref = backend.run(np.full((2, 16), i * 7 % 256), state)[0]
        for o in outs:
            np.testing.assert_array_equal(o, ref)


def test_batch_above_the_programs_bound(et_artifacts, tmp_path):
    _, art, manifest, _ = get(et_artifacts, ("delta", FP32))
    s = InfiniSession.open(art)
    backend = s.backend
    assert backend.max_batch == manifest["batch"]["max"] == 64
    s.feed(np.arange(21) % 256)
    before, pend, count = s.state, s.pending_tokens, s.tokens_consumed
    big = 65
    state = [np.zeros(e.concrete_shape(big), np.float32) for e in backend.manifest.state]
    with pytest.raises(InputError, match="1 to 64"):
        backend.run(np.zeros((big, 16), np.int64), state)
    with pytest.raises(InputError, match=r"\[1, 64\]"):
        s.reset(big)
    with pytest.raises(InputError, match="batch size"):
        s.feed(np.zeros((big, 3), np.int64))
    with pytest.raises(InputError, match="int64"):
        backend.run(np.zeros((1, 16), np.int32), [x[:1] for x in state])
    with pytest.raises(InputError, match="takes"):
        backend.run(np.zeros((1, 15), np.int64), [x[:1] for x in state])
    after = s.state
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    np.testing.assert_array_equal(s.pending_tokens, pend)
    assert s.tokens_consumed == count
    s.feed(np.arange(5))  # still usable
    # a manifest promising more than the program was planned for is refused at load
    wide = _copy(art, tmp_path / "wide")
    man = json.loads((wide / "manifest.json").read_text())
    man["batch"]["max"] = 128
    (wide / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="up to 64"):
        InfiniSession.open(wide)


def _copy(art, dst):
    shutil.copytree(art, dst)
    return Path(dst)


def test_truncated_or_corrupt_pte_is_refused(et_artifacts, tmp_path):
    _, art, _, _ = get(et_artifacts, ("delta", FP32))
    for name, cut in (("half", 0.5), ("header", 0.001), ("tail", 0.98)):
        bad = _copy(art, tmp_path / name)
        data = (bad / "model.pte").read_bytes()
        (bad / "model.pte").write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(ArtifactError, match="bytes"):  # the manifest's size check
            InfiniSession.open(bad)
        rehash_manifest(bad)  # now the loader itself must refuse it cleanly
        with pytest.raises(ArtifactError, match="truncated"):
            InfiniSession.open(bad)
    # the header says how long the file is; cut past it, ExecuTorch's own loader must say no
    inner = _copy(art, tmp_path / "inner")
    data = (inner / "model.pte").read_bytes()
    base, cut = int.from_bytes(data[24:32], "little"), int(len(data) * 0.7)
    (inner / "model.pte").write_bytes(data[:32] + (cut - base).to_bytes(8, "little") + data[40:cut])
    rehash_manifest(inner)
    with pytest.raises(ArtifactError, match="truncated|cannot load"):
        InfiniSession.open(inner)
    for name, content in (("empty", b""), ("garbage", np.random.default_rng(0).bytes(4096)),
                          ("onnx", (ROOT_PATH / "pyproject.toml").read_bytes())):
        bad = _copy(art, tmp_path / name)
        (bad / "model.pte").write_bytes(content)
        rehash_manifest(bad)
        with pytest.raises(ArtifactError, match="not an ExecuTorch program"):
            InfiniSession.open(bad)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads the process's memory map (Linux)")
def test_the_program_is_mapped_not_copied_and_survives_a_replaced_artifact(et_artifacts, tmp_path):
    """The session maps the .pte (no copy of its bytes in memory: XNNPACK's packed weights are the resident copy of
    the delegated ones), and an artifact replaced the way the exporter replaces one (a new folder renamed into
    place, the old one removed) leaves an open session computing what it did."""
    _, art, _, _ = get(et_artifacts, ("linear", FP32, 1))
    live = _copy(art, tmp_path / "live")
    session = InfiniSession.open(live)
    pte = str((live / "model.pte").resolve())
    assert any(line.rstrip().endswith(pte) for line in Path("/proc/self/maps").read_text().splitlines())
    ids = np.random.default_rng(3).integers(0, session.vocab_size, (1, 2 * session.segment_len + 5))
    before = session.fork().feed(ids)
    live.rename(tmp_path / "old")
    _copy(art, tmp_path / "new").rename(live)
    shutil.rmtree(tmp_path / "old")
    np.testing.assert_array_equal(session.fork().feed(ids), before)


@pytest.mark.parametrize("other", [{"n_layers": 3}, {"d_head": 8}, {"segment_len": 32}])
def test_manifest_of_another_model_is_refused(et_artifacts, tmp_path, other):
    """A manifest written for another model beside this .pte (hashes made to match): the loader's I/O check."""
    _, art, _, _ = get(et_artifacts, ("delta", FP32))
    bad = _copy(art, tmp_path / "bad")
    other_model = make_model("delta", **other)
    man = build_manifest(other_model, other_model.step_spec(), backend="executorch",
                         program={"format": "pte", "file": "program", "method": "forward", "delegate": "xnnpack"},
                         files={"program": "model.pte"}, directory=bad, max_batch=64)
    (bad / "manifest.json").write_text(json.dumps(man.to_dict()))
    with pytest.raises(ArtifactError, match="another model"):
        InfiniSession.open(bad)


def test_manifest_program_problems(et_artifacts, tmp_path):
    _, art, _, _ = get(et_artifacts, ("delta", FP32))
    for change, err, match in ((lambda p: p.update(format="onnx"), ManifestError, "runs 'pte'"),
                               (lambda p: p.update(method="decode"), ArtifactError, "decode")):
        bad = _copy(art, tmp_path / err.__name__)
        man = json.loads((bad / "manifest.json").read_text())
        change(man["program"])
        (bad / "manifest.json").write_text(json.dumps(man))
        with pytest.raises(err, match=match):
            InfiniSession.open(bad)
    with pytest.raises(InputError, match="threads"):
        InfiniSession.open(art, threads=0)
    with pytest.raises(InputError, match="engine"):
        InfiniSession.open(art, engine="tflite")
    assert InfiniSession.open(art, engine="pybindings").backend.engine.name == "pybindings"


def test_runtime_package_stays_torch_free(et_artifacts):
    """Importing the runtime (and this backend's module) never imports torch; opening a .pte says what it needs."""
    _, art, _, _ = get(et_artifacts, ("delta", FP32))
    code = f"""
import sys
sys.modules['torch'] = None  # any 'import torch' now fails
import runtime, runtime.backends.executorch
from runtime import InfiniRuntimeError
try:
    s = runtime.InfiniSession.open({str(art)!r})
except InfiniRuntimeError as exc:
    assert 'needs the executorch and torch packages' in str(exc), exc
    print('ok')
else:  # the torch-free engine is installed here: it must run without torch
    import numpy as np
    assert s.backend.engine.name == 'numpy' and s.feed(np.arange(40) % 256).shape == (40, 256)
    assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
    print('ok')
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


def test_export_arguments_are_checked(tmp_path):
    from exporters.executorch import export_executorch
    model = make_model("delta")
    with pytest.raises(ValueError, match="delegate"):
        export_executorch(model, tmp_path, delegate="coreml")
    with pytest.raises(ValueError, match="quantize"):
        export_executorch(model, tmp_path, quantize="int2")
    with pytest.raises(ValueError, match="needs delegate='xnnpack'"):
        export_executorch(model, tmp_path, delegate="none", quantize="int8")
    with pytest.raises(ValueError, match="max_batch"):
        export_executorch(model, tmp_path, max_batch=0)
    with pytest.raises(ValueError, match="full_logits=False needs the last-token and decode methods"):
        export_executorch(model, tmp_path, quantize="int8", max_batch=4, full_logits=False)  # no int8 decode
    with pytest.raises(ValueError, match="jobs must be an integer >= 1, got 0"):
        export_executorch(model, tmp_path, jobs=0)
    assert not list(tmp_path.iterdir())


def test_a_program_without_full_logits_needs_decode_and_last(et_artifacts):
    """``program.method`` null (no full-logits method) is refused unless decode and last-token programs serve."""
    from runtime.manifest import Manifest
    _, art, manifest, _ = get(et_artifacts, ("linear", FP32, 1))
    assert Manifest.from_dict(manifest, art).full_logits is False
    for section in ("decode", "last_logits"):
        broken = {k: v for k, v in manifest.items() if k != section}
        with pytest.raises(ManifestError, match="program.method"):
            Manifest.from_dict(broken, art)


def test_cli_plans_executorch_for_batch_one_unless_told(monkeypatch, tmp_path):
    """``export --format executorch`` passes max_batch=1 (ONNX: 64) unless --max-batch is given, and the
    full-logits method only with --full-logits (refused for ONNX, which always has all logits); --jobs reaches the
    exporter (ExecuTorch only)."""
    import exporters.pipeline as pipeline
    from infini_cli import main as cli
    seen = []

    def fake_export(module, out, fmt, **kw):
        o = kw["options"]
        seen.append((fmt, o.max_batch, o.full_logits, o.jobs))
        raise ValueError("stop here")
    monkeypatch.setattr(pipeline, "export_artifact", fake_export)
    monkeypatch.setattr(cli, "_load_module", lambda args: make_model("delta"))
    for argv in (["--format", "executorch"], ["--format", "onnx"], ["--format", "executorch", "--max-batch", "4"],
                 ["--format", "executorch", "--full-logits"], ["--format", "onnx", "--full-logits"],
                 ["--format", "executorch", "--jobs", "1"], ["--format", "onnx", "--jobs", "2"]):
        assert cli.main(["export", "ckpt", "-o", str(tmp_path / "x"), *argv]) == 2
    assert seen == [("executorch", 1, None, None), ("onnx", 64, None, None), ("executorch", 4, None, None),
                    ("executorch", 1, True, None), ("executorch", 1, None, 1)]
