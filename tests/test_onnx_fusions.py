"""exporters/onnx_fusions.py: the RMSNorm rewrite fires only on a true mean, and computes the same thing."""
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.onnx_fusions import FUSED_OPSET, fuse
from runtime.ortenv import import_onnxruntime


def _norm_graph(col: np.ndarray, opset: int = FUSED_OPSET) -> ir.Model:
    """x * 1/sqrt(matmul(x * x, col) + eps) * w, written as the model's export writes it."""
    D = col.shape[0]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(col.astype(np.float32), "col"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(rng.normal(size=D).astype(np.float32), "w")]
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("MatMul", ["sq", "col"], ["ms"]),
             helper.make_node("Add", ["ms", "eps"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Reciprocal", ["rms"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["xn"]),
             helper.make_node("Mul", ["xn", "w"], ["y"])]
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ir.serde.deserialize_model(model)


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    ort = import_onnxruntime()
    sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_rmsnorm_rewrite_fires_on_a_mean_and_keeps_the_values():
    D = 16
    model = _norm_graph(np.full((D, 1), 1.0 / D))
    x = np.random.default_rng(1).normal(size=(2, 5, D)).astype(np.float32) * 3
    before = _run(model, x)
    assert fuse(model) == {"RMSNormalization": 1}
    assert [n.op_type for n in model.graph] == ["RMSNormalization"]
    assert sorted(model.graph.initializers) == ["w"]  # the mean column and epsilon are gone
    after = _run(model, x)
    w = model.graph.initializers["w"].const_value.numpy()
    ref = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(after, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("col", [np.full((16, 1), 1.0 / 15), np.linspace(0, 1, 16)[:, None]])
def test_rmsnorm_rewrite_leaves_other_matmuls_alone(col):
    model = _norm_graph(col)
    assert fuse(model) == {"RMSNormalization": 0}
    assert "RMSNormalization" not in [n.op_type for n in model.graph]


def test_rmsnorm_rewrite_needs_opset_23():
    with pytest.raises(ValueError, match="opset 23"):
        fuse(_norm_graph(np.full((16, 1), 1.0 / 16), opset=20))


def _normalize_graph(scale: float, D: int = 16) -> ir.Model:
    """``F.normalize(x, dim=-1) * scale * w`` as torch.onnx writes it (infini-transformer-pytorch's RMSNorm)."""
    w = np.random.default_rng(0).normal(size=D).astype(np.float32)
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
             numpy_helper.from_array(np.array(scale, np.float32), "scale"), numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("ReduceL2", ["x", "axes"], ["n"], keepdims=1), helper.make_node("Clip", ["n", "eps"], ["c"]),
             helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Expand", ["c", "shape"], ["e"]),
             helper.make_node("Div", ["x", "e"], ["xn"]), helper.make_node("Mul", ["xn", "scale"], ["xs"]),
             helper.make_node("Mul", ["xs", "w"], ["y"])]
    graph = helper.make_graph(nodes, "normalize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, D])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", FUSED_OPSET)]))


def test_normalize_rmsnorm_rewrite_fires_on_sqrt_d_and_keeps_the_values():
    D = 16
    model = _normalize_graph(np.sqrt(D), D)
    x = np.random.default_rng(1).normal(size=(2, 5, D)).astype(np.float32) * 3
    x[0, 0] = 0.0  # a zero row stays zero (their clamp, our epsilon)
    before = _run(model, x)
    assert fuse(model) == {"RMSNormalization": 1}
    assert [n.op_type for n in model.graph] == ["RMSNormalization"]
    after = _run(model, x)
    w = model.graph.initializers["w"].const_value.numpy()
    x64 = x.astype(np.float64)
    ref = x64 / np.maximum(np.linalg.norm(x64, axis=-1, keepdims=True), 1e-12) * np.sqrt(D) * w
    np.testing.assert_allclose(after, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert not after[0, 0].any()


def test_normalize_rmsnorm_rewrite_needs_the_sqrt_d_scale():
    model = _normalize_graph(2.0)  # not sqrt(16): a scaled L2 normalisation, not an RMS norm
    assert fuse(model) == {"RMSNormalization": 0}
    assert "RMSNormalization" not in [n.op_type for n in model.graph]


def test_exported_step_has_one_rmsnorm_node_per_norm(onnx_artifacts):
    import json
    model, art = onnx_artifacts["delta"]
    graph = onnx.load(str(art / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    n_norms = 2 * model.cfg.n_layers + 1  # each but the first with its residual Add: onnxruntime's skip norm
    assert ops.count("RMSNormalization") == 1 and ops.count("SkipSimplifiedLayerNormalization") == n_norms - 1
    assert "Reciprocal" not in ops and "Sqrt" not in ops  # no unfused norm left
    used = {i for n in graph.node for i in n.input}
    assert [i.name for i in graph.initializer if i.name not in used] == []  # nothing left behind
    exporter = json.loads((art / "manifest.json").read_text())["exporter"]
    assert exporter["opset"] == FUSED_OPSET
    packed = {"MatMul": 2 * model.cfg.n_layers, "MatMulNBits": 0, "MatMulInteger": 0}  # q/k/v, gate/up a layer
    skip = {"SkipSimplifiedLayerNormalization": n_norms - 1}
    assert exporter["fusions"] == {
        "step": {"RMSNormalization": n_norms, **skip, "attention_blocks": 0, "packed_projections": packed},
        "step_last": {"RMSNormalization": n_norms, "SkipSimplifiedLayerNormalization": n_norms - 2,
                      "attention_blocks": 0, "packed_projections": packed},
        "decode": {"RMSNormalization": n_norms, **skip, "GroupQueryAttention": model.cfg.n_layers,
                   "packed_projections": packed}}


def test_decode_program_reads_the_cache_through_group_query_attention(onnx_artifacts):
    """One GroupQueryAttention per layer (RoPE inside, the cache updated in place by the runtime), and no graph
    op left that reads all N cache slots: the masked softmax over the whole cache is gone."""
    import json
    model, art = onnx_artifacts["linear"]
    graph = onnx.load(str(art / "decode.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == model.cfg.n_layers
    assert "Softmax" not in ops and "Less" not in ops and "Where" not in ops
    gqa = next(n for n in graph.node if n.op_type == "GroupQueryAttention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gqa.attribute}
    assert attrs["do_rotary"] == 1 and attrs["rotary_interleaved"] == 0 and attrs["num_heads"] == model.cfg.n_heads
    dec = json.loads((art / "manifest.json").read_text())["decode"]
    cache_out = [o for o in dec["outputs"] if o["role"] == "cache-out"]
    assert [o["name"] for o in cache_out] == [c["output"] for c in dec["cache"]]
    assert all(o["shape"] == c["shape"] for o, c in zip(cache_out, dec["cache"]))  # the whole (B, H, N, dh) cache
