"""int4 weights: ONNX MatMulNBits on the linear layers only, float32 state, shape errors before any write."""
import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from exporters.pipeline import export_artifact
from exporters.quantize import QuantizationShapeError, check_int4_shapes
from runtime import InfiniSession
from tests.cli import run_cli
from tests.conftest import make_model

# tiny preset, int4 blocks of 32: measured top-1 agreement 1.000 over 50 segments, worst state rel 0.17
INT4_MIN_TOP1 = 0.95


@pytest.fixture(scope="module")
def int4_onnx(onnx_quantized):
    """The shared int4 export (tests/conftest.py): parity over 40 segments."""
    model, out, report = onnx_quantized["int4"]
    return model, out, json.loads((out / "manifest.json").read_text()), report


def test_int4_onnx_parity_and_graph(int4_onnx):
    model, out, manifest, report = int4_onnx
    assert report["passed"], report["failures"][:5]
    assert len(report["per_segment"]) == 40
    assert report["summary"]["top1"] >= INT4_MIN_TOP1
    assert 0 < report["summary"]["logits_max_abs"]  # quantized, not bit-exact
    assert manifest["quantization"] == "int4" and manifest["exporter"]["int4_block_size"] == 32
    assert manifest["parity"]["tolerance"]["min_top1"] > 0  # a measured tolerance, recorded
    # strict JSON, readable by JavaScript: the unbounded logits tolerances of int4 are null, not Infinity
    strict = json.loads((out / "manifest.json").read_text(), parse_constant=lambda c: pytest.fail(f"JSON {c}"))
    assert strict["parity"]["tolerance"]["logits_atol"] is None
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = Counter(n.op_type for n in graph.node)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    decode_ops = Counter(n.op_type for n in onnx.load(str(out / "decode.onnx")).graph.node)
    last_ops = Counter(n.op_type for n in onnx.load(str(out / "step_last.onnx")).graph.node)
    # every program; q/k/v read one activation and are packed into one product, gate/up into another
    products = n_linear - 3 * model.cfg.n_layers
    assert ops["MatMulNBits"] == decode_ops["MatMulNBits"] == last_ops["MatMulNBits"] == products == 9
    assert manifest["exporter"]["quantized_nodes"] == 3 * n_linear
    # the MatMuls left are activation x activation (attention, memory read/write) or exact constants
    # (RoPE's rotate-half permutation): their constant operands are not linear weights
    inits = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            w = onnx.numpy_helper.to_array(next(i for i in graph.initializer if i.name == node.input[1]))
            assert set(np.unique(w)) <= {-1.0, 0.0, 1.0}, node.name
    # state outputs (and logits) float32
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)
    session = InfiniSession.open(out)
    session.feed(np.arange(40) % 256)
    assert all(v.dtype == np.float32 for v in session.state.values())


def test_int4_smaller_than_int8_and_fp32(int4_onnx, onnx_artifacts, onnx_quantized):
    _, out, manifest, _ = int4_onnx
    _, fp32_art = onnx_artifacts["delta"]
    _, int8_art, _ = onnx_quantized["int8"]
    int8 = json.loads((int8_art / "manifest.json").read_text())
    size = lambda art: sum(f.stat().st_size for f in art.iterdir() if f.suffix in (".onnx", ".bin"))  # noqa: E731
    assert size(out) < size(int8_art) < size(fp32_art)
    # the lookup table: float32 in fp32 and int8 artifacts (the fp32 one stored once, transposed, as the LM head
    # reads it), int8 in int4 ones
    fp32_lookup = InfiniSession.open(fp32_art).manifest.embedding_lookup
    assert (fp32_lookup["dtype"], fp32_lookup["shape"], fp32_lookup["bytes"]) == ("float32", [256, 32], 4 * 256 * 32)
    assert (int8["embedding_lookup"]["dtype"], manifest["embedding_lookup"]["dtype"]) == ("float32", "int8")


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_block_size_that_does_not_divide_is_refused_before_writing(tmp_path, fmt):
    model = make_model("delta")  # tiny: in_features 32 (d_model) and 64 (d_ff)
    out = tmp_path / "art"
    with pytest.raises(QuantizationShapeError, match=r"--block-size 32") as info:
        export_artifact(model, out, fmt, quantize="int4", block_size=128, progress=False, log=None)
    assert "in_features 32" in str(info.value)
    assert not out.exists()
    with pytest.raises(ValueError, match="block_size must be one of"):
        export_artifact(model, out, fmt, quantize="int4", block_size=48, progress=False, log=None)
    assert not out.exists()
    assert len(check_int4_shapes(model, 32)) == 15


def test_block_size_error_when_nothing_fits():
    from infini_export import InfiniConfig, InfiniTransformer
    model = InfiniTransformer(InfiniConfig.from_name("tiny", d_model=24, d_head=12, n_heads=2, d_ff=40))
    with pytest.raises(QuantizationShapeError, match="--quantize int8"):
        check_int4_shapes(model, 16)



def test_cli_block_size_needs_int4_and_info_of_an_onnx_artifact(int4_onnx, tmp_path):
    _, out, manifest, _ = int4_onnx
    r = run_cli("export", str(tmp_path / "nock"), "--block-size", "16", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "block_size (--block-size) applies to int4 quantization only" in r.stderr
    assert not (tmp_path / "x").exists()
    r = run_cli("info", str(out))
    assert r.returncode == 0, r.stderr
    assert "int4" in r.stdout and f"{manifest['files']['program']['bytes']:,}" in r.stdout
    lookup = manifest["embedding_lookup"]
    line = next(x for x in r.stdout.splitlines() if x.startswith("lookup table:"))  # how the table is stored
    assert f"{lookup['bytes']:,} bytes (int8 [256, 32]" in line
    state_bytes = sum(4 * int(np.prod([1 if d == "batch" else d for d in s["shape"]])) for s in manifest["state"])
    assert f"{state_bytes:,}" in r.stdout


def test_int4_weights_are_prepacked_not_shared(int4_onnx):
    """MatMulNBits runs on its prepacked weights (unpacked it dequantizes the whole matrix per call): the runtime
    shares only the float weights and the int8 lookup table of an int4 artifact between its graphs and leaves
    prepacking on."""
    _, out, manifest, _ = int4_onnx
    s = InfiniSession.open(out)
    assert s.backend.shared_weights  # the lookup table (int8) is still mapped once
    table = manifest["embedding_lookup"]["tensors"][0]
    assert all(table in names and not any(n.endswith("_Q4") for n in names) for names in s.backend.shared_names.values())
    for sess in (s.backend.session, s.backend.decode_session):
        with pytest.raises(RuntimeError):  # the entry is absent: prepacking on
            sess.get_session_options().get_session_config_entry("session.disable_prepacking")
    ids = np.random.default_rng(0).integers(0, 256, 40)
    np.testing.assert_array_equal(s.generate(ids, 8), InfiniSession.open(out, share_weights=False).generate(ids, 8))
