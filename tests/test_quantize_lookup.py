"""The embedding lookup of int4 artifacts: its table int8 with one float32 scale per row, in place of float32.

The ONNX tests export a real-vocabulary model (``small-32k`` at one layer, random weights: a 32000 x 256 table) in int4
twice, with the 8-bit lookup and with the float32 one, and compare. The ExecuTorch form is checked in
tests/test_executorch.py (the int4 artifact of the tiny preset).
"""
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporters import quantize_lookup
from exporters.quantize_lookup import INT8_SUFFIX, SCALE_SUFFIX, quantize_rows_int8
from exporters.variants import get_variant
from infini_export import InfiniConfig, InfiniTransformer
from runtime import InfiniSession

GRAPHS = ("model.onnx", "decode.onnx", "step_last.onnx")


def test_rows_int8_within_half_a_scale():
    rng = np.random.default_rng(0)
    t = (rng.standard_normal((64, 48)) * rng.uniform(0.01, 3.0, (64, 1))).astype(np.float32)
    t[3] = 0.0  # a row of zeros
    t[5, 7] = 40.0  # an outlier: its row's scale grows, the other rows keep theirs
    q, scale = quantize_rows_int8(t)
    assert q.dtype == np.int8 and q.shape == t.shape and np.abs(q.astype(int)).max() <= 127
    assert scale.dtype == np.float32 and scale.shape == (64, 1)
    np.testing.assert_allclose(scale[:, 0], np.abs(t).max(axis=1) / 127, rtol=1e-6)
    err = np.abs(q.astype(np.float64) * scale.astype(np.float64) - t.astype(np.float64))
    assert np.all(err <= scale / 2 * (1 + 1e-6)), (err / np.maximum(scale, 1e-30)).max()
    assert not q[3].any() and q[5, 7] == 127


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return InfiniTransformer(InfiniConfig.from_name("small-32k", n_layers=1)).eval()


@pytest.fixture(scope="module")
def int4(model, tmp_path_factory):
    """{lookup bits: (artifact, manifest, parity report)}: int4 with the 8-bit lookup (the default) and with the
    float32 one (what int4 stored before)."""
    out = {}
    patch = pytest.MonkeyPatch()
    try:
        for bits in (32, quantize_lookup.DEFAULT_LOOKUP_BITS):
            patch.setattr(quantize_lookup, "DEFAULT_LOOKUP_BITS", bits)
            art = tmp_path_factory.mktemp(f"int4_lookup{bits}")
            manifest, report = get_variant("onnx-int4").export(model, art, parity_segments=2, progress=False, log=None)
            out[bits] = (art, manifest.to_dict(), report)
    finally:
        patch.undo()
    return out


def _size(manifest) -> int:
    return sum(f["bytes"] for k, f in manifest["files"].items()
               if k in ("program", "decode_program", "last_program", "weights"))


@pytest.mark.slow
def test_int8_lookup_is_the_default_and_saves_three_quarters_of_the_table(model, int4):
    assert quantize_lookup.DEFAULT_LOOKUP_BITS == 8
    V, D = model.cfg.vocab_size, model.cfg.d_model
    assert (V, D) == (32000, 256)
    _, old, _ = int4[32]
    _, new, _ = int4[8]
    # the float32 table, stored once, becomes an int8 table and a float32 scale per row, stored once
    expected = 4 * V * D - (V * D + 4 * V)
    saved = _size(old) - _size(new)
    # slack: weights.bin aligns each tensor to 4096 bytes; each of the 3 graphs names 3 more nodes and 1 more tensor
    assert abs(saved - expected) <= 3 * 4096 + 3 * 1024, (saved, expected)
    assert old["embedding_lookup"]["dtype"] == "float32" and old["embedding_lookup"]["bytes"] == 4 * V * D
    lookup = new["embedding_lookup"]
    assert (lookup["dtype"], lookup["bits"], lookup["shape"], lookup["bytes"]) == ("int8", 8, [V, D], V * D + 4 * V)
    assert "int8" in new["exporter"]["quantization_scheme"]


