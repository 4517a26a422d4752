"""Projections of one activation packed into one weight product: q/k/v, and SwiGLU's gate and up.

The model writes each linear layer as its own product, so a block reads its normalized input ``x`` three times
for the attention's q, k and v and twice for the feed-forward's w1 and w3:

    q = MatMul(x, Wq); k = MatMul(x, Wk); v = MatMul(x, Wv)

The rewrite makes each such group one product over the weights side by side, then splits the columns back
(the packed QKV and gate/up products onnxruntime-genai's model builder writes):

    q, k, v = Split(MatMul(x, Concat(Wq, Wk, Wv, axis=1)), [Nq, Nk, Nv], axis=-1)

Each output column is the same dot product over the same K values; only the GEMM's blocking over the columns
changes. Three forms of the weight product are packed, each where the weights are constants of one kind:

- float32 ``MatMul``: 2-D float32 initializers with the same K;
- onnxruntime's 4-bit ``com.microsoft::MatMulNBits`` (int4 exports): the same K, bits, block size and accuracy
  level, no ``g_idx`` or bias; the quantized blocks, scales and zero points are stored column (N) first, so
  their concatenation along the first axis is exactly the packed matrix's quantization;
- the dynamic int8 form ``Mul(Cast(MatMulInteger(xq, Wq, xz, Wz)), Mul(x_scale, w_scale))`` (int8 exports): the
  same quantized activation, scalar weight scales and equal scalar weight zero points; the packed product is
  scaled per column by ``x_scale * w_scale`` of the column's own matrix, the same float32 products as before.

A group is the weight products that read the same activation (and are not graph outputs). Contrib ops: the
``"onnxruntime"`` export only (the portable export keeps one standard product per layer).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_fusions import CONTRIB_DOMAIN as CONTRIB


@dataclass
class _Member:
    """One weight product of a group: the nodes it replaces, its output, its columns and its weights."""

    nodes: list  # the nodes removed (the product first)
    output: str  # the value its consumers read
    n: int  # output columns
    weights: dict  # name -> array of what is concatenated


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.graph = g
        self.inits = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.outputs = {o.name for o in g.output}
        self.names = {n.name for n in g.node} | set(self.inits) | set(self.producer)

    def array(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def sole_consumer(self, value: str, op_type: str):
        users = self.consumers.get(value, [])
        if len(users) != 1 or users[0].op_type != op_type or value in self.outputs:
            return None
        return users[0]

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name


def _matmul(gr: _Graph, node):
    """(key, member) of a float32 ``MatMul(x, W)`` with a constant 2-D ``W``, else None."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    w = gr.array(node.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32 or node.input[0] in gr.inits:
        return None
    return (("MatMul", node.input[0], w.shape[0]),
            _Member([node], node.output[0], w.shape[1], {"w": w}))


