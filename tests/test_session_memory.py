"""What sets the default onnxruntime session's memory: one mapped copy of every weight product's weights (the
packed ones too) for all graphs, and the allocation settings the runtime opens each graph with."""
import sys

import onnx
import pytest

from exporters.onnx_weights import MIN_EXTERNAL_BYTES, SHAREABLE_USES
from runtime import InfiniSession
from runtime.lowmem import LOW_MEMORY_THRESHOLD, THRESHOLD, return_large_blocks
from runtime.manifest import Manifest
from runtime.ortenv import import_onnxruntime, shared_cpu_arena


def _sessions(session):
    b = session.backend
    return {"program": b.session, "last_program": b.last_session, "decode_program": b.decode_session}


def test_every_weight_product_of_every_graph_is_in_the_shared_table(onnx_artifacts):
    """The packed q/k/v and gate/up weights (written after the export by ``pack_projections``) are mapped from
    ``weights.bin`` once like every other weight: no graph loads a weight of its own."""
    _, art = onnx_artifacts["delta"]
    manifest = Manifest.load(art)
    fusions = manifest.exporter["fusions"]
    assert manifest.exporter["ops"] == "onnxruntime"
    assert set(manifest.shared_weights.graphs) == {"program", "last_program", "decode_program"}
    packed_seen = 0
    for key, table in manifest.shared_weights.graphs.items():
        assert sum(fusions[{"program": "step", "last_program": "step_last", "decode_program": "decode"}[key]]
                   ["packed_projections"].values()) > 0, key
        shared = {entry[0] for entry in table}
        graph = onnx.load(str(manifest.file_path(key)), load_external_data=False).graph
        uses = {}
        for node in graph.node:
            for i, name in enumerate(node.input):
                uses.setdefault(name, set()).add((node.op_type, i))
        external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        weights = [t.name for t in external if uses.get(t.name) and uses[t.name] <= SHAREABLE_USES]
        assert weights and set(weights) <= shared, (key, sorted(set(weights) - shared))
        packed = [t.name for t in external if "_packed_" in t.name]
        assert packed and set(packed) <= shared, (key, sorted(set(packed) - shared))
        packed_seen += len(packed)
        small = [t.name for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
                 and len(t.raw_data) >= MIN_EXTERNAL_BYTES]
        assert not small, (key, small)  # every large initializer is in the weights file
    assert packed_seen
    session = InfiniSession.open(art)
    for key, table in manifest.shared_weights.graphs.items():  # and handed to the graph that refers to it
        assert sorted(session.backend.shared_names[key]) == sorted(entry[0] for entry in table), key


def test_default_sessions_free_each_activation_into_one_shared_arena(onnx_artifacts):
    _, art = onnx_artifacts["delta"]
    for key, sess in _sessions(InfiniSession.open(art)).items():
        opts = sess.get_session_options()
        assert opts.enable_cpu_mem_arena, key
        assert not opts.enable_mem_pattern and not opts.enable_mem_reuse, key
        assert opts.get_session_config_entry("session.use_env_allocators") == "1", key
        assert opts.get_session_config_entry("session.use_device_allocator_for_initializers") == "1", key
        assert opts.get_session_config_entry("session.disable_prepacking") == "1", key  # float weights shared
    for key, sess in _sessions(InfiniSession.open(art, low_memory=True)).items():
        opts = sess.get_session_options()
        assert not (opts.enable_cpu_mem_arena or opts.enable_mem_pattern or opts.enable_mem_reuse), key
        with pytest.raises(RuntimeError, match="does not have configuration"):
            opts.get_session_config_entry("session.use_env_allocators")


def test_the_shared_arena_is_registered_once():
    ort = import_onnxruntime()
    assert shared_cpu_arena(ort) is True
    assert shared_cpu_arena(ort) is True


def test_sessions_sharing_the_arena_compute_what_a_session_of_its_own_does(onnx_artifacts):
    import numpy as np
    _, art = onnx_artifacts["linear"]
    a, b, low = InfiniSession.open(art), InfiniSession.open(art), InfiniSession.open(art, low_memory=True)
    ids = np.random.default_rng(1).integers(0, a.vocab_size, (1, 2 * a.segment_len + 3))
    out = [s.feed(ids) for s in (a, b, low)]
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_default_session_does_not_raise_the_low_memory_mmap_threshold():
    assert THRESHOLD > LOW_MEMORY_THRESHOLD
    assert return_large_blocks(LOW_MEMORY_THRESHOLD) is True
    assert return_large_blocks(THRESHOLD) is True
    from runtime import lowmem
    assert lowmem._set == [LOW_MEMORY_THRESHOLD]
