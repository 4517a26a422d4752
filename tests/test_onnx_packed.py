"""onnxruntime's fusions of the default ONNX export: the residual Add + RMSNorm as one
``SkipSimplifiedLayerNormalization`` (``exporters/onnx_skip_norm.py``) and the q/k/v and gate/up weight products
packed into one product + ``Split`` each (``exporters/onnx_packed.py``), in float32, int8 and int4. Each rewrite is
checked for what it removes, for where it must not fire, and against the graph before it and the eager model."""
import collections
import copy

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporters.onnx_packed import pack_projections
from exporters.onnx_skip_norm import fuse_skip_norms
from exporters.pipeline import export_artifact
from runtime.manifest import Manifest
from runtime.ortenv import import_onnxruntime
from tests.conftest import make_model

SKIP = "SkipSimplifiedLayerNormalization"


def _session(model: onnx.ModelProto):
    ort = import_onnxruntime()
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


# ---- the skip-norm rule on small graphs --------------------------------------------------------------------
def _residual_norm_graph(h_shape=("B", "T", 8), axis: int = -1, extra_sum_reader: bool = True) -> onnx.ModelProto:
    """``s = x + h; y = RMSNormalization(s, w)``, ``s`` also a graph output (the next residual)."""
    D = 8
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=D).astype(np.float32), "w")
    nodes = [helper.make_node("Add", ["x", "h"], ["s"]),
             helper.make_node("RMSNormalization", ["s", "w"], ["y"], axis=axis, epsilon=1e-5, stash_type=1)]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", D])]
    if extra_sum_reader:
        nodes.append(helper.make_node("Mul", ["s", "s"], ["s2"]))
        outs.append(helper.make_tensor_value_info("s2", TensorProto.FLOAT, ["B", "T", D]))
    graph = helper.make_graph(nodes, "skip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", D]),
                                              helper.make_tensor_value_info("h", TensorProto.FLOAT, list(h_shape))],
                              outs, [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def test_skip_norm_rule_fuses_the_add_and_keeps_the_sum():
    proto = _residual_norm_graph()
    x, h = (np.random.default_rng(i).normal(size=(2, 3, 8)).astype(np.float32) for i in (1, 2))
    before = _session(proto).run(None, {"x": x, "h": h})
    model = ir.serde.deserialize_model(proto)
    assert fuse_skip_norms(model) == 1
    fused = ir.serde.serialize_model(model)
    assert [n.op_type for n in fused.graph.node] == [SKIP, "Mul"]
    node = fused.graph.node[0]
    assert node.domain == "com.microsoft" and list(node.output)[1:3] == ["", ""]  # mean, inv_std_var left out
    after = _session(fused).run(None, {"x": x, "h": h})
    for a, b in zip(before, after):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("h_shape,axis", [((1, "T", 8), -1),  # a broadcast summand
                                          (("B", "T", 8), 1)])  # a norm over another axis
def test_skip_norm_rule_leaves_other_forms_alone(h_shape, axis):
    model = ir.serde.deserialize_model(_residual_norm_graph(h_shape, axis))
    assert fuse_skip_norms(model) == 0
    assert SKIP not in [n.op_type for n in model.graph]


# ---- packing on small graphs ---------------------------------------------------------------------------------
def _projections_graph(reads: str = "xxxu", constant: bool = True) -> onnx.ModelProto:
    """Products of the inputs named by ``reads`` with weights of 4, 6, 4 and 5 columns (``"xxxu"``: three of
    ``x``, as the export writes q/k/v, and one of ``u``); ``constant=False``: the second weight a graph input."""
    widths = (4, 6, 4, 5)[:len(reads)]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, n)).astype(np.float32), f"w{i}") for i, n in enumerate(widths)]
    ins = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", 8]) for name in "xuv"]
    if not constant:
        ins.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [8, 6]))
        inits = [i for i in inits if i.name != "w1"]
    nodes = [helper.make_node("MatMul", [r, f"w{i}"], [f"y{i}"]) for i, r in enumerate(reads)]
    nodes += [helper.make_node("Relu", [f"y{i}"], [f"r{i}"]) for i in range(len(reads))]
    outs = [helper.make_tensor_value_info(f"r{i}", TensorProto.FLOAT, ["B", n]) for i, n in enumerate(widths)]
    return helper.make_model(helper.make_graph(nodes, "proj", ins, outs, inits),
                             opset_imports=[helper.make_opsetid("", 23)])


