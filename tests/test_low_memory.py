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
