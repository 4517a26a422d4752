"""The embedding lookup of int4 artifacts: the table read by token id, stored in 8 bits.

int4 makes every ``nn.Linear`` weight 4-bit, a tied LM head included (it gets its own 4-bit copy). What is left in
float32 is the table the token lookup reads: 32000 x 768 x 4 = 98 MB at ``base-32k``, half of the int4 file. Here it
becomes int8, symmetric, with one float32 scale per row (``row ~= q * scale``, every element within ``scale / 2``):
a quarter of its float32 bytes, and the lookup's error 1/16 of a 4-bit table's.

- ONNX: the ``Gather`` of the table becomes ``Gather(int8 table) -> Cast -> Mul(Gather(row scales))``: standard ONNX
  operators, so every onnxruntime build (onnxruntime-web included) runs it. onnxruntime's own quantizer writes the
  4-bit form only (``GatherBlockQuantized``; it refuses 8-bit Gathers): ``lookup_bits=4`` uses it.
- ExecuTorch: torchao's ``IntxWeightOnlyConfig(int8, PerAxis(0))`` on the ``nn.Embedding`` modules; an edge pass
  (``fuse_int8_lookup``, before partitioning) turns their ``dequantize_affine -> embedding`` into ExecuTorch's
  ``quantized_decomposed::embedding_byte`` kernel (the runtime registers it: ``executorch.kernels.quantized``).

``describe_onnx_lookup`` / ``describe_pte_lookup`` give the manifest's ``embedding_lookup`` section.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

# measured on the bundled model over 1000 segments (docs/quantization.md): with the 8-bit table int4 is as accurate
# as with the float32 one (worst state rel 0.124 vs 0.129); a 4-bit table doubles the state error (0.277) and fails
# the export's decode parity. The 8-bit table costs ~9 MB more than the 4-bit one at base-32k.
DEFAULT_LOOKUP_BITS = 8
LOOKUP_BITS = (8, 4, 32)  # 32: the table stays float32
INT8_SUFFIX, SCALE_SUFFIX = "_int8", "_row_scale"
PTE_LOOKUP_OP = "quantized_decomposed.embedding_byte"


def quantize_rows_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)``: ``q`` int8 in [-127, 127] and ``scale`` float32 of shape ``(rows, 1)`` with
    ``table ~= q * scale``; each row's scale is its largest magnitude / 127, so ``|q * scale - table| <= scale / 2``."""
    t = np.asarray(table, dtype=np.float64)
    scale = (np.abs(t).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
    # rounded against the stored (float32) scale, in float64: the bound holds for the scale the program reads
    q = np.clip(np.rint(t / np.where(scale > 0, scale, 1.0).astype(np.float64)), -127, 127).astype(np.int8)
    return q, scale


def check_lookup_bits(bits: int, embedding_dim: int | None = None, block_size: int = 32) -> None:
    if bits not in LOOKUP_BITS:
        raise ValueError(f"lookup_bits must be one of {LOOKUP_BITS}, got {bits!r}")
    if bits == 4 and embedding_dim is not None and embedding_dim % block_size:
        raise ValueError(f"a 4-bit lookup quantizes rows in blocks of {block_size}: embedding_dim {embedding_dim} is "
                         "not a multiple of it")


def _embedding_digests(module: nn.Module) -> dict[bytes, str]:
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Embedding):
            w = m.weight.detach().float().contiguous().numpy()
            out[hashlib.sha256(w.tobytes()).digest() + str(w.shape).encode()] = name
    return out


def lookup_gathers(model, module: nn.Module) -> dict[str, str]:
    """{Gather node name: nn.Embedding name} for the Gathers of ``model`` (an ``onnx.ModelProto``) along axis 0 of a
    float32 initializer equal to an ``nn.Embedding`` weight of ``module``."""
    from onnx import helper, numpy_helper
    digests = _embedding_digests(module)
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if node.op_type != "Gather" or node.input[0] not in inits or axis != 0:
            continue
        w = numpy_helper.to_array(inits[node.input[0]])
        if w.ndim == 2 and w.dtype == np.float32:
            key = hashlib.sha256(np.ascontiguousarray(w).tobytes()).digest() + str(w.shape).encode()
            if key in digests:
                found[node.name] = digests[key]
    return found