def test_products_of_one_input_are_packed_bit_for_bit():
    proto = _projections_graph()
    feeds = {n: np.random.default_rng(i).normal(size=(3, 8)).astype(np.float32) for i, n in enumerate("xuv")}
    before = _session(proto).run(None, feeds)
    packed = copy.deepcopy(proto)
    assert pack_projections(packed) == {"MatMul": 1, "MatMulNBits": 0, "MatMulInteger": 0}
    onnx.checker.check_model(packed, full_check=True)
    assert _ops(packed) == {"MatMul": 2, "Split": 1, "Relu": 4}
    assert {i.name for i in packed.graph.initializer} >= {"w3"} and not {"w0", "w1", "w2"} & \
        {i.name for i in packed.graph.initializer}
    for a, b in zip(before, _session(packed).run(None, feeds)):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("reads,constant", [("xuv", True),  # each input read once
                                           ("xx", False)])  # x read twice, one weight not a constant
def test_products_of_other_inputs_or_weights_are_left_alone(reads, constant):
    proto = _projections_graph(reads, constant)
    assert sum(pack_projections(proto).values()) == 0
    assert "Split" not in _ops(proto)


# ---- the tiny preset's exports --------------------------------------------------------------------------------
def _unfused_export(tmp_path_factory, name: str, quantize: str):
    """The tiny preset's default (onnxruntime ops) export with this module's two rewrites switched off (the graph
    they start from), no parity run."""
    import exporters.onnx as onnx_exporter
    art = tmp_path_factory.mktemp(name) / "art"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_exporter, "fuse_skip_norms", lambda m: 0)
        patch.setattr(onnx_exporter, "pack_projections", lambda m: {})
        export_artifact(make_model("delta"), art, "onnx", quantize=quantize, parity_segments=0, progress=False,
                        log=None)
    return art


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, onnx_quantized):
    """{precision: (model, fused artifact (the shared one, parity checked), unfused twin)}, int8 and int4."""
    out = {}
    for q in ("int8", "int4"):
        model, art, report = onnx_quantized[q]
        assert report["passed"], report["failures"][:3]
        out[q] = (model, art, _unfused_export(tmp_path_factory, f"plain-{q}", q))
    return out


def _graphs(art):
    man = Manifest.load(art)
    return man, {key: onnx.load(str(man.file_path(key)), load_external_data=False)
                 for key in ("program", "last_program", "decode_program")}


def _shared_activation_products(model: onnx.ModelProto, op_types) -> list[str]:
    """Activations read by two or more weight products (what packing leaves none of)."""
    inits = {i.name for i in model.graph.initializer}
    readers = collections.Counter(n.input[0] for n in model.graph.node if n.op_type in op_types
                                  and len(n.input) > 1 and n.input[1] in inits)
    return [name for name, k in readers.items() if k > 1]


def _assert_fused(model: onnx.ModelProto, layers: int, products, norms_without_add: int) -> None:
    ops = _ops(model)
    assert ops[SKIP] == 2 * layers + 1 - norms_without_add, ops  # every residual Add + norm but the first norm
    assert ops["RMSNormalization"] == norms_without_add, ops
    assert ops["Split"] == 2 * layers, ops  # q/k/v and gate/up in each block
    producer = {o: n for n in model.graph.node for o in n.output}
    assert not [n for n in model.graph.node if n.op_type == "RMSNormalization"
                and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "Add"]
    assert _shared_activation_products(model, products) == []


KEYS = {"program": "step", "last_program": "step_last", "decode_program": "decode"}


def test_default_export_fuses_norms_and_packs_projections(onnx_artifacts):
    model, art = onnx_artifacts["delta"]
    man, graphs = _graphs(art)
    L = model.cfg.n_layers
    for key, graph in graphs.items():  # step_last: the final norm reads the last row, not the Add
        _assert_fused(graph, L, ("MatMul",), 2 if key == "last_program" else 1)
        fusions = man.exporter["fusions"][KEYS[key]]
        assert fusions[SKIP] == _ops(graph)[SKIP] and fusions["packed_projections"]["MatMul"] == 2 * L
    assert set(man.exporter["contrib_ops"]) == {"com.microsoft::GroupQueryAttention", f"com.microsoft::{SKIP}"}


@pytest.mark.parametrize("q,product", [("int8", "MatMulInteger"), ("int4", "MatMulNBits")])
def test_quantized_exports_pack_their_own_products(quantized, q, product):
    model, art, plain = quantized[q]
    man, graphs = _graphs(art)
    L = model.cfg.n_layers
    for key, graph in graphs.items():
        _assert_fused(graph, L, (product,), 2 if key == "last_program" else 1)
        assert man.exporter["fusions"][KEYS[key]]["packed_projections"][product] == 2 * L
    _, plain_graphs = _graphs(plain)  # the twin still has what the rewrites remove
    assert len(_shared_activation_products(plain_graphs["decode_program"], (product,))) == 2 * L
    assert _ops(plain_graphs["decode_program"])[SKIP] == 0


def _sessions(art):
    man = Manifest.load(art)
    ort = import_onnxruntime()
    return man, {key: ort.InferenceSession(str(man.file_path(key)), providers=["CPUExecutionProvider"])
                 for key in ("program", "decode_program")}


