"""The 110M preset's real shapes (vocabulary 32000, d_model 768, segments of 2048) at one layer, random weights:
ONNX export in float32 and int4 with parity against the eager model. ~95 s of CPU (one core), 3.2 GB peak RSS.

The full 12-layer model is measured by scripts/real_size.py (docs/real_size.md), not here.
"""
from collections import Counter

import onnx
import pytest
import torch

from exporters.variants import get_variant
from infini_export import InfiniConfig, InfiniTransformer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return InfiniTransformer(InfiniConfig.from_name("base-32k", n_layers=1)).eval()


def test_base_32k_one_layer_float32_and_int4(model, tmp_path):
    cfg = model.cfg
    assert (cfg.vocab_size, cfg.d_model, cfg.segment_len) == (32000, 768, 2048)
    fp32, report = get_variant("onnx-fp32").export(model, tmp_path / "fp32", parity_segments=2, progress=False, log=None)
    assert report.passed, report.failures[:5]
    assert report.summary["top1"] == 1.0 and report.summary["state_max_rel"] < 1e-4
    # one segment: the state wiring (checked from two segments on) was just checked on the float32 graph
    int4, report4 = get_variant("onnx-int4").export(model, tmp_path / "int4", parity_segments=1, progress=False,
                                                    log=None)
    assert report4.passed, report4.failures[:5]  # within the measured int4 tolerance, at real shapes
    graph = onnx.load(str(tmp_path / "int4" / "model.onnx")).graph
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # 7 + the LM head, q/k/v packed into one product and gate/up into another
    assert len(linears) == 8 and Counter(n.op_type for n in graph.node)["MatMulNBits"] == 8 - 3
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)  # state float32
    # the 4-bit weights (with scales and zero points) are <= 17% of the linear layers' float32 bytes
    inits = {i.name: i for i in graph.initializer}
    q_bytes = sum(len(inits[x].raw_data) or onnx.numpy_helper.to_array(inits[x]).nbytes
                  for n in graph.node if n.op_type == "MatMulNBits" for x in n.input[1:] if x in inits)
    fp32_bytes = sum(4 * m.weight.numel() for m in linears)
    assert q_bytes <= 0.17 * fp32_bytes, (q_bytes, fp32_bytes)
    # both programs' files with their shared weights. fp32: the tied embedding / LM head stored once. int4: the layers' float32 weights replaced by 4-bit ones
    # (the LM head its own 4-bit copy), the lookup's table by an int8 one (tests/test_quantize_lookup.py checks its bytes)
    size = lambda m: sum(f.bytes for k, f in m.files.items() if k in ("program", "decode_program", "last_program", "weights"))  # noqa: E731,E501
    embedding = 4 * cfg.vocab_size * cfg.d_model
    assert 4 * model.num_parameters() <= size(fp32) < 4 * model.num_parameters() + embedding
    assert size(int4) <= size(fp32) - (fp32_bytes - embedding) + q_bytes + 1_000_000
