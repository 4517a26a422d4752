"""ONNX export of the segment step (torch.onnx dynamo path + onnxscript optimizer)."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import onnx
import torch

from infini_export.protocol import FlatStep, check_protocol

from .artifact import build_manifest
from .onnx_fusions import FUSED_OPSET, fuse
from .quantize import DEFAULT_BLOCK_SIZE, check_int4_shapes, check_quantize, quantize_onnx_int4

MODEL_FILE = "model.onnx"


def _quantize_int8(src: Path, dst: Path) -> list[str]:
    """Dynamic int8 quantization of the MatMuls whose weight is a constant (the linear layers only).

    Activation x activation MatMuls (attention scores, memory read and write) stay float32, so the
    recurrent state is computed and kept in float32.
    """
    from runtime.ortenv import import_onnxruntime

    import_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    inits = {i.name for i in model.graph.initializer}
    weight_matmuls = [n.name for n in model.graph.node
                      if n.op_type in ("MatMul", "Gemm") and any(i in inits for i in n.input)]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, nodes_to_quantize=weight_matmuls,
                     op_types_to_quantize=["MatMul", "Gemm"])
    return weight_matmuls


def export_onnx(module: torch.nn.Module, out_dir: str | Path, *, quantize: str | None = None,
                max_batch: int = 64, verbose: bool = False, block_size: int = DEFAULT_BLOCK_SIZE) -> dict:
    """Trace ``module.step`` to ``out_dir/model.onnx`` and return the manifest (not yet written).

    ``quantize``: None, ``"int8"`` (dynamic int8 MatMuls) or ``"int4"`` (4-bit ``MatMulNBits`` weights in
    blocks of ``block_size`` along in_features; shapes are checked before anything is written).
    """
    check_quantize(quantize, block_size)
    if quantize == "int4":
        check_int4_shapes(module, block_size)
    spec = check_protocol(module)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = FlatStep(module).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(flat, flat.example_inputs(2), dynamo=True, input_names=spec.input_names(),
                                    output_names=spec.output_names(), dynamic_shapes=flat.dynamic_shapes(max_batch),
                                    opset_version=FUSED_OPSET, optimize=True, verbose=verbose)
    fusions = fuse(program.model)  # the model's XNNPACK-friendly RMSNorm back to one ONNX op per norm
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / MODEL_FILE
        program.save(str(fp32))  # the onnxscript optimizer ran (optimize=True): constant folding, fusions
        onnx.checker.check_model(str(fp32), full_check=True)
        quantized = None
        if quantize == "int8":
            q = Path(tmp) / "model.int8.onnx"
            quantized = _quantize_int8(fp32, q)
            onnx.checker.check_model(str(q), full_check=True)
            fp32 = q
        elif quantize == "int4":
            q = Path(tmp) / "model.int4.onnx"
            quantized = list(quantize_onnx_int4(fp32, q, module, block_size))
            onnx.checker.check_model(str(q), full_check=True)
            fp32 = q
        for old in out_dir.glob("*.onnx*"):
            old.unlink()
        shutil.copyfile(fp32, out_dir / MODEL_FILE)
    files = {"program": MODEL_FILE}
    data = out_dir / (MODEL_FILE + ".data")
    if data.exists():
        files["program_data"] = data.name
    manifest = build_manifest(
        module, spec, backend="onnxruntime", program={"format": "onnx", "file": "program"}, files=files,
        directory=out_dir, max_batch=max_batch, quantization=quantize,
        exporter={"path": "torch.onnx.export(dynamo=True) + onnxscript optimizer + exporters.onnx_fusions",
                  "opset": program.model_proto.opset_import[0].version, "fusions": fusions,
                  "export_seconds": round(time.perf_counter() - t0, 2),
                  "quantized_nodes": len(quantized) if quantized else 0,
                  **({"int4_block_size": block_size,
                      "quantization_scheme": "onnxruntime MatMulNBitsQuantizer: 4-bit asymmetric block-wise "
                                             "weights (MatMulNBits), float32 activations, nn.Linear MatMuls only"}
                     if quantize == "int4" else {})})
    return manifest