def _segments(man, step, ids, segments: int):
    """Logits and state of ``segments`` consecutive segments through the raw segment program, chained."""
    N = man.segment_len
    state, out = [np.zeros(e.concrete_shape(1), np.float32) for e in man.state], []
    for s in range(segments):
        outs = step.run(None, dict(zip(man.input_names, [ids[:, s * N:(s + 1) * N], *state])))
        out.append(outs)
        state = outs[1:]
    return out, state


def _decode(decode, ids, steps: int, state: dict) -> list:
    """``steps`` tokens through the raw decode program from position 0, every output fed back as the next call's
    input (``present_*`` -> ``past_*``, the whole caches of the in-place form), across the segment's end; returns
    every call's outputs, the caches cut to their valid rows."""
    names = [i.name for i in decode.get_inputs()]
    outputs = [o.name for o in decode.get_outputs()]
    feeds = {n: state[n] if n in state else np.zeros([1 if isinstance(d, str) else d for d in i.shape], np.float32)
             for n, i in zip(names, decode.get_inputs()) if n not in ("input_ids", "position")}
    N = next(i.shape[2] for i in decode.get_inputs() if i.name.startswith("past_key"))
    results = []
    for k in range(steps):
        outs = decode.run(None, {**feeds, "input_ids": ids[:, k:k + 1], "position": np.array([k % N], np.int64)})
        p = k % N + 1  # the caches' valid rows (a run without in-place binding leaves the others undefined)
        results.append([v[:, :, :p] if o.startswith(("present_key", "present_value")) else v
                        for o, v in zip(outputs, outs)])
        feeds.update({o.replace("present_", "past_"): v for o, v in zip(outputs, outs) if o.startswith("present_")})
    return results


def _assert_all_close(got: list, want: list, atol: float) -> None:
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("q", ["int8", "int4"])
def test_quantized_fused_graphs_equal_the_unfused_ones(quantized, q):
    """Three segments and N + 3 decode steps (across a segment's end) through the fused and the unfused graphs of
    the same quantized weights: logits and every state output (the caches included)."""
    model, art, plain = quantized[q]
    (man, fused), (_, unfused) = _sessions(art), _sessions(plain)
    N = man.segment_len
    ids = np.random.default_rng(7).integers(0, man.vocab_size, (1, 3 * N + 3))
    got, state = _segments(man, fused["program"], ids, 3)
    want, _ = _segments(man, unfused["program"], ids, 3)
    for g, w in zip(got, want):
        _assert_all_close(g, w, 1e-4)
    past = {n.replace("present_", "past_"): v for n, v in zip(man.output_names[1:], state)}  # memory and norm
    for g, w in zip(_decode(fused["decode_program"], ids[:, 3 * N - N:], N + 3, past),
                    _decode(unfused["decode_program"], ids[:, 3 * N - N:], N + 3, past)):
        _assert_all_close(g, w, 1e-4)


def test_fused_export_matches_eager_over_segments_and_decode_steps(onnx_artifacts):
    """The default (fused) export's raw graphs against the eager model: three segments through ``step`` (logits and
    state), then N + 3 tokens through ``decode`` in the fused form from the third segment's state, every output
    (state, pending write, the caches' valid rows) compared at every token."""
    model, art = onnx_artifacts["delta"]
    man, sessions = _sessions(art)
    assert man.decode.form == "fused"
    N = man.segment_len
    ids = np.random.default_rng(9).integers(0, man.vocab_size, (1, 4 * N + 3))
    got, state = _segments(man, sessions["program"], ids, 3)
    eager = model.init_state(1)
    with torch.no_grad():
        for s, outs in enumerate(got):
            logits, eager = model.step(torch.from_numpy(ids[:, s * N:(s + 1) * N]), eager)
            _assert_all_close(outs, [logits.numpy(), *[t.numpy() for m in eager for t in (m.memory, m.norm)]], 2e-4)
        st, cache = model.decode_state_from(eager)
    past = {n.replace("present_", "past_"): v for n, v in zip(man.output_names[1:], state)}
    tail = ids[:, 3 * N:]
    for k, outs in enumerate(_decode(sessions["decode_program"], tail, N + 3, past)):
        with torch.no_grad():
            logits, st, cache = model.decode(torch.from_numpy(tail[:, k:k + 1]), torch.tensor([k % N]), st, cache,
                                             "fused")
        want = [logits.numpy(), *[t.numpy() for layer in st for t in layer]]
        _assert_all_close(outs[:len(want)], want, 2e-4)
        p = k % N + 1
        _assert_all_close(outs[len(want):],
                          [t.numpy()[:, :, :p] for layer in cache for t in layer], 2e-4)