@pytest.mark.slow
def test_every_graph_reads_the_one_int8_table(model, int4):
    art, manifest, _ = int4[8]
    V, D = model.cfg.vocab_size, model.cfg.d_model
    table, scale = manifest["embedding_lookup"]["tensors"]
    assert table.endswith(INT8_SUFFIX) and scale.endswith(SCALE_SUFFIX)
    offsets = set()
    for name in GRAPHS:
        graph = onnx.load(str(art / name), load_external_data=False).graph
        inits = {i.name: i for i in graph.initializer}
        assert inits[table].data_type == onnx.TensorProto.INT8 and list(inits[table].dims) == [V, D]
        assert list(inits[scale].dims) == [V, 1]
        # no float32 table left: the LM head is its own 4-bit MatMulNBits weight
        assert not [i.name for i in graph.initializer if list(i.dims) == [V, D] and i.data_type == onnx.TensorProto.FLOAT]
        ops = Counter(n.op_type for n in graph.node)
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert ops["MatMulNBits"] == linears - 3 * model.cfg.n_layers  # q/k/v packed into one, gate/up into one
        readers = [n for n in graph.node if table in n.input]
        assert [n.op_type for n in readers] == ["Gather"]
        cast = next(n for n in graph.node if readers[0].output[0] in n.input)
        mul = next(n for n in graph.node if cast.output[0] in n.input)
        assert (cast.op_type, mul.op_type) == ("Cast", "Mul")
        offsets.add({e.key: e.value for e in inits[table].external_data}["offset"])
    assert len(offsets) == 1  # stored once in weights.bin
    # the runtime hands the mapped table to all three graphs (it is read by Gather, never prepacked)
    session = InfiniSession.open(art)
    assert all(table in session.backend.shared_names[key] for key in ("program", "decode_program", "last_program"))
    assert not any(n.endswith("_Q4") for names in session.backend.shared_names.values() for n in names)


@pytest.mark.slow
def test_dequantized_table_within_half_a_scale_of_the_float_table(model, int4):
    art, manifest, _ = int4[8]
    table, scale = manifest["embedding_lookup"]["tensors"]
    graph = onnx.load(str(art / "model.onnx")).graph  # with its external data
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.name in (table, scale)}
    q, s = inits[table].astype(np.float64), inits[scale].astype(np.float64)
    w = model.embed.weight.detach().double().numpy()
    err = np.abs(q * s - w)
    assert np.all(err <= s / 2 * (1 + 1e-6)), (err / s).max()
    assert np.all(s > 0) and np.allclose(s[:, 0], np.abs(w).max(axis=1) / 127, rtol=1e-6)


@pytest.mark.slow
def test_int8_lookup_parity(int4):
    _, _, old = int4[32]
    art, manifest, report = int4[8]
    assert report.passed, report.failures[:5]
    assert manifest["parity"]["passed"]
    # the lookup's error (<= 1/254 of a row's largest value) is small next to the 4-bit linear layers'
    assert report.summary["top1"] >= old.summary["top1"] - 0.03, (report.summary, old.summary)
    assert report.summary["state_max_rel"] <= old.summary["state_max_rel"] + 0.03, (report.summary, old.summary)
    ids = np.random.default_rng(0).integers(0, 32000, 300)
    shared, own = InfiniSession.open(art), InfiniSession.open(art, share_weights=False)
    np.testing.assert_array_equal(shared.feed(ids), own.feed(ids))


@pytest.mark.slow
def test_a_malformed_lookup_section_is_refused(int4):
    from runtime.errors import ManifestError
    from runtime.manifest import Manifest
    art, manifest, _ = int4[8]
    for bad in ({"dtype": 8}, {"dtype": "int8", "tensors": "table"}, {"dtype": "int8", "tensors": [3]}, ["int8"]):
        with pytest.raises(ManifestError, match="embedding_lookup"):
            Manifest.from_dict({**manifest, "embedding_lookup": bad}, art)