def quantize_onnx_lookup(model, module: nn.Module, bits: int = DEFAULT_LOOKUP_BITS, block_size: int = 32) -> list[str]:
    """Rewrite, in place, every embedding-table ``Gather`` of ``model`` (``lookup_gathers``) to read a ``bits``-bit
    table; the float32 table is dropped once nothing else reads it. Returns the rewritten nodes' names."""
    check_lookup_bits(bits)
    targets = lookup_gathers(model, module)
    if not targets or bits == 32:
        return []
    if bits == 4:
        _gather_block_quantized(model, list(targets), block_size)
    else:
        _gather_int8(model, set(targets))
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return sorted(targets)


def _gather_int8(model, targets: set[str]) -> None:
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        table, ids, out = node.input[0], node.input[1], node.output[0]
        q_name, s_name = table + INT8_SUFFIX, table + SCALE_SUFFIX
        if q_name not in inits:
            q, scale = quantize_rows_int8(numpy_helper.to_array(inits[table]))
            for name, arr in ((q_name, q), (s_name, scale)):
                inits[name] = numpy_helper.from_array(arr, name)
                graph.initializer.append(inits[name])
        p = node.name
        nodes += [helper.make_node("Gather", [q_name, ids], [f"{p}_q"], name=f"{p}_int8", axis=0),
                  helper.make_node("Cast", [f"{p}_q"], [f"{p}_qf"], name=f"{p}_cast", to=TensorProto.FLOAT),
                  helper.make_node("Gather", [s_name, ids], [f"{p}_s"], name=f"{p}_scale", axis=0),
                  helper.make_node("Mul", [f"{p}_qf", f"{p}_s"], [out], name=f"{p}_dequantize")]
    graph.ClearField("node")
    graph.node.extend(nodes)


def _gather_block_quantized(model, targets: list[str], block_size: int) -> None:
    """onnxruntime's quantizer: 4-bit asymmetric blocks of ``block_size`` along each row (``GatherBlockQuantized``)."""
    import logging

    from runtime.ortenv import import_onnxruntime

    import_onnxruntime()
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    others = [n.name for n in model.graph.node if n.name not in targets]
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=False,
                                     nodes_to_exclude=others, op_types_to_quantize=("Gather",),
                                     quant_axes=(("Gather", 1),))
    quantizer.process()
    if quantizer.model.model is not model:
        model.CopyFrom(quantizer.model.model)


# ---- manifest ----------------------------------------------------------------------------------
def describe_onnx_lookup(model) -> dict:
    """The ``embedding_lookup`` section of an ONNX artifact, read from one of its graphs (``onnx.ModelProto``, its
    weights loaded or not): how the table read by token id is stored, and the initializers holding it."""
    from onnx import helper
    inits = {i.name: i for i in model.graph.initializer}
    nbytes = lambda names: sum(_tensor_bytes(inits[n]) for n in names)  # noqa: E731
    for node in model.graph.node:
        if node.op_type == "GatherBlockQuantized" and node.input[0] in inits:
            block = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "block_size"), None)
            t, names = inits[node.input[0]], [x for i, x in enumerate(node.input) if i != 1 and x in inits]
            return _section({21: "uint4", 22: "int4"}.get(t.data_type, "uint8"), 4, list(t.dims),
                            f"asymmetric, a float32 scale and a 4-bit zero point per {block} elements of a row",
                            "GatherBlockQuantized (onnxruntime contrib op)", names, nbytes(names))
        if node.op_type == "Gather" and node.input[0].endswith(INT8_SUFFIX) and node.input[0] in inits:
            names = [node.input[0], node.input[0][:-len(INT8_SUFFIX)] + SCALE_SUFFIX]
            return _section("int8", 8, list(inits[names[0]].dims), "symmetric, one float32 scale per row",
                            "Gather, Cast, Mul", names, nbytes(names))
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in inits and len(inits[node.input[0]].dims) == 2:
            t = inits[node.input[0]]
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
            shape, ops = list(t.dims), "Gather"
            if axis == 1:  # the tied table stored once as the LM head reads it (exporters.onnx_tied): columns
                shape, ops = shape[::-1], "Gather (columns of the LM head's transposed table), Transpose"
            return _section(dtype.name, 8 * dtype.itemsize, shape, None, ops, [t.name], nbytes([t.name]))
    return {"dtype": None}


