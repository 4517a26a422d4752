"""The exporter's ONNX graph rewrites: the local attention in blocks of query rows, and a tied embedding table
stored once in the LM head's layout. Each is checked against the graph before the rewrite (itself checked against
the eager model by parity) and for what it removes."""
import copy
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

from exporters.onnx_attention_blocks import block_local_attention
from exporters.onnx_tied import SUFFIX, lookup_from_transposed
from runtime.ortenv import import_onnxruntime


def _session(model: onnx.ModelProto):
    ort = import_onnxruntime()
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _feeds(session, vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in i.shape]
        out[i.name] = (rng.integers(0, vocab, shape).astype(np.int64) if i.type == "tensor(int64)"
                       else np.abs(rng.normal(size=shape)).astype(np.float32))
    return out


def _outputs_match(before: onnx.ModelProto, after: onnx.ModelProto, vocab: int, atol: float = 1e-6) -> None:
    a, b = _session(before), _session(after)
    feeds = _feeds(a, vocab)
    for x, y in zip(a.run(None, feeds), b.run(None, feeds)):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=atol)


def test_attention_blocks_compute_the_same_and_never_hold_the_full_scores(onnx_artifacts):
    model, art = onnx_artifacts["delta"]
    N, L = model.cfg.segment_len, model.cfg.n_layers
    original = onnx.load(str(art / "model.onnx"))
    rows = 5  # blocks of 5, 5, 5 and 1 rows: a short last block too
    blocked = copy.deepcopy(original)
    assert block_local_attention(blocked, rows) == L
    onnx.checker.check_model(blocked, full_check=True)
    _outputs_match(original, blocked, model.cfg.vocab_size)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in shape_inference.infer_shapes(blocked).graph.value_info}
    softmax = [shapes[n.output[0]] for n in blocked.graph.node if n.op_type == "Softmax"]
    assert len(softmax) == L * 4  # ceil(16 / 5) blocks per layer
    assert all(s[-2] <= rows and s[-1] <= N for s in softmax), softmax  # no (N, N) probabilities left
    assert sorted({s[-1] for s in softmax}) == [5, 10, 15, 16]  # each block against the keys up to its last row


def test_attention_blocks_leave_short_segments_and_other_graphs_alone(onnx_artifacts):
    model, art = onnx_artifacts["linear"]
    step = onnx.load(str(art / "model.onnx"), load_external_data=False)
    assert block_local_attention(step, model.cfg.segment_len) == 0  # one block would hold every row already
    assert block_local_attention(step, 0) == 0
    decode = onnx.load(str(art / "decode.onnx"), load_external_data=False)
    assert block_local_attention(decode, 2) == 0  # its attention is a GroupQueryAttention op


def test_export_with_attention_blocks_passes_parity_and_records_them(tmp_path):
    from exporters.pipeline import export_artifact
    from tests.conftest import make_model
    model = make_model("delta")
    _, report = export_artifact(model, tmp_path, "onnx", parity_segments=4, progress=False, log=None,
                                attention_rows=6)
    assert report.passed
    exporter = json.loads((tmp_path / "manifest.json").read_text())["exporter"]
    assert exporter["attention_rows"] == 6
    assert exporter["fusions"]["step"]["attention_blocks"] == model.cfg.n_layers
    assert exporter["fusions"]["step_last"]["attention_blocks"] == model.cfg.n_layers
    with pytest.raises(ValueError, match="ONNX"):
        export_artifact(model, tmp_path / "pte", "executorch", attention_rows=6)
    assert not (tmp_path / "pte").exists()


def _tied_graph(extra_reader: bool = False, folded: bool = False) -> onnx.ModelProto:
    """ids -> Gather(W) -> MatMul(., Transpose(W)): a tied embedding and LM head, as torch.onnx writes them
    (``folded``: the transpose already stored as a second initializer, as the exporter does for small tables)."""
    V, D = 11, 4
    w = np.random.default_rng(3).normal(size=(V, D)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    nodes = [helper.make_node("Gather", ["W", "ids"], ["x"], axis=0)]
    if folded:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "Wt"))
    else:
        nodes.append(helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]))
    nodes.append(helper.make_node("MatMul", ["x", "Wt"], ["logits"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3, V])]
    if extra_reader:
        nodes.append(helper.make_node("ReduceSum", ["W"], ["total"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@pytest.mark.parametrize("folded", [False, True])
def test_tied_table_is_stored_once_as_the_head_reads_it(folded):
    before = _tied_graph(folded=folded)
    after = copy.deepcopy(before)
    assert lookup_from_transposed(after) == ["W"]
    onnx.checker.check_model(after, full_check=True)
    _outputs_match(before, after, vocab=11, atol=0)
    (table,) = after.graph.initializer
    assert table.name == "W" + SUFFIX and list(table.dims) == [4, 11]  # one name, folded by the exporter or not
    np.testing.assert_array_equal(numpy_helper.to_array(table), numpy_helper.to_array(before.graph.initializer[0]).T)
    assert not any(n.op_type == "Transpose" and n.input[0] == table.name for n in after.graph.node)


def test_tied_table_with_another_reader_is_left_alone():
    model = _tied_graph(extra_reader=True)
    assert lookup_from_transposed(model) == []
    assert [i.name for i in model.graph.initializer] == ["W"]


def test_exported_graphs_share_the_transposed_table(onnx_artifacts):
    model, art = onnx_artifacts["delta"]
    V, D = model.cfg.vocab_size, model.cfg.d_model
    for name in ("model.onnx", "step_last.onnx", "decode.onnx"):
        graph = onnx.load(str(art / name), load_external_data=False).graph
        inits = {i.name: list(i.dims) for i in graph.initializer}
        tables = [n for n, dims in inits.items() if dims == [V, D]]
        assert tables == [] and [n for n, dims in inits.items() if dims == [D, V]], name
        assert not any(n.op_type == "Transpose" and n.input[0] in inits for n in graph.node), name