def _matmul_nbits(gr: _Graph, node):
    """(key, member) of a ``MatMulNBits(x, B, scales[, zero_points])`` with constant quantized weights."""
    if node.op_type != "MatMulNBits" or node.domain != CONTRIB or not 3 <= len(node.input) <= 4:
        return None
    a = _attrs(node)
    arrays = [gr.array(name) for name in node.input[1:]]
    if any(x is None for x in arrays) or a.get("weight_prepacked", 0) or "N" not in a or "K" not in a:
        return None
    n = int(a["N"])
    if n < 1 or arrays[0].ndim != 3 or arrays[0].shape[0] != n or \
            any(x.size % n or (x.ndim > 1 and x.shape[0] != n) for x in arrays[1:]):
        return None  # every constant column (N) first: B (N, blocks, bytes), scales and zero points (N, ...) or flat
    key = ("MatMulNBits", node.input[0], int(a["K"]), int(a.get("bits", 4)), int(a["block_size"]),
           int(a.get("accuracy_level", 0)), len(node.input),
           tuple((x.ndim, x.size // n) for x in arrays), tuple(str(x.dtype) for x in arrays))
    return key, _Member([node], node.output[0], n, dict(zip(("B", "scales", "zero_points"), arrays)))


def _matmul_integer(gr: _Graph, node):
    """(key, member) of ``Mul(Cast(MatMulInteger(xq, W, xz, wz)), Mul(x_scale, w_scale))`` with a constant int8
    ``W`` and scalar constants ``wz``, ``w_scale``, as onnxruntime's dynamic quantization writes a linear layer."""
    if node.op_type != "MatMulInteger" or node.domain not in ("", "ai.onnx") or len(node.input) != 4:
        return None
    w, wz = gr.array(node.input[1]), gr.array(node.input[3])
    if w is None or wz is None or w.ndim != 2 or wz.size != 1 or w.dtype != wz.dtype:
        return None
    cast = gr.sole_consumer(node.output[0], "Cast")
    if cast is None or _attrs(cast).get("to") != onnx.TensorProto.FLOAT:
        return None
    mul = gr.sole_consumer(cast.output[0], "Mul")
    if mul is None:
        return None
    scale_mul = gr.producer.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
    if scale_mul is None or scale_mul.op_type != "Mul" or gr.sole_consumer(scale_mul.output[0], "Mul") is not mul:
        return None
    x_scale, w_scale = scale_mul.input
    ws = gr.array(w_scale)
    if ws is None or ws.size != 1 or ws.dtype != np.float32 or gr.producer.get(x_scale) is None or \
            gr.producer.get(x_scale) is not gr.producer.get(node.input[0]):
        return None  # the activation's scale from the same DynamicQuantizeLinear as its values
    key = ("MatMulInteger", node.input[0], node.input[2], x_scale, w.shape[0], str(w.dtype), wz.item())
    return key, _Member([node, cast, mul, scale_mul], mul.output[0], w.shape[1],
                        {"w": w, "wz": wz, "scale": ws.reshape(()).astype(np.float32)})


def _packed_nodes(gr: _Graph, key: tuple, group: list[_Member]) -> tuple[list, list]:
    """(new nodes, new initializers) computing every member's output from one packed product."""
    kind, x = key[0], key[1]
    first = group[0].nodes[0]
    base = gr.fresh(f"{first.name or first.output[0]}_packed")
    total = sum(m.n for m in group)
    inits = []

    def init(suffix: str, value: np.ndarray) -> str:
        name = gr.fresh(f"{base}_{suffix}")
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    out = gr.fresh(f"{base}_out")
    if kind == "MatMul":
        nodes = [helper.make_node("MatMul", [x, init("weight", np.concatenate([m.weights["w"] for m in group], 1))],
                                  [out], name=base)]
    elif kind == "MatMulNBits":
        names = [init(part, np.concatenate([m.weights[part] for m in group], 0))
                 for part in ("B", "scales", "zero_points") if part in group[0].weights]
        attrs = {k: v for k, v in _attrs(first).items() if k != "N"}
        nodes = [helper.make_node("MatMulNBits", [x, *names], [out], name=base, domain=CONTRIB, N=total, **attrs)]
    else:  # MatMulInteger: one product, each column scaled by its own matrix's x_scale * w_scale
        mmi, _, _, scale_mul = group[0].nodes
        w = init("weight", np.concatenate([m.weights["w"] for m in group], 1))
        scales = init("scales", np.concatenate([np.full(m.n, m.weights["scale"], np.float32) for m in group]))
        acc, flt, col_scale = gr.fresh(f"{base}_int32"), gr.fresh(f"{base}_float"), gr.fresh(f"{base}_scale")
        nodes = [helper.make_node("Mul", [scale_mul.input[0], scales], [col_scale], name=f"{base}_scales"),
                 helper.make_node("MatMulInteger", [x, w, mmi.input[2], mmi.input[3]], [acc], name=base),
                 helper.make_node("Cast", [acc], [flt], name=f"{base}_cast", to=onnx.TensorProto.FLOAT),
                 helper.make_node("Mul", [flt, col_scale], [out], name=f"{base}_scaled")]
    split = init("split", np.array([m.n for m in group], np.int64))
    nodes.append(helper.make_node("Split", [out, split], [m.output for m in group], name=f"{base}_split", axis=-1))
    return nodes, inits


MATCHERS = (_matmul, _matmul_nbits, _matmul_integer)


def pack_projections(model: onnx.ModelProto) -> dict[str, int]:
    """Pack, in place, every group of two or more weight products of one activation into one product and a
    ``Split``; returns {form: groups packed}. The split outputs keep the original names (consumers unchanged)."""
    gr = _Graph(model)
    groups: dict[tuple, list[_Member]] = defaultdict(list)
    for node in gr.graph.node:
        for match in MATCHERS:
            found = match(gr, node)
            if found is not None:
                groups[found[0]].append(found[1])
                break
    counts = {"MatMul": 0, "MatMulNBits": 0, "MatMulInteger": 0}
    position = {id(n): i for i, n in enumerate(gr.graph.node)}
    inserts, removed, old_weights = {}, set(), set()
    for key, group in groups.items():
        if len(group) < 2:
            continue
        nodes, inits = _packed_nodes(gr, key, group)
        inserts[min(position[id(m.nodes[0])] for m in group)] = nodes  # the first product: its inputs are there
        removed |= {id(n) for m in group for n in m.nodes}
        old_weights |= {i for m in group for n in m.nodes for i in n.input[1:] if i in gr.inits}
        gr.graph.initializer.extend(inits)
        counts[key[0]] += 1
    if not inserts:
        return counts
    new_nodes = []
    for i, node in enumerate(gr.graph.node):
        new_nodes += inserts.get(i, [])
        if id(node) not in removed:
            new_nodes.append(node)
    del gr.graph.node[:]
    gr.graph.node.extend(new_nodes)
    used = {i for n in gr.graph.node for i in n.input}
    keep = [i for i in gr.graph.initializer if i.name not in old_weights or i.name in used]
    del gr.graph.initializer[:]
    gr.graph.initializer.extend(keep)
    if counts["MatMulNBits"] and not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    return counts
