"""Export as stages: the artifact appears only when complete, the manifest is written once with the parity record and
every stage's seconds, a failing stage leaves the target as it was, and the runtime warns about an artifact whose
parity run failed or never ran."""
import json
import pickle
import warnings

import numpy as np
import pytest

from exporters import pipeline
from exporters.options import ExportOptions
from exporters.pipeline import STAGES, ExportParityError, export_artifact
from runtime import InfiniSession
from runtime.manifest import Manifest, ParityWarning
from tests.conftest import make_model
from tests.tiny_rnn import VOCAB, TinyRNN


def _export(model, out, **kw):
    return export_artifact(model, out, "onnx", progress=False, log=None, **kw)


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """A small RNN's artifact (the stages are the model's business only in the build)."""
    model = TinyRNN().eval()
    out = tmp_path_factory.mktemp("stages") / "art"
    manifest, report = _export(model, out, parity_segments=3)
    return model, out, manifest, report


def test_manifest_written_once_with_parity_and_stage_times(checked):
    model, out, manifest, report = checked
    on_disk = Manifest.load(out)
    assert on_disk == manifest and on_disk.validated and report.passed
    assert list(on_disk.exporter["stages"]) == ["prepare", "build", "validate"]  # publish writes the record
    assert all(v >= 0 for v in on_disk.exporter["stages"].values())
    # the build's own stages (no quantize stage without quantization)
    assert list(on_disk.exporter["stage_seconds"]) == ["trace", "rewrite", "pack", "write"]
    assert sum(on_disk.exporter["stage_seconds"].values()) <= on_disk.exporter["stages"]["build"] + 0.05
    assert on_disk.parity.segments == 3 and on_disk.parity.measured == report.summary
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]  # nothing left over
    with warnings.catch_warnings():
        warnings.simplefilter("error", ParityWarning)
        InfiniSession.open(out)  # a validated artifact opens without a warning


def test_typed_manifest_round_trips_to_the_same_document(onnx_artifacts):
    _, out = onnx_artifacts["delta"]
    manifest = Manifest.load(out)
    doc = json.loads((out / "manifest.json").read_text())
    assert manifest.to_dict() == doc
    assert Manifest.from_dict(doc, out) == manifest
    dec = manifest.decode
    assert dec.cache_in_place is (dec.outputs[-1].role == "cache-out") and dec.max_chunk == manifest.segment_len - 1


def test_without_parity_the_runtime_warns(tmp_path):
    manifest, report = _export(TinyRNN().eval(), tmp_path / "art", parity_segments=0)
    assert report is None and manifest.parity is None and "validate" not in manifest.exporter["stages"]
    with pytest.warns(ParityWarning, match="never ran"):
        InfiniSession.open(tmp_path / "art")


def test_an_exception_in_the_parity_run_is_recorded_as_a_failure(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the reference ran out of memory")
    monkeypatch.setattr(pipeline, "validate", broken)
    with pytest.raises(ExportParityError, match="ran out of memory") as raised:
        _export(TinyRNN().eval(), tmp_path / "art", parity_segments=2)
    again = pickle.loads(pickle.dumps(raised.value))  # as a worker process hands it back
    assert str(again) == str(raised.value) and again.error == raised.value.error
    manifest = Manifest.load(tmp_path / "art")
    assert manifest.parity.passed is False and "RuntimeError: the reference ran out of memory" in manifest.parity.error
    with pytest.warns(ParityWarning, match="failed .*ran out of memory"):
        session = InfiniSession.open(tmp_path / "art")
    assert session.feed(np.arange(20) % VOCAB).shape == (20, VOCAB)  # still runs: a warning, not a refusal


def test_a_failing_build_leaves_the_earlier_artifact(checked, tmp_path, monkeypatch):
    model, out, manifest, _ = checked
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("tracing failed")
    monkeypatch.setattr(pipeline, "_build", broken)
    with pytest.raises(RuntimeError, match="tracing failed"):
        _export(model, out, parity_segments=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_a_folder_of_other_files_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an artifact folder"):
        _export(make_model("linear"), tmp_path, parity_segments=0)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "tflite"}, "unknown format"),
    ({"quantize": "int3"}, "quantize must be one of"),
    ({"block_size": 64}, "int4 quantization only"),
    ({"quantize": "int4", "block_size": 48}, "block_size must be one of"),
    ({"attention_rows": 64, "format": "executorch"}, "ONNX exports"),
    ({"full_logits": True}, "ExecuTorch exports"),
    ({"jobs": 2}, "ExecuTorch exports"),
    ({"format": "executorch", "jobs": 0}, "jobs must be an integer >= 1"),
    ({"max_batch": 0}, "max_batch must be an integer >= 1"),
    ({"parity_segments": -1}, "parity_segments"),
    ({"format": "executorch", "delegate": "none", "quantize": "int8"}, "needs delegate='xnnpack'"),
])
def test_options_are_checked_once_with_a_message_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExportOptions(**kwargs)


def test_option_defaults_depend_on_the_format():
    assert ExportOptions("onnx").max_batch == 64 and ExportOptions("executorch").max_batch == 1
    assert ExportOptions("onnx").attention_rows == 256 and ExportOptions("executorch").attention_rows is None
    assert ExportOptions("onnx", quantize="int4").block_size == 32 and ExportOptions("onnx").block_size is None
    assert STAGES == ("prepare", "build", "validate", "publish")


def test_an_onnx_export_for_one_sequence(tmp_path):
    """max_batch=1 (torch.export has no batch range 1..1): the graphs keep a symbolic batch, the manifest holds the
    bound, and a session of two sequences is refused by name."""
    from runtime.errors import InputError
    manifest, report = _export(make_model("delta", n_layers=1), tmp_path / "b1", max_batch=1, parity_segments=2)
    assert report.passed and manifest.max_batch == 1
    with pytest.raises(InputError, match="batch"):
        InfiniSession.open(tmp_path / "b1", batch_size=2)
    assert InfiniSession.open(tmp_path / "b1").feed(np.arange(40)[None] % 256).shape == (1, 40, 256)
