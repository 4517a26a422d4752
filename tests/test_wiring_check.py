"""The state-wiring checks of the parity run, each on an exported graph one of whose state (or cache) inputs is
disconnected: its consumers read zeros of its shape instead, so no value of that input reaches an output. The
check of the program that was altered names the input; the checks of the programs left as exported pass."""
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from infini_export.parity import tolerance_for, validate
from infini_export.parity_decode import validate_decode
from runtime import InfiniSession
from tests.conftest import rehash_manifest


def _disconnect(graph_file, name):
    """Every node of ``graph_file`` that reads the graph input ``name`` reads zeros of its shape instead."""
    m = onnx.load(str(graph_file), load_external_data=False)
    g = m.graph
    assert name in [i.name for i in g.input], f"{name} is not an input of {graph_file.name}"
    readers = 0
    for node in g.node:
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = f"{name}__zeros"
                readers += 1
    assert readers, f"nothing reads {name} in {graph_file.name}"
    zeros = [helper.make_node("Shape", [name], [f"{name}__shape"]),
             helper.make_node("ConstantOfShape", [f"{name}__shape"], [f"{name}__zeros"],
                              value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))]
    for i, node in enumerate(zeros):
        g.node.insert(i, node)
    onnx.save(m, str(graph_file))


def _altered(onnx_artifacts, tmp_path, program, name):
    """(model, session) of a copy of the tiny delta artifact whose ``program`` (a files key) has ``name``
    disconnected, the manifest's hashes rewritten so that the runtime opens it."""
    model, art = onnx_artifacts["delta"]
    bad = tmp_path / "art"
    shutil.copytree(art, bad)
    _disconnect(bad / InfiniSession.open(art).manifest.files[program].path, name)
    rehash_manifest(bad)
    return model, InfiniSession.open(bad)


def _disconnected(failures, name):
    return [f for f in failures if f"input past_{name} is disconnected" in f]


def test_segment_step_wiring_names_a_disconnected_state_input(onnx_artifacts, tmp_path):
    model, s = _altered(onnx_artifacts, tmp_path, "program", "past_memory.1")
    report = validate(s.backend, model, segments=2, decode_segments=0, last_segments=2, progress=False)
    assert _disconnected(report.wiring["failures"], "memory.1") == [
        "state input past_memory.1 is disconnected: perturbing it changed no output"]
    assert not _disconnected(report.wiring["failures"], "norm.1")  # the other inputs still reach the outputs
    assert _disconnected(report.failures, "memory.1") and not report.passed
    assert report.last["wiring"]["passed"]  # the last-token program was left as exported


def test_last_token_program_wiring_names_a_disconnected_state_input(onnx_artifacts, tmp_path):
    model, s = _altered(onnx_artifacts, tmp_path, "last_program", "past_norm.1")
    report = validate(s.backend, model, segments=2, decode_segments=0, last_segments=2, progress=False)
    assert report.wiring["passed"]  # the segment step was left as exported
    assert _disconnected(report.last["wiring"]["failures"], "norm.1") == [
        "state input past_norm.1 is disconnected: perturbing it changed no output"]
    assert any(f.startswith("last-token program, state input past_norm.1 is disconnected") for f in report.failures)


@pytest.mark.parametrize("name, kind", [("memory.1", "state"), ("pending_norm.0", "state"), ("key.1", "cache")])
def test_decode_wiring_names_a_disconnected_input(onnx_artifacts, tmp_path, name, kind):
    model, s = _altered(onnx_artifacts, tmp_path, "decode_program", f"past_{name}")
    rep = validate_decode(s.backend, model, tolerance_for("onnxruntime", "float32"), segments=1)
    found = _disconnected(rep["wiring"]["failures"], name)
    assert len(found) == 1 and found[0].startswith(f"decode {kind} input past_{name} is disconnected")
    others = [f for f in rep["wiring"]["failures"] if "is disconnected" in f and f not in found]
    assert others == []  # only the altered input is named
    assert found[0] in rep["failures"]
    # the same artifact's own decode program passes the same check
    model, art = onnx_artifacts["delta"]
    intact = validate_decode(InfiniSession.open(art).backend, model, tolerance_for("onnxruntime", "float32"),
                             segments=1)
    assert intact["wiring"]["passed"], intact["wiring"]["failures"]
