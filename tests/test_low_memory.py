"""The runtime's low-memory mode: the same numbers as the default session, and a clear error where it does not
apply."""
import sys

import numpy as np
import pytest

from runtime import InfiniSession
from runtime.lowmem import return_large_blocks


def test_low_memory_session_computes_what_the_default_one_does(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    default, low = InfiniSession.open(art), InfiniSession.open(art, low_memory=True)
    ids = np.random.default_rng(0).integers(0, default.vocab_size, (1, 3 * default.segment_len + 5))
    for s in (default, low):
        s.feed(ids[:, :2 * default.segment_len])  # whole segments
    np.testing.assert_array_equal(low.feed(ids[:, 2 * default.segment_len:]),
                                  default.feed(ids[:, 2 * default.segment_len:]))  # a segment, then decode
    for name, value in default.state.items():
        np.testing.assert_array_equal(low.state[name], value, err_msg=name)
    assert low.position == default.position == 5
    np.testing.assert_array_equal(low.generate(ids[:, :3], 7), default.generate(ids[:, :3], 7))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_low_memory_sets_a_fixed_mmap_threshold():
    assert return_large_blocks() is True


def test_low_memory_is_refused_by_the_executorch_backend(tmp_path):
    from runtime.backends import open_backend
    with pytest.raises(ValueError, match="onnxruntime backend"):
        open_backend("executorch", manifest=None, low_memory=True)


def test_the_runtime_order_frees_each_layers_keys_and_values_before_the_next_layer(tmp_path):
    """onnxruntime's default order runs every layer's memory write at the end of the call (the state outputs come
    after the logits), keeping each layer's keys and values alive until then; the runtime's order does not."""
    import inspect

    import torch

    from exporters.onnx import export_onnx
    from benchmarks.activations import activation_peak
    from infini_export import InfiniConfig, InfiniTransformer
    from runtime.backends.ort import EXECUTION_ORDERS, OrtBackend
    assert inspect.signature(OrtBackend).parameters["execution_order"].default == EXECUTION_ORDERS[0]
    class NoDecode(InfiniTransformer):  # the decode program plays no part here: not traced
        decode = None

    torch.manual_seed(0)  # deep enough that the layers' keys and values outweigh one layer's attention scores
    model = NoDecode(InfiniConfig.from_name("tiny", n_layers=8)).eval()
    manifest = export_onnx(model, tmp_path)
    manifest.write()
    assert manifest.decode is None and not (tmp_path / "decode.onnx").exists()
    ours, default = (activation_peak(tmp_path, "last_program", order) for order in ("priority_based", "default"))
    assert ours["nodes"] == default["nodes"] > 0
    assert ours["peak_bytes"] < 0.8 * default["peak_bytes"], (ours, default)  # 0.70 here, 0.52 at 110M


def test_an_unknown_execution_order_is_refused(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    with pytest.raises(ValueError, match="execution_order must be one of"):
        InfiniSession.open(art, execution_order="fastest")
