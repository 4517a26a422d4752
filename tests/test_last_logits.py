"""The last-token program: the segment step with the last token's logits only, used by stream and prefill."""
import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import make_model
from infini_export.parity import tolerance_for, validate_last
from infini_export.eager import EagerBackend
from infini_export.state import flatten_state
from runtime import InfiniSession
from runtime.errors import ManifestError


def _adapter(name="delta"):
    from test_adapter_lucidrains import SEG, make_theirs
    from infini_export.adapters.lucidrains import LucidrainsStep
    return LucidrainsStep(make_theirs(name), SEG).eval()


@pytest.mark.parametrize("which", ["linear", "delta", "lucidrains"])
def test_eager_step_last_is_the_last_row_of_step(which):
    module = _adapter() if which == "lucidrains" else make_model(which)
    N, V = module.step_spec().segment_len, module.step_spec().vocab_size
    ids = torch.randint(0, V, (2, 3 * N), generator=torch.Generator().manual_seed(3))
    state_full = state_last = module.init_state(2)
    with torch.no_grad():
        for s in range(3):  # chained: the state fed to each segment is each side's own
            seg = ids[:, s * N:(s + 1) * N]
            logits, state_full = module.step(seg, state_full)
            last, state_last = module.step_last(seg, state_last)
            assert last.shape == (2, 1, V)
            torch.testing.assert_close(last, logits[:, -1:], atol=1e-6, rtol=1e-6)
            for a, b in zip(flatten_state(state_last), flatten_state(state_full)):
                torch.testing.assert_close(a, b, atol=0, rtol=0)


class _Counting:
    """Counts the backend calls of each program."""

    def __init__(self, session):
        self.calls = {"run": 0, "run_last": 0}
        for name in self.calls:
            fn = getattr(session.backend, name)

            def wrapped(*a, _fn=fn, _name=name):
                self.calls[_name] += 1
                return _fn(*a)
            setattr(session.backend, name, wrapped)


def _stream_matches_full_step(art, batch=1, use_decode=True):
    """stream with the last-token program vs without it, over several segments plus a partial one."""
    fast = InfiniSession.open(art, batch_size=batch, use_decode=use_decode)
    full = InfiniSession.open(art, batch_size=batch, use_decode=use_decode, use_last=False)
    assert fast.last_logits_program and not full.last_logits_program
    counts = _Counting(fast)
    N, V = fast.segment_len, fast.vocab_size
    ids = np.random.default_rng(11).integers(0, V, (batch, 4 * N + 3))
    for chunk in (ids[:, :N + 2], ids[:, N + 2:3 * N + 2], ids[:, 3 * N + 2:]):  # boundaries inside chunks
        a, b = fast.stream(chunk), full.stream(chunk)
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        for name, x in full.state.items():
            np.testing.assert_allclose(fast.state[name], x, atol=1e-5, rtol=1e-5, err_msg=name)
    # whole segments at a boundary: 2 with the decode program (it takes the rest), 4 without (+ 3 padded partials)
    assert counts.calls == ({"run": 0, "run_last": 2} if use_decode else {"run": 3, "run_last": 4})
    return fast, full


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_onnx_last_program_in_manifest_parity_and_stream(onnx_artifacts, update):
    model, art = onnx_artifacts[update]
    s = InfiniSession.open(art)
    last = s.manifest.last_logits
    assert last.program.to_json() == {"format": "onnx", "file": "last_program"}
    assert last.outputs[0].shape == ("batch", 1, model.cfg.vocab_size)
    assert [o.name for o in last.outputs] == s.manifest.output_names
    parity = s.manifest.parity.last_logits
    assert parity["segments"] == 8 and parity["wiring"]["passed"]
    rep = validate_last(s.backend, EagerBackend(model), model.step_spec(),
                        np.random.default_rng(2).integers(0, 256, (1, 5 * model.cfg.segment_len)),
                        [np.zeros(e.concrete_shape(1), np.float32) for e in s.manifest.state],
                        tolerance_for("onnxruntime", "float32"))
    assert rep["failures"] == [] and rep["logits_max_abs"] < 1e-4 and rep["top1"] == 1.0
    _stream_matches_full_step(art, batch=2)
    _stream_matches_full_step(art, use_decode=False)


def test_feed_last_only_and_prefill(onnx_artifacts):
    model, art = onnx_artifacts["delta"]
    N = model.cfg.segment_len
    ids = np.random.default_rng(4).integers(0, 256, 3 * N)
    a, b = InfiniSession.open(art), InfiniSession.open(art)
    counts = _Counting(a)
    last = a.feed(ids, last_only=True)
    full = b.feed(ids)
    assert last.shape == (1, model.cfg.vocab_size) and counts.calls["run_last"] == 3
    np.testing.assert_allclose(last, full[-1:], atol=1e-5, rtol=1e-5)
    assert a.feed(ids[:0], last_only=True).shape == (0, model.cfg.vocab_size)
    # generate's prompt prefill goes through it too; the tokens generated are those of the full program
    c, d = InfiniSession.open(art), InfiniSession.open(art, use_last=False)
    counts = _Counting(c)
    np.testing.assert_array_equal(c.generate(ids[:2 * N + 5], 8), d.generate(ids[:2 * N + 5], 8))
    assert counts.calls["run_last"] == 2


