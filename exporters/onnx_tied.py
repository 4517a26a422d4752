"""One copy of a tied embedding table in an ONNX graph, in the layout the LM head reads.

torch.onnx exports a tied LM head as ``MatMul(x, Transpose(W))`` next to the lookup ``Gather(W, ids)``. At a
32000-token vocabulary that Transpose is a 98 MB constant that onnxruntime folds into a second copy of the table
in every session that loads the graph (the step, the last-token and the decode programs: three extra copies); a
small table is folded by the exporter instead and stored twice. This rewrite keeps ``W^T`` alone: the MatMul
reads it directly, and the lookup gathers columns, ``Transpose(Gather(W^T, ids, axis=1))``, which is exact and
reads one column per token.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

SUFFIX = "_transposed"


def lookup_from_transposed(model: onnx.ModelProto) -> list[str]:
    """Rewrite every 2-D initializer that feeds both a row ``Gather`` and a ``Transpose`` (perm [1, 0]) in place;
    returns the rewritten initializers' names. A graph without that pattern is left as it is."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    done = []
    for name, users in list(consumers.items()):
        if name not in inits or len(inits[name].dims) != 2:
            continue
        gathers = [n for n in users if n.op_type == "Gather" and n.input[0] == name and _axis(n) == 0]
        transposes = [n for n in users if n.op_type == "Transpose" and _perm(n) in (None, [1, 0])]
        if not gathers or len(gathers) + len(transposes) != len(users):
            continue
        table = numpy_helper.to_array(inits[name])
        if transposes:  # the head transposes the table at run time: store the transposed table instead
            new = name + SUFFIX
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), new))
        else:  # a small table the exporter folded: its transpose is already a second initializer, renamed here
            folded = _stored_transpose(inits, name, table)
            if folded is None:
                continue
            new = name + SUFFIX
            inits[folded].name = new
            for node in graph.node:
                node.input[:] = [new if i == folded else i for i in node.input]
        graph.initializer.remove(inits[name])
        for tr in transposes:  # every reader of W^T now reads the stored table
            for node in graph.node:
                node.input[:] = [new if i == tr.output[0] else i for i in node.input]
            for out in graph.output:
                if out.name == tr.output[0]:
                    raise ValueError(f"{tr.output[0]!r} is a graph output; not rewriting {name!r}")
            graph.node.remove(tr)
        for g in gathers:  # (D, V)[:, ids] -> (D, *ids.shape) -> (*ids.shape, D)
            rank = _rank(graph, g.input[1])
            if rank is None:
                raise ValueError(f"the rank of {g.input[1]!r} (ids of {g.name!r}) is not known")
            cols = g.output[0] + "_columns"
            index = list(graph.node).index(g)
            graph.node.remove(g)
            graph.node.insert(index, helper.make_node("Gather", [new, g.input[1]], [cols], name=g.name, axis=1))
            graph.node.insert(index + 1, helper.make_node("Transpose", [cols], [g.output[0]], name=g.name + "_rows",
                                                          perm=[*range(1, rank + 1), 0]))
        done.append(name)
    return done


def _stored_transpose(inits: dict, name: str, table: np.ndarray) -> str | None:
    """The name of another initializer holding exactly ``table.T``, if there is one."""
    for other, init in inits.items():
        if other != name and list(init.dims) == list(table.shape[::-1]) and init.data_type == inits[name].data_type:
            if np.array_equal(numpy_helper.to_array(init), table.T):
                return other
    return None


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _rank(graph: onnx.GraphProto, name: str) -> int | None:
    for vi in [*graph.input, *graph.value_info]:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None
