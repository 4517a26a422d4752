"""int4 weights of the ``nn.Linear`` layers, through each format's own quantizer.

- ONNX: onnxruntime's ``MatMulNBitsQuantizer`` (block-wise asymmetric 4-bit weights, ``MatMulNBits``
  contrib op, float32 activations), applied to the MatMuls whose constant weight *is* an ``nn.Linear``
  weight (matched by value). The constant MatMuls the model uses for reductions and RoPE's rotation, and
  every activation x activation MatMul (attention, memory read and write), stay float32.
- ExecuTorch: torchao's ``Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
  weight_granularity=PerGroup(g))`` through ``quantize_`` ("8da4w": int8 dynamic per-token activations,
  symmetric int4 group-wise weights), the scheme ExecuTorch's own LLM export uses with XNNPACK.

The embedding lookup's table is 8-bit in both formats (``exporters.quantize_lookup``); the recurrent state is
float32 everywhere.
Shapes are checked (``check_int4_shapes``) before any export work or any file is written.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

QUANTIZE_CHOICES = (None, "int8", "int4")
# measured on the bundled model over 1000 segments (docs/quantization.md): 32 keeps parity better
# than 128 at ~10% more weight bytes
DEFAULT_BLOCK_SIZE = 32
BLOCK_SIZES = (16, 32, 64, 128, 256)


class QuantizationShapeError(ValueError):
    """A linear layer's in_features is not a multiple of the int4 block (group) size."""


def check_quantize(quantize: str | None, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
    """``quantize`` is one of ``QUANTIZE_CHOICES`` and ``block_size`` one of ``BLOCK_SIZES``."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {BLOCK_SIZES} (a power of two >= 16, as MatMulNBits "
                         f"takes), got {block_size!r}")


def check_int4_shapes(module: nn.Module, block_size: int) -> list[str]:
    """Names of the ``nn.Linear`` layers int4 will quantize; raises ``QuantizationShapeError`` naming the
    layers whose ``in_features`` is not a multiple of ``block_size``, and the block size that would fit."""
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    bad = [(n, m.in_features) for n, m in linears if m.in_features % block_size]
    if bad:
        common = math.gcd(*(m.in_features for _, m in linears))
        fits = [b for b in BLOCK_SIZES if common % b == 0]
        fix = (f"pass --block-size {max(fits)} (block_size={max(fits)})" if fits else
               f"no supported block size {BLOCK_SIZES} divides every in_features (their gcd is {common}): "
               "use --quantize int8")
        shown = ", ".join(f"{n} (in_features {k})" for n, k in bad[:4]) + (" ..." if len(bad) > 4 else "")
        raise QuantizationShapeError(f"int4 with block size {block_size} needs every linear layer's in_features "
                                     f"to be a multiple of {block_size}; {len(bad)} are not: {shown}; {fix}")
    return [n for n, _ in linears]


# ---- ONNX ------------------------------------------------------------------------------------
def _linear_weight_digests(module: nn.Module) -> dict[bytes, str]:
    """{digest of W.T as float32 bytes: linear name}: the form the ONNX exporter stores a linear weight in."""
    import hashlib
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach().float().T.contiguous().numpy()
            out[hashlib.sha256(w.tobytes()).digest() + str(w.shape).encode()] = name
    return out


def weight_matmuls(model, module: nn.Module) -> dict[str, str]:
    """{MatMul node name: nn.Linear name} for the MatMuls of ``model`` (an ``onnx.ModelProto`` with its
    weights loaded) whose constant right operand equals an ``nn.Linear`` weight of ``module``."""
    import hashlib

    from onnx import numpy_helper
    digests = _linear_weight_digests(module)
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.ndim != 2 or w.dtype != np.float32:
            continue
        key = hashlib.sha256(np.ascontiguousarray(w).tobytes()).digest() + str(w.shape).encode()
        if key in digests:
            found[node.name] = digests[key]
    return found


def fold_weight_transposes(model) -> list[str]:
    """Give each ``MatMul(x, Transpose(W))`` of a 2-D initializer ``W`` its own transposed initializer.

    The exporter's constant folding leaves large constants alone, so a tied LM head over a large vocabulary
    reaches the graph as a runtime transpose of the embedding table; the quantizer takes constant weights
    only. The embedding lookup keeps ``W``; a Transpose left without consumers is removed. Exact.
    """
    from onnx import numpy_helper
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    folded = []
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in producers:
            continue
        tr = producers[node.input[1]]
        perm = [list(a.ints) for a in tr.attribute if a.name == "perm"]
        if tr.op_type != "Transpose" or tr.input[0] not in inits or perm not in ([], [[1, 0]]):
            continue
        w = numpy_helper.to_array(inits[tr.input[0]])
        if w.ndim != 2:
            continue
        name = tr.input[0] + "_transposed"
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(w.T), name)
            graph.initializer.append(inits[name])
        node.input[1] = name
        folded.append(node.name)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Transpose" and not any(o in used for o in n.output)]:
        graph.node.remove(node)
    return folded


def quantize_onnx_int4(src: Path, dst: Path, module: nn.Module, block_size: int,
                       lookup_bits: int | None = None, portable: bool = False) -> dict[str, str]:
    """Write ``dst``: ``src`` with the linear layers' MatMuls as 4-bit ``MatMulNBits`` (``portable``: the standard
    ops' form, a blocked ``DequantizeLinear`` of 4-bit weights before each MatMul) and the embedding lookup's table
    in ``lookup_bits`` (``exporters.quantize_lookup``; 8 unless told); returns {node: linear} of the quantized
    MatMuls."""
    import onnx

    from runtime.ortenv import import_onnxruntime

    from . import quantize_lookup

    import_onnxruntime()
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line per node
    bits = quantize_lookup.DEFAULT_LOOKUP_BITS if lookup_bits is None else lookup_bits
    model = onnx.load(str(src))
    fold_weight_transposes(model)  # first: the tied LM head gets its own copy of the table
    quantize_lookup.quantize_onnx_lookup(model, module, bits, block_size)
    targets = weight_matmuls(model, module)
    others = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather") and n.name not in targets]
    # accuracy_level 4: activations quantized to int8 per block inside the kernel, an int8 GEMM instead of
    # dequantizing every weight block to float32 on the fly (the LM head of base-32k at M=1: 4.2 vs 9.8 ms,
    # the same error against fp32 as level 0, since the 4-bit weights dominate it)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=False, accuracy_level=4,
                                     nodes_to_exclude=others, op_types_to_quantize=("MatMul",),
                                     quant_format=QuantFormat.QDQ if portable else QuantFormat.QOperator)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst))  # 4-bit weights: far under protobuf's 2 GB at these sizes
    return targets


# ---- ExecuTorch ------------------------------------------------------------------------------
def quantize_linears_8da4w(module: nn.Module, group_size: int) -> tuple[nn.Module, list[str]]:
    """A copy of ``module`` whose ``nn.Linear`` weights are torchao 8da4w tensors (``module`` untouched)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    names = check_int4_shapes(module, group_size)
    twin = copy.deepcopy(module)
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    with torch.no_grad():
        quantize_(twin, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    return twin, names
