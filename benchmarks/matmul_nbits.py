"""One weight matrix as an onnxruntime MatMul: float32 against 4-bit ``MatMulNBits`` at accuracy levels 0 and 4,
side by side in one process (what a decode token pays per linear layer at M = 1)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

LEVELS = (0, 4)  # 0: weights dequantized to float32 on the fly; 4: int8 activations, an int8 GEMM


def _matmul_model(weight: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper
    k, n = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="linear")], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                              [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def measure(k: int, n: int, *, m: int = 1, block_size: int = 32, threads: int = 2, rounds: int = 5,
            calls: int = 50, folder: Path) -> dict:
    """Median ms per call and max abs error against numpy float32, for fp32 and each int4 accuracy level."""
    import onnx

    from runtime.ortenv import import_onnxruntime
    ort = import_onnxruntime()
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    paths = {"fp32": folder / "fp32.onnx"}
    onnx.save(_matmul_model(weight), str(paths["fp32"]))
    for level in LEVELS:
        q = MatMulNBitsQuantizer(_matmul_model(weight), bits=4, block_size=block_size, is_symmetric=False,
                                 accuracy_level=level or None)
        q.process()
        paths[f"int4-level{level}"] = folder / f"int4_level{level}.onnx"
        q.model.save_model_to_file(str(paths[f"int4-level{level}"]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                for name, p in paths.items()}
    x = rng.standard_normal((m, k)).astype(np.float32)
    times = {name: [] for name in sessions}
    for _ in range(rounds):  # alternating: every program sees the same machine load
        for name, s in sessions.items():
            s.run(None, {"x": x})
            t0 = time.perf_counter()
            for _ in range(calls):
                s.run(None, {"x": x})
            times[name].append((time.perf_counter() - t0) / calls * 1e3)
    ref = x @ weight
    return {name: {"ms": float(np.median(times[name])),
                   "max_abs_error": float(np.abs(sessions[name].run(None, {"x": x})[0] - ref).max())}
            for name in sessions}
