"""The portable ONNX export (``ops="portable"``): standard ONNX ops only, checked by ONNX's own reference evaluator
(``onnx.reference``, an implementation independent of onnxruntime) over a few segments, against the eager model;
the default export uses onnxruntime's GroupQueryAttention and says so."""
import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from exporters.pipeline import export_artifact
from runtime import InfiniSession
from runtime.manifest import Manifest
from tests.conftest import make_model


def _graph_ops(art, key: str) -> set[str]:
    man = Manifest.load(art)
    model = onnx.load(str(man.file_path(key)), load_external_data=False)
    return {f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node}


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    model = make_model("delta")
    art = tmp_path_factory.mktemp("portable") / "art"
    manifest, report = export_artifact(model, art, "onnx", ops="portable", parity_segments=3, progress=False,
                                       log=None)
    return model, art, manifest, report


def test_portable_graphs_hold_standard_ops_only(portable):
    _, art, manifest, report = portable
    assert report.passed and manifest.exporter["ops"] == "portable" and manifest.exporter["contrib_ops"] == []
    assert manifest.decode.form == "rows" and not manifest.decode.cache_in_place
    for key in ("program", "decode_program", "last_program"):
        assert all(op.startswith("ai.onnx::") for op in _graph_ops(art, key)), key


def test_the_default_export_names_its_contrib_ops(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    manifest = Manifest.load(art)
    assert manifest.exporter["ops"] == "onnxruntime" and manifest.decode.form == "fused"
    assert manifest.exporter["contrib_ops"] == ["com.microsoft::GroupQueryAttention",
                                                "com.microsoft::SkipSimplifiedLayerNormalization"]
    assert "com.microsoft::GroupQueryAttention" in _graph_ops(art, "decode_program")


def test_onnx_reference_evaluator_runs_the_portable_segment_step(portable):
    """Three consecutive segments through ``onnx.reference`` (state carried from one to the next) against the
    eager model's ``step`` and the onnxruntime session: logits and every state tensor."""
    model, art, manifest, _ = portable
    ref = ReferenceEvaluator(onnx.load(str(manifest.file_path("program"))))  # external weights read beside it
    session = InfiniSession.open(art)
    N = manifest.segment_len
    ids = np.random.default_rng(3).integers(0, manifest.vocab_size, (1, 3 * N))
    state = [np.zeros(e.concrete_shape(1), np.float32) for e in manifest.state]
    eager_state = model.init_state(1)
    for s in range(3):
        seg = ids[:, s * N:(s + 1) * N]
        outs = ref.run(None, dict(zip(manifest.input_names, [seg, *state])))
        with torch.no_grad():
            want, eager_state = model.step(torch.from_numpy(seg), eager_state)
        np.testing.assert_allclose(outs[0], want.numpy(), atol=2e-4, rtol=1e-4)
        flat = [t.numpy() for m in eager_state for t in (m.memory, m.norm)]
        for got, exp in zip(outs[1:], flat):
            np.testing.assert_allclose(got, exp, atol=1e-5, rtol=1e-4)
        state = outs[1:]
    np.testing.assert_allclose(session.feed(ids)[:, -N:], outs[0], atol=2e-4, rtol=1e-4)