def test_artifact_without_last_program_still_runs(onnx_artifacts, tmp_path):
    model, art = onnx_artifacts["linear"]
    old = tmp_path / "old"
    shutil.copytree(art, old)
    data = json.loads((old / "manifest.json").read_text())
    del data["last_logits"], data["files"]["last_program"], data["shared_weights"]["graphs"]["last_program"]
    (old / "step_last.onnx").unlink()
    (old / "manifest.json").write_text(json.dumps(data))
    s = InfiniSession.open(old)
    assert s.manifest.last_logits is None and not s.last_logits_program
    ids = np.random.default_rng(5).integers(0, 256, 2 * model.cfg.segment_len + 1)
    np.testing.assert_allclose(s.stream(ids), InfiniSession.open(art).stream(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("edit, where", [
    (lambda d: d["last_logits"]["outputs"][0].update(shape=["batch", 16, 256]), "last_logits.outputs[0]"),
    (lambda d: d["last_logits"]["inputs"].pop(), "last_logits.inputs"),
    (lambda d: d["last_logits"]["outputs"][1].update(name="other"), "last_logits.outputs[1:]"),
    (lambda d: d["last_logits"]["program"].update(file="nowhere"), "last_logits.program.file"),
])
def test_bad_last_logits_section_is_refused(onnx_artifacts, edit, where):
    from runtime.manifest import Manifest
    _, art = onnx_artifacts["linear"]
    data = json.loads((art / "manifest.json").read_text())
    edit(data)
    with pytest.raises(ManifestError, match=re.escape(f"manifest {where}")):
        Manifest.from_dict(data)


class _StalePassThrough:
    """A last-token program whose state output ``index`` returns its input: the validator must name it."""

    def __init__(self, backend, index):
        self.inner, self.index, self.name = backend, index, backend.name

    def run(self, ids, state):
        return self.inner.run(ids, state)

    def run_last(self, ids, state):
        logits, new = self.inner.run_last(ids, state)
        return logits, [state[i] if i == self.index else a for i, a in enumerate(new)]


def test_last_program_wiring_failure_is_named(onnx_artifacts):
    model, art = onnx_artifacts["delta"]
    s = InfiniSession.open(art)
    names = [e.name for e in s.manifest.state]
    broken = _StalePassThrough(s.backend, names.index("norm.1"))
    tokens = np.random.default_rng(2).integers(0, 256, (1, 3 * model.cfg.segment_len))
    rep = validate_last(broken, EagerBackend(model), model.step_spec(), tokens,
                        [np.zeros(e.concrete_shape(1), np.float32) for e in s.manifest.state],
                        tolerance_for("onnxruntime", "float32"))
    assert any(f.startswith("last-token program") and "norm.1" in f for f in rep["failures"])
    assert any("present_norm.1 passes its input through" in f for f in rep["wiring"]["failures"])


def test_executorch_last_method_planned_memory_and_stream(et_artifacts):
    from tests.et_artifacts import FP32, get
    model, art, manifest, report = get(et_artifacts, ("delta", FP32))  # batch <= 64: all three methods
    assert report["last"]["failures"] == [] and report["last"]["segments"] == 8
    assert manifest["last_logits"]["program"]["method"] == "step_last"
    methods = manifest["memory"]["methods"]
    N, V, B = model.cfg.segment_len, model.cfg.vocab_size, manifest["batch"]["max"]
    # the (B, N, V) float32 logits buffer is not planned for the last-token method
    assert methods["forward"]["output_bytes"] - methods["step_last"]["output_bytes"] == B * (N - 1) * V * 4
    assert methods["step_last"]["planned_bytes"] < methods["forward"]["planned_bytes"] - B * (N - 1) * V * 4 // 2
    _stream_matches_full_step(art)
    # batch 1: the last-token and decode methods alone; the parity compares each segment through the last-token one
    _, art1, manifest1, report1 = get(et_artifacts, ("linear", FP32, 1))
    assert "forward" not in manifest1["memory"]["methods"] and report1["logits"] == "last" and not report1["last"]
    assert manifest1["exporter"]["step_last_delegation"]["delegate_partitions"] == 1
    assert manifest1["memory"]["methods"]["step_last"]["planned_bytes"] < methods["step_last"]["planned_bytes"]
    _stream_matches_full_step(art1)  # the session without the last-token program: every token through decode


def test_adapter_last_program_exports_with_parity(adapter_onnx):
    import json

    from tests.conftest import ADAPTER_PARITY
    _, art, report = adapter_onnx["linear"]
    manifest = json.loads((art / "manifest.json").read_text())
    assert report["last"]["failures"] == [] and report["last"]["wiring"]["passed"]
    assert manifest["parity"]["last_logits"]["segments"] == ADAPTER_PARITY
    _stream_matches_full_step(art)