def _tensor_bytes(t) -> int:
    """Stored bytes of an initializer, inline or external."""
    if t.HasField("raw_data"):
        return len(t.raw_data)
    ext = {e.key: e.value for e in t.external_data}
    if "length" in ext:
        return int(ext["length"])
    from onnx import numpy_helper
    return numpy_helper.to_array(t).nbytes


def _section(dtype: str, bits: int, shape: list, scheme: str | None, ops: str, tensors: list[str],
             nbytes: int) -> dict:
    """``bytes``: the table with its scales (and zero points)."""
    return {"dtype": dtype, "bits": bits, "shape": shape, "scheme": scheme, "ops": ops, "tensors": tensors,
            "bytes": nbytes}


# ---- ExecuTorch --------------------------------------------------------------------------------
def quantize_embeddings_int8(module: nn.Module) -> list[str]:
    """Make the ``nn.Embedding`` weights of ``module`` (in place) torchao int8 tensors, symmetric (zero points 0), one
    scale per row; returns their names. The LM head must already have its own weight (``untie_linear_from_embedding``).
    """
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    names = [n for n, m in module.named_modules() if isinstance(m, nn.Embedding)]
    with torch.no_grad():
        quantize_(module, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Embedding))
    for name in names:  # fuse_int8_lookup drops the zero points: they must be 0
        zero = getattr(module.get_submodule(name).weight, "zero_point", None)
        if zero is not None and bool(zero.any()):
            raise RuntimeError(f"the int8 table of {name!r} has non-zero zero points; expected a symmetric scheme")
    return names


def fuse_int8_lookup(gm: torch.fx.GraphModule):
    """Edge pass: ``embedding(dequantize_affine(q, [1, cols], scale, zero, int8, -128, 127), ids)`` (a table of
    ``quantize_embeddings_int8``) -> ``quantized_decomposed::embedding_byte(q, scale, None, -128, 127, ids)``: the
    lookup reads the int8 table row by row instead of dequantizing all of it. Same numbers (zero points are 0)."""
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  (defines quantized_decomposed ops)
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    embedding, byte = exir_ops.edge.aten.embedding.default, exir_ops.edge.quantized_decomposed.embedding_byte.default
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != embedding:
            continue
        dq, ids = node.args[0], node.args[1]
        if not (isinstance(dq, torch.fx.Node) and "dequantize_affine" in str(dq.target)):
            continue
        q, block, scale, _, dtype, qmin, qmax = dq.args[:7]
        cols = q.meta["val"].shape[1]
        if dtype != torch.int8 or (qmin, qmax) != (-128, 127) or list(block) != [1, cols] \
                or dq.kwargs.get("output_dtype", torch.float32) != torch.float32:
            continue
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_function(byte, (q, scale, None, qmin, qmax, ids))
        fused.meta = dict(node.meta)
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(gm, changed)


def describe_pte_lookup(module: nn.Module, kernels: dict[str, int]) -> dict:
    """The ``embedding_lookup`` section of a ``.pte``, from ``module``'s (first) ``nn.Embedding`` and ``{method: number
    of embedding_byte kernels}`` in the program (none: the table is the module's own, float)."""
    emb = next((m for m in module.modules() if isinstance(m, nn.Embedding)), None)
    if emb is None:
        return {"dtype": None}
    rows, cols = emb.num_embeddings, emb.embedding_dim
    if not any(kernels.values()):
        size = emb.weight.dtype.itemsize
        return {**_section(str(emb.weight.dtype).replace("torch.", ""), 8 * size, [rows, cols], None,
                           "aten::embedding", [], rows * cols * size), "kernels": kernels}
    return {**_section("int8", 8, [rows, cols], "symmetric, one float32 scale per row (torchao IntxWeightOnlyConfig)",
                       PTE_LOOKUP_OP, [], rows * cols + 4 * rows), "kernels": kernels}
