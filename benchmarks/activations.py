"""The activations one call of an ONNX program holds at once, in the order onnxruntime runs its nodes.

onnxruntime frees a tensor after its last reader, so what a call holds beyond the weights is set by the order the
nodes run in. ``activation_peak`` opens the program as the runtime does (the artifact's shared weights, the
chosen execution order), has onnxruntime write the graph it optimized and profile one call (the order the nodes
ran in and the bytes of their outputs), and replays that order: each output alive from its node to its last
reader. Graph outputs stay alive to the end.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from runtime.backends.ort import EXECUTION_ORDERS, ort_execution_order
from runtime.backends.ort_weights import shared_initializers
from runtime.manifest import Manifest


def _profiled_call(graph: Path, initializers: list, order: str, work: Path, threads: int) -> tuple[list, Path]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # not the warning that an optimized graph is written for this machine
    opts.execution_order = ort_execution_order(ort, order)
    opts.optimized_model_filepath = str(work / "optimized.onnx")
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.bin")
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.enable_profiling, opts.profile_file_prefix = True, str(work / "profile")
    for name, value in initializers:
        opts.add_initializer(name, value)
    session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = rng.integers(0, 2, shape) if "int" in i.type else rng.random(shape, dtype=np.float32)
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    run = [e for e in events if e["name"] == "model_run"][-1]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
             and run["ts"] <= e["ts"] <= run["ts"] + run["dur"]]
    return nodes, work / "optimized.onnx"


def activation_peak(artifact: str | Path, program: str = "last_program", order: str = EXECUTION_ORDERS[0],
                    threads: int = 1) -> dict:
    """``{"peak_bytes", "order", "nodes"}``: the most activation bytes alive at once in one call of the artifact's
    ONNX ``program`` (a ``files`` key: ``program``, ``last_program``) at batch 1, nodes run in ``order``."""
    import onnx
    import onnxruntime as ort

    manifest = Manifest.load(artifact)
    shared, _weights = shared_initializers(manifest, ort)
    with tempfile.TemporaryDirectory() as tmp:
        nodes, optimized = _profiled_call(manifest.file_path(program), shared.get(program, []), order, Path(tmp),
                                          threads)
        graph = onnx.load(str(optimized), load_external_data=False).graph
    by_name = {n.name: n for n in graph.node}
    ran = [(by_name[e["name"][:-len("_kernel_time")]], int(e["args"].get("output_size", 0))) for e in nodes]
    last_read = {x: i for i, (node, _) in enumerate(ran) for x in node.input}
    outputs = {o.name for o in graph.output}
    alive, live, peak = {}, 0, 0
    for i, (node, size) in enumerate(ran):
        for o in node.output:  # the profile gives a node's output bytes together
            alive[o] = size / max(1, len(node.output))
            live += alive[o]
        peak = max(peak, live)
        for x in set(node.input):
            if x in alive and last_read[x] == i and x not in outputs:
                live -= alive.pop(x)
    return {"peak_bytes": int(peak), "order": order, "nodes": len(ran)}


__all__ = ["activation_peak"]
