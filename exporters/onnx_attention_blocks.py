"""The segment programs' local attention in blocks of query rows, as a rewrite of the exported ONNX graph.

torch.onnx exports one segment's causal attention (the paper's eq. 6) as

    P = Softmax(Add(Mul(MatMul(Q, K^T), scale), mask))    # (B, H, T, T) scores, then probabilities
    O = MatMul(P, V)                                       # (B, H, T, dh)

At T = 2048 and 12 heads every (T, T) tensor is 201 MB, and half of each score matrix is masked away. The rewrite
computes O in blocks of ``rows`` query rows, each against the keys up to its own last row:

    O[i0:i1] = MatMul(Softmax(Add(Mul(MatMul(Q[i0:i1], K^T[:, :i1]), scale), mask[i0:i1, :i1])), V[:i1])

which is exact (each row's softmax sees the same unmasked scores; the masked ones contribute exp(-inf) = 0 either
way), computes about half the products, and keeps one block's (B, H, rows, <= T) scores alive at a time.
Done on the graph, not in the model: tracing the unrolled blocks through torch.export would cost minutes per
program.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def block_local_attention(model: onnx.ModelProto, rows: int) -> int:
    """Rewrite every matching attention of ``model`` in place (only where T > ``rows`` is static); returns how
    many were rewritten."""
    if rows <= 0:
        return 0
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {i.name: i for i in graph.initializer}
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    count = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        match = _match(softmax, producer, consumers, inits, shapes)
        if match is None:
            continue
        q, k_t, scale, mask, v, out_node, T = match
        if T <= rows:
            continue
        nodes, outs = [], []
        for b, i0 in enumerate(range(0, T, rows)):
            i1 = min(i0 + rows, T)
            p = f"{softmax.name}_block{b}"

            def const(name, values):
                nodes.append(helper.make_node("Constant", [], [f"{p}_{name}"],
                                              value=numpy_helper.from_array(_ints(values), f"{p}_{name}")))
                return f"{p}_{name}"

            row0, row1, zero, col1 = const("r0", [i0]), const("r1", [i1]), const("z", [0]), const("c1", [i1])
            ax2, ax3 = const("ax2", [2]), const("ax3", [3])
            mask_start, mask_end = const("ms", [i0, 0]), const("me", [i1, i1])
            nodes += [
                helper.make_node("Slice", [q, row0, row1, ax2], [f"{p}_q"], name=f"{p}_q"),
                helper.make_node("Slice", [k_t, zero, col1, ax3], [f"{p}_kt"], name=f"{p}_kt"),
                helper.make_node("MatMul", [f"{p}_q", f"{p}_kt"], [f"{p}_s"], name=f"{p}_qk"),
                helper.make_node("Mul", [f"{p}_s", scale], [f"{p}_ss"], name=f"{p}_scale"),
                helper.make_node("Slice", [mask, mask_start, mask_end], [f"{p}_m"], name=f"{p}_mask"),
                helper.make_node("Add", [f"{p}_ss", f"{p}_m"], [f"{p}_sm"], name=f"{p}_masked"),
                helper.make_node("Softmax", [f"{p}_sm"], [f"{p}_p"], name=f"{p}_softmax", axis=-1),
                helper.make_node("Slice", [v, zero, col1, ax2], [f"{p}_v"], name=f"{p}_v"),
                helper.make_node("MatMul", [f"{p}_p", f"{p}_v"], [f"{p}_o"], name=f"{p}_pv"),
            ]
            outs.append(f"{p}_o")
        nodes.append(helper.make_node("Concat", outs, [out_node.output[0]], name=f"{softmax.name}_blocks", axis=2))
        chain = _chain(softmax, producer) + [softmax, out_node]
        index = min(list(graph.node).index(n) for n in chain)
        for n in chain:
            graph.node.remove(n)
        for offset, n in enumerate(nodes):
            graph.node.insert(index + offset, n)
        count += 1
    return count


def _ints(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _chain(softmax, producer):
    add = producer[softmax.input[0]]
    mul = producer[add.input[0]]
    return [producer[mul.input[0]], mul, add]


def _match(softmax, producer, consumers, inits, shapes):
    """(Q, K^T, scale, mask, V, the P @ V node, T) when ``softmax`` is the middle of a local attention whose
    intermediates nothing else reads, else None."""
    if next((a.i for a in softmax.attribute if a.name == "axis"), -1) not in (-1, 3):
        return None
    add = producer.get(softmax.input[0])
    if add is None or add.op_type != "Add" or add.input[1] not in inits:
        return None
    mul = producer.get(add.input[0])
    if mul is None or mul.op_type != "Mul":
        return None
    qk = producer.get(mul.input[0])
    if qk is None or qk.op_type != "MatMul":
        return None
    users = consumers.get(softmax.output[0], [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]:
        return None
    for n in (qk, mul, add):
        if len(consumers.get(n.output[0], [])) != 1:
            return None
    s = shapes.get(softmax.output[0])
    mask = inits[add.input[1]]
    if not s or len(s) != 4 or s[2] is None or s[2] != s[3] or len(mask.dims) != 2 or min(mask.dims) < s[2]:
        return None
    return qk.input[0], qk.input[1], mul.input[1], add.input[1], users[0].input[1], users[0], s[2]
